"""Atomic file writes: a reader never sees a half-written file, an interrupted writer leaves nothing behind."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable read; done once at import, before worker threads exist
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class WriteFailed(Exception):
    """A file could not be written (a full disk, typically): the message names it and the free space there."""


def write_failed(path: str | os.PathLike, error: BaseException) -> WriteFailed:
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    reason = getattr(error, "strerror", None) or str(error)
    return WriteFailed(f"could not write {path}: {reason}; {free / 2**20:.1f} MiB free on that filesystem")


def honour_umask(path: str | os.PathLike) -> None:
    """The mode a plain open() would give (teammates on a shared cluster can read the file)."""
    os.chmod(path, 0o666 & ~_UMASK)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        honour_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, error) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (a log); a line cut by a full disk or a kill is dropped by its reader."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as error:
        raise write_failed(path, error) from error


def atomic_save_image(image, path: str | os.PathLike) -> None:
    """Save a PIL image in the format its suffix names, atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format=Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    atomic_write(path, buffer.getvalue())
