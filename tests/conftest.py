"""Shared fixtures (the tiny random-weight model and the demo dataset, written once per test session) and the
helpers of the training tests."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
SIZE = ["--num_frames", "9", "--height", "160", "--width", "96"]  # the demo's size, as training flags


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from wan_sft.model_files import write_model_folder

    return write_model_folder(tmp_path_factory.mktemp("tiny") / "model", "tiny")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """The demo's tiny model, generated mazes and CSV (./demo layout) in a session folder."""
    from wan_sft.demo import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo") / "demo")


def run_script(args, cwd, env=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the repo's entry points (bash launcher or python script) as a user would."""
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, **kwargs)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def losses(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines()]


def curve(output_dir):
    return [(r["step"], r["epoch"], r["loss"], r["lr"]) for r in losses(output_dir)]


def assert_same_lora(a, b):
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys() and len(first) > 0
    for key in first:
        assert torch.equal(first[key], second[key]), key


def train_command(demo, output_dir, *extra):
    return ["bash", str(REPO / "train_single_node.sh"), "--dataset", str(demo["csv"]), "--output_dir", str(output_dir),
            "--model_base_path", str(demo["model"]), "--num_gpus", "2", "--lora_rank", "4", "--num_epochs", "3",
            "--save_steps", "2", "--port", free_port(), *SIZE, *extra]


def start_until_state(command, workdir, state, stderr=subprocess.STDOUT) -> subprocess.Popen:
    """Start training in its own process group and return once `state` (a states/step-N folder) is complete."""
    process = subprocess.Popen(command, cwd=workdir, env={**os.environ, "PYTHON": sys.executable},
                               stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (state / "COMPLETE").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before its first save"
        time.sleep(0.01)
    return process


def run_until_state(command, workdir, state_dir, sig):
    """Start training, wait for its first complete state, send `sig` to the whole process tree."""
    process = start_until_state(command, workdir, state_dir / "step-00000002")
    os.killpg(process.pid, sig)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


@pytest.fixture(scope="module")
def uninterrupted(demo_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run_script(train_command(demo_data, workdir / "out"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result

