"""The demo: the tiny random-weight model and a few generated puzzles under ./demo, sized to run on 2 CPU cores.

demo/datasets/mazes (VLMPuzzle layout) is trained on, all but the held-out few; demo/datasets/eyeballing
(VideoThinkBench layout, midpoint and circle_center) is only evaluated, beside the held-out mazes."""
from __future__ import annotations

import argparse
from pathlib import Path

from .config import InputError
from .datasets import read_puzzles
from .fsutil import atomic_write

DEMO_ROOT = Path("demo")
SIZE = dict(num_frames=9, height=160, width=96)  # 4k+1 frames, multiples of 32
NUM_PUZZLES, NUM_HELD_OUT = 12, 4
EYEBALLING = {"midpoint": 2, "circle_center": 2}  # evaluated only: training time stays that of the mazes
DEMO_INFERENCE_STEPS = 4


def demo_paths(root: Path = DEMO_ROOT) -> dict[str, Path]:
    return dict(root=root, model=root / "model", datasets=root / "datasets", puzzles=root / "datasets" / "mazes",
                eyeballing=root / "datasets" / "eyeballing", csv=root / "dataset.csv",
                val_ids=root / "dataset_val_ids.txt", eval_ids=root / "eval_ids.txt", output=root / "output")


def prepare_demo(root: Path = DEMO_ROOT) -> dict[str, Path]:
    """Write (or reuse) the tiny model, the generated puzzles, the training CSV with its held-out ids, and the
    evaluation's ids (held-out mazes + eyeballing puzzles)."""
    # torch and the puzzle generator: the launchers import this module and start without them
    from .model_files import REGISTRY_FILE, write_model_folder
    from .prepare import main as prepare_csv
    from .puzzles import generate_maze_task, generate_task

    paths = demo_paths(root)
    if not (paths["model"] / REGISTRY_FILE).is_file():
        print(f"demo: writing the tiny random-weight model to {paths['model']}", flush=True)
        write_model_folder(paths["model"], "tiny")
    if not (paths["puzzles"] / "maze_square" / "data.json").is_file():
        print(f"demo: generating {NUM_PUZZLES} mazes in {paths['puzzles']}", flush=True)
        generate_maze_task(paths["puzzles"], NUM_PUZZLES, grid_sizes=(3, 4), seed=0, fps=8, layout="vlmpuzzle",
                           **SIZE)
    for task, count in EYEBALLING.items():
        if not (paths["eyeballing"] / "tasks" / task / "data.json").is_file():
            print(f"demo: generating {count} {task} puzzles in {paths['eyeballing']}", flush=True)
            generate_task(paths["eyeballing"], task, count, seed=0, fps=8, layout="videothinkbench", **SIZE)
    if not paths["csv"].is_file() or not paths["val_ids"].is_file():
        code = prepare_csv(["--dataset_root", str(paths["puzzles"]), "--output", str(paths["csv"]),
                            "--val_count", str(NUM_HELD_OUT), *[f"--{k}={v}" for k, v in SIZE.items()]])
        if code != 0:
            raise SystemExit(f"demo: prepare_csv failed with exit code {code}")
    if not paths["eval_ids"].is_file():
        keys = paths["val_ids"].read_text().split() + [item.key for item in read_puzzles(paths["eyeballing"])]
        atomic_write(paths["eval_ids"], "".join(f"{key}\n" for key in keys))
    return paths


def refuse_flags_the_demo_sets(parser: argparse.ArgumentParser, argv: list[str] | None, names) -> None:
    """--demo chooses these flags itself: giving one too (whatever its value) is refused rather than ignored."""
    unset = object()
    # argparse fills in a default only where the namespace has no value yet: what stays `unset` was not given.
    given = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(names, unset)))
    flags = [f"--{name}" for name in names if getattr(given, name) is not unset]
    if flags:
        raise InputError(f"--demo sets {', '.join(flags)} itself (the tiny model on the demo puzzles): leave "
                         f"{'it' if len(flags) == 1 else 'them'} out, or run without --demo")


def demo_training_values(parser: argparse.ArgumentParser, argv: list[str], num_gpus: int | None) -> dict:
    """The training flags of the demo: its data, model and size (--num_gpus stays the user's, default 2)."""
    paths = demo_paths()
    demo = dict(dataset=str(paths["csv"]), output_dir=str(paths["output"]), model_base_path=str(paths["model"]),
                lora_rank=4, num_epochs=2, save_steps=2, **SIZE)
    refuse_flags_the_demo_sets(parser, argv, demo)
    prepare_demo()
    return dict(demo, num_gpus=num_gpus or 2)


GENERATION_FLAGS = ("model_base_path", "lora_path", "num_inference_steps", *SIZE)  # what every --demo sets


def _demo_generation_values() -> dict:
    """The generation flags for the demo: the tiny model, the LoRA the demo trained, the demo's size."""
    paths = demo_paths()
    lora = paths["output"] / "final.safetensors"
    if not lora.is_file():
        raise InputError(f"{lora} not found: run `bash train_single_node.sh --demo` first (in this folder)")
    return dict(model_base_path=str(paths["model"]), lora_path=str(lora), num_inference_steps=DEMO_INFERENCE_STEPS,
                **SIZE)


def demo_inference_values(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """inference.py --demo: the first held-out puzzle, with its own prompt."""
    refuse_flags_the_demo_sets(parser, argv, (*GENERATION_FLAGS, "input_image", "prompt", "output"))
    values, paths = _demo_generation_values(), demo_paths()
    key = paths["val_ids"].read_text().split()[0]
    item = next(item for item in read_puzzles(paths["puzzles"]) if item.key == key)
    return dict(values, input_image=str(item.puzzle_path), prompt=item.prompt,
                output=str(paths["root"] / "inference" / f"{item.id}.mp4"))


def demo_eval_values(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """parallel_eval.py --demo: the held-out mazes and the eyeballing puzzles, 2 CPU workers."""
    refuse_flags_the_demo_sets(parser, argv, (*GENERATION_FLAGS, "dataset_root", "ids_file", "output_dir", "workers"))
    paths = demo_paths()
    return dict(_demo_generation_values(), dataset_root=str(paths["datasets"]), ids_file=str(paths["eval_ids"]),
                output_dir=str(paths["root"] / "eval"), workers=2)
