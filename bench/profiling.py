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
