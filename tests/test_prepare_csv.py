import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wan_sft.data import read_training_csv
from wan_sft.geometry import fit_image
from wan_sft.prepare import main
from wan_sft.video import probe_video, read_frames, write_video

SIZE = ["--num_frames", "9", "--height", "64", "--width", "64", "--workers", "2"]


def make_video(path, num_frames=9, width=64, height=64):
    """Frame i is a flat grey of level 15*i, so frames can be told apart after lossy encoding."""
    write_video(path, [np.full((height, width, 3), 15 * i, np.uint8) for i in range(num_frames)])
    return str(path)


def run(capsys, *args):
    """(exit code, stdout, stderr) of prepare_csv.py."""
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def squeeze(text):
    return " ".join(text.split())


def rows(csv_path):
    return [(sample.video, sample.prompt) for sample in read_training_csv(csv_path)]


def make_dataset_root(root, tasks=("maze_square", "midpoint"), per_task=3):
    """A tiny VLMPuzzle-like root: records alternate solution_video_path and the solution image's .mp4 twin."""
    for task in tasks:
        records = []
        for i in range(per_task):
            make_video(root / task / "solutions" / f"{i}_solution.mp4")
            record = {"id": i, "prompt": f"{task} plain {i}", "image": f"puzzles/{i}_puzzle.png"}
            if i % 2:
                record.update(solution_image_path=f"solutions/{i}_solution.png", ti2v_prompt=f"{task} ti2v {i}")
            else:
                record["solution_video_path"] = f"solutions/{i}_solution.mp4"
            records.append(record)
        (root / task / "data.json").write_text(json.dumps(records))
    return root


def test_dataset_root(tmp_path, capsys):
    root = make_dataset_root(tmp_path / "root")
    code, out, err = run(capsys, "--dataset_root", root, "--output", tmp_path / "d.csv", *SIZE)
    assert (code, err) == (0, "")
    assert rows(tmp_path / "d.csv")[:3] == [
        (str(root / "maze_square/solutions/0_solution.mp4"), "maze_square plain 0"),
        (str(root / "maze_square/solutions/1_solution.mp4"), "maze_square ti2v 1"),
        (str(root / "maze_square/solutions/2_solution.mp4"), "maze_square plain 2")]
    assert len(rows(tmp_path / "d.csv")) == 6
    assert "rows in 6" in squeeze(out) and "rows out 6" in squeeze(out)


def test_jsonl_with_relative_paths_and_numeric_prompt(tmp_path, capsys):
    make_video(tmp_path / "clips" / "a.mp4")
    lines = [{"video": "clips/a.mp4", "prompt": 42}, {}, {"video_path": str(tmp_path / "clips/a.mp4"), "prompt": "b"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(line) if line else "" for line in lines))
    code, _, _ = run(capsys, "--jsonl", tmp_path / "d.jsonl", "--output", tmp_path / "d.csv", *SIZE)
    assert code == 0
    assert rows(tmp_path / "d.csv") == [(str(tmp_path / "clips/a.mp4"), "42"), (str(tmp_path / "clips/a.mp4"), "b")]


def test_jsonl_bad_line_is_input_error(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"video": "a.mp4", "prompt": "x"}\n{"video": \n')
    code, _, err = run(capsys, "--jsonl", tmp_path / "d.jsonl", "--output", tmp_path / "d.csv", *SIZE)
    assert code == 2 and not (tmp_path / "d.csv").exists()
    assert err.startswith(f"error: {tmp_path / 'd.jsonl'} line 2: not valid JSON (Expecting value); write one JSON")


def test_video_dir_with_captions_and_prompt_fallback(tmp_path, capsys):
    make_video(tmp_path / "v" / "a.mp4")
    make_video(tmp_path / "v" / "b.mp4")
    (tmp_path / "v" / "a.txt").write_text("caption a\n")
    code, _, _ = run(capsys, "--video_dir", tmp_path / "v", "--output", tmp_path / "d.csv", "--prompt", "fallback",
                     *SIZE)
    assert code == 0
    assert rows(tmp_path / "d.csv") == [(str(tmp_path / "v/a.mp4"), "caption a"),
                                        (str(tmp_path / "v/b.mp4"), "fallback")]


def test_csv_is_rechecked_and_requoted(tmp_path, capsys):
    make_video(tmp_path / "a.mp4")
    (tmp_path / "in.csv").write_text("video,prompt\na.mp4,go left, then right\na.mp4,42\n")
    code, _, _ = run(capsys, "--csv", tmp_path / "in.csv", "--output", tmp_path / "out.csv", *SIZE)
    assert code == 0
    video = str(tmp_path / "a.mp4")
    assert rows(tmp_path / "out.csv") == [(video, "go left, then right"), (video, "42")]
    assert (tmp_path / "out.csv").read_text() == f'"video","prompt"\n"{video}","go left, then right"\n"{video}","42"\n'
    frame = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert list(frame.prompt) == ["go left, then right", "42"]


@pytest.mark.parametrize("content, message", [
    (b"video\na.mp4\n", "header is 'video' (missing column(s) prompt); it must be exactly 'video,prompt'"),
    (b"video,prompt,id\na.mp4,x,1\n",
     "header is 'video,prompt,id' (unexpected column(s) id); it must be exactly 'video,prompt'"),
    (b"", "file is empty; expected a header line 'video,prompt' and one row per clip"),
    (b"video,prompt\na.mp4,caf\xe9\n", "line 2 is not valid UTF-8 (byte 0xe9); save the file as UTF-8"),
])
def test_csv_input_errors(tmp_path, capsys, content, message):
    (tmp_path / "in.csv").write_bytes(content)
    code, out, err = run(capsys, "--csv", tmp_path / "in.csv", "--output", tmp_path / "out.csv", *SIZE)
    assert (code, err) == (2, f"error: {tmp_path / 'in.csv'}: {message}\n")
    assert not (tmp_path / "out.csv").exists()


def test_bom_is_accepted(tmp_path, capsys):
    make_video(tmp_path / "a.mp4")
    (tmp_path / "in.csv").write_bytes("\ufeffvideo,prompt\na.mp4,x\n".encode())
    assert run(capsys, "--csv", tmp_path / "in.csv", "--output", tmp_path / "out.csv", *SIZE)[0] == 0
    assert rows(tmp_path / "out.csv") == [(str(tmp_path / "a.mp4"), "x")]


def test_bad_rows_are_dropped_listed_and_summarised(tmp_path, capsys):
    good = make_video(tmp_path / 'we"ird näme 🧩.mp4')
    make_video(tmp_path / "short.mp4", num_frames=5)
    make_video(tmp_path / "wide.mp4", width=64, height=96)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "corrupt.mp4").write_bytes(open(good, "rb").read()[:700])
    Image.new("RGB", (64, 64)).save(tmp_path / "still.png")
    lines = [(good, "ok"), ("missing.mp4", "x"), ("empty.mp4", "x"), ("corrupt.mp4", "x"), ("still.png", "x"),
             ("short.mp4", "x"), ("wide.mp4", "x"), (good, "ok"), (good, "")]
    pd.DataFrame(lines, columns=["video", "prompt"]).to_csv(tmp_path / "in.csv", index=False)
    code, out, err = run(capsys, "--csv", tmp_path / "in.csv", "--output", tmp_path / "out.csv", *SIZE)
    path = tmp_path.joinpath
    assert code == 1
    assert err == "error: 7 rows dropped (listed above); fix them or pass --allow_drop\n"
    assert f"dropped row 2 ({path('missing.mp4')}): file not found\n" in out
    assert f"dropped row 3 ({path('empty.mp4')}): file is empty (0 bytes)\n" in out
    assert f"dropped row 4 ({path('corrupt.mp4')}): not a readable video" in out
    assert (f"dropped row 5 ({path('still.png')}): is a still image (1 frame), not a video; "
            f"point the row at the clip\n") in out
    assert (f"dropped row 6 ({path('short.mp4')}): has 5 frames, fewer than --num_frames 9: DiffSynth would silently "
            f"train on a 5-frame clip (and <= 4 frames gives NaN loss); run prepare_csv.py --trim") in out
    assert f"dropped row 8 ({good}): duplicate of row 1\n" in out
    assert f"dropped row 9 ({good}): prompt is empty; write one or pass --prompt TEXT\n" in out
    assert (f"warning row 7 ({path('wide.mp4')}): is 64x96, not 64x64 (WxH): training resizes it (--fit stretch)\n"
            in out)
    assert rows(tmp_path / "out.csv") == [(good, "ok"), (str(path("wide.mp4")), "x")]
    for line in ["rows in 9", "rows out 2", "dropped: unreadable video 1", "dropped: duplicate 1",
                 "warning: resolution differs 1"]:
        assert line in squeeze(out)
    assert run(capsys, "--csv", tmp_path / "in.csv", "--output", tmp_path / "out2.csv", "--allow_drop", *SIZE)[0] == 0
    # a crop is made only when asked for; then one that would cut the puzzle drops the clip
    code, out, _ = run(capsys, "--csv", tmp_path / "in.csv", "--output", tmp_path / "out3.csv", "--allow_drop",
                       "--fit", "crop", *SIZE)
    assert code == 0 and rows(tmp_path / "out3.csv") == [(good, "ok")]
    assert (f"dropped row 7 ({path('wide.mp4')}): is 64x96, not 64x64 (WxH): --fit crop would cut 33% of its height, "
            f"likely cutting the puzzle; use --fit stretch (the benchmark's mapping) or --height/--width of a 64:96 "
            f"aspect ratio\n") in out
    assert "dropped: crop cuts the puzzle 1" in squeeze(out)


def test_strict_writes_nothing(tmp_path, capsys):
    make_video(tmp_path / "a.mp4")
    (tmp_path / "in.csv").write_text("video,prompt\na.mp4,x\nmissing.mp4,y\n")
    code, out, err = run(capsys, "--csv", tmp_path / "in.csv", "--output", tmp_path / "out.csv", "--strict", *SIZE)
    assert code == 1 and not (tmp_path / "out.csv").exists()
    assert err == "error: --strict and some rows are bad; nothing written\n"
    assert "dropped row 2" in out


@pytest.mark.parametrize("layout, message", [
    ({}, "{root}: no puzzle dataset found; looked for data.json (a task folder), <task>/data.json (VLMPuzzle "
         "layout), tasks/<task>/data.json (VideoThinkBench layout), or either layout one folder further down (a "
         "folder of several roots)"),
    ({"t/data.json": {"id": 1}}, "{root}/t/data.json: expected a JSON list of puzzle records, found a dict"),
    ({"t/data.json": [{"id": 7, "prompt": "p"}, {"id": "../../x", "prompt": "p"}]},
     "{root}/t/data.json record 2: id '../../x' contains '/', so it cannot be used as a file name; give the record "
     "a plain id (letters, digits, _ and -)"),
])
def test_dataset_root_input_errors(tmp_path, capsys, layout, message):
    root = tmp_path / "root"
    root.mkdir()
    for name, content in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(content))
    code, _, err = run(capsys, "--dataset_root", root, "--output", tmp_path / "d.csv", *SIZE)
    assert (code, err) == (2, f"error: {message.format(root=root)}\n")
    assert not (tmp_path / "d.csv").exists()


def test_trim_resamples_whole_clip_to_exact_shape(tmp_path, capsys):
    long = make_video(tmp_path / "long.mp4", num_frames=17, width=128, height=64)
    short = make_video(tmp_path / "short.mp4", num_frames=6, width=128, height=64)
    (tmp_path / "in.csv").write_text(f"video,prompt\n{long},a\n{short},b\n")
    code, out, _ = run(capsys, "--csv", tmp_path / "in.csv", "--output", tmp_path / "out.csv", "--trim",
                       "--num_frames", "9", "--height", "32", "--width", "64")
    assert code == 0 and "warning" not in out
    for (video, _), source in zip(rows(tmp_path / "out.csv"), [long, short], strict=True):
        assert video.startswith(str(tmp_path / "out_clips") + "/")
        info = probe_video(video)
        assert (info.num_frames, info.width, info.height) == (9, 64, 32)
        source_frames = read_frames(source)
        trimmed = [np.asarray(frame, np.float32) for frame in read_frames(video)]
        expected = [np.asarray(fit_image(source_frames[i], 64, 32), np.float32) for i in (0, -1)]
        assert np.abs(trimmed[0] - expected[0]).max() <= 3
        assert np.abs(trimmed[-1] - expected[1]).max() <= 3


def test_trim_writes_absolute_paths_for_a_relative_output(tmp_path, capsys, monkeypatch):
    clip = make_video(tmp_path / "clip.mp4", num_frames=9, width=64, height=32)
    (tmp_path / "in.csv").write_text(f"video,prompt\n{clip},a\n")
    monkeypatch.chdir(tmp_path)
    code, _, _ = run(capsys, "--csv", "in.csv", "--output", "data/out.csv", "--trim", "--num_frames", "9",
                     "--height", "32", "--width", "64")
    assert code == 0
    trimmed = tmp_path / "data/out_clips/000001_clip.mp4"
    assert (tmp_path / "data/out.csv").read_text() == f'"video","prompt"\n"{trimmed}","a"\n'
    assert trimmed.is_file()


def test_val_split_is_deterministic_and_disjoint(tmp_path, capsys):
    root = make_dataset_root(tmp_path / "root", per_task=5)
    outputs = []
    for name in ("a", "b"):
        code, out, _ = run(capsys, "--dataset_root", root, "--output", tmp_path / f"{name}.csv", "--val_count", 3,
                           "--seed", 1, *SIZE)
        assert code == 0 and "held out for validation" in out
        outputs.append(((tmp_path / f"{name}.csv").read_text(), (tmp_path / f"{name}_val_ids.txt").read_text()))
    assert outputs[0] == outputs[1]
    val_ids = outputs[0][1].splitlines()
    assert len(val_ids) == 3 and all(len(puzzle_id.split("/")) == 2 for puzzle_id in val_ids)
    training = {f"{video.split('/')[-3]}/{video.split('/')[-1].split('_')[0]}" for video, _ in rows(tmp_path / "a.csv")}
    assert len(training) == 7 and not training & set(val_ids)
    run(capsys, "--dataset_root", root, "--output", tmp_path / "c.csv", "--val_fraction", 0.3, "--seed", 2, *SIZE)
    assert len((tmp_path / "c_val_ids.txt").read_text().splitlines()) == 3


def test_val_split_needs_dataset_root(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--csv", "x.csv", "--output", "y.csv", "--val_count", "2"])
    assert exit_info.value.code == 2
    assert "--val_count/--val_fraction need --dataset_root" in capsys.readouterr().err


def test_generate_dispatches_to_puzzles(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(main_generate=lambda argv: calls.append(argv) or 0)
    monkeypatch.setitem(sys.modules, "wan_sft.puzzles", fake)
    assert main(["generate", "--task", "maze_square"]) == 0
    assert calls == [["--task", "maze_square"]]


def test_a_long_clip_is_refused_and_trim_keeps_its_answer(tmp_path, capsys):
    """A 17-frame maze clip at --num_frames 9: its first 9 frames end before the path reaches the goal."""
    from wan_sft.datasets import read_puzzles
    from wan_sft.puzzles import generate_task
    from wan_sft.scoring import score_maze

    generate_task(tmp_path / "b", "maze_square", 1, width=96, height=160, num_frames=17, fps=8, grid_sizes=(3,))
    item = read_puzzles(tmp_path / "b")[0]
    size = ["--num_frames", "9", "--height", "160", "--width", "96", "--workers", "1"]
    code, out, err = run(capsys, "--dataset_root", tmp_path / "b", "--output", tmp_path / "d.csv", *size)
    assert code == 1 and not (tmp_path / "d.csv").exists()
    assert [line for line in out.splitlines() if line.startswith("dropped ")] == [(
        f"dropped maze_square/data.json record 1 ({item.solution_video}): has 17 frames, more than --num_frames 9: "
        f"training takes the first 9, so the solution would be cut at 53% of the clip; run prepare_csv.py --trim to "
        f"resample the whole clip to 9 frames (first and last kept)")]
    assert "dropped: too many frames 1" in squeeze(out) and err == "error: no usable rows; nothing written\n"
    puzzle = Image.open(item.puzzle_path).convert("RGB")
    first_nine = read_frames(item.solution_video, limit=9)
    assert score_maze(first_nine[-1], puzzle, item.record, "maze_square")["failure_reason"] == "not_connected"
    code, out, _ = run(capsys, "--dataset_root", tmp_path / "b", "--output", tmp_path / "d.csv", "--trim", *size)
    assert code == 0
    trimmed = read_frames(rows(tmp_path / "d.csv")[0][0])
    source = read_frames(item.solution_video)
    assert len(trimmed) == 9
    for mine, theirs in ((trimmed[0], source[0]), (trimmed[-1], source[-1])):  # first and last frames kept
        assert np.abs(np.asarray(mine, np.int16) - np.asarray(theirs, np.int16)).mean() < 1
    assert score_maze(trimmed[-1], puzzle, item.record, "maze_square")["pass"]


def test_summary_shows_canvases_and_clip_lengths_per_task_and_suggests_a_square_size(tmp_path, capsys):
    from wan_sft.puzzles import generate_task

    generate_task(tmp_path / "b", "midpoint", 2, width=96, height=96, num_frames=9, fps=8)
    generate_task(tmp_path / "b", "circle_center", 1, width=96, height=96, num_frames=13, fps=8)
    code, out, _ = run(capsys, "--dataset_root", tmp_path / "b", "--output", tmp_path / "d.csv", "--num_frames", 9,
                       "--height", 96, "--width", 64, "--allow_drop")
    assert code == 0
    assert out.splitlines()[:4] == [
        "puzzles per task (canvas WxH; solution clip length)",
        "  circle_center  96x96 x1; 13 frames x1",
        "  midpoint       96x96 x2; 9 frames x2",
        "note: every puzzle is square; --height 512 --width 512 keeps their shape (now 64x96 WxH, pass the same size "
        "to training and evaluation)"]
    generate_task(tmp_path / "b", "maze_square", 1, width=96, height=128, num_frames=9, fps=8, grid_sizes=(3,))
    code, out, _ = run(capsys, "--dataset_root", tmp_path / "b", "--output", tmp_path / "d.csv", "--num_frames", 9,
                       "--height", 96, "--width", 64, "--allow_drop")
    assert out.splitlines()[2] == "  maze_square    96x128 x1; 9 frames x1" and "note:" not in out
