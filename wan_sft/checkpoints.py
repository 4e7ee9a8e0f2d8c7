"""Full training states: saved atomically on every rank, discovered newest-complete-first, pruned to the newest K.

Layout under `<output_dir>/states/`: `step-00000120/` holds accelerate's `save_state` files (LoRA, optimizer,
scheduler, RNG of every rank), `progress.json` (where training stands) and, written last, `COMPLETE` (a manifest
of file sizes). A state is written into `.tmp-step-…` and renamed once every rank has finished writing.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import InputError
from .fsutil import WriteFailed, atomic_write, honour_umask, write_failed

MARKER = "COMPLETE"
PROGRESS = "progress.json"


@dataclass
class Progress:
    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    sample_in_epoch: int = 0  # samples of that epoch's order done (all ranks together); the next one is this
    run_fingerprint: str = ""  # settings a resume must share (dataset, seed, ...)
    world_size: int = 0  # processes that saved the state
    gradient_accumulation_steps: int = 1  # and their accumulation (global batch = the product)


def run_fingerprint(args, num_samples: int) -> str:
    """Settings a resumed run must share with the run that saved the state (train.py and the launchers); the
    number of processes and accumulation steps are checked apart (--allow_world_size_change)."""
    keys = dict(dataset=Path(args.dataset).resolve().as_posix(), num_samples=num_samples,
                num_frames=args.num_frames, height=args.height, width=args.width, lora_rank=args.lora_rank,
                seed=args.seed, fit=args.fit)
    return json.dumps(keys, sort_keys=True)


def check_same_settings(output_dir: str | Path, fingerprint: str) -> None:
    """Refuse when the newest complete state was saved with other settings: a new run into an old folder must not
    load it, skip it as corrupt, or overwrite that run's exports."""
    for state in complete_states(output_dir)[:1]:
        _check_state(state, fingerprint)


def _check_state(state: Path, fingerprint: str) -> None:
    saved = read_progress(state).run_fingerprint
    if saved != fingerprint:
        before, now = json.loads(saved or "{}"), json.loads(fingerprint)
        changed = "; ".join(f"{key} {before.get(key)} there, {now.get(key)} now"
                            for key in sorted(before.keys() | now.keys()) if before.get(key) != now.get(key))
        raise InputError(f"{Path(state).parent.parent} holds a run with other settings ({changed}); "
                         f"use a new --output_dir or the same settings")


def states_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "states"


def state_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(state: Path) -> bool:
    """Marker present and every file it lists still has its recorded size."""
    try:
        manifest = json.loads((state / MARKER).read_text())
        json.loads((state / PROGRESS).read_text())
        return all((state / name).stat().st_size == size for name, size in manifest.items())
    except (OSError, ValueError):
        return False


def complete_states(output_dir: str | Path) -> list[Path]:
    """Complete states, newest first; incomplete ones are reported once and ignored."""
    root = states_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for state in sorted(root.glob("step-*"), reverse=True):
        if is_complete(state):
            found.append(state)
        else:
            print(f"warning: skipping incomplete or corrupt training state {state}", file=sys.stderr)
    return found


def read_progress(state: Path) -> Progress:
    return Progress(**json.loads((state / PROGRESS).read_text()))


def save(accelerator, output_dir: str | Path, progress: Progress, keep: int,
         extra_files: dict[str, bytes] | None = None, **save_kwargs) -> Path:
    """Collective: every rank must call it (DeepSpeed writes per-rank optimizer shards).

    extra_files: name -> bytes the main process writes into the state beside accelerate's files."""
    root = states_dir(output_dir)
    final = root / state_name(progress.global_step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), **save_kwargs)
    except Exception as error:  # a full disk, typically: no partial state is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(tmp, error) from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            for name, data in (extra_files or {}).items():
                atomic_write(tmp / name, data)
            atomic_write(tmp / PROGRESS, json.dumps(asdict(progress), indent=1))
            files = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
            for file in files:  # some of accelerate's files are created 0600
                honour_umask(file)
            manifest = {str(p.relative_to(tmp)): p.stat().st_size for p in files}
            shutil.rmtree(final, ignore_errors=True)  # a stale incomplete state with the same step
            tmp.rename(final)
            atomic_write(final / MARKER, json.dumps(manifest, indent=1))
        except WriteFailed:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            raise
        for old in complete_states(output_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, output_dir: str | Path, fingerprint: str, load=None, **load_kwargs) -> Progress | None:
    """Load the newest complete state that loads; None when there is none. A state of a run with other settings
    is refused (InputError), never skipped. load(state, progress), if given, loads a state instead of
    accelerator.load_state (it may refuse with SystemExit)."""
    if accelerator.is_main_process:
        for stale in states_dir(output_dir).glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    for state in complete_states(output_dir):
        _check_state(state, fingerprint)
        try:
            if load:
                load(state, read_progress(state))
            else:
                accelerator.load_state(str(state), **load_kwargs)
        except Exception as error:  # noqa: BLE001 - a state that fails to load is skipped like a partial one
            print(f"warning: training state {state} failed to load ({error}); trying an older one", file=sys.stderr)
            continue
        return read_progress(state)
    return None
