"""One geometry (wan_sft/geometry.py): each mode's pixels, and training and inference using it alike."""
import numpy as np
import pytest
from PIL import Image

from wan_sft.data import ClipDataset, Sample
from wan_sft.datasets import read_puzzles
from wan_sft.geometry import cut_fractions, fit_image, placement
from wan_sft.inference import GenerationSettings, generate
from wan_sft.puzzles import generate_task
from wan_sft.video import read_frames


def columns(width, height):
    """A canvas whose column x is the grey level 10 * (x + 1), row 0 a little brighter: positions can be read back."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = (10 * (np.arange(width) + 1))[None, :, None]
    pixels[0] += 1
    return Image.fromarray(pixels)


def grey(image):
    return np.asarray(image)[..., 0].astype(int)


def test_stretch_scales_each_axis_on_its_own():
    out = grey(fit_image(columns(4, 2), 8, 8))
    assert out.shape == (8, 8)
    assert out[4, :].tolist() == [10, 10, 20, 20, 30, 30, 40, 40]  # each column twice
    assert out[:, 0].tolist() == [11] * 4 + [10] * 4  # each row four times
    assert placement((4, 2), (8, 8)).to_frame(1.5, 0.5) == (3.0, 2.0)
    assert cut_fractions((4, 2), (8, 8), "stretch") == (0, 0)


def test_crop_covers_then_cuts_the_middle():
    out = grey(fit_image(columns(4, 2), 2, 2, "crop"))  # scale 1: the middle two columns
    assert out.tolist() == [[21, 31], [20, 30]]
    where = placement((4, 2), (2, 2), "crop")
    assert (where.scale_x, where.scale_y, where.offset_x, where.offset_y) == (1, 1, -1, 0)
    assert cut_fractions((4, 2), (2, 2), "crop") == (0.5, 0)
    out = grey(fit_image(columns(2, 2), 8, 4, "crop"))  # scale 4, rows 2..5 of 8 kept
    assert out[:, 0].tolist() == [11, 11, 10, 10] and out[0].tolist() == [11] * 4 + [21] * 4
    assert cut_fractions((2, 2), (8, 4), "crop") == (0, 0.5)


def test_pad_letterboxes_on_black():
    out = grey(fit_image(columns(4, 2), 4, 4, "pad"))  # scale 1, one black row above and below
    assert out.tolist() == [[0] * 4, [11, 21, 31, 41], [10, 20, 30, 40], [0] * 4]
    out = grey(fit_image(columns(2, 4), 8, 4, "pad"))  # scale 1, three black columns left and right
    assert out[1].tolist() == [0, 0, 0, 10, 20, 0, 0, 0]
    assert placement((2, 4), (8, 4), "pad").to_frame(0, 0) == (3, 0)
    assert cut_fractions((2, 4), (8, 4), "pad") == (0, 0)


@pytest.mark.parametrize("fit", ["stretch", "crop", "pad"])
def test_placement_maps_a_canvas_point_onto_its_frame_pixels(fit):
    canvas = Image.new("RGB", (40, 24), (255, 255, 255))
    canvas.paste((255, 0, 0), (28, 8, 32, 12))  # a 4x4 mark centred on (30, 10)
    frame = np.asarray(fit_image(canvas, 64, 32, fit))
    ys, xs = np.nonzero(np.all(frame == (255, 0, 0), axis=2))
    x, y = placement((40, 24), (64, 32), fit).to_frame(30, 10)
    assert abs(xs.mean() + 0.5 - x) <= 0.5 and abs(ys.mean() + 0.5 - y) <= 0.5  # pixel centres vs canvas point
    with pytest.raises(ValueError, match="unknown fit 'cover'"):
        placement((40, 24), (64, 32), "cover")


class CapturingPipe:
    """Stands in for the pipeline: keeps the image generate() feeds it."""

    def __call__(self, input_image, **kwargs):
        self.image = input_image
        return [input_image]


@pytest.mark.parametrize("fit", ["stretch", "crop", "pad"])
def test_training_sees_the_puzzle_as_inference_feeds_it(tmp_path, fit):
    """A 512x512 puzzle at 96x160 (WxH, another aspect ratio): the first frame of its clip as the trainer gets it
    equals the image inference feeds the model for the clip's first frame, and matches the puzzle image's."""
    generate_task(tmp_path, "maze_square", 1, width=512, height=512, num_frames=5, fps=8, grid_sizes=(4,))
    item = read_puzzles(tmp_path)[0]
    trained = ClipDataset([Sample(str(item.solution_video), item.prompt, 1)], 5, 160, 96, fit)[0]["video"][0]
    settings = GenerationSettings(num_frames=5, height=160, width=96, fit=fit)
    pipe = CapturingPipe()
    generate(pipe, read_frames(item.solution_video, limit=1)[0], item.prompt, settings)
    assert trained.size == pipe.image.size == (96, 160)
    assert np.array_equal(np.asarray(trained), np.asarray(pipe.image))
    generate(pipe, Image.open(item.puzzle_path), item.prompt, settings)  # the puzzle png: only mp4 loss differs
    assert different_pixels(trained, pipe.image) < 0.02
    for other in {"stretch", "crop", "pad"} - {fit}:  # a geometry mismatch would show
        generate(pipe, Image.open(item.puzzle_path), item.prompt, GenerationSettings(5, 160, 96, fit=other))
        assert different_pixels(trained, pipe.image) > 0.2


def different_pixels(a, b):
    return (np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max(axis=2) > 64).mean()


def test_fit_is_part_of_the_cache_key_and_the_run_fingerprint(tmp_path):
    import argparse

    from wan_sft import cache
    from wan_sft.checkpoints import run_fingerprint

    (tmp_path / "clip.mp4").write_text("clip")
    keys = {fit: cache.clip_key(str(tmp_path / "clip.mp4"), 9, 160, 96, ["vae", 1, 2], "float32", fit)
            for fit in ("stretch", "crop", "pad")}
    assert len(set(keys.values())) == 3
    assert cache.clip_key(str(tmp_path / "clip.mp4"), 9, 160, 96, ["vae", 1, 2], "float32") == keys["stretch"]
    args = argparse.Namespace(dataset="d.csv", num_frames=9, height=160, width=96, lora_rank=4, seed=0, fit="crop")
    assert run_fingerprint(args, 8) != run_fingerprint(argparse.Namespace(**{**vars(args), "fit": "pad"}), 8)
