"""Task validation during training: puzzle pass rate of the current LoRA against the step, and the best checkpoint.

At every `--val_every` steps each rank generates its share of the K held-out puzzles (item i on rank i % world)
with the training DiT itself (LoRA active, eval mode, no grad), writes the mp4, scores its decoded frames with the
leaderboard's rules (as evaluation does), and rank 0 gathers the results into:
    <output_dir>/validation.csv                      step,task,column,items,passed,pass_rate: per step one row per
                                                     task (scored items), and one per leaderboard column (task empty)
    <output_dir>/validation/step-N/<task>/<id>.mp4, .png   the videos and their last decoded frames
    <output_dir>/best.json, best.safetensors         the step with the highest overall pass rate (earliest on ties)
Items the leaderboard does not score (no rule, a visual puzzle's distance, an ARC record without the grid layout)
count in no rate.
T5 and the VAE: with the latent cache training drops them from the pipeline; the validator keeps them, the VAE on
the device (small) and T5 on the CPU, and puts both back into the pipeline only while it generates.

`python -m wan_sft.validation OUTPUT_DIR` (re)writes OUTPUT_DIR/training_report.html.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object

from . import run_folder
from .config import InputError
from .data import Sample, read_training_csv
from .datasets import PuzzleItem
from .eval_items import check_image_header, find_items, needs_solution_image, read_ids_file, solution_image_path
from .fsutil import atomic_save_image, atomic_write
from .inference import GenerationSettings, generate, read_image
from .leaderboard import column_scores
from .lora import export_lora
from .report import write_training_report
from .scoring import score_item
from .video import read_frames, write_video

CSV_COLUMNS = ("step", "task", "column", "items", "passed", "pass_rate")


# ---------------------------------------------------------------- which puzzles, checked before any model loads


def default_ids_file(dataset: str | os.PathLike) -> Path | None:
    """prepare_csv's `<stem>_val_ids.txt` beside the training CSV, when there is one."""
    dataset = Path(dataset)
    candidate = dataset.with_name(f"{dataset.stem}_val_ids.txt")
    return candidate if candidate.is_file() else None


def select_validation_items(root: str | os.PathLike, prompt_key: str, ids_file: str | None, dataset: str,
                            count: int) -> list[PuzzleItem]:
    """The first `count` (--val_count) puzzles (by task/id) of --val_dataset_root `root` listed in --val_ids_file
    `ids_file` (default: the training CSV's held-out ids, else all)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--val_dataset_root {root}: not a folder; pass a puzzle dataset root "
                         f"(VLMPuzzle or VideoThinkBench layout)")
    items = find_items(root, prompt_key)
    if ids_file and not Path(ids_file).is_file():
        raise InputError(f"--val_ids_file {ids_file}: file not found")
    ids_file = ids_file or default_ids_file(dataset)
    if ids_file:
        by_key = {item.key: item for item in items}
        keys = sorted(set(read_ids_file(ids_file)))
        missing = [key for key in keys if key not in by_key]
        if missing:
            raise InputError(f"validation ids file {ids_file}: {len(missing)} puzzles are not in --val_dataset_root "
                             f"{root}, first: {missing[0]}")
        items = [by_key[key] for key in keys]
    items = items[:count]
    for item in items:
        check_image_header(item.puzzle_path, item.key)
        try:  # a record the scorer cannot read would otherwise fail hours into training
            puzzle = read_image(item.puzzle_path)
            score_item([puzzle], item.record, item.task, puzzle=puzzle, solution=solution_image(item))
        except Exception as error:  # noqa: BLE001 - any failure here means the record is unusable
            raise InputError(f"validation puzzle {item.key} cannot be scored ({error.__class__.__name__}: "
                             f"{error}); fix its data.json record or leave it out of the ids file") from None
    return items


def solution_image(item: PuzzleItem):
    """The solution image where the task's rule compares with it (visual puzzles, ARC-AGI-2), else None."""
    return read_image(solution_image_path(item)) if needs_solution_image(item.task) else None


def training_puzzles(samples: list[Sample], items: list[PuzzleItem]) -> dict[str, Sample]:
    """{task/id: first CSV sample training on it}: a row's video is the puzzle's solution video, or a clip that
    prepare_csv --trim made from it (`NNNNNN_<solution stem>.mp4`; matched only when that stem is unique)."""
    by_video, by_stem = {}, {}
    for item in items:
        by_video[os.path.realpath(item.solution_video)] = item.key
        by_stem.setdefault(item.solution_video.stem, []).append(item.key)
    found = {}
    for sample in samples:
        key = by_video.get(os.path.realpath(sample.video))
        trimmed = re.fullmatch(r"\d{6}_(.+)", Path(sample.video).stem)
        if key is None and trimmed and len(by_stem.get(trimmed.group(1), [])) == 1:
            key = by_stem[trimmed.group(1)][0]
        if key is not None:
            found.setdefault(key, sample)
    return found


def check_validation_split(root: str | os.PathLike, prompt_key: str, ids_file: str | None, dataset: str,
                           count: int) -> list[PuzzleItem]:
    """The validation puzzles (select_validation_items), refused when any of them is also trained on."""
    items = select_validation_items(root, prompt_key, ids_file, dataset, count)
    trained = training_puzzles(read_training_csv(dataset), find_items(root, prompt_key))
    overlap = [item.key for item in items if item.key in trained]
    if overlap:
        first = trained[overlap[0]]
        raise InputError(f"{len(overlap)} of the {len(items)} validation puzzles are in the training CSV "
                         f"{dataset} (first: {overlap[0]}, row {first.row}); validate on held-out puzzles: "
                         f"make the CSV with prepare_csv.py --val_count N (its <stem>_val_ids.txt is the default) "
                         f"or pass --val_ids_file")
    return items


# ---------------------------------------------------------------- history: validation.csv and the best checkpoint


def read_rows(output_dir: Path) -> list[dict]:
    path = run_folder.validation_csv(output_dir)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [dict(row, step=int(row["step"]), column=row.get("column") or "", items=int(row["items"]),
                     passed=int(row["passed"]), pass_rate=float(row["pass_rate"])) for row in csv.DictReader(f)]


def write_rows(output_dir: Path, rows: list[dict]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({name: row[name] for name in CSV_COLUMNS} for row in rows)
    atomic_write(run_folder.validation_csv(output_dir), buffer.getvalue())


def overall_pass_rates(rows: list[dict]) -> dict[int, float]:
    """{step: passed / items over all tasks}, in step order."""
    totals: dict[int, list[int]] = {}
    for row in rows:
        if not row["task"]:  # a column row
            continue
        total = totals.setdefault(row["step"], [0, 0])
        total[0] += row["passed"]
        total[1] += row["items"]
    return {step: passed / items for step, (passed, items) in sorted(totals.items())}


def read_best(output_dir: Path) -> dict | None:
    path = run_folder.best_json(output_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def restore_history(output_dir: Path, resumed_step: int) -> float | None:
    """Make the history match a run resumed at `resumed_step` (rank 0): later rows and frames go (they are redone),
    and a best from a dropped step is recomputed from the kept rows, its LoRA taken from step-<N>.safetensors.
    Returns the best overall pass rate so far (None: no validation yet)."""
    output_dir = Path(output_dir)
    rows = read_rows(output_dir)
    kept = [row for row in rows if row["step"] <= resumed_step]
    if len(kept) != len(rows):
        write_rows(output_dir, kept)
    for step, folder in run_folder.validation_frames_by_step(output_dir).items():
        if step > resumed_step:
            shutil.rmtree(folder, ignore_errors=True)
    best = read_best(output_dir)
    if best is not None and best["step"] <= resumed_step:
        return best["pass_rate"]
    # best.json is written before best.safetensors, so a best at or before the resumed step has its own LoRA;
    # otherwise both may belong to a dropped step.
    rates = overall_pass_rates(kept)
    run_folder.best_export(output_dir).unlink(missing_ok=True)
    if not rates:
        run_folder.best_json(output_dir).unlink(missing_ok=True)
        return None
    step = max(rates, key=lambda s: (rates[s], -s))  # highest rate, earliest step on ties
    export = run_folder.step_export(output_dir, step)
    if export.is_file():
        atomic_write(run_folder.best_export(output_dir), export.read_bytes())
    else:
        print(f"warning: the best validation step {step} has no {export.name}; best.json names no LoRA until a "
              f"later step beats it", file=sys.stderr)
    atomic_write(run_folder.best_json(output_dir), json.dumps(
        {"step": step, "pass_rate": rates[step], "lora": run_folder.BEST_LORA if export.is_file() else None}, indent=1))
    return rates[step]


def per_task_rows(step: int, results: list[dict]) -> list[dict]:
    """One row per task with scored items, then one per leaderboard column (task empty)."""
    rows = {}
    for result in results:
        if result["pass"] is None:
            continue
        row = rows.setdefault(result["task"], {"step": step, "task": result["task"], "column": result["column"] or "",
                                               "items": 0, "passed": 0})
        row["items"] += 1
        row["passed"] += bool(result["pass"])
    columns = [{"step": step, "task": "", "column": name, "items": entry["items"], "passed": entry["passed"],
                "pass_rate": entry["pass_rate"]}
               for name, entry in column_scores(results)["columns"].items() if entry["items"]]
    return [dict(row, pass_rate=round(row["passed"] / row["items"], 4)) for _, row in sorted(rows.items())] + columns


# ---------------------------------------------------------------- the validator inside the training loop


class TaskValidator:
    """Holds this rank's share of the puzzles (item i on rank i % world), T5 + VAE, and the best pass rate so far (the
    same on every rank). T5 and the VAE are given apart from the pipeline: training from the latent cache drops them
    from it (train.load_model)."""

    def __init__(self, accelerator, pipe, text_encoder, vae, items: list[PuzzleItem], settings: GenerationSettings,
                 output_dir: Path, every: int):
        self.accelerator, self.pipe = accelerator, pipe
        self.output_dir = Path(output_dir)
        self.every = every
        self.mine = items[accelerator.process_index::accelerator.num_processes]
        self.settings = settings
        self.text_encoder, self.vae = text_encoder, vae
        self.best_rate: float | None = None

    def restore_history(self, resumed_step: int) -> None:
        """Collective: rank 0 trims the history to the resumed step; every rank learns the best rate."""
        best = [restore_history(self.output_dir, resumed_step) if self.accelerator.is_main_process else None]
        self.best_rate = broadcast_object_list(best)[0]

    def is_due(self, step: int) -> bool:
        return step % self.every == 0

    def run(self, step: int, current_lora) -> None:
        """Collective: generate + score this rank's puzzles, gather, log; `current_lora()` (itself collective under
        DeepSpeed) gives the LoRA state to export when the pass rate improved."""
        frames_dir = run_folder.validation_frames(self.output_dir, step)
        results = []
        with self._generating():
            for item in self.mine:
                puzzle = read_image(item.puzzle_path)
                frames = generate(self.pipe, puzzle, item.prompt, self.settings, tiled_decode=True)  # beside training
                video = frames_dir / item.task / f"{item.id}.mp4"
                write_video(video, frames)
                decoded = read_frames(video)  # scored as the official tools read it
                score = score_item(decoded, item.record, item.task, puzzle=puzzle,
                                   solution=solution_image(item))
                atomic_save_image(decoded[-1], frames_dir / item.task / f"{item.id}.png")
                results.append({"task": item.task, "column": score["column"], "pass": score["pass"],
                                "last_frame_pass": score.get("last_frame_pass")})
        results = gather_object(results)
        rows = per_task_rows(step, results)
        task_rows = [r for r in rows if r["task"]]
        scored = sum(r["items"] for r in task_rows)
        rate = sum(r["passed"] for r in task_rows) / scored if scored else None
        board = column_scores(results)
        improved = rate is not None and (self.best_rate is None or rate > self.best_rate)
        lora_state = current_lora() if improved else None
        if self.accelerator.is_main_process:
            write_rows(self.output_dir, read_rows(self.output_dir) + rows)
            scalars = {f"val/pass_rate/{r['task']}": r["pass_rate"] for r in task_rows}
            scalars.update({f"val/column/{r['column']}": r["pass_rate"] for r in rows if not r["task"]})
            if rate is not None:
                scalars["val/pass_rate"] = rate
            if board["average"] is not None:
                scalars["val/average"] = board["average"]
            self.accelerator.log(scalars, step=step)
            if improved:  # best.json first: restore_history relies on that order
                atomic_write(run_folder.best_json(self.output_dir),
                             json.dumps({"step": step, "pass_rate": rate, "lora": run_folder.BEST_LORA}, indent=1))
                export_lora(lora_state, run_folder.best_export(self.output_dir))
            write_training_report(self.output_dir)
        if improved:
            self.best_rate = rate
        tasks = ", ".join(f"{r['task']} {r['passed']}/{r['items']}" for r in task_rows)
        columns = ", ".join(f"{r['column']} {r['pass_rate']:.1%}" for r in rows if not r["task"])
        average = "" if board["average"] is None else f"; leaderboard Average {board['average']:.1%} ({columns})"
        self.accelerator.print(f"validation at step {step}: pass rate "
                               f"{'(nothing scored)' if rate is None else f'{rate:.1%}'} ({tasks}){average}"
                               f"{'; new best' if improved else ''}", flush=True)

    @contextlib.contextmanager
    def _generating(self):
        """The DiT in eval mode, T5 + VAE in the pipeline (T5 on the device only meanwhile), and afterwards the
        scheduler as training set it (generation replaces its timesteps)."""
        pipe, dit = self.pipe, self.pipe.dit
        scheduler_state = dict(vars(pipe.scheduler))
        dropped = pipe.text_encoder is None
        if dropped:
            pipe.text_encoder, pipe.vae = self.text_encoder.to(pipe.device), self.vae
        was_training = dit.training
        dit.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            dit.train(was_training)
            vars(pipe.scheduler).update(scheduler_state)
            if dropped:  # T5 waits on the CPU until the next validation (the VAE is small and stays)
                pipe.text_encoder = pipe.vae = None
                self.text_encoder.to("cpu")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_sft.validation",
                                     description="(Re)write OUTPUT_DIR/training_report.html from train_log.jsonl, "
                                                 "validation.csv and best.json.")
    parser.add_argument("output_dir")
    args = parser.parse_args(argv)
    if not run_folder.train_log(args.output_dir).is_file():
        print(f"error: {args.output_dir} has no train_log.jsonl; pass a training --output_dir", file=sys.stderr)
        return 2
    print(f"wrote {write_training_report(Path(args.output_dir))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
