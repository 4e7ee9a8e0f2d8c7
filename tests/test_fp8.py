"""FP8 block linears (wan_sft/fp8.py) on CPU: the quantisation itself, which layers are replaced, what survives a
dtype cast, and that training through them moves only the LoRA. `_scaled_mm` on the GPU is checked against the same
dequantised formula by bench/fp8_check.py."""
import torch

from wan_sft import fp8
from wan_sft.lora import add_lora, lora_state_dict
from wan_sft.model_files import load_pipeline


def test_row_scales_map_each_rows_largest_magnitude_to_the_fp8_maximum():
    t = torch.tensor([[1.0, -4.0, 2.0], [0.5, 0.25, -0.125], [0.0, 0.0, 0.0]])
    values, scales = fp8.quantize_rows(t)
    assert values.dtype == torch.float8_e4m3fn
    assert torch.allclose(scales.squeeze(1), torch.tensor([4.0, 0.5, 1e-12]) / fp8.FP8_MAX)
    assert values.float().abs().amax(dim=1)[:2].tolist() == [fp8.FP8_MAX, fp8.FP8_MAX]
    # Powers of two are exact in e4m3: the dequantised values equal the input.
    assert torch.equal(values.float() * scales, t)


def test_fp8_linear_equals_the_dequantised_product_and_stays_near_the_float_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    x = torch.randn(5, 7, 64)
    layer = fp8.Fp8Linear(linear)
    x_fp8, x_scale = fp8.quantize_rows(x.reshape(-1, 64))
    w_fp8, w_scale = fp8.quantize_rows(linear.weight.detach())
    expected = (x_fp8.float() * x_scale) @ (w_fp8.float() * w_scale).t() + linear.bias
    out = layer(x)
    assert out.shape == (5, 7, 96)
    assert torch.allclose(out.reshape(-1, 96), expected, atol=1e-5)
    error = (out - linear(x)).norm() / linear(x).norm()
    assert 1e-4 < error < 0.06  # e4m3 keeps 3 mantissa bits: visibly approximate, never far off


def test_the_fp8_bits_and_scales_survive_a_cast_of_the_module_to_bf16():
    """DeepSpeed and DiffSynth cast whole modules; integer storage keeps the FP8 copy exact."""
    layer = fp8.Fp8Linear(torch.nn.Linear(32, 16))
    before = {name: t.clone() for name, t in layer.named_buffers()}
    assert sorted(before) == ["scale_bits", "weight_bits"]  # one FP8 copy serves the forward and the backward
    layer.to(torch.bfloat16)
    for name, tensor in layer.named_buffers():
        assert torch.equal(tensor, before[name]), name


def test_a_saved_state_never_holds_the_fp8_copies():
    """They are derived from the base weights on disk; saving them made every training state ~9 GB larger."""
    layer = fp8.Fp8Linear(torch.nn.Linear(32, 16))
    assert list(layer.state_dict()) == ["bias"]


def test_input_gradient_folds_the_weights_row_scales_into_the_gradient_before_quantising_it():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80)
    layer = fp8.Fp8Linear(linear)
    x = torch.randn(6, 48, requires_grad=True)
    grad_out = torch.randn(6, 80)
    layer(x).backward(grad_out)
    w_fp8, w_scale = fp8.quantize_rows(linear.weight.detach())
    g_fp8, g_scale = fp8.quantize_rows(grad_out * w_scale.t())
    expected = (g_fp8.float() * g_scale) @ w_fp8.float()
    assert torch.allclose(x.grad, expected, atol=1e-5)
    # Quantising grad_out itself (scales folded after) gives other values: the fold is what runs.
    unfolded_fp8, unfolded_scale = fp8.quantize_rows(grad_out)
    unfolded = (unfolded_fp8.float() * unfolded_scale) @ (w_fp8.float() * w_scale)
    assert not torch.allclose(x.grad, unfolded, atol=1e-5)
    assert (x.grad - grad_out @ linear.weight).norm() / (grad_out @ linear.weight).norm() < 0.06


def test_under_autocast_the_output_has_the_autocast_dtype_like_nn_linear_and_the_input_gradient_x_dtype():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=False)
    layer = fp8.Fp8Linear(linear)
    x = torch.randn(4, 64, requires_grad=True)
    plain = layer(x)
    plain.backward(torch.ones_like(plain))
    plain_grad, x.grad = x.grad, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        assert linear(x).dtype == out.dtype == torch.bfloat16
        with torch.no_grad():
            assert layer(x).dtype == torch.bfloat16
    out.backward(torch.ones_like(out))
    assert x.grad.dtype == torch.float32
    # The same FP8 product, rounded to bf16 once at the end (not computed in bf16).
    assert torch.equal(out, plain.to(torch.bfloat16))
    assert torch.allclose(x.grad, plain_grad, rtol=1e-2, atol=1e-3)


def test_block_linears_under_the_lora_are_replaced_and_training_moves_only_the_lora(tiny_model):
    pipe = load_pipeline(tiny_model, "cpu", torch.float32, with_text_encoder=False, with_vae=False)
    dit = pipe.dit
    torch.manual_seed(0)
    lora = add_lora(dit, 4)
    frozen_before = {name: t.clone() for name, t in dit.state_dict().items() if "lora_" not in name}
    assert fp8.convert_block_linears(dit) == len(dit.blocks) * len(fp8.BLOCK_LINEARS)
    q = dit.blocks[0].self_attn.q
    assert isinstance(q.base_layer, fp8.Fp8Linear) and not hasattr(q.base_layer, "weight")
    assert isinstance(dit.blocks[0].ffn[2].base_layer, fp8.Fp8Linear)
    assert not any(isinstance(m, fp8.Fp8Linear) for m in dit.head.modules())  # only the blocks
    assert sorted(lora_state_dict(dit)) == sorted(n for n, p in dit.named_parameters() if p.requires_grad)

    x = torch.randn(2, 9, q.in_features, requires_grad=True)
    for p in lora:
        p.data.normal_()
    q(x).square().sum().backward()
    assert all(p.grad is not None for p in dit.blocks[0].self_attn.q.parameters() if p.requires_grad)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    untouched = {name: t for name, t in dit.state_dict().items() if name in frozen_before}
    assert all(torch.equal(t, frozen_before[name]) for name, t in untouched.items())
