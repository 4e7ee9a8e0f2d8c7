"""Image-to-video generation with Wan2.2-TI2V-5B (+ an optional fused LoRA): the reusable parts and the CLI.

`load_generator` + `generate` are what evaluation and in-training validation call; `main` is inference.py.
Protocol (VLMPuzzle): the puzzle is resized to W x H with NEAREST (`--fit stretch`, wan_sft/geometry.py; training
maps clips the same way), and the last frame that is scored is the decoded PIL frame from the pipeline, never a
re-read of the lossy mp4.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .acceleration import configure_blocks
from .cli import run_entry
from .config import (
    DEFAULT_HEIGHT,
    DEFAULT_NUM_FRAMES,
    DEFAULT_WIDTH,
    LORA_HELP,
    HelpFormatter,
    InputError,
    add_model_base_path,
    add_video_shape_args,
    check_video_shape,
    environment_help,
)
from .demo import demo_inference_values
from .fp8 import convert_block_linears
from .fsutil import atomic_save_image
from .geometry import DEFAULT_FIT, FITS, fit_image
from .lora import fuse_lora, read_lora_file
from .model_files import load_pipeline, locate_model_files
from .video import write_video

# Wan's default negative prompt (as in the Wan2.2 repository and DiffSynth's examples).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
DEFAULT_NEGATIVE_PROMPT_ENGLISH = (  # shown beside it in reports (browsers without CJK fonts show boxes)
    "garish colours, overexposed, static, blurry details, subtitles, style, artwork, painting, picture, still, "
    "greyish overall, worst quality, low quality, JPEG compression artefacts, ugly, mutilated, extra fingers, "
    "poorly drawn hands, poorly drawn face, deformed, disfigured, malformed limbs, fused fingers, motionless frame, "
    "cluttered background, three legs, many people in the background, walking backwards"
)


@dataclass(frozen=True)
class GenerationSettings:
    num_frames: int = DEFAULT_NUM_FRAMES
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    num_inference_steps: int = 50
    cfg_scale: float = 5.0
    seed: int = 0
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    fit: str = DEFAULT_FIT


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by inference.py and parallel_eval.py (`--lora_ckpt` is the origin scripts' name)."""
    parser.add_argument("--lora_path", "--lora_ckpt", dest="lora_path", default=None,
                        help=LORA_HELP + " (default: none, the base model alone)")
    add_model_base_path(parser)
    add_video_shape_args(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--cfg_scale", type=float, default=5.0, help="classifier-free guidance (1 disables it)")
    parser.add_argument("--negative_prompt", default=DEFAULT_NEGATIVE_PROMPT,
                        help="(default: Wan's default negative prompt, in Chinese)")
    parser.add_argument("--fps", type=int, default=16, help="frame rate written into the mp4")
    parser.add_argument("--fp8", action="store_true",
                        help="APPROXIMATE, faster on Hopper GPUs: the DiT block linears in FP8 (e4m3, row-wise scales) "
                             "after the LoRA is fused; outputs differ from bf16 (bench/RESULTS.md)")
    parser.add_argument("--fit", choices=FITS, default=DEFAULT_FIT,
                        help="how the puzzle maps to WxH; use the training's --fit (default stretch: NEAREST resize, "
                             "the benchmark's protocol)")


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(args.num_frames, args.height, args.width, args.num_inference_steps, args.cfg_scale,
                              args.seed, args.negative_prompt, args.fit)


def check_generation_args(args: argparse.Namespace) -> None:
    """Every generation check that needs no model: shape, numbers, model files, LoRA file."""
    check_video_shape(args.num_frames, args.height, args.width)
    if args.num_inference_steps < 1:
        raise InputError(f"--num_inference_steps {args.num_inference_steps} is invalid: it must be at least 1")
    if not args.cfg_scale > 0:
        raise InputError(f"--cfg_scale {args.cfg_scale} is invalid: it must be positive (1 disables guidance)")
    if args.fps < 1:
        raise InputError(f"--fps {args.fps} is invalid: it must be a positive integer")
    locate_model_files(args.model_base_path)
    if args.lora_path:
        read_lora_file(args.lora_path)


def check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is invalid: use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r} is invalid: use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise InputError(f"--device {device} but no GPU is visible; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise InputError(f"--device {device} but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; a missing or broken file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - PIL raises several types for a bad file
        raise InputError(f"{path}: not a readable image ({error.__class__.__name__}: {error})") from None


def load_generator(model_base_path, lora_path, device: str, compile_blocks: bool = False, fp8: bool = False):
    """The pipeline (bf16 on GPU, fp32 on CPU) with the LoRA fused in; returns (pipe, fused layer count, 0 = none).

    `compile_blocks` torch.compiles each DiT block: worth it for many videos (evaluation), not for one.
    `fp8` (approximate) puts the DiT block linears in FP8 after the LoRA is fused (wan_sft/fp8.py).
    """
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    pipe = load_pipeline(model_base_path, device, dtype)
    with contextlib.redirect_stdout(io.StringIO()):  # DiffSynth prints its own count; callers report ours
        fused = fuse_lora(pipe, lora_path) if lora_path else 0
    if fp8:
        convert_block_linears(pipe.dit)
    if compile_blocks:
        configure_blocks(pipe.dit, checkpointed_blocks=0, compile_blocks=True)
    return pipe, fused


def model_input_image(image: Image.Image, settings: GenerationSettings) -> Image.Image:
    """The puzzle as the model gets it: mapped to W x H under settings.fit, NEAREST so walls stay crisp."""
    return fit_image(image, settings.width, settings.height, settings.fit)


def generate(pipe, image: Image.Image, prompt: str, settings: GenerationSettings,
             show_progress: bool = False, tiled_decode: bool = False) -> list[Image.Image]:
    """The generated frames (PIL); the image is mapped to W x H by `model_input_image` (training's geometry).

    The VAE decodes the whole video at once unless `tiled_decode` (DiffSynth's default, in overlapping tiles):
    less memory, for generating beside training; untiled is 1.4 s faster per 896x480x81 video on an H100 and
    within 47.6 dB PSNR of tiled (bench/RESULTS.md). With cfg, both branches of a step run as one batch of two
    (DiffSynth's cfg_merge): 1.6% faster, no more peak memory, the same frames (bench/RESULTS.md); cfg 1 has one.
    """
    image = model_input_image(image, settings)
    kwargs = {} if show_progress else {"progress_bar_cmd": lambda iterable: iterable}
    return pipe(prompt=prompt, negative_prompt=settings.negative_prompt, input_image=image,
                height=settings.height, width=settings.width, num_frames=settings.num_frames,
                num_inference_steps=settings.num_inference_steps, cfg_scale=settings.cfg_scale, seed=settings.seed,
                cfg_merge=settings.cfg_scale != 1, tiled=tiled_decode, **kwargs)


def last_frame_path(video_path: str | os.PathLike) -> Path:
    video_path = Path(video_path)
    return video_path.with_name(f"{video_path.stem}_last.png")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="inference.py", formatter_class=HelpFormatter,
        description="Generate a video from a puzzle image with Wan2.2-TI2V-5B (+ LoRA);\n"
                    "writes the mp4 and its last frame as <stem>_last.png beside it.",
        epilog=environment_help() + "\n\nEach run writes --output and its _last.png anew: there is nothing to resume.")
    parser.add_argument("--input_image", help="the puzzle image")
    parser.add_argument("--prompt", help="what to draw, e.g. the puzzle's ti2v_prompt")
    parser.add_argument("--output", default=None, help="mp4 path (default: ./output/inference/<image stem>.mp4)")
    parser.add_argument("--device", default=default_device(), help="cuda, cuda:N or cpu")
    parser.add_argument("--demo", action="store_true",
                        help="a held-out demo puzzle with the LoRA of `train_single_node.sh --demo` (run that first)")
    add_generation_args(parser)
    args = parser.parse_args(argv)
    if args.demo:
        vars(args).update(demo_inference_values(parser, argv))
    elif not (args.input_image and args.prompt):
        parser.error("--input_image and --prompt are required (or --demo)")
    return args


def main(argv=None) -> int:
    return run_entry(generate_one_video, argv)


def generate_one_video(argv: list[str] | None) -> int:
    args = parse_args(argv)
    check_generation_args(args)
    check_device(args.device)
    image = read_image(args.input_image)
    output = Path(args.output or Path("output/inference") / f"{Path(args.input_image).stem}.mp4")
    if output.suffix.lower() != ".mp4":
        raise InputError(f"--output {output} must end in .mp4 (the last frame is written beside it as PNG)")
    if output.is_dir():
        raise InputError(f"--output {output} is a directory; name the mp4 file")
    pipe, fused = load_generator(args.model_base_path, args.lora_path, args.device, fp8=args.fp8)
    print(f"fused {fused} LoRA layers from {args.lora_path}" if args.lora_path else "no LoRA: base model",
          flush=True)
    frames = generate(pipe, image, args.prompt, settings_from_args(args), show_progress=True)
    write_video(output, frames, fps=args.fps)
    atomic_save_image(frames[-1], last_frame_path(output))
    print(f"wrote {output} ({len(frames)} frames) and {last_frame_path(output)}", flush=True)
    return 0
