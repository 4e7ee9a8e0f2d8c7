"""The part of a training state that does not depend on the number of processes, for a resume on another one.

accelerate's files in a state are per rank (DeepSpeed's ZeRO optimizer shards, one RNG file per rank). Beside
them, `portable.safetensors` (run_folder.PORTABLE_STATE) holds the full LoRA, the full AdamW moments and step
count, keyed by parameter name, and the LR schedule; progress.json holds the global sample position. Sample order
and noise are seeded from positions (train.py), so no RNG state is needed to continue exactly where the epoch
stopped.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save


def gather(dit: torch.nn.Module, adamw: torch.optim.AdamW, scheduler, deepspeed: bool) -> bytes:
    """The file's bytes (collective under DeepSpeed: ZeRO gathers the partitions)."""
    tensors = {}
    for name, param in _trainable(dit):
        if deepspeed:
            from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

            values = (safe_get_full_fp32_param(param), safe_get_full_optimizer_state(param, "exp_avg"),
                      safe_get_full_optimizer_state(param, "exp_avg_sq"))
        else:
            state = adamw.state[param]
            values = (param, state["exp_avg"], state["exp_avg_sq"])
        for kind, value in zip(("lora", "exp_avg", "exp_avg_sq"), values, strict=True):
            tensors[f"{kind}/{name}"] = value.detach().float().cpu().contiguous()
    tensors["step"] = next(iter(adamw.state.values()))["step"].detach().float().cpu().reshape(1)
    return save(tensors, metadata={"scheduler": json.dumps(scheduler.state_dict())})


def load(path: Path, dit: torch.nn.Module, adamw: torch.optim.AdamW, scheduler, deepspeed: bool) -> None:
    """Set the LoRA, AdamW state and schedule of every rank from the file (collective under DeepSpeed)."""
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        scheduler.load_state_dict(json.loads(f.metadata()["scheduler"]))
    for name, param in _trainable(dit):
        lora, exp_avg, exp_avg_sq = (tensors[f"{kind}/{name}"] for kind in ("lora", "exp_avg", "exp_avg_sq"))
        if deepspeed:
            from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

            safe_set_full_fp32_param(param, lora)
            safe_set_full_optimizer_state(param, exp_avg, "exp_avg")
            safe_set_full_optimizer_state(param, exp_avg_sq, "exp_avg_sq")
        else:
            with torch.no_grad():
                param.copy_(lora)
            adamw.state[param] = {"exp_avg": exp_avg.to(param.device), "exp_avg_sq": exp_avg_sq.to(param.device)}
    step = tensors["step"].reshape(())
    for state in adamw.state.values():  # under ZeRO: the flat partitions' states
        state["step"] = step.clone()


def _trainable(dit: torch.nn.Module):
    return [(name, p) for name, p in dit.named_parameters() if p.requires_grad]
