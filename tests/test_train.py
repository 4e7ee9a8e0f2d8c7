"""The real launcher, 2 CPU processes (gloo), the tiny model: training, exports, kill/resume reproducibility."""
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    REPO,
    assert_same_lora,
    curve,
    free_port,
    losses,
    run_script,
    run_until_state,
    start_until_state,
    train_command,
)


def test_training_writes_exports_states_logs_and_config(uninterrupted, demo_data):
    workdir, result = uninterrupted
    out = workdir / "out"
    # 8 training rows over 2 ranks: 4 steps per epoch, 3 epochs.
    assert [r["step"] for r in losses(out)] == list(range(1, 13))
    rows = losses(out)  # each line's wall-clock time: the gap to the previous one holds this step and the saves between
    assert all(b["time"] - a["time"] >= b["step_seconds"] for a, b in zip(rows, rows[1:], strict=False))
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(
        [f"step-{s}.safetensors" for s in range(2, 13, 2)] + [f"epoch-{e}.safetensors" for e in range(3)]
        + ["final.safetensors"])
    states = sorted(p.name for p in (out / "states").iterdir())
    assert states == ["step-00000010", "step-00000012"]  # newest 2 kept
    progress = json.loads((out / "states" / "step-00000012" / "progress.json").read_text())
    assert (progress["global_step"], progress["epoch"], progress["sample_in_epoch"],
            progress["world_size"]) == (12, 3, 0, 2)
    assert json.loads((out / "training_args.json").read_text())["lora_rank"] == 4
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    config = (workdir / "accelerate_config.yaml").read_text()
    assert "num_processes: 2" in config and "distributed_type: MULTI_GPU" in config
    assert "training on CPU (2 processes)" in result.stdout
    umask = os.umask(0o022)
    os.umask(umask)  # the runs inherited this process's umask: every file has the mode a plain open() gives
    assert {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()
            and p.stat().st_mode & 0o777 != 0o666 & ~umask} == {}


def test_exported_lora_fuses_into_the_pipeline(uninterrupted, demo_data):
    from wan_sft.lora import fuse_lora
    from wan_sft.model_files import load_pipeline

    pipe = load_pipeline(demo_data["model"], "cpu", torch.float32)
    before = pipe.dit.blocks[0].self_attn.q.weight.clone()
    assert fuse_lora(pipe, uninterrupted[0] / "out" / "final.safetensors") == 2 * 10  # 2 blocks x 10 layers
    assert not torch.equal(before, pipe.dit.blocks[0].self_attn.q.weight)


def test_sigkill_after_a_save_then_rerun_is_bitwise_identical(uninterrupted, demo_data, tmp_path):
    out = tmp_path / "out"
    command = train_command(demo_data, out)
    code, _ = run_until_state(command, tmp_path, out / "states", signal.SIGKILL)
    assert code != 0
    assert (out / "states" / "step-00000002" / "COMPLETE").exists()
    command[command.index("--port") + 1] = free_port()
    rerun = run_script(command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step" in rerun.stdout
    reference = uninterrupted[0] / "out"
    assert curve(out) == curve(reference)
    for name in ["final", "epoch-2", "step-12"]:
        assert_same_lora(out / f"{name}.safetensors", reference / f"{name}.safetensors")


def test_ctrl_c_saves_and_rerun_resumes_with_same_numbering(uninterrupted, demo_data, tmp_path):
    out = tmp_path / "out"
    command = train_command(demo_data, out)
    code, output = run_until_state(command, tmp_path, out / "states", signal.SIGINT)
    assert code != 0
    assert "rerun the same command to resume" in output
    stopped_at = max(r["step"] for r in losses(out))
    assert (out / "states" / f"step-{stopped_at:08d}" / "COMPLETE").exists()  # saved at the step it stopped
    command[command.index("--port") + 1] = free_port()
    rerun = run_script(command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from step {stopped_at}" in rerun.stdout
    assert [r["step"] for r in losses(out)] == list(range(1, 13))
    assert_same_lora(out / "final.safetensors", uninterrupted[0] / "out" / "final.safetensors")


def test_partial_newest_state_is_skipped_with_a_warning(uninterrupted, demo_data, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted[0] / "out", out)
    newest = out / "states" / "step-00000012"
    (newest / "optimizer.bin").write_bytes(b"truncated")
    (out / "train_log.jsonl").write_text((out / "train_log.jsonl").read_text())  # keep the full log
    rerun = run_script(train_command(demo_data, out, "--num_epochs", "3"), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"skipping incomplete or corrupt training state {newest}" in rerun.stderr
    assert "resuming from step 10" in rerun.stdout
    assert [r["step"] for r in losses(out)] == list(range(1, 13))
    assert_same_lora(out / "final.safetensors", uninterrupted[0] / "out" / "final.safetensors")


def test_lora_checkpoint_warm_starts_weights_only(uninterrupted, demo_data, tmp_path):
    source = uninterrupted[0] / "out" / "final.safetensors"
    result = run_script(train_command(demo_data, tmp_path / "out", "--lora_checkpoint", str(source),
                                      "--max_steps", "1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in losses(tmp_path / "out")] == [1]  # fresh optimizer and step counter
    warm, start = load_file(str(tmp_path / "out" / "final.safetensors")), load_file(str(source))
    drift = max((warm[k] - start[k]).abs().max().item() for k in start)
    assert 0 < drift < 1e-3  # one small step away from the checkpoint, not from a fresh init


def test_resume_with_other_settings_is_refused(uninterrupted, demo_data, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted[0] / "out", out)
    command = train_command(demo_data, out, "--seed", "1")
    result = run_script(command, cwd=tmp_path)
    assert result.returncode != 0
    assert f"error: {out} holds a run with other settings" in result.stderr + result.stdout


def test_other_lora_rank_into_the_same_folder_is_refused_before_anything_starts(uninterrupted, demo_data, tmp_path):
    """Not "state failed to load, trying an older one", never a fresh run over the old one's exports; the launcher
    says it before writing its config, loading a model or touching the latent cache."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted[0] / "out", out)
    shutil.rmtree(out / "latent_cache")
    before = {name: (out / name).read_bytes() for name in ("final.safetensors", "train_log.jsonl")}
    result = run_script(train_command(demo_data, out, "--lora_rank", "8"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {out} holds a run with other settings (lora_rank 4 there, 8 now); "
        f"use a new --output_dir or the same settings")
    assert "Traceback" not in result.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not (out / "latent_cache").exists() and not (tmp_path / "accelerate_config.yaml").exists()
    assert sorted(p.name for p in (out / "states").iterdir()) == ["step-00000010", "step-00000012"]


def test_training_process_refuses_other_settings_before_loading_anything(uninterrupted, demo_data, tmp_path):
    """train.py checks too (a state may appear after the launcher looked): same message, before the model loads."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted[0] / "out", out)
    shutil.rmtree(out / "latent_cache")
    argv = train_command(demo_data, out, "--lora_rank", "8")[2:]
    launcher_only = ("--num_gpus", "--port")
    argv = [a for i, a in enumerate(argv) if a not in launcher_only and argv[i - 1] not in launcher_only]
    result = run_script([sys.executable, "-m", "wan_sft.train", *argv, "--expected_world_size", "1"], cwd=tmp_path,
                        env={"PYTHONPATH": str(REPO)})  # one process without the launcher: world_size differs too
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out} holds a run with other settings (") and "lora_rank 4 there, 8 now" in last
    assert last.endswith("); use a new --output_dir or the same settings")
    assert not (out / "latent_cache").exists()


@pytest.mark.parametrize("how", ["ctrl-c to the process group", "SIGTERM to the launcher", "SIGINT to the launcher"])
def test_a_signal_to_a_one_process_run_saves_and_exits_128_plus_signal(demo_data, tmp_path, how):
    sig = signal.SIGTERM if "SIGTERM" in how else signal.SIGINT
    out = tmp_path / "out"
    command = train_command(demo_data, out, "--num_gpus", "1", "--num_epochs", "100", "--save_steps", "5")
    process = start_until_state(command, tmp_path, out / "states" / "step-00000005")
    (os.killpg if "group" in how else os.kill)(process.pid, sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, output[-3000:]
    stopped_at = max(r["step"] for r in losses(out))
    assert output.count(f"stopped by signal after step {stopped_at}; state saved in {out / 'states'}; "
                        f"rerun the same command to resume") == 1
    assert (out / "states" / f"step-{stopped_at:08d}" / "COMPLETE").exists()
    assert stopped_at < 800 and "Traceback" not in output and "CalledProcessError" not in output


def test_a_hung_rank_ends_the_run_naming_the_step_and_a_rerun_resumes_bitwise(uninterrupted, demo_data, tmp_path):
    """SIGSTOP one of 2 ranks: the other's step watchdog prints the stuck step and its stacks and exits; the torch
    agent then kills the stopped rank; the launcher ends with the watchdog's code."""
    import re

    from wan_sft.watchdog import WATCHDOG_EXIT

    out = tmp_path / "out"
    command = train_command(demo_data, out, "--collective_timeout", "20")
    process = start_until_state(command, tmp_path, out / "states" / "step-00000002")
    ranks = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(ranks) == 2
    os.kill(int(ranks[1]), signal.SIGSTOP)
    stopped = time.time()
    output, _ = process.communicate(timeout=180)
    assert time.time() - stopped < 90  # 20 s watchdog + the agent's 30 s grace before it SIGKILLs the stopped rank
    assert process.returncode == WATCHDOG_EXIT, output[-3000:]
    found = re.findall(r"error: rank (\d): no training step finished for 20 s; stuck in step (\d+) \(a hung rank, "
                       r"collective or device\)\. Stacks of this process follow; rerun the same command to resume "
                       r"from the newest complete state in (\S+)\n", output)
    assert len(found) == 1 and found[0][2] == str(out / "states"), output[-3000:]
    # the stop lands in the last barrier of step 2's save (so "stuck in step 2") or in a later step
    assert int(found[0][1]) >= 2 and "(most recent call first)" in output and "in main" in output  # the stacks
    command[command.index("--port") + 1] = free_port()
    rerun = run_script(command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step" in rerun.stdout
    assert curve(out) == curve(uninterrupted[0] / "out")
    assert_same_lora(out / "final.safetensors", uninterrupted[0] / "out" / "final.safetensors")


def test_resume_keeps_log_lines_up_to_the_state_and_drops_a_cut_line(tmp_path):
    from wan_sft.train import _truncate_log

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "loss": 3.0}\n{"step": 4, "lo')
    _truncate_log(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n'


def test_a_diverged_step_stops_training_before_anything_of_it_is_saved(demo_data, tmp_path):
    # --save_steps 1: step 1 exports and saves, so its weights (1e30-sized after one AdamW step) are checked first.
    out = tmp_path / "out"
    result = run_script(train_command(demo_data, out, "--learning_rate", "1e30", "--save_steps", "1"), cwd=tmp_path)
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert output.count("error: training diverged at step 1 (the LoRA weights' norm is inf/NaN)") == 1  # rank 0 says it
    assert "Rerun with a lower --learning_rate" in output
    assert result.returncode == 1 and "Traceback" not in output  # the launcher adds no traceback of its own
    assert not (out / "train_log.jsonl").exists()  # the diverged step is not logged either
    assert not list(out.glob("step-*.safetensors")) and not list(out.glob("states/step-*"))


def test_weights_that_diverge_on_a_step_that_saves_nothing_stop_training_at_the_next_loss(demo_data, tmp_path):
    # --save_steps 2: step 1 writes nothing, so its weights go unchecked; step 2's loss is not finite.
    out = tmp_path / "out"
    result = run_script(train_command(demo_data, out, "--learning_rate", "1e30"), cwd=tmp_path)
    output = result.stderr + result.stdout
    assert result.returncode == 1
    assert re.search(r"error: training diverged at step 2 \(loss (nan|inf)\); nothing of this step was saved", output)
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1]
    assert not list(out.glob("step-*.safetensors")) and not list(out.glob("states/step-*"))


def test_divergence_names_a_non_finite_loss_or_lora_and_passes_a_healthy_step():
    from wan_sft.train import _divergence

    healthy = [torch.ones(4, 4), torch.zeros(8)]
    assert _divergence(0.25, healthy, check_weights=True) is None
    assert _divergence(float("nan"), healthy, check_weights=False) == "loss nan"
    assert _divergence(float("inf"), healthy, check_weights=True) == "loss inf"
    broken = [torch.ones(4), torch.tensor([1.0, float("inf")])]
    assert _divergence(0.25, broken, check_weights=True) == "the LoRA weights' norm is inf/NaN"
    assert _divergence(0.25, broken, check_weights=False) is None  # a step that writes nothing
    many = [torch.ones(3) for _ in range(600)]  # as many tensors as the 5B's LoRA: each one is checked
    many[417] = torch.tensor([0.0, float("nan"), 1.0])
    assert _divergence(0.25, many, check_weights=True) == "the LoRA weights' norm is inf/NaN"


def test_the_launchers_deepspeed_config_with_our_settings_is_accepted_by_deepspeed():
    """DeepSpeed's config models reject unknown keys, so a misspelt or removed setting fails here, not on a GPU."""
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig

    from wan_sft.launch import accelerate_config
    from wan_sft.train import configure_deepspeed

    yaml_config = accelerate_config(1, use_gpu=True)["deepspeed_config"]
    plugin = DeepSpeedPlugin(**{k: v for k, v in yaml_config.items() if k != "deepspeed_multinode_launcher"})
    plugin.set_mixed_precision("bf16")  # what Accelerator(mixed_precision="bf16") does before train.main calls us
    configure_deepspeed(plugin.deepspeed_config)
    parsed = DeepSpeedConfig({**plugin.deepspeed_config, "train_batch_size": 1})  # accelerate fills "auto" in prepare
    assert parsed.train_micro_batch_size_per_gpu == 1 and parsed.zero_optimization_stage == 2
    assert parsed.gradient_clipping == 0.0 and not parsed.zero_config.compute_grad_norm
    assert parsed.bfloat16_config.enabled and not parsed.bfloat16_config.check_grad_overflow
