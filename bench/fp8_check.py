"""GPU check of wan_sft/fp8.py at the 5B's linear shapes: `_scaled_mm` equals the dequantised CPU formula (what the
CPU tests pin) up to summation order, and the FP8 output and input gradient stay close to bf16.

    python bench/fp8_check.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wan_sft.fp8 import FP8, Fp8Linear, quantize_rows  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> int:
    torch.manual_seed(0)
    results = []
    for rows, (n_in, n_out) in ((37, (3072, 3072)), (8820, (3072, 14336)), (8820, (14336, 3072))):
        linear = torch.nn.Linear(n_in, n_out).cuda().bfloat16().requires_grad_(False)
        fp8 = Fp8Linear(linear)
        x = torch.randn(rows, n_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        x_fp8, x_scale = quantize_rows(x.detach())
        weight = fp8.weight_bits.view(FP8).float() * fp8.scale_bits.view(torch.float32)
        dequantised = ((x_fp8.float() * x_scale) @ weight.t()).bfloat16() + linear.bias
        out = fp8(x)
        grad = torch.randn_like(out)
        out.backward(grad)
        fp8_grad, x.grad = x.grad, None
        linear(x).backward(grad)
        results.append(dict(rows=rows, shape=[n_out, n_in], vs_dequantised=relative(out, dequantised),
                            vs_bf16=relative(out, linear(x)), input_grad_vs_bf16=relative(fp8_grad, x.grad)))
        print(json.dumps(results[-1]), flush=True)
    return 0 if all(r["vs_dequantised"] < 1e-2 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
