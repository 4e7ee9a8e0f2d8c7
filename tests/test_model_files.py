"""The MODEL_BASE_PATH layout: checks before loading, and tiny weights loading through DiffSynth's real path."""
import shutil
from pathlib import Path

import pytest
import torch

from wan_sft.config import InputError
from wan_sft.model_files import (
    DIT_SHARDS,
    T5_FILE,
    TOKENIZER_DIR,
    VAE_FILE,
    keep_rope_frequencies_on,
    load_pipeline,
    locate_model_files,
)


def test_tiny_folder_loads_through_diffsynth_model_detection(tiny_model):
    pipe = load_pipeline(tiny_model, "cpu", torch.float32)
    assert type(pipe.dit).__name__ == "WanModel" and len(pipe.dit.blocks) == 2
    assert pipe.dit.fuse_vae_embedding_in_latents and pipe.vae.z_dim == 48
    assert not any(p.requires_grad for p in pipe.dit.parameters())
    ids, mask = pipe.tokenizer("Draw a red path", return_mask=True, add_special_tokens=True)
    assert mask.sum() == 4 and (ids[0, :4] > 2).all()  # known words, lower-cased: no <unk>


@pytest.mark.parametrize("name", [*DIT_SHARDS, T5_FILE, VAE_FILE])
def test_missing_file_is_named(tiny_model, tmp_path, name):
    copy = shutil.copytree(tiny_model, tmp_path / "m")
    (copy / name).unlink()
    with pytest.raises(InputError, match=f"{copy / name}: model file not found"):
        locate_model_files(copy)


@pytest.mark.parametrize("name", [DIT_SHARDS[1], VAE_FILE])
def test_truncated_file_is_named(tiny_model, tmp_path, name):
    copy = shutil.copytree(tiny_model, tmp_path / "m")
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=f"{copy / name}: model file is unreadable or truncated"):
        locate_model_files(copy)


def test_missing_tokenizer_and_unset_base(tiny_model, tmp_path):
    copy = shutil.copytree(tiny_model, tmp_path / "m")
    shutil.rmtree(copy / TOKENIZER_DIR)
    with pytest.raises(InputError, match="tokenizer folder missing or empty"):
        locate_model_files(copy)
    with pytest.raises(InputError, match="MODEL_BASE_PATH is not set"):
        locate_model_files(None)



def test_pth_files_load_memory_mapped_with_the_same_weights_and_the_default_is_restored(tiny_model, monkeypatch):
    """DiffSynth reads a .pth whole once to hash it and again to load it; mapped, neither pass copies the file."""
    from torch.utils.serialization import config as serialization

    mapped = {}
    real_load = torch.load

    def recording_load(path, *args, **kwargs):
        mapped.setdefault(Path(path).name, []).append(kwargs.get("mmap", serialization.load.mmap))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    pipe = load_pipeline(tiny_model, "cpu", torch.float32)
    assert mapped == {T5_FILE: [True, True], VAE_FILE: [True, True]}  # hash pass, load pass
    assert serialization.load.mmap is False  # other torch.load calls keep torch's default
    on_disk = real_load(tiny_model / T5_FILE, weights_only=True)
    loaded = pipe.text_encoder.state_dict()
    assert on_disk.keys() == loaded.keys() and all(torch.equal(on_disk[k], loaded[k]) for k in on_disk)


def test_rope_frequency_tables_move_to_the_given_device(tiny_model):
    """DiffSynth leaves them on the CPU whatever the pipeline's device; `meta` stands in for the GPU here."""
    dit = load_pipeline(tiny_model, "cpu", torch.float32, with_text_encoder=False, with_vae=False).dit
    before = [(t.dtype, t.shape) for t in dit.freqs]
    keep_rope_frequencies_on(dit, "meta")
    assert [(t.device.type, t.dtype, t.shape) for t in dit.freqs] == [("meta", *b) for b in before]
