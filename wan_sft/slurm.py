"""Multi-node training on Slurm: `train_multi_node.sh` calls `python -m wan_sft.slurm ...`.

One command, three roles, picked from the environment:

* outside an allocation (plain `bash train_multi_node.sh ...`): validate everything (launch.validate, the same rules
  and messages as single-node), write <output_dir>/accelerate_config.yaml and <output_dir>/multi_node.sbatch, and
  submit that script with `sbatch`. `--dry_run` prints the script and the per-node launch commands instead.
* inside the allocation, as the batch shell (`sbatch train_multi_node.sh ...` directly, or under salloc): validate,
  write the config, then become the same batch script body (exec bash) that a submission would have run.
* `--in_task` (started by the batch script through `srun`, once per node): read SLURM_NODEID / SLURM_NNODES /
  SLURM_JOB_ID of this task and run `accelerate launch --machine_rank $SLURM_NODEID ...` in-process
  (launch.run_accelerate: torch's agent on the node starts the node's training processes).

Stopping and requeueing (the batch script: templates/multi_node_batch.sh.j2): the job is submitted with
`--requeue --signal=B:USR1@<pre_timeout>`. Slurm sends SIGUSR1 to the batch shell <pre_timeout> s before the time
limit; its trap ignores repeats, sends SIGUSR1 to srun, which forwards it to the launcher on every node; the launcher
(launch.run_accelerate) forwards it to its training processes. train.py finishes the current step, saves a complete
state on all ranks and exits; the batch shell then runs `scontrol requeue $SLURM_JOB_ID`, and the rerun resumes from
that state (train.py's auto-resume). A hung rank (train.py's step watchdog, exit WATCHDOG_EXIT) also requeues the job.
Either requeue happens only if the run saved a newer complete state than the one it started from: a job that hangs
or runs out of time before its first save fails with a message instead of requeueing forever.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from . import config, launch, run_folder
from .cli import run_entry
from .config import InputError
from .fsutil import atomic_write
from .watchdog import WATCHDOG_EXIT

DEFAULT_OUTPUT_DIR = "./output/wan_lora_multi"
DEFAULT_PRE_TIMEOUT = 300
DEFAULT_JOB_NAME = "wan_lora"
SCRIPT_FILE = "multi_node.sbatch"
HEAD_ENV = "WAN_SFT_HEAD_NODE"  # exported by the batch script, read by every srun task
EXAMPLE_JOB_ID = 123456  # what --dry_run pretends the job id is
# shell scripts: no HTML escaping; every value the script needs quoted goes through shell_quote / shell_join
_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), undefined=StrictUndefined,
                         keep_trailing_newline=True)
_TEMPLATES.filters.update(shell_quote=shlex.quote, shell_join=shlex.join)


# ----------------------------------------------------------------------------------------------- pure helpers
def port_for_job(job_id: int | str) -> int:
    """Rendezvous port derived from the job id: concurrent jobs on shared nodes don't clash; a requeue keeps it."""
    return 20000 + int(job_id) % 20000


def node_env(environ: dict) -> dict:
    """This srun task's place in the job, from the variables Slurm sets in it (read inside the task: each node
    sees its own SLURM_NODEID)."""
    missing = [name for name in ("SLURM_JOB_ID", "SLURM_NODEID", "SLURM_NNODES") if name not in environ]
    if missing:
        raise InputError(f"--in_task runs inside `srun` only: {', '.join(missing)} not set")
    job_id, node_rank, num_nodes = (int(environ["SLURM_JOB_ID"]), int(environ["SLURM_NODEID"]),
                                    int(environ["SLURM_NNODES"]))
    if not 0 <= node_rank < num_nodes:
        raise InputError(f"SLURM_NODEID {node_rank} is outside 0..{num_nodes - 1}")
    return dict(job_id=job_id, node_rank=node_rank, num_nodes=num_nodes)


def head_node(nodelist: str) -> str:
    """First host of a Slurm nodelist (`scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1`)."""
    result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return result.stdout.split()[0]


def num_processes(args) -> int:
    return args.num_nodes * args.gpus_per_node


def job_shape(args) -> str:
    return f"{args.num_nodes} nodes x {args.gpus_per_node} {'CPU processes' if args.cpu else 'GPUs'}"


def config_path(args) -> Path:
    return Path(os.path.abspath(args.output_dir)) / launch.CONFIG_FILE


def script_path(args) -> Path:
    return Path(os.path.abspath(args.output_dir)) / SCRIPT_FILE


def log_pattern(args) -> str:
    return str(Path(os.path.abspath(args.output_dir)) / "slurm-%j.out")


def task_argv(args) -> list[str]:
    """What the batch script passes to `python -m wan_sft.slurm --in_task` on every node: the resolved
    settings (absolute paths), so a requeued run does not depend on the submit-time environment or cwd. No
    --expected_world_size: each task computes the world size from the nodes srun started."""
    multi = ["--num_nodes", str(args.num_nodes), "--gpus_per_node", str(args.gpus_per_node),
             "--pre_timeout", str(args.pre_timeout)]
    if args.cpu:
        multi.append("--cpu")
    if args.port is not None:
        multi += ["--port", str(args.port)]
    return ["--in_task", *multi, "--model_base_path", os.path.abspath(args.model_base_path),
            *launch.training_flags(args)]


def sbatch_options(args) -> list[str]:
    """The job's sbatch options (as #SBATCH lines: SBATCH_* env and --sbatch_args override them)."""
    options = [f"--job-name={args.job_name}", f"--nodes={args.num_nodes}", "--ntasks-per-node=1"]
    if not args.cpu:
        options.append(f"--gpus-per-node={args.gpus_per_node}")
    options.append("--requeue")
    if args.pre_timeout > 0:
        options.append(f"--signal=B:USR1@{args.pre_timeout}")
    options += [f"--output={log_pattern(args)}", "--open-mode=append"]
    return options


def batch_body(args, python: str = sys.executable) -> str:
    """The batch shell: one launcher per node through srun, signal forwarding, self-requeue on SIGUSR1."""
    return _TEMPLATES.get_template("multi_node_batch.sh.j2").render(
        cwd=os.getcwd(), pythonpath=os.environ.get("PYTHONPATH", ""), shape=job_shape(args), head_env=HEAD_ENV,
        task_command=[python, "-m", "wan_sft.slurm", *task_argv(args)], watchdog_exit=WATCHDOG_EXIT,
        states=str(run_folder.states_dir(os.path.abspath(args.output_dir))))


def sbatch_script(args, python: str = sys.executable) -> str:
    header = "\n".join(f"#SBATCH {option}" for option in sbatch_options(args))
    return (f"#!/bin/bash\n{header}\n"
            f"# generated by `python -m wan_sft.slurm` (wan_sft/slurm.py); resubmitting it resumes the run\n"
            + batch_body(args, python))


def sbatch_command(args) -> list[str]:
    return ["sbatch", "--parsable", *user_sbatch_args(args), str(script_path(args))]


def user_sbatch_args(args) -> list[str]:
    try:
        return shlex.split(args.sbatch_args or "")
    except ValueError as error:
        raise InputError(f"--sbatch_args {args.sbatch_args!r} is invalid: {error}") from None


def launch_command(args, node_rank: int, num_nodes: int, head: str, port: int) -> tuple[list[str], dict]:
    """`accelerate launch` for one node, and the environment it needs on top of the task's."""
    world = num_nodes * args.gpus_per_node
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(args)),
               "--num_machines", str(num_nodes), "--num_processes", str(world), "--machine_rank", str(node_rank),
               "--main_process_ip", head, "--main_process_port", str(port)]
    if not args.cpu:
        command += ["--deepspeed_multinode_launcher", "standard"]
    command += ["-m", "wan_sft.train", *launch.training_argv(args, world)]
    env = {}
    if args.cpu:
        env["ACCELERATE_USE_CPU"] = "true"  # with MULTI_GPU in the config: real gloo CPU ranks (see launch.py)
    else:
        env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"  # a failed collective tears the process down: fail fast
    return command, env


# ----------------------------------------------------------------------------------------------- the command
MULTI_NODE_EPILOG = config.environment_help("  SBATCH_*         sbatch's own variables set options of the job "
                                             "(as --sbatch_args)") + """

resume: submit the same command again. Training continues from the newest complete state in --output_dir; before
the time limit (--pre_timeout) the job saves a state and requeues itself."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_multi_node.sh",
                                description="LoRA-train Wan2.2-TI2V-5B on several Slurm nodes "
                                            "(submits itself with sbatch).",
                                epilog=MULTI_NODE_EPILOG, formatter_class=config.HelpFormatter)
    config.add_training_args(p)
    p.set_defaults(output_dir=DEFAULT_OUTPUT_DIR)
    p.add_argument("--num_nodes", type=int, default=None,
                   help="nodes to allocate (required outside an allocation; inside, default: the allocation's)")
    p.add_argument("--gpus_per_node", type=int, default=None,
                   help="training processes per node = GPUs per node (default 8; 1 with --cpu)")
    p.add_argument("--cpu", action="store_true",
                   help="CPU nodes: gloo, --gpus_per_node CPU processes per node, no GPUs requested")
    config.add_model_base_path(p)
    p.add_argument("--port", type=int, default=None, help="rendezvous port (default: 20000 + job id %% 20000)")
    p.add_argument("--pre_timeout", type=int, default=DEFAULT_PRE_TIMEOUT,
                   help="seconds before the time limit at which training saves and the job requeues itself (0: off)")
    p.add_argument("--job_name", default=DEFAULT_JOB_NAME, help="Slurm job name")
    p.add_argument("--sbatch_args", default="",
                   help='extra sbatch options, e.g. "--partition gpu --account x --time 2-00:00:00" '
                        "(SBATCH_* env works too)")
    p.add_argument("--dry_run", action="store_true",
                   help="print the sbatch script and node launch commands; submit nothing")
    p.add_argument("--in_task", action="store_true", help=argparse.SUPPRESS)
    return p


def check_multi_numbers(args) -> None:
    if args.num_nodes is None:
        raise InputError("--num_nodes is required: the number of Slurm nodes to train on (e.g. --num_nodes 2)")
    for name in ("num_nodes", "gpus_per_node"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} {getattr(args, name)} is invalid: it must be at least 1")
    if args.pre_timeout < 0:
        raise InputError(f"--pre_timeout {args.pre_timeout} is invalid: it must be 0 (off) or a number of seconds")
    if args.port is not None and not 1024 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is invalid: it must be between 1024 and 65535")


def multi_node(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.gpus_per_node is None:
        args.gpus_per_node = 1 if args.cpu else 8
    if args.in_task:
        return in_task(args)
    in_allocation = "SLURM_JOB_ID" in os.environ and not args.dry_run
    if in_allocation:
        allocated = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 0)
        if args.num_nodes is None:
            args.num_nodes = allocated
        elif allocated and args.num_nodes != allocated:
            raise InputError(f"--num_nodes {args.num_nodes} but this allocation has {allocated} nodes "
                             f"(sbatch --nodes={args.num_nodes} ... or drop --num_nodes)")
    check_multi_numbers(args)
    user_sbatch_args(args)
    launch.validate(args, dry_run=args.dry_run)
    if args.dry_run:
        return dry_run(args)
    if in_allocation:
        return run_batch_shell(args)
    return submit(args)


def write_files(args) -> None:
    Path(os.path.abspath(args.output_dir)).mkdir(parents=True, exist_ok=True)  # Slurm does not create --output's dir
    launch.write_accelerate_config(config_path(args), num_processes(args), use_gpu=not args.cpu,
                                   gradient_accumulation_steps=args.gradient_accumulation_steps)


def submit(args) -> int:
    if shutil.which("sbatch") is None:
        raise InputError("sbatch not found: run this on a Slurm login node (or see what would run with --dry_run)")
    write_files(args)
    atomic_write(script_path(args), sbatch_script(args))
    command = sbatch_command(args)
    print("+ " + shlex.join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"error: sbatch failed (exit {result.returncode}): {result.stderr.strip()}", file=sys.stderr)
        return result.returncode or 1
    job_id = result.stdout.strip().split(";")[0]
    log = log_pattern(args).replace("%j", job_id)
    print(f"submitted job {job_id}: {job_shape(args)} = {num_processes(args)} processes", flush=True)
    print(f"log: {log}", flush=True)
    print(f"follow: tail -f {shlex.quote(log)}; stop: scancel {job_id} (rerunning the same command resumes)",
          flush=True)
    return 0


def run_batch_shell(args) -> int:
    """`sbatch train_multi_node.sh ...`: this process is the batch shell; become the generated batch body."""
    write_files(args)
    body = batch_body(args)
    print(f"in allocation {os.environ['SLURM_JOB_ID']}: running the batch script (--dry_run prints it)", flush=True)
    os.execv("/bin/bash", ["bash", "-c", body, "wan_sft-batch"])


def in_task(args) -> int:
    """One per node, under srun: compute this node's rank and run accelerate launch (launch.run_accelerate)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until run_accelerate installs its handler
    where = node_env(os.environ)
    if args.num_nodes is not None and where["num_nodes"] != args.num_nodes:
        raise InputError(f"srun started {where['num_nodes']} node tasks but --num_nodes is {args.num_nodes}")
    args.num_nodes = where["num_nodes"]
    if not args.cpu:
        gpus = launch.visible_gpus()
        if gpus < args.gpus_per_node:
            raise InputError(f"node {socket.gethostname()} (SLURM_NODEID {where['node_rank']}) sees {gpus} GPUs but "
                             f"--gpus_per_node is {args.gpus_per_node} (check --gpus-per-node / CUDA_VISIBLE_DEVICES; "
                             f"use --cpu on CPU nodes)")
    head = os.environ.get(HEAD_ENV) or head_node(os.environ["SLURM_JOB_NODELIST"])
    port = args.port or port_for_job(where["job_id"])
    command, extra_env = launch_command(args, where["node_rank"], where["num_nodes"], head, port)
    env = dict(os.environ, **extra_env)
    if args.cpu:
        env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // args.gpus_per_node)))
    print(f"node {where['node_rank']}/{where['num_nodes']} ({socket.gethostname()}): "
          f"{args.gpus_per_node} processes, head {head}:{port}", flush=True)
    print("+ " + shlex.join(command), flush=True)
    os.environ.update(env)
    return launch.run_accelerate(command[3:])


def dry_run(args) -> int:
    print("# --dry_run: nothing written, nothing submitted")
    print("# would write " + str(config_path(args)) + " and " + str(script_path(args)) + ", then run:")
    print(shlex.join(sbatch_command(args)))
    print(f"# ---- {script_path(args)}")
    print(sbatch_script(args), end="")
    nodes = [f"node{i:02d}" for i in range(1, args.num_nodes + 1)]
    head, port = nodes[0], args.port or port_for_job(EXAMPLE_JOB_ID)
    print(f"# ---- per-node launch, as srun would run it in job {EXAMPLE_JOB_ID} on nodes {nodes[0]}..{nodes[-1]} "
          f"(head = first host of $SLURM_JOB_NODELIST = {head}, port = 20000 + job id % 20000 = {port})")
    for rank in sorted({0, args.num_nodes - 1}):
        command, env = launch_command(args, rank, args.num_nodes, head, port)
        print(f"# node {rank} ({nodes[rank]}, SLURM_NODEID={rank}):")
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())) + " " + shlex.join(command))
    print(f"# {job_shape(args)} = {num_processes(args)} processes")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(multi_node, sys.argv[1:], interrupted=launch.STOPPED_BEFORE_TRAINING))
