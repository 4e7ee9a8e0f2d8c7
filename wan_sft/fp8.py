"""Opt-in FP8 for the DiT's block linears (q, k, v, o of both attentions, ffn.0, ffn.2): APPROXIMATE, not bf16.

Generation (`--fp8`): the LoRA is fused into the bf16 weights first, then each block linear keeps only an FP8
e4m3 copy of its weight with one scale per output row, and activations are quantised per token (row-wise
dynamic scaling); the matmul is `torch._scaled_mm` on the GPU. Training (`--fp8_base`): the frozen base linears
under the LoRA do the same in the forward, and the input gradient (grad_out x W) runs in FP8 too, against the same
FP8 weight: W's row scales are folded into grad_out's columns before it is quantised per token, and the weight is
transposed on the fly (`_scaled_mm` takes both operands K-major; ~2 ms per step for all blocks, where a second,
transposed copy would hold another 4.7 GB). The LoRA and its optimizer stay as they are. The base weights need no
gradient, so no weight-gradient matmul exists to quantise. Every FP8 matmul uses the FP8 tensor cores' fast
accumulation (no promotion to fp32 every few k-steps; torchao promotes in the input gradient): 5 ms less per step,
and the 200-step smoothed loss stays within 0.36% of bf16's (0.33% with the promotion; bench/RESULTS.md, 2026-12-03,
fifth session). Scales per 1x128 block (cuBLAS, CUDA >= 12.9) were measured and are slower here: their matmuls, and
Inductor's quantisation fused after a producer.

Why not torchao's float8: its row-wise inference path refuses to run without a CUDA >= 8.9 device, so nothing of
it could be tested on our CPU CI, and its training path also schedules weight-gradient work for frozen weights.
On the CPU (tests) the same quantised values are multiplied after dequantising: equal to `_scaled_mm` up to the
order of summation, so the tests pin the quantisation itself.

The FP8 bits and the fp32 scales are held as integer views: DeepSpeed and DiffSynth cast every floating tensor of
a module to bf16, which would destroy both.
"""
from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 values and fp32 scales (one per row) with t ~= values * scales."""
    scale = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def scaled_matmul(a: torch.Tensor, a_scale: torch.Tensor, b_t: torch.Tensor, b_scale: torch.Tensor,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """(a * a_scale) @ (b_t * b_scale).T for FP8 a [M, K] (row scales [M, 1]) and b_t [N, K] (row scales [N, 1])."""
    if a.is_cuda:
        return torch._scaled_mm(a, b_t.t(), scale_a=a_scale, scale_b=b_scale.t(), out_dtype=out_dtype,
                                use_fast_accum=True)
    with torch.autocast(a.device.type, enabled=False):  # fp32 products, as _scaled_mm accumulates
        return ((a.float() * a_scale) @ (b_t.float() * b_scale).t()).to(out_dtype)


class _Fp8Matmul(torch.autograd.Function):
    """x @ W.T with W frozen: FP8 forward, FP8 input gradient, no weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, weight_scale, out_dtype):
        x_fp8, x_scale = quantize_rows(x)
        ctx.save_for_backward(weight, weight_scale)
        ctx.x_dtype = x.dtype
        return scaled_matmul(x_fp8, x_scale, weight, weight_scale, out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        weight, weight_scale = ctx.saved_tensors  # [out, in] FP8, [out, 1]
        # grad_out @ W = (grad_out * row scales of W) @ W_fp8: fold, then quantise per token.
        grad_fp8, grad_scale = quantize_rows(grad_out * weight_scale.t())
        unit_scale = torch.ones(weight.shape[1], 1, device=weight.device)
        return (scaled_matmul(grad_fp8, grad_scale, weight.t().contiguous(), unit_scale, ctx.x_dtype),
                None, None, None)


class Fp8Linear(torch.nn.Module):
    """A frozen nn.Linear as FP8 weights with row-wise scales; an input that needs a gradient gets one (FP8)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        values, scales = quantize_rows(weight)
        # Not persistent: derived from the base weights on disk, so a saved training state never holds them.
        self.register_buffer("weight_bits", values.view(torch.uint8), persistent=False)
        self.register_buffer("scale_bits", scales.view(torch.int32), persistent=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        weight, scale = self.weight_bits.view(FP8), self.scale_bits.view(torch.float32)
        # The dtype nn.Linear would return: under autocast its dtype (an fp32 output would double the bytes the
        # matmul writes and the next kernel reads), else x's.
        autocast = torch.is_autocast_enabled(x.device.type)
        out_dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        if torch.is_grad_enabled() and x.requires_grad:
            out = _Fp8Matmul.apply(rows, weight, scale, out_dtype)
        else:
            x_fp8, x_scale = quantize_rows(rows)
            out = scaled_matmul(x_fp8, x_scale, weight, scale, out_dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 row-wise"


def convert_block_linears(dit: torch.nn.Module) -> int:
    """Replace the block linears of the DiT with Fp8Linear; under a peft LoRA layer, its frozen base layer.

    Returns how many were replaced. The bf16 weights are dropped (the FP8 copies replace them).
    """
    replaced = 0
    for block in dit.blocks:
        for name in BLOCK_LINEARS:
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            module = getattr(parent, child) if not child.isdigit() else parent[int(child)]
            if hasattr(module, "base_layer"):  # peft LoRA wrapper: only its frozen base goes to FP8
                parent, child, module = module, "base_layer", module.base_layer
            if isinstance(module, torch.nn.Linear):
                fp8 = Fp8Linear(module)
                if child.isdigit():
                    parent[int(child)] = fp8
                else:
                    setattr(parent, child, fp8)
                replaced += 1
    return replaced
