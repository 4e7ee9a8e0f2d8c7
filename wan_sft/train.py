"""The training entry, started by `accelerate launch` on every rank (see launch.py). Reads top to bottom.

Determinism: the sample order is a seeded permutation per epoch; an optimizer step takes the next
processes x gradient_accumulation_steps samples of it (micro-step m of rank r takes the (m * processes + r)-th),
and the noise/timestep draw is seeded from (seed, epoch, position in the order) just before the loss. So a run
resumed from a saved state repeats exactly what the uninterrupted run would have done, and the same samples get
the same noise whatever the number of processes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from . import cache, checkpoints, config, run_folder
from .acceleration import auto_checkpoint_blocks, configure_blocks
from .data import ClipDataset, read_training_csv
from .fp8 import convert_block_linears
from .fsutil import append_line, atomic_write
from .inference import GenerationSettings
from .lora import add_lora, warm_start
from .model_files import load_pipeline, locate_model_files
from .report import write_training_report
from .validation import TaskValidator, select_validation_items
from .watchdog import COLLECTIVE_GRACE, StepWatchdog


class FlowMatchLoss(torch.nn.Module):
    """What accelerate/DeepSpeed wrap: the pipeline's models, and DiffSynth's units + flow-matching SFT loss."""

    def __init__(self, pipe, num_frames: int, height: int, width: int):
        super().__init__()
        self.__dict__["pipe"] = pipe  # not a submodule: its models are registered once, below
        self.dit, self.vae, self.text_encoder = pipe.dit, pipe.vae, pipe.text_encoder
        self.training_inputs = dict(
            num_frames=num_frames, height=height, width=width, cfg_scale=1, tiled=False, rand_device="cpu",
            # gradient checkpointing is per block, see acceleration.py
            cfg_merge=False, use_gradient_checkpointing=False, use_gradient_checkpointing_offload=False,
            max_timestep_boundary=1, min_timestep_boundary=0, fuse_vae_embedding_in_latents=True)

    def encode(self, sample: dict) -> dict:
        """VAE latents of the clip and its first frame, T5 context of the prompt (DiffSynth's pipeline units)."""
        pipe = self.pipe
        shared = dict(input_video=sample["video"], input_image=sample["video"][0], **self.training_inputs)
        posi, nega = {"prompt": sample["prompt"]}, {}
        with torch.no_grad():
            for unit in pipe.units:
                shared, posi, nega = pipe.unit_runner(unit, pipe, shared, posi, nega)
        return {**shared, **posi}

    def drop_encoders(self) -> None:
        """Training from the latent cache needs only the DiT on the device."""
        self.vae = self.text_encoder = self.pipe.vae = self.pipe.text_encoder = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def forward(self, sample: dict, noise_seed: int) -> torch.Tensor:
        from diffsynth.diffusion import FlowMatchSFTLoss

        if "input_latents" in sample:  # from the latent cache: exactly what encode() returned
            device = self.dit.patch_embedding.weight.device
            inputs = {**self.training_inputs, **{k: sample[k].to(device, non_blocking=True)  # pinned: see _prefetched
                                                 for k in cache.CACHED_INPUTS}}
        else:
            inputs = self.encode(sample)
        torch.manual_seed(noise_seed)  # timestep and noise of this step, independent of what ran before
        return FlowMatchSFTLoss(self.pipe, **inputs)


def configure_deepspeed(ds_config: dict) -> None:
    """DeepSpeed settings accelerate leaves open or picks differently from DiffSynth's trainer.

    No dataloader goes through prepare(), so the micro batch is set here. No gradient clipping (accelerate's
    default is 1.0; DiffSynth does not clip), hence no gradient norm, and no per-tensor overflow scan (bf16 has no
    loss scale to adjust): both launch kernels per LoRA tensor, ~0.05 s per step for 600 tensors. A diverged step
    is caught by the loop instead (`_divergence`).
    """
    ds_config["train_micro_batch_size_per_gpu"] = 1
    ds_config["gradient_clipping"] = 0.0
    ds_config["zero_optimization"]["compute_grad_norm"] = False
    ds_config["bf16"]["check_grad_overflow"] = False


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    config.add_training_args(parser)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--expected_world_size", type=int, required=True,
                        help="set by the launcher; a mismatch means a broken launch and fails loudly")
    return parser.parse_args(argv)


def noise_seed(seed: int, epoch: int, position: int) -> int:
    """The timestep/noise draw of the sample at this position of this epoch's order."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + position) % 2**63


def main(argv=None) -> int:
    args = parse_args(argv)
    _die_with_launcher()
    output_dir = Path(args.output_dir)
    accelerator = start_accelerator(args.output_dir, args.report_to, args.gradient_accumulation_steps,
                                    args.collective_timeout, args.expected_world_size)
    rank, world, accumulation = accelerator.process_index, accelerator.num_processes, args.gradient_accumulation_steps
    batch = world * accumulation

    # Data: a seeded permutation per epoch, batch (= world x accumulation) samples of it per optimizer step.
    samples = read_training_csv(args.dataset)
    fingerprint = checkpoints.run_fingerprint(args, len(samples))
    checkpoints.check_same_settings(output_dir, fingerprint)  # before anything loads (the launcher checked too)
    val_items = (select_validation_items(args.val_dataset_root, args.val_prompt_key, args.val_ids_file, args.dataset,
                                         args.val_count) if args.val_dataset_root else None)

    # Model: frozen base in bf16 on GPU (fp32 on CPU), LoRA adapters and AdamW state in fp32.
    cache_dir = None if args.no_cache else args.cache_dir or run_folder.default_cache_dir(output_dir)
    model, dataset, encoders = load_model(accelerator, samples, args.model_base_path, args.num_frames, args.height,
                                          args.width, args.fit, cache_dir, keep_encoders=val_items is not None)
    settings = GenerationSettings(args.num_frames, args.height, args.width, args.val_num_inference_steps,
                                  args.val_cfg_scale, fit=args.fit)  # of the validation videos
    validator = None if val_items is None else TaskValidator(accelerator, model.pipe, *encoders, val_items, settings,
                                                             output_dir, args.val_every or args.save_steps)
    lora_params = add_trainable_lora(model.pipe.dit, args.seed, args.lora_rank, args.lora_checkpoint, args.fp8_base)
    configure_dit_blocks(accelerator, model.pipe.dit, args.checkpoint_blocks, not args.no_compile, args.num_frames,
                         args.height, args.width)
    model, optimizer, adamw, scheduler = prepare_training(accelerator, model, lora_params, args.learning_rate)
    saver = checkpoints.Saver(accelerator, model, adamw, scheduler, output_dir, args.save_steps, args.keep_states)

    # Resume from the newest complete state, if any.
    progress = saver.resume(fingerprint, accumulation, args.allow_world_size_change, len(samples))
    total_steps = count_total_steps(progress, len(samples), batch, args.num_epochs, args.max_steps)
    if accelerator.is_main_process:
        open_run_folder(accelerator, output_dir, vars(args), progress, len(samples))
    if validator:
        validator.restore_history(progress.global_step)  # validations after the resumed step will be redone

    stop = _StopFlag()
    states = run_folder.states_dir(output_dir)
    watchdog = StepWatchdog(args.collective_timeout, rank, progress.global_step, states)
    bar = _progress_bar(accelerator, progress.global_step, total_steps)
    while progress.global_step < total_steps and progress.epoch < args.num_epochs:
        order, steps, prefetched = epoch_plan(dataset, args.seed, progress, batch, world, rank, accumulation)
        for start, positions in steps:
            started = time.perf_counter()
            step_samples, broken = _next_samples(prefetched, accumulation)
            if _any_rank(accelerator, broken is not None):  # every rank stops before any collective of the step
                return _end_at_broken_entry(accelerator, bar, saver, progress, broken)
            mean_loss = optimizer_step(accelerator, model, optimizer, scheduler, step_samples, positions,
                                       len(samples), args.seed, progress.epoch)
            progress.global_step += 1
            progress.sample_in_epoch = min(start + batch, len(samples))
            ended_epoch = progress.epoch if progress.sample_in_epoch == len(samples) else None
            stopping = stop.agreed(accelerator)
            exports = saver.exports_due(progress.global_step, ended_epoch)
            validating = validator is not None and validator.is_due(progress.global_step)
            saving = saver.state_due(progress.global_step, ended_epoch is not None, stopping,
                                     last=progress.global_step == total_steps)
            if diverged := _divergence(mean_loss, lora_params, check_weights=bool(exports) or validating or saving):
                return _end_early(accelerator, bar, 1, f"error: training diverged at step {progress.global_step} "
                                  f"({diverged}); nothing of this step was saved. Rerun with a lower --learning_rate: "
                                  f"it resumes from the newest state in {states}", file=sys.stderr)
            if accelerator.is_main_process:
                _log_step(accelerator, bar, output_dir, progress, mean_loss, scheduler.get_last_lr()[0], started,
                          rows=order[start:progress.sample_in_epoch])
            if ended_epoch is not None:
                progress.epoch, progress.sample_in_epoch = progress.epoch + 1, 0
            for export in exports:
                saver.export(export)
            if validating:  # before the state: a saved step was validated
                with watchdog.paused():
                    validator.run(progress.global_step, saver.current_lora)
            if saving:
                saver.save_state(progress)
            watchdog.step_finished(progress.global_step)
            if stopping:
                watchdog.stop()
                return _end_early(accelerator, bar, 128 + stop.signum, f"stopped by signal after step "
                                  f"{progress.global_step}; state saved in {states}; rerun the same command to resume")
            if progress.global_step >= total_steps:
                break

    watchdog.stop()
    bar.close()
    saver.export(run_folder.final_export(output_dir))
    if accelerator.is_main_process:
        write_training_report(output_dir)
    accelerator.end_training()
    accelerator.print(f"done: {progress.global_step} steps; LoRA in {output_dir}/ (final.safetensors, epoch-N, step-N)")
    return 0


# ---------------------------------------------------------------- setup, in main's order


def start_accelerator(output_dir: str, report_to: str, accumulation: int, collective_timeout: float,
                      expected_world_size: int):
    """accelerate on this rank, its trackers logging into the run folder; refused when the launch started another
    number of processes than the launcher meant to."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    trackers = ["tensorboard", "wandb"] if report_to == "all" else [report_to]
    logging_dir = str(run_folder.tensorboard_dir(output_dir))
    timeout = timedelta(seconds=collective_timeout + COLLECTIVE_GRACE)  # after the step watchdog's
    accelerator = Accelerator(log_with=trackers, project_config=ProjectConfiguration(output_dir, logging_dir),
                              gradient_accumulation_steps=accumulation,
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
    if accelerator.num_processes != expected_world_size:
        raise SystemExit(f"error: launched {accelerator.num_processes} training processes but expected "
                         f"{expected_world_size}; the accelerate launch is misconfigured")
    return accelerator


def load_model(accelerator, samples: list, model_base_path: str, num_frames: int, height: int, width: int, fit: str,
               cache_dir: str | Path | None, keep_encoders: bool):
    """The pipeline wrapped for the loss, the dataset to train on, and (T5, VAE) when keep_encoders (else None).

    With the latent cache (cache_dir given) a rank loads T5 and the VAE only to encode its share of the missing
    entries, then drops them from the pipeline and trains from the cache. Kept for validation, T5 waits on the CPU
    and the VAE on the device (see validation.py): whatever needs them takes them from here, not from the pipeline.
    """
    dtype = torch.bfloat16 if accelerator.device.type == "cuda" else torch.float32
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    dataset = ClipDataset(samples, num_frames, height, width, fit)
    missing = None  # with the cache: (this rank's missing entries, the texts among them, bytes present)
    if cache_dir is not None:
        cache_paths = cache.EntryPaths(samples, cache_dir, num_frames, height, width,
                                       locate_model_files(model_base_path), dtype, fit)
        missing = cache.missing_entries(cache_paths, accelerator.process_index, accelerator.num_processes)
    need_encoders = missing is None or bool(missing[0]) or keep_encoders
    pipe = load_pipeline(model_base_path, device, dtype, with_text_encoder=need_encoders, with_vae=need_encoders)
    pipe.scheduler.set_timesteps(1000, training=True)
    model = FlowMatchLoss(pipe, num_frames, height, width)
    encoders = (pipe.text_encoder, pipe.vae) if keep_encoders else None
    if missing is not None:
        cache.fill_cache(accelerator, model.encode, dataset, cache_paths, *missing)
        model.drop_encoders()
        if encoders:
            encoders[0].to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        dataset = cache.CachedDataset(cache_paths)
    return model, dataset, encoders


def add_trainable_lora(dit, seed: int, rank: int, warm_start_from: str | None, fp8_base: bool) -> list:
    """The LoRA adapters (seeded initialisation, or a warm start from a LoRA file) on the frozen base, FP8 if asked;
    returns the trainable parameters."""
    torch.manual_seed(seed)
    lora_params = add_lora(dit, rank)
    if warm_start_from:
        warm_start(dit, warm_start_from)
    if fp8_base:
        convert_block_linears(dit)
    return lora_params


def configure_dit_blocks(accelerator, dit, checkpoint_blocks: int | None, compile_blocks: bool, num_frames: int,
                         height: int, width: int) -> None:
    """Gradient checkpointing of the given number of blocks (None: as many as the device needs) and, on CUDA,
    compiled blocks (see acceleration.py)."""
    compiled = accelerator.device.type == "cuda" and compile_blocks
    checkpointed = checkpoint_blocks
    if checkpointed is None:
        checkpointed = auto_checkpoint_blocks(dit, num_frames, height, width, accelerator.device, compiled)
    configure_blocks(dit, checkpointed, compile_blocks=compiled)
    accelerator.print(f"DiT: {checkpointed} of {len(dit.blocks)} blocks checkpointed, "
                      f"{'compiled' if compiled else 'eager'}")


def prepare_training(accelerator, model, lora_params: list, learning_rate: float):
    """AdamW on the LoRA and its LR schedule, through accelerate: (model, optimizer) as accelerate wraps them, and
    the AdamW and schedule themselves."""
    from accelerate.utils import DistributedType

    optimizer = adamw = torch.optim.AdamW(lora_params, lr=learning_rate, weight_decay=1e-2)
    # DiffSynth's schedule: lr/3 for 5 steps, then lr. Stepped here once per optimizer step (accelerate would step
    # it once per process under DDP, and DeepSpeed once per step), so it is counted in optimizer steps everywhere.
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, adamw, scheduler


def count_total_steps(progress: checkpoints.Progress, num_samples: int, batch: int, num_epochs: int,
                      max_steps: int | None) -> int:
    """The step training ends after: the end of the last epoch, or --max_steps if that comes first."""
    steps_per_epoch = math.ceil(num_samples / batch)
    steps_left = (math.ceil((num_samples - progress.sample_in_epoch) / batch)
                  + (num_epochs - progress.epoch - 1) * steps_per_epoch) if progress.epoch < num_epochs else 0
    return min(progress.global_step + steps_left, max_steps or sys.maxsize)


def open_run_folder(accelerator, output_dir: Path, settings: dict, progress: checkpoints.Progress,
                    num_samples: int) -> None:
    """Main process: the output folder with this start's settings, the log cut back to the resumed step, the
    trackers, and the resume message."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_folder.training_args(output_dir), json.dumps(settings, indent=1))
    _truncate_log(run_folder.train_log(output_dir), progress.global_step)  # later steps will be redone
    # One W&B run per output folder: a resumed run continues it.
    wandb_run = dict(dir=str(output_dir), name=output_dir.resolve().name, resume="allow", config=settings,
                     id=hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:16])
    accelerator.init_trackers("wan_sft", init_kwargs={"wandb": wandb_run})
    if progress.global_step:
        print(f"resuming from step {progress.global_step} (epoch {progress.epoch}, "
              f"sample {progress.sample_in_epoch} of {num_samples})", flush=True)


# ---------------------------------------------------------------- one epoch, one step


def epoch_plan(dataset, seed: int, progress: checkpoints.Progress, batch: int, world: int, rank: int,
               accumulation: int):
    """The current epoch's sample order (a seeded permutation), its optimizer steps from the progress on, and this
    rank's samples of them, decoded ahead.

    A step is (its first position in the order, this rank's positions: micro-step m takes start + m * world + rank).
    Positions past the end (last step of an epoch) wrap around and are computed with zero weight."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + progress.epoch)).tolist()
    steps = [(start, [start + m * world + rank for m in range(accumulation)])
             for start in range(progress.sample_in_epoch, len(dataset), batch)]
    prefetched = _prefetched(dataset, [order[p % len(dataset)] for _, positions in steps for p in positions],
                             pin_memory=torch.cuda.is_available())
    return order, steps, prefetched


def _next_samples(prefetched, count: int):
    """(the next `count` samples, None), or ([], the error) when a cache entry is broken: the entry is removed, so
    that the rerun's start scan encodes it again."""
    try:
        return [next(prefetched) for _ in range(count)], None
    except cache.CacheEntryError as error:
        error.path.unlink(missing_ok=True)
        return [], error


def _end_at_broken_entry(accelerator, bar, saver: checkpoints.Saver, progress: checkpoints.Progress,
                         error: cache.CacheEntryError | None) -> int:
    """Every rank, when any rank found a broken cache entry: the progress saved (if it is not yet), and the ranks
    that found one say which."""
    bar.close()
    if progress.global_step > saver.saved_step:
        saver.save_state(progress)
    if error:
        step, states = progress.global_step, run_folder.states_dir(saver.output_dir)
        saved = f"state saved at step {step} in {states}" if step else "no step was done yet"
        print(f"error: {error}; it changed after training started (another job writing the same --cache_dir?); "
              f"removed it; {saved}; rerun the same command: it encodes the entry again and resumes",
              file=sys.stderr, flush=True)
    accelerator.end_training()
    return 1


def _end_early(accelerator, bar, code: int, message: str, file=None) -> int:
    """A diverged step or a stop signal: the bar closed, the message (main process; file None: stdout), the
    trackers ended."""
    bar.close()
    accelerator.print(message, file=file)
    accelerator.end_training()
    return code


def optimizer_step(accelerator, model, optimizer, scheduler, step_samples: list, positions: list[int],
                   num_samples: int, seed: int, epoch: int) -> float:
    """One optimizer step over this rank's samples of it (their positions in the epoch's order; those past the end
    weigh nothing); returns the mean loss over every rank's samples."""
    loss_sum = torch.zeros(2, device=accelerator.device)  # weighted loss, samples (this rank)
    for position, sample in zip(positions, step_samples, strict=True):
        weight = float(position < num_samples)
        with accelerator.accumulate(model):
            loss = model(sample, noise_seed=noise_seed(seed, epoch, position))
            accelerator.backward(loss * weight)
            optimizer.step()
            optimizer.zero_grad()
        loss_sum += torch.stack([loss.detach().float() * weight, torch.tensor(weight, device=loss.device)])
    scheduler.step()
    loss_sum = accelerator.reduce(loss_sum, reduction="sum") if accelerator.num_processes > 1 else loss_sum
    return (loss_sum[0] / loss_sum[1]).item()


def _log_step(accelerator, bar, output_dir: Path, progress: checkpoints.Progress, mean_loss: float, lr: float,
              started: float, rows: list[int]) -> None:
    """Main process: the step's train_log.jsonl line (rows: the dataset rows of the step, 0-based), trackers, bar."""
    record = dict(step=progress.global_step, epoch=progress.epoch, loss=mean_loss, lr=lr,
                  step_seconds=time.perf_counter() - started, time=time.time(), samples=rows)
    if torch.cuda.is_available():
        record["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    append_line(run_folder.train_log(output_dir), json.dumps(record))
    accelerator.log({"train/loss": mean_loss, "train/lr": lr}, step=progress.global_step)
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", epoch=progress.epoch)
    bar.update(1)


def _prefetched(dataset, indices, pin_memory: bool, depth: int = 2):
    """Decode (or read from the cache) the next samples in a thread while the GPU works (FFmpeg releases the GIL; no
    worker processes that could outlive a killed rank). With pin_memory their tensors are copied to page-locked
    memory there too, so that the step copies them to the GPU without waiting: a copy from pageable memory is staged
    by the host and synchronises it with the GPU, which has no work then."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def load(i: int) -> dict:
        sample = dataset[i]
        return {k: v.pin_memory() if pin_memory and isinstance(v, torch.Tensor) else v for k, v in sample.items()}

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = deque(pool.submit(load, i) for i in indices[:depth])
        for i in indices[depth:]:
            sample = pending.popleft().result()
            pending.append(pool.submit(load, i))
            yield sample
        while pending:
            yield pending.popleft().result()


def _divergence(mean_loss: float, lora_params, check_weights: bool) -> str | None:
    """What went non-finite in this step (the loss, or with check_weights a LoRA weight), or None.

    Every rank sees the same reduced loss and the same (replicated) LoRA, so every rank stops together. The weights
    are checked only before a step writes anything from them (an export, validation, a state): a non-finite weight
    makes the next step's loss non-finite anyway, and the check (per-tensor norms of ~600 tensors) leaves an H200
    without work for ~5 ms, ~1% of a step."""
    if not math.isfinite(mean_loss):
        return f"loss {mean_loss}"
    if check_weights:
        with torch.no_grad():
            if not torch.stack(torch._foreach_norm(lora_params)).isfinite().all():
                return "the LoRA weights' norm is inf/NaN"
    return None


def _any_rank(accelerator, flag: bool) -> bool:
    """Collective: whether any rank's flag is set."""
    flag = torch.tensor([int(flag)], device=accelerator.device)
    return bool((accelerator.reduce(flag, reduction="sum") if accelerator.num_processes > 1 else flag).item())


def _die_with_launcher() -> None:
    """torchrun starts ranks in their own sessions; without this a killed launcher leaves them training on."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the log lines up to the resumed step (a line cut short by a kill is dropped too)."""
    if path.exists():
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line)
            except (ValueError, KeyError):
                continue
        atomic_write(path, "".join(line + "\n" for line in kept))


def _progress_bar(accelerator, done: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True,
                disable=not accelerator.is_main_process)


class _StopFlag:
    """SIGTERM/SIGINT/SIGUSR1 (Slurm's pre-timeout signal) ask for a clean stop after the current step."""

    def __init__(self):
        self.signum = 0
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.signum = self.signum or signum  # idempotent: Slurm may deliver the signal twice

    def agreed(self, accelerator) -> bool:
        """Every rank stops at the same step if any rank got a signal."""
        flag = torch.tensor([self.signum], device=accelerator.device, dtype=torch.int64)
        flag = accelerator.reduce(flag, reduction="sum") if accelerator.num_processes > 1 else flag
        if flag.item() and not self.signum:
            self.signum = signal.SIGTERM
        return bool(flag.item())


if __name__ == "__main__":
    from .cli import run_entry

    # InputError: the output folder holds a run with other settings. WriteFailed: this rank's partial files are
    # removed; every earlier output is complete.
    sys.exit(run_entry(main, sys.argv[1:], input_error_exit=1,
                       write_failed_advice="Earlier exports and the newest complete state are intact: free space and "
                                           "rerun the same command to resume"))
