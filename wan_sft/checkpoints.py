"""Full training states: saved atomically on every rank, discovered newest-complete-first, pruned to the newest K;
and what a run saves when (Saver).

Layout under `<output_dir>/states/` (names in run_folder.py): `step-00000120/` holds accelerate's `save_state`
files (LoRA, optimizer, scheduler, RNG of every rank), `progress.json` (where training stands) and, written last,
`COMPLETE` (a manifest of file sizes). A state is written into `.tmp-step-…` and renamed once every rank has
finished writing.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import portable_state, run_folder
from .config import InputError
from .fsutil import WriteFailed, atomic_write, honour_umask, write_failed
from .lora import export_lora, lora_state_dict
from .run_folder import MARKER, PROGRESS, state_name, states_dir


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
    found = []
    for state in run_folder.states_newest_first(output_dir):
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
    final = states_dir(output_dir) / state_name(progress.global_step)
    tmp = run_folder.unfinished_state(final)
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


def resume(accelerator, output_dir: str | Path, fingerprint: str, load) -> Progress | None:
    """Load the newest complete state that loads, with load(state, progress) (it may refuse with SystemExit); None
    when there is none. A state of a run with other settings is refused (InputError), never skipped."""
    if accelerator.is_main_process:
        for stale in run_folder.unfinished_states(output_dir):
            shutil.rmtree(stale, ignore_errors=True)
    for state in complete_states(output_dir):
        _check_state(state, fingerprint)
        try:
            load(state, read_progress(state))
        except Exception as error:  # noqa: BLE001 - a state that fails to load is skipped like a partial one
            print(f"warning: training state {state} failed to load ({error}); trying an older one", file=sys.stderr)
            continue
        return read_progress(state)
    return None


class Saver:
    """What a training run saves, and when; the methods that save are collective (every rank calls them).

    The LoRA is exported as step-N every `save_steps` steps and as epoch-N at the end of each epoch (and as final by
    train.py). A full state goes with every step-N export, the end of each epoch, a stop signal and the last step, so
    a rerun resumes where this run stopped. Beside accelerate's files a state holds portable_state's file, from which
    a resume on another number of processes or accumulation steps continues (--allow_world_size_change)."""

    def __init__(self, accelerator, model, adamw, scheduler, output_dir: Path, save_steps: int, keep: int):
        from accelerate.utils import DistributedType

        self.accelerator, self.model, self.adamw, self.scheduler = accelerator, model, adamw, scheduler
        self.output_dir, self.save_steps, self.keep = Path(output_dir), save_steps, keep
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        if self.deepspeed:
            from deepspeed.utils import safe_get_full_fp32_param

            self.full_param = safe_get_full_fp32_param
            self.save_kwargs, self.load_kwargs = dict(exclude_frozen_parameters=True), dict(load_module_strict=False)
        else:
            self.full_param, self.save_kwargs, self.load_kwargs = (lambda p: p), {}, dict(strict=False)
            accelerator.register_save_state_pre_hook(_keep_only_trainable_weights)
        self.saved_step = 0  # the newest complete state's step (0: none)

    def exports_due(self, step: int, ended_epoch: int | None) -> list[Path]:
        """The exports due after `step`; `ended_epoch`: the epoch this step finished, if it finished one."""
        due = [run_folder.step_export(self.output_dir, step)] if step % self.save_steps == 0 else []
        return due + ([run_folder.epoch_export(self.output_dir, ended_epoch)] if ended_epoch is not None else [])

    def state_due(self, step: int, end_of_epoch: bool, stopping: bool, last: bool) -> bool:
        return step % self.save_steps == 0 or end_of_epoch or stopping or last

    def current_lora(self) -> dict:
        """Collective under DeepSpeed (ZeRO gathers the fp32 values)."""
        return lora_state_dict(self._dit(), self.full_param)

    def export(self, path: Path) -> None:
        state = self.current_lora()
        if self.accelerator.is_main_process:
            export_lora(state, path)

    def save_state(self, progress: Progress) -> None:
        portable = portable_state.gather(self._dit(), self.adamw, self.scheduler, self.deepspeed)
        save(self.accelerator, self.output_dir, progress, self.keep,
             extra_files={run_folder.PORTABLE_STATE: portable}, **self.save_kwargs)
        self.saved_step = progress.global_step

    def resume(self, fingerprint: str, accumulation: int, allow_world_size_change: bool, num_samples: int) -> Progress:
        """Load the newest complete state, if any; the progress to continue from, for this run's processes and
        accumulation steps."""
        world = self.accelerator.num_processes

        def load(state: Path, saved: Progress) -> None:
            saved_shape = (saved.world_size, saved.gradient_accumulation_steps)
            if saved_shape == (world, accumulation):
                self.accelerator.load_state(str(state), **self.load_kwargs)
                return
            change = (f"{world} processes x {accumulation} accumulation steps instead of {saved_shape[0]} x "
                      f"{saved_shape[1]}: global batch {world * accumulation} samples per optimizer step instead of "
                      f"{saved_shape[0] * saved_shape[1]}")
            if not allow_world_size_change:
                raise SystemExit(f"error: {state} was saved by {saved_shape[0]} processes x {saved_shape[1]} "
                                 f"accumulation steps; to continue it with {change}, rerun with "
                                 f"--allow_world_size_change (or use {saved_shape[0]} processes and "
                                 f"--gradient_accumulation_steps {saved_shape[1]})")
            portable_state.load(state / run_folder.PORTABLE_STATE, self._dit(), self.adamw, self.scheduler,
                                self.deepspeed)
            self.accelerator.print(f"resuming with {change} (--allow_world_size_change); epoch {saved.epoch} "
                                   f"continues from sample {saved.sample_in_epoch} of {num_samples}", flush=True)

        progress = (resume(self.accelerator, self.output_dir, fingerprint, load=load)
                    or Progress(run_fingerprint=fingerprint))
        progress.world_size, progress.gradient_accumulation_steps = world, accumulation
        self.saved_step = progress.global_step
        return progress

    def _dit(self):
        return self.accelerator.unwrap_model(self.model).dit


def _keep_only_trainable_weights(models, weights, output_dir):
    """accelerate saves whole state dicts; the frozen base is already on disk, so keep the LoRA only."""
    for model, state in zip(models, weights, strict=True):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in trainable]:
            del state[key]
