"""--report_to through accelerate's trackers: TensorBoard by default, W&B in offline mode (no network) or both."""
from conftest import run_script, train_command


def test_report_to_all_writes_tensorboard_events_and_an_offline_wandb_run(demo_data, tmp_path):
    out = tmp_path / "out"
    command = train_command(demo_data, out, "--report_to", "all", "--max_steps", "2")
    command[command.index("--num_gpus") + 1] = "1"
    result = run_script(command, cwd=tmp_path, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    logged = next(runs[0].glob("run-*.wandb")).read_bytes()  # protobuf records: keys and config names are plain
    assert b"train/loss" in logged and b"train/lr" in logged and b"lora_rank" in logged and b"report_to" in logged
