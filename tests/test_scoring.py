import random

import numpy as np
import pytest
from PIL import Image

from wan_sft.puzzles import make_maze
from wan_sft.scoring import is_maze_task, overlay_image, score_eyeballing, score_item, score_maze
from wan_sft.video import read_frames, write_video

W, H = 160, 288


@pytest.fixture(scope="module")
def maze():
    record, puzzle, solution, frames = make_maze(5, random.Random(7), W, H, 9)
    return record, puzzle, solution, frames


def _score(candidate, maze):
    record, puzzle, _, _ = maze
    return score_maze(candidate, puzzle, record, "maze_square")


def test_solution_passes(maze):
    result = _score(maze[2], maze)
    assert result["pass"] and result["failure_reason"] is None
    assert result["corridor_precision"] == 1.0
    assert result["touches_start"] and result["touches_goal"] and result["connected"]


def test_bare_puzzle_is_not_connected(maze):
    result = _score(maze[1], maze)
    assert result["touches_start"] and result["touches_goal"]  # the red start/goal cells
    assert not result["pass"] and result["failure_reason"] == "not_connected"


def test_red_on_wall_fails(maze):
    record, puzzle, solution, _ = maze
    pixels = np.array(solution)
    row, col = next((r, c) for r, line in enumerate(record["maze_grid"]) for c, v in enumerate(line) if v == 1
                    and 0 < r < len(line) - 1 and 0 < c < len(line) - 1)
    left, top, right, bottom = record["cell_bboxes"][row][col]
    pixels[top + 2:top + 4, left + 2:left + 4] = (220, 0, 0)
    result = _score(Image.fromarray(pixels), maze)
    assert not result["pass"] and result["failure_reason"] == "wall_overlap"
    assert result["wall_overlap_pixels"] == 4


def test_gap_fails(maze):
    record, puzzle, solution, _ = maze
    pixels = np.array(solution)
    size = record["grid_size"][1]
    middle = record["solution_path_cell_ids"][len(record["solution_path_cell_ids"]) // 2]
    left, top, right, bottom = record["cell_bboxes"][middle // size][middle % size]
    pixels[top:bottom, left:right] = (255, 255, 255)
    result = _score(Image.fromarray(pixels), maze)
    assert not result["pass"] and result["failure_reason"] == "not_connected"


def test_all_black_fails(maze):
    result = _score(Image.new("RGB", (W, H)), maze)
    assert not result["pass"] and result["failure_reason"] == "no_red" and result["red_pixels"] == 0


def test_misses_start_when_start_cell_is_blank(maze):
    record, puzzle, solution, _ = maze
    pixels = np.array(solution)
    left, top, right, bottom = record["cell_bboxes"][record["start"][0]][record["start"][1]]
    pixels[top:bottom, left:right] = (255, 255, 255)
    result = _score(Image.fromarray(pixels), maze)
    assert result["failure_reason"] == "misses_start" and not result["touches_start"]


def test_nearest_resized_solution_passes(maze):
    record, puzzle, solution, _ = maze
    result = score_maze(solution.resize((W * 2, H * 2), Image.NEAREST), puzzle, record, "maze_square")
    assert result["pass"], result
    assert result["start_point"] == [record["start_point"][0] * 2, record["start_point"][1] * 2]


def test_decoded_video_frame_passes(maze, tmp_path):
    frames = maze[3]
    write_video(tmp_path / "v.mp4", frames, fps=16)
    last = read_frames(tmp_path / "v.mp4")[-1]
    assert not np.array_equal(np.asarray(last), frames[-1])  # really lossy
    assert _score(last, maze)["pass"]


def test_corridor_flooding_passes_base_rule_but_not_precision(maze):
    record, puzzle, _, _ = maze
    pixels = np.array(puzzle)
    passages = pixels.min(axis=2) == 255
    pixels[passages] = (220, 0, 0)
    result = _score(Image.fromarray(pixels), maze)
    assert result["pass"]
    assert result["corridor_precision"] < 0.6


def test_red_dominance_per_kind(maze):
    record, puzzle, solution, _ = maze
    pixels = np.array(solution)
    pixels[np.all(pixels == (220, 0, 0), axis=2)] = (200, 122, 122)  # dominance 78
    candidate = Image.fromarray(pixels)
    assert score_maze(candidate, puzzle, record, "maze_square")["failure_reason"] == "not_connected"
    assert score_maze(candidate, puzzle, record, "maze_hexagon")["pass"]


EYE = {"canvas_dimensions": [200, 100], "correct_option": "C",
       "candidates": [{"x": 40, "y": 50, "label": "A"}, {"x": 80, "y": 50, "label": "B"},
                      {"x": 120, "y": 50, "label": "C"}, {"x": 160, "y": 50, "label": "D"}]}


def _dot(x, y, size=(200, 100), r=4, colour=(220, 0, 0)):
    pixels = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    pixels[y - r:y + r, x - r:x + r] = colour
    return Image.fromarray(pixels)


def test_eyeballing_right_and_wrong():
    right = score_eyeballing(_dot(118, 52), EYE)
    assert right["pass"] and right["answer"] == "C" and right["red_pixels"] == 64
    wrong = score_eyeballing(_dot(82, 50), EYE)
    assert not wrong["pass"] and wrong["answer"] == "B" and wrong["failure_reason"] == "wrong_option"


def test_eyeballing_scales_and_needs_20_red_pixels():
    assert score_eyeballing(_dot(240, 100, size=(400, 200), r=6), EYE)["answer"] == "C"
    few = score_eyeballing(_dot(120, 50, r=2), EYE)  # 16 red pixels
    assert few["answer"] is None and few["failure_reason"] == "too_few_red" and not few["pass"]
    as_dict = dict(EYE, canvas_dimensions={"width": 200, "height": 100})
    assert score_eyeballing(_dot(118, 52), as_dict)["pass"]
    assert score_eyeballing(_dot(118, 52), dict(EYE, canvas_dimensions=None))["answer"] is None
    pink = score_eyeballing(_dot(120, 50, colour=(255, 140, 140)), EYE)  # G > 130
    assert pink["red_pixels"] == 0


def test_dispatch_and_overlay(maze):
    record, puzzle, solution, _ = maze
    assert is_maze_task("maze_labyrinth") and not is_maze_task("midpoint")
    assert score_item(solution, puzzle, record, "maze_square")["pass"]
    assert score_item(_dot(120, 50), None, EYE, "midpoint")["pass"]
    assert overlay_image(solution, puzzle, record, "maze_square").size == solution.size
    assert overlay_image(_dot(120, 50), None, EYE, "midpoint").size == (200, 100)
