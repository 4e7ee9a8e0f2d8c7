"""The one reader of puzzle datasets, in both layouts users have (../shared/VIDEOTHINKBENCH.md §1):

A. VLMPuzzle: `<root>/<task>/data.json`; prompt `prompt`; puzzle `puzzles/<id>_puzzle.png` (or the record's
   `image`); the solution video implied by the id, `solutions/<id>_solution.mp4`.
B. VideoThinkBench: `<root>/canonical_manifest.jsonl` + `<root>/tasks/<task>/data.json`; prompt `ti2v_prompt`;
   `image`, `solution_image_path`, `solution_video_path` relative to the task folder; `video_num_frames`.

A root is a task folder, a layout root, or a folder of several layout roots. The task is the task folder's name in
both layouts, so tables, `--tasks`, ids files and output paths agree whichever layout the data came in.
Records are untrusted: an id becomes a file name in output folders, so one that could leave them is refused.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .config import InputError
from .leaderboard import column_of

PROMPT_KEYS = ("ti2v_prompt", "prompt")  # the default: the first of these a record has
LOOKED_FOR = ("data.json (a task folder), <task>/data.json (VLMPuzzle layout), tasks/<task>/data.json "
              "(VideoThinkBench layout), or either layout one folder further down (a folder of several roots)")


@dataclass(frozen=True)
class PuzzleItem:
    """One puzzle of a dataset, with every path absolute."""
    task: str  # the task folder's name, e.g. "maze_square"
    group: str | None  # its leaderboard column, None when the leaderboard has no such task
    id: str
    puzzle_path: Path  # the puzzle image (the model's first frame)
    prompt: str  # "" when the record has none
    solution_video: Path
    solution_image: Path | None
    num_frames: int | None  # the solution video's length when the record states it
    record: dict
    task_dir: Path
    where: str  # "<data.json> record N", for messages

    @property
    def key(self) -> str:
        return f"{self.task}/{self.id}"


def task_folders(root: str | os.PathLike) -> list[Path]:
    """The task folders (each holding data.json) of a task folder, a layout root or a folder of roots."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; pass a puzzle dataset root (looked for {LOOKED_FOR})")
    if (root / "data.json").is_file():
        return [root]
    found = _layout_tasks(root)
    if not found:
        found = [task for child in sorted(root.iterdir()) if child.is_dir() for task in _layout_tasks(child)]
    if not found:
        raise InputError(f"{root}: no puzzle dataset found; looked for {LOOKED_FOR}")
    return found


def _layout_tasks(root: Path) -> list[Path]:
    """Task folders of a VLMPuzzle root (<task>/data.json) and of a VideoThinkBench root (tasks/<task>/data.json)."""
    return sorted(path.parent for pattern in ("*/data.json", "tasks/*/data.json") for path in root.glob(pattern))


def check_id(value, where: str) -> str:
    """The record's id as a string, refused when it could name a path outside its folder."""
    item_id = "" if value is None else str(value)
    bad = [part for part in ("/", "\\", "..", "\0") if part in item_id]
    if not item_id or bad or item_id.startswith("."):
        why = f"contains {bad[0]!r}" if bad else ("is empty" if not item_id else "starts with '.'")
        raise InputError(f"{where}: id {value!r} {why}, so it cannot be used as a file name; give the record a plain "
                         f"id (letters, digits, _ and -)")
    return item_id


def record_prompt(record: dict, prompt_key: str | None) -> str:
    """`prompt_key`'s value, or by default `ti2v_prompt` else `prompt`; "" when there is none."""
    for key in (prompt_key,) if prompt_key else PROMPT_KEYS:
        if record.get(key) not in (None, ""):
            return str(record[key])
    return ""


def _relative(task_dir: Path, value) -> Path | None:
    return task_dir / str(value) if value else None


def solution_video_of(record: dict, item_id: str, task_dir: Path) -> Path:
    """`solution_video_path`, else the .mp4 twin of `solution_image_path`, else `solutions/<id>_solution.mp4`."""
    if record.get("solution_video_path"):
        return task_dir / str(record["solution_video_path"])
    if record.get("solution_image_path"):
        return (task_dir / str(record["solution_image_path"])).with_suffix(".mp4")
    return task_dir / "solutions" / f"{item_id}_solution.mp4"


def read_task(task_dir: Path, prompt_key: str | None = None) -> list[PuzzleItem]:
    """The records of one task folder's data.json as items."""
    from .data import read_utf8  # data imports torch: reading puzzles (the launchers' --demo) does not need it

    data_file = task_dir / "data.json"
    try:
        records = json.loads(read_utf8(data_file))
    except json.JSONDecodeError as error:
        raise InputError(f"{data_file}: not valid JSON ({error})") from None
    if not isinstance(records, list):
        raise InputError(f"{data_file}: expected a JSON list of puzzle records, found a {type(records).__name__}")
    items = []
    for number, record in enumerate(records, 1):
        where = f"{data_file} record {number}"
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, found a {type(record).__name__}")
        if "id" not in record:
            raise InputError(f"{where}: has no 'id'; every puzzle record needs one")
        item_id = check_id(record["id"], where)
        frames = record.get("video_num_frames")
        items.append(PuzzleItem(
            task=task_dir.name, group=column_of(task_dir.name), id=item_id,
            puzzle_path=_relative(task_dir, record.get("image")) or task_dir / "puzzles" / f"{item_id}_puzzle.png",
            prompt=record_prompt(record, prompt_key),
            solution_video=solution_video_of(record, item_id, task_dir),
            solution_image=_relative(task_dir, record.get("solution_image_path")),
            num_frames=frames if isinstance(frames, int) and not isinstance(frames, bool) else None,
            record=record, task_dir=task_dir, where=where))
    return items


def read_puzzles(root: str | os.PathLike, prompt_key: str | None = None) -> list[PuzzleItem]:
    """Every puzzle below the root, sorted by (task, id); a task/id found twice is refused."""
    items = sorted((item for task_dir in task_folders(root) for item in read_task(task_dir, prompt_key)),
                   key=lambda item: (item.task, item.id))
    duplicates = [key for key, count in Counter(item.key for item in items).items() if count > 1]
    if duplicates:
        first = next(item for item in items if item.key == duplicates[0])
        raise InputError(f"puzzle {duplicates[0]} appears more than once ({first.where} and another record); "
                         f"ids must be unique within a task")
    return items


def require_prompts(items: list[PuzzleItem], prompt_key: str | None) -> None:
    """Generation needs a prompt per puzzle: the first record without one is named."""
    for item in items:
        if not item.prompt.strip():
            keys = f"'{prompt_key}'" if prompt_key else "'ti2v_prompt' or 'prompt'"
            raise InputError(f"{item.where} (id {item.id}): has no {keys}; add the prompt or choose another "
                             f"--prompt_key")
