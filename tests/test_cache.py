"""The latent cache: keys follow every input, corrupt entries are rebuilt, training from it is bitwise the same."""
import json
import os
import shutil

import torch

from conftest import REPO, SIZE, assert_same_lora, curve, free_port, run_script
from wan_sft import cache
from wan_sft.data import read_training_csv
from wan_sft.model_files import locate_model_files


def key_for(sample, files, **changes):
    settings = dict(num_frames=9, height=160, width=96, dtype=torch.float32)
    settings.update(changes)
    return cache.entry_key(sample.video, sample.prompt, settings["num_frames"], settings["height"],
                           settings["width"], files, settings["dtype"])


def test_key_changes_with_every_input(demo_data, tmp_path):
    files = locate_model_files(demo_data["model"])
    sample = read_training_csv(demo_data["csv"])[0]
    base = key_for(sample, files)
    assert key_for(sample, files) == base
    variants = [key_for(sample, files, num_frames=5), key_for(sample, files, height=128),
                key_for(sample, files, width=64), key_for(sample, files, dtype=torch.bfloat16),
                key_for(type(sample)(sample.video, sample.prompt + " now", sample.row), files)]
    clip = shutil.copy(sample.video, tmp_path / "clip.mp4")
    variants.append(key_for(type(sample)(clip, sample.prompt, sample.row), files))  # another file
    os.utime(clip, ns=(1, 1))
    variants.append(key_for(type(sample)(clip, sample.prompt, sample.row), files))  # same file, touched
    model = shutil.copytree(demo_data["model"], tmp_path / "model")
    os.utime(model / "Wan2.2_VAE.pth", ns=(1, 1))
    variants.append(key_for(sample, locate_model_files(model)))  # other VAE weights
    assert len({base, *variants}) == len(variants) + 1


def test_corrupt_entry_is_detected(tmp_path):
    path = tmp_path / "ab" / "abc.safetensors"
    inputs = {k: torch.randn(2, 3) for k in cache.CACHED_INPUTS}
    cache.write_entry(path, inputs)
    assert torch.equal(cache.read_entry(path)["context"], inputs["context"])
    path.write_bytes(path.read_bytes()[:40])
    assert cache.read_entry(path) is None
    assert cache.missing_entries([path, path], rank=1, world=2) == [1]


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
    assert "latent cache: 4 clips on rank 0 encoded" in first.stdout
    entries = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(entries) == 8 and not (tmp_path / "a" / "out" / "latent_cache").exists()
    assert_same_lora(tmp_path / "a" / "out" / "final.safetensors", tmp_path / "b" / "out" / "final.safetensors")
    assert curve(tmp_path / "a" / "out") == curve(tmp_path / "b" / "out")

    entries[0].write_bytes(b"garbage")
    second = train(demo_data, tmp_path / "c" / "out", "--cache_dir", str(tmp_path / "cache"))
    assert f"latent cache entry {entries[0]} is corrupt; encoding it again" in second.stderr
    assert cache.read_entry(entries[0]) is not None
    assert_same_lora(tmp_path / "a" / "out" / "final.safetensors", tmp_path / "c" / "out" / "final.safetensors")
    assert json.loads((tmp_path / "c" / "out" / "training_args.json").read_text())["cache_dir"] == str(tmp_path / "cache")
