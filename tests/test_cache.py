"""The latent cache: keys follow every input, one text entry per prompt, only what the loss reads (proved bitwise),
a cheap start-time scan, broken entries rebuilt, training from it bitwise the same."""
import json
import os
import shutil

import pytest
import torch

from conftest import REPO, SIZE, assert_same_lora, curve, free_port, run_script, train_command
from wan_sft import cache
from wan_sft.data import ClipDataset, read_training_csv
from wan_sft.model_files import locate_model_files


def clip_key(sample, files, **changes):
    settings = dict(num_frames=9, height=160, width=96, dtype=torch.float32)
    settings.update(changes)
    return cache.clip_key(sample.video, settings["num_frames"], settings["height"], settings["width"],
                          cache.file_identity(files.vae), settings["dtype"])


def test_keys_change_with_every_input_and_a_prompt_is_stored_once(demo_data, tmp_path):
    files = locate_model_files(demo_data["model"])
    samples = read_training_csv(demo_data["csv"])
    sample = samples[0]
    base = clip_key(sample, files)
    assert clip_key(sample, files) == base
    variants = [clip_key(sample, files, num_frames=5), clip_key(sample, files, height=128),
                clip_key(sample, files, width=64), clip_key(sample, files, dtype=torch.bfloat16)]
    clip = shutil.copy(sample.video, tmp_path / "clip.mp4")
    variants.append(clip_key(type(sample)(clip, sample.prompt, sample.row), files))  # another file
    os.utime(clip, ns=(1, 1))
    variants.append(clip_key(type(sample)(clip, sample.prompt, sample.row), files))  # same file, touched
    model = shutil.copytree(demo_data["model"], tmp_path / "model")
    os.utime(model / "Wan2.2_VAE.pth", ns=(1, 1))
    variants.append(clip_key(sample, locate_model_files(model)))  # other VAE weights
    assert len({base, *variants}) == len(variants) + 1

    def text_paths(files, samples, dtype=torch.float32):
        return [text for _, text in cache.EntryPaths(samples, tmp_path / "c", 9, 160, 96, files, dtype)]

    texts = text_paths(files, samples)
    assert len(set(texts)) == len({s.prompt for s in samples}) < len(samples)  # shared by clips with one prompt
    reworded = [type(sample)(sample.video, sample.prompt + " now", sample.row)]
    copied = text_paths(locate_model_files(model), [sample])
    os.utime(model / "Wan2.2_VAE.pth", ns=(2, 2))
    assert text_paths(locate_model_files(model), [sample]) == copied  # the VAE does not change the context
    os.utime(model / "models_t5_umt5-xxl-enc-bf16.pth", ns=(1, 1))
    tokenizer = next(p for p in (model / "google" / "umt5-xxl").iterdir())
    changed = [text_paths(files, reworded)[0], text_paths(files, [sample], torch.bfloat16)[0],
               text_paths(locate_model_files(model), [sample])[0], copied[0]]
    shutil.copytree(demo_data["model"], tmp_path / "model2")
    os.utime(tmp_path / "model2" / "google" / "umt5-xxl" / tokenizer.name, ns=(1, 1))
    changed.append(text_paths(locate_model_files(tmp_path / "model2"), [sample])[0])  # another tokenizer file
    assert len({texts[0], *changed}) == len(changed) + 1


def test_a_rank_stats_only_the_clips_it_asks_for(demo_data, tmp_path):
    samples = read_training_csv(demo_data["csv"])
    gone = [type(s)(str(tmp_path / f"gone{i}.mp4"), s.prompt, s.row) for i, s in enumerate(samples)]
    paths = cache.EntryPaths([samples[0], *gone], tmp_path, 9, 160, 96, locate_model_files(demo_data["model"]),
                             torch.float32)  # no clip is looked at yet
    assert len(paths) == 1 + len(gone) and paths[0][0].parent.parent.name == "clip"
    with pytest.raises(FileNotFoundError):
        paths[1]


def test_an_entry_holds_only_what_the_loss_reads_and_rebuilds_it_bitwise(demo_data):
    """The context past the prompt's tokens is zero (DiffSynth zeroes it): stored without it, rebuilt exactly."""
    from wan_sft.model_files import load_pipeline
    from wan_sft.train import FlowMatchLoss

    pipe = load_pipeline(demo_data["model"], "cpu", torch.float32)
    pipe.scheduler.set_timesteps(1000, training=True)  # as train.py does
    samples = read_training_csv(demo_data["csv"])
    fresh = FlowMatchLoss(pipe, 9, 160, 96).encode(ClipDataset(samples, 9, 160, 96)[0])
    clip, text = cache.split_inputs(fresh)
    assert sorted(clip) == ["first_frame_latents", "later_latents"] and sorted(text) == ["context", "padded_length"]
    tokens = len(pipe.tokenizer.tokenizer(samples[0].prompt)["input_ids"])  # the prompt's tokens (with </s>)
    assert fresh["context"].shape[1] == 512 and text["context"].shape[1] == tokens
    assert fresh["context"][:, tokens - 1].abs().sum() > 0 and fresh["context"][:, tokens:].abs().sum() == 0
    rebuilt = cache.join_inputs(clip, text)
    assert torch.equal(rebuilt["context"], fresh["context"])
    assert torch.equal(rebuilt["first_frame_latents"], fresh["first_frame_latents"])
    assert torch.equal(rebuilt["input_latents"][:, :, 1:], fresh["input_latents"][:, :, 1:])
    assert rebuilt["input_latents"].shape == fresh["input_latents"].shape  # frame 0 is never read by the loss


def test_the_start_scan_reads_headers_only_and_catches_truncation(tmp_path):
    paths = [(tmp_path / "clip" / f"{i}.safetensors", tmp_path / "text" / "t.safetensors") for i in range(3)]
    inputs = {"input_latents": torch.randn(1, 4, 3, 2, 2), "first_frame_latents": torch.randn(1, 4, 1, 2, 2),
              "context": torch.cat([torch.randn(1, 5, 8), torch.zeros(1, 11, 8)], dim=1)}
    for i, path in enumerate(paths):
        cache.write_entries(path, inputs, write_text=i == 0)
    assert cache.missing_entries(paths, rank=0, world=1)[0] == []
    data = bytearray(paths[1][0].read_bytes())
    data[-8:] = b"\xff" * 8  # tensor bytes are not read at start: same size, readable header -> present
    paths[1][0].write_bytes(bytes(data))
    paths[2][0].write_bytes(paths[2][0].read_bytes()[:-1])  # truncated
    (tmp_path / "clip" / "3.safetensors").write_bytes(b"garbage!")  # a header length far past the end of the file
    paths.append((tmp_path / "clip" / "3.safetensors", paths[0][1]))
    missing, texts, present = cache.missing_entries(paths, rank=0, world=1)
    assert (missing, texts) == ([2, 3], set())
    assert present == sum(os.path.getsize(p) for p in [paths[0][0], paths[1][0], paths[0][1]])
    paths[0][1].unlink()
    assert cache.missing_entries(paths, rank=1, world=2)[:2] == ([1, 3], {paths[0][1]})


def train(demo, out, *extra):
    command = ["bash", str(REPO / "train_single_node.sh"), "--dataset", str(demo["csv"]), "--output_dir", str(out),
               "--model_base_path", str(demo["model"]), "--num_gpus", "2", "--lora_rank", "4", "--num_epochs", "1",
               "--save_steps", "4", "--port", free_port(), *SIZE, *extra]
    result = run_script(command, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_training_from_cache_is_bitwise_the_same_and_rebuilds_broken_entries(demo_data, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    train(demo_data, tmp_path / "a" / "out", "--no_cache")
    first = train(demo_data, tmp_path / "b" / "out", "--cache_dir", str(tmp_path / "cache"))
    assert f"latent cache ({tmp_path / 'cache'}): 4 clips on rank 0 encoded, " in first.stdout
    entries = sorted((tmp_path / "cache" / "clip").rglob("*.safetensors"))
    prompts = {s.prompt for s in read_training_csv(demo_data["csv"])}
    assert len(entries) == 8 and len(list((tmp_path / "cache" / "text").rglob("*.safetensors"))) == len(prompts)
    assert not (tmp_path / "a" / "out" / "latent_cache").exists()
    assert_same_lora(tmp_path / "a" / "out" / "final.safetensors", tmp_path / "b" / "out" / "final.safetensors")
    assert curve(tmp_path / "a" / "out") == curve(tmp_path / "b" / "out")

    entries[0].write_bytes(b"garbage")
    second = train(demo_data, tmp_path / "c" / "out", "--cache_dir", str(tmp_path / "cache"))
    assert f"latent cache entry {entries[0]} is corrupt; encoding it again" in second.stderr
    assert cache.entry_size(entries[0], cache.CLIP_TENSORS) is not None
    assert_same_lora(tmp_path / "a" / "out" / "final.safetensors", tmp_path / "c" / "out" / "final.safetensors")
    training_args = json.loads((tmp_path / "c" / "out" / "training_args.json").read_text())
    assert training_args["cache_dir"] == str(tmp_path / "cache")


def break_after_the_scan(path):
    """Keep the entry's size and a readable header (so the start scan passes), but declare a tensor shape its bytes
    do not match, as a file rewritten by another job after this one's scan would look: reading it fails."""
    data = path.read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_size])
    header["later_latents"]["shape"][-1] += 1
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= header_size
    path.write_bytes(data[:8] + text.ljust(header_size) + data[8 + header_size:])


def test_an_entry_broken_during_training_saves_stops_and_the_rerun_rebuilds_it(uninterrupted, demo_data, tmp_path):
    """The rank that reads it names it and removes it, a state of the last step is kept, the exit is non-zero; the
    rerun encodes it again and ends bitwise like an uninterrupted run."""
    out = tmp_path / "out"
    shutil.copytree(uninterrupted[0] / "out" / "latent_cache", out / "latent_cache")  # every entry present
    samples = read_training_csv(demo_data["csv"])
    paths = cache.EntryPaths(samples, out / "latent_cache", 9, 160, 96, locate_model_files(demo_data["model"]),
                              torch.float32)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
    broken = paths[order[6]][0]  # read first in step 4 (epoch 0, positions 6-7); states exist at step 2
    break_after_the_scan(broken)
    command = train_command(demo_data, out)
    result = run_script(command, cwd=tmp_path)
    assert result.returncode != 0
    assert "encoding latent cache" not in result.stderr  # the start scan found every entry
    assert result.stderr.count(f"error: latent cache entry {broken} is unreadable (") == 1
    assert (f"it changed after training started (another job writing the same --cache_dir?); removed it; state "
            f"saved at step 3 in {out / 'states'}; rerun the same command: it encodes the entry again and resumes"
            ) in result.stderr
    assert (out / "states" / "step-00000003" / "COMPLETE").exists() and not broken.exists()

    command[command.index("--port") + 1] = free_port()
    rerun = run_script(command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step 3" in rerun.stdout
    assert cache.entry_size(broken, cache.CLIP_TENSORS) is not None
    assert curve(out) == curve(uninterrupted[0] / "out")
    assert_same_lora(out / "final.safetensors", uninterrupted[0] / "out" / "final.safetensors")
