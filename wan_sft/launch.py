"""Launching training: validate everything, write accelerate_config.yaml, start `accelerate launch`.

`train_single_node.sh` calls `python -m wan_sft.launch single ...`; nothing about the launch is decided in bash.
On a machine without GPUs training runs on CPU with gloo; accelerate only starts several real CPU ranks with
`distributed_type: MULTI_GPU` in the config plus ACCELERATE_USE_CPU=true, so that is what the CPU config holds.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from . import config
from .checkpoints import check_same_settings, run_fingerprint
from .cli import run_entry
from .config import InputError
from .demo import demo_training_values
from .fsutil import atomic_write

CONFIG_FILE = "accelerate_config.yaml"
# A Ctrl-C while validating (python -m wan_sft.launch, python -m wan_sft.slurm): later ones are forwarded to training.
STOPPED_BEFORE_TRAINING = "stopped by signal before training started; nothing to save"


def visible_gpus() -> int:
    import torch  # here: the launchers' --help starts without torch

    return torch.cuda.device_count()


def accelerate_config(num_processes: int, use_gpu: bool, gradient_accumulation_steps: int = 1) -> dict:
    """Single-node config; multi-node launches override machine count and rank on the command line."""
    common = dict(compute_environment="LOCAL_MACHINE", debug=False, num_machines=1, machine_rank=0,
                  num_processes=num_processes, rdzv_backend="static", same_network=True,
                  main_training_function="main", downcast_bf16="no", tpu_use_cluster=False, tpu_use_sudo=False)
    if use_gpu:
        return dict(common, distributed_type="DEEPSPEED", mixed_precision="bf16", use_cpu=False, gpu_ids="all",
                    deepspeed_config=dict(zero_stage=2, gradient_accumulation_steps=gradient_accumulation_steps,
                                          offload_optimizer_device="none", offload_param_device="none",
                                          zero3_init_flag=False,
                                          deepspeed_multinode_launcher="standard"))
    if num_processes == 1:
        return dict(common, distributed_type="NO", mixed_precision="no", use_cpu=True)
    return dict(common, distributed_type="MULTI_GPU", mixed_precision="no", use_cpu=False, gpu_ids="all")


def write_accelerate_config(path: str | os.PathLike, num_processes: int, use_gpu: bool,
                            gradient_accumulation_steps: int = 1) -> Path:
    text = yaml.safe_dump(accelerate_config(num_processes, use_gpu, gradient_accumulation_steps), sort_keys=True)
    if not use_gpu and num_processes > 1:
        text = ("# CPU ranks: accelerate needs MULTI_GPU here plus ACCELERATE_USE_CPU=true (set by the launcher)\n"
                + text)
    atomic_write(path, text)
    return Path(path)


def training_argv(args: argparse.Namespace, world_size: int) -> list[str]:
    """The training entry's flags."""
    return ["--model_base_path", os.path.abspath(args.model_base_path), "--expected_world_size", str(world_size),
            *training_flags(args)]


def training_flags(args: argparse.Namespace) -> list[str]:
    """Every training flag (config.add_training_args) passed through, absolute paths: ranks may start elsewhere."""
    parser = argparse.ArgumentParser()
    config.add_training_args(parser)
    flags = []
    for name in vars(parser.parse_args([])):
        value = getattr(args, name)
        if value is True:
            flags.append(f"--{name}")
        elif value is not None and value is not False:
            flags += [f"--{name}", os.path.abspath(value) if name in config.PATH_FLAGS else str(value)]
    return flags


def validate(args: argparse.Namespace, dry_run: bool = False) -> None:
    """Every check that needs no model: runs before anything is written, queued or loaded (a dry run writes not even
    the clip-check record)."""
    # These bring torch: imported here, so that --help starts without it.
    from .data import validate_training_csv
    from .lora import read_lora_file
    from .model_files import locate_model_files

    config.check_training_numbers(args)
    if not args.dataset:
        raise InputError("--dataset is required: a video,prompt CSV (make one with prepare_csv.py)")
    locate_model_files(args.model_base_path)
    if args.lora_checkpoint:
        read_lora_file(args.lora_checkpoint)
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output_dir {output_dir} exists and is not a directory")
    samples = validate_training_csv(args.dataset, args.num_frames, args.height, args.width, recheck=args.recheck,
                                    fit=args.fit, save_record=not dry_run)
    check_same_settings(output_dir, run_fingerprint(args, len(samples)))
    if args.val_dataset_root:
        from .validation import check_validation_split

        check_validation_split(args.val_dataset_root, args.val_prompt_key, args.val_ids_file, args.dataset,
                               args.val_count)


SINGLE_NODE_EPILOG = config.environment_help("  MASTER_PORT      the default of --port") + """

resume: re-run the same command. Training continues from the newest complete state in --output_dir with the same
step numbering (Ctrl-C, SIGTERM and SIGUSR1 save a state first); a changed dataset, world size or seed is refused."""


def single_node_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_single_node.sh", description="LoRA-train Wan2.2-TI2V-5B on this node.",
                                     epilog=SINGLE_NODE_EPILOG, formatter_class=config.HelpFormatter)
    config.add_training_args(parser)
    parser.add_argument("--num_gpus", type=int, default=None,
                        help="processes to start (default: all visible GPUs; 1 CPU process without GPUs)")
    config.add_model_base_path(parser)
    parser.add_argument("--port", type=int, default=os.environ.get("MASTER_PORT") or 29500,
                        help="rendezvous port ($MASTER_PORT when set)")
    parser.add_argument("--demo", action="store_true",
                        help="train the tiny model on generated mazes under ./demo (CPU, a few minutes)")
    return parser


def single_node(argv: list[str]) -> int:
    parser = single_node_parser()
    args = parser.parse_args(argv)
    if args.demo:
        vars(args).update(demo_training_values(parser, argv, args.num_gpus))
    gpus = visible_gpus()
    num_processes = args.num_gpus or max(gpus, 1)
    if num_processes < 1:
        raise InputError(f"--num_gpus {args.num_gpus} is invalid: it must be at least 1")
    if gpus and num_processes > gpus:
        raise InputError(f"--num_gpus {num_processes} but only {gpus} GPUs are visible (CUDA_VISIBLE_DEVICES)")
    validate(args)

    yaml_path = write_accelerate_config(CONFIG_FILE, num_processes, use_gpu=gpus > 0,
                                        gradient_accumulation_steps=args.gradient_accumulation_steps)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(yaml_path),
               "--main_process_port", str(args.port), "-m", "wan_sft.train", *training_argv(args, num_processes)]
    if not gpus:
        os.environ["ACCELERATE_USE_CPU"] = "true"
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    if gpus:
        where = f"{num_processes} GPU{'s' if num_processes > 1 else ''}"
    else:
        where = f"CPU ({num_processes} process{'es' if num_processes > 1 else ''})"
    print(f"training on {where}; config {yaml_path}; output {os.path.abspath(args.output_dir)}", flush=True)
    print("+ " + shlex.join(command), flush=True)
    return run_accelerate(command[3:])


def run_accelerate(accelerate_argv: list[str]) -> int:
    """`accelerate launch ACCELERATE_ARGV` in this process, so the training processes are its children.

    SIGINT, SIGTERM and SIGUSR1 reach every training process once, whoever got them (a terminal's Ctrl-C hits
    the whole process group, `kill PID` or a job manager only this process): each finishes its step, saves a
    state and exits 128+signal, and so does this process, with the training's exit code. A training process that
    fails has said why: accelerate's CalledProcessError / torch's ChildFailedError traceback is not added.
    """
    import psutil  # accelerate's dependency; these load only when training starts
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    received = []

    def forward(signum, frame):
        if received:
            return  # once: the training processes are already stopping
        received.append(signum)
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # ranks exiting 128+S is no failure
        children = psutil.Process().children()
        if not children:  # training has not started: nothing to save
            raise SystemExit(128 + signum)
        for child in children:
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, forward)
    os.environ["PET_SIGNALS_TO_HANDLE"] = "SIGHUP,SIGQUIT"  # torch's agent leaves SIGINT/SIGTERM/SIGUSR1 to us
    try:
        launch_command(launch_command_parser().parse_args(accelerate_argv))
    except subprocess.CalledProcessError as error:  # one CPU process (accelerate's simple launcher)
        return _exit_code(error.returncode)
    except ChildFailedError as error:  # torch's agent: the first process that failed is the root cause
        return _exit_code(error.get_first_failure()[1].exitcode)
    return 0


def _exit_code(returncode: int) -> int:
    """A process killed by signal S (returncode -S) ends us with 128+S, like a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "single":
        print("usage: python -m wan_sft.launch single [flags]", file=sys.stderr)
        return 2
    return run_entry(single_node, argv[1:], interrupted=STOPPED_BEFORE_TRAINING)


if __name__ == "__main__":
    sys.exit(main())
