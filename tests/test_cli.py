"""What a new user meets first: --help of every entry point (defaults, environment, resuming), one LoRA flag name,
--demo refusing the flags it sets, and the outputs of the README's commands kept out of git."""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from wan_sft import evaluation, inference, launch, slurm
from wan_sft.config import InputError
from wan_sft.demo import refuse_flags_the_demo_sets

ENVIRONMENT = ("environment: MODEL_BASE_PATH the Wan2.2-TI2V-5B folder: the default of --model_base_path "
               "DIFFSYNTH_PATH a DiffSynth-Studio checkout to use instead of the installed package")
OFFLINE = "Nothing is downloaded: HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set."
TRAINING_DEFAULTS = ["--num_frames NUM_FRAMES frames per clip: 4k+1 (default: 81)",
                     "--height HEIGHT pixels, a multiple of 32 (default: 896)",
                     "--lora_rank LORA_RANK LoRA rank on q,k,v,o,ffn.0,ffn.2 of the DiT (default: 32)",
                     "--num_epochs NUM_EPOCHS passes over the CSV (default: 3)",
                     "--learning_rate LEARNING_RATE AdamW, DiffSynth's schedule (default: 0.0001)",
                     "--save_steps SAVE_STEPS export a LoRA and save a resumable state every N optimizer steps "
                     "(default: 250)",
                     "--lora_path LORA_PATH, --lora_checkpoint LORA_PATH LoRA .safetensors",
                     "--model_base_path MODEL_BASE_PATH Wan2.2-TI2V-5B folder (default: $MODEL_BASE_PATH)",
                     ENVIRONMENT]


@pytest.mark.parametrize("command, lines", [
    (["bash", "train_single_node.sh"], [
        "usage: train_single_node.sh ", *TRAINING_DEFAULTS,
        "--output_dir OUTPUT_DIR LoRA exports, resumable states, logs; re-running the same command resumes from here "
        "(default: ./output/wan_lora)",
        "--port PORT rendezvous port ($MASTER_PORT when set) (default: 29500)",
        "MASTER_PORT the default of --port " + OFFLINE,
        "resume: re-run the same command. Training continues from the newest complete state in --output_dir with the "
        "same step numbering (Ctrl-C, SIGTERM and SIGUSR1 save a state first); a changed dataset, world size or seed "
        "is refused."]),
    (["bash", "train_multi_node.sh"], [
        "usage: train_multi_node.sh ", *TRAINING_DEFAULTS, "(default: ./output/wan_lora_multi)",
        "--pre_timeout PRE_TIMEOUT seconds before the time limit at which training saves and the job requeues itself "
        "(0: off) (default: 300)",
        "--job_name JOB_NAME Slurm job name (default: wan_lora)",
        "SBATCH_* sbatch's own variables set options of the job (as --sbatch_args) " + OFFLINE,
        "resume: submit the same command again. Training continues from the newest complete state in --output_dir; "
        "before the time limit (--pre_timeout) the job saves a state and requeues itself."]),
    ([sys.executable, "inference.py"], [
        "usage: inference.py ", "--lora_path LORA_PATH, --lora_ckpt LORA_PATH LoRA .safetensors",
        "inference and evaluation fuse them into the DiT (default: none, the base model alone)",
        "--num_inference_steps NUM_INFERENCE_STEPS denoising steps (default: 50)",
        "--cfg_scale CFG_SCALE classifier-free guidance (1 disables it) (default: 5.0)",
        "--fps FPS frame rate written into the mp4 (default: 16)",
        "--width WIDTH pixels, a multiple of 32 (default: 480)",
        ENVIRONMENT + " " + OFFLINE, "Each run writes --output and its _last.png anew: there is nothing to resume."]),
    ([sys.executable, "parallel_eval.py"], [
        "usage: parallel_eval.py ", "--output_dir OUTPUT_DIR per-item outputs, results, summary, report (default: "
        "./output/eval)", "--workers WORKERS CPU worker processes when no GPU is visible (default: 1)",
        "--num_shards NUM_SHARDS split the items across this many nodes (default: 1)",
        ENVIRONMENT + " " + OFFLINE, "resume: re-run the same command. Only the items without a result in --output_dir "
        "are done; a folder holding a run with other settings is refused."]),
    ([sys.executable, "prepare_csv.py"], [
        "usage: prepare_csv.py ", "--num_frames NUM_FRAMES frames per clip: 4k+1 (default: 81)",
        "--seed SEED seed of the validation split (default: 0)",
        "environment: none needed (no model is loaded). Nothing to resume: a re-run checks every row again and "
        "rewrites --output (atomically)."]),
    ([sys.executable, "prepare_csv.py", "generate"], [
        "usage: prepare_csv.py generate ", "--task {maze_square,midpoint,circle_center} puzzle kind (default: "
        "maze_square)", "--num NUM puzzles to write (default: 100)", "--grid GRID maze size in cells: an int or a "
        "range a..b (mazes only) (default: 5..9)", "--width WIDTH canvas and video width in pixels (default: 512)",
        "--fps FPS frame rate of the solution videos (default: 16)",
        "environment: none needed (no model is loaded). Nothing to resume: the same flags write the same bytes "
        "again."]),
])
def test_help_shows_defaults_environment_and_resuming(command, lines):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MODEL_BASE_PATH")}
    result = subprocess.run([*command, "--help"], cwd=REPO, env={**env, "PYTHON": sys.executable}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps to the terminal width
    assert text.startswith(lines[0])
    for line in lines[1:]:
        assert line in text
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: )" not in text


def test_one_lora_flag_name_everywhere_old_names_kept():
    single, multi = launch.single_node_parser(), slurm.parser()
    for parser in (single, multi):
        for flag in ("--lora_path", "--lora_checkpoint"):
            assert parser.parse_args([flag, "a.safetensors"]).lora_checkpoint == "a.safetensors"
    for flag in ("--lora_path", "--lora_ckpt"):
        assert inference.parse_args(["--input_image", "p.png", "--prompt", "x", flag, "a.safetensors"]).lora_path == \
            "a.safetensors"
        assert evaluation.parse_args(["--dataset_root", "d", flag, "a.safetensors"]).lora_path == "a.safetensors"


def test_demo_refuses_the_flags_it_sets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert launch.main(["single", "--demo", "--num_epochs", "3", "--lora_rank", "32"]) == 2
    assert capsys.readouterr().err == ("error: --demo sets --lora_rank, --num_epochs itself (the tiny model on the "
                                       "demo puzzles): leave them out, or run without --demo\n")
    assert inference.main(["--demo", "--num_frames=9"]) == 2
    assert capsys.readouterr().err == ("error: --demo sets --num_frames itself (the tiny model on the demo puzzles): "
                                       "leave it out, or run without --demo\n")
    assert evaluation.main(["--demo", "--lora_ckpt", "x", "--workers", "3", "--output_dir", "o"]) == 2
    assert capsys.readouterr().err == ("error: --demo sets --lora_path, --output_dir, --workers itself (the tiny "
                                       "model on the demo puzzles): leave them out, or run without --demo\n")
    assert list(tmp_path.iterdir()) == []  # refused before the demo data is written
    parser = launch.single_node_parser()
    with pytest.raises(InputError, match=r"^--demo sets --num_epochs itself \(the tiny model on the demo puzzles\): "
                                         r"leave it out, or run without --demo$"):  # an abbreviation is the flag too
        refuse_flags_the_demo_sets(parser, ["--demo", "--num_ep", "2"], ["num_epochs", "lora_rank"])
    # What the demo leaves to the user is accepted.
    refuse_flags_the_demo_sets(parser, ["--demo", "--num_gpus", "1", "--max_steps", "2", "--seed", "3"],
                               ["num_epochs", "lora_rank", "output_dir"])


@pytest.mark.parametrize("path, ignored", [
    ("demo/output/final.safetensors", True), ("output/wan_lora/step-250.safetensors", True),
    ("output/eval/report.html", True), ("output/inference/puzzle.mp4", True), ("accelerate_config.yaml", True),
    ("data/puzzles/tasks/maze_square/data.json", True), ("dataset.csv", True), ("dataset_val_ids.txt", True),
    ("dataset_clips/000001_x.mp4", True), (".ruff_cache/CACHEDIR.TAG", True),
    ("wan_sft/data.py", False), ("tests/test_data.py", False), ("bench/RESULTS.md", False),
])
def test_outputs_of_the_demo_and_readme_commands_are_git_ignored(path, ignored):
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO)
    assert result.returncode == (0 if ignored else 1)
