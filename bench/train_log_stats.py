"""Steady-state numbers of a training run from its train_log.jsonl (used by bench/gpu_run.sh train_steady).

    python bench/train_log_stats.py OUTPUT_DIR/train_log.jsonl [--skip 4]

Median s/step over the steps after the first `--skip` (compile warm-up), peak memory, and what happens between
steps: the wall-clock gap between two log lines minus the second step's own time is the work done after a step
(exports, state saves, validation). Gaps after an epoch's last step (export `epoch-N` + state) are reported apart
from the others.
"""
import argparse
import json
import statistics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--skip", type=int, default=4)
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.log)]
    steady = rows[args.skip:]
    print(f"median s/step over steps {steady[0]['step']}-{steady[-1]['step']}: "
          f"{statistics.median(r['step_seconds'] for r in steady):.3f}, "
          f"peak {max(r.get('peak_memory_gib', 0) for r in steady):.1f} GiB")
    after_epoch, between = [], []
    for before, after in zip(steady, steady[1:], strict=False):
        gap = after["time"] - before["time"] - after["step_seconds"]
        (after_epoch if after["epoch"] != before["epoch"] else between).append(gap)
    if between:
        print(f"between steps: median {statistics.median(between):.3f} s over {len(between)} gaps")
    if after_epoch:
        print(f"after an epoch's last step (export epoch-N + state save): "
              f"{', '.join(f'{g:.2f}' for g in after_epoch)} s")


if __name__ == "__main__":
    main()
