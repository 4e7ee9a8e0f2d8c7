"""The end of an evaluation: the per-item results summarized into the leaderboard's columns and per task, written as
results.jsonl, summary.json, a table on stdout and report.html; the official evaluators' attempt folders; and the
merge of several runs' output folders into one.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .config import InputError
from .eval_items import SETTINGS_FILE, check_settings, item_path, read_item_results
from .fsutil import atomic_write
from .leaderboard import column_scores
from .report import write_report

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _group_stats(results: list[dict]) -> dict:
    """Items, the scored ones' pass figures, why the others were not scored, and the means that apply."""
    scored = [r for r in results if r.get("pass") is not None]
    passed = sum(1 for r in scored if r["pass"])
    stats = {"items": len(results), "scored": len(scored), "passed": passed,
             "pass_rate": round(passed / len(scored), 4) if scored else None,
             "failure_reasons": dict(sorted(Counter(r["failure_reason"] for r in scored if not r["pass"]).items())),
             "not_scored": dict(sorted(Counter(r["not_scored"] for r in results if r.get("not_scored")).items()))}
    red = _mean(r.get("red_pixels") for r in results)
    if red is not None:  # mazes and eyeballing
        stats["mean_red_pixels"] = red
    rules = {r.get("rule") for r in results}
    if rules == {"maze"}:
        stats["mean_corridor_precision"] = _mean(r.get("corridor_precision") for r in results)
    if rules == {"major_frame"}:
        last = [r["last_frame_pass"] for r in results if r.get("last_frame_pass") is not None]
        stats["last_frame_pass_rate"] = round(sum(last) / len(last), 4) if last else None
    if rules == {"best_frame"}:
        stats["mean_distance"] = _mean(r.get("distance") for r in results)
        stats["metric"] = next((r["metric"] for r in results if r.get("metric")), None)
    return stats


def summarize(results: list[dict], settings: dict, items_per_hour: float | None, items_this_run: int,
              unfinished: dict[str, str]) -> dict:
    by_task = {}
    for result in results:
        by_task.setdefault(result["task"], []).append(result)
    tasks = {}
    for task, rows in sorted(by_task.items()):
        tasks[task] = {"column": rows[0].get("column"), "rule": rows[0].get("rule"), **_group_stats(rows)}
    return {
        "leaderboard": column_scores(results),
        "overall": _group_stats(results),
        "tasks": tasks,
        "items_this_run": items_this_run,
        "items_per_hour": None if items_per_hour is None else round(items_per_hour, 2),
        "unfinished": dict(sorted(unfinished.items())),
        "settings": settings,
    }


def _percent(rate) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def format_table(summary: dict) -> str:
    """The leaderboard columns (ours beside the published zero-shot row), then one row per task."""
    board = summary["leaderboard"]
    lines = [f"{'leaderboard column':<26} {'items':>6} {'passed':>6} {'pass':>7} {'last frame':>10} "
             f"{'published':>9}  (Major Frame is the eyeballing verdict)"]
    for column, entry in board["columns"].items():
        last = entry.get("last_frame")
        note = f"  [{entry['pass_rule']}]" if entry.get("pass_rule") else ""
        note += f"  ({entry['not_scored']} not scored)" if entry["not_scored"] else ""
        lines.append(f"{column:<26} {entry['items']:>6} {entry['passed']:>6} {_percent(entry['pass_rate']):>7} "
                     f"{_percent(last['pass_rate']) if last else '':>10} {entry['published_percent']:>8.2f}%{note}")
    published = board["published"]
    if board["average"] is not None:
        lines.append(f"{'Average':<26} {'':>6} {'':>6} {_percent(board['average']):>7} {'':>10} "
                     f"{published['average_same_columns_percent']:>8.2f}%  (over the {len(board['average_over'])} "
                     f"columns present; published over all 10: {published['row_percent']['Average']:.2f}%)")
    lines.append(f"published: {published['source']}")
    lines.append("")
    lines.append(f"{'task':<28} {'items':>6} {'scored':>6} {'passed':>6} {'pass':>7} {'mean red':>9} {'corridor':>9} "
                 f"{'distance':>12}")

    def row(name, stats):
        red, corridor, distance = (stats.get(k) for k in ("mean_red_pixels", "mean_corridor_precision",
                                                          "mean_distance"))
        return (f"{name:<28} {stats['items']:>6} {stats['scored']:>6} {stats['passed']:>6} "
                f"{_percent(stats['pass_rate']):>7} {'-' if red is None else f'{red:.0f}':>9} "
                f"{'-' if corridor is None else f'{corridor:.3f}':>9} "
                f"{'-' if distance is None else f'{distance:.6g}':>12}")

    lines += [row(task, stats) for task, stats in summary["tasks"].items()]
    lines.append(row("overall (pooled)", summary["overall"]))
    for task, stats in summary["tasks"].items():
        for reason, count in stats["not_scored"].items():
            lines.append(f"not scored: {task} ({count}): {reason}")
    if summary["items_per_hour"] is not None:
        lines.append(f"{summary['items_this_run']} items this run, {summary['items_per_hour']:.1f} items/hour")
    return "\n".join(lines)


def write_attempt_dirs(output_dir: Path, results: list[dict]) -> Path:
    """<output_dir>/attempts/<task>/<id>/ for every finished item: video_1.mp4 (when there is a video), result.png
    and an empty content.txt (the official eyeballing evaluator fails without it). Items already there are kept."""
    attempts = output_dir / "attempts"
    for result in results:
        folder = attempts / result["task"] / result["id"]
        if (folder / "content.txt").is_file():  # written last
            continue
        if result.get("video"):
            atomic_write(folder / "video_1.mp4", (output_dir / result["video"]).read_bytes())
        atomic_write(folder / "result.png", (output_dir / result["last_frame"]).read_bytes())
        atomic_write(folder / "content.txt", "")
    return attempts


def write_outputs(output_dir: Path, results: list[dict], summary: dict) -> None:
    """results.jsonl, summary.json, the table on stdout, and report.html."""
    atomic_write(output_dir / RESULTS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    atomic_write(output_dir / SUMMARY_FILE, json.dumps(summary, indent=1, ensure_ascii=False))
    print(format_table(summary), flush=True)
    print(f"report: {write_report(output_dir)}", flush=True)


def merge_runs(output_dir: Path, shards: list[Path]) -> dict[str, str]:
    """Copy every finished item of the shard folders into output_dir (JSON last), then rebuild the outputs; returns
    {item key: why it is unfinished} for the items no shard finished."""
    settings, summaries = None, []
    for shard in shards:
        if not (shard / SETTINGS_FILE).is_file() or not (shard / SUMMARY_FILE).is_file():
            raise InputError(f"{shard}: no {SETTINGS_FILE} + {SUMMARY_FILE}; is it a finished parallel_eval.py "
                             f"output folder?")
        shard_settings = json.loads((shard / SETTINGS_FILE).read_text(encoding="utf-8"))
        if settings is not None and shard_settings != settings:
            raise InputError(f"{shard}: was run with other settings than {shards[0]}; only shards of one run merge")
        settings = shard_settings
        summaries.append(json.loads((shard / SUMMARY_FILE).read_text(encoding="utf-8")))
    check_settings(output_dir, settings)
    atomic_write(output_dir / SETTINGS_FILE, json.dumps(settings, indent=1, ensure_ascii=False))
    for shard in shards:
        if shard == output_dir:
            continue
        for result in read_item_results(shard):
            if item_path(output_dir, result["task"], result["id"], "result").is_file():
                continue
            for kind in ("video", "frame", "input", "overlay", "result"):  # result last: it marks the item finished
                source = item_path(shard, result["task"], result["id"], kind)
                if source.is_file():
                    atomic_write(item_path(output_dir, result["task"], result["id"], kind), source.read_bytes())
    results = read_item_results(output_dir)
    done = {f"{r['task']}/{r['id']}" for r in results}
    unfinished = {key: why for summary in summaries for key, why in summary.get("unfinished", {}).items()
                  if key not in done}
    rates = [summary.get("items_per_hour") for summary in summaries]
    summary = summarize(results, settings, sum(r for r in rates if r) or None,  # shards ran side by side
                        sum(s.get("items_this_run", 0) for s in summaries), unfinished)
    summary["merged_from"] = [str(shard) for shard in shards]
    write_outputs(output_dir, results, summary)
    return unfinished
