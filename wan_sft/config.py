"""The model's hard rules and the project's defaults, stated once."""
from __future__ import annotations

DEFAULT_NUM_FRAMES = 81
DEFAULT_HEIGHT = 896
DEFAULT_WIDTH = 480
SPATIAL_MULTIPLE = 32  # VAE downsamples by 16, then the DiT patchifies by 2


class InputError(Exception):
    """Bad user input: the message is one line naming the value and what to do about it."""


def check_video_shape(num_frames: int, height: int, width: int) -> None:
    """Raise InputError unless num_frames = 4k+1 and height, width are positive multiples of 32."""
    if num_frames < 5 or (num_frames - 1) % 4 != 0:
        lower = max(5, (num_frames - 1) // 4 * 4 + 1)
        raise InputError(
            f"--num_frames {num_frames} is invalid: Wan2.2 needs 4k+1 frames with k >= 1 "
            f"(e.g. {lower} or {lower + 4})"
        )
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % SPATIAL_MULTIPLE != 0:
            lower = max(SPATIAL_MULTIPLE, value // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE)
            raise InputError(
                f"--{name} {value} is invalid: it must be a multiple of {SPATIAL_MULTIPLE} "
                f"(e.g. {lower} or {lower + SPATIAL_MULTIPLE})"
            )
