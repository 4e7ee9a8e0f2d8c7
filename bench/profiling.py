"""Profiler views for the benchmark tables: which attention kernels ran, and where a step's time goes."""
from __future__ import annotations

import gzip
import json
import os
import re
import tempfile

import torch

ATTENTION_KERNEL = re.compile(r"attn|fmha|flash|sdpa|cudnn", re.IGNORECASE)
GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # trace categories of what the GPU executes
BUBBLE_US = 10.0  # shorter gaps: launch-to-launch bubbles between back-to-back kernels
KERNEL_GROUPS = [  # first match wins
    ("attention", re.compile(r"attn|fmha|flash|sdpa", re.IGNORECASE)),
    ("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|sm90_|cublas", re.IGNORECASE)),
    ("fused (Triton)", re.compile(r"^triton_")),
]
SMALL_MATMUL_US = 60.0  # at 8820 tokens the LoRA's rank-32 GEMMs take ~20 us, the base linears' over 100 us


def kernel_group(name: str) -> str:
    return next((group for group, pattern in KERNEL_GROUPS if pattern.search(name)), "other")


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
    """Run `call()` under the profiler: its wall time, the GPU's busy time (the union of kernels, copies and memsets)
    and where the GPU sat idle. Gaps under 10 us are launch-to-launch bubbles between back-to-back kernels; each
    longer gap is put down to the CPU op that launched the work after it (the outermost and innermost op on that
    thread, and the outermost `record_function` range around it). The Chrome trace goes to `trace_path` (gzipped)
    if given.

    From the trace's own categories: the profiler's events also hold each `record_function` range as a GPU-side
    annotation spanning its kernels, which would count the gaps between them as busy."""
    return idle_report(export_trace(_profiled(call), trace_path), rows)


def export_trace(profile, trace_path=None) -> list[dict]:
    """A finished profile's Chrome-trace events; the trace also goes to `trace_path` (gzipped) if given."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as raw:
        profile.export_chrome_trace(raw.name)
    with open(raw.name, "rb") as src:
        trace = src.read()
    os.unlink(raw.name)
    if trace_path:
        with gzip.open(trace_path, "wb") as dst:
            dst.write(trace)
    return json.loads(trace)["traceEvents"]


def idle_report(events: list[dict], rows: int = 15) -> str:
    """`gpu_idle`'s text from Chrome-trace events (times in us)."""
    gpu = sorted((e for e in events if e.get("cat") in GPU_WORK), key=lambda e: e["ts"])
    if not gpu:
        return "no GPU work in the trace"
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    cpu_ops = [e for e in events if e.get("cat") in ("cpu_op", "user_annotation") and "dur" in e]
    busy, bubbles, gaps, end = 0.0, 0.0, [], None
    for work in gpu:
        start, stop = work["ts"], work["ts"] + work.get("dur", 0.0)
        if end is not None and start > end:
            if start - end < BUBBLE_US:
                bubbles += start - end
            else:
                gaps.append((start - end, work))
        busy += max(0.0, stop - max(start, end if end is not None else start))
        end = stop if end is None else max(end, stop)
    wall = end - gpu[0]["ts"]

    def launched_by(work) -> str:
        launch = launches.get(work.get("args", {}).get("correlation"))
        if launch is None:
            return "-"
        t = launch["ts"]
        around = sorted((e for e in cpu_ops if e["ts"] <= t <= e["ts"] + e["dur"]), key=lambda e: -e["dur"])
        ranges = [e["name"] for e in around if e["cat"] == "user_annotation"]
        ops = [e["name"] for e in around if e["cat"] == "cpu_op" and e["tid"] == launch["tid"]]
        chain = " > ".join(dict.fromkeys([ops[0], ops[-1]])) if ops else "-"
        return f"{chain[:110]} (in {ranges[0] if ranges else '-'})"

    by_launcher: dict[str, list[float]] = {}
    for length, work in gaps:
        entry = by_launcher.setdefault(launched_by(work), [0.0, 0])
        entry[0] += length
        entry[1] += 1
    idle = wall - busy
    lines = [f"wall {wall / 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms, idle {idle / 1e3:.1f} ms: "
             f"{bubbles / 1e3:.1f} ms in gaps under {BUBBLE_US:.0f} us between kernels, "
             f"{(idle - bubbles) / 1e3:.1f} ms in {len(gaps)} longer gaps, by the CPU op that launched the work after "
             "them:"]
    lines += [f"  {total / 1e3:8.2f} ms {count:5d} gaps  {name}"
              for name, (total, count) in sorted(by_launcher.items(), key=lambda i: -i[1][0])[:rows]]
    return "\n".join(lines)


def kernel_summary(events: list[dict], steps: int) -> str:
    """GPU time per step by kernel group, from Chrome-trace events; matmuls split by length (the LoRA's small GEMMs
    apart from the base linears')."""
    groups: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "kernel":
            group = kernel_group(e["name"])
            if group == "matmul":
                group += f" under {SMALL_MATMUL_US:.0f} us" if e["dur"] < SMALL_MATMUL_US else " (longer)"
            entry = groups.setdefault(group, [0.0, 0])
            entry[0] += e["dur"]
            entry[1] += 1
    return "\n".join(f"  {total / steps / 1e3:8.2f} ms per step {count // steps:6d} kernels  {group}"
                     for group, (total, count) in sorted(groups.items(), key=lambda i: -i[1][0]))
