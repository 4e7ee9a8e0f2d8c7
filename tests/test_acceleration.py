"""Selective checkpointing: same numbers as DiffSynth's all-or-nothing, same parameter names (LoRA keys); how many
blocks to checkpoint; compiled blocks with real-valued RoPE; the FLOP counts of the benches."""
import warnings
from types import SimpleNamespace

import pytest
import torch
from diffsynth.models.wan_video_dit import SelfAttention

from wan_sft.acceleration import (
    auto_checkpoint_blocks,
    blocks_to_checkpoint,
    configure_blocks,
    dit_forward_flops,
    dit_training_flops,
    modulated_block_forward,
    rope,
    video_tokens,
)
from wan_sft.lora import add_lora
from wan_sft.model_files import DIT_TINY, load_pipeline

GiB = 2**30


def test_video_tokens_of_the_default_size():
    assert video_tokens(81, 896, 480) == 21 * 28 * 15


def test_checkpointing_any_number_of_blocks_gives_the_same_gradients(tiny_model):
    pipe = load_pipeline(tiny_model, "cpu", torch.float32)
    torch.manual_seed(0)
    add_lora(pipe.dit, 4)
    for p in pipe.dit.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.1)  # lora_B starts at zero; make every adapter matter
    names = [name for name, _ in pipe.dit.named_parameters()]
    x = torch.randn(1, 12, 64, requires_grad=False)
    context, t_mod = torch.randn(1, 8, 64), torch.randn(1, 6, 64)
    freqs = torch.randn(12, 1, 16, dtype=torch.complex64)

    def grads(checkpointed):
        configure_blocks(pipe.dit, checkpointed, compile_blocks=False)
        pipe.dit.zero_grad()
        out = x
        for block in pipe.dit.blocks:
            out = block(out, context, t_mod, freqs)
        out.square().mean().backward()
        return [p.grad.clone() for p in pipe.dit.parameters() if p.requires_grad]

    reference = grads(0)
    for checkpointed in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(reference, grads(checkpointed), strict=True))
    assert [name for name, _ in pipe.dit.named_parameters()] == names
    checkpoint = torch.utils.checkpoint.checkpoint
    assert [getattr(b.forward, "func", None) is checkpoint for b in pipe.dit.blocks] == [True, True]
    configure_blocks(pipe.dit, 1, compile_blocks=False)  # reconfiguring starts from the plain forward
    assert [getattr(b.forward, "func", None) is checkpoint for b in pipe.dit.blocks] == [True, False]
    assert auto_checkpoint_blocks(pipe.dit, 9, 160, 96, torch.device("cpu"), compiled=False) == 2  # CPU: all


def video_freqs(tables, f: int, h: int, w: int) -> torch.Tensor:
    """The per-token RoPE frequencies as DiffSynth's model_fn builds them from its (frame, height, width) tables."""
    frame, height, width = tables
    return torch.cat([frame[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                      height[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                      width[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_real_rope_equals_diffsynths_complex_rope_bit_for_bit(dtype):
    from diffsynth.models.wan_video_dit import precompute_freqs_cis_3d, rope_apply

    torch.manual_seed(0)
    f, h, w, heads, head_dim = 3, 4, 5, 2, 128  # the 5B's head_dim, DiffSynth's 3-D frequencies
    freqs = video_freqs(precompute_freqs_cis_3d(head_dim), f, h, w)
    x = (torch.randn(2, f * h * w, heads * head_dim) * 3).to(dtype)
    expected = rope_apply(x, freqs, heads)
    assert torch.equal(rope(x, torch.view_as_real(freqs), heads), expected)
    swapped = torch.view_as_real(freqs).flip(-1)  # cos and sin exchanged: a detail the comparison must catch
    assert not torch.equal(rope(x, swapped, heads), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("per_token", [True, False])
def test_modulated_block_forward_equals_diffsynths_block_bit_for_bit(dtype, per_token):
    from diffsynth.models.wan_video_dit import DiTBlock

    torch.manual_seed(0)
    tokens, dim, heads = 12, 64, 2
    block = DiTBlock(False, dim, heads, 128).to(dtype)
    block.modulation.data.normal_()  # a detail the comparison must see: DiffSynth's init is small
    x, context = torch.randn(1, tokens, dim, dtype=dtype), torch.randn(1, 8, dim, dtype=dtype)
    t_mod = torch.randn(1, tokens, 6, dim, dtype=dtype) if per_token else torch.randn(1, 6, dim, dtype=dtype)
    freqs = torch.polar(torch.ones(tokens, 1, dim // heads // 2, dtype=torch.float64),
                        torch.randn(tokens, 1, dim // heads // 2, dtype=torch.float64))
    expected = block(x, context, t_mod, freqs)
    assert torch.equal(modulated_block_forward(block, x, context, t_mod, freqs), expected)
    shifted = t_mod.roll(1, dims=-2)  # the six chunks in another order: must differ
    assert not torch.equal(modulated_block_forward(block, x, context, shifted, freqs), expected)


def test_compiled_blocks_generate_no_complex_code_and_match_diffsynths_blocks(tiny_model):
    """Inductor falls back to eager kernels for complex numbers (DiffSynth's RoPE); compiled blocks avoid them."""
    pipe = load_pipeline(tiny_model, "cpu", torch.float32, with_text_encoder=False, with_vae=False)
    torch.manual_seed(0)
    lora = add_lora(pipe.dit, 4)
    for p in lora:
        p.data.normal_(0, 0.1)
    f, h, w = 2, 3, 4
    dit = pipe.dit
    freqs = video_freqs(dit.freqs, f, h, w)
    x = torch.randn(1, f * h * w, dit.dim, requires_grad=True)  # as every block but the first gets it
    context, t_mod = torch.randn(1, 8, dit.dim), torch.randn(1, f * h * w, 6, dit.dim)  # per-token, as the TI2V

    def run(compiled):
        configure_blocks(dit, 1, compile_blocks=compiled)
        dit.zero_grad()
        out = x
        for block in dit.blocks:
            out = block(out, context, t_mod, freqs)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in lora]

    expected, expected_grads = run(compiled=False)
    from torch._inductor.lowering import _warn_complex_not_supported

    _warn_complex_not_supported.cache_clear()  # it warns once per process
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught, torch._dynamo.config.patch(error_on_recompile=True):
        warnings.simplefilter("always")
        out, grads = run(compiled=True)  # and the second block reuses the first one's graphs
    assert not [w for w in caught if "complex" in str(w.message)]
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(grads, expected_grads, strict=True))
    configure_blocks(dit, 0, compile_blocks=False)  # back to DiffSynth's own attention
    assert type(dit.blocks[0].self_attn) is SelfAttention


# 5B at the defaults: 8820 tokens, dim 3072, 30 blocks, 10 GiB of weights -> 15 GiB for weights, LoRA and Adam.
# A compiled block keeps 8820 * 180 KiB = 1_625_702_400 bytes of activations, an eager one 1.75x = 2_844_979_200.
@pytest.mark.parametrize("card_gib, weight_gib, dim, blocks, compiled, expected", [
    (141, 10, 3072, 30, True, 0),     # 80% = 112.8 GiB: 97.8 GiB / 1.626e9 = 64.6 -> all 30 free
    (79.6, 10, 3072, 30, True, 0),    # an H100 reports 79.6 GiB: 48.7 GiB / 1.626e9 = 32.15 -> 32 free
    (70, 10, 3072, 30, True, 3),      # 80% = 56 GiB: 41 GiB / 1.626e9 = 27.1 -> 27 free
    (141, 10, 3072, 30, False, 0),    # eager: 97.8 GiB / 2.845e9 = 36.9 -> 36 free
    (96, 10, 3072, 30, False, 7),     # eager, 80% = 76.8 GiB: 61.8 GiB / 2.845e9 = 23.3 -> 23 free
    (48, 10, 3072, 30, True, 15),     # 80% = 38.4 GiB: 23.4 GiB / 1.626e9 = 15.5 -> 15 free
    (24, 10, 3072, 30, True, 28),     # 80% = 19.2 GiB: 4.2 GiB / 1.626e9 = 2.8 -> 2 free
    (16, 10, 3072, 30, True, 30),     # 80% = 12.8 GiB < 15 GiB of weights: every block
    (44, 10, 1536, 60, True, 34),     # half the width, half the activations: 20.2 GiB / 0.813e9 = 26.7 -> 26 free
    (141, 10, 1536, 30, True, 0),     # more room than blocks: none
])
def test_blocks_to_checkpoint(card_gib, weight_gib, dim, blocks, compiled, expected):
    assert blocks_to_checkpoint(weight_gib * GiB, 8820, dim, blocks, int(card_gib * GiB), compiled) == expected


def test_auto_checkpoint_blocks_reads_the_cards_memory(monkeypatch):
    from diffsynth.models.wan_video_dit import WanModel

    dit = WanModel(**DIT_TINY)  # 2 blocks; a few hundred KB of weights
    cards = []

    def properties(device):
        cards.append(device)
        return SimpleNamespace(total_memory=card_bytes)

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    card_bytes = 80 * GiB
    assert auto_checkpoint_blocks(dit, 81, 896, 480, torch.device("cuda", 1), compiled=True) == 0
    card_bytes = 2**20  # 1 MiB: nothing fits
    assert auto_checkpoint_blocks(dit, 81, 896, 480, torch.device("cuda", 1), compiled=True) == 2
    assert cards == [torch.device("cuda", 1)] * 2
    assert auto_checkpoint_blocks(dit, 81, 896, 480, torch.device("cpu"), compiled=True) == 2 and len(cards) == 2


def test_flops_of_a_small_dit_by_hand():
    """DIT_TINY: dim 64, ffn 128, 2 blocks. Per block the video tokens meet self q,k,v,o, cross q,o (6 x 64x64) and
    ffn.0, ffn.2 (2 x 64x128): 40_960 weights; the context meets cross k,v: 8_192."""
    from diffsynth.models.wan_video_dit import WanModel

    dit = WanModel(**DIT_TINY)
    tokens, context = 12, 8
    linears = 2 * tokens * 2 * 40_960 + 2 * context * 2 * 8_192  # 1_966_080 + 262_144
    attention = 2 * 4 * tokens * (tokens + context) * 64          # 122_880
    assert dit_forward_flops(dit, tokens, context) == linears + attention == 2_351_104
    # + input gradients of the video linears (1_966_080) + attention backward (2 x 122_880) + 1 of 2 blocks again
    assert dit_training_flops(dit, tokens, 0, context) == 2_351_104 + 1_966_080 + 245_760 == 4_562_944
    assert dit_training_flops(dit, tokens, 1, context) == 4_562_944 + 2_351_104 / 2 == 5_738_496
    assert dit_forward_flops(dit, tokens) == 2 * tokens * 81_920 + 2 * 512 * 16_384 + 8 * tokens * (tokens + 512) * 64
    add_lora(dit, 4)  # LoRA is not counted; the wrapped base linears still are
    assert dit_forward_flops(dit, tokens, context) == 2_351_104
