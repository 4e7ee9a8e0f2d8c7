"""One geometry: how a puzzle canvas (image or clip frame) maps onto the model's W x H.

Training, inference, validation and scoring all use it, so the model is trained on puzzles exactly as it is later
shown them and scored on. Every mode is one affine map per axis, frame = canvas * scale + offset:
- `stretch` (default, the benchmark's protocol): NEAREST resize to W x H, each axis scaled on its own;
- `crop`: scale to cover W x H, centre crop (cuts the puzzle when the aspect ratios differ);
- `pad`: scale to fit inside W x H, centred on black (letterbox); scorers undo the padding.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

FITS = ("stretch", "crop", "pad")
DEFAULT_FIT = "stretch"


@dataclass(frozen=True)
class Placement:
    """Where the canvas lands in the frame: frame_x = canvas_x * scale_x + offset_x (likewise y)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_frame(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale_x + self.offset_x, y * self.scale_y + self.offset_y


def placement(canvas_size: tuple[int, int], frame_size: tuple[int, int], fit: str = DEFAULT_FIT) -> Placement:
    """The map from a canvas of (w, h) pixels to a frame of (W, H) pixels under `fit` (whole-pixel offsets, the
    scale the resized canvas really has)."""
    (cw, ch), (fw, fh) = canvas_size, frame_size
    if fit == "stretch":
        return Placement(fw / cw, fh / ch, 0, 0)
    if fit not in ("crop", "pad"):
        raise ValueError(f"unknown fit {fit!r}; expected one of {', '.join(FITS)}")
    scale = max(fw / cw, fh / ch) if fit == "crop" else min(fw / cw, fh / ch)
    sw, sh = max(1, round(cw * scale)), max(1, round(ch * scale))
    return Placement(sw / cw, sh / ch, (fw - sw) // 2, (fh - sh) // 2)


def fit_image(image: Image.Image, width: int, height: int, fit: str = DEFAULT_FIT) -> Image.Image:
    """The canvas as the model sees it at W x H: NEAREST resampling, so walls and lines stay crisp."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    where = placement(image.size, (width, height), fit)
    scaled = image.resize((round(image.width * where.scale_x), round(image.height * where.scale_y)), Image.NEAREST)
    frame = Image.new("RGB", (width, height))  # black around a padded canvas
    frame.paste(scaled, (int(where.offset_x), int(where.offset_y)))  # negative offsets crop
    return frame


def cut_fractions(canvas_size: tuple[int, int], frame_size: tuple[int, int], fit: str) -> tuple[float, float]:
    """Share of the canvas's width and height that `fit` cuts off (non-zero only for crop)."""
    where = placement(canvas_size, frame_size, fit)
    visible_w = min(frame_size[0], canvas_size[0] * where.scale_x)
    visible_h = min(frame_size[1], canvas_size[1] * where.scale_y)
    return 1 - visible_w / (canvas_size[0] * where.scale_x), 1 - visible_h / (canvas_size[1] * where.scale_y)
