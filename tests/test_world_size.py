"""Resuming on another number of processes (--allow_world_size_change): every sample of the epoch exactly once."""
import shutil
from collections import Counter

import pytest

from conftest import losses, run_script, train_command

ROWS = 8  # the demo CSV's training rows


def command_on(demo, out, processes, *extra):
    command = train_command(demo, out, "--num_epochs", "2", *extra)
    command[command.index("--num_gpus") + 1] = str(processes)
    return command


@pytest.fixture(scope="module")
def stopped_after_one_step(demo_data, tmp_path_factory):
    """2 processes, stopped after step 1 (samples 0-1 of epoch 0's order done), a state saved there."""
    out = tmp_path_factory.mktemp("two") / "out"
    result = run_script(command_on(demo_data, out, 2, "--max_steps", "1"), cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "states" / "step-00000001" / "portable.safetensors").is_file()
    return out


def samples_per_epoch(out):
    seen = {}
    for record in losses(out):
        seen.setdefault(record["epoch"], Counter()).update(record["samples"])
    return seen


@pytest.mark.parametrize("processes, accumulation", [(1, 1), (3, 1), (1, 2)])
def test_resume_on_another_world_size_uses_every_sample_once(stopped_after_one_step, demo_data, tmp_path, processes,
                                                             accumulation):
    out = tmp_path / "out"
    shutil.copytree(stopped_after_one_step, out)
    result = run_script(command_on(demo_data, out, processes, "--allow_world_size_change",
                                   "--gradient_accumulation_steps", str(accumulation)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    batch = processes * accumulation
    assert (f"resuming with {processes} processes x {accumulation} accumulation steps instead of 2 x 1: global batch "
            f"{batch} samples per optimizer step instead of 2 (--allow_world_size_change); epoch 0 continues from "
            f"sample 2 of 8" in result.stdout)
    # Step numbering continues: 1 step on 2 processes, then the rest of epoch 0 and all of epoch 1 on the new size.
    steps = 1 + -(-(ROWS - 2) // batch) + -(-ROWS // batch)
    assert [r["step"] for r in losses(out)] == list(range(1, steps + 1))
    assert samples_per_epoch(out) == {0: Counter(range(ROWS)), 1: Counter(range(ROWS))}
    assert (out / "final.safetensors").is_file()


def test_another_world_size_without_the_flag_is_refused_naming_it(stopped_after_one_step, demo_data, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(stopped_after_one_step, out)
    result = run_script(command_on(demo_data, out, 1), cwd=tmp_path)
    assert result.returncode != 0
    state = out / "states" / "step-00000001"
    assert (f"error: {state} was saved by 2 processes x 1 accumulation steps; to continue it with 1 processes x 1 "
            f"accumulation steps instead of 2 x 1: global batch 1 samples per optimizer step instead of 2, rerun with "
            f"--allow_world_size_change (or use 2 processes and --gradient_accumulation_steps 1)") in result.stderr
    assert [r["step"] for r in losses(out)] == [1]
