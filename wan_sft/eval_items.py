"""The items of an evaluation and what an evaluation output folder holds: which puzzles are selected, where each
item's files go, scoring one item into them, and reading the finished ones back.

Output layout (also what `--candidates_dir` reads, so a run can be re-scored into another folder):
    <output_dir>/<task>/<id>.mp4          generated video
    <output_dir>/<task>/<id>.png          its last decoded frame (the official tools' result.png)
    <output_dir>/<task>/<id>_overlay.png  what the scorer saw (none for an item it could not score)
    <output_dir>/<task>/<id>.json         score + timings, written atomically LAST: the item's completion marker
    <output_dir>/run_settings.json        what a resumed run or a merge must share with this one
    <output_dir>/attempts/<task>/<id>/    with --attempt_dirs: video_1.mp4, result.png (its last decoded frame)
                                          and an empty content.txt, what the official VLMPuzzle evaluators read
    <output_dir>/results.jsonl, summary.json, report.html   rebuilt from the per-item JSONs at the end
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .config import InputError
from .datasets import PuzzleItem, read_puzzles, require_prompts
from .fsutil import atomic_save_image, atomic_write
from .geometry import DEFAULT_FIT, fit_image
from .inference import read_image
from .leaderboard import rule_of
from .scoring import overlay_image, score_item
from .video import read_frames

SETTINGS_FILE = "run_settings.json"


# ---------------------------------------------------------------- the items of a dataset


def find_items(dataset_root: str | os.PathLike, prompt_key: str | None = None) -> list[PuzzleItem]:
    """Every puzzle below the root (wan_sft/datasets.py), sorted by (task, id); each needs a prompt."""
    items = read_puzzles(dataset_root, prompt_key)
    require_prompts(items, prompt_key)
    return items


def read_ids_file(path: str | os.PathLike) -> list[str]:
    """Lines `task/id` (blank lines and # comments skipped), e.g. prepare_csv's <stem>_val_ids.txt."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--ids_file {path}: file not found")
    keys = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "/" not in line:
            raise InputError(f"--ids_file {path} line {number}: {line!r} is not of the form task/id")
        keys.append(line)
    if not keys:
        raise InputError(f"--ids_file {path}: holds no task/id lines")
    return keys


def select_items(items: list[PuzzleItem], tasks: str | None = None, ids_file: str | None = None,
                 limit: int | None = None, num_shards: int = 1, shard_index: int = 0) -> list[PuzzleItem]:
    """Filter by tasks / ids file, keep the first `limit` per task, then take this shard's every num_shards-th item."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit} is invalid: it must be at least 1")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise InputError(f"--num_shards {num_shards} --shard_index {shard_index} is invalid: "
                         f"need num_shards >= 1 and 0 <= shard_index < num_shards")
    if tasks:
        wanted = [task.strip() for task in tasks.split(",") if task.strip()]
        known = sorted({item.task for item in items})
        unknown = [task for task in wanted if task not in known]
        if unknown:
            raise InputError(f"--tasks {unknown[0]!r} is not in the dataset (tasks: {', '.join(known)})")
        items = [item for item in items if item.task in wanted]
    if ids_file:
        keys = read_ids_file(ids_file)
        by_key = {item.key: item for item in items}
        missing = [key for key in keys if key not in by_key]
        if missing:
            raise InputError(f"--ids_file {ids_file}: {len(missing)} entries are not in the (filtered) dataset, "
                             f"first: {missing[0]}")
        items = sorted({by_key[key].key: by_key[key] for key in keys}.values(), key=lambda i: (i.task, i.id))
    if limit is not None:
        taken = Counter()
        kept = []
        for item in items:
            if taken[item.task] < limit:
                taken[item.task] += 1
                kept.append(item)
        items = kept
    items = items[shard_index::num_shards]
    if not items:
        raise InputError("no puzzles selected (check --tasks, --ids_file, --limit and the shard flags)")
    for item in items:
        check_image_header(item.puzzle_path, item.key)
    return items


def check_image_header(path: Path, key: str) -> None:
    """Cheap (header only) check that a puzzle image exists and is an image."""
    if not path.is_file():
        raise InputError(f"{key}: puzzle image {path} not found")
    try:
        with Image.open(path):
            pass
    except Exception as error:  # noqa: BLE001 - PIL raises several types for a bad file
        raise InputError(f"{key}: puzzle image {path} is not a readable image ({error.__class__.__name__})") from None


# ---------------------------------------------------------------- one item: files, scoring, result


def item_path(output_dir: Path, task: str, item_id: str, kind: str) -> Path:
    """kind: 'video', 'frame', 'input', 'overlay' or 'result'."""
    suffix = {"video": ".mp4", "frame": ".png", "input": "_input.png", "overlay": "_overlay.png",
              "result": ".json"}[kind]
    relative = os.path.normpath(os.path.join(task, f"{item_id}{suffix}"))  # from data.json: must not climb out
    if os.path.isabs(relative) or relative.split(os.sep)[0] == ".." or Path(item_id).name != item_id \
            or item_id in ("", ".", ".."):
        raise InputError(f"puzzle {task}/{item_id}: its files would be written outside {output_dir}; a task and id "
                         f"must be plain names below it (fix the dataset's data.json)")
    return output_dir / task / f"{item_id}{suffix}"


def is_finished(output_dir: Path, item: PuzzleItem) -> bool:
    return item_path(output_dir, item.task, item.id, "result").is_file()


@dataclass(frozen=True)
class ScoringOptions:
    """What the verdicts depend on besides the frames: how the puzzle was fitted to the frame, and our (not the
    leaderboard's) pass thresholds for visual puzzles ({metric: max distance}; None: distance only)."""
    fit: str = DEFAULT_FIT
    visual_thresholds: dict | None = None


def solution_image_path(item: PuzzleItem) -> Path:
    """The record's solution_image_path, else the VLMPuzzle layout's solutions/<id>_solution.png."""
    return item.solution_image or item.task_dir / "solutions" / f"{item.id}_solution.png"


def needs_solution_image(task: str) -> bool:
    """Visual puzzles and ARC-AGI-2 compare with the solution image."""
    return rule_of(task) in ("best_frame", "arc_grid")


def score_and_record(item: PuzzleItem, frames: list, output_dir: Path, has_video: bool,
                     seconds_generate: float | None, worker: str, options: ScoringOptions) -> dict:
    """Score the frames (the decoded video, or only a last frame), save the last frame and the overlay, then write
    the item's JSON (last: it marks the item finished)."""
    start = time.perf_counter()
    task_name = item.task
    last_frame = frames[-1]
    puzzle = read_image(item.puzzle_path)
    solution = read_image(solution_image_path(item)) if needs_solution_image(task_name) else None
    score = score_item(frames, item.record, task_name, puzzle=puzzle, solution=solution, video=has_video,
                       fit=options.fit, visual_thresholds=options.visual_thresholds)
    atomic_save_image(last_frame, item_path(output_dir, item.task, item.id, "frame"))
    # The puzzle as the model and the scorer saw it, inside output_dir so the report is self-contained.
    atomic_save_image(fit_image(puzzle, *last_frame.size, options.fit),
                      item_path(output_dir, item.task, item.id, "input"))
    overlay = overlay_image(frames, item.record, task_name, score, puzzle=puzzle, solution=solution, fit=options.fit)
    if overlay is not None:
        atomic_save_image(overlay, item_path(output_dir, item.task, item.id, "overlay"))
    relative = {kind: item_path(Path(), item.task, item.id, kind).as_posix()
                for kind in ("video", "frame", "input", "overlay")}
    result = {"task": item.task, "id": item.id, **{k: v for k, v in score.items() if k != "task"},
              "prompt": item.prompt, "puzzle": str(item.puzzle_path), "input": relative["input"],
              "solution": str(solution_image_path(item)) if solution is not None else None,
              "last_frame": relative["frame"], "video": relative["video"] if has_video else None,
              "overlay": relative["overlay"] if overlay is not None else None,
              "seconds_generate": None if seconds_generate is None else round(seconds_generate, 3),
              "seconds_score": round(time.perf_counter() - start, 3), "worker": worker}
    atomic_write(item_path(output_dir, item.task, item.id, "result"), json.dumps(result, indent=1, ensure_ascii=False))
    return result


def candidate_files(candidates_dir: Path, item: PuzzleItem) -> tuple[Path | None, Path | None]:
    """(last-frame PNG, video) of an item in a --candidates_dir, either may be None."""
    frame = item_path(candidates_dir, item.task, item.id, "frame")
    video = item_path(candidates_dir, item.task, item.id, "video")
    return (frame if frame.is_file() else None), (video if video.is_file() else None)


def rescore_item(item: PuzzleItem, candidates_dir: Path, output_dir: Path, options: ScoringOptions) -> dict:
    """Score a candidate: the decoded frames of its mp4 when there is one (every verdict), else its PNG as the
    last frame (last-frame verdicts only)."""
    frame_file, video_file = candidate_files(candidates_dir, item)
    if video_file:
        atomic_write(item_path(output_dir, item.task, item.id, "video"), video_file.read_bytes())
        return score_and_record(item, read_frames(video_file), output_dir, True, None, "score", options)
    return score_and_record(item, [read_image(frame_file)], output_dir, False, None, "score", options)


# ---------------------------------------------------------------- a run's folder: finished items, settings


def read_item_results(output_dir: Path, items: list[PuzzleItem] | None = None) -> list[dict]:
    """The per-item JSONs of `items` (all under output_dir when None), sorted by task then id."""
    if items is not None:
        paths = [item_path(output_dir, item.task, item.id, "result") for item in items]
        paths = [path for path in paths if path.is_file()]
    else:
        paths = [path for path in output_dir.rglob("*.json") if path.parent != output_dir]
    results = []
    for path in paths:
        result = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(result, dict) and {"task", "id", "pass"} <= result.keys() \
                and item_path(output_dir, result["task"], result["id"], "result") == path:
            results.append(result)
    return sorted(results, key=lambda r: (r["task"], r["id"]))


def check_settings(output_dir: Path, settings: dict, redo_hint: str = "") -> None:
    """A folder holds one run's settings; resuming (or merging) with others would mix incomparable results."""
    path = output_dir / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != settings:
            changed = sorted(k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k))
            raise InputError(f"{output_dir} holds a run with other settings ({', '.join(changed)} differ); "
                             f"use a new --output_dir or the same settings{redo_hint}")


def forget_finished_items(output_dir: Path) -> int:
    """--redo: remove every item's completion marker (its JSON), so every item is generated again."""
    results = read_item_results(output_dir)
    for result in results:
        item_path(output_dir, result["task"], result["id"], "result").unlink()
    return len(results)

