"""The VideoThinkBench vision-centric leaderboard: its ten columns, which task counts in which, and the published
zero-shot Wan2.2-TI2V-5B row (../shared/VIDEOTHINKBENCH.md §2). A column's score is the pooled pass rate of its
tasks; Average is the unweighted mean of the columns.
"""
from __future__ import annotations

COLUMNS = {  # column -> (rule, tasks)
    "Eyeballing Point": ("major_frame", ("circle_center", "circumcenter", "fermat_point", "incenter", "midpoint",
                                         "orthocenter", "point_reflection", "reflection", "ray_intersection",
                                         "triangle_center")),
    "Eyeballing Line": ("major_frame", ("angle_bisector", "arc_connect", "circle_tangent_line",
                                        "circle_tangent_point", "parallel", "perpendicular",
                                        "perpendicular_bisector", "ray_reflect")),
    "Eyeballing Shape": ("major_frame", ("isosceles_trapezoid", "parallelogram", "right_triangle", "square_outlier")),
    "Maze Square": ("maze", ("maze_square",)),
    "Maze Hexagon": ("maze", ("maze_hexagon",)),
    "Maze Labyrinth": ("maze", ("maze_labyrinth",)),
    "Visual Symmetry": ("best_frame", ("color_grid", "color_hexagon", "size_grid", "shape_reflect")),
    "Visual Gradient": ("best_frame", ("color_size", "size_cycle")),
    "Visual Compositionality": ("best_frame", ("polygon_sides_color", "rectangle_height_color",
                                               "color_overlap_squares", "shape_size_grid")),
    "ARC-AGI-2": ("arc_grid", ("arcagi",)),
}
TASK_COLUMN = {task: column for column, (_, tasks) in COLUMNS.items() for task in tasks}

# Visual puzzles whose distance counts mismatched pixels after binarising (gray > 245); the others sum RGB distance.
SHAPE_DISTANCE_TASKS = ("size_grid", "shape_reflect", "shape_size_grid", "size_cycle")

PUBLISHED_SOURCE = "VideoThinkBench leaderboard, zero-shot Wan2.2-TI2V-5B on the minitest (published, not ours)"
PUBLISHED_WAN22_TI2V_5B = {  # percent
    "Eyeballing Point": 17.78, "Eyeballing Line": 10.0, "Eyeballing Shape": 20.0,
    "Maze Square": 0.0, "Maze Hexagon": 0.0, "Maze Labyrinth": 0.0,
    "Visual Symmetry": 7.5, "Visual Gradient": 10.0, "Visual Compositionality": 7.5,
    "ARC-AGI-2": 0.71, "Average": 7.35,
}
MINITEST_ITEMS = {"Eyeballing Point": 90, "Eyeballing Line": 70, "Eyeballing Shape": 40, "Visual Symmetry": 40,
                  "Visual Gradient": 20, "Visual Compositionality": 40, "ARC-AGI-2": 140}


def column_of(task: str) -> str | None:
    """The leaderboard column a task counts in; None for a task the leaderboard does not have."""
    return TASK_COLUMN.get(task)


def rule_of(task: str) -> str | None:
    """How the leaderboard scores a task: major_frame, maze, best_frame or arc_grid; None when it has no rule."""
    column = column_of(task)
    return COLUMNS[column][0] if column else None


def _rate(passed: int, items: int) -> float | None:
    return round(passed / items, 4) if items else None


def column_scores(results: list[dict]) -> dict:
    """The leaderboard row of scored results (each with `column`, `pass` True/False/None, and for eyeballing
    `last_frame_pass`): per column present (in leaderboard order) its tasks, scored items, passed, pooled pass rate,
    items not scored and, for eyeballing, the Last Frame figures; `average`: unweighted mean of the columns that
    have a pass rate; `published`: the published row (percent), and its Average over those same columns."""
    columns = {}
    for column, (rule, _) in COLUMNS.items():
        rows = [r for r in results if r.get("column") == column]
        if not rows:
            continue
        scored = [r for r in rows if r.get("pass") is not None]
        passed = sum(bool(r["pass"]) for r in scored)
        entry = {"rule": rule, "tasks": sorted({r["task"] for r in rows}), "items": len(scored), "passed": passed,
                 "pass_rate": _rate(passed, len(scored)), "not_scored": len(rows) - len(scored),
                 "published_percent": PUBLISHED_WAN22_TI2V_5B[column]}
        if rule == "major_frame":
            last = [r for r in rows if r.get("last_frame_pass") is not None]
            last_passed = sum(bool(r["last_frame_pass"]) for r in last)
            entry["last_frame"] = {"items": len(last), "passed": last_passed,
                                   "pass_rate": _rate(last_passed, len(last))}
        rules = sorted({r["pass_rule"] for r in scored if r.get("pass_rule")})
        if rules:
            entry["pass_rule"] = "; ".join(rules)  # a threshold of ours, labelled "not the leaderboard's"
        columns[column] = entry
    rated = [name for name, entry in columns.items() if entry["pass_rate"] is not None]
    average = round(sum(columns[name]["pass_rate"] for name in rated) / len(rated), 4) if rated else None
    published_same = round(sum(PUBLISHED_WAN22_TI2V_5B[name] for name in rated) / len(rated), 2) if rated else None
    return {"columns": columns, "average": average, "average_over": rated,
            "published": {"source": PUBLISHED_SOURCE, "row_percent": PUBLISHED_WAN22_TI2V_5B,
                          "average_same_columns_percent": published_same}}
