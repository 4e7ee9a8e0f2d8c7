"""LoRA on the DiT: inject (peft), export in the format DiffSynth fuses, warm-start, and fuse for inference."""
from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save

from .config import InputError
from .fsutil import atomic_write

TARGET_MODULES = ["q", "k", "v", "o", "ffn.0", "ffn.2"]


def add_lora(dit: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """Freeze the DiT, add rank-`rank` adapters (alpha = rank, so scale 1 as DiffSynth trains) kept in fp32."""
    from peft import LoraConfig, inject_adapter_in_model

    dit.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGET_MODULES), dit)
    params = [p for name, p in dit.named_parameters() if ".lora_" in name]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def lora_state_dict(dit: torch.nn.Module, full_param=lambda p: p) -> dict[str, torch.Tensor]:
    """The adapters as fp32 CPU tensors keyed like `blocks.0.self_attn.q.lora_A.default.weight`.

    `full_param` turns a (possibly ZeRO-partitioned) parameter into its full fp32 value.
    """
    return {name: full_param(p).detach().float().cpu().contiguous()
            for name, p in dit.named_parameters() if ".lora_" in name}


def export_lora(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    atomic_write(path, save(state))


def read_lora_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: LoRA file not found") from None
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise InputError(f"{path}: not a readable safetensors LoRA file ({error})") from None
    if not any(".lora_A." in k or ".lora_down." in k for k in state):
        raise InputError(f"{path}: holds no LoRA tensors (no lora_A/lora_down keys)")
    return state


def warm_start(dit: torch.nn.Module, path: str | os.PathLike) -> int:
    """Copy LoRA weights from a file into the injected adapters; returns how many tensors were set."""
    state = read_lora_file(path)
    params = dict(dit.named_parameters())
    missing = [k for k in params if ".lora_" in k and k not in state]
    if missing:
        raise InputError(f"{path}: LoRA file lacks {len(missing)} of the adapters (first: {missing[0]}); "
                         f"was it trained with the same --lora_rank and targets?")
    for name, param in params.items():
        if name in state:
            if state[name].shape != param.shape:
                raise InputError(f"{path}: {name} has shape {tuple(state[name].shape)} but --lora_rank gives "
                                 f"{tuple(param.shape)}; pass the --lora_rank it was trained with")
            param.data.copy_(state[name].to(param.dtype))
    return sum(1 for name in params if name in state)


def fuse_lora(pipe, path: str | os.PathLike) -> int:
    """Fuse a LoRA file into pipe.dit with DiffSynth; returns the number of fused layers (0 raises)."""
    state = read_lora_file(path)
    loader = pipe.lora_loader(torch_dtype=pipe.torch_dtype, device=pipe.device)
    targets = {k[: -len(".lora_B.weight")] for k in loader.convert_state_dict(state) if k.endswith(".lora_B.weight")}
    fused = sum(1 for name, _ in pipe.dit.named_modules() if name in targets)
    if fused == 0:
        raise InputError(f"{path}: none of its LoRA keys match the DiT's layers (is it a Wan2.2-TI2V-5B LoRA?)")
    pipe.load_lora(pipe.dit, state_dict=state, alpha=1.0, verbose=0)
    return fused
