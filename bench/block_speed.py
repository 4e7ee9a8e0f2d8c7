"""One 5B DiT block's training step (forward + backward, LoRA r32, 8820 tokens), compiled, on one GPU: DiffSynth's
complex RoPE vs the real-valued RoPE, DiffSynth's block forward vs `acceleration.modulated_block_forward` (what
`configure_blocks` ships), Inductor options, bf16 and FP8 base linears, all in one process; then where the GPU time of
one step goes (kernels grouped: attention, matmuls, fused Triton, other; the 25 largest kernels).

    python bench/block_speed.py [--steps 20] [--variants shipped,...] [--precisions bf16,fp8] [--out block.json]

A block alone, random weights, in bf16 with the LoRA as the launcher runs it (DeepSpeed's bf16 mode: no autocast):
the levers' effect on the DiT's 30 blocks, without loading a model (a whole step adds the patch embedding, the head,
the loss and the optimizer). Before 2026-12-03 (second session) it ran under autocast with an fp32 LoRA.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiling import kernel_group  # noqa: E402

from wan_sft.acceleration import _with_real_freqs, configure_blocks, real_rope_attention  # noqa: E402
from wan_sft.fp8 import convert_block_linears  # noqa: E402
from wan_sft.lora import add_lora  # noqa: E402

INDUCTOR_OPTIONS = {  # variant: Inductor options while it compiles
    "diffsynth-complex-rope": {},  # DiffSynth's block and attention forward, compiled
    "diffsynth-real-rope": {},  # DiffSynth's block forward, real-valued RoPE
    "shipped": {},  # what configure_blocks compiles: real RoPE and modulated_block_forward
    "shipped+coordinate-descent": {"coordinate_descent_tuning": True},
    "shipped+max-autotune": {"max_autotune": True, "coordinate_descent_tuning": True},
    # Reductions over up to 16x more elements (a 3072- or 14336-wide row) may run persistent (the row read once);
    # each such kernel is compiled both ways and the faster one is picked on the first calls.
    "shipped+multi-kernel": {"triton.multi_kernel": 1},
}


def kernel_groups(call) -> dict:
    """GPU time of `call()` by kernel group (ms), and the 25 largest kernels."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        call()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = {}
    for event in profile.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] = per_kernel.get(event.name, 0.0) + event.device_time / 1e3
    groups: dict[str, float] = {}
    for name, ms in per_kernel.items():
        group = kernel_group(name)
        groups[group] = groups.get(group, 0.0) + ms
    top = sorted(per_kernel.items(), key=lambda item: -item[1])[:25]
    return dict(groups_ms={g: round(ms, 2) for g, ms in sorted(groups.items(), key=lambda i: -i[1])},
                total_ms=round(sum(per_kernel.values()), 2), top_kernels=[(n[:100], round(ms, 2)) for n, ms in top])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", default=",".join(INDUCTOR_OPTIONS),
                        help=f"comma list of {', '.join(INDUCTOR_OPTIONS)}")
    parser.add_argument("--precisions", default="bf16,fp8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from diffsynth.models.wan_video_dit import DiTBlock, precompute_freqs_cis_3d

    device = torch.device("cuda")
    f, h, w, dim, heads = 21, 28, 15, 3072, 24  # 81 x 896 x 480
    tokens = f * h * w
    torch.manual_seed(0)
    frame, height, width = precompute_freqs_cis_3d(dim // heads)
    freqs = torch.cat([frame[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                       height[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       width[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(tokens, 1, -1).to(device)
    x = torch.randn(1, tokens, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    context = torch.randn(1, 512, dim, device=device, dtype=torch.bfloat16)
    t_mod = torch.randn(1, tokens, 6, dim, device=device, dtype=torch.bfloat16) * 0.1
    results = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, tokens=tokens, runs={})

    for precision in args.precisions.split(","):
        dit = torch.nn.Module()
        dit.blocks = torch.nn.ModuleList([DiTBlock(False, dim, heads, 14336).to(device, torch.bfloat16)])
        add_lora(dit, 32)
        if precision == "fp8":
            convert_block_linears(dit)
        dit.to(torch.bfloat16)  # as the launcher runs it: DeepSpeed's bf16 mode, LoRA included, no autocast
        block = dit.blocks[0]
        for variant in args.variants.split(","):
            torch._dynamo.reset()  # each variant compiles afresh (Inductor options included)
            configure_blocks(dit, 0, compile_blocks=variant.startswith("shipped"))
            if variant.startswith("shipped"):  # real RoPE and modulated_block_forward
                forward = block
            elif variant == "diffsynth-real-rope":
                block.self_attn.__class__ = real_rope_attention(type(block.self_attn))
                forward = _with_real_freqs(torch.compile(type(block).forward.__get__(block)))
            else:
                forward = torch.compile(type(block).forward.__get__(block))

            def step(forward=forward, block=block):
                out = forward(x, context, t_mod, freqs)
                out.float().square().mean().backward()
                x.grad = None
                block.zero_grad()

            compile_start = time.perf_counter()
            with torch._inductor.config.patch(INDUCTOR_OPTIONS[variant]):  # compiled in the first call
                for _ in range(3):
                    step()
            torch.cuda.synchronize()
            compile_seconds = time.perf_counter() - compile_start
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            name = f"{precision}, {variant}"
            results["runs"][name] = dict(ms=statistics.median(times) * 1e3, first_steps_seconds=compile_seconds,
                                         peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                                         profile=kernel_groups(step))
            print(name, json.dumps(results["runs"][name]), flush=True)
            if args.out:  # after every run: a call cut short keeps what it measured
                Path(args.out).write_text(json.dumps(results, indent=1))
        del dit, block, forward, step
        torch.cuda.empty_cache()

    print(f"\n{results['gpu']}, torch {results['torch']}, one block, {tokens} tokens, fwd+bwd")
    for name, run in results["runs"].items():
        print(f"{name:40s} {run['ms']:7.2f} ms  peak {run['peak_gib']:5.1f} GiB  first 3 steps "
              f"{run['first_steps_seconds']:5.1f} s  {run['profile']['groups_ms']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
