"""Loading a .pth model file through DiffSynth (hash of keys and shapes, then the load), torch's default read vs
memory-mapped (`wan_sft.model_files.memory_mapped_torch_load`, what `load_pipeline` uses). CPU only, no GPU needed.

    python bench/load_speed.py --dir /tmp/load_bench [--num_layers 8] [--repeats 3]

Writes a UMT5-XXL text encoder with random bf16 weights in the layout of `models_t5_umt5-xxl-enc-bf16.pth` (the
real one has 24 layers, 11.4 GB; --num_layers 24 needs ~2x that in RAM for the default read) and registers its
hash like the tiny model folder does. Each measurement runs in a fresh process, with the file dropped from the page
cache first (cold) or read once before (warm): seconds for the hash alone, for hash + load
(`download_and_load_models`, as `WanVideoPipeline.from_pretrained` runs it), and the peak private memory.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wan_sft.model_files import T5_FILE, memory_mapped_torch_load, register_random_weights  # noqa: E402

REGISTRY = "registry.json"


def write_text_encoder(folder: Path, num_layers: int) -> Path:
    from diffsynth.core.loader import hash_model_file
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder

    path = folder / T5_FILE
    if path.is_file() and (folder / REGISTRY).is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanTextEncoder(num_layers=num_layers).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    torch.save({k: torch.randn(shape, generator=generator).to(torch.bfloat16) for k, shape in shapes.items()}, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())  # clean pages, so that dropping them from the page cache works
    with memory_mapped_torch_load():
        model_hash = hash_model_file(str(path))
    (folder / REGISTRY).write_text(json.dumps([dict(
        model_hash=model_hash, model_name="wan_video_text_encoder",
        model_class="diffsynth.models.wan_video_text_encoder.WanTextEncoder",
        extra_kwargs=dict(num_layers=num_layers))]))
    return path


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_through(path: Path, chunk: int = 64 * 2**20) -> None:
    with open(path, "rb") as f:
        while f.read(chunk):
            pass


class PeakPrivateMemory:
    """Peak anonymous (private) resident memory of this process, sampled every 5 ms: what each rank holds alone,
    unlike mapped file pages, which the page cache shares between processes and can drop."""

    def __enter__(self):
        self.peak_kib, self._done = 0, threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._sample_until_done, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        status = Path("/proc/self/status").read_text()
        anon = int(next(line for line in status.splitlines() if line.startswith("RssAnon:")).split()[1])
        self.peak_kib = max(self.peak_kib, anon)

    def _sample_until_done(self):
        while not self._done.wait(0.005):
            self._sample()

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self._sample()


def measure_once(folder: Path, what: str, mapped: bool) -> dict:
    """In this (fresh) process: hash or hash + load, timed, and the peak private memory."""
    from diffsynth.core.loader import hash_model_file
    from diffsynth.pipelines.wan_video import ModelConfig, WanVideoPipeline

    path = str(folder / T5_FILE)
    register_random_weights(str(folder / REGISTRY))
    start = time.perf_counter()
    with memory_mapped_torch_load() if mapped else contextlib.nullcontext(), \
            contextlib.redirect_stdout(sys.stderr), PeakPrivateMemory() as memory:
        if what == "hash":
            hash_model_file(path)
        else:
            pipe = WanVideoPipeline(device="cpu", torch_dtype=torch.bfloat16)
            pool = pipe.download_and_load_models([ModelConfig(path=path)])
            assert pool.fetch_model("wan_video_text_encoder") is not None
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, peak_private_gib=memory.peak_kib / 2**20)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, help="where the text encoder file is written (kept for reruns)")
    parser.add_argument("--num_layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--measure", nargs=2, metavar=("WHAT", "MAPPED"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    folder = Path(args.dir)
    if args.measure:
        print(json.dumps(measure_once(folder, args.measure[0], args.measure[1] == "1")))
        return 0

    path = write_text_encoder(folder, args.num_layers)
    size_gib = path.stat().st_size / 2**30
    results = dict(file_gib=size_gib, num_layers=args.num_layers, torch=torch.__version__, cpus=os.cpu_count(), runs={})
    for cache in ("cold", "warm"):
        for what in ("hash", "hash+load"):
            for mapped in (False, True):
                runs = []
                for _ in range(args.repeats):
                    if cache == "cold":
                        drop_from_page_cache(path)
                    else:
                        read_through(path)
                    child = subprocess.run([sys.executable, __file__, "--dir", str(folder), "--measure", what,
                                            "1" if mapped else "0"], capture_output=True, text=True, check=True)
                    runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
                name = f"{cache} {what} {'mmap' if mapped else 'default'}"
                results["runs"][name] = dict(seconds=statistics.median(r["seconds"] for r in runs),
                                             peak_private_gib=statistics.median(r["peak_private_gib"] for r in runs),
                                             all_seconds=[r["seconds"] for r in runs])
                print(name, json.dumps(results["runs"][name]), flush=True)

    print(f"\n{path.name}: {size_gib:.2f} GiB ({args.num_layers} layers), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, median of {args.repeats} fresh processes")
    print(f"{'page cache':10s} {'what':10s} {'default s':>10s} {'mmap s':>8s} {'speed-up':>9s} "
          f"{'default private':>16s} {'mmap private':>13s}")
    for cache in ("cold", "warm"):
        for what in ("hash", "hash+load"):
            default, mapped = (results["runs"][f"{cache} {what} {v}"] for v in ("default", "mmap"))
            print(f"{cache:10s} {what:10s} {default['seconds']:10.2f} {mapped['seconds']:8.2f} "
                  f"{default['seconds'] / mapped['seconds']:8.1f}x {default['peak_private_gib']:14.2f} G "
                  f"{mapped['peak_private_gib']:11.2f} G")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
