"""bench/fp8_gemm.py's block-scale quantisers (the recipe it times against row-wise scales): the values they keep, and
scale shapes that pass `torch._scaled_mm`'s shape check on the meta device. That check is all the CPU can see: on an
H200, cuBLAS ran the forward's layout and refused the input gradient's (bench/RESULTS.md, 2026-12-03, fifth session),
which the bench records as `blockwise_error`."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from fp8_gemm import quantize_blocks, quantize_tiles  # noqa: E402

from wan_sft.fp8 import FP8, FP8_MAX  # noqa: E402


def test_each_128_block_of_a_row_gets_its_own_scale_and_the_scales_are_token_major():
    x = torch.ones(4, 384)
    x[1, 128:256] = 1000.0  # one block of one row: only its scale changes
    values, scales = quantize_blocks(x)
    assert values.dtype == FP8 and values.shape == (4, 384)
    assert scales.shape == (4, 3) and scales.stride() == (1, 4)  # cuBLAS takes 1x128 scales M-major
    expected = torch.full((4, 3), 1 / FP8_MAX)
    expected[1, 1] = 1000.0 / FP8_MAX
    torch.testing.assert_close(scales, expected)
    assert (values.float() == FP8_MAX).all()  # every block's largest value maps to the FP8 maximum


def test_each_128x128_tile_of_a_weight_gets_its_own_scale():
    w = torch.ones(256, 384)
    w[130, 300] = -64.0  # tile (1, 2)
    values, scales = quantize_tiles(w)
    assert scales.shape == (2, 3)
    expected = torch.full((2, 3), 1 / FP8_MAX)
    expected[1, 2] = 64.0 / FP8_MAX
    torch.testing.assert_close(scales, expected)
    assert values[130, 300].float() == -FP8_MAX and values[130, 299].float() == FP8_MAX / 64


def test_block_scaled_operands_dequantise_to_the_inputs_and_pass_scaled_mms_shape_check_in_both_layouts():
    torch.manual_seed(0)
    x, w, grad = torch.randn(256, 384), torch.randn(512, 384), torch.randn(256, 512)
    (x8, xs), (w8, ws), (g8, gs) = quantize_blocks(x), quantize_tiles(w), quantize_blocks(grad)
    x_back = (x8.float().unflatten(-1, (-1, 128)) * xs.unsqueeze(-1)).flatten(-2)
    w_back = (w8.float().reshape(4, 128, 3, 128) * ws[:, None, :, None]).reshape(512, 384)
    assert (x_back - x).norm() / x.norm() < 0.04 and (w_back - w).norm() / w.norm() < 0.04  # e4m3's rounding
    meta = [t.to("meta") for t in (x8, xs, w8, ws, g8, gs)]
    mx8, mxs, mw8, mws, mg8, mgs = meta
    assert torch._scaled_mm(mx8, mw8.t(), scale_a=mxs, scale_b=mws.t(), out_dtype=torch.bfloat16).shape == (256, 512)
    w8_t = mw8.t().contiguous()  # the input gradient: grad @ W, the same tile scales untransposed
    assert torch._scaled_mm(mg8, w8_t.t(), scale_a=mgs, scale_b=mws, out_dtype=torch.bfloat16).shape == (256, 384)
