"""bench/profiling.py: the idle report (what counts as GPU work, bubbles vs gaps, who launched the work after a gap)
and the kernel summary."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from profiling import idle_report  # noqa: E402


def _gpu(cat, ts, dur, correlation):
    return dict(cat=cat, name=f"{cat}@{ts}", ts=ts, dur=dur, args={"correlation": correlation})


def test_idle_counts_only_executed_work_splits_bubbles_and_names_the_launching_op():
    ms = 1000.0  # trace times are in us
    events = [
        # a GPU-side annotation spanning everything: not work (it made every gap look busy before)
        dict(cat="gpu_user_annotation", name="step:forward", ts=0.0, dur=400 * ms),
        _gpu("kernel", 0.0, 100 * ms, 1),
        _gpu("gpu_memset", 100 * ms + 4, 6 * ms - 4, 2),  # after a 4 us bubble
        _gpu("gpu_memcpy", 206 * ms, 40 * ms, 3),  # after a 100 ms gap, launched by aten::to on the main thread
        _gpu("kernel", 240 * ms, 20 * ms, 4),  # overlaps the copy: busy counts the union
        _gpu("kernel", 310 * ms, 90 * ms, 5),  # after a 50 ms gap, launched by AccumulateGrad on another thread
        dict(cat="user_annotation", name="step:forward", ts=150 * ms, dur=100 * ms, tid=1),
        dict(cat="user_annotation", name="step:backward", ts=250 * ms, dur=200 * ms, tid=1),
        dict(cat="cpu_op", name="aten::to", ts=190 * ms, dur=30 * ms, tid=1),
        dict(cat="cpu_op", name="aten::copy_", ts=200 * ms, dur=10 * ms, tid=1),
        dict(cat="cpu_op", name="AccumulateGrad", ts=290 * ms, dur=15 * ms, tid=2),
        dict(cat="cpu_op", name="unrelated, on another thread", ts=280 * ms, dur=40 * ms, tid=3),
        *[dict(cat="cuda_runtime", name="launch", ts=ts * ms, dur=1.0, tid=tid, args={"correlation": c})
          for c, ts, tid in ((1, 0, 1), (2, 1, 1), (3, 205, 1), (4, 206, 1), (5, 300, 2))],
    ]
    lines = idle_report(events).splitlines()
    # busy 100 + 6 + (206..260) 54 + 90 = 250 ms; idle 150 ms: 4 us of bubble, 100 + 50 ms in two gaps
    assert lines[0] == ("wall 400.0 ms, GPU busy 250.0 ms, idle 150.0 ms: 0.0 ms in gaps under 10 us between "
                        "kernels, 150.0 ms in 2 longer gaps, by the CPU op that launched the work after them:")
    assert lines[1].split() == ["100.00", "ms", "1", "gaps", "aten::to", ">", "aten::copy_", "(in", "step:forward)"]
    assert lines[2].split() == ["50.00", "ms", "1", "gaps", "AccumulateGrad", "(in", "step:backward)"]
    assert len(lines) == 3


def test_no_gpu_work():
    assert idle_report([dict(cat="cpu_op", name="aten::add", ts=0.0, dur=5.0, tid=1)]) == "no GPU work in the trace"


def test_kernel_summary_groups_kernels_per_step_and_splits_matmuls_by_length():
    from profiling import kernel_summary

    kernels = [("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 1500.0), ("nvjet_tst_256x128_64x4", 200.0),
               ("nvjet_tst_64x8_64x8", 20.0), ("nvjet_tst_64x8_64x8", 59.9), ("nvjet_tst_128x8_64x8", 60.0),
               ("triton_poi_fused_add_0", 30.0), ("void at::native::vectorized_elementwise_kernel", 10.0)]
    events = [dict(cat="kernel", name=name, ts=0.0, dur=dur) for name, dur in kernels * 2]  # two steps
    events.append(dict(cat="gpu_memcpy", name="Memcpy HtoD", ts=0.0, dur=900.0))  # not a kernel
    lines = [line.split(maxsplit=6) for line in kernel_summary(events, steps=2).splitlines()]
    assert [(float(ms), int(count), group) for ms, _, _, _, count, _, group in lines] == [
        (1.5, 1, "attention"), (0.26, 2, "matmul (longer)"), (0.08, 2, "matmul under 60 us"),
        (0.03, 1, "fused (Triton)"), (0.01, 1, "other")]
