"""What decoding a clip found (frames, size, or why it is unreadable), recorded against the clip file's identity.

Decoding every clip costs ~70 ms per 81-frame 896x480 clip, so a launch over 10^5 clips would spend minutes before
training at every start. The record (`<csv>.clips.json`, written atomically by prepare_csv.py and by each launch)
maps a clip's absolute path to [size, mtime_ns, finding]; a later check decodes only clips whose size or mtime
changed (or that are new), so a changed file is still caught, and everything else costs one stat.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .config import InputError
from .fsutil import atomic_write
from .video import VideoInfo, probe_video


def record_path(csv_path: str | os.PathLike) -> Path:
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + ".clips.json")


class ClipRecord:
    def __init__(self, path: Path, recheck: bool = False):
        self.path = path
        self.entries: dict[str, list] = {} if recheck else _read(path)
        self.decoded: set[str] = set()  # clips decoded by this check

    def probe(self, video: str | os.PathLike) -> VideoInfo:
        """probe_video's answer (or its InputError), decoding only when the file is new or changed."""
        video = os.path.abspath(video)
        stat = os.stat(video)
        identity = [stat.st_size, stat.st_mtime_ns]
        known = self.entries.get(video)
        if known is None or known[:2] != identity:
            self.decoded.add(video)
            try:
                info = probe_video(video)
                finding = [info.num_frames, info.width, info.height, info.fps]
            except InputError as error:
                finding = str(error)
            known = self.entries[video] = [*identity, finding]
        if isinstance(known[2], str):
            raise InputError(known[2])
        return VideoInfo(*known[2])

    def save(self, keep: set[str] | None = None) -> None:
        """Write the record (only the clips in `keep`, if given); a failure only costs the next check its speed."""
        entries = {k: v for k, v in self.entries.items() if keep is None or k in keep}
        if not self.decoded and len(entries) == len(self.entries) and self.path.exists():
            return  # nothing learned, nothing dropped: the record on disk is this one
        try:
            atomic_write(self.path, json.dumps(entries, separators=(",", ":")))
        except OSError as error:
            print(f"warning: cannot write the clip-check record {self.path} ({error}); the next check decodes "
                  f"every clip again", file=sys.stderr)


def _read(path: Path) -> dict[str, list]:
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
        if isinstance(entries, dict) and all(isinstance(v, list) and len(v) == 3 for v in entries.values()):
            return entries
    except (OSError, ValueError):
        pass
    print(f"warning: clip-check record {path} is unreadable; checking every clip again", file=sys.stderr)
    return {}
