"""Gradient accumulation through the real launcher (CPU, tiny model): N processes x GA k is one global batch."""
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_lora, curve, free_port, losses, run_script, run_until_state, train_command


def one_process_ga2(demo, output_dir):
    command = train_command(demo, output_dir, "--gradient_accumulation_steps", "2")
    command[command.index("--num_gpus") + 1] = "1"
    return command


@pytest.fixture(scope="module")
def accumulated(demo_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("accumulated")
    result = run_script(one_process_ga2(demo_data, workdir / "out"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "out"


def test_one_process_with_accumulation_2_trains_like_two_processes(accumulated, uninterrupted):
    two_processes = uninterrupted[0] / "out"
    # Same optimizer steps, samples, schedule (in optimizer steps) and numbering; 8 rows / (1 x 2) = 4 per epoch.
    assert [r["step"] for r in losses(accumulated)] == list(range(1, 13))
    assert [(r["epoch"], r["samples"], r["lr"]) for r in losses(accumulated)] == [
        (r["epoch"], r["samples"], r["lr"]) for r in losses(two_processes)]
    assert losses(accumulated)[0]["lr"] == pytest.approx(1e-4 / 3)
    assert losses(accumulated)[5]["lr"] == pytest.approx(1e-4)
    assert sorted(p.name for p in accumulated.glob("step-*.safetensors")) == sorted(
        p.name for p in two_processes.glob("step-*.safetensors"))
    for a, b in zip(losses(accumulated), losses(two_processes), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    first = load_file(str(accumulated / "final.safetensors"))
    second = load_file(str(two_processes / "final.safetensors"))
    assert first.keys() == second.keys()
    moved = max((first[k] - load_file(str(accumulated / "step-2.safetensors"))[k]).abs().max().item() for k in first)
    assert moved > 1e-4  # the LoRA really moved, so the comparison below means something
    for key in first:  # equal up to float summation order (mean over processes vs sum of halves)
        torch.testing.assert_close(first[key], second[key], rtol=1e-4, atol=1e-6)


def test_sigkill_with_accumulation_then_rerun_is_bitwise_identical(accumulated, demo_data, tmp_path):
    out = tmp_path / "out"
    command = one_process_ga2(demo_data, out)
    code, _ = run_until_state(command, tmp_path, out / "states", signal.SIGKILL)
    assert code != 0
    command[command.index("--port") + 1] = free_port()
    rerun = run_script(command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step" in rerun.stdout
    assert curve(out) == curve(accumulated)
    for name in ["final", "epoch-2", "step-12"]:
        assert_same_lora(out / f"{name}.safetensors", accumulated / f"{name}.safetensors")


def test_changing_the_accumulation_on_resume_is_refused_naming_the_flag(accumulated, demo_data, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(accumulated, out)
    command = one_process_ga2(demo_data, out)
    command[command.index("--gradient_accumulation_steps") + 1] = "1"
    result = run_script(command, cwd=tmp_path)
    assert result.returncode != 0
    assert (f"error: {out / 'states' / 'step-00000012'} was saved by 1 processes x 2 accumulation steps; to continue "
            f"it with 1 processes x 1 accumulation steps instead of 1 x 2: global batch 1 samples per optimizer step "
            f"instead of 2, rerun with --allow_world_size_change (or use 1 processes and "
            f"--gradient_accumulation_steps 2)") in result.stderr


def test_the_deepspeed_config_carries_the_accumulation():
    """accelerate takes DeepSpeed's value (and the launch environment's) over Accelerator(...), so the yaml holds it."""
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig

    from wan_sft.launch import accelerate_config

    yaml_config = accelerate_config(2, use_gpu=True, gradient_accumulation_steps=4)["deepspeed_config"]
    plugin = DeepSpeedPlugin(**{k: v for k, v in yaml_config.items() if k != "deepspeed_multinode_launcher"})
    parsed = DeepSpeedConfig({**plugin.deepspeed_config, "train_micro_batch_size_per_gpu": 1, "train_batch_size": 4},
                             mpu=None)
    assert parsed.gradient_accumulation_steps == 4
