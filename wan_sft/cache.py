"""The latent cache: VAE latents of each clip and its first frame, and the T5 context of its prompt, encoded once.

An entry is keyed by everything that determines it (the clip file's identity, frames, size, prompt, the VAE/T5
files' identity, dtype), so a changed file or setting is encoded anew and nothing stale is ever used. Entries are
safetensors files written atomically; one that fails to load is encoded again.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from .fsutil import atomic_write
from .geometry import DEFAULT_FIT

CACHED_INPUTS = ("input_latents", "first_frame_latents", "context")


def file_identity(path: str | os.PathLike) -> list:
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def entry_key(video: str, prompt: str, num_frames: int, height: int, width: int, model_files, dtype,
              fit: str = DEFAULT_FIT) -> str:
    parts = dict(video=file_identity(video), prompt=prompt, num_frames=num_frames, height=height, width=width, fit=fit,
                 vae=file_identity(model_files.vae), text_encoder=file_identity(model_files.text_encoder),
                 tokenizer=sorted(file_identity(p) for p in Path(model_files.tokenizer_dir).iterdir()),
                 dtype=str(dtype))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def entry_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.safetensors"


def read_entry(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when the entry is missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 - any unreadable entry is simply encoded again
        print(f"warning: latent cache entry {path} is corrupt; encoding it again", file=sys.stderr)
        return None
    return tensors if all(k in tensors for k in CACHED_INPUTS) else None


def write_entry(path: Path, inputs: dict) -> int:
    data = save({k: inputs[k].detach().cpu().contiguous() for k in CACHED_INPUTS})
    atomic_write(path, data)
    return len(data)


class CachedDataset(torch.utils.data.Dataset):
    """Training samples read from the cache: only tensors, no video decoding."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        tensors = read_entry(self.paths[index])
        if tensors is None:
            raise RuntimeError(f"latent cache entry {self.paths[index]} vanished or broke during training; rerun to rebuild it")
        return {**tensors, "index": index}


def entry_paths(samples, cache_dir, num_frames, height, width, model_files, dtype, fit=DEFAULT_FIT) -> list[Path]:
    return [entry_path(cache_dir, entry_key(s.video, s.prompt, num_frames, height, width, model_files, dtype, fit))
            for s in samples]


def missing_entries(paths: list[Path], rank: int, world: int) -> list[int]:
    """This rank's share of the entries that are missing or unreadable (each rank checks and fills its share)."""
    return [i for i in range(rank, len(paths), world) if read_entry(paths[i]) is None]


def fill_cache(accelerator, encode, clip_dataset, paths: list[Path], mine: list[int]) -> None:
    """Encode this rank's missing entries (collective: ends when every rank is done); resumable."""
    from tqdm import tqdm

    sizes = []
    for i in tqdm(mine, desc="encoding latent cache", unit="clip", disable=not accelerator.is_main_process or not mine):
        sizes.append(write_entry(paths[i], encode(clip_dataset[i])))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and sizes:
        print(f"latent cache: {len(mine)} clips on rank 0 encoded into {paths[0].parent.parent}, "
              f"{sum(sizes) / len(sizes) / 2**20:.1f} MiB per clip", flush=True)
