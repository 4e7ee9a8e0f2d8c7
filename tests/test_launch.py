"""The single-node launcher: the config it writes, and bad input refused before anything is written or loaded."""
import pytest
import yaml

from conftest import REPO, run_script
from wan_sft.launch import accelerate_config, write_accelerate_config


def test_gpu_config_is_deepspeed_zero2_bf16_static_rendezvous(tmp_path):
    config = yaml.safe_load(write_accelerate_config(tmp_path / "a.yaml", 8, use_gpu=True).read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 2
    assert config["mixed_precision"] == "bf16" and config["num_processes"] == 8
    assert config["rdzv_backend"] == "static" and config["num_machines"] == 1
    assert config["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"


def test_cpu_configs():
    assert accelerate_config(1, use_gpu=False)["distributed_type"] == "NO"
    two = accelerate_config(2, use_gpu=False)
    assert two["distributed_type"] == "MULTI_GPU" and two["num_processes"] == 2 and two["mixed_precision"] == "no"


def launch(tmp_path, *args, env=None):
    return run_script(["bash", str(REPO / "train_single_node.sh"), *args], cwd=tmp_path, env=env, timeout=120)


@pytest.fixture
def good_args(demo_data, tmp_path):
    return ["--dataset", str(demo_data["csv"]), "--model_base_path", str(demo_data["model"]),
            "--output_dir", str(tmp_path / "out"), "--num_frames", "9", "--height", "160", "--width", "96"]


def with_flag(args, flag, value):
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


@pytest.mark.parametrize("flag,value,message", [
    ("--num_frames", "8", "error: --num_frames 8 is invalid: Wan2.2 needs 4k+1 frames with k >= 1 (e.g. 5 or 9)"),
    ("--height", "150", "error: --height 150 is invalid: it must be a multiple of 32 (e.g. 128 or 160)"),
    ("--width", "100", "error: --width 100 is invalid: it must be a multiple of 32 (e.g. 96 or 128)"),
    ("--num_frames", "13", "has 9 frames, fewer than --num_frames 13"),
    ("--lora_rank", "0", "error: --lora_rank 0 is invalid: it must be at least 1"),
    ("--collective_timeout", "0", "error: --collective_timeout 0 is invalid: it must be at least 1"),
    ("--lora_checkpoint", "/nonexistent/lora.safetensors", "error: /nonexistent/lora.safetensors: LoRA file not found"),
    ("--lora_path", "/nonexistent/lora.safetensors", "error: /nonexistent/lora.safetensors: LoRA file not found"),
    ("--model_base_path", "/nonexistent", "error: MODEL_BASE_PATH /nonexistent is not a directory"),
    ("--dataset", "/nonexistent.csv", "/nonexistent.csv"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, good_args, flag, value, message):
    result = launch(tmp_path, *with_flag(good_args, flag, value))
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "accelerate_config.yaml").exists() and not (tmp_path / "out").exists()


def test_bad_csv_row_names_the_row(tmp_path, good_args, demo_data):
    bad = tmp_path / "bad.csv"
    lines = demo_data["csv"].read_text().splitlines()
    bad.write_text("\n".join(lines[:3] + ['"/nowhere/clip.mp4","draw a red path"'] + lines[3:]) + "\n")
    result = launch(tmp_path, *with_flag(good_args, "--dataset", str(bad)))
    assert result.returncode == 2
    assert f"error: {bad} row 3 (/nowhere/clip.mp4): file not found" in result.stderr
    assert not (tmp_path / "accelerate_config.yaml").exists()


def test_missing_model_base_path_is_explained(tmp_path, good_args):
    args = good_args[:2] + good_args[4:]  # drop --model_base_path
    result = launch(tmp_path, *args, env={"MODEL_BASE_PATH": ""})
    assert result.returncode == 2
    assert "error: MODEL_BASE_PATH is not set: export MODEL_BASE_PATH=/path/to/Wan2.2-TI2V-5B" in result.stderr


def test_ctrl_c_while_validating_ends_with_one_line(tmp_path):
    """Before training starts there is nothing to save: one line, exit 130, no traceback, nothing written."""
    import os
    import subprocess
    import sys

    code = ("import os, signal, sys; from wan_sft import launch; "
            "launch.validate = lambda *a: os.kill(os.getpid(), signal.SIGINT); "
            "sys.exit(launch.main(['single', '--dataset', 'd.csv', '--model_base_path', 'm']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 130
    assert result.stderr == "stopped by signal before training started; nothing to save\n"
    assert list(tmp_path.iterdir()) == []


def test_master_port_sets_the_default_port_and_a_bad_value_is_one_line(monkeypatch, capsys):
    from wan_sft.launch import single_node_parser

    flags = ["--dataset", "x.csv"]
    monkeypatch.setenv("MASTER_PORT", "")  # set but empty, as some schedulers leave it: the default
    assert single_node_parser().parse_args(flags).port == 29500
    monkeypatch.setenv("MASTER_PORT", "31234")
    assert single_node_parser().parse_args(flags).port == 31234
    assert single_node_parser().parse_args([*flags, "--port", "40000"]).port == 40000
    monkeypatch.setenv("MASTER_PORT", "abc")
    with pytest.raises(SystemExit) as exit_info:
        single_node_parser().parse_args(flags)
    assert exit_info.value.code == 2
    assert "argument --port: invalid int value: 'abc'" in capsys.readouterr().err
