"""Seeded generators of VLMPuzzle-format tasks (square mazes, midpoint eyeballing) with solution videos.

Same seed -> same PNG and data.json bytes: every puzzle draws from its own random.Random seeded by
(task, seed, index), and rendering is integer numpy / PIL drawing only.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .config import InputError, check_video_shape
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
TASKS = ("maze_square", "midpoint")


def _rng(task: str, seed: int, index: int) -> random.Random:
    return random.Random(f"{task}:{seed}:{index}")  # str seeds hash with SHA-512: stable across runs


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
    lengths = [abs(bx - ax) + abs(by - ay) for (ax, ay), (bx, by) in zip(centres, centres[1:])]
    remaining = progress * sum(lengths)
    for ((ax, ay), (bx, by)), length in zip(zip(centres, centres[1:]), lengths):
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


# --- midpoint (eyeballing) -----------------------------------------------------------------------------------

def make_midpoint(rng: random.Random, width: int, height: int, num_frames: int):
    """Two anchor circles around a hidden midpoint and 5 labelled candidates near it (one exact), following
    VLMPuzzle's midpoint generator with sizes scaled to the canvas."""
    short = min(width, height)
    margin = max(6, round(short * 0.06))
    radius = max(4, round(short * 0.021))
    anchor_radius = max(radius + 3, round(short * 0.028))
    # distractors sit 2.4r..3.2r from the answer, ~90 degrees apart: no overlaps, a decision margin >= 1.2r
    min_half = 4.2 * radius + anchor_radius + 2
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
    labels = list("ABCDE")
    rng.shuffle(labels)
    turn = rng.uniform(0, math.tau)
    points = [(mx, my)]
    for k in range(4):
        a = turn + k * math.pi / 2 + rng.uniform(-math.pi / 12, math.pi / 12)
        d = rng.uniform(2.4 * radius, 3.2 * radius)
        points.append((mx + math.cos(a) * d, my + math.sin(a) * d))
    candidates = sorted(({"x": round(x, 2), "y": round(y, 2), "label": lab} for lab, (x, y) in zip(labels, points)),
                        key=lambda c: c["label"])
    correct = labels[0]
    font = ImageFont.load_default(max(8, round(radius * 1.4)))

    def render(line_progress: float, mark_progress: float) -> Image.Image:
        image = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        if line_progress > 0:
            (x0, y0), (x1, y1) = ends
            draw.line([(x0, y0), (x0 + (x1 - x0) * line_progress, y0 + (y1 - y0) * line_progress)],
                      fill=(150, 150, 150), width=max(2, round(short * 0.01)))
        for x, y in ends:
            draw.ellipse((x - anchor_radius, y - anchor_radius, x + anchor_radius, y + anchor_radius),
                         fill=(250, 250, 250), outline=(30, 30, 30), width=max(2, anchor_radius // 3))
        for c in candidates:
            x, y = c["x"], c["y"]
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255),
                         outline=(32, 32, 32), width=max(1, radius // 4))
            draw.text((x, y), c["label"], fill=(0, 0, 0), font=font, anchor="mm")
        if mark_progress > 0:  # a red disc growing over the correct candidate, drawn last so nothing covers it
            r = max(1.0, (radius + 1) * mark_progress)
            draw.ellipse((mx - r, my - r, mx + r, my + r), fill=LINE_COLOR)
        if mark_progress >= 1:
            draw.text((mx, my), correct, fill=(255, 255, 255), font=font, anchor="mm")
        return image

    frames = [render(min(1.0, 2 * p), max(0.0, 2 * p - 1)) for p in _reveal_progress(num_frames)]
    fields = {
        "canvas_dimensions": [width, height],
        "margin": margin,
        "midpoint": [round(mx, 2), round(my, 2)],
        "segment": {"start": [round(v, 2) for v in ends[0]], "end": [round(v, 2) for v in ends[1]]},
        "candidates": candidates,
        "point_radius": radius,
        "correct_option": correct,
    }
    return fields, frames[0], frames[-1], frames


# --- writing ---------------------------------------------------------------------------------------------------

def _progress(iterable, total: int, desc: str):
    if total < 20:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr)


def _write_item(task_dir: Path, item_id: str, prompt: str, fields: dict, puzzle, solution, frames, fps: int) -> dict:
    puzzle_rel, solution_rel = f"puzzles/{item_id}_puzzle.png", f"solutions/{item_id}_solution.png"
    video_rel = f"solutions/{item_id}_solution.mp4"
    atomic_save_image(puzzle, task_dir / puzzle_rel)
    atomic_save_image(solution, task_dir / solution_rel)
    write_video(task_dir / video_rel, frames, fps=fps)
    return {"id": item_id, "prompt": prompt, **fields, "image": puzzle_rel, "solution_image_path": solution_rel,
            "solution_video_path": video_rel, "video_fps": fps, "video_num_frames": len(frames)}


def _check(num: int, width: int, height: int, num_frames: int, fps: int) -> None:
    check_video_shape(num_frames, height, width)
    if num < 1:
        raise InputError(f"--num {num} is invalid: generate at least 1 puzzle")
    if fps < 1:
        raise InputError(f"--fps {fps} is invalid: it must be a positive integer")


def _write_task(out_dir, task: str, records: list[dict]) -> list[dict]:
    lines = ",\n".join(json.dumps(record) for record in records)  # one record a line: compact, still greppable
    atomic_write(Path(out_dir) / task / "data.json", f"[\n{lines}\n]\n")
    return records


def generate_maze_task(out_dir, num: int, grid_sizes=(5, 6, 7, 8, 9), seed: int = 0, width: int = 480,
                       height: int = 896, num_frames: int = 81, fps: int = 16, task: str = "maze_square") -> list[dict]:
    """Write `num` square mazes (grid sizes cycled in order) to out_dir/<task>/; returns the data.json records."""
    _check(num, width, height, num_frames, fps)
    grid_sizes = list(grid_sizes)
    if not grid_sizes or min(grid_sizes) < 2:
        raise InputError(f"--grid {grid_sizes} is invalid: maze sizes must be integers >= 2")
    for n in set(grid_sizes):
        maze_layout(n, width, height)
    task_dir = Path(out_dir) / task
    records = []
    for i in _progress(range(num), num, task):
        fields, puzzle, solution, frames = make_maze(grid_sizes[i % len(grid_sizes)], _rng(task, seed, i),
                                                     width, height, num_frames)
        records.append(_write_item(task_dir, f"{task}_s{seed}_{i:05d}", MAZE_PROMPT, fields, puzzle, solution,
                                   frames, fps))
    return _write_task(out_dir, task, records)


def generate_midpoint_task(out_dir, num: int, seed: int = 0, width: int = 480, height: int = 896,
                           num_frames: int = 81, fps: int = 16) -> list[dict]:
    """Write `num` midpoint eyeballing puzzles to out_dir/midpoint/; returns the data.json records."""
    _check(num, width, height, num_frames, fps)
    task, task_dir, records = "midpoint", Path(out_dir) / "midpoint", []
    for i in _progress(range(num), num, task):
        fields, puzzle, solution, frames = make_midpoint(_rng(task, seed, i), width, height, num_frames)
        records.append(_write_item(task_dir, f"{task}_s{seed}_{i:05d}", MIDPOINT_PROMPT, fields, puzzle, solution,
                                   frames, fps))
    return _write_task(out_dir, task, records)


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
    parser = argparse.ArgumentParser(prog="generate", description="Generate VLMPuzzle-format tasks with videos.")
    parser.add_argument("--out", required=True, help="dataset root; the task folder is created inside")
    parser.add_argument("--task", choices=TASKS, default="maze_square")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--grid", default="5..9", help="maze size in cells: an int or a range a..b (mazes only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=896)
    parser.add_argument("--num_frames", type=int, default=81)
    parser.add_argument("--fps", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        if args.task == "midpoint":
            records = generate_midpoint_task(args.out, args.num, args.seed, args.width, args.height,
                                             args.num_frames, args.fps)
        else:
            records = generate_maze_task(args.out, args.num, parse_grid(args.grid), args.seed, args.width,
                                         args.height, args.num_frames, args.fps, task=args.task)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(records)} {args.task} puzzles ({args.width}x{args.height}, {args.num_frames} frames "
          f"@ {args.fps} fps, seed {args.seed}) to {Path(args.out) / args.task}/data.json")
    return 0
