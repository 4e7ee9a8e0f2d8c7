"""Video files: decode, probe and (atomically) encode, with PyAV."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .config import InputError


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    width: int
    height: int
    fps: float


def _open(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable video ({error.__class__.__name__})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream")
    return container


def read_frames(path: str | os.PathLike, limit: int | None = None) -> list[Image.Image]:
    """Decode the first `limit` frames (all if None) as RGB images."""
    frames = []
    with _open(path) as container:
        try:
            for frame in container.decode(video=0):
                frames.append(frame.to_image())
                if limit is not None and len(frames) >= limit:
                    break
        except av.FFmpegError as error:
            raise InputError(f"{path}: video is corrupt after {len(frames)} frames ({error})") from None
    if not frames:
        raise InputError(f"{path}: no decodable frames")
    return frames


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Decode the whole file once (container headers can lie) and report what it really holds."""
    count = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        width = height = 0
        try:
            for frame in container.decode(video=0):
                width, height = frame.width, frame.height
                count += 1
        except av.FFmpegError as error:
            raise InputError(f"{path}: video is corrupt after {count} frames ({error})") from None
    if count == 0:
        raise InputError(f"{path}: no decodable frames")
    return VideoInfo(count, width, height, fps)


def header_frame_count(path: str | os.PathLike) -> int | None:
    """The frame count the container states (no decoding: cheap, for summaries); None when it states none or the
    file cannot be opened."""
    try:
        with _open(path) as container:
            return container.streams.video[0].frames or None
    except InputError:
        return None


def write_video(path: str | os.PathLike, frames, fps: int = 16, crf: int = 10) -> None:
    """Encode frames (PIL images or HxWx3 uint8 arrays) as H.264 mp4; the file appears only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = None
            for frame in frames:
                array = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame, dtype=np.uint8)
                if stream is None:
                    stream = container.add_stream("libx264", rate=fps)
                    stream.width, stream.height = array.shape[1], array.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf)}
                for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                    container.mux(packet)
            if stream is None:
                raise ValueError("write_video needs at least one frame")
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
