"""The dataset reader (wan_sft/datasets.py) and the generator, on generated data in both layouts."""
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from wan_sft.config import InputError
from wan_sft.datasets import read_puzzles
from wan_sft.evaluation import main as parallel_eval
from wan_sft.prepare import main as prepare_csv
from wan_sft.puzzles import TASKS, generate_task, main_generate
from wan_sft.scoring import score_eyeballing
from wan_sft.video import probe_video, read_frames

W, H, FRAMES = 96, 160, 9
TINY = dict(width=W, height=H, num_frames=FRAMES, fps=8)
COMMON_B = {"id", "ti2v_prompt", "ti2i_prompt", "ti2t_prompt", "ti2ti_prompt", "ti2t_answer", "ti2ti_answer", "image",
            "reasoning_image", "solution_image_path", "solution_video_path", "video_fps", "video_num_frames"}
EYEBALLING_B = {"canvas_dimensions", "margin", "candidates", "correct_option", "point_radius", "line_width", "seed"}
MAZE_B = {"canvas_dimensions", "start_point", "goal_point", "seed", "solution_path_cell_ids", "grid_size", "cell_size",
          "maze_grid", "start", "goal", "cell_bboxes", "padding"}
LOOKED_FOR = ("no puzzle dataset found; looked for data.json (a task folder), <task>/data.json (VLMPuzzle layout), "
              "tasks/<task>/data.json (VideoThinkBench layout), or either layout one folder further down (a folder "
              "of several roots)")


def _generate(root, layout, tasks=("maze_square", "midpoint", "circle_center"), num=2, seed=0):
    for task in tasks:
        generate_task(root, task, num, seed, layout=layout, grid_sizes=(3, 4), **TINY)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """<base>/a (VLMPuzzle layout) and <base>/b (VideoThinkBench layout), three tasks each."""
    base = tmp_path_factory.mktemp("roots")
    _generate(base / "a", "vlmpuzzle")
    _generate(base / "b", "videothinkbench")
    return base


def test_videothinkbench_layout_has_exactly_the_documented_keys(roots):
    b = roots / "b"
    assert sorted(p.name for p in b.iterdir()) == ["canonical_manifest.jsonl", "generation_report.json", "tasks"]
    for task, extra in (("maze_square", MAZE_B), ("midpoint", EYEBALLING_B | {"midpoint", "segment"}),
                        ("circle_center", EYEBALLING_B | {"circle"})):
        for record in json.loads((b / "tasks" / task / "data.json").read_text()):
            assert set(record) == COMMON_B | extra and "prompt" not in record
            assert re.fullmatch(r"worker_00__[0-9a-f]{32}", record["id"])
            assert (record["video_fps"], record["video_num_frames"], record["canvas_dimensions"]) == (8, FRAMES, [W, H])
            task_dir = b / "tasks" / task
            for key in ("image", "solution_image_path", "solution_video_path"):
                assert (task_dir / record[key]).is_file()
            assert (record["reasoning_image"] is not None) == (task == "maze_square")
            if task != "maze_square":
                assert all(set(c) == {"x", "y", "label"} for c in record["candidates"])
                assert record["ti2t_answer"] == record["correct_option"]
    manifest = [json.loads(line) for line in (b / "canonical_manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 6 and {m["task_type"] for m in manifest} == {"maze_square", "midpoint", "circle_center"}
    assert all((b / m["assets"]["solution_video"]).is_file() and m["prompts"]["ti2v"] for m in manifest)
    report = json.loads((b / "generation_report.json").read_text())
    assert report["tasks"]["midpoint"] == {"samples": 2, "seed": 0, "width": W, "height": H, "num_frames": FRAMES,
                                           "fps": 8}


def test_generation_is_byte_reproducible_and_regenerating_a_task_keeps_the_others(roots, tmp_path):
    _generate(tmp_path / "b", "videothinkbench")
    _generate(tmp_path / "b", "videothinkbench", tasks=("midpoint",))  # again: its manifest lines are replaced

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.suffix in (".png", ".json", ".jsonl", ".mp4")}

    assert files(tmp_path / "b") == files(roots / "b")
    _generate(tmp_path / "c", "videothinkbench", seed=1)
    assert files(tmp_path / "c")["tasks/midpoint/data.json"] != files(roots / "b")["tasks/midpoint/data.json"]


def test_defaults_are_videothinkbench_canvas_rate_and_clip_lengths(tmp_path, capsys):
    assert {task: frames for task, (_, _, frames) in TASKS.items()} == {
        "maze_square": 119, "midpoint": 36, "circle_center": 24}
    assert main_generate(["--out", str(tmp_path), "--task", "circle_center", "--num", "1"]) == 0
    assert capsys.readouterr().out == (f"wrote 1 circle_center puzzles (512x512, 24 frames @ 16 fps, seed 0) to "
                                       f"{tmp_path}/tasks/circle_center/data.json\n")
    record = json.loads((tmp_path / "tasks/circle_center/data.json").read_text())[0]
    info = probe_video(tmp_path / "tasks/circle_center" / record["solution_video_path"])
    assert (info.num_frames, info.width, info.height, info.fps) == (24, 512, 512, 16)
    assert main_generate(["--out", str(tmp_path / "a"), "--layout", "vlmpuzzle", "--task", "midpoint", "--num", "1",
                          "--num_frames", "5"]) == 0
    record = json.loads((tmp_path / "a/midpoint/data.json").read_text())[0]
    assert "solution_video_path" not in record and record["prompt"]
    assert probe_video(tmp_path / "a/midpoint/solutions" / f"{record['id']}_solution.mp4").num_frames == 5


def test_circle_center_solution_votes_the_centre(roots):
    for item in read_puzzles(roots / "b" / "tasks" / "circle_center"):
        record = item.record
        centre = record["circle"]["center"]
        answer = next(c for c in record["candidates"] if c["label"] == record["correct_option"])
        assert (answer["x"], answer["y"]) == tuple(centre)
        puzzle = Image.open(item.puzzle_path).convert("RGB")
        assert score_eyeballing(puzzle, record)["failure_reason"] == "too_few_red"
        frames = read_frames(item.solution_video)
        assert score_eyeballing(frames[-1], record)["pass"]
        # every frame with enough red votes the centre: the diameters grow symmetrically about it
        assert {score_eyeballing(f, record)["answer"] for f in frames[1:]} == {record["correct_option"]}
        wrong = next(c for c in record["candidates"] if c["label"] != record["correct_option"])
        marked = puzzle.copy()
        r = record["point_radius"]
        ImageDraw.Draw(marked).ellipse((wrong["x"] - r, wrong["y"] - r, wrong["x"] + r, wrong["y"] + r),
                                       fill=(220, 0, 0))
        assert score_eyeballing(marked, record)["answer"] == wrong["label"]


@pytest.mark.parametrize("where", ["a", "a/midpoint", "b", "b/tasks/midpoint", "."])
def test_discovery_from_each_kind_of_root(roots, where):
    """A task folder, a layout root (A or B), or a folder of several roots; task = the task folder's name."""
    items = read_puzzles(roots / where)
    expected_tasks = {"midpoint"} if where.endswith("midpoint") else {"maze_square", "midpoint", "circle_center"}
    assert {item.task for item in items} == expected_tasks
    assert len(items) == 2 * len(expected_tasks) * (2 if where == "." else 1)
    assert [item.key for item in items] == sorted(item.key for item in items)
    for item in items:
        assert item.puzzle_path.is_file() and item.solution_video.is_file() and item.prompt
        assert item.group == {"maze_square": "Maze Square"}.get(item.task, "Eyeballing Point")
        layout_b = "tasks" in item.task_dir.parts
        assert item.num_frames == (FRAMES if layout_b else None)
        assert item.prompt == item.record["ti2v_prompt" if layout_b else "prompt"]


def test_unknown_layout_is_one_line_naming_where_and_what(tmp_path):
    (tmp_path / "x" / "one" / "two" / "three").mkdir(parents=True)
    (tmp_path / "x" / "one" / "two" / "three" / "data.json").write_text("[]")  # too deep for any kind of root
    (tmp_path / "x" / "one" / "tasks").mkdir()  # a layout B root without task folders
    with pytest.raises(InputError) as error:
        read_puzzles(tmp_path / "x")
    assert str(error.value) == f"{tmp_path / 'x'}: {LOOKED_FOR}"


@pytest.mark.parametrize("bad_id, why", [("a/b", "contains '/'"), ("a\\b", "contains '\\\\'"),
                                         ("..", "contains '..'"), ("x\0y", "contains '\\x00'"),
                                         (".hidden", "starts with '.'"), ("", "is empty")])
def test_an_id_that_could_leave_the_output_folder_is_refused(tmp_path, bad_id, why):
    task = tmp_path / "t"
    task.mkdir()
    (task / "data.json").write_text(json.dumps([{"id": "ok", "prompt": "p"}, {"id": bad_id, "prompt": "p"}]))
    with pytest.raises(InputError) as error:
        read_puzzles(tmp_path)
    assert str(error.value) == (f"{task}/data.json record 2: id {bad_id!r} {why}, so it cannot be used as a file "
                                f"name; give the record a plain id (letters, digits, _ and -)")


def test_prepare_csv_reads_both_layouts_and_prompt_key(roots, tmp_path, capsys):
    size = ["--num_frames", str(FRAMES), "--height", str(H), "--width", str(W), "--workers", "1"]
    for layout in ("a", "b"):
        assert prepare_csv(["--dataset_root", str(roots / layout), "--output", str(tmp_path / f"{layout}.csv"),
                            *size]) == 0
    assert prepare_csv(["--dataset_root", str(roots / "b"), "--output", str(tmp_path / "t.csv"), "--prompt_key",
                        "ti2t_prompt", *size]) == 0
    capsys.readouterr()
    import pandas as pd

    b = pd.read_csv(tmp_path / "b.csv")
    assert len(pd.read_csv(tmp_path / "a.csv")) == len(b) == 6
    assert all(p.startswith("Use the provided puzzle image") and p.endswith("Static camera.") for p in b.prompt)
    assert all(p.endswith("Answer in text.") for p in pd.read_csv(tmp_path / "t.csv").prompt)


def test_parallel_eval_selects_by_plain_task_names_in_layout_b(roots, tmp_path):
    """--tasks, --ids_file (task/id) and --candidates_dir <dir>/<task>/<id>.png use the task folder's name (a PNG gets
    the last-frame verdict; Major Frame needs a video)."""
    items = read_puzzles(roots / "b", None)
    candidates = tmp_path / "cands"
    for item in items:
        (candidates / item.task).mkdir(parents=True, exist_ok=True)
        shutil.copy(item.solution_image, candidates / item.task / f"{item.id}.png")
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{item.key}\n" for item in items if item.task == "midpoint"))
    assert parallel_eval(["--dataset_root", str(roots / "b"), "--candidates_dir", str(candidates), "--tasks",
                          "midpoint,circle_center", "--ids_file", str(ids), "--output_dir", str(tmp_path / "e")]) == 0
    results = [json.loads(line) for line in (tmp_path / "e/results.jsonl").read_text().splitlines()]
    assert [(r["task"], r["id"], r["pass"], r["last_frame_pass"]) for r in results] == [
        (item.task, item.id, None, True) for item in items if item.task == "midpoint"]
    assert np.asarray(Image.open(tmp_path / "e" / results[0]["last_frame"])).shape == (H, W, 3)


def test_the_demo_evaluates_eyeballing_puzzles_beside_the_held_out_mazes(demo_data):
    from wan_sft.eval_items import find_items, select_items

    items = select_items(find_items(demo_data["datasets"]), ids_file=str(demo_data["eval_ids"]))
    assert [item.task for item in items] == ["circle_center"] * 2 + ["maze_square"] * 4 + ["midpoint"] * 2
    trained = {row.split(",")[0].strip('"') for row in demo_data["csv"].read_text().splitlines()[1:]}
    assert not {str(item.solution_video) for item in items} & trained


def test_suffixed_ids_are_plain_ids_and_a_repeated_id_is_refused(tmp_path):
    task = tmp_path / "tasks" / "midpoint"
    task.mkdir(parents=True)
    records = [{"id": "worker_00__ab", "ti2v_prompt": "p"}, {"id": "worker_00__ab__01", "ti2v_prompt": "q"}]
    (task / "data.json").write_text(json.dumps(records))
    items = read_puzzles(tmp_path)
    assert [(i.key, i.prompt, i.puzzle_path, i.solution_video) for i in items] == [
        ("midpoint/worker_00__ab", "p", task / "puzzles/worker_00__ab_puzzle.png",
         task / "solutions/worker_00__ab_solution.mp4"),
        ("midpoint/worker_00__ab__01", "q", task / "puzzles/worker_00__ab__01_puzzle.png",
         task / "solutions/worker_00__ab__01_solution.mp4")]
    (task / "data.json").write_text(json.dumps(records + [records[0]]))
    with pytest.raises(InputError) as error:
        read_puzzles(tmp_path)
    assert str(error.value) == (f"puzzle midpoint/worker_00__ab appears more than once ({task}/data.json record 1 and "
                                f"another record); ids must be unique within a task")


def test_a_prompt_key_without_prompts_is_named_before_any_model_loads(roots, capsys):
    from wan_sft import config

    assert parallel_eval(["--dataset_root", str(roots / "a"), "--candidates_dir", str(roots),
                          "--prompt_key", "ti2v_prompt"]) == 2
    assert capsys.readouterr().err == (f"error: {roots}/a/circle_center/data.json record 1 "
                                       "(id circle_center_s0_00000): "
                                       "has no 'ti2v_prompt'; add the prompt or choose another --prompt_key\n")
    import argparse

    parser = argparse.ArgumentParser()
    config.add_training_args(parser)
    with pytest.raises(InputError, match=r"^--val_prompt_key needs --val_dataset_root"):
        config.check_training_numbers(parser.parse_args(["--val_prompt_key", "prompt"]))
