import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO
from wan_sft.evaluation import main
from wan_sft.puzzles import generate_maze_task, generate_midpoint_task

W, H, FRAMES = 96, 160, 9
TIMING_FIELDS = {"seconds_generate", "seconds_score", "worker"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vlmpuzzle")
    generate_maze_task(root, 4, (3, 4), width=W, height=H, num_frames=FRAMES, fps=8)
    generate_midpoint_task(root, 2, width=W, height=H, num_frames=FRAMES, fps=8)
    return root


def _keys(dataset):
    return sorted(f"{task.name}/{record['id']}" for task in dataset.iterdir()
                  for record in json.loads((task / "data.json").read_text()))


def _candidates(dataset, out, source):
    """<out>/<task>/<id>.png copied from each record's solution image or bare puzzle image."""
    for task in dataset.iterdir():
        for record in json.loads((task / "data.json").read_text()):
            (out / task.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(task / record[source], out / task.name / f"{record['id']}.png")
    return out


def _results(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "results.jsonl").read_text().splitlines()]


def _without_timings(results):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in results]


@pytest.mark.parametrize("source, passed", [("solution_image_path", True), ("image", False)])
def test_candidates_dir_scores_without_a_model(dataset, tmp_path, capsys, source, passed):
    candidates = _candidates(dataset, tmp_path / "cands", source)
    assert main(["--dataset_root", str(dataset), "--candidates_dir", str(candidates),
                 "--output_dir", str(tmp_path / "eval")]) == 0
    results = _results(tmp_path / "eval")
    assert [f"{r['task']}/{r['id']}" for r in results] == _keys(dataset)
    assert all(r["pass"] is passed for r in results)
    summary = json.loads((tmp_path / "eval/summary.json").read_text())
    assert summary["overall"]["pass_rate"] == (1.0 if passed else 0.0) and summary["overall"]["items"] == 6
    assert summary["tasks"]["maze_square"]["mean_corridor_precision"] == 1.0  # bare puzzles: only endpoint red
    assert summary["tasks"]["maze_square"]["failure_reasons"] == ({} if passed else {"not_connected": 4})
    for r in results:  # the layout --candidates_dir reads, so this folder can be re-scored in turn
        assert (tmp_path / "eval" / r["last_frame"]).is_file() and (tmp_path / "eval" / r["overlay"]).is_file()
    assert "overall" in capsys.readouterr().out


def test_candidates_from_videos_and_selection_flags(dataset, tmp_path):
    """mp4 candidates (last decoded frame), --tasks, --limit and --ids_file."""
    candidates = tmp_path / "videos"
    for record in json.loads((dataset / "maze_square/data.json").read_text()):
        (candidates / "maze_square").mkdir(parents=True, exist_ok=True)
        shutil.copy(dataset / "maze_square" / record["solution_video_path"],
                    candidates / "maze_square" / f"{record['id']}.mp4")
    assert main(["--input_dir", str(dataset), "--candidates_dir", str(candidates), "--tasks", "maze_square",
                 "--limit", "3", "--output_dir", str(tmp_path / "a")]) == 0
    results = _results(tmp_path / "a")
    assert [r["id"] for r in results] == [f"maze_square_s0_0000{i}" for i in range(3)]
    assert all(r["video"] and (tmp_path / "a" / r["video"]).is_file() for r in results)
    assert all(r["failure_reason"] in (None, "wall_overlap") for r in results)  # lossy mp4: edges may bleed
    ids = tmp_path / "val_ids.txt"
    ids.write_text("maze_square/maze_square_s0_00003\n\nmaze_square/maze_square_s0_00001\n")
    assert main(["--dataset_root", str(dataset), "--candidates_dir", str(candidates), "--ids_file", str(ids),
                 "--output_dir", str(tmp_path / "b")]) == 0
    assert [r["id"] for r in _results(tmp_path / "b")] == ["maze_square_s0_00001", "maze_square_s0_00003"]


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "maze_hexagon"], "--tasks 'maze_hexagon' is not in the dataset (tasks: maze_square, midpoint)"),
    (["--num_frames", "8"], "--num_frames 8 is invalid"),
    (["--lora_path", "missing.safetensors"], "missing.safetensors: LoRA file not found"),
    (["--num_shards", "2", "--shard_index", "2"], "--num_shards 2 --shard_index 2 is invalid"),
    (["--limit", "0"], "--limit 0 is invalid"),
])
def test_bad_inputs_fail_before_any_worker(dataset, tiny_model, tmp_path, capsys, extra, message):
    argv = ["--dataset_root", str(dataset), "--model_base_path", str(tiny_model), "--output_dir",
            str(tmp_path / "eval"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "eval").exists()


def test_bad_dataset_inputs(tmp_path, dataset, capsys):
    assert main(["--dataset_root", str(tmp_path)]) == 2
    assert f"error: {tmp_path}: no data.json found below it; pass the VLMPuzzle dataset root" in capsys.readouterr().err
    ids = tmp_path / "ids.txt"
    ids.write_text("maze_square/nope\n")
    assert main(["--dataset_root", str(dataset), "--candidates_dir", str(tmp_path), "--ids_file", str(ids)]) == 2
    assert "1 entries are not in the (filtered) dataset, first: maze_square/nope" in capsys.readouterr().err
    assert main(["--dataset_root", str(dataset), "--candidates_dir", str(tmp_path)]) == 2
    assert "6 of 6 puzzles have neither <task>/<id>.png nor .mp4" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end on the tiny model, 2 CPU workers


def _command(dataset, tiny_model, output_dir, *extra, workers=2):
    return [sys.executable, "parallel_eval.py", "--dataset_root", str(dataset), "--model_base_path", str(tiny_model),
            "--output_dir", str(output_dir), "--num_frames", str(FRAMES), "--height", str(H), "--width", str(W),
            "--num_inference_steps", "2", "--workers", str(workers), *extra]


# One thread per worker in every run, so results are bit-identical whatever the worker count.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(command):
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)


def _item_jsons(output_dir):
    return {p.relative_to(output_dir).as_posix(): p.stat().st_mtime_ns
            for p in Path(output_dir).glob("*/*.json")}


@pytest.fixture(scope="module")
def uninterrupted(dataset, tiny_model, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("full")
    result = _run(_command(dataset, tiny_model, output_dir))
    assert result.returncode == 0, result.stderr
    return output_dir


def test_uninterrupted_run_outputs(uninterrupted, dataset):
    results = _results(uninterrupted)
    assert [f"{r['task']}/{r['id']}" for r in results] == _keys(dataset)
    for r in results:
        for kind in ("video", "last_frame", "input", "overlay"):
            assert (uninterrupted / r[kind]).is_file()
        with Image.open(uninterrupted / r["input"]) as shown, Image.open(r["puzzle"]) as puzzle:
            assert shown.size == (W, H) and shown.convert("RGB").tobytes() == puzzle.convert("RGB").resize(
                (W, H), Image.NEAREST).tobytes()  # the puzzle as the model saw it, inside the output folder
        assert f'src="{r["input"]}"' in (uninterrupted / "report.html").read_text()
        assert r["seconds_generate"] > 0 and r["worker"] in ("cpu0", "cpu1") and Path(r["puzzle"]).is_file()
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["items_this_run"] == 6 and summary["items_per_hour"] > 0 and summary["unfinished"] == {}
    assert summary["settings"]["num_inference_steps"] == 2 and summary["settings"]["width"] == W


def test_killed_run_resumes_with_only_the_missing_items(uninterrupted, dataset, tiny_model, tmp_path):
    output_dir = tmp_path / "eval"
    process = subprocess.Popen(_command(dataset, tiny_model, output_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while not _item_jsons(output_dir) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = _item_jsons(output_dir)
    assert 0 < len(done) < 6
    time.sleep(1.5)
    assert _item_jsons(output_dir) == done  # the workers died with their parent

    result = _run(_command(dataset, tiny_model, output_dir))
    assert result.returncode == 0, result.stderr
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["items_this_run"] == 6 - len(done)
    after = _item_jsons(output_dir)
    assert all(after[name] == stamp for name, stamp in done.items())  # finished items were not redone
    assert _without_timings(_results(output_dir)) == _without_timings(_results(uninterrupted))

    # A finished run is skipped entirely (no worker starts).
    result = _run(_command(dataset, tiny_model, output_dir))
    assert result.returncode == 0 and "6 already finished" in result.stdout and "pipeline loaded" not in result.stderr
    assert _item_jsons(output_dir) == after
    # Other settings in the same folder are refused.
    result = _run(_command(dataset, tiny_model, output_dir, "--seed", "1"))
    assert result.returncode == 2 and "holds a run with other settings (seed differ)" in result.stderr


def test_shards_and_merge_equal_one_run(uninterrupted, dataset, tiny_model, tmp_path):
    for index in (0, 1):
        result = _run(_command(dataset, tiny_model, tmp_path / f"shard{index}", "--num_shards", "2",
                               "--shard_index", str(index), workers=1))
        assert result.returncode == 0, result.stderr
        assert len(_results(tmp_path / f"shard{index}")) == 3
    merged = tmp_path / "merged"
    assert main(["merge", "--output_dir", str(merged), str(tmp_path / "shard0"), str(tmp_path / "shard1")]) == 0
    assert _without_timings(_results(merged)) == _without_timings(_results(uninterrupted))
    summary, full = (json.loads((d / "summary.json").read_text()) for d in (merged, uninterrupted))
    assert summary["overall"] == full["overall"] and summary["tasks"] == full["tasks"]
    for r in _results(merged):
        assert (merged / r["video"]).is_file() and (merged / r["last_frame"]).is_file()


def test_worker_killed_midway_is_reported(dataset, tiny_model, tmp_path):
    """SIGKILL one worker: the other finishes the queue; the lost item is named and the exit code is 1."""
    output_dir = tmp_path / "eval"
    process = subprocess.Popen(_command(dataset, tiny_model, output_dir), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not _item_jsons(output_dir) and time.time() < deadline:
        time.sleep(0.02)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    os.kill(int(workers[0]), signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    finished = len(_item_jsons(output_dir))
    if finished == 6:  # the worker was between items: nothing lost
        assert process.returncode == 0
    else:
        assert process.returncode == 1 and "puzzles unfinished" in err and "died (exit code -9)" in err
        summary = json.loads((output_dir / "summary.json").read_text())
        assert len(summary["unfinished"]) == 6 - finished


def test_a_changed_lora_behind_the_same_path_is_refused_or_redone(dataset, tiny_model, tmp_path):
    """Finished items belong to the LoRA's content, not its path: more training into the same file is refused
    (naming what changed) unless --redo, which generates every item again."""
    import torch

    from wan_sft.lora import add_lora, export_lora, lora_state_dict
    from wan_sft.model_files import load_pipeline

    dit = load_pipeline(tiny_model, "cpu", torch.float32, with_text_encoder=False, with_vae=False).dit
    add_lora(dit, 2)
    lora = tmp_path / "final.safetensors"
    export_lora(lora_state_dict(dit), lora)
    output_dir = tmp_path / "eval"
    command = _command(dataset, tiny_model, output_dir, "--lora_path", str(lora), "--tasks", "midpoint",
                       "--limit", "1", "--num_inference_steps", "1", workers=1)
    assert _run(command).returncode == 0
    first = _item_jsons(output_dir)
    assert len(first) == 1

    state = lora_state_dict(dit)
    export_lora({k: v + 0.01 for k, v in state.items()}, lora)  # "trained further", same path
    result = _run(command)
    assert result.returncode == 2
    assert result.stderr == (f"error: {output_dir} holds a run with other settings (lora_sha256 differ); use a new "
                             f"--output_dir or the same settings (or --redo to do every item again)\n")
    assert _item_jsons(output_dir) == first  # nothing touched

    result = _run(command + ["--redo"])
    assert result.returncode == 0, result.stderr
    assert "--redo: 1 finished items" in result.stdout and "0 already finished" in result.stdout
    redone = _item_jsons(output_dir)
    assert redone.keys() == first.keys() and all(redone[k] != first[k] for k in first)
    assert _run(command).returncode == 0  # the folder now belongs to the new LoRA


@pytest.mark.parametrize("task, item_id", [("maze_square", "../../x"), ("..", "x"), ("maze_square", "a/../../x"),
                                           ("../maze_square", "x"), ("maze_square", "..")])
def test_an_item_path_never_leaves_the_output_dir(tmp_path, task, item_id):
    from wan_sft.config import InputError
    from wan_sft.evaluation import item_path

    with pytest.raises(InputError) as error:
        item_path(tmp_path / "out", task, item_id, "result")
    assert str(error.value) == (f"puzzle {task}/{item_id}: its files would be written outside {tmp_path / 'out'}; "
                                f"a task and id must be plain names below it (fix the dataset's data.json)")
    inside = item_path(tmp_path / "out", "group/maze_square", "x.y", "frame")
    assert inside == tmp_path / "out/group/maze_square/x.y.png"


def test_a_climbing_id_in_data_json_is_refused_at_reading_time(dataset, tmp_path, capsys):
    hostile = tmp_path / "hostile"
    shutil.copytree(dataset / "midpoint", hostile / "midpoint")
    records = json.loads((hostile / "midpoint/data.json").read_text())
    records[0]["id"] = "../../x"
    (hostile / "midpoint/data.json").write_text(json.dumps(records))
    assert main(["--dataset_root", str(hostile), "--candidates_dir", str(tmp_path), "--output_dir",
                 str(tmp_path / "eval")]) == 2
    assert "needs an 'id' usable as a file name (got '../../x')" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists() and not list(tmp_path.parent.glob("x*"))


def test_a_symlinked_candidate_outside_the_candidates_dir_is_only_read(dataset, tmp_path):
    candidates = _candidates(dataset, tmp_path / "cands", "solution_image_path")
    outside = tmp_path / "elsewhere.png"
    first = sorted((candidates / "maze_square").glob("*.png"))[0]
    shutil.move(first, outside)
    first.symlink_to(outside)
    before = (outside.read_bytes(), outside.stat().st_mtime_ns)
    output_dir = tmp_path / "eval"
    output_dir.mkdir()
    (output_dir / "maze_square").mkdir()
    trap = output_dir / "maze_square" / first.name  # a link planted where the output goes: replaced, not followed
    trap.symlink_to(outside)
    assert main(["--dataset_root", str(dataset), "--candidates_dir", str(candidates),
                 "--output_dir", str(output_dir)]) == 0
    assert (outside.read_bytes(), outside.stat().st_mtime_ns) == before
    assert not trap.is_symlink() and trap.read_bytes() != b""
    assert all(r["pass"] for r in _results(output_dir))
