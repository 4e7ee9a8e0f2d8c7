import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
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
    generate_maze_task(root, 4, (3, 4), width=W, height=H, num_frames=FRAMES, fps=8, layout="vlmpuzzle")
    generate_midpoint_task(root, 2, width=W, height=H, num_frames=FRAMES, fps=8, layout="vlmpuzzle")
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
    assert main(["--dataset_root", str(dataset), "--candidates_dir", str(candidates), "--attempt_dirs",
                 "--output_dir", str(tmp_path / "eval")]) == 0
    results = _results(tmp_path / "eval")
    for r in results:  # no video: the attempt folder holds the last frame and content.txt only
        assert sorted(p.name for p in (tmp_path / "eval/attempts" / r["task"] / r["id"]).iterdir()) == [
            "content.txt", "result.png"]
    assert [f"{r['task']}/{r['id']}" for r in results] == _keys(dataset)
    mazes = [r for r in results if r["task"] == "maze_square"]
    eyeballing = [r for r in results if r["task"] == "midpoint"]
    assert all(r["pass"] is passed for r in mazes)
    # A last frame (.png) gives the Last Frame verdict; Major Frame is unavailable and not counted.
    assert all(r["pass"] is None and r["last_frame_pass"] is passed for r in eyeballing)
    assert {r["not_scored"] for r in eyeballing} == {"Major Frame needs the video (.mp4); only a last frame (.png) "
                                                     "was given"}
    summary = json.loads((tmp_path / "eval/summary.json").read_text())
    assert summary["overall"]["pass_rate"] == (1.0 if passed else 0.0) and summary["overall"]["items"] == 6
    assert summary["overall"]["scored"] == 4
    point = summary["leaderboard"]["columns"]["Eyeballing Point"]
    assert (point["items"], point["not_scored"], point["pass_rate"]) == (0, 2, None)
    assert point["last_frame"] == {"items": 2, "passed": 2 if passed else 0, "pass_rate": 1.0 if passed else 0.0}
    assert summary["leaderboard"]["average_over"] == ["Maze Square"]
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
        shutil.copy(dataset / "maze_square" / f"solutions/{record['id']}_solution.mp4",
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
    assert f"error: {tmp_path}: no puzzle dataset found; looked for data.json" in capsys.readouterr().err
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
    result = _run(_command(dataset, tiny_model, output_dir, "--attempt_dirs"))
    assert result.returncode == 0, result.stderr
    return output_dir


def test_uninterrupted_run_outputs(uninterrupted, dataset):
    import numpy as np

    from wan_sft.video import read_frames

    results = _results(uninterrupted)
    assert [f"{r['task']}/{r['id']}" for r in results] == _keys(dataset)
    for r in results:
        # Scored on the written mp4 as decoded; its last decoded frame is the .png and the attempt's result.png.
        decoded = read_frames(uninterrupted / r["video"])
        attempt = uninterrupted / "attempts" / r["task"] / r["id"]
        assert (attempt / "video_1.mp4").read_bytes() == (uninterrupted / r["video"]).read_bytes()
        assert (attempt / "content.txt").read_text() == ""
        for png in (uninterrupted / r["last_frame"], attempt / "result.png"):
            with Image.open(png) as frame:
                assert np.array_equal(np.asarray(frame.convert("RGB")), np.asarray(decoded[-1]))
        if r["task"] == "midpoint":
            assert r["frames_scored"] == 2 and r["rule"] == "major_frame" and "last_frame_pass" in r
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
        assert all((merged / r[kind]).is_file() for kind in ("video", "last_frame", "input", "overlay"))


def test_worker_killed_midway_is_reported(dataset, tiny_model, tmp_path):
    """SIGKILL one worker while both are busy: the other finishes every other item; the lost item is named with the
    worker in the log, the error lines and summary.json, and the exit code is 1."""
    output_dir = tmp_path / "eval"
    process = subprocess.Popen(_command(dataset, tiny_model, output_dir), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    out_lines = []  # the workers' log (tqdm.write: stdout)
    reader = threading.Thread(target=lambda: out_lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 120
    # Both workers loaded (so each holds an item: 6 items, 2 workers) and one item done.
    while not (_item_jsons(output_dir) and "".join(out_lines).count(": pipeline loaded") == 2) and \
            time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    os.kill(int(workers[0]), signal.SIGKILL)
    err = process.stderr.read()
    process.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(out_lines)
    results = _results(output_dir)
    # The survivor wrote the last item (at least 4 were left when the other died): the killed one is the other.
    last = max(Path(output_dir).glob("*/*.json"), key=lambda path: path.stat().st_mtime_ns)
    survivor = json.loads(last.read_text())["worker"]
    killed = ({"cpu0", "cpu1"} - {survivor}).pop()
    (lost,) = re.findall(rf"{killed}: died \(exit code -9\) while on (\S+)\n", out)  # the log line, once
    finished = {f"{r['task']}/{r['id']}" for r in results}
    assert set(_keys(dataset)) - {lost} <= finished  # every other item finished
    summary = json.loads((output_dir / "summary.json").read_text())
    if lost in finished:  # killed after writing an item, before it was handed the next: nothing lost
        assert process.returncode == 0 and summary["unfinished"] == {} and "unfinished" not in err
    else:
        why = f"{killed} died (exit code -9) while generating it"
        assert process.returncode == 1 and summary["unfinished"] == {lost: why}
        assert f"error: 1 puzzles unfinished (rerun the same command to do just these):\n  {lost}: {why}\n" in err


# ---------------------------------------------------------------- the leaderboard's columns, from candidate videos

ARC_GRID = [[2, 4], [1, 0]]
ARC_COLOURS = {0: (0, 0, 0), 1: (0, 0, 255), 2: (255, 0, 0), 4: (255, 255, 0)}


def _task(root, task, records):
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / "data.json").write_text(json.dumps(records))


def _image(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def columns_dataset(tmp_path_factory):
    """midpoint (17-frame solution videos), color_grid (visual), arcagi (one record with the grid layout, one
    without), jigsaw (no leaderboard rule); candidates: <task>/<id>.mp4 for every item."""
    import numpy as np

    from wan_sft.video import write_video

    root, candidates = tmp_path_factory.mktemp("columns"), tmp_path_factory.mktemp("column_candidates")
    for record in generate_midpoint_task(root, 2, width=W, height=H, num_frames=17, fps=8,
                                          layout="vlmpuzzle"):
        (candidates / "midpoint").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "midpoint" / "solutions" / f"{record['id']}_solution.mp4",
                    candidates / "midpoint" / f"{record['id']}.mp4")
    blocks = np.zeros((64, 64, 3), dtype=np.uint8)
    blocks[:32, :32], blocks[:32, 32:], blocks[32:, :32], blocks[32:, 32:] = (200, 40, 40), (40, 200, 40), \
        (40, 40, 200), (230, 230, 230)
    arc = np.full((64, 64, 3), 128, dtype=np.uint8)
    for r, row in enumerate(ARC_GRID):
        for c, value in enumerate(row):
            arc[12 + 16 * r:28 + 16 * r, 12 + 16 * c:28 + 16 * c] = ARC_COLOURS[value]
    layout = {"cell_size": 16, "test_rows": 2, "test_cols": 2, "test_output": ARC_GRID,
              "placements": [{"kind": "test_output", "bbox": [12, 12, 44, 44]}]}
    tasks = {"color_grid": [("good", blocks, {}), ("bad", np.zeros_like(blocks), {})],
             "arcagi": [("laid_out", arc, layout), ("no_layout", arc, {})],
             "jigsaw": [("piece", blocks, {})]}
    for task, items in tasks.items():
        records = []
        for item_id, shown, extra in items:
            _image(root / task / f"puzzles/{item_id}_puzzle.png", np.full((64, 64, 3), 255, dtype=np.uint8))
            _image(root / task / f"solutions/{item_id}_solution.png", blocks if task == "color_grid" else arc)
            write_video(candidates / task / f"{item_id}.mp4", [np.full((64, 64, 3), 255, np.uint8), shown, shown])
            records.append({"id": item_id, "prompt": f"solve {task}", "image": f"puzzles/{item_id}_puzzle.png",
                            "solution_image_path": f"solutions/{item_id}_solution.png", **extra})
        _task(root, task, records)
    return root, candidates


def test_leaderboard_columns_from_candidate_videos(columns_dataset, tmp_path, capsys):
    root, candidates = columns_dataset
    assert main(["--dataset_root", str(root), "--candidates_dir", str(candidates), "--attempt_dirs",
                 "--output_dir", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    attempts = sorted(p.relative_to(tmp_path / "eval/attempts").as_posix()
                      for p in (tmp_path / "eval/attempts").rglob("*") if p.is_file())
    assert attempts == sorted(f"{task}/{item}/{name}" for task, item in (
        ("midpoint", "midpoint_s0_00000"), ("midpoint", "midpoint_s0_00001"), ("color_grid", "good"),
        ("color_grid", "bad"), ("arcagi", "laid_out"), ("arcagi", "no_layout"), ("jigsaw", "piece"))
        for name in ("video_1.mp4", "result.png", "content.txt"))
    results = {f"{r['task']}/{r['id']}": r for r in _results(tmp_path / "eval")}
    for key in ("midpoint/midpoint_s0_00000", "midpoint/midpoint_s0_00001"):  # Major Frame on the decoded mp4
        assert results[key]["pass"] is True and results[key]["frames_scored"] == 4 and results[key]["last_frame_pass"]
    good, bad = results["color_grid/good"], results["color_grid/bad"]
    assert good["pass"] is None and good["best_frame"] in (1, 2) and good["distance"] < bad["distance"]
    assert results["arcagi/laid_out"]["pass"] is True and results["arcagi/laid_out"]["predicted_grid"] == ARC_GRID
    assert results["arcagi/no_layout"]["pass"] is None and results["arcagi/no_layout"]["not_scored"] == (
        "the record has no ARC grid layout (placements, cell_size, test_rows, test_cols, test_output missing)")
    assert results["jigsaw/piece"]["not_scored"] == "the leaderboard has no rule for task 'jigsaw'"
    assert results["jigsaw/piece"]["overlay"] is None
    board = json.loads((tmp_path / "eval/summary.json").read_text())["leaderboard"]
    assert list(board["columns"]) == ["Eyeballing Point", "Visual Symmetry", "ARC-AGI-2"]
    assert board["columns"]["Eyeballing Point"]["pass_rate"] == 1.0
    assert board["columns"]["Visual Symmetry"]["items"] == 0 and board["columns"]["Visual Symmetry"]["not_scored"] == 2
    assert (board["columns"]["ARC-AGI-2"]["items"], board["columns"]["ARC-AGI-2"]["not_scored"]) == (1, 1)
    assert board["average"] == 1.0 and board["average_over"] == ["Eyeballing Point", "ARC-AGI-2"]
    assert board["published"]["average_same_columns_percent"] == round((17.78 + 0.71) / 2, 2)
    assert "not scored: jigsaw (1): the leaderboard has no rule for task 'jigsaw'" in out

    # Our threshold (not the leaderboard's) makes the visual puzzles count, labelled so.
    threshold = (good["distance"] + bad["distance"]) / 2
    assert main(["--dataset_root", str(root), "--candidates_dir", str(candidates), "--tasks", "color_grid",
                 "--visual_threshold", f"rgb={threshold}", "--output_dir", str(tmp_path / "thresholded")]) == 0
    board = json.loads((tmp_path / "thresholded/summary.json").read_text())["leaderboard"]
    column = board["columns"]["Visual Symmetry"]
    assert (column["items"], column["passed"]) == (2, 1)
    assert column["pass_rule"] == f"rgb distance <= {threshold:g} (not the leaderboard's)"
    assert "(not the leaderboard's)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--visual_threshold", "size=3"], "error: --visual_threshold 'size=3' is invalid: give a distance N (both "
                                       "metrics) or rgb=N,binary=M (rgb: sum of per-pixel RGB distances, binary: "
                                       "mismatched pixels)"),
    (["--visual_threshold", "-1"], "error: --visual_threshold '-1' is invalid"),
])
def test_bad_visual_threshold(columns_dataset, tmp_path, capsys, extra, message):
    root, candidates = columns_dataset
    assert main(["--dataset_root", str(root), "--candidates_dir", str(candidates), "--output_dir",
                 str(tmp_path / "eval"), *extra]) == 2
    assert capsys.readouterr().err.startswith(message) and not (tmp_path / "eval").exists()


def test_missing_solution_image_is_named(columns_dataset, tmp_path, capsys):
    root, candidates = columns_dataset
    copy = tmp_path / "data"
    shutil.copytree(root / "color_grid", copy / "color_grid")
    (copy / "color_grid/solutions/bad_solution.png").unlink()
    assert main(["--dataset_root", str(copy), "--candidates_dir", str(candidates), "--output_dir",
                 str(tmp_path / "eval")]) == 2
    assert capsys.readouterr().err == (f"error: color_grid/bad: solution image {copy}/color_grid/solutions/"
                                       f"bad_solution.png not found; the best_frame rule compares the generated "
                                       f"frames with it\n")


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
    from wan_sft.eval_items import item_path

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
    assert ("record 1: id '../../x' contains '/', so it cannot be used as a file name; give the record a plain id"
            in capsys.readouterr().err)
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
    # PNG candidates: mazes get their verdict, eyeballing its Last Frame verdict (Major Frame needs the video)
    assert all(r["pass"] if r["pass"] is not None else r["last_frame_pass"] for r in _results(output_dir))


def test_worker_killed_while_loading_is_named(dataset, tiny_model, tmp_path):
    """SIGKILL both workers before either loaded the pipeline (they are still importing): each is named with its
    exit code in the log, and every item is reported unfinished with that reason; exit code 1."""
    output_dir = tmp_path / "eval"
    process = subprocess.Popen(_command(dataset, tiny_model, output_dir), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    deadline, workers = time.time() + 60, []
    while len(workers) < 2 and time.time() < deadline:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        time.sleep(0.01)
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    assert "pipeline loaded" not in out  # killed while importing torch: well before the tiny model loads
    for name in ("cpu0", "cpu1"):
        assert f"{name}: exited (exit code -9) while loading the pipeline\n" in out
    why = "not started (cpu0: exited (exit code -9) while loading the pipeline; cpu1: exited (exit code -9) while " \
          "loading the pipeline)"
    summary = json.loads((output_dir / "summary.json").read_text())
    assert process.returncode == 1 and summary["unfinished"] == {key: why for key in _keys(dataset)}
