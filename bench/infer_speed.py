"""Inference speed per video, stock DiffSynth pipeline vs ours (compiled DiT blocks), same card, one process.

    python bench/infer_speed.py --model_base_path /path/to/5b [--num_inference_steps 50 --cfg_scale 5]

Prints seconds per video for both, the ratio, and the PSNR of our decoded frames against stock (same seed).
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
from wan_sft.acceleration import configure_blocks  # noqa: E402
from wan_sft.inference import GenerationSettings, generate, load_generator, read_image  # noqa: E402
from wan_sft.puzzles import generate_maze_task  # noqa: E402


def psnr(a: list, b: list) -> float:
    x = np.stack([np.asarray(f, dtype=np.float64) for f in a])
    y = np.stack([np.asarray(f, dtype=np.float64) for f in b])
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def timed(pipe, image, prompt, settings) -> tuple[float, list]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    frames = generate(pipe, image, prompt, settings)
    torch.cuda.synchronize()
    return time.perf_counter() - start, frames


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--cfg_scale", type=float, default=5.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    settings = GenerationSettings(num_inference_steps=args.num_inference_steps, cfg_scale=args.cfg_scale)
    with tempfile.TemporaryDirectory() as tmp:
        record = generate_maze_task(tmp, 1, grid_sizes=(7,), num_frames=5)[0]
        image = read_image(Path(tmp) / "maze_square" / record["image"])
    pipe, _ = load_generator(args.model_base_path, None, "cuda")
    warmup = GenerationSettings(num_inference_steps=2, cfg_scale=args.cfg_scale)

    generate(pipe, image, record["prompt"], warmup)
    stock_seconds, stock_frames = timed(pipe, image, record["prompt"], settings)
    configure_blocks(pipe.dit, checkpointed_blocks=0, compile_blocks=True)
    start = time.perf_counter()
    generate(pipe, image, record["prompt"], warmup)
    compile_seconds = time.perf_counter() - start
    our_seconds, our_frames = timed(pipe, image, record["prompt"], settings)

    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, steps=args.num_inference_steps,
                  cfg=args.cfg_scale, stock_seconds=stock_seconds, our_seconds=our_seconds,
                  speedup=stock_seconds / our_seconds, compile_warmup_seconds=compile_seconds,
                  psnr_db=psnr(stock_frames, our_frames))
    print(json.dumps(result, indent=1))
    print(f"\n{result['gpu']}: stock {stock_seconds:.1f} s/video, ours {our_seconds:.1f} s/video "
          f"({result['speedup']:.2f}x), PSNR vs stock {result['psnr_db']:.1f} dB, one-time compile {compile_seconds:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
