"""VLMPuzzle evaluation: generate a video per puzzle (one worker process per GPU), score it with the leaderboard's
rules (wan_sft/scoring.py) on the frames of the written mp4 as decoded (what the official tools read), summarize
into the leaderboard's columns.

Output layout (also what `--candidates_dir` reads, so a run can be re-scored into another folder):
    <output_dir>/<task>/<id>.mp4          generated video
    <output_dir>/<task>/<id>.png          its last decoded frame (the official tools' result.png)
    <output_dir>/<task>/<id>_overlay.png  what the scorer saw (none for an item it could not score)
    <output_dir>/<task>/<id>.json         score + timings, written atomically LAST: the item's completion marker
    <output_dir>/run_settings.json        what a resumed run or a merge must share with this one
    <output_dir>/attempts/<task>/<id>/    with --attempt_dirs: video_1.mp4, result.png (its last decoded frame)
                                          and an empty content.txt, what the official VLMPuzzle evaluators read
    <output_dir>/results.jsonl, summary.json, report.html   rebuilt from the per-item JSONs at the end
A rerun skips items whose JSON exists. Workers get items one at a time from the parent over their own pipe (no
shared queue lock that a killed worker could leave held); a worker that dies costs only its current item, which
is reported, and the run exits non-zero naming every unfinished item.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import HelpFormatter, InputError, environment_help
from .datasets import PuzzleItem, read_puzzles, require_prompts
from .fsutil import WriteFailed, atomic_save_image, atomic_write, write_failed
from .geometry import DEFAULT_FIT, fit_image
from .inference import (
    GenerationSettings,
    add_generation_args,
    check_generation_args,
    generate,
    load_generator,
    read_image,
    settings_from_args,
)
from .leaderboard import column_scores, rule_of
from .scoring import VISUAL_METRICS, overlay_image, score_item

SETTINGS_FILE = "run_settings.json"
RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


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
    from PIL import Image

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


@dataclass(frozen=True)
class GenerationJob:
    """What every worker needs besides its device."""
    model_base_path: str
    lora_path: str | None
    settings: GenerationSettings
    fps: int
    output_dir: str
    compile_blocks: bool
    scoring: ScoringOptions
    fp8: bool = False


def generate_item(pipe, item: PuzzleItem, job: GenerationJob, worker: str) -> dict:
    """Generate, write the mp4, and score the frames decoded from it (what the official tools score)."""
    from .video import read_frames, write_video

    output_dir = Path(job.output_dir)
    start = time.perf_counter()
    frames = generate(pipe, read_image(item.puzzle_path), item.prompt, job.settings)
    seconds = time.perf_counter() - start
    video = item_path(output_dir, item.task, item.id, "video")
    try:
        write_video(video, frames, fps=job.fps)
    except OSError as error:
        raise write_failed(video, error) from error
    return score_and_record(item, read_frames(video), output_dir, True, seconds, worker, job.scoring)


def candidate_files(candidates_dir: Path, item: PuzzleItem) -> tuple[Path | None, Path | None]:
    """(last-frame PNG, video) of an item in a --candidates_dir, either may be None."""
    frame = item_path(candidates_dir, item.task, item.id, "frame")
    video = item_path(candidates_dir, item.task, item.id, "video")
    return (frame if frame.is_file() else None), (video if video.is_file() else None)


def rescore_item(item: PuzzleItem, candidates_dir: Path, output_dir: Path, options: ScoringOptions) -> dict:
    """Score a candidate: the decoded frames of its mp4 when there is one (every verdict), else its PNG as the
    last frame (last-frame verdicts only)."""
    from .video import read_frames

    frame_file, video_file = candidate_files(candidates_dir, item)
    if video_file:
        atomic_write(item_path(output_dir, item.task, item.id, "video"), video_file.read_bytes())
        return score_and_record(item, read_frames(video_file), output_dir, True, None, "score", options)
    return score_and_record(item, [read_image(frame_file)], output_dir, False, None, "score", options)


# ---------------------------------------------------------------- workers


@dataclass(frozen=True)
class WorkerSpec:
    name: str  # "gpu0", "cpu1", ...
    gpu: int | None
    cpu_threads: int


def _exit_with_parent() -> None:
    """A worker must not outlive a killed parent (it would race a rerun on the same items)."""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is not None:
        def watch():
            wait([parent.sentinel])
            os._exit(1)
        threading.Thread(target=watch, daemon=True).start()


def _describe(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{error.__class__.__name__}: {error}{where}".replace("\n", " ")


def worker_main(conn, spec: WorkerSpec, job: GenerationJob) -> None:
    """Load the pipeline once, then generate+score each item the parent sends until it sends None."""
    _exit_with_parent()
    torch.set_num_threads(spec.cpu_threads)
    if spec.gpu is None:
        device = "cpu"
    else:
        torch.cuda.set_device(spec.gpu)
        device = f"cuda:{spec.gpu}"
    try:
        pipe, fused = load_generator(job.model_base_path, job.lora_path, device,
                                     compile_blocks=job.compile_blocks and device.startswith("cuda"), fp8=job.fp8)
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which names it
        conn.send(("load_failed", None, _describe(error)))
        return
    conn.send(("ready", None, fused))
    while (item := conn.recv()) is not None:
        try:
            conn.send(("done", item.key, generate_item(pipe, item, job, spec.name)))
        except WriteFailed as error:  # a full disk: every further item would fail too
            conn.send(("write_failed", item.key, str(error)))
        except Exception as error:  # noqa: BLE001 - one bad item must not stop the others
            conn.send(("failed", item.key, _describe(error)))


def worker_specs(gpus: str | None, workers: int) -> list[WorkerSpec]:
    """One worker per listed GPU (default all visible); without GPUs, `workers` CPU workers. Workers share the
    cores (OMP_NUM_THREADS threads each when set): GPU workers also decode, convert and encode video on the CPU,
    and all of them using every core slows each other down."""
    visible = torch.cuda.device_count()
    if gpus is not None:
        try:
            indices = [int(part) for part in gpus.split(",") if part.strip()]
        except ValueError:
            raise InputError(f"--gpus {gpus!r} is invalid: give GPU indices like 0,1,2") from None
        bad = [i for i in indices if not 0 <= i < visible]
        if not indices or bad or len(set(indices)) != len(indices):
            raise InputError(f"--gpus {gpus!r} is invalid: {visible} GPU(s) are visible, give distinct indices "
                             f"in 0..{visible - 1}" if visible else f"--gpus {gpus!r} but no GPU is visible")
    elif visible:
        indices = list(range(visible))
    elif workers < 1:
        raise InputError(f"--workers {workers} is invalid: it must be at least 1")
    count = len(indices) if visible else workers
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // count)
    if visible:
        return [WorkerSpec(f"gpu{i}", i, threads) for i in indices]
    return [WorkerSpec(f"cpu{i}", None, threads) for i in range(workers)]


def run_workers(items: list[PuzzleItem], specs: list[WorkerSpec], job: GenerationJob, on_result,
                log=print) -> dict[str, str]:
    """Hand items out one at a time to whichever worker is free; returns {item key: why it is unfinished}."""
    from multiprocessing.connection import wait

    context = torch.multiprocessing.get_context("spawn")
    pending = deque(items)
    processes, conns, busy, problems = {}, {}, {}, {}
    for spec in specs:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(child_end, spec, job), daemon=True)
        process.start()
        child_end.close()
        processes[spec.name], conns[spec.name], busy[spec.name] = process, parent_end, None

    def hand_out(name):
        item = pending.popleft() if pending else None
        try:
            conns[name].send(item)
            busy[name] = item
        except OSError:  # the worker is gone; its sentinel reports that
            if item is not None:
                pending.appendleft(item)

    load_errors = []
    alive = set(processes)
    try:
        while alive:
            wait([conns[n] for n in alive] + [processes[n].sentinel for n in alive])
            for name in sorted(alive):
                try:
                    while conns[name].poll():
                        kind, key, payload = conns[name].recv()
                        if kind == "ready":
                            log(f"{name}: pipeline loaded" + (f", fused {payload} LoRA layers" if payload else ""))
                        elif kind == "load_failed":
                            load_errors.append(f"{name}: {payload}")
                            log(f"{name}: failed to load the pipeline: {payload}")
                            continue
                        elif kind == "done":
                            on_result(payload)
                        elif kind == "write_failed":
                            raise WriteFailed(payload)  # the finally below stops the workers
                        else:
                            problems[key] = f"{name}: {payload}"
                            log(f"{name}: {key} failed: {payload}")
                        hand_out(name)
                except (EOFError, OSError):
                    pass
                if not processes[name].is_alive():
                    processes[name].join()
                    if busy[name] is not None:
                        key = busy[name].key
                        problems[key] = f"{name} died (exit code {processes[name].exitcode}) while generating it"
                        log(f"{name}: died (exit code {processes[name].exitcode}) while on {key}")
                        busy[name] = None
                    alive.discard(name)
    finally:
        for process in processes.values():
            if process.is_alive():
                process.kill()
    why = "; ".join(load_errors) or "all workers exited"
    problems.update({item.key: f"not started ({why})" for item in pending})
    return problems


# ---------------------------------------------------------------- results, summary, report


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


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _group_stats(results: list[dict]) -> dict:
    """Items, the scored ones' pass figures, why the others were not scored, and the means that apply."""
    scored = [r for r in results if r.get("pass") is not None]
    passed = sum(1 for r in scored if r["pass"])
    stats = {"items": len(results), "scored": len(scored), "passed": passed,
             "pass_rate": round(passed / len(scored), 4) if scored else None,
             "failure_reasons": dict(sorted(Counter(r["failure_reason"] for r in scored if not r["pass"]).items())),
             "not_scored": dict(sorted(Counter(r["not_scored"] for r in results if r.get("not_scored")).items()))}
    red = _mean(r.get("red_pixels") for r in results)
    if red is not None:  # mazes and eyeballing
        stats["mean_red_pixels"] = red
    rules = {r.get("rule") for r in results}
    if rules == {"maze"}:
        stats["mean_corridor_precision"] = _mean(r.get("corridor_precision") for r in results)
    if rules == {"major_frame"}:
        last = [r["last_frame_pass"] for r in results if r.get("last_frame_pass") is not None]
        stats["last_frame_pass_rate"] = round(sum(last) / len(last), 4) if last else None
    if rules == {"best_frame"}:
        stats["mean_distance"] = _mean(r.get("distance") for r in results)
        stats["metric"] = next((r["metric"] for r in results if r.get("metric")), None)
    return stats


def summarize(results: list[dict], settings: dict, items_per_hour: float | None, items_this_run: int,
              unfinished: dict[str, str]) -> dict:
    by_task = {}
    for result in results:
        by_task.setdefault(result["task"], []).append(result)
    tasks = {}
    for task, rows in sorted(by_task.items()):
        tasks[task] = {"column": rows[0].get("column"), "rule": rows[0].get("rule"), **_group_stats(rows)}
    return {
        "leaderboard": column_scores(results),
        "overall": _group_stats(results),
        "tasks": tasks,
        "items_this_run": items_this_run,
        "items_per_hour": None if items_per_hour is None else round(items_per_hour, 2),
        "unfinished": dict(sorted(unfinished.items())),
        "settings": settings,
    }


def _percent(rate) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def format_table(summary: dict) -> str:
    """The leaderboard columns (ours beside the published zero-shot row), then one row per task."""
    board = summary["leaderboard"]
    lines = [f"{'leaderboard column':<26} {'items':>6} {'passed':>6} {'pass':>7} {'last frame':>10} "
             f"{'published':>9}  (Major Frame is the eyeballing verdict)"]
    for column, entry in board["columns"].items():
        last = entry.get("last_frame")
        note = f"  [{entry['pass_rule']}]" if entry.get("pass_rule") else ""
        note += f"  ({entry['not_scored']} not scored)" if entry["not_scored"] else ""
        lines.append(f"{column:<26} {entry['items']:>6} {entry['passed']:>6} {_percent(entry['pass_rate']):>7} "
                     f"{_percent(last['pass_rate']) if last else '':>10} {entry['published_percent']:>8.2f}%{note}")
    published = board["published"]
    if board["average"] is not None:
        lines.append(f"{'Average':<26} {'':>6} {'':>6} {_percent(board['average']):>7} {'':>10} "
                     f"{published['average_same_columns_percent']:>8.2f}%  (over the {len(board['average_over'])} "
                     f"columns present; published over all 10: {published['row_percent']['Average']:.2f}%)")
    lines.append(f"published: {published['source']}")
    lines.append("")
    lines.append(f"{'task':<28} {'items':>6} {'scored':>6} {'passed':>6} {'pass':>7} {'mean red':>9} {'corridor':>9} "
                 f"{'distance':>12}")

    def row(name, stats):
        red, corridor, distance = (stats.get(k) for k in ("mean_red_pixels", "mean_corridor_precision",
                                                          "mean_distance"))
        return (f"{name:<28} {stats['items']:>6} {stats['scored']:>6} {stats['passed']:>6} "
                f"{_percent(stats['pass_rate']):>7} {'-' if red is None else f'{red:.0f}':>9} "
                f"{'-' if corridor is None else f'{corridor:.3f}':>9} "
                f"{'-' if distance is None else f'{distance:.6g}':>12}")

    lines += [row(task, stats) for task, stats in summary["tasks"].items()]
    lines.append(row("overall (pooled)", summary["overall"]))
    for task, stats in summary["tasks"].items():
        for reason, count in stats["not_scored"].items():
            lines.append(f"not scored: {task} ({count}): {reason}")
    if summary["items_per_hour"] is not None:
        lines.append(f"{summary['items_this_run']} items this run, {summary['items_per_hour']:.1f} items/hour")
    return "\n".join(lines)


def write_attempt_dirs(output_dir: Path, results: list[dict]) -> Path:
    """<output_dir>/attempts/<task>/<id>/ for every finished item: video_1.mp4 (when there is a video), result.png
    and an empty content.txt (the official eyeballing evaluator fails without it). Items already there are kept."""
    attempts = output_dir / "attempts"
    for result in results:
        folder = attempts / result["task"] / result["id"]
        if (folder / "content.txt").is_file():  # written last
            continue
        if result.get("video"):
            atomic_write(folder / "video_1.mp4", (output_dir / result["video"]).read_bytes())
        atomic_write(folder / "result.png", (output_dir / result["last_frame"]).read_bytes())
        atomic_write(folder / "content.txt", "")
    return attempts


def write_outputs(output_dir: Path, results: list[dict], summary: dict) -> None:
    """results.jsonl, summary.json, the table on stdout, and report.html when wan_sft/report.py exists."""
    atomic_write(output_dir / RESULTS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    atomic_write(output_dir / SUMMARY_FILE, json.dumps(summary, indent=1, ensure_ascii=False))
    print(format_table(summary), flush=True)
    try:
        from .report import write_report
    except ModuleNotFoundError as error:
        if error.name != "wan_sft.report":
            raise
        print("note: wan_sft/report.py is not there yet; report.html skipped", flush=True)
        return
    print(f"report: {write_report(output_dir)}", flush=True)


def check_settings(output_dir: Path, settings: dict, redo_hint: str = "") -> None:
    """A folder holds one run's settings; resuming (or merging) with others would mix incomparable results."""
    path = output_dir / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != settings:
            changed = sorted(k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k))
            raise InputError(f"{output_dir} holds a run with other settings ({', '.join(changed)} differ); "
                             f"use a new --output_dir or the same settings{redo_hint}")


def file_sha256(path: str | os.PathLike) -> str:
    """Content identity of a LoRA: the same path after more training is another LoRA."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def forget_finished_items(output_dir: Path) -> int:
    """--redo: remove every item's completion marker (its JSON), so every item is generated again."""
    results = read_item_results(output_dir)
    for result in results:
        item_path(output_dir, result["task"], result["id"], "result").unlink()
    return len(results)


# ---------------------------------------------------------------- the command line


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parallel_eval.py", formatter_class=HelpFormatter,
        description="Generate, score and summarize VLMPuzzle items (one worker per GPU).\n"
                    "`parallel_eval.py merge --output_dir D SHARD_DIR...` combines shard outputs.",
        epilog=environment_help() + "\n\nresume: re-run the same command. Only the items without a result in "
                                  "--output_dir are done;\na folder holding a run with other settings is refused.")
    parser.add_argument("--dataset_root", "--input_dir", dest="dataset_root",
                        help="puzzle dataset (VLMPuzzle or VideoThinkBench layout, a task folder, or a folder of them)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo's held-out puzzles with the LoRA of `train_single_node.sh --demo`")
    parser.add_argument("--output_dir", default="./output/eval", help="per-item outputs, results, summary, report")
    parser.add_argument("--tasks", default=None, help="comma list of task names (task folder names; default: all)")
    parser.add_argument("--limit", type=int, default=None, help="first N puzzles (by id) per task")
    parser.add_argument("--ids_file", default=None, help="lines task/id to evaluate, e.g. <stem>_val_ids.txt")
    parser.add_argument("--prompt_key", default=None,
                        help="record key of the prompt (default: ti2v_prompt, else prompt)")
    parser.add_argument("--candidates_dir", default=None,
                        help="score existing <task>/<id>.mp4 (every verdict) or <task>/<id>.png (last-frame verdicts "
                             "only) instead of generating; loads no model")
    parser.add_argument("--attempt_dirs", action="store_true",
                        help="also write <output_dir>/attempts/<task>/<id>/{video_1.mp4,result.png,content.txt} for "
                             "the official VLMPuzzle evaluators")
    parser.add_argument("--visual_threshold", default=None,
                        help="a pass rule for visual puzzles, NOT the leaderboard's (it publishes none): N (both "
                             "metrics) or rgb=N,binary=M; pass = best-frame distance <= N")
    parser.add_argument("--gpus", default=None, help="GPU indices, one worker each (default: all visible)")
    parser.add_argument("--workers", type=int, default=1, help="CPU worker processes when no GPU is visible")
    parser.add_argument("--no_compile", action="store_true",
                        help="do not torch.compile the DiT blocks on GPU (compiling costs ~1 min per worker once)")
    parser.add_argument("--num_shards", type=int, default=1, help="split the items across this many nodes")
    parser.add_argument("--shard_index", type=int, default=0, help="which split this node runs (0-based)")
    parser.add_argument("--redo", action="store_true",
                        help="generate every item again, also finished ones (e.g. the LoRA file changed)")
    add_generation_args(parser)
    args = parser.parse_args(argv)
    if args.demo:
        from .demo import demo_eval_args

        demo_eval_args(args, parser, argv)
    elif not args.dataset_root:
        parser.error("--dataset_root is required (or --demo)")
    return args


def parse_visual_threshold(text: str | None) -> dict | None:
    """'N' -> both metrics; 'rgb=N,binary=M' -> per metric (either may be left out)."""
    if text is None:
        return None
    problem = (f"--visual_threshold {text!r} is invalid: give a distance N (both metrics) or rgb=N,binary=M "
               f"(rgb: sum of per-pixel RGB distances, binary: mismatched pixels)")
    try:
        if "=" not in text:
            thresholds = dict.fromkeys(VISUAL_METRICS, float(text))
        else:
            pairs = [part.split("=", 1) for part in text.split(",")]
            thresholds = {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise InputError(problem) from None
    if not thresholds or set(thresholds) - set(VISUAL_METRICS) or min(thresholds.values()) < 0:
        raise InputError(problem)
    return thresholds


def scoring_options(args) -> ScoringOptions:
    return ScoringOptions(getattr(args, "fit", DEFAULT_FIT), parse_visual_threshold(args.visual_threshold))


def run_settings(args) -> dict:
    options = scoring_options(args)
    scoring = {"fit": options.fit, "visual_thresholds": options.visual_thresholds}
    if args.candidates_dir:
        return {"mode": "candidates", "candidates_dir": str(Path(args.candidates_dir).resolve()), **scoring}
    return {"mode": "generate", "lora": str(Path(args.lora_path).resolve()) if args.lora_path else None,
            "lora_sha256": file_sha256(args.lora_path) if args.lora_path else None,
            "model_base_path": str(Path(args.model_base_path).resolve()),
            "num_frames": args.num_frames, "height": args.height, "width": args.width,
            "num_inference_steps": args.num_inference_steps, "cfg_scale": args.cfg_scale, "seed": args.seed,
            "negative_prompt": args.negative_prompt, "fps": args.fps, "prompt_key": args.prompt_key, **scoring,
            "fp8": "approximate: DiT block linears in FP8 (--fp8)" if args.fp8 else False}


def evaluate(argv) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    # Everything is checked before a worker starts or a file is written.
    items = select_items(find_items(args.dataset_root, args.prompt_key), args.tasks, args.ids_file, args.limit,
                         args.num_shards, args.shard_index)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output_dir {output_dir} exists and is not a folder")
    options = scoring_options(args)
    for item in items:
        if needs_solution_image(item.task) and not solution_image_path(item).is_file():
            raise InputError(f"{item.key}: solution image {solution_image_path(item)} not found; the "
                             f"{rule_of(item.task)} rule compares the generated frames with it")
    if args.candidates_dir:
        candidates_dir = Path(args.candidates_dir).resolve()
        if not candidates_dir.is_dir():
            raise InputError(f"--candidates_dir {args.candidates_dir}: not a folder")
        if candidates_dir == output_dir:
            raise InputError("--candidates_dir and --output_dir are the same folder; write the re-scored run to a new "
                             "--output_dir")
        missing = [item.key for item in items if candidate_files(candidates_dir, item) == (None, None)]
        if missing:
            raise InputError(f"--candidates_dir {args.candidates_dir}: {len(missing)} of {len(items)} puzzles have "
                             f"neither <task>/<id>.png nor .mp4, first: {missing[0]}")
    else:
        check_generation_args(args)
        specs = worker_specs(args.gpus, args.workers)
    settings = run_settings(args)
    if args.redo:
        print(f"--redo: {forget_finished_items(output_dir)} finished items in {output_dir} will be done again",
              flush=True)
    else:
        check_settings(output_dir, settings, " (or --redo to do every item again)")

    atomic_write(output_dir / SETTINGS_FILE, json.dumps(settings, indent=1, ensure_ascii=False))
    todo = [item for item in items if not is_finished(output_dir, item)]
    done_before = len(items) - len(todo)
    earlier = read_item_results(output_dir, items)
    passed, scored = sum(1 for r in earlier if r["pass"]), sum(1 for r in earlier if r["pass"] is not None)
    print(f"{len(items)} puzzles selected, {done_before} already finished in {output_dir}, {len(todo)} to do",
          flush=True)

    from tqdm import tqdm

    bar = tqdm(total=len(items), initial=done_before, desc="eval", file=sys.stderr, dynamic_ncols=True)

    def on_result(result):
        nonlocal passed, scored
        passed += bool(result["pass"])
        scored += result["pass"] is not None
        bar.update(1)
        bar.set_postfix_str(f"pass {passed}/{scored} scored" + (f" ({100 * passed / scored:.0f}%)" if scored else ""))

    start = time.time()
    with bar:  # closed (its line ended) also when a full disk stops the run
        if args.candidates_dir:
            for item in todo:
                on_result(rescore_item(item, candidates_dir, output_dir, options))
            problems = {}
        elif todo:
            job = GenerationJob(args.model_base_path, args.lora_path, settings_from_args(args), args.fps,
                                str(output_dir), compile_blocks=not args.no_compile, scoring=options,
                                fp8=args.fp8)
            problems = run_workers(todo, specs, job, on_result, log=bar.write)
        else:
            problems = {}
    wall = time.time() - start
    finished_now = sum(1 for item in todo if is_finished(output_dir, item))
    results = read_item_results(output_dir, items)
    unfinished = {item.key: problems.get(item.key, "no result written") for item in items
                  if not is_finished(output_dir, item)}
    summary = summarize(results, settings, finished_now * 3600 / wall if finished_now and wall > 0 else None,
                        finished_now, unfinished)
    summary["selection"] = {"dataset_root": str(Path(args.dataset_root).resolve()), "tasks": args.tasks,
                            "limit": args.limit, "ids_file": args.ids_file, "num_shards": args.num_shards,
                            "shard_index": args.shard_index, "items": len(items)}
    write_outputs(output_dir, results, summary)
    if args.attempt_dirs:
        print(f"attempt folders for the official evaluators: {write_attempt_dirs(output_dir, results)}", flush=True)
    return _report_unfinished(unfinished)


def _report_unfinished(unfinished: dict[str, str]) -> int:
    if not unfinished:
        return 0
    print(f"error: {len(unfinished)} puzzles unfinished (rerun the same command to do just these):", file=sys.stderr)
    for key, why in sorted(unfinished.items()):
        print(f"  {key}: {why}", file=sys.stderr)
    return 1


def merge(argv) -> int:
    """Copy every finished item of the shard folders into --output_dir (JSON last), then rebuild the outputs."""
    parser = argparse.ArgumentParser(prog="parallel_eval.py merge", formatter_class=HelpFormatter,
                                     description="Combine the output folders of shard runs into one.")
    parser.add_argument("--output_dir", required=True, help="the combined run")
    parser.add_argument("shard_dirs", nargs="+", help="the --output_dir of each shard run")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    shards = [Path(shard).resolve() for shard in args.shard_dirs]
    settings, summaries = None, []
    for shard in shards:
        if not (shard / SETTINGS_FILE).is_file() or not (shard / SUMMARY_FILE).is_file():
            raise InputError(f"{shard}: no {SETTINGS_FILE} + {SUMMARY_FILE}; is it a finished parallel_eval.py "
                             f"output folder?")
        shard_settings = json.loads((shard / SETTINGS_FILE).read_text(encoding="utf-8"))
        if settings is not None and shard_settings != settings:
            raise InputError(f"{shard}: was run with other settings than {shards[0]}; only shards of one run merge")
        settings = shard_settings
        summaries.append(json.loads((shard / SUMMARY_FILE).read_text(encoding="utf-8")))
    check_settings(output_dir, settings)
    atomic_write(output_dir / SETTINGS_FILE, json.dumps(settings, indent=1, ensure_ascii=False))
    for shard in shards:
        if shard == output_dir:
            continue
        for result in read_item_results(shard):
            if item_path(output_dir, result["task"], result["id"], "result").is_file():
                continue
            for kind in ("video", "frame", "input", "overlay", "result"):  # result last: it marks the item finished
                source = item_path(shard, result["task"], result["id"], kind)
                if source.is_file():
                    atomic_write(item_path(output_dir, result["task"], result["id"], kind), source.read_bytes())
    results = read_item_results(output_dir)
    done = {f"{r['task']}/{r['id']}" for r in results}
    unfinished = {key: why for summary in summaries for key, why in summary.get("unfinished", {}).items()
                  if key not in done}
    rates = [summary.get("items_per_hour") for summary in summaries]
    summary = summarize(results, settings, sum(r for r in rates if r) or None,  # shards ran side by side
                        sum(s.get("items_this_run", 0) for s in summaries), unfinished)
    summary["merged_from"] = [str(shard) for shard in shards]
    write_outputs(output_dir, results, summary)
    return _report_unfinished(unfinished)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["merge"]:
            return merge(argv[1:])
        if "--merge" in argv:
            return merge([arg for arg in argv if arg != "--merge"])
        return evaluate(argv)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except WriteFailed as error:  # the item's partial files are removed; finished items are complete
        print(f"error: {error}. Finished items are kept: free space and rerun the same command to do the rest",
              file=sys.stderr)
        return 1
