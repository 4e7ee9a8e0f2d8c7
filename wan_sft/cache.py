"""The latent cache: what the loss reads of each clip (VAE latents) and of each prompt (T5 context), encoded once.

Two kinds of entries, each keyed by everything that determines it, so a changed file or setting is encoded anew
and nothing stale is ever used:
* a clip entry (clip file identity, frames, size, VAE file, dtype): the first frame's latents and the video's latent
  frames 1..T-1. The loss never reads frame 0 of the video latents (DiffSynth's FlowMatchSFTLoss overwrites it with
  the first frame's latents and drops it from the target), so it is rebuilt from the first frame's.
* a text entry (prompt, T5 and tokenizer files, dtype), shared by every clip with that prompt: the context up to
  its last non-zero row. DiffSynth zeroes the context past the prompt's tokens (WanVideoUnit_PromptEmbedder), so
  the padding to the full length (512) is rebuilt as zeros: the same tensor, bit for bit.
Entries are safetensors files written atomically. At start an entry counts as present when its header is readable
and the file has the size the header promises (a few hundred bytes read, not the tensors); one that turns out
unreadable when training reads it raises CacheEntryError (train.py saves and stops; the rerun encodes it again).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm import tqdm

from .fsutil import atomic_write
from .geometry import DEFAULT_FIT

CACHED_INPUTS = ("input_latents", "first_frame_latents", "context")  # what the loss gets from the cache
CLIP_TENSORS = ("first_frame_latents", "later_latents")
TEXT_TENSORS = ("context",)


class CacheEntryError(RuntimeError):
    def __init__(self, path: Path, reason: str):
        super().__init__(f"latent cache entry {path} is unreadable ({reason})")
        self.path = path


def file_identity(path: str | os.PathLike) -> list:
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def clip_key(video: str, num_frames: int, height: int, width: int, vae: list, dtype, fit: str = DEFAULT_FIT) -> str:
    """vae: file_identity of the VAE file; fit: how frames map to W x H (geometry.py)."""
    return _digest(dict(video=file_identity(video), num_frames=num_frames, height=height, width=width, vae=vae,
                        dtype=str(dtype), fit=fit))


def text_key(prompt: str, text_encoder: list, dtype) -> str:
    """text_encoder: identities of the T5 file and every tokenizer file."""
    return _digest(dict(prompt=prompt, text_encoder=text_encoder, dtype=str(dtype)))


def entry_path(cache_dir: str | os.PathLike, kind: str, key: str) -> Path:
    return Path(cache_dir) / kind / key[:2] / f"{key}.safetensors"


class EntryPaths:
    """(clip entry, text entry) of sample i, computed when first asked for: a rank stats only the clips it scans or
    reads, not every clip of the dataset (at 10^5 clips and 120 ranks, 12M stats at every start otherwise)."""

    def __init__(self, samples, cache_dir, num_frames, height, width, model_files, dtype, fit=DEFAULT_FIT):
        self.samples, self.cache_dir, self.shape, self.dtype = samples, cache_dir, (num_frames, height, width), dtype
        self.fit = fit
        self.vae = file_identity(model_files.vae)
        text_encoder = [file_identity(model_files.text_encoder),
                        sorted(file_identity(p) for p in Path(model_files.tokenizer_dir).iterdir())]
        self.texts = {prompt: entry_path(cache_dir, "text", text_key(prompt, text_encoder, dtype))
                      for prompt in {s.prompt for s in samples}}
        self.known: dict[int, tuple[Path, Path]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Path, Path]:
        if i not in self.known:
            sample = self.samples[i]
            key = clip_key(sample.video, *self.shape, self.vae, self.dtype, self.fit)
            self.known[i] = (entry_path(self.cache_dir, "clip", key), self.texts[sample.prompt])
        return self.known[i]


def entry_size(path: Path, names: tuple[str, ...]) -> int | None:
    """The file's size if its header is readable, names these tensors and promises exactly this size; else None."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header_size = int.from_bytes(f.read(8), "little")
            if header_size > size - 8:
                return None
            header = json.loads(f.read(header_size))
        complete = size == 8 + header_size + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        return size if complete and all(name in header for name in names) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def split_inputs(inputs: dict) -> tuple[dict, dict]:
    """(clip tensors, text tensors) of what encode() returned: only what the loss reads."""
    context = inputs["context"].detach().cpu()
    nonzero_rows = context.reshape(context.shape[0], context.shape[1], -1).ne(0).any(dim=2).any(dim=0).nonzero()
    length = int(nonzero_rows.max()) + 1 if len(nonzero_rows) else 0
    clip = {"first_frame_latents": inputs["first_frame_latents"], "later_latents": inputs["input_latents"][:, :, 1:]}
    return ({k: v.detach().cpu().contiguous() for k, v in clip.items()},
            {"context": context[:, :length].contiguous(), "padded_length": torch.tensor(context.shape[1])})


def join_inputs(clip: dict, text: dict) -> dict:
    """The tensors encode() returned, rebuilt (frame 0 of input_latents is unread, see the module docstring)."""
    first, later = clip["first_frame_latents"], clip["later_latents"]
    context = text["context"]
    padded = context.new_zeros(context.shape[0], int(text["padded_length"]), *context.shape[2:])
    padded[:, :context.shape[1]] = context
    return {"input_latents": torch.cat([first.to(later.dtype), later], dim=2), "first_frame_latents": first,
            "context": padded}


def write_entries(paths: tuple[Path, Path], inputs: dict, write_text: bool) -> tuple[int, int]:
    """Write the clip entry (and the text entry if asked); their sizes in bytes (0: not written)."""
    clip, text = split_inputs(inputs)
    clip_data = save(clip)
    atomic_write(paths[0], clip_data)
    if not write_text:
        return len(clip_data), 0
    text_data = save(text)
    atomic_write(paths[1], text_data)
    return len(clip_data), len(text_data)


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as error:  # noqa: BLE001 - any unreadable entry is reported the same way
        raise CacheEntryError(path, f"{type(error).__name__}: {error}") from None


@functools.lru_cache(maxsize=256)
def _read_text(path: Path) -> dict[str, torch.Tensor]:
    """Text entries are few and shared by many clips: kept in memory (the newest 256)."""
    return _read(path)


class CachedDataset(torch.utils.data.Dataset):
    """Training samples read from the cache: only tensors, no video decoding."""

    def __init__(self, paths: EntryPaths):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        clip_path, text_path = self.paths[index]
        return {**join_inputs(_read(clip_path), _read_text(text_path)), "index": index}


def missing_entries(paths: EntryPaths, rank: int, world: int) -> tuple[list[int], set[Path], int]:
    """This rank's share of the samples whose clip or text entry is missing or incomplete (each rank checks and
    fills its share), the text entries among them that need writing, and the bytes of the complete entries of
    its share (text entries counted once)."""
    missing, texts_missing, sizes, text_sizes = [], set(), 0, {}
    for i in range(rank, len(paths), world):
        clip_path, text_path = paths[i]
        if text_path not in text_sizes:
            text_sizes[text_path] = _present(text_path, TEXT_TENSORS)
        clip_size = _present(clip_path, CLIP_TENSORS)
        if clip_size is None or text_sizes[text_path] is None:
            missing.append(i)
        if text_sizes[text_path] is None:
            texts_missing.add(text_path)
        sizes += clip_size or 0
    return missing, texts_missing, sizes + sum(size or 0 for size in text_sizes.values())


def _present(path: Path, names: tuple[str, ...]) -> int | None:
    if not path.exists():
        return None
    size = entry_size(path, names)
    if size is None:
        print(f"warning: latent cache entry {path} is corrupt; encoding it again", file=sys.stderr)
    return size


def fill_cache(accelerator, encode, clip_dataset, paths: EntryPaths, mine: list[int],
               texts_missing: set[Path], present_bytes: int) -> None:
    """Encode this rank's missing entries (collective: ends when every rank is done); resumable. Rank 0 reports
    the cache's bytes per clip over its share."""
    written = 0
    for i in tqdm(mine, desc="encoding latent cache", unit="clip", disable=not accelerator.is_main_process or not mine):
        write_text = paths[i][1] in texts_missing
        written += sum(write_entries(paths[i], encode(clip_dataset[i]), write_text))
        texts_missing.discard(paths[i][1])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        share = len(range(0, len(paths), accelerator.num_processes))
        prompts = len({paths[i][1] for i in range(0, len(paths), accelerator.num_processes)})
        encoded = f"{len(mine)} clips on rank 0 encoded, " if mine else ""
        per_clip = (written + present_bytes) / share / 2**20
        print(f"latent cache ({paths[0][0].parent.parent.parent}): {encoded}{per_clip:.3f} MiB per clip "
              f"({share} clips and {prompts} prompt contexts on rank 0)", flush=True)
