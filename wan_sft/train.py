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

from . import cache, checkpoints, config, portable_state
from .acceleration import auto_checkpoint_blocks, configure_blocks
from .data import ClipDataset, read_training_csv
from .fp8 import convert_block_linears
from .fsutil import append_line, atomic_write
from .lora import add_lora, export_lora, lora_state_dict, warm_start
from .model_files import load_pipeline, locate_model_files
from .report import write_training_report
from .validation import TaskValidator
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
            inputs = {**self.training_inputs, **{k: sample[k].to(device) for k in cache.CACHED_INPUTS}}
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
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration

    trackers = ["tensorboard", "wandb"] if args.report_to == "all" else [args.report_to]
    logging_dir = str(Path(args.output_dir) / "tensorboard")
    collective_timeout = timedelta(seconds=args.collective_timeout + COLLECTIVE_GRACE)  # after the step watchdog's
    accelerator = Accelerator(log_with=trackers, project_config=ProjectConfiguration(args.output_dir, logging_dir),
                              gradient_accumulation_steps=args.gradient_accumulation_steps,
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=collective_timeout)])
    if accelerator.num_processes != args.expected_world_size:
        raise SystemExit(f"error: launched {accelerator.num_processes} training processes but expected "
                         f"{args.expected_world_size}; the accelerate launch is misconfigured")
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    rank, world = accelerator.process_index, accelerator.num_processes
    output_dir = Path(args.output_dir)

    # Data: a seeded permutation per epoch, batch (= world x accumulation) samples of it per optimizer step.
    samples = read_training_csv(args.dataset)
    fingerprint = checkpoints.run_fingerprint(args, len(samples))
    checkpoints.check_same_settings(output_dir, fingerprint)  # before anything loads (the launcher checked too)
    dataset = ClipDataset(samples, args.num_frames, args.height, args.width, args.fit)
    accumulation = args.gradient_accumulation_steps
    batch = world * accumulation

    # Model: frozen base in bf16 on GPU (fp32 on CPU), LoRA adapters and AdamW state in fp32. With the latent
    # cache (default) a rank loads T5 and the VAE only to encode its share of missing entries, then drops them
    # (unless validation generates videos: then it keeps them, T5 on the CPU; see validation.py).
    dtype = torch.bfloat16 if accelerator.device.type == "cuda" else torch.float32
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    if not args.no_cache:
        cache_paths = cache.EntryPaths(samples, args.cache_dir or output_dir / "latent_cache", args.num_frames,
                                       args.height, args.width, locate_model_files(args.model_base_path), dtype,
                                       args.fit)
        my_missing, texts_missing, present_bytes = cache.missing_entries(cache_paths, rank, world)
    need_encoders = args.no_cache or bool(my_missing) or bool(args.val_dataset_root)
    pipe = load_pipeline(args.model_base_path, device, dtype, with_text_encoder=need_encoders, with_vae=need_encoders)
    pipe.scheduler.set_timesteps(1000, training=True)
    model = FlowMatchLoss(pipe, args.num_frames, args.height, args.width)
    validator = TaskValidator(args, accelerator, pipe) if args.val_dataset_root else None
    if not args.no_cache:
        cache.fill_cache(accelerator, model.encode, dataset, cache_paths, my_missing, texts_missing, present_bytes)
        model.drop_encoders()
        if validator:
            validator.offload_text_encoder()
        dataset = cache.CachedDataset(cache_paths)
    torch.manual_seed(args.seed)
    lora_params = add_lora(pipe.dit, args.lora_rank)
    if args.lora_checkpoint:
        warm_start(pipe.dit, args.lora_checkpoint)
    if args.fp8_base:
        convert_block_linears(pipe.dit, training=True)
    compiled = accelerator.device.type == "cuda" and not args.no_compile
    checkpointed = args.checkpoint_blocks
    if checkpointed is None:
        checkpointed = auto_checkpoint_blocks(pipe.dit, args.num_frames, args.height, args.width,
                                              accelerator.device, compiled)
    configure_blocks(pipe.dit, checkpointed, compile_blocks=compiled)
    accelerator.print(f"DiT: {checkpointed} of {len(pipe.dit.blocks)} blocks checkpointed, "
                      f"{'compiled' if compiled else 'eager'}")
    optimizer = adamw = torch.optim.AdamW(lora_params, lr=args.learning_rate, weight_decay=1e-2)
    # DiffSynth's schedule: lr/3 for 5 steps, then lr. Stepped here once per optimizer step (accelerate would step
    # it once per process under DDP, and DeepSpeed once per step), so it is counted in optimizer steps everywhere.
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if deepspeed:
        configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config)
    model, optimizer = accelerator.prepare(model, optimizer)
    if deepspeed:
        from deepspeed.utils import safe_get_full_fp32_param as full_param
        save_kwargs, load_kwargs = dict(exclude_frozen_parameters=True), dict(load_module_strict=False)
    else:
        full_param, save_kwargs, load_kwargs = (lambda p: p), {}, dict(strict=False)
        accelerator.register_save_state_pre_hook(_keep_only_trainable_weights)

    # Resume from the newest complete state, if any.
    def load_state(state: Path, saved: checkpoints.Progress) -> None:
        saved_shape = (saved.world_size, saved.gradient_accumulation_steps)
        if saved_shape == (world, accumulation):
            accelerator.load_state(str(state), **load_kwargs)
            return
        change = (f"{world} processes x {accumulation} accumulation steps instead of {saved_shape[0]} x "
                  f"{saved_shape[1]}: global batch {batch} samples per optimizer step instead of "
                  f"{saved_shape[0] * saved_shape[1]}")
        if not args.allow_world_size_change:
            raise SystemExit(f"error: {state} was saved by {saved_shape[0]} processes x {saved_shape[1]} accumulation "
                             f"steps; to continue it with {change}, rerun with --allow_world_size_change (or use "
                             f"{saved_shape[0]} processes and --gradient_accumulation_steps {saved_shape[1]})")
        portable_state.load(state / portable_state.FILE, accelerator.unwrap_model(model).dit, adamw, scheduler,
                            deepspeed)
        accelerator.print(f"resuming with {change} (--allow_world_size_change); epoch {saved.epoch} continues from "
                          f"sample {saved.sample_in_epoch} of {len(samples)}", flush=True)

    progress = (checkpoints.resume(accelerator, output_dir, fingerprint, load=load_state)
                or checkpoints.Progress(run_fingerprint=fingerprint))
    progress.world_size, progress.gradient_accumulation_steps = world, accumulation
    steps_per_epoch = math.ceil(len(samples) / batch)
    steps_left = (math.ceil((len(samples) - progress.sample_in_epoch) / batch)
                  + (args.num_epochs - progress.epoch - 1) * steps_per_epoch) if progress.epoch < args.num_epochs else 0
    total_steps = min(progress.global_step + steps_left, args.max_steps or sys.maxsize)
    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(output_dir / "training_args.json", json.dumps(vars(args), indent=1))
        _truncate_log(log_path, progress.global_step)  # steps after the resumed state will be redone
        # One W&B run per output folder: a resumed run continues it.
        wandb_run = dict(dir=str(output_dir), name=output_dir.resolve().name, resume="allow", config=vars(args),
                         id=hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:16])
        accelerator.init_trackers("wan_sft", init_kwargs={"wandb": wandb_run})
        if progress.global_step:
            print(f"resuming from step {progress.global_step} (epoch {progress.epoch}, "
                  f"sample {progress.sample_in_epoch} of {len(samples)})", flush=True)
    if validator:
        validator.restore_history(progress.global_step)  # validations after the resumed step will be redone

    stop = _StopFlag()
    watchdog = StepWatchdog(args.collective_timeout, rank, progress.global_step, checkpoints.states_dir(output_dir))
    saved_step = progress.global_step  # the newest complete state's step (0: none)
    bar = _progress_bar(accelerator, progress.global_step, total_steps)

    def current_lora():  # collective under DeepSpeed (ZeRO gathers the fp32 values)
        return lora_state_dict(accelerator.unwrap_model(model).dit, full_param)

    def save_state():  # collective; returns the step saved
        portable = portable_state.gather(accelerator.unwrap_model(model).dit, adamw, scheduler, deepspeed)
        checkpoints.save(accelerator, output_dir, progress, args.keep_states,
                         extra_files={portable_state.FILE: portable}, **save_kwargs)
        return progress.global_step

    def save_lora(name):
        state = current_lora()
        if accelerator.is_main_process:
            export_lora(state, output_dir / f"{name}.safetensors")

    while progress.global_step < total_steps and progress.epoch < args.num_epochs:
        epoch_generator = torch.Generator().manual_seed(args.seed + progress.epoch)
        order = torch.randperm(len(samples), generator=epoch_generator).tolist()
        step_starts = range(progress.sample_in_epoch, len(samples), batch)
        # This rank's positions; those past the end (last step of an epoch) are computed with zero weight.
        positions = [start + m * world + rank for start in step_starts for m in range(accumulation)]
        prefetched = _prefetched(dataset, [order[p % len(samples)] for p in positions])
        for start in step_starts:
            started = time.perf_counter()
            step_samples, broken = [], None
            try:  # the whole step's samples first: a broken cache entry stops every rank before any collective
                step_samples = [next(prefetched) for _ in range(accumulation)]
            except cache.CacheEntryError as error:
                broken = error
                broken.path.unlink(missing_ok=True)  # so that the rerun's start scan encodes it again
            if _any_rank(accelerator, broken is not None):
                bar.close()
                if progress.global_step > saved_step:
                    save_state()
                if broken:
                    saved = (f"state saved at step {progress.global_step} in {checkpoints.states_dir(output_dir)}"
                             if progress.global_step else "no step was done yet")
                    print(f"error: {broken}; it changed after training started (another job writing the same "
                          f"--cache_dir?); removed it; {saved}; rerun the same command: it encodes the entry again "
                          f"and resumes",
                          file=sys.stderr, flush=True)
                accelerator.end_training()
                return 1
            loss_sum = torch.zeros(2, device=accelerator.device)  # weighted loss, samples (this rank)
            for position, sample in zip(positions[:accumulation], step_samples, strict=True):
                weight = float(position < len(samples))
                with accelerator.accumulate(model):
                    loss = model(sample, noise_seed=noise_seed(args.seed, progress.epoch, position))
                    accelerator.backward(loss * weight)
                    optimizer.step()
                    optimizer.zero_grad()
                loss_sum += torch.stack([loss.detach().float() * weight, torch.tensor(weight, device=loss.device)])
            positions = positions[accumulation:]
            scheduler.step()
            progress.global_step += 1
            progress.sample_in_epoch = min(start + batch, len(samples))
            loss_sum = accelerator.reduce(loss_sum, reduction="sum") if world > 1 else loss_sum
            mean_loss = (loss_sum[0] / loss_sum[1]).item()
            if diverged := _divergence(mean_loss, lora_params):
                bar.close()
                accelerator.print(f"error: training diverged at step {progress.global_step} ({diverged}); nothing of "
                                  f"this step was saved. Rerun with a lower --learning_rate: it resumes from the "
                                  f"newest state in {checkpoints.states_dir(output_dir)}", file=sys.stderr)
                accelerator.end_training()
                return 1
            lr = scheduler.get_last_lr()[0]
            if accelerator.is_main_process:
                record = dict(step=progress.global_step, epoch=progress.epoch, loss=mean_loss, lr=lr,
                              step_seconds=time.perf_counter() - started, time=time.time(),
                              samples=order[start:progress.sample_in_epoch])  # dataset rows of this step (0-based)
                if torch.cuda.is_available():
                    record["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                append_line(log_path, json.dumps(record))
                accelerator.log({"train/loss": mean_loss, "train/lr": lr}, step=progress.global_step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", epoch=progress.epoch)
                bar.update(1)
            end_of_epoch = progress.sample_in_epoch == len(samples)
            if end_of_epoch:
                progress.epoch, progress.sample_in_epoch = progress.epoch + 1, 0
            stopping = stop.agreed(accelerator)
            if progress.global_step % args.save_steps == 0:
                save_lora(f"step-{progress.global_step}")
            if end_of_epoch:
                save_lora(f"epoch-{progress.epoch - 1}")
            if validator and validator.is_due(progress.global_step):  # before the state: a saved step was validated
                with watchdog.paused():
                    validator.run(progress.global_step, current_lora)
            if (progress.global_step % args.save_steps == 0 or end_of_epoch or stopping
                    or progress.global_step == total_steps):
                saved_step = save_state()
            watchdog.step_finished(progress.global_step)
            if stopping:
                watchdog.stop()
                bar.close()
                accelerator.print(f"stopped by signal after step {progress.global_step}; state saved in "
                                  f"{checkpoints.states_dir(output_dir)}; rerun the same command to resume")
                accelerator.end_training()
                return 128 + stop.signum
            if progress.global_step >= total_steps:
                break

    watchdog.stop()
    bar.close()
    save_lora("final")
    if accelerator.is_main_process:
        write_training_report(output_dir)
    accelerator.end_training()
    accelerator.print(f"done: {progress.global_step} steps; LoRA in {output_dir}/ (final.safetensors, epoch-N, step-N)")
    return 0


def _prefetched(dataset, indices, depth: int = 2):
    """Decode the next samples in a thread while the GPU works (FFmpeg releases the GIL; no worker processes
    that could outlive a killed rank)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = deque(pool.submit(dataset.__getitem__, i) for i in indices[:depth])
        for i in indices[depth:]:
            sample = pending.popleft().result()
            pending.append(pool.submit(dataset.__getitem__, i))
            yield sample
        while pending:
            yield pending.popleft().result()


def _divergence(mean_loss: float, lora_params) -> str | None:
    """What went non-finite in this step (the loss, or the LoRA weights' norm: one fused kernel), or None.

    Every rank sees the same reduced loss and the same (replicated) LoRA, so every rank stops together."""
    if not math.isfinite(mean_loss):
        return f"loss {mean_loss}"
    if not torch.isfinite(torch.nn.utils.get_total_norm([p.detach() for p in lora_params])):
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


def _keep_only_trainable_weights(models, weights, output_dir):
    """accelerate saves whole state dicts; the frozen base is already on disk, so keep the LoRA only."""
    for model, state in zip(models, weights, strict=True):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in trainable]:
            del state[key]


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
