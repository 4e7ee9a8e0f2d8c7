"""The worker pool of an evaluation: one process per GPU (or `--workers` CPU processes) loads the pipeline once,
then generates and scores the items the parent hands it. Workers get items one at a time from the parent over their
own pipe (no shared queue lock that a killed worker could leave held); a worker that dies costs only its current
item, which is reported.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import torch

from .config import InputError
from .datasets import PuzzleItem
from .eval_items import ScoringOptions, item_path, score_and_record
from .fsutil import WriteFailed, write_failed
from .inference import GenerationSettings, generate, load_generator, read_image
from .video import read_frames, write_video


@dataclass(frozen=True)
class GenerationJob:
    """What every worker needs besides its device."""
    model_base_path: str
    lora_path: str | None
    settings: GenerationSettings
    fps: int
    output_dir: str
    compile_blocks: bool
    scoring: ScoringOptions
    fp8: bool = False


def generate_item(pipe, item: PuzzleItem, job: GenerationJob, worker: str) -> dict:
    """Generate, write the mp4, and score the frames decoded from it (what the official tools score)."""
    output_dir = Path(job.output_dir)
    start = time.perf_counter()
    frames = generate(pipe, read_image(item.puzzle_path), item.prompt, job.settings)
    seconds = time.perf_counter() - start
    video = item_path(output_dir, item.task, item.id, "video")
    try:
        write_video(video, frames, fps=job.fps)
    except OSError as error:
        raise write_failed(video, error) from error
    return score_and_record(item, read_frames(video), output_dir, True, seconds, worker, job.scoring)


@dataclass(frozen=True)
class WorkerSpec:
    name: str  # "gpu0", "cpu1", ...
    gpu: int | None
    cpu_threads: int


def _exit_with_parent() -> None:
    """A worker must not outlive a killed parent (it would race a rerun on the same items)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        def watch():
            wait([parent.sentinel])
            os._exit(1)
        threading.Thread(target=watch, daemon=True).start()


def _describe(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{error.__class__.__name__}: {error}{where}".replace("\n", " ")


def worker_main(conn, spec: WorkerSpec, job: GenerationJob) -> None:
    """Load the pipeline once, then generate+score each item the parent sends until it sends None."""
    _exit_with_parent()
    torch.set_num_threads(spec.cpu_threads)
    if spec.gpu is None:
        device = "cpu"
    else:
        torch.cuda.set_device(spec.gpu)
        device = f"cuda:{spec.gpu}"
    try:
        pipe, fused = load_generator(job.model_base_path, job.lora_path, device,
                                     compile_blocks=job.compile_blocks and device.startswith("cuda"), fp8=job.fp8)
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which names it
        conn.send(("load_failed", None, _describe(error)))
        return
    conn.send(("ready", None, fused))
    while (item := conn.recv()) is not None:
        try:
            conn.send(("done", item.key, generate_item(pipe, item, job, spec.name)))
        except WriteFailed as error:  # a full disk: every further item would fail too
            conn.send(("write_failed", item.key, str(error)))
        except Exception as error:  # noqa: BLE001 - one bad item must not stop the others
            conn.send(("failed", item.key, _describe(error)))


def worker_specs(gpus: str | None, workers: int) -> list[WorkerSpec]:
    """One worker per listed GPU (default all visible); without GPUs, `workers` CPU workers. Workers share the
    cores (OMP_NUM_THREADS threads each when set): GPU workers also decode, convert and encode video on the CPU,
    and all of them using every core slows each other down."""
    visible = torch.cuda.device_count()
    if gpus is not None:
        try:
            indices = [int(part) for part in gpus.split(",") if part.strip()]
        except ValueError:
            raise InputError(f"--gpus {gpus!r} is invalid: give GPU indices like 0,1,2") from None
        bad = [i for i in indices if not 0 <= i < visible]
        if not indices or bad or len(set(indices)) != len(indices):
            raise InputError(f"--gpus {gpus!r} is invalid: {visible} GPU(s) are visible, give distinct indices "
                             f"in 0..{visible - 1}" if visible else f"--gpus {gpus!r} but no GPU is visible")
    elif visible:
        indices = list(range(visible))
    elif workers < 1:
        raise InputError(f"--workers {workers} is invalid: it must be at least 1")
    count = len(indices) if visible else workers
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // count)
    if visible:
        return [WorkerSpec(f"gpu{i}", i, threads) for i in indices]
    return [WorkerSpec(f"cpu{i}", None, threads) for i in range(workers)]


def run_workers(items: list[PuzzleItem], specs: list[WorkerSpec], job: GenerationJob, on_result,
                log=print) -> dict[str, str]:
    """Hand items out one at a time to whichever worker is free; returns {item key: why it is unfinished}."""
    context = torch.multiprocessing.get_context("spawn")
    pending = deque(items)
    processes, conns, busy, problems = {}, {}, {}, {}
    for spec in specs:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(child_end, spec, job), daemon=True)
        process.start()
        child_end.close()
        processes[spec.name], conns[spec.name], busy[spec.name] = process, parent_end, None

    def hand_out(name):
        item = pending.popleft() if pending else None
        try:
            conns[name].send(item)
            busy[name] = item
        except OSError:  # the worker is gone; its sentinel reports that
            if item is not None:
                pending.appendleft(item)

    load_errors, loaded = [], set()  # loaded: sent "ready" or "load_failed"
    alive = set(processes)
    try:
        while alive:
            wait([conns[n] for n in alive] + [processes[n].sentinel for n in alive])
            for name in sorted(alive):
                try:
                    while conns[name].poll():
                        kind, key, payload = conns[name].recv()
                        if kind == "ready":
                            loaded.add(name)
                            log(f"{name}: pipeline loaded" + (f", fused {payload} LoRA layers" if payload else ""))
                        elif kind == "load_failed":
                            loaded.add(name)
                            load_errors.append(f"{name}: {payload}")
                            log(f"{name}: failed to load the pipeline: {payload}")
                            continue
                        elif kind == "done":
                            on_result(payload)
                        elif kind == "write_failed":
                            raise WriteFailed(payload)  # the finally below stops the workers
                        else:
                            problems[key] = f"{name}: {payload}"
                            log(f"{name}: {key} failed: {payload}")
                        hand_out(name)
                except (EOFError, OSError):
                    pass
                if not processes[name].is_alive():
                    processes[name].join()
                    if name not in loaded:  # killed (out of memory, a signal) before it could report anything
                        why = f"exited (exit code {processes[name].exitcode}) while loading the pipeline"
                        load_errors.append(f"{name}: {why}")
                        log(f"{name}: {why}")
                    if busy[name] is not None:
                        key = busy[name].key
                        problems[key] = f"{name} died (exit code {processes[name].exitcode}) while generating it"
                        log(f"{name}: died (exit code {processes[name].exitcode}) while on {key}")
                        busy[name] = None
                    alive.discard(name)
    finally:
        for process in processes.values():
            if process.is_alive():
                process.kill()
    why = "; ".join(sorted(load_errors)) or "all workers exited"
    problems.update({item.key: f"not started ({why})" for item in pending})
    return problems
