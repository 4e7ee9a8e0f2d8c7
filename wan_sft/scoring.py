"""The VideoThinkBench leaderboard's scoring rules (../shared/VIDEOTHINKBENCH.md §2), reimplemented.

`score_item` dispatches on `leaderboard.rule_of(task)`; a task without a rule is "not scored", never scored with
another task's rule. Every verdict reads frames as the official tools do: the decoded frames of the written mp4.
- maze (last frame): betmma/VLMPuzzle puzzle/maze_base.py with the per-kind red dominance of
  puzzle/maze_{square,hexagon,labyrinth}/evaluator.py, plus our `corridor_precision`;
- major_frame (eyeballing): every 5th frame votes with the red-point rule of puzzle/point_target_base.py;
  the same rule on the last frame alone is the secondary "Last Frame" verdict;
- best_frame (visual puzzles): the smallest distance of any frame to the solution image; the leaderboard has no
  pass threshold, so a pass exists only with a user-given one (not the leaderboard's);
- arc_grid (ARC-AGI-2): the arcagi evaluator's palette decode of the test-output cells (as vendored in
  VideoThinkBench: resize only), pass = all right.
Candidate coordinates map from canvas to frame through `geometry.placement` (stretch: per-axis scaling).
"""
from __future__ import annotations

import math
from collections import Counter, deque

import numpy as np
from PIL import Image, ImageDraw

from .geometry import DEFAULT_FIT, fit_image, placement
from .leaderboard import SHAPE_DISTANCE_TASKS, column_of, rule_of

RED_THRESHOLD = 150
WALL_VALUE_THRESHOLD = 40
ENDPOINT_SEARCH_RADIUS = 4
MIN_EYEBALLING_RED = 20


def is_maze_task(task: str) -> bool:
    return task.startswith("maze")


def red_dominance(task: str) -> int:
    """R - max(G, B) threshold: 75 for hexagon/labyrinth mazes, 80 for square (and, as in VideoThinkBench's
    dispatcher, any other maze name)."""
    return 75 if task.startswith(("maze_hexagon", "maze_labyrinth")) else 80


def maze_red_mask(pixels: np.ndarray, task: str) -> np.ndarray:
    rgb = pixels.astype(np.int32)
    red = rgb[..., 0]
    return (red >= RED_THRESHOLD) & (red - np.maximum(rgb[..., 1], rgb[..., 2]) >= red_dominance(task))


def wall_mask(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=2) <= WALL_VALUE_THRESHOLD


def eyeballing_red_mask(pixels: np.ndarray) -> np.ndarray:
    rgb = pixels.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r >= 140) & (r - np.maximum(g, b) >= 40) & (g <= 130) & (b <= 130)


def _as_point(value) -> tuple[float, float]:
    if isinstance(value, dict):
        return float(value["x"]), float(value["y"])
    return float(value[0]), float(value[1])


def _endpoint(record: dict, label: str, where) -> tuple[float, float]:
    """`<label>_pixel`, else `<label>_point`, else the centre of cell_bboxes[row][col]; mapped to the frame."""
    for key in (f"{label}_pixel", f"{label}_point"):
        if key in record:
            return where.to_frame(*_as_point(record[key]))
    if label in record and "cell_bboxes" in record:
        row, col = int(record[label][0]), int(record[label][1])
        left, top, right, bottom = (float(v) for v in record["cell_bboxes"][row][col][:4])
        return where.to_frame((left + right) / 2, (top + bottom) / 2)
    raise KeyError(f"record has no endpoint information for '{label}'")


def _nearest_red(mask: np.ndarray, point) -> tuple[int, int] | None:
    """The original's search: the rounded, clamped point, then square rings of radius 1..4, each ring scanned
    left/right columns top to bottom, then top/bottom rows left to right. The scan order decides which red pixel
    seeds the BFS, so it is kept exactly."""
    height, width = mask.shape
    cx = max(0, min(width - 1, int(round(point[0]))))
    cy = max(0, min(height - 1, int(round(point[1]))))
    if mask[cy, cx]:
        return cy, cx
    for delta in range(1, ENDPOINT_SEARCH_RADIUS + 1):
        x0, x1 = max(0, cx - delta), min(width - 1, cx + delta)
        y0, y1 = max(0, cy - delta), min(height - 1, cy + delta)
        for y in range(y0, y1 + 1):
            if mask[y, x0]:
                return y, x0
            if mask[y, x1]:
                return y, x1
        for x in range(x0 + 1, x1):
            if mask[y0, x]:
                return y0, x
            if mask[y1, x]:
                return y1, x
    return None


def _connected(mask: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> bool:
    """4-connected BFS through red pixels."""
    height, width = mask.shape
    flat = mask.ravel()
    seen = bytearray(flat.size)
    first, target = start[0] * width + start[1], goal[0] * width + goal[1]
    seen[first] = 1
    queue = deque([first])
    while queue:
        index = queue.popleft()
        if index == target:
            return True
        x = index % width
        for neighbour, ok in ((index - width, index >= width), (index + width, index < flat.size - width),
                              (index - 1, x > 0), (index + 1, x < width - 1)):
            if ok and not seen[neighbour] and flat[neighbour]:
                seen[neighbour] = 1
                queue.append(neighbour)
    return False


def _cell_coords(cell_id: int, cols: int) -> tuple[int, int]:
    return divmod(int(cell_id), cols)


def corridor_mask(record: dict, where, target_size) -> np.ndarray | None:
    """Pixels of the true solution corridor: the cells of solution_path_cell_ids plus any grid cells between
    consecutive ids (for records that list only cells, not the passages between them); None without the fields."""
    ids, bboxes = record.get("solution_path_cell_ids"), record.get("cell_bboxes")
    if not ids or not bboxes:
        return None
    cols = len(bboxes[0])
    cells = [_cell_coords(i, cols) for i in ids]
    blocks = set(cells)
    for (r1, c1), (r2, c2) in zip(cells, cells[1:], strict=False):
        if r1 == r2 or c1 == c2:
            for r in range(min(r1, r2), max(r1, r2) + 1):
                for c in range(min(c1, c2), max(c1, c2) + 1):
                    blocks.add((r, c))
    width, height = target_size
    mask = np.zeros((height, width), dtype=bool)
    for r, c in blocks:
        left, top = where.to_frame(*bboxes[r][c][:2])
        right, bottom = where.to_frame(*bboxes[r][c][2:4])
        rows = slice(max(0, int(math.floor(top))), max(0, int(math.ceil(bottom))))
        mask[rows, max(0, int(math.floor(left))):max(0, int(math.ceil(right)))] = True
    return mask


def _maze_masks(candidate: Image.Image, puzzle: Image.Image, task: str, fit: str):
    """The puzzle mapped onto the frame (stretch: NEAREST resize, as the original) for the walls."""
    candidate = candidate.convert("RGB")
    where = placement(puzzle.size, candidate.size, fit)
    red = maze_red_mask(np.asarray(candidate), task)
    walls = wall_mask(np.asarray(fit_image(puzzle, *candidate.size, fit)))
    return candidate, where, red, walls


def score_maze(candidate: Image.Image, puzzle: Image.Image, record: dict, task: str, fit: str = DEFAULT_FIT) -> dict:
    """The original maze verdict plus `corridor_precision` (share of red inside the true solution corridor)."""
    candidate, where, red, walls = _maze_masks(candidate, puzzle, task, fit)
    start = _endpoint(record, "start", where)
    goal = _endpoint(record, "goal", where)
    red_pixels = int(red.sum())
    overlap = int((red & walls).sum())
    start_seed = _nearest_red(red, start) if red_pixels else None
    goal_seed = _nearest_red(red, goal) if red_pixels else None
    connected = bool(start_seed and goal_seed and not overlap and _connected(red, start_seed, goal_seed))
    if red_pixels == 0:
        reason = "no_red"
    elif overlap:
        reason = "wall_overlap"
    elif start_seed is None:
        reason = "misses_start"
    elif goal_seed is None:
        reason = "misses_goal"
    elif not connected:
        reason = "not_connected"
    else:
        reason = None
    corridor = corridor_mask(record, where, candidate.size)
    precision = None
    if corridor is not None and red_pixels:
        precision = round(float((red & corridor).sum()) / red_pixels, 4)
    return {
        "task": task,
        "pass": reason is None,
        "failure_reason": reason,
        "red_pixels": red_pixels,
        "overlaps_walls": bool(overlap),
        "wall_overlap_pixels": overlap,
        "touches_start": start_seed is not None,
        "touches_goal": goal_seed is not None,
        "connected": connected,
        "start_point": [round(start[0], 2), round(start[1], 2)],
        "goal_point": [round(goal[0], 2), round(goal[1], 2)],
        "red_dominance": red_dominance(task),
        "corridor_precision": precision,
    }


# ---------------------------------------------------------------- eyeballing: Major Frame and Last Frame

MAJOR_FRAME_STRIDE = 5


def _canvas_size(record: dict) -> tuple[float, float] | None:
    """canvas_dimensions ([W, H] or {width, height}); None when unusable, as in the original."""
    dims = record.get("canvas_dimensions")
    if isinstance(dims, dict):
        dims = [dims.get("width"), dims.get("height")]
    if not isinstance(dims, (list, tuple)) or len(dims) < 2 \
            or not all(isinstance(v, (int, float)) and v > 0 for v in dims[:2]):
        return None
    return float(dims[0]), float(dims[1])


def candidate_points(record: dict, frame_size, fit: str = DEFAULT_FIT) -> list[tuple[str, float, float]] | None:
    """(label, x, y) in frame pixels of the candidates the original accepts (a one-character string label and
    numeric x, y); None when canvas_dimensions is unusable."""
    canvas = _canvas_size(record)
    if canvas is None:
        return None
    where = placement(canvas, frame_size, fit)
    points = []
    for entry in record.get("candidates") or []:
        if isinstance(entry, dict) and isinstance(entry.get("label"), str) and len(entry["label"]) == 1:
            x, y = entry.get("x"), entry.get("y")
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                points.append((entry["label"], *where.to_frame(float(x), float(y))))
    return points


def eyeballing_vote(frame: Image.Image, points) -> tuple[str | None, int, tuple[float, float] | None]:
    """(nearest candidate's label or None, red pixels, red centroid) of one frame: at least MIN_EYEBALLING_RED red
    pixels vote for the candidate nearest to their centroid (the first listed on equal distance)."""
    red = eyeballing_red_mask(np.asarray(frame.convert("RGB")))
    ys, xs = np.nonzero(red)
    red_pixels = int(xs.size) if points is not None else 0
    if red_pixels < MIN_EYEBALLING_RED:
        return None, red_pixels, None
    centroid = (float(xs.mean()), float(ys.mean()))
    answer, best = None, None
    for label, x, y in points:
        distance = math.hypot(x - centroid[0], y - centroid[1])
        if best is None or distance < best:
            best, answer = distance, label
    return answer, red_pixels, centroid


def _correct_option(record: dict) -> str:
    return str(record.get("correct_option", "")).strip().upper()


def _verdict(answer: str | None, record: dict) -> bool:
    correct = _correct_option(record)
    return bool(answer and answer.isalpha() and correct and answer.upper() == correct)


def score_eyeballing(candidate: Image.Image, record: dict, fit: str = DEFAULT_FIT) -> dict:
    """The Last Frame verdict: one frame's vote must be the correct option."""
    points = candidate_points(record, candidate.size, fit)
    answer, red_pixels, centroid = eyeballing_vote(candidate, points)
    passed = _verdict(answer, record)
    if points is None:
        reason = "bad_canvas_dimensions"
    elif red_pixels < MIN_EYEBALLING_RED:
        reason = "too_few_red"
    elif answer is None:
        reason = "no_candidates"
    else:
        reason = None if passed else "wrong_option"
    return {
        "pass": passed,
        "failure_reason": reason,
        "answer": answer,
        "correct_option": _correct_option(record),
        "red_pixels": red_pixels,
        "centroid": [round(centroid[0], 2), round(centroid[1], 2)] if centroid else None,
    }


def score_major_frame(frames: list[Image.Image], record: dict, fit: str = DEFAULT_FIT) -> dict:
    """The leaderboard's Major Frame verdict: frames 0, 5, 10, ... of the decoded video each vote (see
    eyeballing_vote, labels upper-cased); the most voted label wins, a tie goes to the alphabetically first label;
    no votes = fail."""
    points = candidate_points(record, frames[0].size, fit)
    votes = Counter()
    for frame in frames[::MAJOR_FRAME_STRIDE]:
        answer = eyeballing_vote(frame, points)[0]
        if answer is not None:
            votes[answer.upper()] += 1
    answer = min(votes, key=lambda label: (-votes[label], label)) if votes else None
    passed = _verdict(answer, record)
    if points is None:
        reason = "bad_canvas_dimensions"
    elif answer is None:
        reason = "no_votes"
    else:
        reason = None if passed else "wrong_option"
    return {"pass": passed, "failure_reason": reason, "answer": answer, "correct_option": _correct_option(record),
            "votes": dict(sorted(votes.items())), "frames_scored": len(frames[::MAJOR_FRAME_STRIDE]),
            "frames_voted": sum(votes.values())}


# ---------------------------------------------------------------- visual puzzles: best frame

VISUAL_WINDOW = 512
BINARY_THRESHOLD = 245
VISUAL_METRICS = ("rgb", "binary")  # rgb: sum of per-pixel RGB distances; binary: mismatched pixels at gray > 245


def visual_metric(task: str) -> str:
    return "binary" if task in SHAPE_DISTANCE_TASKS else "rgb"


def _centred_window(array: np.ndarray) -> np.ndarray:
    """The centred VISUAL_WINDOW x VISUAL_WINDOW window (the whole axis where the image is smaller)."""
    height, width = array.shape[:2]
    top, left = max(0, (height - VISUAL_WINDOW) // 2), max(0, (width - VISUAL_WINDOW) // 2)
    return array[top:top + VISUAL_WINDOW, left:left + VISUAL_WINDOW]


def _to_solution_size(frame: Image.Image, solution: Image.Image) -> Image.Image:
    frame = frame.convert("RGB")
    return frame if frame.size == solution.size else frame.resize(solution.size, Image.BILINEAR)


def pixel_distances(frame: Image.Image, solution: Image.Image, metric: str) -> np.ndarray:
    """Per-pixel distance inside the window: the frame is first resized to the solution image's size, as the
    official tool does, then the centred 512x512 window of both is compared (the whole axis where the image is
    smaller). rgb: Euclidean distance of the RGB values; binary: 1 where the two differ after binarising the gray
    value (ITU-R 601 luma) at > 245. The resize is PIL's bilinear, which also smooths when shrinking (OpenCV's,
    which the official tool uses, does not): distances match it exactly only when the frame already has the
    solution's size (generate at the puzzle's 512x512)."""
    solution = solution.convert("RGB")
    frame = _to_solution_size(frame, solution)
    if metric == "binary":
        a, b = (_centred_window(np.asarray(image.convert("L"))) > BINARY_THRESHOLD for image in (frame, solution))
        return (a != b).astype(np.float64)
    a, b = (_centred_window(np.asarray(image, dtype=np.float64)) for image in (frame, solution))
    return np.sqrt(((a - b) ** 2).sum(axis=2))


def score_best_frame(frames: list[Image.Image], solution: Image.Image, task: str,
                     thresholds: dict | None = None) -> dict:
    """The smallest frame distance to the solution and the (first) frame that has it. A pass exists only with a
    user-given threshold for this task's metric (distance <= threshold) and is not the leaderboard's."""
    metric = visual_metric(task)
    distances = [float(pixel_distances(frame, solution, metric).sum()) for frame in frames]
    best = int(np.argmin(distances))
    threshold = (thresholds or {}).get(metric)
    result = {"metric": metric, "distance": round(distances[best], 3), "best_frame": best,
              "frames_compared": len(frames)}
    if threshold is None:
        return {"pass": None, "failure_reason": None, **result,
                "not_scored": "the leaderboard has no pass threshold for visual puzzles (distance only); "
                              "--visual_threshold gives one (not the leaderboard's)"}
    passed = distances[best] <= threshold
    return {"pass": passed, "failure_reason": None if passed else "above_threshold", **result,
            "pass_rule": f"{metric} distance <= {threshold:g} (not the leaderboard's)"}


# ---------------------------------------------------------------- ARC-AGI-2: palette decode of the test output

ARC_PALETTE = ((0, 0, 0), (0, 0, 255), (255, 0, 0), (0, 255, 0), (255, 255, 0), (128, 128, 128), (255, 0, 255),
               (255, 128, 0), (0, 255, 255), (128, 64, 0))
ARC_LAYOUT_KEYS = ("placements", "cell_size", "test_rows", "test_cols", "test_output")


def arc_layout(record: dict):
    """(test-output bbox left, top, cell_size, rows, cols, expected grid), or a string saying what is missing."""
    missing = [key for key in ARC_LAYOUT_KEYS if key not in record]
    if missing:
        return f"the record has no ARC grid layout ({', '.join(missing)} missing)"
    boxes = [p.get("bbox") for p in record["placements"] or []
             if isinstance(p, dict) and p.get("kind") == "test_output"]
    if not boxes or not isinstance(boxes[0], (list, tuple)) or len(boxes[0]) != 4:
        return "the record's placements have no test_output bbox"
    try:
        rows, cols, cell = int(record["test_rows"]), int(record["test_cols"]), int(record["cell_size"])
        expected = [[int(record["test_output"][r][c]) for c in range(cols)] for r in range(rows)]
        left, top = int(boxes[0][0]), int(boxes[0][1])
    except (TypeError, ValueError, IndexError, KeyError):
        return "the record's test_output bbox/test_rows/test_cols/cell_size/test_output do not fit together"
    return left, top, cell, rows, cols, expected


def _arc_align(frame: Image.Image, size) -> Image.Image:
    """The frame LANCZOS-resized to the solution image's size, no trimming (VideoThinkBench's evaluator; the older
    VLMPuzzle one first trimmed uniform borders)."""
    frame = frame.convert("RGB")
    return frame if frame.size == tuple(size) else frame.resize(tuple(size), Image.LANCZOS)


def _arc_cells(layout):
    """(row, col, (left, top, right, bottom)) of every test-output cell, shrunk by cell_size // 6 (at least 1)."""
    left, top, cell, rows, cols, _ = layout
    shrink = max(1, cell // 6)
    for r in range(rows):
        for c in range(cols):
            x, y = left + c * cell, top + r * cell
            yield r, c, (x + shrink, y + shrink, x + cell - shrink, y + cell - shrink)


def nearest_arc_colour(rgb) -> int:
    distances = [math.dist(rgb, colour) for colour in ARC_PALETTE]
    return distances.index(min(distances))


def score_arc(frame: Image.Image, solution_size, layout) -> dict:
    """Each test-output cell's mean colour -> nearest palette colour; pass iff every cell is right."""
    array = np.asarray(_arc_align(frame, solution_size)).astype(np.float64)
    height, width = array.shape[:2]
    expected = layout[5]
    predicted = [[0] * layout[4] for _ in range(layout[3])]
    for r, c, (x0, y0, x1, y1) in _arc_cells(layout):
        x0, y0 = max(0, min(width - 1, x0)), max(0, min(height - 1, y0))
        x1, y1 = max(x0 + 1, min(width, x1)), max(y0 + 1, min(height, y1))
        predicted[r][c] = nearest_arc_colour(array[y0:y1, x0:x1].mean(axis=(0, 1)))
    wrong = sum(p != e for row_p, row_e in zip(predicted, expected, strict=True)
                for p, e in zip(row_p, row_e, strict=True))
    return {"pass": wrong == 0, "failure_reason": None if wrong == 0 else "wrong_cells",
            "cells_wrong": wrong, "cells_total": layout[3] * layout[4], "predicted_grid": predicted}


# ---------------------------------------------------------------- one item

def _not_scored(reason: str, **fields) -> dict:
    return {"pass": None, "failure_reason": None, "not_scored": reason, **fields}


def score_item(frames: list[Image.Image], record: dict, task: str, puzzle: Image.Image | None = None,
               solution: Image.Image | None = None, video: bool = True, fit: str = DEFAULT_FIT,
               visual_thresholds: dict | None = None) -> dict:
    """The leaderboard verdict of one generation. `frames`: the decoded video (`video=True`), else just its last
    frame. `pass` is the column verdict: True/False, or None with `not_scored` saying why (no rule for the task,
    a best-frame distance without a threshold, a record without the ARC grid layout, Major Frame without video)."""
    rule = rule_of(task)
    head = {"task": task, "rule": rule, "column": column_of(task), "not_scored": None}
    last = frames[-1]
    if rule is None:
        return {**head, **_not_scored(f"the leaderboard has no rule for task {task!r}")}
    if rule == "maze":
        return {**head, **score_maze(last, puzzle, record, task, fit), "task": task}
    if rule == "major_frame":
        last_frame = score_eyeballing(last, record, fit)
        secondary = {"last_frame_pass": last_frame["pass"], "last_frame_answer": last_frame["answer"],
                     "last_frame_failure_reason": last_frame["failure_reason"],
                     "red_pixels": last_frame["red_pixels"], "centroid": last_frame["centroid"]}
        if not video:
            return {**head, **_not_scored("Major Frame needs the video (.mp4); only a last frame (.png) was given",
                                          correct_option=last_frame["correct_option"]), **secondary}
        return {**head, **score_major_frame(frames, record, fit), **secondary}
    if rule == "best_frame":
        if not video:
            return {**head, **_not_scored("the best-frame distance needs the video (.mp4); only a last frame "
                                          "(.png) was given")}
        return {**head, "not_scored": None, **score_best_frame(frames, solution, task, visual_thresholds)}
    layout = arc_layout(record)
    if isinstance(layout, str):
        return {**head, **_not_scored(layout)}
    return {**head, **score_arc(last, solution.size, layout)}


# ---------------------------------------------------------------- what the scorer saw

OVERLAY_LEGEND = {
    "maze": "last frame dimmed; walls dark blue, red found green, red on walls magenta, red outside the solution "
            "corridor orange, start/goal search circles cyan",
    "major_frame": "last frame dimmed; red found green, candidates cyan circles (the correct one yellow), red "
                   "centroid yellow cross",
    "best_frame": "best frame at the solution's size, dimmed; magenta where it differs from the solution "
                  "(brighter = larger distance), the compared 512x512 window outlined cyan",
    "arc_grid": "last frame at the solution's size, dimmed; test-output cells outlined green (right) or magenta "
                "(wrong)",
}


def _dimmed(image: Image.Image) -> np.ndarray:
    base = (np.asarray(image.convert("L"), dtype=np.float32) * 0.5).astype(np.uint8)
    return np.repeat(base[..., None], 3, axis=2)


def overlay_image(frames: list[Image.Image], record: dict, task: str, score: dict, puzzle: Image.Image | None = None,
                  solution: Image.Image | None = None, fit: str = DEFAULT_FIT) -> Image.Image | None:
    """What the scorer saw (OVERLAY_LEGEND); None for an item it could not score."""
    rule = rule_of(task)
    candidate = frames[-1].convert("RGB")
    if rule == "maze":
        candidate, where, red, walls = _maze_masks(candidate, puzzle, task, fit)
        out = _dimmed(candidate)
        out[walls] = (0, 0, 110)
        out[red] = (0, 210, 0)
        corridor = corridor_mask(record, where, candidate.size)
        if corridor is not None:
            out[red & ~corridor] = (255, 150, 0)
        out[red & walls] = (255, 0, 255)
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        for label in ("start", "goal"):
            x, y = _endpoint(record, label, where)
            r = ENDPOINT_SEARCH_RADIUS
            draw.ellipse((x - r, y - r, x + r, y + r), outline=(0, 255, 255))
        return image
    if rule == "major_frame":
        red = eyeballing_red_mask(np.asarray(candidate))
        out = _dimmed(candidate)
        out[red] = (0, 210, 0)
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        correct = _correct_option(record)
        for label, x, y in candidate_points(record, candidate.size, fit) or []:
            colour = (255, 255, 0) if label.upper() == correct else (0, 255, 255)
            draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=colour)
            draw.text((x + 7, y - 7), label, fill=colour)
        if red.sum() >= MIN_EYEBALLING_RED:
            ys, xs = np.nonzero(red)
            cx, cy = xs.mean(), ys.mean()
            draw.line((cx - 5, cy, cx + 5, cy), fill=(255, 255, 0))
            draw.line((cx, cy - 5, cx, cy + 5), fill=(255, 255, 0))
        return image
    if rule == "best_frame" and score.get("best_frame") is not None:
        solution = solution.convert("RGB")
        frame = _to_solution_size(frames[score["best_frame"]], solution)
        distances = pixel_distances(frame, solution, score["metric"])
        scale = 1.0 if score["metric"] == "binary" else math.sqrt(3) * 255
        out = _dimmed(frame)
        height, width = out.shape[:2]
        top, left = max(0, (height - VISUAL_WINDOW) // 2), max(0, (width - VISUAL_WINDOW) // 2)
        window = out[top:top + VISUAL_WINDOW, left:left + VISUAL_WINDOW]
        strength = np.clip(distances / scale, 0, 1)[..., None]
        window[:] = (window * (1 - strength) + np.array([255, 0, 255]) * strength).astype(np.uint8)
        image = Image.fromarray(out)
        ImageDraw.Draw(image).rectangle((left, top, left + window.shape[1] - 1, top + window.shape[0] - 1),
                                        outline=(0, 255, 255))
        return image
    if rule == "arc_grid" and score.get("predicted_grid") is not None:
        layout = arc_layout(record)
        image = Image.fromarray(_dimmed(_arc_align(candidate, solution.size)))
        draw = ImageDraw.Draw(image)
        for r, c, box in _arc_cells(layout):
            right = score["predicted_grid"][r][c] == layout[5][r][c]
            draw.rectangle(box, outline=(0, 210, 0) if right else (255, 0, 255))
        return image
    return None
