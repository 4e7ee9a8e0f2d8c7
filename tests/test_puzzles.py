import json
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from wan_sft.config import InputError
from wan_sft.puzzles import (
    MAZE_PROMPT,
    generate_maze_task,
    generate_midpoint_task,
    main_generate,
    make_maze,
    parse_grid,
)
from wan_sft.scoring import score_eyeballing, score_maze
from wan_sft.video import probe_video, read_frames

W, H, FRAMES = 96, 160, 9
MAZE_FIELDS = {"id", "prompt", "canvas_dimensions", "start_point", "goal_point", "image",
               "solution_image_path", "seed",
               "grid_size", "cell_size", "maze_grid", "start", "goal", "cell_bboxes", "padding",
               "solution_path_cell_ids"}  # layout A: the video is implied by the id


def _maze(out, seed=0, num=2):
    return generate_maze_task(out, num, (3, 5), seed=seed, width=W, height=H, num_frames=FRAMES, fps=8,
                              layout="vlmpuzzle")


def _video(record):
    return f"solutions/{record['id']}_solution.mp4"


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.suffix in (".png", ".json")}


def test_maze_reproducible(tmp_path):
    _maze(tmp_path / "a")
    _maze(tmp_path / "b")
    _maze(tmp_path / "c", seed=1)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b and len(a) == 5
    assert a["maze_square/data.json"] != c["maze_square/data.json"]
    puzzle = "maze_square/puzzles/maze_square_s{}_00000_puzzle.png"
    assert a[puzzle.format(0)] != c[puzzle.format(1)]


def _neighbours(grid, r, c):
    return [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)) if grid[r + dr][c + dc] == 0]


def test_maze_records_and_unique_valid_path(tmp_path):
    records = _maze(tmp_path, num=2)
    assert json.loads((tmp_path / "maze_square/data.json").read_text()) == records
    for record in records:
        assert set(record) == MAZE_FIELDS and record["prompt"] == MAZE_PROMPT
        grid, size = record["maze_grid"], record["grid_size"][0]
        assert len(grid) == size and all(len(row) == size for row in grid)
        assert all(v == 1 for v in grid[0] + grid[-1] + [row[0] for row in grid] + [row[-1] for row in grid])
        path = [divmod(i, size) for i in record["solution_path_cell_ids"]]
        assert list(path[0]) == record["start"] and list(path[-1]) == record["goal"]
        for (r1, c1), (r2, c2) in zip(path, path[1:], strict=False):
            assert abs(r1 - r2) + abs(c1 - c2) == 1 and grid[r2][c2] == 0
        # perfect maze: passages form a tree (edges = nodes - 1) and are all connected -> the path is unique
        nodes = [(r, c) for r in range(size) for c in range(size) if grid[r][c] == 0]
        edges = sum(len(_neighbours(grid, r, c)) for r, c in nodes) // 2
        assert edges == len(nodes) - 1
        assert len(path) == len(set(path))
        left, top, right, bottom = record["cell_bboxes"][1][1]
        assert record["start_point"] == [(left + right) / 2, (top + bottom) / 2]


def test_maze_images_and_video(tmp_path):
    record = _maze(tmp_path, num=1)[0]
    root = tmp_path / "maze_square"
    puzzle = Image.open(root / record["image"]).convert("RGB")
    solution = Image.open(root / record["solution_image_path"]).convert("RGB")
    assert puzzle.size == (W, H) and record["canvas_dimensions"] == [W, H]
    start = puzzle.getpixel(tuple(int(v) for v in record["start_point"]))
    assert start == (220, 30, 30) and puzzle.getpixel((0, 0)) == (0, 0, 0)
    info = probe_video(root / _video(record))
    assert (info.num_frames, info.width, info.height) == (FRAMES, W, H)
    frames = read_frames(root / _video(record))
    first = np.asarray(frames[0], dtype=np.int16)
    assert np.abs(first - np.asarray(puzzle, dtype=np.int16)).mean() < 3
    assert score_maze(frames[0], puzzle, record, "maze_square")["failure_reason"] == "not_connected"
    assert score_maze(solution, puzzle, record, "maze_square")["pass"]
    assert score_maze(frames[-1], puzzle, record, "maze_square")["pass"]
    assert score_maze(frames[FRAMES // 2], puzzle, record, "maze_square")["failure_reason"] == "not_connected"


def test_reveal_starts_from_the_puzzle_and_holds_the_solution():
    _, puzzle, solution, frames = make_maze(4, random.Random(0), W, H, 21)
    assert np.array_equal(frames[0], np.asarray(puzzle)) and np.array_equal(frames[-1], np.asarray(solution))
    red = [int(np.all(frame == (220, 0, 0), axis=2).sum()) for frame in frames]
    assert red == sorted(red) and red[0] == 0 and red[1] > 0
    assert red[-3] == red[-1] > red[-4]  # the last round(0.15 * 21) = 3 frames hold the solution


def test_midpoint(tmp_path):
    options = dict(seed=3, width=W, height=H, num_frames=FRAMES, fps=8, layout="vlmpuzzle")
    records = generate_midpoint_task(tmp_path / "a", 2, **options)
    generate_midpoint_task(tmp_path / "b", 2, **options)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    root = tmp_path / "a" / "midpoint"
    for record in records:
        assert [c["label"] for c in record["candidates"]] == list("ABCDE")
        assert record["correct_option"] in "ABCDE" and "red" in record["prompt"]
        frames = read_frames(root / _video(record))
        assert len(frames) == FRAMES == probe_video(root / _video(record)).num_frames
        puzzle = Image.open(root / record["image"]).convert("RGB")
        assert np.abs(np.asarray(frames[0], dtype=np.int16) - np.asarray(puzzle, dtype=np.int16)).mean() < 3
        assert score_eyeballing(puzzle, record)["failure_reason"] == "too_few_red"
        assert score_eyeballing(frames[-1], record)["pass"]
        assert score_eyeballing(Image.open(root / record["solution_image_path"]), record)["pass"]
        wrong = next(c for c in record["candidates"] if c["label"] != record["correct_option"])
        marked = puzzle.copy()
        r = record["point_radius"]
        x, y = wrong["x"], wrong["y"]
        ImageDraw.Draw(marked).ellipse((x - r, y - r, x + r, y + r), fill=(220, 0, 0))
        assert not score_eyeballing(marked, record)["pass"]


def test_validation_and_cli(tmp_path, capsys):
    # the generator writes any clip length and canvas (VideoThinkBench's are 24..119 frames, 512x512), not only
    # the model's 4k+1 frames and multiples of 32
    with pytest.raises(InputError, match=r"^--width 30 --height 160 is invalid: both must be at least 32 pixels$"):
        generate_maze_task(tmp_path, 1, (3,), width=30, height=H, num_frames=FRAMES)
    with pytest.raises(InputError, match=r"^--num_frames 1 is invalid: a solution video needs at least 2 frames$"):
        generate_maze_task(tmp_path, 1, (5,), width=W, height=H, num_frames=1)
    with pytest.raises(InputError, match=r"^--grid 20 does not fit a 96x160 canvas: cells would be 2 px \(need >= 8; "
                                         r"use a smaller --grid or a larger canvas\)$"):
        generate_maze_task(tmp_path, 1, (20,), width=W, height=H, num_frames=FRAMES)
    assert parse_grid("5..9") == [5, 6, 7, 8, 9] and parse_grid("7") == [7]
    assert main_generate(["--out", str(tmp_path), "--grid", "x"]) == 2
    assert "error: --grid" in capsys.readouterr().err
    assert main_generate(["--out", str(tmp_path), "--num", "1", "--grid", "4", "--width", str(W), "--height",
                          str(H), "--num_frames", str(FRAMES)]) == 0
    assert "wrote 1 maze_square" in capsys.readouterr().out
    assert main_generate(["--out", str(tmp_path), "--task", "midpoint", "--num", "1", "--width", str(W),
                          "--height", str(H), "--num_frames", "81"]) == 0
    assert len(json.loads((tmp_path / "tasks/midpoint/data.json").read_text())) == 1
