"""Speed levers on the DiT's blocks: torch.compile per block and selective activation checkpointing.

DiffSynth checkpoints every block or none. Checkpointing only as many blocks as memory requires keeps most of
the no-checkpointing speed. Measured at 81x896x480 (8820 tokens), bf16, LoRA r32 (bench/RESULTS.md): a compiled,
uncheckpointed 5B block keeps ~1.43 GiB of activations (~170 KiB per token; H200, 54.5 GiB peak with none
checkpointed); an eager one runs DiffSynth's block forward and keeps ~1.6x the ~195 KiB per token that forward kept
compiled (H100); weights, LoRA, Adam and the checkpointed blocks take ~1.5x the DiT's weight bytes.

Attention is left to PyTorch's SDPA: on Hopper it already runs cuDNN's fused kernels (bench/profiling.py shows
which), so forcing a backend gains nothing there. Compiled blocks apply RoPE in real fp64 arithmetic instead of
DiffSynth's complex128 product: Inductor cannot generate code for complex numbers and runs that part as separate
eager kernels; the real form computes the same fp64 products and fuses into the neighbouring kernels. They also add
each modulation chunk to the timestep embedding where it is used (`modulated_block_forward`).
"""
from __future__ import annotations

import functools

import torch

ACTIVATION_BYTES_PER_TOKEN = 180 * 1024  # per compiled, uncheckpointed 5B block (dim 3072); 170 measured
EAGER_ACTIVATION_FACTOR = 1.75  # 1.6 x 195 KiB measured, over 180
CARD_SHARE = 0.8  # of the card's memory: room for the allocator's fragmentation, the VAE and validation


def video_tokens(num_frames: int, height: int, width: int) -> int:
    """Sequence length of the DiT: VAE /4 in time (+1), /16 in space, then 2x2 patches."""
    return ((num_frames - 1) // 4 + 1) * (height // 32) * (width // 32)


def _linear_weights(dit) -> tuple[int, int]:
    """Weights of the block linears applied to video tokens, and of those applied to the text context (the cross-
    attention's k and v). FP8 linears count like the bf16 ones they replace; LoRA is not counted."""
    video = context = 0
    for name, module in dit.blocks.named_modules():
        if "lora_" in name or not hasattr(module, "in_features") or hasattr(module, "base_layer"):
            continue
        weights = module.in_features * module.out_features
        if name.endswith(("cross_attn.k", "cross_attn.v", "cross_attn.k.base_layer", "cross_attn.v.base_layer")):
            context += weights
        else:
            video += weights
    return video, context


def dit_forward_flops(dit, tokens: int, context_tokens: int = 512) -> float:
    """Matmul FLOPs of one DiT forward (LoRA not counted): block linears (the cross-attention's k, v on the context
    only) plus self- and cross-attention."""
    video, context = _linear_weights(dit)
    attention = len(dit.blocks) * 4 * tokens * (tokens + context_tokens) * dit.dim
    return 2 * tokens * video + 2 * context_tokens * context + attention


def dit_training_flops(dit, tokens: int, checkpointed_blocks: int, context_tokens: int = 512) -> float:
    """Matmul FLOPs of one LoRA training step, counted as executed: the forward; the linears' input gradients (the
    frozen base needs no weight gradients: one matmul each, not two); attention's backward (twice its forward);
    the forward again for checkpointed blocks. Not 3x the forward, which would count weight gradients never
    computed."""
    video, context = _linear_weights(dit)
    attention = len(dit.blocks) * 4 * tokens * (tokens + context_tokens) * dit.dim
    forward = dit_forward_flops(dit, tokens, context_tokens)
    input_gradients = 2 * tokens * video  # the context's k, v need none: the context is not trained
    return forward + input_gradients + 2 * attention + forward * checkpointed_blocks / len(dit.blocks)


def blocks_to_checkpoint(weight_bytes: int, tokens: int, dim: int, blocks: int, card_bytes: int,
                         compiled: bool) -> int:
    """How many of `blocks` must be checkpointed so that 1.5x the DiT's weight bytes plus the activations of the
    other blocks fit in 80% of the card (at the default size: none on an H200 or an 80 GB H100, 15 on a 48 GB card)."""
    budget = CARD_SHARE * card_bytes
    base = 1.5 * weight_bytes
    per_block = tokens * ACTIVATION_BYTES_PER_TOKEN * dim / 3072
    per_block *= 1 if compiled else EAGER_ACTIVATION_FACTOR
    free_blocks = int(max(0.0, budget - base) // per_block)
    return max(0, blocks - free_blocks)


def auto_checkpoint_blocks(dit, num_frames: int, height: int, width: int, device: torch.device,
                           compiled: bool) -> int:
    """How many blocks must be checkpointed so training stays within the budget (all of them on CPU)."""
    blocks = len(dit.blocks)
    if device.type != "cuda":
        return blocks
    weight_bytes = sum(t.numel() * t.element_size() for t in [*dit.parameters(), *dit.buffers()])  # buffers: FP8
    return blocks_to_checkpoint(weight_bytes, video_tokens(num_frames, height, width), dit.dim, blocks,
                                torch.cuda.get_device_properties(device).total_memory, compiled)


def rope(x: torch.Tensor, freqs: torch.Tensor, num_heads: int) -> torch.Tensor:
    """DiffSynth's `rope_apply` in real arithmetic: x [b, s, heads*d], freqs = view_as_real of its complex
    frequencies [s, 1, d/2, 2]; (a + bi)(c + di) in fp64 as there, then back to x's dtype."""
    pairs = x.to(torch.float64).reshape(*x.shape[:2], num_heads, -1, 2)
    real, imag = pairs.unbind(-1)
    cos, sin = freqs.unbind(-1)
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(2).to(x.dtype)


def _rope_self_attention_forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """DiffSynth's SelfAttention.forward with `rope` (freqs as real pairs)."""
    q = rope(self.norm_q(self.q(x)), freqs, self.num_heads)
    k = rope(self.norm_k(self.k(x)), freqs, self.num_heads)
    return self.o(self.attn(q, k, self.v(x)))


@functools.cache
def real_rope_attention(diffsynth_class: type) -> type:
    """DiffSynth's self-attention class with `rope`; compiled blocks get it in place of DiffSynth's (same parameters,
    same names). One class for every block, not a per-block forward: Dynamo guards on a forward held by the instance
    and would recompile for every block. Built here so importing this module does not import DiffSynth."""
    return type("RealRopeSelfAttention", (diffsynth_class,),
                {"forward": _rope_self_attention_forward, "diffsynth_class": diffsynth_class})


def modulated_block_forward(self, x: torch.Tensor, context: torch.Tensor, t_mod: torch.Tensor,
                            freqs: torch.Tensor) -> torch.Tensor:
    """DiffSynth's DiTBlock.forward, with each of the six modulation chunks added to its slice of t_mod where it is
    used: the same sums (bit for bit in eager mode). DiffSynth adds all six first; with the TI2V's per-token t_mod
    ([1, tokens, 6, dim], 325 MB at the default size) Inductor writes that sum out, reads it back and saves it for
    the backward in every block; added per chunk, it fuses into the kernels that use it."""
    chunk_dim = 2 if t_mod.dim() == 4 else 1
    modulation = self.modulation.to(dtype=t_mod.dtype, device=t_mod.device).chunk(6, dim=1)
    t_chunks = t_mod.chunk(6, dim=chunk_dim)
    sums = [m + t for m, t in zip(modulation, t_chunks, strict=True)]
    if chunk_dim == 2:
        sums = [s.squeeze(2) for s in sums]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = sums
    x = self.gate(x, gate_msa, self.self_attn(self.norm1(x) * (1 + scale_msa) + shift_msa, freqs))
    x = x + self.cross_attn(self.norm3(x), context)
    return self.gate(x, gate_mlp, self.ffn(self.norm2(x) * (1 + scale_mlp) + shift_mlp))


def _with_real_freqs(forward):
    """A block forward that gets the RoPE frequencies as real pairs, so no complex tensor enters the compiled graph."""
    def block_forward(x, context, t_mod, freqs):
        return forward(x, context, t_mod, torch.view_as_real(freqs))
    return block_forward


def configure_blocks(dit, checkpointed_blocks: int, compile_blocks: bool) -> None:
    """Checkpoint the first `checkpointed_blocks` blocks, optionally compile each block (with real-valued RoPE and
    `modulated_block_forward`).

    Overrides each block's forward in place so parameter names (and so LoRA keys) stay unchanged.
    """
    for index, block in enumerate(dit.blocks):
        forward = type(block).forward.__get__(block)  # from scratch, so calling this again reconfigures
        diffsynth_class = getattr(type(block.self_attn), "diffsynth_class", type(block.self_attn))
        block.self_attn.__class__ = real_rope_attention(diffsynth_class) if compile_blocks else diffsynth_class
        if compile_blocks:
            forward = _with_real_freqs(torch.compile(modulated_block_forward.__get__(block)))
        if index < checkpointed_blocks:
            forward = functools.partial(torch.utils.checkpoint.checkpoint, forward, use_reentrant=False)
        block.forward = forward
