"""Profiler views for the benchmark tables: which attention kernels ran, and where a step's time goes."""
from __future__ import annotations

import re

import torch

ATTENTION_KERNEL = re.compile(r"attn|fmha|flash|sdpa|cudnn", re.IGNORECASE)


def _profiled(call):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as profile:
        call()
        torch.cuda.synchronize()
    return profile


def attention_kernels(call) -> list[str]:
    """Run `call()` under the profiler; the distinct attention-looking GPU kernel names, shortened."""
    names = {event.name for event in _profiled(call).events() if ATTENTION_KERNEL.search(event.name)}
    return sorted(name[:90] for name in names)


def time_tables(call, rows: int = 30) -> str:
    """Run `call()` under the profiler; the ops with the most CPU time and the most GPU time, as text."""
    averages = _profiled(call).key_averages()
    return "\n".join(averages.table(sort_by=key, row_limit=rows, max_name_column_width=70)
                     for key in ("self_cpu_time_total", "self_device_time_total"))


def gpu_idle(call, trace_path=None, rows: int = 15) -> str:
    """Run `call()` under the profiler: its wall time, the GPU's busy time (union of kernels and copies), and the
    longest stretches with the GPU idle, each with the innermost `record_function` range running on the CPU when the
    GPU went idle and when its next work started. The Chrome trace goes to `trace_path` (gzipped) if given."""
    profile = _profiled(call)
    if trace_path:
        import gzip
        import os
        import shutil
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as raw:
            profile.export_chrome_trace(raw.name)
        with open(raw.name, "rb") as src, gzip.open(trace_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.unlink(raw.name)
    events = profile.events()
    gpu = sorted((e.time_range.start, e.time_range.end) for e in events
                 if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    ranges = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith("step:")]
    start = min(e.time_range.start for e in events if e.device_type == torch.autograd.DeviceType.CPU)
    busy, gaps, end = 0.0, [], None
    for s, e in gpu:
        if end is None or s > end:
            if end is not None:
                gaps.append((s - end, end, s))
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    first_gap = gpu[0][0] - start if gpu else 0.0

    def phase(t):
        inside = [r for r in ranges if r.time_range.start <= t <= r.time_range.end]
        return min(inside, key=lambda r: r.time_range.end - r.time_range.start).name if inside else "-"

    wall = (end or start) - start
    lines = [f"wall {wall / 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms, idle {(wall - busy) / 1e3:.1f} ms "
             f"(before the first GPU work {first_gap / 1e3:.1f} ms; {len(gaps)} gaps)"]
    by_phase: dict[str, float] = {}
    for length, gap_start, gap_end in gaps:
        key = f"{phase(gap_start)} -> {phase(gap_end)}"
        by_phase[key] = by_phase.get(key, 0.0) + length
    lines += [f"  idle {ms / 1e3:8.2f} ms  {key}" for key, ms in sorted(by_phase.items(), key=lambda i: -i[1])[:rows]]
    lines += [f"  gap {length / 1e3:8.2f} ms at {(gap_start - start) / 1e3:8.1f} ms  {phase(gap_start)} -> "
              f"{phase(gap_end)}" for length, gap_start, gap_end in sorted(gaps, reverse=True)[:rows]]
    return "\n".join(lines)
