"""Training speed, stock DiffSynth loop vs ours, on one GPU in one process (same card, same weights, same clip).

stock: every step runs DiffSynth's pipeline units (VAE + T5 encode) and FlowMatchSFTLoss with gradient
       checkpointing on every block, LoRA in bf16, AdamW + ConstantLR (DiffSynth's example trainer).
ours:  inputs from the latent cache (T5 and VAE dropped), LoRA + AdamW state in fp32 under bf16 autocast,
       compiled blocks, selective checkpointing (several settings, each measured); with --deepspeed also the
       launcher's step (accelerate + DeepSpeed ZeRO-2 with train.configure_deepspeed's settings).
fp8:   with --fp8, the same as ours after the frozen block linears go to FP8 (`--fp8_base`, approximate).
losses: with --loss_steps N, N steps of ours bf16 and then of ours FP8 from the same LoRA init and the same noise
       seeds; the smoothed losses (moving average of 20) are compared: mean and max relative difference.

TFLOP/s count the matmuls a step executes (acceleration.dit_training_flops: forward, input gradients of the block
linears, attention's backward, the recomputed forward of checkpointed blocks); the frozen base computes no weight
gradients, so this is not 3x the forward.

    python bench/train_speed.py --model_base_path /path/to/5b [--steps 6] [--checkpoint_blocks 30,12,auto] [--fp8]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from profiling import attention_kernels, gpu_idle, time_tables  # noqa: E402
from torch.profiler import record_function  # noqa: E402

from wan_sft.acceleration import auto_checkpoint_blocks, configure_blocks, dit_training_flops, video_tokens  # noqa: E402
from wan_sft.data import load_clip  # noqa: E402
from wan_sft.fp8 import convert_block_linears  # noqa: E402
from wan_sft.lora import add_lora  # noqa: E402
from wan_sft.model_files import keep_rope_frequencies_on, load_pipeline  # noqa: E402
from wan_sft.puzzles import generate_maze_task  # noqa: E402
from wan_sft.report import moving_average  # noqa: E402
from wan_sft.train import FlowMatchLoss, configure_deepspeed  # noqa: E402


def measure(step, steps: int, warmup: int = 2) -> dict:
    """Median step time after warm-up; `step(i)` returns the loss of step i (same seeds in every run)."""
    cuda = torch.cuda.is_available()
    losses = [step(i) for i in range(warmup)]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        losses.append(step(i))
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return dict(seconds=statistics.median(times), all_seconds=times, losses=losses,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)


def compare_losses(reference: list[float], other: list[float], window: int = 20) -> dict:
    """Mean and max relative difference of the two loss curves after a moving average of `window` steps."""
    ref, oth = moving_average(reference, window), moving_average(other, window)
    rel = [abs(o - r) / abs(r) for r, o in zip(ref, oth, strict=True)]
    return dict(window=window, steps=len(rel), mean_relative=statistics.mean(rel), max_relative=max(rel))


def deepspeed_run(model, cached: dict, lora, fresh_optimizer, shape, args) -> dict:
    """The launcher's training step in this process: accelerate + DeepSpeed ZeRO-2 bf16 (one rank, the launcher's
    DeepSpeed settings), the default block settings; then the same with the RoPE tables where DiffSynth keeps them
    (the CPU); a profile of one step, and where the GPU sat idle over three (with their Chrome trace), are written
    beside --out.

    Last, because DeepSpeed casts the module to bf16 for good."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT="29517")
    dit, device = model.dit, torch.device("cuda")
    checkpointed = auto_checkpoint_blocks(dit, *shape, device, compiled=True)
    configure_blocks(dit, checkpointed, compile_blocks=True)
    optimizer, scheduler = fresh_optimizer(torch.float32)
    plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=1, offload_optimizer_device="none",
                             offload_param_device="none", zero3_init_flag=False)
    accelerator = Accelerator(mixed_precision="bf16", deepspeed_plugin=plugin)
    configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config)
    engine, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def step(i):
        with record_function("step:forward"):
            loss = engine({**cached}, noise_seed=i)
        with record_function("step:backward"):
            accelerator.backward(loss)  # DeepSpeed: backward, gradient reduction and the optimizer step
        with record_function("step:optimizer"):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        with record_function("step:loss.item"):
            return loss.item()

    result = dict(measure(step, args.steps, warmup=3), checkpointed=checkpointed)
    keep_rope_frequencies_on(dit, "cpu")  # where DiffSynth keeps them: what moving them saves, same process
    result["seconds_rope_tables_on_cpu"] = measure(step, args.steps, warmup=1)["seconds"]
    keep_rope_frequencies_on(dit, device)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".launcher_profile.txt").write_text(time_tables(lambda: step(0)))
        idle = gpu_idle(lambda: [step(i) for i in range(3)], trace_path=out.with_suffix(".launcher_trace.json.gz"))
        out.with_suffix(".launcher_idle.txt").write_text(idle)
        print(f"GPU idle over three launcher steps:\n{idle}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--num_frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=896)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--lora_rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--checkpoint_blocks", default="30,auto", help="comma list of ints or 'auto'")
    parser.add_argument("--deepspeed", action="store_true",
                        help="also time the launcher's step: accelerate + DeepSpeed ZeRO-2, default blocks (GPU)")
    parser.add_argument("--fp8", action="store_true", help="also time the FP8 base (--fp8_base) after the bf16 runs")
    parser.add_argument("--loss_steps", type=int, default=0,
                        help="compare N-step same-seed loss curves, ours bf16 vs ours FP8 (needs --fp8)")
    parser.add_argument("--skip_stock", action="store_true", help="do not time the stock loop")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: a quick check on the tiny model
    shape = (args.num_frames, args.height, args.width)

    with tempfile.TemporaryDirectory() as tmp:
        record = generate_maze_task(tmp, 1, grid_sizes=(7 if args.width >= 256 else 3,), width=args.width,
                                    height=args.height, num_frames=args.num_frames, layout="vlmpuzzle")[0]
        clip = load_clip(Path(tmp) / "maze_square" / "solutions" / f"{record['id']}_solution.mp4", *shape)
    sample = {"video": clip, "prompt": record["prompt"]}

    pipe = load_pipeline(args.model_base_path, str(device), torch.bfloat16 if device.type == "cuda" else torch.float32)
    pipe.scheduler.set_timesteps(1000, training=True)
    model = FlowMatchLoss(pipe, *shape)
    torch.manual_seed(0)
    lora = add_lora(pipe.dit, args.lora_rank)
    tokens = video_tokens(*shape)
    results = dict(gpu=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                   shape=shape, tokens=tokens, runs={})

    initial_lora = [p.detach().clone() for p in lora]

    def fresh_optimizer(dtype):
        """Same LoRA init, same seeds, same schedule (DiffSynth's: lr/3 for 5 steps) for every run, so the loss
        curves are comparable."""
        for p, init in zip(lora, initial_lora, strict=True):
            p.data = init.to(dtype).clone()
        optimizer = torch.optim.AdamW(lora, lr=1e-4, weight_decay=1e-2)
        return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer)

    # Stock: LoRA in bf16, units every step, every block checkpointed (DiffSynth's use_gradient_checkpointing).
    optimizer, scheduler = fresh_optimizer(torch.bfloat16)
    stock_inputs = dict(model.training_inputs, use_gradient_checkpointing=True)

    def stock_step(i):
        from diffsynth.diffusion import FlowMatchSFTLoss

        shared = dict(input_video=sample["video"], input_image=sample["video"][0], **stock_inputs)
        posi, nega = {"prompt": sample["prompt"]}, {}
        for unit in pipe.units:
            shared, posi, nega = pipe.unit_runner(unit, pipe, shared, posi, nega)
        torch.manual_seed(i)
        loss = FlowMatchSFTLoss(pipe, **shared, **posi)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return loss.item()

    if not args.skip_stock:
        keep_rope_frequencies_on(pipe.dit, "cpu")  # where DiffSynth keeps them
        results["runs"]["stock"] = measure(stock_step, args.steps)
        results["runs"]["stock"]["checkpointed"] = len(pipe.dit.blocks)
        print("stock", json.dumps(results["runs"]["stock"]), flush=True)
        keep_rope_frequencies_on(pipe.dit, device)

    # Ours: cached inputs, fp32 LoRA + Adam under bf16 autocast, only the DiT resident.
    cached = {k: v for k, v in model.encode(sample).items() if k in ("input_latents", "first_frame_latents", "context")}
    model.drop_encoders()

    def our_step(i):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model({**cached}, noise_seed=i)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return loss.item()

    def ours(setting, compiled, name):
        nonlocal optimizer, scheduler
        blocks = auto_checkpoint_blocks(pipe.dit, *shape, device, compiled) if setting == "auto" else int(setting)
        configure_blocks(pipe.dit, blocks, compile_blocks=compiled)
        optimizer, scheduler = fresh_optimizer(torch.float32)
        name = f"{name}_ckpt{blocks}{'_compiled' if compiled else ''}"
        try:
            results["runs"][name] = dict(measure(our_step, args.steps, warmup=3 if compiled else 2),
                                         checkpointed=blocks)
            if device.type == "cuda":
                results["runs"][name]["attention_kernels"] = attention_kernels(lambda: our_step(0))
            if device.type == "cuda" and compiled and setting == "auto" and args.out:
                Path(args.out).with_suffix(f".{name}_profile.txt").write_text(time_tables(lambda: our_step(0)))
        except torch.OutOfMemoryError:
            results["runs"][name] = dict(error="out of memory")
            torch.cuda.empty_cache()
        print(name, json.dumps(results["runs"][name]), flush=True)

    def loss_curve(name):
        """--loss_steps steps from the same LoRA init with the same noise seeds (default blocks, compiled on GPU)."""
        nonlocal optimizer, scheduler
        configure_blocks(pipe.dit, auto_checkpoint_blocks(pipe.dit, *shape, device, device.type == "cuda"),
                         compile_blocks=device.type == "cuda")
        optimizer, scheduler = fresh_optimizer(torch.float32)
        results.setdefault("losses", {})[name] = [our_step(i) for i in range(args.loss_steps)]

    settings = [(setting, compiled) for setting in args.checkpoint_blocks.split(",")
                for compiled in ((False, True) if device.type == "cuda" else (False,))]
    for setting, compiled in settings:
        ours(setting, compiled, "ours")
    if args.fp8 and args.loss_steps:
        loss_curve("bf16")
    if args.fp8:
        print("FP8 base linears:", convert_block_linears(pipe.dit), flush=True)
        for setting, compiled in settings:
            if compiled or device.type != "cuda":
                ours(setting, compiled, "fp8")
        if args.loss_steps:
            loss_curve("fp8")
            results["loss_comparison"] = compare_losses(results["losses"]["bf16"], results["losses"]["fp8"])
            print("smoothed-loss difference, fp8 vs bf16:", json.dumps(results["loss_comparison"]), flush=True)
    if args.deepspeed:
        results["runs"]["launcher"] = deepspeed_run(model, cached, lora, fresh_optimizer, shape, args)
        print("launcher", json.dumps(results["runs"]["launcher"]), flush=True)

    stock = results["runs"]["stock"]["seconds"] if "stock" in results["runs"] else float("nan")
    print(f"\n{results['gpu']}, torch {results['torch']}, {shape[0]}x{shape[1]}x{shape[2]} ({tokens} tokens)")
    print(f"{'run':40s} {'s/sample':>9s} {'vs stock':>9s} {'peak GiB':>9s} {'DiT TFLOP/s':>12s}")
    for name, run in results["runs"].items():
        if "seconds" in run:
            run["dit_tflops"] = dit_training_flops(pipe.dit, tokens, run["checkpointed"]) / run["seconds"] / 1e12
            print(f"{name:40s} {run['seconds']:9.3f} {stock / run['seconds']:8.2f}x {run['peak_gib']:9.1f} "
                  f"{run['dit_tflops']:12.0f}")
        else:
            print(f"{name:40s} {run['error']}")
    print("losses (same seeds):",
          {name: [round(x, 4) for x in run.get("losses", [])] for name, run in results["runs"].items()})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
