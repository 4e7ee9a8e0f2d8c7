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
