"""Shared fixtures: the tiny random-weight model and the demo dataset, written once per test session."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
