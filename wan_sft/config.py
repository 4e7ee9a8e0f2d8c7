"""The model's hard rules and the project's defaults, stated once."""
from __future__ import annotations

import argparse
import os

from .geometry import DEFAULT_FIT, FITS

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default (unless its help states it, or it has none: unset or off) and keeps the line
    breaks of the description and the epilog."""

    def _get_help_string(self, action):
        unset = action.default is None or action.default is False or action.default == ""
        if unset or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def environment_help(*more: str) -> str:
    """The environment part of an entry point's --help epilog; `more`: lines of its own variables."""
    return "\n".join(["environment:",
                      "  MODEL_BASE_PATH  the Wan2.2-TI2V-5B folder: the default of --model_base_path",
                      "  DIFFSYNTH_PATH   a DiffSynth-Studio checkout to use instead of the installed package", *more,
                      "  Nothing is downloaded: HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set."])


LORA_HELP = ("LoRA .safetensors (the exports of training). Training starts from these weights (a warm start: fresh "
             "optimizer, step 0); inference and evaluation fuse them into the DiT")


def add_model_base_path(parser) -> None:
    parser.add_argument("--model_base_path", default=os.environ.get("MODEL_BASE_PATH"),
                        help="Wan2.2-TI2V-5B folder (default: $MODEL_BASE_PATH)")


PATH_FLAGS = {"dataset", "output_dir", "lora_checkpoint", "cache_dir", "val_dataset_root", "val_ids_file"}


def add_video_shape_args(parser) -> None:
    parser.add_argument("--num_frames", type=int, default=DEFAULT_NUM_FRAMES, help="frames per clip: 4k+1")
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT, help="pixels, a multiple of 32")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="pixels, a multiple of 32")


def add_training_args(parser) -> None:
    """The training flags (the seed's names and defaults), shared by the launchers and the training entry."""
    parser.add_argument("--dataset", help="CSV with columns video,prompt (see prepare_csv.py)")
    parser.add_argument("--output_dir", default="./output/wan_lora",
                        help="LoRA exports, resumable states, logs; re-running the same command resumes from here")
    add_video_shape_args(parser)
    parser.add_argument("--fit", choices=FITS, default=DEFAULT_FIT,
                        help="how a clip frame maps to WxH, as at inference: stretch (NEAREST resize, the "
                             "benchmark's), crop (cover + centre crop), pad (letterbox on black)")
    parser.add_argument("--lora_rank", type=int, default=32, help="LoRA rank on q,k,v,o,ffn.0,ffn.2 of the DiT")
    parser.add_argument("--num_epochs", type=int, default=3, help="passes over the CSV")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="AdamW, DiffSynth's schedule")
    parser.add_argument("--save_steps", type=int, default=250,
                        help="export a LoRA and save a resumable state every N optimizer steps")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="samples per process per optimizer step (global batch = processes x N)")
    parser.add_argument("--lora_path", "--lora_checkpoint", dest="lora_checkpoint", metavar="LORA_PATH", default=None,
                        help=LORA_HELP)
    parser.add_argument("--seed", type=int, default=0, help="sample order, LoRA init, noise")
    parser.add_argument("--keep_states", type=int, default=2, help="resumable training states to keep (newest)")
    parser.add_argument("--allow_world_size_change", action="store_true",
                        help="resume a state saved by another number of processes (the global batch changes)")
    parser.add_argument("--recheck", action="store_true",
                        help="decode every clip before training, not only those changed since the last check")
    parser.add_argument("--cache_dir", default=None,
                        help="latent cache folder (default: <output_dir>/latent_cache; can be shared between runs)")
    parser.add_argument("--no_cache", action="store_true", help="encode every clip on the fly instead of caching")
    parser.add_argument("--checkpoint_blocks", type=int, default=None,
                        help="DiT blocks to run with activation checkpointing "
                             "(default: as few as fit in 80%% of the GPU's memory; all on CPU)")
    parser.add_argument("--no_compile", action="store_true", help="do not torch.compile the DiT blocks (GPU only)")
    parser.add_argument("--fp8_base", action="store_true",
                        help="APPROXIMATE, faster on Hopper GPUs: the frozen DiT block linears under the LoRA in FP8 "
                             "(forward and input gradients; e4m3, row-wise scales); the LoRA and AdamW stay fp32")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="stop after this many steps in total (default: all epochs)")
    parser.add_argument("--collective_timeout", type=int, default=600,
                        help="seconds a collective may wait, and a step may take, before a hung rank ends the run")
    parser.add_argument("--report_to", choices=["tensorboard", "wandb", "all"], default="tensorboard",
                        help="experiment trackers (accelerate's): TensorBoard in <output_dir>/tensorboard, W&B "
                             "(run folder in <output_dir>/wandb; WANDB_MODE=offline works without network), or both")
    parser.add_argument("--val_dataset_root", default=None,
                        help="puzzle dataset root (either layout): generate + score held-out puzzles during training "
                             "(default: off)")
    parser.add_argument("--val_every", type=int, default=None, help="validate every N steps (default: --save_steps)")
    parser.add_argument("--val_count", type=int, default=8, help="puzzles to validate on (the first K by task/id)")
    parser.add_argument("--val_ids_file", default=None,
                        help="lines task/id to validate on "
                             "(default: the CSV's <stem>_val_ids.txt if present, else all)")
    parser.add_argument("--val_prompt_key", default=None,
                        help="record key of the validation prompts (default: ti2v_prompt, else prompt)")
    parser.add_argument("--val_num_inference_steps", type=int, default=50,
                        help="denoising steps per validation video")
    parser.add_argument("--val_cfg_scale", type=float, default=5.0, help="classifier-free guidance of validation")


def check_training_numbers(args) -> None:
    check_video_shape(args.num_frames, args.height, args.width)
    for name in ("lora_rank", "num_epochs", "save_steps", "gradient_accumulation_steps", "keep_states",
                 "collective_timeout"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} {getattr(args, name)} is invalid: it must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError(f"--max_steps {args.max_steps} is invalid: it must be at least 1")
    if not args.learning_rate > 0:
        raise InputError(f"--learning_rate {args.learning_rate} is invalid: it must be positive")
    for name in ("val_every", "val_count", "val_num_inference_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name} {getattr(args, name)} is invalid: it must be at least 1")
    if not args.val_cfg_scale > 0:
        raise InputError(f"--val_cfg_scale {args.val_cfg_scale} is invalid: it must be positive (1 disables guidance)")
    if not args.val_dataset_root:
        for name in ("val_every", "val_ids_file", "val_prompt_key"):
            if getattr(args, name) is not None:
                raise InputError(f"--{name} needs --val_dataset_root (the puzzles to validate on)")
