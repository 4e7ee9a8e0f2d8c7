import random

import numpy as np
import pytest
from PIL import Image

from wan_sft.puzzles import make_maze
from wan_sft.scoring import (
    ARC_PALETTE,
    is_maze_task,
    nearest_arc_colour,
    overlay_image,
    score_eyeballing,
    score_item,
    score_maze,
)
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
    score = score_item([solution], record, "maze_square", puzzle=puzzle)
    assert score["pass"] and score["column"] == "Maze Square" and score["rule"] == "maze"
    eye = score_item([_dot(120, 50)], EYE, "midpoint")
    assert eye["pass"] and eye["last_frame_pass"] and eye["column"] == "Eyeballing Point"
    assert overlay_image([solution], record, "maze_square", score, puzzle=puzzle).size == solution.size
    assert overlay_image([_dot(120, 50)], EYE, "midpoint", eye).size == (200, 100)


# ---------------------------------------------------------------- Major Frame

BLANK = Image.new("RGB", (200, 100), "white")


def _video(votes: dict[int, tuple[int, int]], count=11, size=(200, 100), r=4):
    """`count` white frames; frame i has a red square (2r x 2r) at votes[i]."""
    return [_dot(*votes[i], size=size, r=r) if i in votes else BLANK.resize(size) for i in range(count)]


def _major(frames, record=EYE):
    return score_item(frames, record, "midpoint")


def test_major_frame_stride_is_5():
    """Frame 3 votes B strongly, frame 5 votes C: only 0, 5, 10 are scored, so C wins (all frames: a B/C tie -> B)."""
    result = _major(_video({3: (80, 50), 5: (120, 50)}))
    assert result["pass"] and result["answer"] == "C" and result["votes"] == {"C": 1}
    assert result["frames_scored"] == 3 and result["frames_voted"] == 1
    only_3 = _major(_video({3: (80, 50)}))
    assert not only_3["pass"] and only_3["failure_reason"] == "no_votes" and only_3["answer"] is None


def test_major_frame_needs_20_red_pixels_per_frame():
    def frame(count):  # `count` red pixels on one row next to candidate C
        pixels = np.full((100, 200, 3), 255, dtype=np.uint8)
        pixels[50, 110:110 + count] = (220, 0, 0)
        return Image.fromarray(pixels)

    assert _major([frame(20)])["votes"] == {"C": 1}
    assert _major([frame(19)])["votes"] == {} and _major([frame(19)])["failure_reason"] == "no_votes"


def test_major_frame_scales_candidates_per_axis():
    """Canvas 200x100, frame 100x200: A (100, 20) -> (50, 40) and B (100, 80) -> (50, 160). A dot at (50, 70) is
    nearest A only with per-axis scaling (unscaled or uniformly scaled candidates put B nearer)."""
    record = {"canvas_dimensions": [200, 100], "correct_option": "A",
              "candidates": [{"x": 100, "y": 20, "label": "A"}, {"x": 100, "y": 80, "label": "B"}]}
    result = _major(_video({0: (50, 70)}, count=1, size=(100, 200)), record)
    assert result["answer"] == "A" and result["pass"]
    # A (100, 20) -> (50, 40), B (100, 40) -> (50, 80): B is nearer (50, 70); letterboxed (scale 0.5, y + 75)
    # they would sit at (50, 85) and (50, 95), and A would be.
    record = dict(record, correct_option="B", candidates=[{"x": 100, "y": 20, "label": "A"},
                                                          {"x": 100, "y": 40, "label": "B"}])
    result = _major(_video({0: (50, 70)}, count=1, size=(100, 200)), record)
    assert result["answer"] == "B" and result["pass"]
    assert score_item(_video({0: (50, 70)}, count=1, size=(100, 200)), record, "midpoint", fit="pad")["answer"] == "A"


def test_major_frame_majority_and_alphabetical_tie_break():
    majority = _major(_video({0: (80, 50), 5: (120, 50), 10: (120, 50)}))  # B first, then C twice
    assert majority["answer"] == "C" and majority["votes"] == {"B": 1, "C": 2} and majority["pass"]
    tie = _major(_video({0: (160, 50), 5: (120, 50)}))  # D first, then C: the tie goes to C
    assert tie["answer"] == "C" and tie["pass"]
    tie = _major(_video({0: (120, 50), 5: (40, 50)}))  # C first, then A: the tie goes to A
    assert tie["answer"] == "A" and not tie["pass"] and tie["failure_reason"] == "wrong_option"


def test_major_frame_votes_are_upper_cased():
    """Labels count upper-cased (as the official tool): 'c' and 'C' are one answer, so C wins 2:1 over B."""
    record = dict(EYE, candidates=[*EYE["candidates"], {"x": 120, "y": 90, "label": "c"}])
    result = _major(_video({0: (80, 50), 5: (120, 50), 10: (120, 86)}), record)
    assert result["votes"] == {"B": 1, "C": 2} and result["answer"] == "C" and result["pass"]


def test_major_frame_and_last_frame_differ():
    """Major Frame passes on early votes while the last frame shows a wrong answer (Last Frame fails)."""
    result = _major(_video({0: (120, 50), 5: (120, 50), 10: (40, 50)}))
    assert result["pass"] and result["answer"] == "C"
    assert not result["last_frame_pass"] and result["last_frame_answer"] == "A"


def test_last_frame_png_only_leaves_major_frame_unscored():
    result = score_item([_dot(120, 50)], EYE, "midpoint", video=False)
    assert result["pass"] is None and result["last_frame_pass"] is True
    assert result["not_scored"] == "Major Frame needs the video (.mp4); only a last frame (.png) was given"


# ---------------------------------------------------------------- visual puzzles: best frame

def _solid(colour, size=(600, 600)):
    return Image.new("RGB", size, colour)


def _with_patch(image, box, colour):
    image = image.copy()
    image.paste(colour, box)
    return image


def test_best_frame_rgb_distance_sum_and_best_frame():
    solution = _solid((100, 100, 100))
    one_pixel = _with_patch(solution, (300, 300, 301, 301), (103, 104, 100))  # distance 5 (not 25, not 7)
    far = _solid((0, 0, 0))
    result = score_item([far, one_pixel, solution, solution], {}, "color_grid", solution=solution)
    assert result["metric"] == "rgb" and result["best_frame"] == 2 and result["distance"] == 0
    result = score_item([far, one_pixel, far], {}, "color_grid", solution=solution)
    assert result["best_frame"] == 1 and result["distance"] == 5.0
    assert result["pass"] is None and "no pass threshold" in result["not_scored"]


def test_best_frame_window_is_centred_512():
    """600x600: the window is [44, 556) on each axis; a difference in columns 0..43 is outside it, one at 556.."""
    solution = _solid((255, 255, 255))
    left_strip = _with_patch(solution, (0, 0, 44, 600), (0, 0, 0))
    inside = _with_patch(solution, (44, 100, 45, 101), (0, 0, 0))
    right_strip = _with_patch(solution, (556, 0, 600, 600), (0, 0, 0))
    for frame in (left_strip, right_strip):
        assert score_item([frame], {}, "color_grid", solution=solution)["distance"] == 0
    assert score_item([inside], {}, "color_grid", solution=solution)["distance"] == round(255 * 3 ** 0.5, 3)


def test_best_frame_binary_counts_mismatched_pixels_at_gray_245():
    solution = _solid((250, 250, 250))  # gray 250: white after binarising
    frame = _with_patch(solution, (100, 100, 110, 110), (240, 240, 240))  # 100 px turn black
    frame = _with_patch(frame, (200, 200, 201, 201), (246, 246, 246))  # still white
    result = score_item([frame], {}, "size_grid", solution=solution)
    assert result["metric"] == "binary" and result["distance"] == 100
    dark = _with_patch(_solid((100, 100, 100)), (100, 100, 110, 110), (0, 0, 0))  # both black: no mismatch
    assert score_item([dark], {}, "shape_reflect", solution=_solid((100, 100, 100)))["distance"] == 0


def test_best_frame_resizes_the_frame_to_the_solution():
    solution = _solid((10, 200, 30), size=(512, 512))
    assert score_item([_solid((10, 200, 30), size=(96, 160))], {}, "color_size", solution=solution)["distance"] == 0


def test_visual_threshold_is_ours_and_per_metric():
    solution = _solid((100, 100, 100))
    frame = _with_patch(solution, (300, 300, 301, 301), (103, 104, 100))
    passed = score_item([frame], {}, "color_grid", solution=solution, visual_thresholds={"rgb": 5.0})
    assert passed["pass"] is True and passed["pass_rule"] == "rgb distance <= 5 (not the leaderboard's)"
    failed = score_item([frame], {}, "color_grid", solution=solution, visual_thresholds={"rgb": 4.9})
    assert failed["pass"] is False and failed["failure_reason"] == "above_threshold"
    other_metric = score_item([frame], {}, "color_grid", solution=solution, visual_thresholds={"binary": 10})
    assert other_metric["pass"] is None


def test_visual_puzzle_never_falls_back_to_the_eyeballing_rule():
    """The solution image of color_grid: distance 0 (today it would fail bad_canvas_dimensions)."""
    solution = _solid((0, 128, 255), size=(512, 512))
    result = score_item([solution], {"id": "x"}, "color_grid", solution=solution)
    assert result["column"] == "Visual Symmetry" and result["rule"] == "best_frame" and result["distance"] == 0
    assert "bad_canvas_dimensions" not in str(result)


def test_task_without_rule_is_not_scored():
    result = score_item([BLANK], EYE, "jigsaw")
    assert result["pass"] is None and result["rule"] is None and result["column"] is None
    assert result["not_scored"] == "the leaderboard has no rule for task 'jigsaw'"
    assert overlay_image([BLANK], EYE, "jigsaw", result) is None


# ---------------------------------------------------------------- ARC-AGI-2

ARC_GRID = [[2, 4, 1], [0, 9, 5]]
ARC_RECORD = {"cell_size": 12, "test_rows": 2, "test_cols": 3, "test_output": ARC_GRID,
              "placements": [{"kind": "test_input", "bbox": [0, 0, 12, 12]},
                             {"kind": "test_output", "bbox": [20, 30, 56, 54]}]}


def _arc_image(grid, ring=None):
    """80x70 white canvas, the test-output cells at (20, 30); `ring` paints each cell's outer 2-px ring."""
    pixels = np.full((70, 80, 3), 255, dtype=np.uint8)
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            x, y = 20 + 12 * c, 30 + 12 * r
            pixels[y:y + 12, x:x + 12] = ARC_PALETTE[value] if ring is None else ring
            if ring is not None:
                pixels[y + 2:y + 10, x + 2:x + 10] = ARC_PALETTE[value]
    return Image.fromarray(pixels)


def test_arc_palette_decode():
    solution = _arc_image(ARC_GRID)
    right = score_item([solution], ARC_RECORD, "arcagi", solution=solution)
    assert right["pass"] and right["predicted_grid"] == ARC_GRID and right["column"] == "ARC-AGI-2"
    off = np.asarray(solution).astype(int) + np.array([-20, 15, 10])  # off-palette colours, nearest still right
    assert score_item([Image.fromarray(off.clip(0, 255).astype(np.uint8))], ARC_RECORD, "arcagi",
                      solution=solution)["pass"]
    wrong = score_item([_arc_image([[2, 4, 1], [0, 7, 5]])], ARC_RECORD, "arcagi", solution=solution)
    assert not wrong["pass"] and wrong["cells_wrong"] == 1 and wrong["predicted_grid"][1][1] == 7


def test_arc_resizes_the_last_frame_to_the_solution_without_trimming():
    """A frame at twice the size (white margin included) maps back cell for cell; trimming the uniform margin first
    (the older VLMPuzzle evaluator) would shift every cell."""
    solution = _arc_image(ARC_GRID)
    frames = [_arc_image([[0, 0, 0], [0, 0, 0]]), solution.resize((160, 140), Image.NEAREST)]
    result = score_item(frames, ARC_RECORD, "arcagi", solution=solution)
    assert result["pass"] and result["predicted_grid"] == ARC_GRID  # the last frame, not the first


def test_arc_samples_cells_shrunk_by_a_sixth():
    """A blue 2-px ring (cell 12 -> shrink 2) around yellow: the sampled mean is pure yellow; the whole cell's mean
    would be nearest grey."""
    grid = [[4, 4, 4], [4, 4, 4]]
    solution = _arc_image(grid)
    ringed = _arc_image(grid, ring=(0, 0, 255))
    assert score_item([ringed], dict(ARC_RECORD, test_output=grid), "arcagi", solution=solution)["pass"]
    whole = np.asarray(ringed)[30:42, 20:32].reshape(-1, 3).mean(axis=0)
    assert nearest_arc_colour(whole) == 5


def test_arc_without_layout_is_not_scored():
    record = {k: v for k, v in ARC_RECORD.items() if k != "placements"}
    result = score_item([BLANK], record, "arcagi", solution=BLANK)
    assert result["pass"] is None and result["not_scored"] == "the record has no ARC grid layout (placements missing)"
