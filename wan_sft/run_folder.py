"""Every name in a training output folder (--output_dir), spelled once: training, checkpoints, portable states,
validation and the training report take their paths from here.

    states/step-00000120/            a full training state (checkpoints.py): accelerate's files, PROGRESS,
                                     PORTABLE_STATE (portable_state.py) and, written last, MARKER
    states/.tmp-step-00000120/       a state being written
    step-120.safetensors             LoRA exports: every --save_steps steps,
    epoch-0.safetensors              at the end of each epoch,
    final.safetensors                and at the end of training
    best.json, best.safetensors      the step with the best validation pass rate, and its LoRA (validation.py)
    validation.csv                   validation pass rates per step
    validation/step-120/<task>/      the validation videos and their last frames
    train_log.jsonl                  one line per optimizer step
    training_args.json               the settings of the latest start
    training_report.html             loss and validation curves (report.py)
    tensorboard/                     TensorBoard's files (--report_to)
    latent_cache/                    the latent cache, unless --cache_dir puts it elsewhere

A step is spelled two ways, both already on disk (users, scripts and resume rely on them): `step-120` for the
exports and validation frames, and zero-padded `step-00000120` for states, so that sorting their names sorts
their steps (the newest state is the last name).
"""
from __future__ import annotations

import os
from pathlib import Path

MARKER = "COMPLETE"  # inside a state: the manifest of its files, written last
PROGRESS = "progress.json"  # inside a state: where training stands
PORTABLE_STATE = "portable.safetensors"  # inside a state: what a resume on another world size loads
BEST_LORA = "best.safetensors"


def step_name(step: int) -> str:
    """A step's name in exports and validation frames."""
    return f"step-{step}"


# ---------------------------------------------------------------- training states


def states_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "states"


def state_name(step: int) -> str:
    """Zero-padded: name order is step order."""
    return f"step-{step:08d}"


def states_newest_first(output_dir: str | os.PathLike) -> list[Path]:
    """The state folders, complete or not, newest first."""
    return sorted(states_dir(output_dir).glob("step-*"), reverse=True)


def unfinished_state(state: Path) -> Path:
    """Where `state` is written before it is renamed into place."""
    return state.with_name(f".tmp-{state.name}")


def unfinished_states(output_dir: str | os.PathLike) -> list[Path]:
    return list(states_dir(output_dir).glob(".tmp-*"))


# ---------------------------------------------------------------- LoRA exports


def step_export(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"{step_name(step)}.safetensors"


def epoch_export(output_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(output_dir) / f"epoch-{epoch}.safetensors"


def final_export(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "final.safetensors"


def best_export(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / BEST_LORA


# ---------------------------------------------------------------- validation


def best_json(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "best.json"


def validation_csv(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "validation.csv"


def validation_frames(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / "validation" / step_name(step)


def validation_frames_by_step(output_dir: str | os.PathLike) -> dict[int, Path]:
    """The validation frame folders present, by step."""
    folders = {}
    for folder in (Path(output_dir) / "validation").glob("step-*"):
        number = folder.name.removeprefix("step-")
        if number.isdigit():
            folders[int(number)] = folder
    return folders


# ---------------------------------------------------------------- logs, settings, report, trackers, cache


def train_log(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "train_log.jsonl"


def training_args(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "training_args.json"


def training_report(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "training_report.html"


def tensorboard_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "tensorboard"


def default_cache_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "latent_cache"
