"""The training CSV (`video,prompt`): strict reading, whole-file video checks, clip loading.

DiffSynth fails late or silently on bad data (NaN prompts crash the tokenizer, short clips are cut without a
word, <=4 frames give NaN loss), so everything is checked up front with one-line, actionable messages.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from .clip_record import ClipRecord, record_path
from .config import InputError, check_video_shape
from .fsutil import atomic_write
from .geometry import DEFAULT_FIT, cut_fractions, fit_image
from .video import probe_video, read_frames

COLUMNS = ("video", "prompt")
MAX_CROP_FRACTION = 0.10  # a centre crop cutting more than this is likely to cut off part of the puzzle
PROGRESS_MIN_ITEMS = 20


@dataclass(frozen=True)
class Sample:
    video: str  # absolute path
    prompt: str
    row: int  # 1-based data-row number in the CSV, header excluded


@dataclass(frozen=True)
class Problem:
    row: int
    video: str
    reason: str
    kind: str = ""  # short category for summaries, e.g. "file not found", "too few frames"

    def __str__(self) -> str:
        return f"row {self.row} ({self.video}): {self.reason}"


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file (a BOM is dropped); InputError naming the first bad line otherwise."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[error.start]:02x}); save the file as UTF-8"
        ) from None


def read_csv_cells(path: str | os.PathLike, repair_commas: bool = False) -> list[tuple[int, str, str]]:
    """(row, video cell, prompt cell) per data row, after checking encoding, header and field counts.

    repair_commas: a row with extra fields is taken as a prompt with unquoted commas (the video cell is the
    one named by the header, the prompt is the rest re-joined); a row missing its prompt gets "".
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    header = None
    cells = []
    line = 0
    try:
        for fields in reader:
            first_line, line = line + 1, reader.line_num
            if not fields or fields == [""]:
                continue
            if header is None:
                header = [name.strip() for name in fields]
                _check_header(path, header)
                video_first = header[0] == "video"
                continue
            row = len(cells) + 1
            if len(fields) != 2 and not repair_commas:
                raise InputError(
                    f"{path} row {row} (line {first_line}): has {len(fields)} field(s), expected 2 (video,prompt); "
                    f'quote fields that contain commas, e.g. "a, b", or run prepare_csv.py --csv {path} '
                    f"--output fixed.csv to re-quote the file"
                )
            if video_first:
                video, prompt = fields[0], ",".join(fields[1:])
            else:
                video, prompt = fields[-1], ",".join(fields[:-1]) if len(fields) > 1 else ""
            cells.append((row, video, prompt))
    except csv.Error as error:
        raise InputError(f"{path} line {line + 1}: not valid CSV ({error}); run prepare_csv.py to rewrite it") from None
    if header is None:
        raise InputError(f"{path}: file is empty; expected a header line 'video,prompt' and one row per clip")
    if not cells:
        raise InputError(f"{path}: has a header but no data rows; add one 'video,prompt' row per clip")
    return cells


def _check_header(path: Path, header: list[str]) -> None:
    missing = [name for name in COLUMNS if name not in header]
    unexpected = [name for name in header if name not in COLUMNS]
    if missing or unexpected or len(header) != len(COLUMNS):
        details = [f"missing column(s) {', '.join(missing)}"] if missing else []
        details += [f"unexpected column(s) {', '.join(unexpected)}"] if unexpected else []
        details += [] if details else ["duplicate columns"]
        raise InputError(
            f"{path}: header is '{','.join(header)}' ({'; '.join(details)}); it must be exactly 'video,prompt'"
        )


def resolve_video(video: str, base_dir: str | os.PathLike) -> str:
    """Absolute path of a video cell; relative paths are relative to the file that names them."""
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(video.strip())))


def read_training_csv(path: str | os.PathLike) -> list[Sample]:
    """Read a `video,prompt` CSV strictly: prompts stay strings, every row must be usable."""
    path = Path(path)
    samples = []
    for row, video, prompt in read_csv_cells(path):
        if not video.strip():
            raise InputError(f"{path} row {row}: video path is empty; fill in the clip's path")
        video = resolve_video(video, path.parent)
        if not prompt.strip():
            raise InputError(
                f"{path} row {row} ({video}): prompt is empty; write the clip's prompt in the prompt column "
                f"(an empty prompt crashes the text encoder)"
            )
        samples.append(Sample(video, prompt, row))
    return samples


def _check_video(video: str, num_frames: int | None, height: int, width: int, fit: str = DEFAULT_FIT,
                 probe=probe_video) -> list[tuple[bool, str, str]]:
    """(fatal, kind, reason) for one file; num_frames None accepts any length (prepare_csv --trim resamples it);
    `probe` decodes it (ClipRecord.probe: only if it changed). The end of a solution clip is its answer, so a clip
    longer than num_frames is refused like a short one."""
    file = Path(video)
    if not file.is_file():
        return [(True, "file not found", "file not found")]
    if file.stat().st_size == 0:
        return [(True, "empty file", "file is empty (0 bytes)")]
    try:
        info = probe(file)
    except InputError as error:
        return [(True, "unreadable video", str(error).removeprefix(f"{file}: "))]
    if info.num_frames == 1:
        return [(True, "not a video", "is a still image (1 frame), not a video; point the row at the clip")]
    if num_frames is not None and info.num_frames < num_frames:
        used = (info.num_frames - 1) // 4 * 4 + 1
        return [(True, "too few frames",
                 f"has {info.num_frames} frames, fewer than --num_frames {num_frames}: DiffSynth would silently "
                 f"train on a {used}-frame clip (and <= 4 frames gives NaN loss); run prepare_csv.py --trim "
                 f"to resample it to {num_frames} frames")]
    if num_frames is not None and info.num_frames > num_frames:
        return [(True, "too many frames",
                 f"has {info.num_frames} frames, more than --num_frames {num_frames}: training takes the first "
                 f"{num_frames}, so the solution would be cut at {num_frames / info.num_frames:.0%} of the clip; run "
                 f"prepare_csv.py --trim to resample the whole clip to {num_frames} frames (first and last kept)")]
    if (info.width, info.height) == (width, height):
        return []
    size = f"is {info.width}x{info.height}, not {width}x{height} (WxH)"
    cut_w, cut_h = cut_fractions((info.width, info.height), (width, height), fit)
    if max(cut_w, cut_h) > MAX_CROP_FRACTION:  # only --fit crop cuts
        side, cut = ("width", cut_w) if cut_w >= cut_h else ("height", cut_h)
        return [(True, "crop cuts the puzzle",
                 f"{size}: --fit crop would cut {cut:.0%} of its {side}, likely cutting the puzzle; use --fit stretch "
                 f"(the benchmark's mapping) or --height/--width of a {info.width}:{info.height} aspect ratio")]
    return [(False, "resolution differs", f"{size}: training resizes it (--fit {fit})")]


def check_samples(samples: list[Sample], num_frames: int | None, height: int, width: int, workers: int | None = None,
                  fit: str = DEFAULT_FIT, record=None) -> tuple[list[Problem], list[Problem]]:
    """Decode every video once, in parallel (with a ClipRecord: only new or changed ones); return (fatal problems,
    warnings) in row order."""
    probe = record.probe if record else probe_video
    videos = list(dict.fromkeys(sample.video for sample in samples))
    # Threads suffice: FFmpeg decodes outside the GIL, and no fork happens inside a training process.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        results = pool.map(lambda video: _check_video(video, num_frames, height, width, fit, probe), videos)
        findings = dict(zip(videos, tqdm(results, total=len(videos), desc="checking videos", unit="video",
                                         disable=len(videos) < PROGRESS_MIN_ITEMS), strict=True))
    fatal, warnings = [], []
    for sample in samples:
        for is_fatal, kind, reason in findings[sample.video]:
            (fatal if is_fatal else warnings).append(Problem(sample.row, sample.video, reason, kind))
    return fatal, warnings


def validate_training_csv(path: str | os.PathLike, num_frames: int, height: int, width: int,
                          max_warnings_shown: int = 10, recheck: bool = False,
                          fit: str = DEFAULT_FIT, save_record: bool = True) -> list[Sample]:
    """Everything training needs from the CSV, checked before any model is loaded (decoding only the clips that
    changed since the last check, unless recheck). The clip-check record is updated unless not `save_record` (a
    dry run writes nothing)."""
    check_video_shape(num_frames, height, width)
    samples = read_training_csv(path)
    record = ClipRecord(record_path(path), recheck)
    fatal, warnings = check_samples(samples, num_frames, height, width, fit=fit, record=record)
    videos = {sample.video for sample in samples}
    if save_record:
        record.save(keep=videos)
    print(f"clip check: {len(record.decoded)} of {len(videos)} clips decoded, {len(videos) - len(record.decoded)} "
          f"unchanged since the last check ({record.path}{'; --recheck' if recheck else ''})", flush=True)
    for warning in warnings[:max_warnings_shown]:
        print(f"warning: {path} {warning}", file=sys.stderr)
    if len(warnings) > max_warnings_shown:
        print(f"warning: ... and {len(warnings) - max_warnings_shown} more rows with warnings", file=sys.stderr)
    if fatal:
        rows = sorted({problem.row for problem in fatal})
        more = f" ... and {len(rows) - 1} more rows with problems;" if len(rows) > 1 else ";"
        raise InputError(f"{path} {fatal[0]}{more} run prepare_csv.py --csv {path} --output fixed.csv "
                         f"to list them and write only the good rows")
    return samples


def load_clip(path: str | os.PathLike, num_frames: int, height: int, width: int,
              fit: str = DEFAULT_FIT) -> list[Image.Image]:
    """The first num_frames frames mapped to W x H (wan_sft/geometry.py, as inference maps the puzzle), as training
    feeds them to the model."""
    frames = read_frames(path, limit=num_frames)
    if len(frames) < num_frames:
        raise InputError(f"{path}: has only {len(frames)} frames, fewer than --num_frames {num_frames}; "
                         f"run prepare_csv.py --trim to resample it")
    return [fit_image(frame, width, height, fit) for frame in frames]


class ClipDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[Sample], num_frames: int, height: int, width: int, fit: str = DEFAULT_FIT):
        self.samples = samples
        self.num_frames, self.height, self.width, self.fit = num_frames, height, width, fit

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        video = load_clip(sample.video, self.num_frames, self.height, self.width, self.fit)
        return {"video": video, "prompt": sample.prompt, "index": index}


def write_training_csv(path: str | os.PathLike, rows: list[tuple[str, str]]) -> None:
    """Every field quoted, so commas, quotes and newlines in prompts survive pandas and read_training_csv."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())
