"""VLMPuzzle scoring, reimplemented from the original evaluators.

Maze rule: betmma/VLMPuzzle puzzle/maze_base.py (MazePuzzleEvaluator) with the per-kind red dominance of
puzzle/maze_{square,hexagon,labyrinth}/evaluator.py. Eyeballing rule: puzzle/point_target_base.py
(PointTargetPuzzleEvaluator._score_red_point), image option only.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np
from PIL import Image, ImageDraw

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


def _scale(point, source_size, target_size) -> tuple[float, float]:
    return (float(point[0]) * target_size[0] / source_size[0], float(point[1]) * target_size[1] / source_size[1])


def _as_point(value) -> tuple[float, float]:
    if isinstance(value, dict):
        return float(value["x"]), float(value["y"])
    return float(value[0]), float(value[1])


def _endpoint(record: dict, label: str, source_size, target_size) -> tuple[float, float]:
    """`<label>_pixel`, else `<label>_point`, else the centre of cell_bboxes[row][col]; scaled to the candidate."""
    for key in (f"{label}_pixel", f"{label}_point"):
        if key in record:
            return _scale(_as_point(record[key]), source_size, target_size)
    if label in record and "cell_bboxes" in record:
        row, col = int(record[label][0]), int(record[label][1])
        left, top, right, bottom = (float(v) for v in record["cell_bboxes"][row][col][:4])
        return _scale(((left + right) / 2, (top + bottom) / 2), source_size, target_size)
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


def corridor_mask(record: dict, source_size, target_size) -> np.ndarray | None:
    """Pixels of the true solution corridor: the cells of solution_path_cell_ids plus any grid cells between
    consecutive ids (for records that list only cells, not the passages between them); None without the fields."""
    ids, bboxes = record.get("solution_path_cell_ids"), record.get("cell_bboxes")
    if not ids or not bboxes:
        return None
    cols = len(bboxes[0])
    cells = [_cell_coords(i, cols) for i in ids]
    blocks = set(cells)
    for (r1, c1), (r2, c2) in zip(cells, cells[1:]):
        if r1 == r2 or c1 == c2:
            for r in range(min(r1, r2), max(r1, r2) + 1):
                for c in range(min(c1, c2), max(c1, c2) + 1):
                    blocks.add((r, c))
    width, height = target_size
    sx, sy = width / source_size[0], height / source_size[1]
    mask = np.zeros((height, width), dtype=bool)
    for r, c in blocks:
        left, top, right, bottom = bboxes[r][c][:4]
        rows = slice(int(math.floor(top * sy)), int(math.ceil(bottom * sy)))
        mask[rows, int(math.floor(left * sx)):int(math.ceil(right * sx))] = True
    return mask


def _maze_masks(candidate: Image.Image, puzzle: Image.Image, task: str):
    candidate = candidate.convert("RGB")
    puzzle = puzzle.convert("RGB")
    source_size = puzzle.size
    if puzzle.size != candidate.size:
        puzzle = puzzle.resize(candidate.size, Image.NEAREST)
    red = maze_red_mask(np.asarray(candidate), task)
    walls = wall_mask(np.asarray(puzzle))
    return candidate, source_size, red, walls


def score_maze(candidate: Image.Image, puzzle: Image.Image, record: dict, task: str) -> dict:
    """The original maze verdict plus `corridor_precision` (share of red inside the true solution corridor)."""
    candidate, source_size, red, walls = _maze_masks(candidate, puzzle, task)
    start = _endpoint(record, "start", source_size, candidate.size)
    goal = _endpoint(record, "goal", source_size, candidate.size)
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
    corridor = corridor_mask(record, source_size, candidate.size)
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


def _candidate_points(record: dict, scale_x: float, scale_y: float):
    """Candidates the original accepts: a one-character string label and numeric x, y."""
    for entry in record.get("candidates") or []:
        if isinstance(entry, dict) and isinstance(entry.get("label"), str) and len(entry["label"]) == 1:
            x, y = entry.get("x"), entry.get("y")
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                yield entry["label"], float(x) * scale_x, float(y) * scale_y


def _canvas_scale(record: dict, size) -> tuple[float, float] | None:
    """Candidate size / canvas_dimensions ([W, H] or {width, height}); None when unusable, as in the original."""
    dims = record.get("canvas_dimensions")
    if isinstance(dims, dict):
        dims = [dims.get("width"), dims.get("height")]
    if not isinstance(dims, (list, tuple)) or len(dims) < 2 \
            or not all(isinstance(v, (int, float)) and v > 0 for v in dims[:2]):
        return None
    return size[0] / float(dims[0]), size[1] / float(dims[1])


def score_eyeballing(candidate: Image.Image, record: dict) -> dict:
    """Nearest candidate (coordinates scaled from canvas_dimensions) to the red centroid; PASS = it is correct."""
    candidate = candidate.convert("RGB")
    scale = _canvas_scale(record, candidate.size)
    red = eyeballing_red_mask(np.asarray(candidate))
    ys, xs = np.nonzero(red)
    red_pixels = int(xs.size) if scale else 0
    correct = str(record.get("correct_option", "")).strip().upper()
    answer = centroid = None
    if red_pixels >= MIN_EYEBALLING_RED:
        centroid = (float(xs.mean()), float(ys.mean()))
        best = None
        for label, x, y in _candidate_points(record, *scale):
            distance = math.hypot(x - centroid[0], y - centroid[1])
            if best is None or distance < best:
                best, answer = distance, label
    normalized = answer.upper() if answer and answer.isalpha() else None
    passed = bool(normalized and correct and normalized == correct)
    if scale is None:
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
        "correct_option": correct,
        "red_pixels": red_pixels,
        "centroid": [round(centroid[0], 2), round(centroid[1], 2)] if centroid else None,
    }


def score_item(candidate: Image.Image, puzzle: Image.Image | None, record: dict, task: str) -> dict:
    if is_maze_task(task):
        return score_maze(candidate, puzzle, record, task)
    return {"task": task, **score_eyeballing(candidate, record)}


def overlay_image(candidate: Image.Image, puzzle: Image.Image | None, record: dict, task: str) -> Image.Image:
    """Dimmed candidate with: walls dark blue, red found green, red on walls magenta, outside-corridor red orange;
    maze endpoints / eyeballing candidates as cyan circles (the correct one yellow), red centroid a yellow cross."""
    candidate = candidate.convert("RGB")
    base = (np.asarray(candidate.convert("L"), dtype=np.float32) * 0.5).astype(np.uint8)
    out = np.repeat(base[..., None], 3, axis=2)
    if is_maze_task(task):
        candidate, source_size, red, walls = _maze_masks(candidate, puzzle, task)
        out[walls] = (0, 0, 110)
        out[red] = (0, 210, 0)
        corridor = corridor_mask(record, source_size, candidate.size)
        if corridor is not None:
            out[red & ~corridor] = (255, 150, 0)
        out[red & walls] = (255, 0, 255)
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        for label in ("start", "goal"):
            x, y = _endpoint(record, label, source_size, candidate.size)
            r = ENDPOINT_SEARCH_RADIUS
            draw.ellipse((x - r, y - r, x + r, y + r), outline=(0, 255, 255))
        return image
    red = eyeballing_red_mask(np.asarray(candidate))
    out[red] = (0, 210, 0)
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    correct = str(record.get("correct_option", "")).strip().upper()
    for label, x, y in _candidate_points(record, *(_canvas_scale(record, candidate.size) or (1.0, 1.0))):
        colour = (255, 255, 0) if label.upper() == correct else (0, 255, 255)
        draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=colour)
        draw.text((x + 7, y - 7), label, fill=colour)
    if red.sum() >= MIN_EYEBALLING_RED:
        ys, xs = np.nonzero(red)
        cx, cy = xs.mean(), ys.mean()
        draw.line((cx - 5, cy, cx + 5, cy), fill=(255, 255, 0))
        draw.line((cx, cy - 5, cx, cy + 5), fill=(255, 255, 0))
    return image
