"""The MODEL_BASE_PATH layout: check it, load it through DiffSynth, and write random-weight copies of it.

Real, full-size random (`5b`) and tiny random weights all load through `load_pipeline`, i.e. DiffSynth's
`WanVideoPipeline.from_pretrained`, which recognises each file by a hash of its keys and shapes. The tiny
architecture is unknown to DiffSynth, so the writer leaves a sidecar (`REGISTRY_FILE`) with its hashes, which
`load_pipeline` appends to DiffSynth's model table before loading.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.serialization import config as serialization

from .config import InputError

DIT_SHARDS = tuple(f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_FILE = "Wan2.2_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
REGISTRY_FILE = "wan_sft_registry.json"

# Wan2.2-TI2V-5B, as registered in diffsynth.configs.MODEL_CONFIGS.
DIT_5B = dict(
    has_image_input=False, patch_size=[1, 2, 2], in_dim=48, dim=3072, ffn_dim=14336, freq_dim=256, text_dim=4096,
    out_dim=48, num_heads=24, num_layers=30, eps=1e-6, seperated_timestep=True, require_clip_embedding=False,
    require_vae_embedding=False, fuse_vae_embedding_in_latents=True,
)
# Same architecture, a few MB: head_dim 32 (RoPE needs one of 12/24/32/64/128), text_dim = tiny T5 dim.
DIT_TINY = dict(DIT_5B, dim=64, ffn_dim=128, freq_dim=32, text_dim=32, num_heads=2, num_layers=2)
T5_TINY = dict(dim=32, dim_attn=32, dim_ffn=64, num_heads=2, num_layers=2, num_buckets=8)
TINY_VOCAB = (
    "<pad> </s> <unk> draw a red path connecting two dots without touching the black walls static camera "
    "mark midpoint of line segment point center circle solve maze puzzle from to . ,"
).split()


@dataclass(frozen=True)
class ModelFiles:
    dit_shards: list[str]
    text_encoder: str
    vae: str
    tokenizer_dir: str
    registry: str | None  # sidecar of a tiny random-weight folder, None for real/5b weights


def locate_model_files(base: str | os.PathLike | None) -> ModelFiles:
    """Check the layout and that each file is readable, without loading anything heavy."""
    if not base:
        raise InputError("MODEL_BASE_PATH is not set: export MODEL_BASE_PATH=/path/to/Wan2.2-TI2V-5B")
    base = Path(base)
    if not base.is_dir():
        raise InputError(f"MODEL_BASE_PATH {base} is not a directory")
    for name in (*DIT_SHARDS, T5_FILE, VAE_FILE):
        _check_weights_file(base / name)
    tokenizer = base / TOKENIZER_DIR
    if not tokenizer.is_dir() or not any(tokenizer.glob("tokenizer*")) and not any(tokenizer.glob("spiece.model")):
        raise InputError(f"{tokenizer}: tokenizer folder missing or empty (expected tokenizer.json or spiece.model)")
    registry = base / REGISTRY_FILE
    return ModelFiles(
        [str(base / n) for n in DIT_SHARDS], str(base / T5_FILE), str(base / VAE_FILE), str(tokenizer),
        str(registry) if registry.is_file() else None,
    )


def _check_weights_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: model file not found (MODEL_BASE_PATH must hold "
                         f"{', '.join((*DIT_SHARDS, T5_FILE, VAE_FILE))} and {TOKENIZER_DIR}/)")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        elif not zipfile.is_zipfile(path):
            raise ValueError("not a torch zip archive")
    except Exception as error:  # noqa: BLE001 - any failure here means the file is unusable
        raise InputError(f"{path}: model file is unreadable or truncated ({error}); re-download it") from None


def register_random_weights(registry: str | None) -> None:
    """Append the tiny architecture's hashes to DiffSynth's model table (idempotent)."""
    if registry is None:
        return
    from diffsynth.configs import MODEL_CONFIGS

    known = {entry["model_hash"] for entry in MODEL_CONFIGS}
    for entry in json.loads(Path(registry).read_text()):
        if entry["model_hash"] not in known:
            MODEL_CONFIGS.append(entry)


def load_pipeline(base, device: str | torch.device, torch_dtype: torch.dtype, with_text_encoder: bool = True,
                  with_vae: bool = True):
    """Load the Wan2.2-TI2V-5B pipeline from MODEL_BASE_PATH; skipping T5/VAE saves memory when inputs are cached."""
    from diffsynth.pipelines.wan_video import ModelConfig, WanVideoPipeline

    files = locate_model_files(base)
    register_random_weights(files.registry)
    configs = [ModelConfig(path=files.dit_shards)]
    if with_text_encoder:
        configs.append(ModelConfig(path=files.text_encoder))
    if with_vae:
        configs.append(ModelConfig(path=files.vae))
    with contextlib.redirect_stdout(io.StringIO()), memory_mapped_torch_load():  # DiffSynth prints a page per file
        pipe = WanVideoPipeline.from_pretrained(
            torch_dtype=torch_dtype, device=device, model_configs=configs,
            tokenizer_config=ModelConfig(path=files.tokenizer_dir) if with_text_encoder else None,
        )
    if pipe.vae is None and with_vae or pipe.dit is None:
        raise InputError(f"{base}: DiffSynth did not recognise the model files as Wan2.2-TI2V-5B")
    pipe.height_division_factor = pipe.width_division_factor = 32  # DiffSynth assumes 16 without a VAE
    keep_rope_frequencies_on(pipe.dit, device)
    for model in (pipe.dit, pipe.text_encoder, pipe.vae):
        if model is not None:
            model.requires_grad_(False)  # DiffSynth leaves them trainable; training adds LoRA on top
    return pipe


def keep_rope_frequencies_on(dit, device: str | torch.device) -> None:
    """Put the DiT's RoPE frequency tables on `device`.

    DiffSynth keeps them on the CPU (not buffers, so `.to()` leaves them there) and, in every forward, concatenates
    them into one table per token on the CPU (9 MB of complex128 at 81x896x480) and copies that to the GPU, which
    waits: 6–10 ms of a 0.55 s training step (bench/RESULTS.md). On the device the same concatenation is one kernel."""
    dit.freqs = tuple(table.to(device) for table in dit.freqs)


@contextlib.contextmanager
def memory_mapped_torch_load():
    """Make DiffSynth's `torch.load` of the .pth files (T5, VAE) memory-mapped.

    DiffSynth recognises a file by a hash of its keys and shapes, and for a .pth it reads the whole file to get
    them, then reads it again to load it: the 11 GB T5 twice per process. Mapped, the hash reads only the pickled
    index, the load reads each tensor once, and the ranks of one node share the page cache instead of each holding
    a private copy while loading (bench/load_speed.py)."""
    before, serialization.load.mmap = serialization.load.mmap, True
    try:
        yield
    finally:
        serialization.load.mmap = before


# ---------------------------------------------------------------- writing random-weight model folders


class TinyWanVideoVAE38:
    """Factory registered for the tiny VAE: WanVideoVAE38 takes no decoder width, so swap in a small inner model."""

    def __new__(cls):
        from diffsynth.models.wan_video_vae import VideoVAE38_, WanVideoVAE38

        vae = WanVideoVAE38(dim=16)
        vae.model = VideoVAE38_(dim=16, z_dim=48, dec_dim=16).eval().requires_grad_(False)
        return vae


def write_model_folder(out: str | os.PathLike, size: str = "tiny", seed: int = 0, device: str = "cpu") -> Path:
    """Write a random-weight model folder in the MODEL_BASE_PATH layout. `size` is "tiny" or "5b"."""
    from diffsynth.core.loader import hash_model_file
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import WanVideoVAE38

    if size not in ("tiny", "5b"):
        raise InputError(f"model size {size!r} is unknown: use tiny or 5b")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = size == "tiny"
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(seed)
    tokenizer_dir = out / TOKENIZER_DIR
    _write_word_level_tokenizer(tokenizer_dir)

    with torch.device(device):
        dit = WanModel(**(DIT_TINY if tiny else DIT_5B))
    state = {k: v.to(dtype).contiguous().cpu() for k, v in dit.state_dict().items()}
    del dit
    keys = sorted(state)
    for i, name in enumerate(DIT_SHARDS):
        save_file({k: state[k] for k in keys[i::3]}, str(out / name))
    del state

    with torch.device(device):
        t5 = WanTextEncoder(vocab=len(TINY_VOCAB), **T5_TINY) if tiny else WanTextEncoder()
    torch.save({k: v.to(dtype).cpu() for k, v in t5.state_dict().items()}, out / T5_FILE)
    del t5

    with torch.device(device):
        vae = TinyWanVideoVAE38() if tiny else WanVideoVAE38()
    torch.save({k: v.to(dtype).cpu() for k, v in vae.model.state_dict().items()}, out / VAE_FILE)
    del vae

    registry_path = out / REGISTRY_FILE
    if tiny:
        registry = [
            dict(model_hash=hash_model_file([str(out / n) for n in DIT_SHARDS]), model_name="wan_video_dit",
                 model_class="diffsynth.models.wan_video_dit.WanModel", extra_kwargs=DIT_TINY),
            dict(model_hash=hash_model_file(str(out / T5_FILE)), model_name="wan_video_text_encoder",
                 model_class="diffsynth.models.wan_video_text_encoder.WanTextEncoder",
                 extra_kwargs=dict(vocab=len(TINY_VOCAB), **T5_TINY)),
            dict(model_hash=hash_model_file(str(out / VAE_FILE)), model_name="wan_video_vae",
                 model_class="wan_sft.model_files.TinyWanVideoVAE38",
                 state_dict_converter="diffsynth.utils.state_dict_converters.wan_video_vae.WanVideoVAEStateDictConverter"),
        ]
        registry_path.write_text(json.dumps(registry, indent=1))
    else:
        registry_path.unlink(missing_ok=True)
    return out


def _write_word_level_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(TINY_VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.save_pretrained(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a random-weight Wan2.2-TI2V-5B model folder (MODEL_BASE_PATH layout).")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--size", choices=("tiny", "5b"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to initialise the weights (5b: cuda is much faster)")
    args = parser.parse_args(argv)
    path = write_model_folder(args.out, args.size, args.seed, args.device)
    print(f"wrote {args.size} random-weight model folder: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
