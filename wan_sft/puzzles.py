"""Seeded generators of puzzle tasks (square mazes; midpoint and circle_center eyeballing) with solution videos,
written in the VLMPuzzle or the VideoThinkBench layout (../shared/VIDEOTHINKBENCH.md §1).

Same seed -> same PNG, data.json, manifest and report bytes: every puzzle draws from its own random.Random seeded
by a hash of (task, seed, index), and rendering is integer numpy / PIL drawing only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from .cli import run_entry
from .config import HelpFormatter, InputError
from .fsutil import atomic_save_image, atomic_write
from .video import write_video

MAZE_PROMPT = "Draw a red path connecting two red dots without touching the black walls. Static camera."
MIDPOINT_PROMPT = ("Connect the two large circles and mark the option at the midpoint of the segment in red. "
                   "Static camera.")
WALL = 1
PASSAGE = 0
PASSAGE_COLOR = (255, 255, 255)
ENDPOINT_COLOR = (220, 30, 30)
LINE_COLOR = (220, 0, 0)
HOLD_FRACTION = 0.15


def _reveal_progress(num_frames: int) -> list[float]:
    """Per-frame reveal fraction: 0 at frame 0, 1 from the first of the last ~15% (held) frames on."""
    hold = max(1, round(num_frames * HOLD_FRACTION))
    steps = num_frames - hold
    return [min(1.0, i / steps) for i in range(num_frames)]


# --- mazes ---------------------------------------------------------------------------------------------------

def carve_maze(n: int, rng: random.Random) -> list[list[int]]:
    """Perfect maze of n x n cells by randomized DFS, in the (2n+1)^2 wall/cell grid (cells at odd coords)."""
    size = 2 * n + 1
    grid = [[WALL] * size for _ in range(size)]
    grid[1][1] = PASSAGE
    stack = [(1, 1)]
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in ((0, 2), (0, -2), (2, 0), (-2, 0))
                   if 0 < r + dr < size and 0 < c + dc < size and grid[r + dr][c + dc] == WALL]
        if not options:
            stack.pop()
            continue
        nr, nc = rng.choice(options)
        grid[(r + nr) // 2][(c + nc) // 2] = PASSAGE
        grid[nr][nc] = PASSAGE
        stack.append((nr, nc))
    return grid


def bfs_path(grid: list[list[int]], start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Shortest 4-connected passage path start -> goal (the only one in a perfect maze); [] if none."""
    parents = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        r, c = node
        for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nxt[0] < len(grid) and 0 <= nxt[1] < len(grid[0]) and grid[nxt[0]][nxt[1]] == PASSAGE \
                    and nxt not in parents:
                parents[nxt] = node
                queue.append(nxt)
    if goal not in parents:
        return []
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = parents[node]
    return path[::-1]


def maze_layout(n: int, width: int, height: int) -> tuple[int, list[int]]:
    """Square maze centred on the canvas. Cell size and offsets are even so the 2x2 chroma blocks of yuv420p
    never straddle a wall edge. Returns (cell_size, [pad_left, pad_top, pad_right, pad_bottom])."""
    blocks = 2 * n + 1
    cell = min(width, height) // blocks // 2 * 2
    if cell < 8:
        raise InputError(f"--grid {n} does not fit a {width}x{height} canvas: cells would be {cell} px "
                         f"(need >= 8; use a smaller --grid or a larger canvas)")
    side = blocks * cell
    left = (width - side) // 4 * 2
    top = (height - side) // 4 * 2
    return cell, [left, top, width - side - left, height - side - top]


def line_thickness(cell: int) -> int:
    """Even, about 0.36 of the cell: thick enough to survive H.264, centred exactly in the passage."""
    return max(4, 2 * round(0.18 * cell))


def _render_maze(grid, cell: int, padding: list[int], width: int, height: int, endpoints) -> np.ndarray:
    blocks = np.kron(np.asarray(grid, dtype=np.uint8), np.ones((cell, cell), dtype=np.uint8))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)  # padding is wall-coloured (black)
    side = blocks.shape[0]
    left, top = padding[0], padding[1]
    canvas[top:top + side, left:left + side][blocks == PASSAGE] = PASSAGE_COLOR
    for r, c in endpoints:
        canvas[top + r * cell:top + (r + 1) * cell, left + c * cell:left + (c + 1) * cell] = ENDPOINT_COLOR
    return canvas


def _draw_partial_path(canvas: np.ndarray, centres: list[tuple[int, int]], thickness: int, progress: float) -> None:
    """Draw the first `progress` of the polyline's arc length as axis-aligned bars with square caps.

    Centres are pixel-edge coordinates (x, y), so a bar of even thickness is symmetric about them."""
    if progress <= 0:
        return
    half = thickness // 2
    lengths = [abs(bx - ax) + abs(by - ay) for (ax, ay), (bx, by) in zip(centres, centres[1:], strict=False)]
    remaining = progress * sum(lengths)
    for ((ax, ay), (bx, by)), length in zip(zip(centres, centres[1:], strict=False), lengths, strict=True):
        if remaining <= 0:
            break
        frac = min(1.0, remaining / length)
        ex, ey = round(ax + (bx - ax) * frac), round(ay + (by - ay) * frac)
        canvas[min(ay, ey) - half:max(ay, ey) + half, min(ax, ex) - half:max(ax, ex) + half] = LINE_COLOR
        remaining -= length


def make_maze(n: int, rng: random.Random, width: int, height: int, num_frames: int):
    """One maze: (record fields without paths, puzzle image, solution image, video frames)."""
    grid = carve_maze(n, rng)
    size = 2 * n + 1
    start, goal = (1, 1), (size - 2, size - 2)
    path = bfs_path(grid, start, goal)
    cell, padding = maze_layout(n, width, height)
    left, top = padding[0], padding[1]
    puzzle = _render_maze(grid, cell, padding, width, height, (start, goal))
    centres = [(left + c * cell + cell // 2, top + r * cell + cell // 2) for r, c in path]
    thickness = line_thickness(cell)
    frames = []
    for progress in _reveal_progress(num_frames):
        frame = puzzle.copy()
        _draw_partial_path(frame, centres, thickness, progress)
        frames.append(frame)

    def centre(rc):
        return [left + rc[1] * cell + cell / 2.0, top + rc[0] * cell + cell / 2.0]

    fields = {
        "canvas_dimensions": [width, height],
        "start_point": centre(start),
        "goal_point": centre(goal),
        "grid_size": [size, size],
        "cell_size": cell,
        "maze_grid": grid,
        "start": list(start),
        "goal": list(goal),
        "cell_bboxes": [[[left + c * cell, top + r * cell, left + (c + 1) * cell, top + (r + 1) * cell]
                         for c in range(size)] for r in range(size)],
        "padding": padding,
        "solution_path_cell_ids": [r * size + c for r, c in path],
    }
    return fields, Image.fromarray(puzzle), Image.fromarray(frames[-1]), frames


# --- eyeballing: midpoint, circle_center ----------------------------------------------------------------------

def _candidates_around(rng: random.Random, answer: tuple[float, float], radius: int):
    """Five labelled candidates: the answer and 4 distractors 2.4r..3.2r from it, ~90 degrees apart (no overlaps,
    a decision margin >= 1.2r). Returns (candidates sorted by label, the correct label)."""
    labels = list("ABCDE")
    rng.shuffle(labels)
    turn = rng.uniform(0, math.tau)
    points = [answer]
    for k in range(4):
        a = turn + k * math.pi / 2 + rng.uniform(-math.pi / 12, math.pi / 12)
        d = rng.uniform(2.4 * radius, 3.2 * radius)
        points.append((answer[0] + math.cos(a) * d, answer[1] + math.sin(a) * d))
    candidates = sorted(({"x": round(x, 2), "y": round(y, 2), "label": lab}
                         for lab, (x, y) in zip(labels, points, strict=True)), key=lambda c: c["label"])
    return candidates, labels[0]


def _draw_candidates(draw: ImageDraw.ImageDraw, candidates: list[dict], radius: int, font) -> None:
    for c in candidates:
        x, y = c["x"], c["y"]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255),
                     outline=(32, 32, 32), width=max(1, radius // 4))
        draw.text((x, y), c["label"], fill=(0, 0, 0), font=font, anchor="mm")


def _draw_mark(draw: ImageDraw.ImageDraw, answer, correct: str, radius: int, font, progress: float) -> None:
    """A red disc growing over the correct candidate (drawn last so nothing covers it), then its label in white."""
    if progress > 0:
        r = max(1.0, (radius + 1) * progress)
        draw.ellipse((answer[0] - r, answer[1] - r, answer[0] + r, answer[1] + r), fill=LINE_COLOR)
    if progress >= 1:
        draw.text(answer, correct, fill=(255, 255, 255), font=font, anchor="mm")


def _eyeballing_sizes(width: int, height: int) -> tuple[int, int, int, int]:
    """(short side, margin, candidate radius, line width), scaled to the canvas."""
    short = min(width, height)
    return short, max(6, round(short * 0.06)), max(4, round(short * 0.021)), max(2, round(short * 0.01))


def make_midpoint(rng: random.Random, width: int, height: int, num_frames: int):
    """Two anchor circles around a hidden midpoint and 5 labelled candidates near it (one exact), following
    VLMPuzzle's midpoint generator with sizes scaled to the canvas."""
    short, margin, radius, line_width = _eyeballing_sizes(width, height)
    anchor_radius = max(radius + 3, round(short * 0.028))
    min_half = 4.2 * radius + anchor_radius + 2  # the farthest distractor stays clear of the anchors
    lo_x, hi_x = margin + anchor_radius, width - margin - anchor_radius
    lo_y, hi_y = margin + anchor_radius, height - margin - anchor_radius
    for _ in range(1000):
        mx, my = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        angle = rng.uniform(0, math.tau)
        dx, dy = math.cos(angle), math.sin(angle)
        # the segment is symmetric about the midpoint: the nearer bound in x and in y limits both ends
        reach = min(min(hi_x - mx, mx - lo_x) / max(abs(dx), 1e-9), min(hi_y - my, my - lo_y) / max(abs(dy), 1e-9))
        if reach >= min_half and min(mx - lo_x, hi_x - mx, my - lo_y, hi_y - my) >= 4.2 * radius:
            break
    else:
        raise InputError(f"canvas {width}x{height} is too small for the midpoint task (use >= 96x96)")
    half = rng.uniform(min_half, reach)
    ends = [(mx - dx * half, my - dy * half), (mx + dx * half, my + dy * half)]
    candidates, correct = _candidates_around(rng, (mx, my), radius)
    font = ImageFont.load_default(max(8, round(radius * 1.4)))

    def render(line_progress: float, mark_progress: float) -> Image.Image:
        image = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        if line_progress > 0:
            (x0, y0), (x1, y1) = ends
            draw.line([(x0, y0), (x0 + (x1 - x0) * line_progress, y0 + (y1 - y0) * line_progress)],
                      fill=(150, 150, 150), width=line_width)
        for x, y in ends:
            draw.ellipse((x - anchor_radius, y - anchor_radius, x + anchor_radius, y + anchor_radius),
                         fill=(250, 250, 250), outline=(30, 30, 30), width=max(2, anchor_radius // 3))
        _draw_candidates(draw, candidates, radius, font)
        _draw_mark(draw, (mx, my), correct, radius, font, mark_progress)
        return image

    return _eyeballing_puzzle(render, num_frames, width, height, margin, candidates, correct, radius, line_width,
                              midpoint=[round(mx, 2), round(my, 2)],
                              segment={"start": [round(v, 2) for v in ends[0]], "end": [round(v, 2) for v in ends[1]]})


def _eyeballing_puzzle(render, num_frames: int, width: int, height: int, margin: int, candidates, correct: str,
                       radius: int, line_width: int, **task_fields):
    """(record fields, puzzle image, solution image, frames) of an eyeballing task: the red lines grow over the first
    half of the reveal, the answer's mark over the second; the fields every eyeballing record has, then its own."""
    frames = [render(min(1.0, 2 * p), max(0.0, 2 * p - 1)) for p in _reveal_progress(num_frames)]
    fields = {"canvas_dimensions": [width, height], "margin": margin, "candidates": candidates,
              "correct_option": correct, "point_radius": radius, "line_width": line_width, **task_fields}
    return fields, frames[0], frames[-1], frames


def make_circle_center(rng: random.Random, width: int, height: int, num_frames: int):
    """A circle and 5 labelled candidates near its centre (one exact). The solution grows two red diameters out
    from the centre, symmetric about it (so every frame's red centroid is the centre), then marks the answer."""
    short, margin, radius, line_width = _eyeballing_sizes(width, height)
    lo_r = 4.2 * radius + 2 * line_width  # distractors stay inside the circle
    hi_r = short / 2 - margin
    if hi_r < lo_r:
        raise InputError(f"canvas {width}x{height} is too small for the circle_center task (use >= 96x96)")
    circle_r = rng.uniform(max(lo_r, 0.6 * hi_r), hi_r)
    cx = rng.uniform(margin + circle_r, width - margin - circle_r)
    cy = rng.uniform(margin + circle_r, height - margin - circle_r)
    candidates, correct = _candidates_around(rng, (cx, cy), radius)
    angle = rng.uniform(0, math.pi / 2)
    font = ImageFont.load_default(max(8, round(radius * 1.4)))

    def render(line_progress: float, mark_progress: float) -> Image.Image:
        image = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        draw.ellipse((cx - circle_r, cy - circle_r, cx + circle_r, cy + circle_r), outline=(30, 30, 30),
                     width=line_width)
        _draw_candidates(draw, candidates, radius, font)
        reach = line_progress * (circle_r - line_width)
        for a in (angle, angle + math.pi / 2):
            if reach > 0:
                dx, dy = math.cos(a) * reach, math.sin(a) * reach
                draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=LINE_COLOR, width=line_width)
        _draw_mark(draw, (cx, cy), correct, radius, font, mark_progress)
        return image

    return _eyeballing_puzzle(render, num_frames, width, height, margin, candidates, correct, radius, line_width,
                              circle={"center": [round(cx, 2), round(cy, 2)], "radius": round(circle_r, 2)})


# --- writing: layout A (VLMPuzzle) and B (VideoThinkBench), ../shared/VIDEOTHINKBENCH.md §1 ---------------------

LAYOUTS = ("vlmpuzzle", "videothinkbench")
DEFAULT_LAYOUT = "videothinkbench"
DEFAULT_SIZE = 512  # VideoThinkBench's canvas, both sides
DEFAULT_FPS = 16
TASKS = {  # task -> (group, prompt, VideoThinkBench's solution video length)
    "maze_square": ("maze", MAZE_PROMPT, 119),
    "midpoint": ("eyeballing", MIDPOINT_PROMPT, 36),
    "circle_center": ("eyeballing", "Mark the option at the centre of the circle in red. Static camera.", 24),
}
MAKERS = {"midpoint": make_midpoint, "circle_center": make_circle_center}
STARTING_FRAME = "Use the provided puzzle image as the starting frame. "
MANIFEST_FILE = "canonical_manifest.jsonl"
REPORT_FILE = "generation_report.json"


def _progress(iterable, total: int, desc: str):
    if total < 20:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr)


def item_seed(task: str, seed: int, index: int) -> int:
    """The puzzle's own seed (recorded as `seed`): stable across runs and machines."""
    return int.from_bytes(hashlib.sha256(f"{task}:{seed}:{index}".encode()).digest()[:4], "big")


def item_id(task: str, seed: int, index: int, layout: str) -> str:
    if layout == "vlmpuzzle":
        return f"{task}_s{seed}_{index:05d}"
    return f"worker_00__{hashlib.sha256(f'id:{task}:{seed}:{index}'.encode()).hexdigest()[:32]}"


def _write_item(task_dir: Path, item: str, task: str, fields: dict, images, frames, fps: int, layout: str) -> dict:
    """Write the puzzle, solution image and video (and a maze's reasoning image); returns the data.json record."""
    group, prompt = TASKS[task][:2]
    puzzle, solution = images
    paths = {"image": f"puzzles/{item}_puzzle.png", "solution_image_path": f"solutions/{item}_solution.png",
             "solution_video_path": f"solutions/{item}_solution.mp4"}
    reasoning = f"reasoning/{item}_reasoning.png" if group == "maze" else None
    atomic_save_image(puzzle, task_dir / paths["image"])
    atomic_save_image(solution, task_dir / paths["solution_image_path"])
    write_video(task_dir / paths["solution_video_path"], frames, fps=fps)
    if layout == "vlmpuzzle":  # the video is implied by the id
        return {"id": item, "prompt": prompt, **fields, "image": paths["image"],
                "solution_image_path": paths["solution_image_path"]}
    if reasoning:
        atomic_save_image(solution, task_dir / reasoning)
    answer = fields["correct_option"] if group == "eyeballing" else json.dumps(fields["solution_path_cell_ids"])
    return {"id": item, "ti2v_prompt": STARTING_FRAME + prompt,
            "ti2i_prompt": STARTING_FRAME + prompt.replace("Static camera.", "Output the solved puzzle image."),
            "ti2t_prompt": STARTING_FRAME + prompt.replace("Static camera.", "Answer in text."),
            "ti2ti_prompt": STARTING_FRAME + prompt.replace("Static camera.", "Answer in text and image."),
            "ti2t_answer": answer, "ti2ti_answer": {"text": answer, "image": paths["solution_image_path"]},
            "image": paths["image"], "reasoning_image": reasoning,
            "solution_image_path": paths["solution_image_path"], "solution_video_path": paths["solution_video_path"],
            "video_fps": fps, "video_num_frames": len(frames), **fields}


def _check(num: int, width: int, height: int, num_frames: int, fps: int, layout: str) -> None:
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout!r} is invalid: choose {' or '.join(LAYOUTS)}")
    if num < 1:
        raise InputError(f"--num {num} is invalid: generate at least 1 puzzle")
    if num_frames < 2:
        raise InputError(f"--num_frames {num_frames} is invalid: a solution video needs at least 2 frames")
    if min(width, height) < 32:
        raise InputError(f"--width {width} --height {height} is invalid: both must be at least 32 pixels")
    if fps < 1:
        raise InputError(f"--fps {fps} is invalid: it must be a positive integer")


def task_dir_of(out_dir, task: str, layout: str) -> Path:
    return Path(out_dir) / ("tasks" if layout == "videothinkbench" else "") / task


def _write_task(out_dir, task: str, layout: str, records: list[dict], settings: dict) -> list[dict]:
    """data.json (one record a line: compact, still greppable); in layout B also the root's manifest and report,
    which keep the lines of the other tasks already generated there."""
    lines = ",\n".join(json.dumps(record) for record in records)
    atomic_write(task_dir_of(out_dir, task, layout) / "data.json", f"[\n{lines}\n]\n")
    if layout == "videothinkbench":
        root = Path(out_dir)
        manifest = root / MANIFEST_FILE
        kept = [line for line in (manifest.read_text().splitlines() if manifest.is_file() else [])
                if json.loads(line).get("task_type") != task]
        prefix = f"tasks/{task}/"
        new = [json.dumps({"id": r["id"], "task_group": TASKS[task][0], "task_type": task,
                           "prompts": {kind: r[f"{kind}_prompt"] for kind in ("ti2v", "ti2i", "ti2t", "ti2ti")},
                           "assets": {"image": prefix + r["image"],
                                      "solution_image": prefix + r["solution_image_path"],
                                      "solution_video": prefix + r["solution_video_path"],
                                      "reasoning_image": prefix + r["reasoning_image"] if r["reasoning_image"]
                                      else None}}) for r in records]
        ordered = sorted(kept + new, key=lambda line: (json.loads(line)["task_type"], json.loads(line)["id"]))
        atomic_write(manifest, "".join(f"{line}\n" for line in ordered))  # the same bytes in any task order
        report_file = root / REPORT_FILE
        report = json.loads(report_file.read_text()) if report_file.is_file() else {"tasks": {}}
        report["tasks"][task] = {"samples": len(records), **settings}
        report["tasks"] = dict(sorted(report["tasks"].items()))
        atomic_write(report_file, json.dumps(report, indent=1) + "\n")
    return records


def generate_task(out_dir, task: str, num: int, seed: int = 0, width: int = DEFAULT_SIZE,
                  height: int = DEFAULT_SIZE, num_frames: int | None = None, fps: int = DEFAULT_FPS,
                  layout: str = DEFAULT_LAYOUT, grid_sizes=(5, 6, 7, 8, 9)) -> list[dict]:
    """Write `num` puzzles of a task (maze grid sizes cycled in order) in the layout's folders under out_dir;
    returns the data.json records. num_frames defaults to the task's VideoThinkBench clip length."""
    num_frames = num_frames or TASKS[task][2]
    _check(num, width, height, num_frames, fps, layout)
    grid_sizes = list(grid_sizes)
    if task == "maze_square":
        if not grid_sizes or min(grid_sizes) < 2:
            raise InputError(f"--grid {grid_sizes} is invalid: maze sizes must be integers >= 2")
        for n in set(grid_sizes):
            maze_layout(n, width, height)
    task_dir, records = task_dir_of(out_dir, task, layout), []
    for i in _progress(range(num), num, task):
        rng = random.Random(item_seed(task, seed, i))
        if task == "maze_square":
            fields, puzzle, solution, frames = make_maze(grid_sizes[i % len(grid_sizes)], rng, width, height,
                                                         num_frames)
        else:
            fields, puzzle, solution, frames = MAKERS[task](rng, width, height, num_frames)
        fields["seed"] = item_seed(task, seed, i)
        records.append(_write_item(task_dir, item_id(task, seed, i, layout), task, fields, (puzzle, solution),
                                   frames, fps, layout))
    settings = dict(seed=seed, width=width, height=height, num_frames=num_frames, fps=fps)
    return _write_task(out_dir, task, layout, records, settings)


def generate_maze_task(out_dir, num: int, grid_sizes=(5, 6, 7, 8, 9), seed: int = 0, **options) -> list[dict]:
    """`num` square mazes; options as for generate_task."""
    return generate_task(out_dir, "maze_square", num, seed, grid_sizes=grid_sizes, **options)


def generate_midpoint_task(out_dir, num: int, seed: int = 0, **options) -> list[dict]:
    """`num` midpoint eyeballing puzzles; options as for generate_task."""
    return generate_task(out_dir, "midpoint", num, seed, **options)


def parse_grid(text: str) -> list[int]:
    """'5..9' -> [5, 6, 7, 8, 9]; '7' -> [7]."""
    try:
        if ".." in text:
            lo, hi = (int(part) for part in text.split("..", 1))
            values = list(range(lo, hi + 1))
        else:
            values = [int(text)]
    except ValueError:
        values = []
    if not values or min(values) < 2:
        raise InputError(f"--grid {text!r} is invalid: give an int >= 2 or a range like 5..9")
    return values


def main_generate(argv: list[str] | None = None) -> int:
    return run_entry(generate_command, argv)


def generate_command(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="prepare_csv.py generate", formatter_class=HelpFormatter,
                                     description="Generate puzzle tasks with solution videos, in either layout.",
                                     epilog="environment: none needed (no model is loaded).\n\nNothing to resume: "
                                            "the same flags write the same bytes again.")
    parser.add_argument("--out", required=True, help="dataset root; the task folder is created inside")
    parser.add_argument("--task", choices=tuple(TASKS), default="maze_square", help="puzzle kind")
    parser.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
                        help="videothinkbench: <out>/tasks/<task>/ + canonical_manifest.jsonl, ti2v_prompt; "
                             "vlmpuzzle: <out>/<task>/, prompt, videos implied by id")
    parser.add_argument("--num", type=int, default=100, help="puzzles to write")
    parser.add_argument("--grid", default="5..9", help="maze size in cells: an int or a range a..b (mazes only)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same puzzles")
    parser.add_argument("--width", type=int, default=DEFAULT_SIZE, help="canvas and video width in pixels")
    parser.add_argument("--height", type=int, default=DEFAULT_SIZE, help="canvas and video height in pixels")
    parser.add_argument("--num_frames", type=int, default=None,
                        help="solution video length (default: VideoThinkBench's for the task: "
                             + ", ".join(f"{task} {frames}" for task, (_, _, frames) in TASKS.items()) + ")")
    parser.add_argument("--fps", type=int, default=DEFAULT_FPS, help="frame rate of the solution videos")
    args = parser.parse_args(argv)
    records = generate_task(args.out, args.task, args.num, args.seed, args.width, args.height, args.num_frames,
                            args.fps, args.layout, parse_grid(args.grid))
    frames = args.num_frames or TASKS[args.task][2]
    print(f"wrote {len(records)} {args.task} puzzles ({args.width}x{args.height}, {frames} frames "
          f"@ {args.fps} fps, seed {args.seed}) to {task_dir_of(args.out, args.task, args.layout)}/data.json")
    return 0
