"""VLMPuzzle evaluation, the command of parallel_eval.py: generate a video per puzzle (one worker process per GPU),
score it with the leaderboard's rules (wan_sft/scoring.py) on the frames of the written mp4 as decoded (what the
official tools read), summarize into the leaderboard's columns.

The parts: wan_sft/eval_items.py (which puzzles; the output folder's layout; scoring one item),
wan_sft/eval_workers.py (the worker processes), wan_sft/eval_summary.py (summary, table, report, merge).
A rerun skips items whose JSON exists; a worker that dies costs only its current item, which is reported, and the
run exits non-zero naming every unfinished item.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .cli import run_entry
from .config import HelpFormatter, InputError, environment_help
from .demo import demo_eval_values
from .eval_items import (
    SETTINGS_FILE,
    ScoringOptions,
    candidate_files,
    check_settings,
    find_items,
    forget_finished_items,
    is_finished,
    needs_solution_image,
    read_item_results,
    rescore_item,
    select_items,
    solution_image_path,
)
from .eval_summary import merge_runs, summarize, write_attempt_dirs, write_outputs
from .eval_workers import GenerationJob, run_workers, worker_specs
from .fsutil import atomic_write
from .inference import add_generation_args, check_generation_args, settings_from_args
from .leaderboard import rule_of
from .scoring import VISUAL_METRICS


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parallel_eval.py", formatter_class=HelpFormatter,
        description="Generate, score and summarize VLMPuzzle items (one worker per GPU).\n"
                    "`parallel_eval.py merge --output_dir D SHARD_DIR...` combines shard outputs.",
        epilog=environment_help() + "\n\nresume: re-run the same command. Only the items without a result in "
                                  "--output_dir are done;\na folder holding a run with other settings is refused.")
    parser.add_argument("--dataset_root", "--input_dir", dest="dataset_root",
                        help="puzzle dataset (VLMPuzzle or VideoThinkBench layout, a task folder, or a folder of them)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo's held-out puzzles with the LoRA of `train_single_node.sh --demo`")
    parser.add_argument("--output_dir", default="./output/eval", help="per-item outputs, results, summary, report")
    parser.add_argument("--tasks", default=None, help="comma list of task names (task folder names; default: all)")
    parser.add_argument("--limit", type=int, default=None, help="first N puzzles (by id) per task")
    parser.add_argument("--ids_file", default=None, help="lines task/id to evaluate, e.g. <stem>_val_ids.txt")
    parser.add_argument("--prompt_key", default=None,
                        help="record key of the prompt (default: ti2v_prompt, else prompt)")
    parser.add_argument("--candidates_dir", default=None,
                        help="score existing <task>/<id>.mp4 (every verdict) or <task>/<id>.png (last-frame verdicts "
                             "only) instead of generating; loads no model")
    parser.add_argument("--attempt_dirs", action="store_true",
                        help="also write <output_dir>/attempts/<task>/<id>/{video_1.mp4,result.png,content.txt} for "
                             "the official VLMPuzzle evaluators")
    parser.add_argument("--visual_threshold", default=None,
                        help="a pass rule for visual puzzles, NOT the leaderboard's (it publishes none): N (both "
                             "metrics) or rgb=N,binary=M; pass = best-frame distance <= N")
    parser.add_argument("--gpus", default=None, help="GPU indices, one worker each (default: all visible)")
    parser.add_argument("--workers", type=int, default=1, help="CPU worker processes when no GPU is visible")
    parser.add_argument("--no_compile", action="store_true",
                        help="do not torch.compile the DiT blocks on GPU (compiling costs ~1 min per worker once)")
    parser.add_argument("--num_shards", type=int, default=1, help="split the items across this many nodes")
    parser.add_argument("--shard_index", type=int, default=0, help="which split this node runs (0-based)")
    parser.add_argument("--redo", action="store_true",
                        help="generate every item again, also finished ones (e.g. the LoRA file changed)")
    add_generation_args(parser)
    args = parser.parse_args(argv)
    if args.demo:
        vars(args).update(demo_eval_values(parser, argv))
    elif not args.dataset_root:
        parser.error("--dataset_root is required (or --demo)")
    return args


def parse_visual_threshold(text: str | None) -> dict | None:
    """'N' -> both metrics; 'rgb=N,binary=M' -> per metric (either may be left out)."""
    if text is None:
        return None
    problem = (f"--visual_threshold {text!r} is invalid: give a distance N (both metrics) or rgb=N,binary=M "
               f"(rgb: sum of per-pixel RGB distances, binary: mismatched pixels)")
    try:
        if "=" not in text:
            thresholds = dict.fromkeys(VISUAL_METRICS, float(text))
        else:
            pairs = [part.split("=", 1) for part in text.split(",")]
            thresholds = {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise InputError(problem) from None
    if not thresholds or set(thresholds) - set(VISUAL_METRICS) or min(thresholds.values()) < 0:
        raise InputError(problem)
    return thresholds


def file_sha256(path: str | os.PathLike) -> str:
    """Content identity of a LoRA: the same path after more training is another LoRA."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def run_settings(options: ScoringOptions, candidates_dir: Path | None, job: GenerationJob | None,
                 prompt_key: str | None) -> dict:
    """What run_settings.json records: the candidates scored, or how the videos were generated; and the scoring."""
    scoring = {"fit": options.fit, "visual_thresholds": options.visual_thresholds}
    if candidates_dir:
        return {"mode": "candidates", "candidates_dir": str(candidates_dir), **scoring}
    generation = job.settings
    return {"mode": "generate", "lora": str(Path(job.lora_path).resolve()) if job.lora_path else None,
            "lora_sha256": file_sha256(job.lora_path) if job.lora_path else None,
            "model_base_path": str(Path(job.model_base_path).resolve()),
            "num_frames": generation.num_frames, "height": generation.height, "width": generation.width,
            "num_inference_steps": generation.num_inference_steps, "cfg_scale": generation.cfg_scale,
            "seed": generation.seed, "negative_prompt": generation.negative_prompt, "fps": job.fps,
            "prompt_key": prompt_key, **scoring,
            "fp8": "approximate: DiT block linears in FP8 (--fp8)" if job.fp8 else False}


def evaluate(argv) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    candidates_dir = Path(args.candidates_dir).resolve() if args.candidates_dir else None
    # Everything is checked before a worker starts or a file is written.
    items = select_items(find_items(args.dataset_root, args.prompt_key), args.tasks, args.ids_file, args.limit,
                         args.num_shards, args.shard_index)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output_dir {output_dir} exists and is not a folder")
    options = ScoringOptions(args.fit, parse_visual_threshold(args.visual_threshold))
    for item in items:
        if needs_solution_image(item.task) and not solution_image_path(item).is_file():
            raise InputError(f"{item.key}: solution image {solution_image_path(item)} not found; the "
                             f"{rule_of(item.task)} rule compares the generated frames with it")
    if candidates_dir:
        if not candidates_dir.is_dir():
            raise InputError(f"--candidates_dir {args.candidates_dir}: not a folder")
        if candidates_dir == output_dir:
            raise InputError("--candidates_dir and --output_dir are the same folder; write the re-scored run to a new "
                             "--output_dir")
        missing = [item.key for item in items if candidate_files(candidates_dir, item) == (None, None)]
        if missing:
            raise InputError(f"--candidates_dir {args.candidates_dir}: {len(missing)} of {len(items)} puzzles have "
                             f"neither <task>/<id>.png nor .mp4, first: {missing[0]}")
        job = None
    else:
        check_generation_args(args)
        specs = worker_specs(args.gpus, args.workers)
        job = GenerationJob(args.model_base_path, args.lora_path, settings_from_args(args), args.fps,
                            str(output_dir), compile_blocks=not args.no_compile, scoring=options, fp8=args.fp8)
    settings = run_settings(options, candidates_dir, job, args.prompt_key)
    if args.redo:
        print(f"--redo: {forget_finished_items(output_dir)} finished items in {output_dir} will be done again",
              flush=True)
    else:
        check_settings(output_dir, settings, " (or --redo to do every item again)")

    atomic_write(output_dir / SETTINGS_FILE, json.dumps(settings, indent=1, ensure_ascii=False))
    todo = [item for item in items if not is_finished(output_dir, item)]
    done_before = len(items) - len(todo)
    earlier = read_item_results(output_dir, items)
    passed, scored = sum(1 for r in earlier if r["pass"]), sum(1 for r in earlier if r["pass"] is not None)
    print(f"{len(items)} puzzles selected, {done_before} already finished in {output_dir}, {len(todo)} to do",
          flush=True)

    bar = tqdm(total=len(items), initial=done_before, desc="eval", file=sys.stderr, dynamic_ncols=True)

    def on_result(result):
        nonlocal passed, scored
        passed += bool(result["pass"])
        scored += result["pass"] is not None
        bar.update(1)
        bar.set_postfix_str(f"pass {passed}/{scored} scored" + (f" ({100 * passed / scored:.0f}%)" if scored else ""))

    start = time.time()
    with bar:  # closed (its line ended) also when a full disk stops the run
        if candidates_dir:
            for item in todo:
                on_result(rescore_item(item, candidates_dir, output_dir, options))
            problems = {}
        elif todo:
            problems = run_workers(todo, specs, job, on_result, log=bar.write)
        else:
            problems = {}
    wall = time.time() - start
    finished_now = sum(1 for item in todo if is_finished(output_dir, item))
    results = read_item_results(output_dir, items)
    unfinished = {item.key: problems.get(item.key, "no result written") for item in items
                  if not is_finished(output_dir, item)}
    summary = summarize(results, settings, finished_now * 3600 / wall if finished_now and wall > 0 else None,
                        finished_now, unfinished)
    summary["selection"] = {"dataset_root": str(Path(args.dataset_root).resolve()), "tasks": args.tasks,
                            "limit": args.limit, "ids_file": args.ids_file, "num_shards": args.num_shards,
                            "shard_index": args.shard_index, "items": len(items)}
    write_outputs(output_dir, results, summary)
    if args.attempt_dirs:
        print(f"attempt folders for the official evaluators: {write_attempt_dirs(output_dir, results)}", flush=True)
    return _report_unfinished(unfinished)


def _report_unfinished(unfinished: dict[str, str]) -> int:
    if not unfinished:
        return 0
    print(f"error: {len(unfinished)} puzzles unfinished (rerun the same command to do just these):", file=sys.stderr)
    for key, why in sorted(unfinished.items()):
        print(f"  {key}: {why}", file=sys.stderr)
    return 1


def merge(argv) -> int:
    """Copy every finished item of the shard folders into --output_dir (JSON last), then rebuild the outputs."""
    parser = argparse.ArgumentParser(prog="parallel_eval.py merge", formatter_class=HelpFormatter,
                                     description="Combine the output folders of shard runs into one.")
    parser.add_argument("--output_dir", required=True, help="the combined run")
    parser.add_argument("shard_dirs", nargs="+", help="the --output_dir of each shard run")
    args = parser.parse_args(argv)
    unfinished = merge_runs(Path(args.output_dir).resolve(), [Path(shard).resolve() for shard in args.shard_dirs])
    return _report_unfinished(unfinished)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # A failed write removes the item's partial files; finished items are complete.
    return run_entry(evaluate_or_merge, argv, write_failed_advice="Finished items are kept: free space and rerun the "
                                                                  "same command to do the rest")


def evaluate_or_merge(argv: list[str]) -> int:
    if argv[:1] == ["merge"]:
        return merge(argv[1:])
    if "--merge" in argv:
        return merge([arg for arg in argv if arg != "--merge"])
    return evaluate(argv)
