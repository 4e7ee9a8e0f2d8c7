"""What a launch costs as the dataset grows (CPU, no model): the clip check, the cache scan, cache bytes, the loader.

    python bench/scale.py --dir /tmp/scale --num_clips 20000 [--distinct 64] [--prompts 10] [--workers 2]

Builds N real-format clips (distinct files: copies of --distinct small H.264 clips, 9 frames 64x64) and a CSV with
--prompts prompts, then measures, in this process:
* prepare_csv.py on the CSV (decodes every clip; writes the clip-check record),
* the first launch's clip check (no record: every clip decoded) and a relaunch's (record, nothing changed; and with
  1% of the clips touched),
* cache bytes per clip for the 5B shapes at 81x896x480 (real safetensors entries written with those shapes),
* the start-time cache scan over N entries (keys + header/size check, one rank),
* the data loader's samples/s from 5B-shape cache entries (cold: each file dropped from the page cache first).
Prints a markdown table: measured at N, and per-clip costs extrapolated linearly to 100k and 1M (labelled).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wan_sft import cache  # noqa: E402
from wan_sft.data import read_training_csv, validate_training_csv, write_training_csv  # noqa: E402
from wan_sft.prepare import main as prepare_csv  # noqa: E402
from wan_sft.video import write_video  # noqa: E402

DECODE_SECONDS_5B_CLIP = 0.069  # one 81x896x480 maze clip decoded on one core (measured, issue 14)
T5_TOKENS = 64  # a VideoThinkBench prompt is 20-50 words; 64 umt5 tokens is a generous bound
SHAPES_5B = dict(first_frame_latents=(1, 48, 1, 56, 30), input_latents=(1, 48, 21, 56, 30))


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def build_clips(folder: Path, num_clips: int, distinct: int, prompts: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(distinct):
        path = folder / f"source{i}.mp4"
        rng = np.random.default_rng(i)
        write_video(path, [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(9)])
        sources.append(path)
    rows = []
    for i in range(num_clips):
        clip = folder / f"{i // 1000:04d}" / f"clip{i:07d}.mp4"
        clip.parent.mkdir(exist_ok=True)
        shutil.copyfile(sources[i % distinct], clip)
        rows.append((str(clip), f"task {i % prompts}: draw a red path connecting the two red dots"))
    csv_path = folder / "dataset.csv"
    write_training_csv(csv_path, rows)
    return csv_path


def entry_bytes_5b(folder: Path) -> tuple[int, int]:
    """(clip entry, text entry) bytes for the 5B shapes in bf16 (tensor contents do not change the size)."""
    inputs = {name: torch.ones(shape, dtype=torch.bfloat16) for name, shape in SHAPES_5B.items()}
    inputs["context"] = torch.cat([torch.ones(1, T5_TOKENS, 4096, dtype=torch.bfloat16),
                                   torch.zeros(1, 512 - T5_TOKENS, 4096, dtype=torch.bfloat16)], dim=1)
    return cache.write_entries((folder / "clip.safetensors", folder / "text.safetensors"), inputs, write_text=True)


class FakeModelFiles:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.vae, self.text_encoder, self.tokenizer_dir = folder / "vae", folder / "t5", folder / "tokenizer"
        self.tokenizer_dir.mkdir(exist_ok=True)
        for path in (self.vae, self.text_encoder, self.tokenizer_dir / "spiece.model"):
            path.write_bytes(b"x")


def scan(samples, cache_dir: Path, files) -> tuple[float, float, list]:
    """(seconds for the keys, seconds for the header/size check, paths) as one rank of one process does at start."""
    paths = cache.EntryPaths(samples, cache_dir, 9, 64, 64, files, torch.bfloat16)
    key_seconds, _ = timed(lambda: [paths[i] for i in range(len(paths))])  # computed lazily, here all at once
    check_seconds, (missing, _, _) = timed(cache.missing_entries, paths, 0, 1)
    return key_seconds, check_seconds, paths, missing


def fill_small_entries(paths) -> None:
    inputs = {"first_frame_latents": torch.zeros(1, 4, 1, 2, 2), "input_latents": torch.zeros(1, 4, 3, 2, 2),
              "context": torch.ones(1, 16, 8)}
    for clip_path, text_path in paths:
        cache.write_entries((clip_path, text_path), inputs, write_text=not text_path.exists())


def loader_samples_per_second(folder: Path, count: int) -> tuple[float, float]:
    """CachedDataset over `count` distinct 5B-shape entries: (cold: each dropped from the page cache before it is
    read, warm: read again)."""
    inputs = {name: torch.randn(shape).to(torch.bfloat16) for name, shape in SHAPES_5B.items()}
    inputs["context"] = torch.cat([torch.randn(1, T5_TOKENS, 4096), torch.zeros(1, 512 - T5_TOKENS, 4096)],
                                  dim=1).to(torch.bfloat16)
    paths = [(folder / f"clip{i}.safetensors", folder / "text.safetensors") for i in range(count)]
    for path in paths:
        cache.write_entries(path, inputs, write_text=True)
    for clip_path, _ in paths:
        fd = os.open(clip_path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    dataset = cache.CachedDataset(paths)
    cold, _ = timed(lambda: [dataset[i]["input_latents"].sum() for i in range(count)])
    warm, _ = timed(lambda: [dataset[i]["input_latents"].sum() for i in range(count)])
    return count / cold, count / warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--num_clips", type=int, default=20000)
    parser.add_argument("--distinct", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--loader_entries", type=int, default=64)
    args = parser.parse_args()
    n = args.num_clips
    shutil.rmtree(args.dir, ignore_errors=True)
    build_seconds, csv_path = timed(build_clips, args.dir / "clips", n, args.distinct, args.prompts)
    print(f"built {n} clips in {build_seconds:.1f} s", file=sys.stderr)

    out_csv = args.dir / "prepared.csv"
    prepare_seconds, code = timed(prepare_csv, ["--csv", str(csv_path), "--output", str(out_csv), "--num_frames",
                                                "9", "--height", "64", "--width", "64", "--workers", str(args.workers)])
    assert code == 0
    first_seconds, samples = timed(validate_training_csv, csv_path, 9, 64, 64, recheck=True)
    relaunch_seconds, _ = timed(validate_training_csv, csv_path, 9, 64, 64)
    for sample in samples[:: 100]:
        os.utime(sample.video, ns=(1, 1))
    touched_seconds, _ = timed(validate_training_csv, csv_path, 9, 64, 64)
    csv_seconds, _ = timed(read_training_csv, csv_path)

    clip_bytes, text_bytes = entry_bytes_5b(args.dir / "entries_5b")
    files = FakeModelFiles(args.dir / "model")
    cache_dir = args.dir / "cache"
    _, _, paths, _ = scan(samples, cache_dir, files)
    fill_seconds, _ = timed(fill_small_entries, paths)
    print(f"wrote {n} small cache entries in {fill_seconds:.1f} s", file=sys.stderr)
    key_seconds, check_seconds, _, missing = scan(samples, cache_dir, files)
    assert missing == []
    cold_rate, warm_rate = loader_samples_per_second(args.dir / "loader", args.loader_entries)

    per_clip_5b = clip_bytes + text_bytes / (n / args.prompts)
    relaunch_total = csv_seconds + relaunch_seconds + key_seconds + check_seconds
    rows = [
        ("prepare_csv.py (decode all, tiny clips)", f"{n / prepare_seconds:.0f} clips/s", None),
        ("first launch clip check (no record, tiny clips)", f"{first_seconds:.2f} s", first_seconds / n),
        ("first launch clip check, 81x896x480 clips, 16 cores (from 69 ms/clip/core)", "",
         DECODE_SECONDS_5B_CLIP / 16),
        ("relaunch clip check (record, nothing changed)", f"{relaunch_seconds:.2f} s", relaunch_seconds / n),
        ("relaunch clip check, 1% of clips touched (tiny clips)", f"{touched_seconds:.2f} s", None),
        ("reading the CSV", f"{csv_seconds:.2f} s", csv_seconds / n),
        ("cache keys (stat + hash per clip), one rank", f"{key_seconds:.2f} s", key_seconds / n),
        ("cache scan (header + size per entry), one rank", f"{check_seconds:.2f} s", check_seconds / n),
        ("relaunch overhead before the first step, one rank (CSV + clip check + keys + scan)",
         f"{relaunch_total:.2f} s", relaunch_total / n),
    ]
    print(f"\n### Scale (N = {n} clips, {args.prompts} prompts, {args.workers} workers, {os.cpu_count()} CPUs)\n")
    print("| cost | measured at N | extrapolated to 100k | extrapolated to 1M |")
    print("|---|---|---|---|")
    for label, measured, per_clip in rows:
        extrapolated = [f"{per_clip * total:.1f} s" if per_clip is not None else "" for total in (10**5, 10**6)]
        print(f"| {label} | {measured} | {extrapolated[0]} | {extrapolated[1]} |")
    print(f"\nCache at 81x896x480, 5B shapes (bf16; written with those shapes): "
          f"clip entry {clip_bytes / 2**20:.3f} MiB, "
          f"text entry ({T5_TOKENS} tokens) {text_bytes / 2**20:.3f} MiB shared by the clips of its prompt: "
          f"{per_clip_5b / 2**20:.3f} MiB per clip with {n // args.prompts} clips per prompt "
          f"(before: 7.4 MiB: every entry held 512x4096 context and video frame 0).")
    print(f"Data loader from the cache (5B-shape entries, one thread): {cold_rate:.1f} samples/s cold from the "
          f"page cache, {warm_rate:.1f} warm (training needs 1.7 per rank).")


if __name__ == "__main__":
    main()
