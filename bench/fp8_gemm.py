"""The FP8 linears' parts timed alone at the 5B's training shapes (8820 tokens; 3072x3072, 3072->14336, 14336->3072).

Matmuls: bf16, `torch._scaled_mm` with row-wise and with tensor-wise scales, each with and without fast accumulation
(Hopper's FP8 tensor cores accumulate in reduced precision unless the library promotes to fp32 every few k-steps;
`use_fast_accum=True` skips the promotion), and with block scales (1x128 per token for the activation, 128x128 for the
weight: cuBLAS on sm90, CUDA >= 12.9), in the forward's layout and the input gradient's (grad_out @ W, the weight
transposed, the same 128x128 scales), with their error against bf16.

Quantisation, compiled as Inductor fuses it in the step: after a producer (here the FFN's LoRA add and GELU, whose
output is also kept, as the backward needs it), per row (`fp8.quantize_rows`: a reduction over the whole row,
which Inductor loops over twice when the row is wider than 1,024) and per 1x128 block (a 128-wide reduction that
stays in registers: one pass), against the producer alone. Median of 20 timings of 10 calls each, CUDA events.
On an H200 (bench/RESULTS.md, 2026-12-03, fifth session) block scales lose on both counts: their matmul runs
1,010-1,030 TFLOP/s against row-wise's 1,270-1,410 with fast accumulation, cuBLAS refuses them in the input
gradient's layout, and Inductor's fused block quantisation of a 14336-wide row takes 0.86 ms against 0.46.

    python bench/fp8_gemm.py [--out fp8_gemm.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fp8_check import relative  # noqa: E402

from wan_sft.fp8 import FP8, FP8_MAX, quantize_rows  # noqa: E402

TOKENS = 8820
SHAPES = ((3072, 3072), (3072, 14336), (14336, 3072))  # (in, out) of q/k/v/o, ffn.0, ffn.2
BLOCK = 128


def median_ms(function, *args, calls: int = 10, **kwargs) -> float:
    """Per call: the GPU time of `calls` back-to-back calls (so a compiled wrapper's host time hides behind them)."""
    for _ in range(3):
        function(*args, **kwargs)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            function(*args, **kwargs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def quantize_blocks(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 values and fp32 scales per 1x128 block: [M, K] -> [M, K], [M, K/128] (M-major, as cuBLAS takes them)."""
    blocks = t.unflatten(-1, (-1, BLOCK))
    scale = blocks.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    values = (blocks.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).flatten(-2)
    return values, scale.squeeze(-1).t().contiguous().t()


def quantize_tiles(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 values and fp32 scales per 128x128 tile: [N, K] -> [N, K], [N/128, K/128]."""
    n, k = w.shape
    tiles = w.reshape(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    scale = tiles.abs().amax(dim=(1, 3), keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    values = (tiles.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).reshape(n, k)
    return values, scale.reshape(n // BLOCK, k // BLOCK)


def matmuls(n_in: int, n_out: int) -> dict:
    x = torch.randn(TOKENS, n_in, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) / n_in**0.5
    x8, xs = quantize_rows(x)
    w8, ws = quantize_rows(w)
    one = torch.ones((), device="cuda")
    row = dict(tokens=TOKENS, n_in=n_in, n_out=n_out)
    row["bf16_ms"] = median_ms(torch.mm, x, w.t())
    reference = x @ w.t()
    for scaling, (sa, sb) in (("rowwise", (xs, ws.t())), ("tensorwise", (one, one))):
        for fast in (False, True):
            arguments = dict(scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=fast)
            name = f"{scaling}{'_fast' if fast else ''}"
            row[f"{name}_ms"] = median_ms(torch._scaled_mm, x8, w8.t(), **arguments)
            if scaling == "rowwise":  # tensor-wise with unit scales is the same product, unscaled
                row[f"{name}_error_vs_bf16"] = relative(torch._scaled_mm(x8, w8.t(), **arguments), reference)
    xb8, xbs = quantize_blocks(x)
    wt8, wts = quantize_tiles(w)
    try:
        blockwise = dict(scale_a=xbs, scale_b=wts.t(), out_dtype=torch.bfloat16)
        row["blockwise_ms"] = median_ms(torch._scaled_mm, xb8, wt8.t(), **blockwise)
        row["blockwise_error_vs_bf16"] = relative(torch._scaled_mm(xb8, wt8.t(), **blockwise), reference)
        # The input gradient's layout: g [tokens, out] @ W [out, in], W transposed in memory, the same tile scales.
        g = torch.randn(TOKENS, n_out, device="cuda", dtype=torch.bfloat16)
        gb8, gbs = quantize_blocks(g)
        w8_t = wt8.t().contiguous()
        gradient = dict(scale_a=gbs, scale_b=wts, out_dtype=torch.bfloat16)
        row["blockwise_input_grad_ms"] = median_ms(torch._scaled_mm, gb8, w8_t.t(), **gradient)
        row["blockwise_input_grad_error_vs_bf16"] = relative(torch._scaled_mm(gb8, w8_t.t(), **gradient), g @ w)
    except RuntimeError as error:  # this torch/cuBLAS may not take block scales
        row["blockwise_error"] = str(error).splitlines()[0][:300]
    flop = 2 * TOKENS * n_in * n_out
    for key in [k for k in row if k.endswith("_ms")]:
        row[key.replace("_ms", "_tflops")] = round(flop / row[key] / 1e9, 1)
    return row


def producer(base: torch.Tensor, lora: torch.Tensor) -> torch.Tensor:
    """The FFN's hidden activation: base linear + LoRA, GELU (kept for the backward, so it is written)."""
    return torch.nn.functional.gelu(base + lora, approximate="tanh")


def producer_rowwise(base: torch.Tensor, lora: torch.Tensor):
    hidden = producer(base, lora)
    return hidden, *quantize_rows(hidden)


def producer_blockwise(base: torch.Tensor, lora: torch.Tensor):
    hidden = producer(base, lora)
    return hidden, *quantize_blocks(hidden)


def fused_quantisation(width: int) -> dict:
    """The producer alone, and with each quantisation fused after it (compiled as one graph, like a block)."""
    base = torch.randn(TOKENS, width, device="cuda", dtype=torch.bfloat16)
    lora = torch.randn(TOKENS, width, device="cuda", dtype=torch.bfloat16)
    row = dict(tokens=TOKENS, width=width)
    for name, function in (("producer_only", producer), ("rowwise", producer_rowwise),
                           ("blockwise", producer_blockwise)):
        row[f"{name}_ms"] = median_ms(torch.compile(function), base, lora)
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="fp8_gemm.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, matmuls=[], quantisation=[])
    for n_in, n_out in SHAPES:
        results["matmuls"].append(matmuls(n_in, n_out))
        print(json.dumps(results["matmuls"][-1]), flush=True)
    for width in (3072, 14336):
        results["quantisation"].append(fused_quantisation(width))
        print(json.dumps(results["quantisation"][-1]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
