import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import REPO, run_script
from wan_sft.inference import GenerationSettings, generate, load_generator, main, read_image
from wan_sft.lora import add_lora, export_lora, lora_state_dict
from wan_sft.model_files import load_pipeline
from wan_sft.puzzles import MAZE_PROMPT, generate_maze_task

W, H, FRAMES = 96, 160, 9


@pytest.fixture(scope="module")
def puzzle(tmp_path_factory):
    root = tmp_path_factory.mktemp("puzzles")
    record = generate_maze_task(root, 1, (3,), width=W, height=H, num_frames=FRAMES, fps=8, layout="vlmpuzzle")[0]
    return root / "maze_square" / record["image"]


@pytest.fixture(scope="module")
def lora_file(tiny_model, tmp_path_factory):
    """A real rank-4 LoRA for the tiny DiT, with non-zero B so fusing changes the output."""
    pipe = load_pipeline(tiny_model, "cpu", torch.float32)
    torch.manual_seed(0)
    add_lora(pipe.dit, 4)
    for name, param in pipe.dit.named_parameters():
        if ".lora_B." in name:
            param.data = torch.randn_like(param) * 0.01
    path = tmp_path_factory.mktemp("lora") / "step-2.safetensors"
    export_lora(lora_state_dict(pipe.dit), path)
    return path


def _argv(tiny_model, puzzle, output, *extra):
    return ["--model_base_path", str(tiny_model), "--input_image", str(puzzle), "--prompt", MAZE_PROMPT,
            "--num_frames", str(FRAMES), "--height", str(H), "--width", str(W), "--num_inference_steps", "2",
            "--device", "cpu", "--output", str(output), *extra]


def test_cli_writes_video_and_last_frame_of_the_pipeline(tiny_model, puzzle, lora_file, tmp_path):
    output = tmp_path / "out" / "maze.mp4"
    result = run_script([sys.executable, "inference.py", *_argv(tiny_model, puzzle, output, "--lora_path",
                                                                str(lora_file))], cwd=REPO)
    assert result.returncode == 0, result.stderr
    fused = int(result.stdout.split("fused ")[1].split()[0])
    assert fused > 0
    assert output.is_file() and (tmp_path / "out" / "maze_last.png").is_file()

    pipe, fused_again = load_generator(tiny_model, lora_file, "cpu")
    frames = generate(pipe, read_image(puzzle), MAZE_PROMPT, GenerationSettings(FRAMES, H, W, 2))
    assert fused_again == fused and len(frames) == FRAMES
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "maze_last.png")), np.asarray(frames[-1]))


def test_lora_ckpt_alias_and_default_output_name(tiny_model, puzzle, lora_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _argv(tiny_model, puzzle, "unused.mp4", "--lora_ckpt", str(lora_file))
    argv = argv[:argv.index("--output")] + argv[argv.index("--output") + 2:]
    assert main(argv) == 0
    assert "fused" in capsys.readouterr().out
    stem = puzzle.stem
    assert (tmp_path / "output/inference" / f"{stem}.mp4").is_file()
    assert (tmp_path / "output/inference" / f"{stem}_last.png").is_file()


def test_lora_with_no_matching_layers_is_an_error(tiny_model, puzzle, tmp_path, capsys):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"unet.down.0.to_q.lora_A.default.weight": torch.zeros(4, 8),
               "unet.down.0.to_q.lora_B.default.weight": torch.zeros(8, 4)}, str(foreign))
    assert main(_argv(tiny_model, puzzle, tmp_path / "x.mp4", "--lora_path", str(foreign))) == 2
    assert "none of its LoRA keys match the DiT's layers" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--num_frames", "10", "error: --num_frames 10 is invalid: Wan2.2 needs 4k+1 frames with k >= 1 (e.g. 9 or 13)"),
    ("--height", "150", "error: --height 150 is invalid: it must be a multiple of 32 (e.g. 128 or 160)"),
    ("--width", "100", "error: --width 100 is invalid: it must be a multiple of 32 (e.g. 96 or 128)"),
    ("--num_inference_steps", "0", "error: --num_inference_steps 0 is invalid: it must be at least 1"),
])
def test_bad_numbers_fail_first_with_the_exact_message(puzzle, tmp_path, capsys, flag, value, message):
    # The model folder does not exist: the number is reported first, so nothing was about to load.
    argv = _argv(tmp_path / "no-model", puzzle, tmp_path / "x.mp4")
    argv[argv.index(flag) + 1] = value
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize("problem", ["missing", "broken"])
def test_unreadable_image_is_an_error(tiny_model, tmp_path, capsys, problem):
    image = tmp_path / "puzzle.png"
    if problem == "broken":
        image.write_bytes(b"not a png")
    assert main(_argv(tiny_model, image, tmp_path / "x.mp4")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {image}: ")
    assert ("image not found" if problem == "missing" else "not a readable image") in err


def test_missing_model_and_lora_files_are_errors(tiny_model, puzzle, tmp_path, capsys):
    assert main(_argv(tmp_path / "no-model", puzzle, tmp_path / "x.mp4")) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(_argv(tiny_model, puzzle, tmp_path / "x.mp4", "--lora_path", str(tmp_path / "none.safetensors"))) == 2
    assert "LoRA file not found" in capsys.readouterr().err


def test_generation_decodes_untiled_unless_asked_for_tiles(tiny_model, puzzle, monkeypatch):
    """Evaluation and inference.py decode the whole video at once (faster); validation beside training asks for
    tiles."""
    pipe, _ = load_generator(tiny_model, None, "cpu")
    real_decode, tiled_flags = pipe.vae.decode, []

    def recording_decode(*args, **kwargs):
        tiled_flags.append(kwargs["tiled"])
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", recording_decode)
    settings = GenerationSettings(FRAMES, H, W, 1)
    untiled = generate(pipe, read_image(puzzle), MAZE_PROMPT, settings)
    tiled = generate(pipe, read_image(puzzle), MAZE_PROMPT, settings, tiled_decode=True)
    assert tiled_flags == [False, True]
    assert len(untiled) == len(tiled) == FRAMES and untiled[-1].size == tiled[-1].size == (W, H)


@pytest.mark.parametrize("cfg_scale, batches", [(5.0, [2, 2]), (1.0, [1, 1])])
def test_cfg_branches_run_as_one_batch_with_the_frames_of_one_at_a_time(tiny_model, puzzle, cfg_scale, batches):
    """With cfg the conditional and unconditional forwards of a step are one batch of two (faster on a GPU), giving
    the frames DiffSynth gives one branch at a time; cfg 1 runs one branch."""
    pipe, _ = load_generator(tiny_model, None, "cpu")
    settings = GenerationSettings(FRAMES, H, W, 2, cfg_scale)
    seen = []
    hook = pipe.dit.patch_embedding.register_forward_hook(lambda module, inputs, output: seen.append(len(output)))
    batched = np.stack([np.asarray(f, dtype=np.int16) for f in generate(pipe, read_image(puzzle), MAZE_PROMPT,
                                                                       settings)])
    hook.remove()
    assert seen == batches  # one DiT forward per step
    image = read_image(puzzle).resize((W, H), Image.NEAREST)
    one_at_a_time = pipe(prompt=MAZE_PROMPT, negative_prompt=settings.negative_prompt, input_image=image, height=H,
                         width=W, num_frames=FRAMES, num_inference_steps=2, cfg_scale=cfg_scale, seed=settings.seed,
                         cfg_merge=False, tiled=False, progress_bar_cmd=lambda iterable: iterable)
    reference = np.stack([np.asarray(f, dtype=np.int16) for f in one_at_a_time])
    assert np.abs(batched - reference).max() <= 1  # fp32 sums in another order: at most one level in a pixel


def test_fp8_generation_fuses_the_lora_first_and_stays_close_to_full_precision(tiny_model, puzzle, lora_file, tmp_path,
                                                                                capsys):
    """--fp8: the LoRA is fused into the full-precision weights, then the block linears go to FP8 (wan_sft/fp8.py)."""
    from wan_sft.fp8 import Fp8Linear

    output = tmp_path / "fp8.mp4"
    assert main(_argv(tiny_model, puzzle, output, "--lora_path", str(lora_file), "--fp8")) == 0
    assert "fused" in capsys.readouterr().out
    pipe, fused = load_generator(tiny_model, lora_file, "cpu", fp8=True)
    assert fused > 0 and isinstance(pipe.dit.blocks[0].self_attn.q, Fp8Linear)
    settings = GenerationSettings(FRAMES, H, W, 2)
    approximate = np.stack([np.asarray(f, dtype=np.float64) for f in generate(pipe, read_image(puzzle), MAZE_PROMPT,
                                                                               settings)])
    exact_pipe, _ = load_generator(tiny_model, lora_file, "cpu")
    exact = np.stack([np.asarray(f, dtype=np.float64) for f in generate(exact_pipe, read_image(puzzle), MAZE_PROMPT,
                                                                        settings)])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "fp8_last.png")), approximate[-1].astype(np.uint8))
    mse = np.mean((approximate - exact) ** 2)
    assert mse > 0 and 10 * np.log10(255.0**2 / mse) > 25  # FP8 is approximate (differs) but close
