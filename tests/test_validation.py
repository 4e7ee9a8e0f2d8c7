"""Task validation during training: the real launcher, 2 CPU processes (gloo), the tiny model, the demo mazes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, assert_same_lora, free_port, losses, run_script
from tests.browser import chromium, watch
from wan_sft.data import Sample
from wan_sft.eval_items import find_items
from wan_sft.validation import read_best, read_rows, restore_history, training_puzzles, write_rows

VAL_STEPS = [2, 4, 6, 8]  # 8 training rows over 2 ranks, 2 epochs: 8 steps, validation at every save (2 steps)


def train_command(demo, output_dir, *extra):
    return ["bash", str(REPO / "train_single_node.sh"), "--dataset", str(demo["csv"]), "--output_dir", str(output_dir),
            "--model_base_path", str(demo["model"]), "--num_gpus", "2", "--lora_rank", "4", "--num_epochs", "2",
            "--save_steps", "2", "--port", free_port(), "--num_frames", "9", "--height", "160", "--width", "96",
            "--val_dataset_root", str(demo["puzzles"]), "--val_count", "4", "--val_num_inference_steps", "2", *extra]


def held_out_keys(demo) -> list[str]:
    return demo["val_ids"].read_text().split()


@pytest.fixture(scope="module")
def validated_run(demo_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("validated")
    result = run_script(train_command(demo_data, workdir / "out"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "out", result


def test_validation_runs_at_every_save_on_both_ranks(validated_run, demo_data):
    out, result = validated_run
    rows = read_rows(out)
    assert [(r["step"], r["task"], r["column"], r["items"]) for r in rows] == [
        row for s in VAL_STEPS for row in ((s, "maze_square", "Maze Square", 4), (s, "", "Maze Square", 4))]
    assert all(task["pass_rate"] == column["pass_rate"] for task, column in zip(rows[::2], rows[1::2], strict=True))
    rows = [r for r in rows if r["task"]]
    keys = held_out_keys(demo_data)
    for step in VAL_STEPS:
        frames = sorted(p.relative_to(out / "validation" / f"step-{step}").with_suffix("").as_posix()
                        for p in (out / "validation" / f"step-{step}").rglob("*.png"))
        assert frames == keys  # the CSV's held-out ids, both ranks' shares
    for step in VAL_STEPS:
        assert f"validation at step {step}: pass rate" in result.stdout
    best = read_best(out)
    rates = {r["step"]: r["passed"] / r["items"] for r in rows}
    assert best["pass_rate"] == max(rates.values())
    assert best["step"] == min(s for s, rate in rates.items() if rate == best["pass_rate"])  # earliest on ties
    assert best["lora"] == "best.safetensors"
    assert_same_lora(out / "best.safetensors", out / f"step-{best['step']}.safetensors")
    assert [r["step"] for r in losses(out)] == list(range(1, 9))  # training itself unchanged


def test_history_survives_sigkill_and_resume(validated_run, demo_data, tmp_path):
    """Killed after the validation at step 4 wrote its rows, with no complete state past step 2 (the state at
    step 4 was being written): the rerun drops the step-4 rows and frames, redoes them, and ends as the
    uninterrupted run did."""
    out = tmp_path / "out"
    command = train_command(demo_data, out, "--keep_states", "8")  # however far it got, the state at step 2 stays
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not any(r["step"] == 4 for r in read_rows(out)):
        assert process.poll() is None and time.time() < deadline, "training ended before its second validation"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=120)
    for state in (out / "states").glob("step-*"):
        if int(state.name.removeprefix("step-")) > 2:
            (state / "COMPLETE").unlink(missing_ok=True)
    assert [r["step"] for r in read_rows(out) if r["task"]][:2] == [2, 4]

    command[command.index("--port") + 1] = free_port()
    rerun = run_script(command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step 2" in rerun.stdout
    reference = validated_run[0]
    assert read_rows(out) == read_rows(reference)  # no step lost or duplicated, same pass rates
    assert read_best(out) == read_best(reference)
    assert_same_lora(out / "best.safetensors", reference / "best.safetensors")
    assert sorted(p.name for p in (out / "validation").iterdir()) == [f"step-{s}" for s in VAL_STEPS]


def test_restore_history_recomputes_a_best_from_dropped_steps(tmp_path):
    """Resumed at step 4 while best.json names step 6: rows after 4 go, the best is recomputed from the kept rows
    (earliest of equal rates) and best.safetensors is that step's export."""
    rows = [{"step": s, "task": t, "column": "C" if t else "Maze Square", "items": n, "passed": p, "pass_rate": p / n}
            for s, t, n, p in [(2, "a", 2, 1), (2, "b", 2, 0), (4, "a", 2, 1), (4, "b", 2, 0),
                               (4, "", 9, 9),  # a column row: not part of the overall rate (else step 4 were best)
                               (6, "a", 2, 2), (6, "b", 2, 2)]]
    write_rows(tmp_path, rows)
    for step in (2, 4, 6):
        (tmp_path / f"step-{step}.safetensors").write_bytes(f"lora {step}".encode())
        (tmp_path / "validation" / f"step-{step}" / "a").mkdir(parents=True)
    (tmp_path / "best.json").write_text(json.dumps({"step": 6, "pass_rate": 1.0, "lora": "best.safetensors"}))
    (tmp_path / "best.safetensors").write_bytes(b"lora 6")

    assert restore_history(tmp_path, 4) == 0.25
    assert read_rows(tmp_path) == rows[:5]
    assert read_best(tmp_path) == {"step": 2, "pass_rate": 0.25, "lora": "best.safetensors"}
    assert (tmp_path / "best.safetensors").read_bytes() == b"lora 2"
    assert sorted(p.name for p in (tmp_path / "validation").iterdir()) == ["step-2", "step-4"]

    assert restore_history(tmp_path, 4) == 0.25  # a best at or before the resumed step is kept as it is
    assert restore_history(tmp_path, 0) is None  # nothing kept: no best
    assert read_rows(tmp_path) == [] and not (tmp_path / "best.json").exists()
    assert not (tmp_path / "best.safetensors").exists()


def test_trimmed_clips_are_matched_to_their_puzzle(demo_data):
    items = find_items(demo_data["puzzles"])
    clip = "/elsewhere/dataset_clips/000003_maze_square_s0_00002_solution.mp4"
    found = training_puzzles([Sample(clip, "p", 1)], items)
    assert {key: sample.row for key, sample in found.items()} == {"maze_square/maze_square_s0_00002": 1}


def _launch(tmp_path, demo, *extra):
    command = train_command(demo, tmp_path / "out", *extra)
    return run_script(command, cwd=tmp_path, timeout=120)


def test_validation_puzzles_in_the_training_csv_are_refused(demo_data, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("maze_square/maze_square_s0_00000\nmaze_square/maze_square_s0_00002\n")
    result = _launch(tmp_path, demo_data, "--val_ids_file", str(ids))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: 1 of the 2 validation puzzles are in the training CSV {demo_data['csv']} (first: "
        f"maze_square/maze_square_s0_00002, row 2); validate on held-out puzzles: make the CSV with prepare_csv.py "
        f"--val_count N (its <stem>_val_ids.txt is the default) or pass --val_ids_file")
    assert not (tmp_path / "accelerate_config.yaml").exists() and not (tmp_path / "out").exists()


def test_without_held_out_ids_the_first_puzzles_overlap_and_are_refused(demo_data, tmp_path):
    csv_copy = tmp_path / "train.csv"  # no train_val_ids.txt beside it: the first 4 puzzles by task/id
    csv_copy.write_text(demo_data["csv"].read_text())
    command = train_command(demo_data, tmp_path / "out")
    command[command.index("--dataset") + 1] = str(csv_copy)
    result = run_script(command, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert f"error: 3 of the 4 validation puzzles are in the training CSV {csv_copy} (first: " \
           f"maze_square/maze_square_s0_00001, row 1)" in result.stderr
    assert not (tmp_path / "accelerate_config.yaml").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,message", [
    (["--val_count", "0"], "error: --val_count 0 is invalid: it must be at least 1"),
    (["--val_ids_file", "/nonexistent.txt"], "error: --val_ids_file /nonexistent.txt: file not found"),
    (["--val_dataset_root", "/nonexistent"], "error: --val_dataset_root /nonexistent: not a folder"),
])
def test_bad_validation_flags_are_refused(demo_data, tmp_path, extra, message):
    result = _launch(tmp_path, demo_data, *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_training_report_shows_loss_pass_rate_and_best(validated_run, tmp_path):
    out = validated_run[0]
    (out / "training_report.html").unlink()
    result = run_script([sys.executable, "-m", "wan_sft.validation", str(out)], cwd=REPO,  # on demand
                        env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    best = str(read_best(out)["step"])
    with chromium() as browser:
        page = browser.new_page()
        problems = watch(page)
        page.goto((out / "training_report.html").as_uri(), wait_until="load")
        series = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('svg path.series')].map(p =>\n"
            "            [p.closest('div').id + ':' + p.dataset.series, "
            "p.getAttribute('d').split(/[ML]/).filter(Boolean).length]))")
        assert series["loss-chart:loss"] == 8
        assert series["validation-chart:maze_square"] == len(VAL_STEPS)
        for chart in ("#loss-chart", "#validation-chart"):
            assert page.locator(f"{chart} .best-marker").get_attribute("data-step") == best
        assert page.locator("#validation tr.best").get_attribute("data-step") == best
        assert problems.all() == []
