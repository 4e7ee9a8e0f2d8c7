"""Inference speed per video, stock DiffSynth pipeline vs ours, same card, one process.

    python bench/infer_speed.py --model_base_path /path/to/5b [--num_inference_steps 50 --cfg_scale 5]

Runs, on the same pipeline and seed: stock, ours as parallel_eval.py generates (compiled DiT blocks, untiled VAE
decode, both cfg branches in one batch), and ours with `--fp8` (approximate: DiT block linears in FP8,
wan_sft/fp8.py). For each: seconds per video,
split into the fixed part (T5, VAE encode/decode) and per denoising step, the DiT's achieved TFLOP/s (FP8 counted
like bf16), the PSNR of the decoded frames against stock and against ours bf16, the per-frame agreement of the
eyeballing scorer's red mask with ours bf16 (the scorer's view), and the attention kernels that ran.
Then VAE decode alone, tiled (DiffSynth's default) vs untiled: time, peak memory, PSNR.
Measured before and dropped: cuDNN autotuning of the VAE (no change); measured before and kept: cfg batching
(1.6%) (bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from profiling import attention_kernels  # noqa: E402

from wan_sft.acceleration import configure_blocks, dit_forward_flops, video_tokens  # noqa: E402
from wan_sft.fp8 import convert_block_linears  # noqa: E402
from wan_sft.inference import GenerationSettings, generate, load_generator, read_image  # noqa: E402
from wan_sft.model_files import keep_rope_frequencies_on  # noqa: E402
from wan_sft.puzzles import generate_maze_task  # noqa: E402
from wan_sft.scoring import eyeballing_red_mask  # noqa: E402


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 0..255 arrays."""
    mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def timed(call) -> tuple[float, object]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = call()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def red_mask_agreement(frames: np.ndarray, reference: np.ndarray) -> dict:
    """Per frame, the share of pixels where the eyeballing red mask agrees, and the IoU of the masks where either
    has red; means over frames."""
    agree, ious = [], []
    for frame, ref in zip(frames, reference, strict=True):
        a, b = eyeballing_red_mask(frame), eyeballing_red_mask(ref)
        agree.append(float((a == b).mean()))
        if (a | b).any():
            ious.append(float((a & b).sum() / (a | b).sum()))
    return dict(pixel_agreement=float(np.mean(agree)), mean_iou=float(np.mean(ious)) if ious else None,
                frames_with_red=len(ious))


class StockCall:
    """The pipeline as DiffSynth's examples call it: every default, so the VAE decodes in tiles."""

    def __init__(self, pipe):
        self.pipe, self.device = pipe, pipe.device

    def __call__(self, tiled, cfg_merge, **kwargs):
        return self.pipe(**kwargs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--cfg_scale", type=float, default=5.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    settings = GenerationSettings(num_inference_steps=args.num_inference_steps, cfg_scale=args.cfg_scale)
    one_step = GenerationSettings(num_inference_steps=1, cfg_scale=args.cfg_scale)
    with tempfile.TemporaryDirectory() as tmp:
        record = generate_maze_task(tmp, 1, grid_sizes=(7,), width=480, height=896, num_frames=5,
                                    layout="vlmpuzzle")[0]
        image = read_image(Path(tmp) / "maze_square" / record["image"])
    prompt = record["prompt"]
    pipe, _ = load_generator(args.model_base_path, None, "cuda")
    forwards_per_step = 2 if args.cfg_scale != 1 else 1
    step_flops = forwards_per_step * dit_forward_flops(
        pipe.dit, video_tokens(settings.num_frames, settings.height, settings.width))

    variants = [  # name, what generate() calls, compile blocks, FP8
        ("stock DiffSynth pipeline (tiled VAE decode)", StockCall(pipe), False, False),
        ("ours: compiled DiT blocks, untiled VAE decode, cfg batched", pipe, True, False),
        ("ours --fp8 (approximate)", pipe, True, True),
    ]
    runs, stock_frames, bf16_frames = {}, None, None
    for name, runner, compiled, fp8 in variants:
        if fp8:
            print("FP8 linears:", convert_block_linears(pipe.dit), flush=True)
        if compiled:
            configure_blocks(pipe.dit, checkpointed_blocks=0, compile_blocks=True)
        keep_rope_frequencies_on(pipe.dit, "cuda" if compiled else "cpu")  # stock: where DiffSynth keeps them
        torch.cuda.reset_peak_memory_stats()
        warmup_seconds, _ = timed(lambda runner=runner: generate(runner, image, prompt, one_step))
        kernels = attention_kernels(lambda runner=runner: generate(runner, image, prompt, one_step))
        one_seconds, _ = timed(lambda runner=runner: generate(runner, image, prompt, one_step))
        seconds, frames = timed(lambda runner=runner: generate(runner, image, prompt, settings))
        frames = np.stack([np.asarray(frame) for frame in frames])
        per_step = (seconds - one_seconds) / (settings.num_inference_steps - 1)
        stock_frames = frames if stock_frames is None else stock_frames
        bf16_frames = frames if compiled and not fp8 else bf16_frames
        runs[name] = dict(seconds=seconds, per_step_seconds=per_step, fixed_seconds=one_seconds - per_step,
                          dit_tflops=step_flops / per_step / 1e12, warmup_seconds=warmup_seconds,
                          peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                          psnr_vs_stock_db=psnr(stock_frames, frames), attention_kernels=kernels)
        if bf16_frames is not None:
            runs[name].update(psnr_vs_bf16_db=psnr(bf16_frames, frames),
                              red_mask_vs_bf16=red_mask_agreement(frames, bf16_frames))
        print(name, json.dumps(runs[name]), flush=True)

    latents = torch.randn(1, 48, (settings.num_frames - 1) // 4 + 1, settings.height // 16, settings.width // 16,
                          device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(0))
    decode = {}
    for tiled in (True, False):
        pipe.vae.decode(latents, device="cuda", tiled=tiled)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds, video = timed(lambda tiled=tiled: pipe.vae.decode(latents, device="cuda", tiled=tiled))
        extra_gib = (torch.cuda.max_memory_allocated() - before) / 2**30
        decode[tiled] = seconds, extra_gib, ((video.float().clamp(-1, 1) + 1) * 127.5).cpu().numpy()
    untiled_psnr = psnr(decode[True][2], decode[False][2])
    vae = dict(tiled_seconds=decode[True][0], untiled_seconds=decode[False][0], tiled_extra_gib=decode[True][1],
               untiled_extra_gib=decode[False][1], untiled_psnr_vs_tiled_db=untiled_psnr)

    stock = runs[variants[0][0]]["seconds"]
    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, steps=args.num_inference_steps,
                  cfg=args.cfg_scale, dit_step_tflop=step_flops / 1e12, runs=runs, vae_decode=vae)
    print(json.dumps(result, indent=1))
    print(f"\n{result['gpu']}, torch {result['torch']}, {args.num_inference_steps} steps, cfg {args.cfg_scale}")
    bf16 = runs[variants[1][0]]["seconds"]
    print(f"{'run':50s} {'s/video':>8s} {'vs stock':>9s} {'vs bf16':>8s} {'s/step':>7s} {'fixed s':>8s} "
          f"{'TFLOP/s':>8s} {'PSNR/stock':>11s} {'PSNR/bf16':>10s}")
    for name, run in runs.items():
        print(f"{name:50s} {run['seconds']:8.1f} {stock / run['seconds']:8.2f}x {bf16 / run['seconds']:7.2f}x "
              f"{run['per_step_seconds']:7.3f} {run['fixed_seconds']:8.2f} {run['dit_tflops']:8.0f} "
              f"{run['psnr_vs_stock_db']:11.1f} {run.get('psnr_vs_bf16_db', float('nan')):10.1f}")
    print(f"VAE decode: tiled {vae['tiled_seconds']:.2f} s (+{vae['tiled_extra_gib']:.1f} GiB), untiled "
          f"{vae['untiled_seconds']:.2f} s (+{vae['untiled_extra_gib']:.1f} GiB), PSNR {untiled_psnr:.1f} dB vs tiled")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
