"""The FP8 linears' parts timed alone at the 5B's training shapes (8820 tokens; 3072x3072, 3072->14336, 14336->3072):
the bf16 matmul, `torch._scaled_mm` with row-wise and with tensor-wise scales, each with and without fast
accumulation (Hopper's FP8 tensor cores accumulate in reduced precision unless the library promotes to fp32 every
few k-steps; `use_fast_accum=True` skips the promotion), and `fp8.quantize_rows` compiled, against the card's
memory bandwidth. Median of 30 calls after warm-up, CUDA events.

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
from wan_sft.fp8 import FP8, quantize_rows  # noqa: E402

TOKENS = 8820
SHAPES = ((3072, 3072), (3072, 14336), (14336, 3072))  # (in, out) of q/k/v/o, ffn.0, ffn.2


def median_ms(function, *args, repeats: int = 30, **kwargs) -> float:
    for _ in range(5):
        function(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function(*args, **kwargs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="fp8_gemm.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    quantize = torch.compile(quantize_rows)
    results = []
    for n_in, n_out in SHAPES:
        x = torch.randn(TOKENS, n_in, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) / n_in**0.5
        x8, xs = quantize_rows(x)
        w8, ws = quantize_rows(w)
        one = torch.ones((), device="cuda")
        row = dict(tokens=TOKENS, n_in=n_in, n_out=n_out)
        row["bf16_ms"] = median_ms(torch.mm, x, w.t())
        reference = (x @ w.t()).float()
        for scaling, (sa, sb) in (("rowwise", (xs, ws.t())), ("tensorwise", (one, one))):
            for fast in (False, True):
                arguments = dict(scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=fast)
                name = f"{scaling}{'_fast' if fast else ''}"
                row[f"{name}_ms"] = median_ms(torch._scaled_mm, x8, w8.t(), **arguments)
                if scaling == "rowwise":  # tensor-wise with unit scales is the same product, unscaled
                    out = torch._scaled_mm(x8, w8.t(), **arguments).float()
                    row[f"{name}_error_vs_bf16"] = float((out - reference).norm() / reference.norm())
        flop = 2 * TOKENS * n_in * n_out
        for key in [k for k in row if k.endswith("_ms")]:
            row[key.replace("_ms", "_tflops")] = round(flop / row[key] / 1e9, 1)
        # quantize_rows: reads bf16 x, writes FP8 values and one fp32 scale per row.
        row["quantize_ms"] = median_ms(quantize, x)
        row["quantize_gbs"] = round(TOKENS * n_in * 3 / row["quantize_ms"] / 1e6, 1)
        results.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                              fp8=str(FP8), results=results), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
