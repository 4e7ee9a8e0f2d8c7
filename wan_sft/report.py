"""Static HTML reports: one for an evaluation run (results + gallery), one for a training run (curves).

Both pages are single files with inline CSS (and, for the evaluation gallery, a few lines of inline JS), so they
work offline, from file:// as well as over http. Every image is referenced by a path relative to the page.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup, escape

from wan_sft import run_folder
from wan_sft.fsutil import atomic_write
from wan_sft.inference import DEFAULT_NEGATIVE_PROMPT, DEFAULT_NEGATIVE_PROMPT_ENGLISH
from wan_sft.leaderboard import COLUMNS, column_scores
from wan_sft.scoring import OVERLAY_LEGEND

_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                         autoescape=True, trim_blocks=True, lstrip_blocks=True)

# Shown on each gallery card when present; every field stays visible under "all fields".
CARD_FIELDS = ("column", "not_scored", "pass_rule", "red_pixels", "wall_overlap_pixels", "touches_start",
               "touches_goal", "connected", "corridor_precision", "answer", "correct_option", "votes",
               "frames_voted", "last_frame_pass", "last_frame_answer", "centroid", "metric", "distance", "best_frame",
               "cells_wrong", "seconds_generate")
RULE_NAMES = {"maze": "Mazes", "major_frame": "Eyeballing", "best_frame": "Visual puzzles", "arc_grid": "ARC-AGI-2"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22")


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; an unparsable last line is one still being appended, and is skipped."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path}:{number + 1}: not JSON: {line[:80]!r}") from None
    return records


def format_value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def format_rate(rate) -> str:
    return "—" if rate is None else f"{rate:.1%}"


# ---------------------------------------------------------------------------------------------- evaluation report

def page_relative_url(path: str | None, output_dir: Path) -> str | None:
    """URL of `path` (relative to output_dir, or absolute anywhere) relative to a page in output_dir; None when the
    file does not exist, so the page shows a placeholder instead of a broken image."""
    if not path:
        return None
    absolute = Path(path) if os.path.isabs(path) else output_dir / path
    if not absolute.is_file():
        return None
    return quote(Path(os.path.relpath(absolute, output_dir)).as_posix())


def _counts(results: list[dict]) -> dict:
    scored = [r for r in results if r.get("pass") is not None]
    passed = sum(bool(r["pass"]) for r in scored)
    return {"items": len(results), "scored": len(scored), "passed": passed,
            "pass_rate": passed / len(scored) if scored else None}


def _failure_reasons(results: list[dict]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for r in results:
        if r.get("pass") is False:
            reason = r.get("failure_reason") or "unknown"
            reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def _with_defaults(given: dict, results: list[dict]) -> dict:
    """Summary figures as summary.json gives them, the missing ones counted from the results."""
    row = {**_counts(results), "failure_reasons": _failure_reasons(results)}
    row.update({k: v for k, v in given.items() if v is not None})
    row["pass_rate_text"] = format_rate(row["pass_rate"])
    row["means"] = {k.removeprefix("mean_"): format_value(v) for k, v in given.items() if k.startswith("mean_")}
    return row


def _verdict(passed) -> str:
    return "unscored" if passed is None else "pass" if passed else "fail"


def _card(record: dict, output_dir: Path) -> dict:
    return {
        "task": str(record.get("task", "?")),
        "id": str(record.get("id", "?")),
        "verdict": _verdict(record.get("pass")),
        "prompt": record.get("prompt"),
        "failure_reason": record.get("failure_reason"),
        "images": [("input", page_relative_url(record.get("input") or record.get("puzzle"), output_dir))]
                  + [(label, page_relative_url(record.get(key), output_dir))
                     for label, key in (("last frame", "last_frame"), ("overlay", "overlay"))],
        "video": page_relative_url(record.get("video"), output_dir),
        "fields": [(k, format_value(record[k])) for k in CARD_FIELDS if record.get(k) is not None],
        "all_fields": json.dumps(record, indent=1, sort_keys=True),
    }


def _percent(value) -> str:
    return "—" if value is None else f"{value:.2f}%"


def leaderboard_view(board: dict) -> dict:
    """The leaderboard row of this run and the published one, cell by cell over all 10 columns and Average."""
    cells = []
    for name in COLUMNS:
        entry = board["columns"].get(name)
        last = (entry or {}).get("last_frame")
        cells.append({"name": name, "present": entry is not None,
                      "rate": format_rate(entry["pass_rate"]) if entry else "not run",
                      "last_frame": format_rate(last["pass_rate"]) if last else "",
                      "counts": f"{entry['passed']}/{entry['items']}" + (
                          f" ({entry['not_scored']} not scored)" if entry["not_scored"] else "") if entry else "",
                      "pass_rule": (entry or {}).get("pass_rule"),
                      "published": _percent(board["published"]["row_percent"][name])})
    published = board["published"]
    return {"cells": cells, "average": format_rate(board["average"]), "average_over": len(board["average_over"]),
            "published_average": _percent(published["row_percent"]["Average"]),
            "published_same_columns": _percent(published.get("average_same_columns_percent")),
            "source": published["source"], "pass_rules": [c for c in cells if c["pass_rule"]]}


def write_report(output_dir: Path) -> Path:
    """Render output_dir/results.jsonl (+ summary.json, if present) to output_dir/report.html."""
    output_dir = Path(output_dir)
    results = read_jsonl(output_dir / "results.jsonl")
    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

    given_tasks = summary.get("tasks") or {}
    task_names = sorted({str(r.get("task", "?")) for r in results} | set(given_tasks))
    tasks = {name: _with_defaults(given_tasks.get(name) or {}, [r for r in results if str(r.get("task", "?")) == name])
             for name in task_names}
    given_overall = summary.get("overall") or {}
    failure_reasons = summary.get("failure_reasons") or given_overall.get("failure_reasons")
    overall = _with_defaults({**given_overall, "failure_reasons": failure_reasons}, results)
    cards = sorted((_card(r, output_dir) for r in results), key=lambda c: (c["task"], c["id"]))
    settings = {k: format_value(v) for k, v in (summary.get("settings") or {}).items()}
    translations = {}
    if (summary.get("settings") or {}).get("negative_prompt") == DEFAULT_NEGATIVE_PROMPT:
        translations["negative_prompt"] = DEFAULT_NEGATIVE_PROMPT_ENGLISH
    rules = {r.get("rule") for r in results}

    html = _TEMPLATES.get_template("eval_report.html.j2").render(
        title=f"Evaluation report — {output_dir.resolve().name}",
        settings=settings,
        items_per_hour=summary.get("items_per_hour"),
        unfinished=sorted((summary.get("unfinished") or {}).items()),
        tasks=tasks,
        overall=overall,
        leaderboard=leaderboard_view(summary.get("leaderboard") or column_scores(results)),
        translations=translations,
        legend=[(RULE_NAMES[rule], text) for rule, text in OVERLAY_LEGEND.items() if rule in rules],
        failure_reasons=sorted(overall["failure_reasons"].items(), key=lambda kv: (-kv[1], kv[0])),
        cards=cards,
    )
    report = output_dir / "report.html"
    atomic_write(report, html)
    return report


# ------------------------------------------------------------------------------------------------ training report

@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str
    width: float = 1.5
    opacity: float = 1.0
    dots: bool = False


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    averages, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        averages.append(total / min(i + 1, window))
    return averages


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step + 1e-9) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step - 1e-9)) + 1)]


def _padded_range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        return low - (abs(low) * 0.1 or 1), high + (abs(high) * 0.1 or 1)
    return low, high


def line_chart(series: list[Series], *, x_label: str, y_label: str, x_range: tuple[float, float],
               y_range: tuple[float, float] | None = None, y_format=lambda v: f"{v:.4g}",
               best_step: int | None = None) -> Markup:
    """An inline SVG line chart: one <path class="series" data-series=NAME> per series, and a vertical
    <g class="best-marker" data-step=STEP> at best_step."""
    width, height, left, right, top, bottom = 820, 340, 64, 170, 16, 44
    ys = [y for s in series for _, y in s.points]
    x_ticks = _nice_ticks(*_padded_range(list(x_range) + ([best_step] if best_step is not None else [])))
    y_ticks = _nice_ticks(*(y_range or _padded_range(ys)))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x):
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y):
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'aria-label="{escape(y_label)} against {escape(x_label)}">']
    for y in y_ticks:
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{py(y):.1f}" y2="{py(y):.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y_format(y)}</text>')
    for x in x_ticks:
        parts.append(f'<line class="grid" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{height - bottom}"/>'
                     f'<text class="tick" x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text class="axis-label" x="{(left + width - right) / 2}" y="{height - 6}" '
                 f'text-anchor="middle">{escape(x_label)}</text>'
                 f'<text class="axis-label" transform="translate(14 {(top + height - bottom) / 2}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_label)}</text>')
    if best_step is not None:
        parts.append(f'<g class="best-marker" data-step="{best_step}"><line x1="{px(best_step):.1f}" '
                     f'x2="{px(best_step):.1f}" y1="{top}" y2="{height - bottom}"/>'
                     f'<text x="{px(best_step) + 4:.1f}" y="{top + 12}">best: step {best_step}</text></g>')
    for i, s in enumerate(series):
        d = " ".join(f"{'L' if j else 'M'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(s.points))
        parts.append(f'<path class="series" data-series="{escape(s.name)}" d="{d}" fill="none" stroke="{s.color}" '
                     f'stroke-width="{s.width}" stroke-opacity="{s.opacity}"/>')
        if s.dots:
            parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{s.color}">'
                         f'<title>{escape(s.name)}: step {x:g}, {y_format(y)}</title></circle>' for x, y in s.points)
        legend_y = top + 14 + 18 * i
        parts.append(f'<line x1="{width - right + 14}" x2="{width - right + 34}" y1="{legend_y - 4}" '
                     f'y2="{legend_y - 4}" stroke="{s.color}" stroke-width="3" stroke-opacity="{s.opacity}"/>'
                     f'<text class="legend" x="{width - right + 40}" y="{legend_y}">{escape(s.name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def read_validation(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Pass rate per task from validation.csv, as (step, pass_rate) points in step order (column rows skipped)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row["task"]:
                continue
            curves.setdefault(row["task"], []).append((int(row["step"]), float(row["pass_rate"])))
    return {task: sorted(points) for task, points in sorted(curves.items())}


def write_training_report(output_dir: Path) -> Path:
    """Render output_dir/train_log.jsonl (+ validation.csv and best.json, if present) to training_report.html."""
    output_dir = Path(output_dir)
    log = read_jsonl(run_folder.train_log(output_dir))
    csv_path, best_path = run_folder.validation_csv(output_dir), run_folder.best_json(output_dir)
    validation = read_validation(csv_path) if csv_path.exists() else {}
    best = json.loads(best_path.read_text()) if best_path.exists() else None
    best_step = int(best["step"]) if best and best.get("step") is not None else None

    all_steps = [r["step"] for r in log] + [step for points in validation.values() for step, _ in points]
    x_range = (min(all_steps, default=0), max(all_steps, default=0))  # both charts share the step axis
    loss_chart = validation_chart = None
    window = max(1, min(100, len(log) // 20))
    if log:
        steps, losses = [r["step"] for r in log], [r["loss"] for r in log]
        loss_chart = line_chart(
            [Series("loss", list(zip(steps, losses, strict=True)), PALETTE[0], width=1, opacity=0.35),
             Series(f"mean of {window}", list(zip(steps, moving_average(losses, window), strict=True)), PALETTE[1],
                    width=2)],
            x_label="step", y_label="loss", x_range=x_range, best_step=best_step)
    if validation:
        validation_chart = line_chart(
            [Series(task, points, PALETTE[i % len(PALETTE)], width=2, dots=True)
             for i, (task, points) in enumerate(validation.items())],
            x_label="step", y_label="pass rate", x_range=x_range, y_range=(0.0, 1.0), y_format=lambda v: f"{v:.0%}",
            best_step=best_step)
    validation_steps = sorted({step for points in validation.values() for step, _ in points})
    validation_table = [(step, [format_rate(dict(points).get(step)) for points in validation.values()])
                        for step in validation_steps]

    facts = {}
    if log:
        facts = {"steps logged": len(log), "last step": log[-1]["step"], "epochs": log[-1].get("epoch", 0) + 1,
                 "last loss": format_value(log[-1]["loss"]),
                 f"last mean of {window}": format_value(moving_average([r["loss"] for r in log], window)[-1]),
                 "learning rate": format_value(log[-1].get("lr")),
                 "mean step seconds": format_value(sum(r.get("step_seconds", 0) for r in log) / len(log))}
    html = _TEMPLATES.get_template("training_report.html.j2").render(
        title=f"Training report — {output_dir.resolve().name}",
        facts=facts,
        best=best and {"step": best_step, "pass_rate": format_rate(best.get("pass_rate")), "lora": best.get("lora")},
        loss_chart=loss_chart,
        validation_chart=validation_chart,
        validation_tasks=list(validation),
        validation_table=validation_table,
    )
    report = run_folder.training_report(output_dir)
    atomic_write(report, html)
    return report
