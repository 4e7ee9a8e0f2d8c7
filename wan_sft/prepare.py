"""prepare_csv.py: turn a dataset root, JSONL, folder of videos or old CSV into a checked, fully quoted training CSV.

Every clip is decoded here once, so that training never meets a file it cannot use; `--trim` re-encodes clips to
exactly num_frames at W x H, so DiffSynth never cuts them silently.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .cli import run_entry
from .clip_record import ClipRecord, record_path
from .config import HelpFormatter, InputError, add_video_shape_args, check_video_shape
from .data import Sample, check_samples, read_csv_cells, read_utf8, resolve_video, write_training_csv
from .datasets import read_puzzles
from .fsutil import atomic_write
from .geometry import DEFAULT_FIT, FITS, fit_image
from .video import header_frame_count, read_frames, write_video

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm"}
TRIM_FPS = 16  # Wan2.2's native frame rate
MAX_WARNINGS_SHOWN = 10


@dataclass(frozen=True)
class Entry:
    """One candidate row, with where it came from so messages can point the user at it."""
    video: str  # absolute path ("" when the input named none)
    prompt: str
    source: str  # e.g. "row 3", "line 5", "maze_square/data.json record 2", "clip.mp4"
    puzzle: str = ""  # "task/id" for dataset-root input: the unit of the validation split
    image: str = ""  # the puzzle image, for dataset-root input


def entries_from_dataset_root(root: Path, prompt_key: str | None = None) -> list[Entry]:
    """Every puzzle of a dataset root (wan_sft/datasets.py): its solution video and prompt."""
    return [Entry(str(item.solution_video), item.prompt,
                  f"{item.task}/data.json record {item.where.rsplit(' ', 1)[-1]}", item.key, str(item.puzzle_path))
            for item in read_puzzles(root, prompt_key)]


def entries_from_jsonl(path: Path) -> list[Entry]:
    """One JSON object per line with `video` (or `video_path`) and `prompt`; paths relative to the file."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    entries = []
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{path} line {number}: not valid JSON ({error.msg}); write one JSON object per line") from None
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, found a {type(record).__name__}")
        video = record.get("video") or record.get("video_path")
        if not video:
            raise InputError(f"{path} line {number}: has no 'video' or 'video_path'; add the clip's path")
        prompt = record.get("prompt")
        entries.append(Entry(resolve_video(str(video), path.parent), "" if prompt is None else str(prompt),
                             f"line {number}"))
    if not entries:
        raise InputError(f"{path}: no records; write one JSON object per line with 'video' and 'prompt'")
    return entries


def entries_from_video_dir(folder: Path) -> list[Entry]:
    """Every video in the folder; its prompt is the same-name .txt caption (empty when missing)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    videos = sorted(path for path in folder.iterdir() if path.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise InputError(f"{folder}: no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in this folder")
    entries = []
    for video in videos:
        caption = video.with_suffix(".txt")
        prompt = read_utf8(caption).strip() if caption.is_file() else ""
        entries.append(Entry(os.path.abspath(video), prompt, video.name))
    return entries


def entries_from_csv(path: Path) -> list[Entry]:
    """An existing CSV; prompts with unquoted commas are re-joined (that is what re-quoting fixes)."""
    return [Entry(resolve_video(video, path.parent) if video.strip() else "", prompt, f"row {row}")
            for row, video, prompt in read_csv_cells(path, repair_commas=True)]


def split_validation(entries: list[Entry], count: int | None, fraction: float | None,
                     seed: int) -> tuple[list[Entry], list[str]]:
    """Hold out a seeded random set of whole puzzles; returns (training entries, sorted held-out puzzle ids)."""
    puzzles = sorted({entry.puzzle for entry in entries})
    if count is None:
        count = round(fraction * len(puzzles))
    if not 0 < count < len(puzzles):
        raise InputError(f"the validation split would hold out {count} of {len(puzzles)} puzzles; "
                         f"choose --val_count between 1 and {len(puzzles) - 1} (or a --val_fraction giving that)")
    held_out = set(random.Random(seed).sample(puzzles, count))
    return [entry for entry in entries if entry.puzzle not in held_out], sorted(held_out)


def trim_clip(job: tuple[str, str, int, int, int, str]) -> None:
    """Resample a whole clip to exactly num_frames (first and last source frames kept, so the final frames show
    the solution; short clips hold frames), mapped to W x H like load_clip."""
    source, target, num_frames, height, width, fit = job
    frames = read_frames(source)
    last = len(frames) - 1
    picked = [frames[round(i * last / (num_frames - 1))] for i in range(num_frames)]
    write_video(target, [fit_image(frame, width, height, fit) for frame in picked], fps=TRIM_FPS)


def trim_clips(videos: list[str], folder: Path, num_frames: int, height: int, width: int, fit: str,
               workers: int | None) -> dict[str, str]:
    """Trim each distinct video into folder, in parallel; returns source path -> trimmed path."""
    targets = {video: str(folder / f"{number:06d}_{Path(video).stem}.mp4")
               for number, video in enumerate(dict.fromkeys(videos), 1)}
    jobs = [(source, target, num_frames, height, width, fit) for source, target in targets.items()]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(trim_clip, jobs), total=len(jobs), desc="trimming clips", unit="clip"):
            pass
    return targets


PREPARE_EPILOG = """environment: none needed (no model is loaded).

Nothing to resume: a re-run checks every row again and rewrites --output (atomically)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prepare_csv.py", formatter_class=HelpFormatter, epilog=PREPARE_EPILOG,
        description="Write a checked, fully quoted video,prompt training CSV.\n"
                    "'prepare_csv.py generate --help' generates synthetic puzzle datasets instead.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_root", type=Path,
                        help="puzzle dataset (VLMPuzzle or VideoThinkBench layout, a task folder, or a folder of them)")
    parser.add_argument("--prompt_key", default=None,
                        help="record key of the prompt with --dataset_root (default: ti2v_prompt, else prompt)")
    source.add_argument("--jsonl", type=Path, help="one JSON object per line with video (or video_path) and prompt")
    source.add_argument("--video_dir", type=Path, help="folder of videos with same-name .txt captions")
    source.add_argument("--csv", type=Path, help="an existing CSV to re-check and re-quote")
    parser.add_argument("--output", type=Path, required=True, help="the CSV to write")
    add_video_shape_args(parser)
    parser.add_argument("--fit", choices=FITS, default=DEFAULT_FIT,
                        help="how clips map to WxH (checks and --trim); use training's --fit (default stretch)")
    parser.add_argument("--prompt", help="prompt for every clip that has none (no caption, empty prompt)")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--allow_drop", action="store_true", help="exit 0 even if bad rows were dropped")
    policy.add_argument("--strict", action="store_true", help="write nothing if any row is bad")
    parser.add_argument("--trim", action="store_true",
                        help="re-encode every clip to exactly num_frames at WxH into <output stem>_clips/")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val_count", type=int, help="puzzles to hold out (needs --dataset_root)")
    split.add_argument("--val_fraction", type=float, help="share of puzzles to hold out (needs --dataset_root)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel decoders")
    args = parser.parse_args(argv)
    if (args.val_count is not None or args.val_fraction is not None) and args.dataset_root is None:
        parser.error("--val_count/--val_fraction need --dataset_root (the split is by puzzle id)")
    return args


def gather_entries(args: argparse.Namespace) -> list[Entry]:
    if args.dataset_root:
        return entries_from_dataset_root(args.dataset_root, args.prompt_key)
    if args.jsonl:
        return entries_from_jsonl(args.jsonl)
    if args.video_dir:
        return entries_from_video_dir(args.video_dir)
    return entries_from_csv(args.csv)


def print_summary(rows_in: int, held_out: int, rows_out: int, dropped: list[tuple[Entry, str, str]],
                  warnings: list[tuple[Entry, str, str]]) -> None:
    lines = [("rows in", rows_in)] + ([("held out for validation", held_out)] if held_out else [])
    lines += [("rows out", rows_out)]
    lines += [(f"dropped: {kind}", n) for kind, n in Counter(kind for _, kind, _ in dropped).most_common()]
    lines += [(f"warning: {kind}", n) for kind, n in Counter(kind for _, kind, _ in warnings).most_common()]
    width = max(len(label) for label, _ in lines)
    print("summary")
    for label, n in lines:
        print(f"  {label:<{width}}  {n:>7}")


def print_dataset_shapes(entries: list[Entry], height: int, width: int) -> None:
    """Per task, the puzzle canvas sizes and solution clip lengths found (headers only), and the size to train at
    when every puzzle is square."""
    canvases: dict[str, Counter] = {}
    lengths: dict[str, Counter] = {}
    for entry in entries:
        task = entry.puzzle.split("/")[0]
        try:
            with Image.open(entry.image) as image:
                canvas = f"{image.width}x{image.height}"
        except (OSError, ValueError):
            canvas = "unreadable"
        canvases.setdefault(task, Counter())[canvas] += 1
        frames = header_frame_count(entry.video) if entry.video else None
        lengths.setdefault(task, Counter())[f"{frames} frames" if frames else "length unknown"] += 1
    print("puzzles per task (canvas WxH; solution clip length)")
    width_task = max(len(task) for task in canvases)
    for task in sorted(canvases):
        found = ", ".join(f"{key} x{n}" for key, n in sorted(canvases[task].items()))
        clips = ", ".join(f"{key} x{n}" for key, n in sorted(lengths[task].items()))
        print(f"  {task:<{width_task}}  {found}; {clips}")
    sizes = [tuple(map(int, canvas.split("x"))) for counts in canvases.values() for canvas in counts
             if canvas != "unreadable"]
    if sizes and all(w == h for w, h in sizes) and width != height:
        print(f"note: every puzzle is square; --height 512 --width 512 keeps their shape (now {width}x{height} WxH, "
              f"pass the same size to training and evaluation)")


def find_problems(entries: list[Entry], args: argparse.Namespace, record: ClipRecord):
    """(dropped: entry index -> (entry, kind, reason), warnings as (entry, kind, reason), entries to keep)."""
    dropped: dict[int, tuple[Entry, str, str]] = {}
    first_seen: dict[tuple[str, str], Entry] = {}
    for index, entry in enumerate(entries):
        if not entry.video:
            dropped[index] = (entry, "empty video path", "video path is empty")
        elif not entry.prompt.strip():
            dropped[index] = (entry, "empty prompt", "prompt is empty; write one or pass --prompt TEXT")
        elif (entry.video, entry.prompt) in first_seen:
            dropped[index] = (entry, "duplicate", f"duplicate of {first_seen[entry.video, entry.prompt].source}")
        else:
            first_seen[entry.video, entry.prompt] = entry
    # Sample.row holds the entry's index here, so problems map back to entries.
    # With --trim any length works (None): the clip is resampled; only the geometry findings still matter.
    samples = [Sample(entry.video, entry.prompt, index) for index, entry in enumerate(entries) if index not in dropped]
    fatal, warnings = check_samples(samples, None if args.trim else args.num_frames, args.height, args.width,
                                    args.workers, fit=args.fit, record=record)
    for problem in fatal:
        dropped[problem.row] = (entries[problem.row], problem.kind, problem.reason)
    warned = [(entries[p.row], p.kind, p.reason) for p in warnings
              if not (args.trim and p.kind == "resolution differs")]
    kept = [entries[sample.row] for sample in samples if sample.row not in dropped]
    return dropped, warned, kept


def prepare(args: argparse.Namespace) -> int:
    check_video_shape(args.num_frames, args.height, args.width)
    entries = gather_entries(args)
    rows_in = len(entries)
    if args.dataset_root:
        print_dataset_shapes(entries, args.height, args.width)
    if args.prompt:
        entries = [entry if entry.prompt.strip() else replace(entry, prompt=args.prompt) for entry in entries]
    held_out = []
    if args.val_count is not None or args.val_fraction is not None:
        entries, held_out = split_validation(entries, args.val_count, args.val_fraction, args.seed)

    record = ClipRecord(record_path(args.output))  # what decoding found, for the launch's check (clip_record.py)
    dropped, warned, kept = find_problems(entries, args, record)
    for entry, _, reason in (dropped[index] for index in sorted(dropped)):
        print(f"dropped {entry.source} ({entry.video}): {reason}")
    for entry, _, reason in warned[:MAX_WARNINGS_SHOWN]:
        print(f"warning {entry.source} ({entry.video}): {reason}")
    if len(warned) > MAX_WARNINGS_SHOWN:
        print(f"warning ... and {len(warned) - MAX_WARNINGS_SHOWN} more")
    dropped_list = list(dropped.values())
    if (args.strict and dropped) or not kept:
        print_summary(rows_in, rows_in - len(entries), 0, dropped_list, warned)
        why = "--strict and some rows are bad" if kept else "no usable rows"
        print(f"error: {why}; nothing written", file=sys.stderr)
        return 1

    videos = {entry.video: entry.video for entry in kept}
    if args.trim:
        clips = Path(os.path.abspath(args.output)).parent / f"{args.output.stem}_clips"  # the CSV holds absolute paths
        videos = trim_clips(list(videos), clips, args.num_frames, args.height, args.width, args.fit, args.workers)
    write_training_csv(args.output, [(videos[entry.video], entry.prompt) for entry in kept])
    record.save()
    print(f"wrote {args.output} ({len(kept)} rows)")
    if held_out:
        val_file = args.output.parent / f"{args.output.stem}_val_ids.txt"
        atomic_write(val_file, "".join(f"{puzzle}\n" for puzzle in held_out))
        print(f"wrote {val_file} ({len(held_out)} held-out puzzles, kept out of the CSV)")
    print_summary(rows_in, rows_in - len(entries), len(kept), dropped_list, warned)
    if dropped and not args.allow_drop:
        print(f"error: {len(dropped)} rows dropped (listed above); fix them or pass --allow_drop", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["generate"]:
        from .puzzles import main_generate  # imported here so the CSV tools work without the generator
        return main_generate(argv[1:])
    return run_entry(prepare, parse_args(argv))
