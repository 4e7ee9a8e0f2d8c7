"""The launcher's own training loop under the profiler: `wan_sft.train.main` as `accelerate launch` starts it, with
three optimizer steps of this process after the compile warm-up profiled from the start of one to the start of the
fourth, so the loop's work between steps (the checks, the log, the next sample) is in the window.

The loop's parts and DiffSynth's loss get `record_function` ranges (`loop:...`) by wrapping them here, so each GPU
idle gap is put down to the part that launched the work after it (`profiling.idle_report`). Prints (and
writes into $TRACE_OUT, with the Chrome trace) the wall time per step, the idle report, the GPU time by kernel group
and the CPU time of each range. `bench/gpu_run.sh launcher_trace` starts it in place of `wan_sft.train` with the
launcher's own command.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from profiling import export_trace, idle_report, kernel_summary  # noqa: E402

from wan_sft import checkpoints, train  # noqa: E402

FIRST_STEP, STEPS = 3, 3  # optimizer steps of this process (gpu_run.sh: steps 27-29, clear of an epoch end)


def ranged(owner, name: str, label: str) -> None:
    """Wrap owner.name (a function or method) in a profiler range."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(f"loop:{label}"):
            return original(*args, **kwargs)
    setattr(owner, name, wrapper)


def range_times(events: list[dict], steps: int) -> str:
    """CPU time per `loop:` range, per step."""
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "user_annotation" and e["name"].startswith("loop:") and "dur" in e:
            totals[e["name"]] += e["dur"]
    return "\n".join(f"  {total / steps / 1e3:8.2f} ms per step  {name}"
                     for name, total in sorted(totals.items(), key=lambda i: -i[1]))


def main() -> int:
    import accelerate
    import accelerate.optimizer
    import diffsynth.diffusion
    import diffsynth.diffusion.flow_match as flow_match

    out = Path(os.environ["TRACE_OUT"])
    for name in ("_next_samples", "_any_rank", "_divergence", "_log_step"):
        ranged(train, name, name.lstrip("_"))
    ranged(train._StopFlag, "agreed", "stop_agreed")
    ranged(checkpoints.Saver, "exports_due", "exports_due")
    ranged(checkpoints.Saver, "state_due", "state_due")
    ranged(train.FlowMatchLoss, "forward", "loss_forward")
    ranged(diffsynth.diffusion, "FlowMatchSFTLoss", "FlowMatchSFTLoss")
    ranged(flow_match.FlowMatchScheduler, "add_noise", "add_noise")
    ranged(flow_match.FlowMatchScheduler, "training_weight", "training_weight")
    ranged(accelerate.Accelerator, "backward", "backward")
    ranged(accelerate.optimizer.AcceleratedOptimizer, "step", "optimizer.step")

    cuda = torch.cuda.is_available()  # without: a CPU run of the demo checks the plumbing
    activities = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * cuda
    profiler = torch.profiler.profile(activities=activities)
    real_step, calls, started = train.optimizer_step, [0], [0.0]

    def optimizer_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == FIRST_STEP:
            if cuda:
                torch.cuda.synchronize()
            profiler.start()
            started[0] = time.perf_counter()
        elif calls[0] == FIRST_STEP + STEPS:
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - started[0]
            profiler.stop()
            events = export_trace(profiler, out / "launcher_loop_trace.json.gz")
            report = (f"{STEPS} launcher steps (optimizer steps {FIRST_STEP}-{FIRST_STEP + STEPS - 1} of this "
                      f"process): {wall / STEPS * 1e3:.1f} ms per step (wall, under the profiler)\n"
                      f"{idle_report(events)}\nGPU time by kernel group:\n{kernel_summary(events, STEPS)}\n"
                      f"CPU time of the loop's parts:\n{range_times(events, STEPS)}\n")
            (out / "launcher_loop_idle.txt").write_text(report)
            print(report, flush=True)
        with torch.profiler.record_function("loop:optimizer_step"):
            return real_step(*args, **kwargs)
    train.optimizer_step = optimizer_step
    return train.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
