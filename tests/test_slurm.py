"""Multi-node training on Slurm (wan_sft/slurm.py, train_multi_node.sh).

Fast tests need no cluster (a fake `sbatch` on PATH records what would be submitted). The `slurm` tests stand up a
real 2-node Slurm 22.05 cluster on this machine with tests/slurm/slurm-setup.sh (root, Debian 12: it apt-installs
slurmd slurmctld slurm-client munge if missing; each node is its own network namespace, node1=10.77.0.1,
node2=10.77.0.2) and tear it down afterwards, even on failure. They train the tiny demo model on CPU, one gloo
process per node, and compare LoRA files bitwise with a single-node 2-process run of the same settings.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SIZE
from wan_sft import launch, slurm
from wan_sft.clip_record import record_path
from wan_sft.config import InputError

REPO = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO / "tests" / "slurm"
# 8 demo rows, 2 ranks: 4 steps per epoch, 24 steps (room to signal mid-run); a state and a LoRA every 2 steps
TOTAL_STEPS = 24
TRAIN_FLAGS = [*SIZE, "--lora_rank", "4", "--num_epochs", str(TOTAL_STEPS // 4), "--save_steps", "2"]


# ----------------------------------------------------------------------------------------------- helpers
def clean_env(**extra) -> dict:
    """No SLURM_* from an outer job; one thread per process, so a run's floating point does not depend on the
    thread count (single-node and multi-node runs are compared bitwise)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def run(cmd, cwd, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def multi(args, cwd, env, timeout=120):
    return run(["bash", str(REPO / "train_multi_node.sh"), *args], cwd, env, timeout)


def fake_sbatch(tmp_path, job_id=4242) -> tuple[Path, Path]:
    """An `sbatch` that records its argv and the script it was given, and answers like `sbatch --parsable`."""
    bin_dir, record = tmp_path / "fakebin", tmp_path / "sbatch_calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f"#!{sys.executable}\nimport json, sys\nscript = open(sys.argv[-1]).read()\n"
        f"open({str(record)!r}, 'a').write(json.dumps(dict(argv=sys.argv[1:], script=script)) + '\\n')\n"
        f"print('{job_id}')\n")
    (bin_dir / "sbatch").chmod(0o755)
    return bin_dir, record


def sbatch_calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def parse(argv):
    args = slurm.parser().parse_args(argv)
    args.gpus_per_node = args.gpus_per_node or (1 if args.cpu else 8)
    return args


@pytest.fixture(scope="module")
def demo(demo_data):
    """The demo's tiny model and 8-row maze CSV (conftest's session fixture)."""
    return demo_data


# ----------------------------------------------------------------------------------------------- no cluster
@pytest.mark.parametrize("job_id, port", [(0, 20000), (1, 20001), (19999, 39999), (20000, 20000), (123456, 23456)])
def test_port_from_job_id(job_id, port):
    assert slurm.port_for_job(job_id) == port == slurm.port_for_job(str(job_id))


def test_node_env_reads_this_tasks_rank():
    env = dict(SLURM_JOB_ID="77", SLURM_NODEID="14", SLURM_NNODES="15", SLURM_JOB_NODELIST="gpu[01-15]")
    assert slurm.node_env(env) == dict(job_id=77, node_rank=14, num_nodes=15)
    with pytest.raises(InputError, match="SLURM_NODEID not set"):
        slurm.node_env(dict(SLURM_JOB_ID="77", SLURM_NNODES="15"))
    with pytest.raises(InputError, match="outside 0..1"):
        slurm.node_env(dict(SLURM_JOB_ID="77", SLURM_NODEID="2", SLURM_NNODES="2"))


def test_defaults_match_single_node_except_output_dir():
    """The real parsers: every flag of train_single_node.sh but its own launch flags is in train_multi_node.sh with
    the same spelling, type, choices, help and default, except --output_dir's default."""
    single = {action.dest: action for action in launch.single_node_parser()._actions}
    multi_actions = {action.dest: action for action in slurm.parser()._actions}
    own = {"num_gpus", "demo", "port"}  # single-node only; multi-node's --port defaults to one from the job id
    assert set(single) - set(multi_actions) == own - {"port"}
    for name in sorted(set(single) - own):
        fields = ("option_strings", "type", "choices", "nargs", "const", "required", "help")
        assert [getattr(multi_actions[name], f) for f in fields] == [getattr(single[name], f) for f in fields], name
        expected = "./output/wan_lora_multi" if name == "output_dir" else single[name].default
        assert multi_actions[name].default == expected, name
    assert single["output_dir"].default == "./output/wan_lora"


@pytest.mark.parametrize("cpu", [False, True])
def test_sbatch_script(tmp_path, monkeypatch, cpu):
    monkeypatch.chdir(tmp_path)
    args = parse(["--dataset", "d.csv", "--model_base_path", "m", "--num_nodes", "15", "--gpus_per_node", "8",
                  "--lora_rank", "32", *(["--cpu"] if cpu else []), "--pre_timeout", "240"])
    script = slurm.sbatch_script(args, python="/venv/bin/python")
    out = tmp_path / "output" / "wan_lora_multi"
    headers = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    expected = ["--job-name=wan_lora", "--nodes=15", "--ntasks-per-node=1", *([] if cpu else ["--gpus-per-node=8"]),
                "--requeue", "--signal=B:USR1@240", f"--output={out}/slurm-%j.out", "--open-mode=append"]
    assert headers == [f"#SBATCH {o}" for o in expected]
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1' in script
    assert "srun --ntasks-per-node=1 --nodes=\"$SLURM_JOB_NUM_NODES\" --kill-on-bad-exit=1" in script
    assert "trap '' TERM USR1" in script and "trap 'on_signal USR1' USR1" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    srun_line = next(line for line in script.splitlines() if "-m wan_sft.slurm --in_task" in line)
    task = shlex.split(srun_line.rstrip("&"))
    assert task[:4] == ["/venv/bin/python", "-m", "wan_sft.slurm", "--in_task"]
    assert ("--cpu" in task) == cpu and task[task.index("--dataset") + 1] == str(tmp_path / "d.csv")
    assert task[task.index("--output_dir") + 1] == str(out) and task[task.index("--lora_rank") + 1] == "32"
    assert "SLURM_NODEID" not in srun_line  # each task reads its own rank, nothing is expanded in the batch shell
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    no_signal = slurm.sbatch_script(parse(["--dataset", "d", "--model_base_path", "m", "--num_nodes", "2",
                                           "--pre_timeout", "0"]))
    assert "#SBATCH --signal" not in no_signal and "#SBATCH --requeue" in no_signal


@pytest.mark.parametrize("srun_exit, requeued, code", [(124, True, 0), (1, False, 1)])
def test_batch_script_requeues_a_job_whose_rank_hung(tmp_path, monkeypatch, srun_exit, requeued, code):
    """train.py's step watchdog exits 124 (WATCHDOG_EXIT): the job requeues and resumes (it saved a state: progress);
    other failures do not."""
    from wan_sft.watchdog import WATCHDOG_EXIT

    assert WATCHDOG_EXIT == 124
    monkeypatch.chdir(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "output" / "wan_lora_multi" / "states" / "step-00000002"  # the run made progress
    (bin_dir / "srun").write_text(f"#!/bin/bash\nmkdir -p '{state}' && echo '{{}}' > '{state}/COMPLETE'\n"
                                  f"exit {srun_exit}\n")
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/scontrol.log\n'
                                      f'[ "$1" = show ] && echo node1\nexit 0\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    body = slurm.batch_body(parse(["--dataset", "d.csv", "--model_base_path", "m", "--num_nodes", "1", "--cpu"]))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1"}
    result = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stdout + result.stderr
    calls = (tmp_path / "scontrol.log").read_text().splitlines()
    assert ("requeue 77" in calls) == requeued
    if requeued:
        assert "a rank hung (step watchdog, see its message above) (srun exit 124); requeueing job 77" in result.stdout


def test_batch_script_passes_tricky_paths_to_each_task_unchanged(tmp_path, monkeypatch):
    """Paths with spaces, quotes, ; and $ reach srun's task command, its cwd and PYTHONPATH exactly (the template
    quotes every value), and the task's flags parse back into the same training settings."""
    workdir = tmp_path / "it's a $dir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("PYTHONPATH", "/re po:/it's/$X")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun.json"
    (bin_dir / "srun").write_text(f"#!{sys.executable}\nimport json, os, sys\nopen({str(record)!r}, 'w')"
                                  f".write(json.dumps([sys.argv[1:], os.getcwd(), os.environ['PYTHONPATH']]))\n")
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho node1\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    args = parse(["--dataset", 'my data/"a" $x.csv', "--model_base_path", "m o;del", "--num_nodes", "1", "--cpu",
                  "--output_dir", "out dir/it's $HOME", "--lora_rank", "4"])
    body = slurm.batch_body(args, python="/py thon/bin/python3")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1"}
    result = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    argv, cwd, pythonpath = json.loads(record.read_text())
    assert (cwd, pythonpath) == (str(workdir), "/re po:/it's/$X")
    srun_flags = ["--ntasks-per-node=1", "--nodes=1", "--kill-on-bad-exit=1"]
    assert argv == [*srun_flags, "/py thon/bin/python3", "-m", "wan_sft.slurm", *slurm.task_argv(args)]
    task = slurm.parser().parse_args(argv[6:])
    assert task.in_task and task.cpu and "--expected_world_size" not in argv
    assert task.model_base_path == str(workdir / "m o;del") and task.dataset == str(workdir / 'my data/"a" $x.csv')
    assert task.output_dir == str(workdir / "out dir/it's $HOME")
    assert launch.training_flags(task) == launch.training_flags(args)


def test_launch_command_per_node(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gpu = parse(["--dataset", "d.csv", "--model_base_path", "m", "--num_nodes", "15", "--gpus_per_node", "8"])
    for rank in (0, 14):
        command, env = slurm.launch_command(gpu, rank, 15, "gpu01", 23456)
        flag = lambda name, command=command: command[command.index(name) + 1]  # noqa: E731
        assert (flag("--num_machines"), flag("--num_processes"), flag("--machine_rank")) == ("15", "120", str(rank))
        assert (flag("--main_process_ip"), flag("--main_process_port")) == ("gpu01", "23456")
        assert flag("--deepspeed_multinode_launcher") == "standard" and flag("--expected_world_size") == "120"
        assert command[command.index("-m", 3) + 1] == "wan_sft.train"
        assert env == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}  # signals: forwarded by launch.run_accelerate
    cpu = parse(["--dataset", "d.csv", "--model_base_path", "m", "--num_nodes", "2", "--cpu"])
    command, env = slurm.launch_command(cpu, 1, 2, "node1", 20001)
    assert "--deepspeed_multinode_launcher" not in command and env["ACCELERATE_USE_CPU"] == "true"
    assert command[command.index("--num_processes") + 1] == "2"


def test_in_task_runs_accelerate_with_its_own_node_rank(tmp_path, monkeypatch, demo):
    import signal

    monkeypatch.chdir(tmp_path)
    previous = signal.getsignal(signal.SIGUSR1)
    monkeypatch.setattr(signal, "signal", lambda *a: previous)  # keep pytest's own handlers
    monkeypatch.setattr(os, "environ", dict(os.environ))  # in_task sets the training's environment in its own
    calls = []
    monkeypatch.setattr(slurm.launch, "run_accelerate", lambda argv: calls.append((argv, dict(os.environ))) or 0)
    for node in ("0", "1"):
        monkeypatch.setenv("SLURM_JOB_ID", "20007")
        monkeypatch.setenv("SLURM_NODEID", node)
        monkeypatch.setenv("SLURM_NNODES", "2")
        monkeypatch.setenv(slurm.HEAD_ENV, "node1")
        slurm.multi_node(["--in_task", "--cpu", "--num_nodes", "2", "--dataset", str(demo["csv"]),
                          "--model_base_path", str(demo["model"]), *TRAIN_FLAGS])
    ranks = [argv[argv.index("--machine_rank") + 1] for argv, _ in calls]
    assert ranks == ["0", "1"]
    for argv, env in calls:
        assert argv[argv.index("--main_process_ip") + 1] == "node1"
        assert argv[argv.index("--main_process_port") + 1] == "20007"
        assert env["ACCELERATE_USE_CPU"] == "true"
    monkeypatch.setenv("SLURM_NNODES", "3")
    with pytest.raises(InputError, match="srun started 3 node tasks but --num_nodes is 2"):
        slurm.multi_node(["--in_task", "--cpu", "--num_nodes", "2", "--dataset", "d"])


def test_dry_run_15_nodes_x_8_gpus(tmp_path, demo):
    """(3) 120 processes, machine ranks 0 and 14, one head address; nothing submitted or written."""
    bin_dir, record = fake_sbatch(tmp_path)
    env = clean_env(MODEL_BASE_PATH=str(demo["model"]), PATH=f"{bin_dir}:{os.environ['PATH']}")
    csv = tmp_path / "train.csv"  # a copy without a clip-check record: a check that wrote one would leave it
    csv.write_text(demo["csv"].read_text())
    result = multi(["--dataset", str(csv), "--num_nodes", "15", "--gpus_per_node", "8", "--lora_rank", "32",
                    *SIZE, "--dry_run"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "#SBATCH --nodes=15" in out and "#SBATCH --gpus-per-node=8" in out and "--signal=B:USR1@300" in out
    launches = [shlex.split(line) for line in out.splitlines() if "accelerate.commands.launch" in line]
    assert len(launches) == 2
    value = lambda cmd, name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert [value(c, "--machine_rank") for c in launches] == ["0", "14"]
    assert {value(c, "--num_processes") for c in launches} == {"120"}
    assert {value(c, "--num_machines") for c in launches} == {"15"}
    assert len({value(c, "--main_process_ip") for c in launches}) == 1
    assert len({value(c, "--main_process_port") for c in launches}) == 1
    assert {value(c, "--expected_world_size") for c in launches} == {"120"}
    assert "120 processes" in out
    assert not sbatch_calls(record) and not (tmp_path / "output").exists()
    assert "clip check: 8 of 8 clips decoded" in out and not record_path(csv).exists()


def test_submit_passes_sbatch_args_and_prints_job_and_log(tmp_path, demo):
    bin_dir, record = fake_sbatch(tmp_path, job_id=4242)
    env = clean_env(MODEL_BASE_PATH=str(demo["model"]), PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = multi(["--dataset", str(demo["csv"]), "--num_nodes", "2", "--gpus_per_node", "4", *SIZE, "--sbatch_args",
                    "--partition gpu --account proj --time 2-00:00:00"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    out_dir = tmp_path / "output" / "wan_lora_multi"
    assert "submitted job 4242" in result.stdout and f"log: {out_dir}/slurm-4242.out" in result.stdout
    [call] = sbatch_calls(record)
    assert call["argv"] == ["--parsable", "--partition", "gpu", "--account", "proj", "--time", "2-00:00:00",
                            str(out_dir / "multi_node.sbatch")]
    assert "#SBATCH --gpus-per-node=4" in call["script"] and "#SBATCH --nodes=2" in call["script"]
    import yaml

    conf = yaml.safe_load((out_dir / "accelerate_config.yaml").read_text())
    assert conf["distributed_type"] == "DEEPSPEED" and conf["deepspeed_config"]["zero_stage"] == 2
    assert conf["num_processes"] == 8


@pytest.mark.parametrize("bad, message", [
    (["--num_nodes", "0"], "error: --num_nodes 0 is invalid: it must be at least 1"),
    (["--num_frames", "8"], "error: --num_frames 8 is invalid: Wan2.2 needs 4k+1 frames with k >= 1 (e.g. 5 or 9)"),
])
def test_bad_flags_rejected_before_sbatch(tmp_path, demo, bad, message):
    bin_dir, record = fake_sbatch(tmp_path)
    env = clean_env(MODEL_BASE_PATH=str(demo["model"]), PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = multi(["--dataset", str(demo["csv"]), "--num_nodes", "2", *SIZE, *bad], tmp_path, env)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == message
    assert not sbatch_calls(record)


# ----------------------------------------------------------------------------------------------- real cluster
def lab_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root (slurm-setup.sh creates namespaces and runs the daemons)"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "needs Debian (apt-get) or an installed Slurm"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real 2-node Slurm cluster for this module; torn down even if setup or a test fails."""
    reason = lab_possible()
    if reason:
        pytest.skip(reason)
    lab_env = dict(os.environ, SLURM_LAB_NODES="2", SLURM_LAB_CPUS="8")
    started = time.monotonic()
    try:
        result = subprocess.run(["bash", str(SLURM_SCRIPTS / "slurm-setup.sh")], env=lab_env, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, f"slurm-setup.sh failed:\n{result.stdout}\n{result.stderr}"
        print(f"slurm cluster up in {time.monotonic() - started:.0f}s")
        yield
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPTS / "slurm-teardown.sh")], env=lab_env, capture_output=True,
                       timeout=300)


def job_field(job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    found = re.search(rf"(?:^|\s){field}=(\S*)", out)
    return found.group(1) if found else ""


def wait_for(predicate, timeout: float, what: str, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED"}


def wait_job_done(job: str, timeout: float) -> str:
    return wait_for(lambda: (s := job_field(job, "JobState")) in FINAL_STATES and s, timeout, f"job {job} to end")


def submit_job(workdir: Path, demo, output_dir: str) -> tuple[str, Path]:
    env = clean_env(MODEL_BASE_PATH=str(demo["model"]))
    result = multi(["--cpu", "--dataset", str(demo["csv"]), "--num_nodes", "2", "--gpus_per_node", "1",
                    "--output_dir", output_dir, *TRAIN_FLAGS, "--sbatch_args", "--time 15"], workdir, env)
    assert result.returncode == 0, result.stdout + result.stderr
    job = re.search(r"submitted job (\d+)", result.stdout).group(1)
    assert f"log: {workdir / output_dir}/slurm-{job}.out" in result.stdout
    return job, workdir / output_dir


def lora_files(output_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output_dir.glob("*.safetensors"))}


def logged_steps(output_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_node_reference(tmp_path_factory, demo):
    """The same settings on one node, 2 CPU processes (no Slurm)."""
    workdir = tmp_path_factory.mktemp("single")
    started = time.monotonic()
    result = run(["bash", str(REPO / "train_single_node.sh"), "--num_gpus", "2", "--dataset", str(demo["csv"]),
                  "--output_dir", "out", *TRAIN_FLAGS], workdir, clean_env(MODEL_BASE_PATH=str(demo["model"])), 600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"single-node reference run: {time.monotonic() - started:.0f}s")
    files = lora_files(workdir / "out")
    assert {"final.safetensors", "step-2.safetensors", f"step-{TOTAL_STEPS}.safetensors"} <= files.keys()
    return files


def test_cluster_two_node_job_equals_single_node_run(cluster, tmp_path, demo, single_node_reference):
    """(1) a 2-node job trains; its final and step-N LoRA files are bitwise those of the single-node run."""
    started = time.monotonic()
    job, out = submit_job(tmp_path, demo, "out_multi")
    state = wait_job_done(job, 420)
    log = (out / f"slurm-{job}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-5000:]
    print(f"2-node job {job}: {time.monotonic() - started:.0f}s from submit to COMPLETED")
    assert "node 0/2 (node1)" in log and "node 1/2 (node2)" in log  # one launcher on each node, ranks from SLURM_NODEID
    assert lora_files(out) == single_node_reference
    assert logged_steps(out) == list(range(1, TOTAL_STEPS + 1))


def test_cluster_pre_timeout_signal_requeues_and_resumes(cluster, tmp_path, demo, single_node_reference):
    """(2) USR1 to the batch shell mid-run (what --signal=B:USR1@N does): save, requeue, resume, same LoRA."""
    started = time.monotonic()
    job, out = submit_job(tmp_path, demo, "out_requeue")
    log_path = out / "train_log.jsonl"
    wait_for(lambda: log_path.exists() and len(log_path.read_text().splitlines()) >= 2, 300, "step 2 of the first run")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
    # requeued: PENDING with Restarts=1; release it now instead of after Slurm's ~121 s requeue delay (only >= 2 s
    # after it became PENDING, else the relaunch fails with "Job credential revoked")
    wait_for(lambda: job_field(job, "JobState") == "PENDING" and job_field(job, "Restarts") == "1", 180,
             f"job {job} to be requeued")
    stopped_at = logged_steps(out)[-1]
    time.sleep(2.5)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True, timeout=30)
    state = wait_job_done(job, 420)
    log = (out / f"slurm-{job}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-5000:]
    print(f"interrupted job {job} (stopped after step {stopped_at}): {time.monotonic() - started:.0f}s to COMPLETED")
    assert 2 <= stopped_at < TOTAL_STEPS, "the signal must have stopped the run part-way"
    assert job_field(job, "Restarts") == "1"
    assert "batch shell got SIGUSR1" in log and "requeueing job" in log
    assert f"resuming from step {stopped_at}" in log
    assert logged_steps(out) == list(range(1, TOTAL_STEPS + 1))  # every step exactly once
    assert lora_files(out) == single_node_reference


def test_cluster_direct_sbatch_rank_death_fails_fast_then_resubmission_resumes(cluster, tmp_path, demo,
                                                                              single_node_reference):
    """`sbatch train_multi_node.sh` works; a training process killed on node 2 fails the whole job fast with a clear
    message; submitting the same command again resumes from the newest complete state, same LoRA as uninterrupted."""
    out = tmp_path / "out_direct"
    out.mkdir()
    flags = ["--cpu", "--dataset", str(demo["csv"]), "--gpus_per_node", "1", "--output_dir", str(out), *TRAIN_FLAGS]
    env = clean_env(MODEL_BASE_PATH=str(demo["model"]))
    started = time.monotonic()
    submitted = run(["sbatch", "--parsable", "--nodes=2", "--time=15", f"--chdir={tmp_path}",
                     f"--output={out}/slurm-%j.out", str(REPO / "train_multi_node.sh"), *flags], REPO, env)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    # any complete state: with --keep_states 2 the one of step 2 lives only until step 6 (~0.2 s on a fast machine)
    wait_for(lambda: any(out.glob("states/step-*/COMPLETE")), 300, "a complete state", interval=0.05)
    assert job_field(job, "Requeue") == "1"  # from train_multi_node.sh's #SBATCH lines
    victim = wait_for(lambda: training_process(out, node_id="1"), 30, "the training process on node 2")
    os.kill(victim, 9)
    killed = time.monotonic()
    state = wait_job_done(job, 120)
    log = (out / f"slurm-{job}.out").read_text(errors="replace")
    assert state == "FAILED", log[-5000:]
    assert time.monotonic() - killed < 60  # not the 10 min distributed timeout
    assert "error: training failed (srun exit" in log and "a training process or node died" in log
    failed_at = logged_steps(out)[-1]
    assert failed_at < TOTAL_STEPS
    again, resubmitted = submit_job(tmp_path, demo, "out_direct")
    again_log = out / f"slurm-{again}.out"
    assert wait_job_done(again, 420) == "COMPLETED", again_log.read_text(errors="replace")[-5000:]
    print(f"direct sbatch job {job} killed after step {failed_at}, job {again} resumed: "
          f"{time.monotonic() - started:.0f}s")
    assert "resuming from step" in again_log.read_text(errors="replace")
    assert logged_steps(out) == list(range(1, TOTAL_STEPS + 1))
    assert lora_files(out) == single_node_reference


def test_cluster_hung_rank_ends_the_job_which_requeues_and_resumes(cluster, tmp_path, demo, single_node_reference):
    """A training process stopped (SIGSTOP) on node 2: node 1's step watchdog ends the job within about a minute,
    naming the step; the batch script requeues it; the requeued job resumes and ends with the same LoRA."""
    out = tmp_path / "out_hung"
    env = clean_env(MODEL_BASE_PATH=str(demo["model"]))
    result = multi(["--cpu", "--dataset", str(demo["csv"]), "--num_nodes", "2", "--gpus_per_node", "1",
                    "--output_dir", str(out), *TRAIN_FLAGS, "--collective_timeout", "20", "--sbatch_args",
                    "--time 15"], tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    job = re.search(r"submitted job (\d+)", result.stdout).group(1)
    # any complete state: with --keep_states 2 the one of step 2 lives only until step 6 (~0.2 s on a fast machine)
    wait_for(lambda: any(out.glob("states/step-*/COMPLETE")), 300, "a complete state", interval=0.05)
    victim = wait_for(lambda: training_process(out, node_id="1"), 30, "the training process on node 2")
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    wait_for(lambda: job_field(job, "JobState") == "PENDING" and job_field(job, "Restarts") == "1", 180,
             f"job {job} to be requeued")
    assert time.monotonic() - stopped < 90
    log = (out / f"slurm-{job}.out").read_text(errors="replace")
    assert re.search(r"error: rank 0: no training step finished for 20 s; stuck in step \d+", log), log[-5000:]
    assert "a rank hung (step watchdog, see its message above) (srun exit 124); requeueing job" in log
    time.sleep(2.5)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True, timeout=30)
    state = wait_job_done(job, 420)
    log = (out / f"slurm-{job}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-5000:]
    assert "resuming from step" in log
    assert logged_steps(out) == list(range(1, TOTAL_STEPS + 1))
    assert lora_files(out) == single_node_reference


def training_process(output_dir: Path, node_id: str) -> int | None:
    """pid of a `wan_sft.train` process of this run started on the node with SLURM_NODEID=node_id."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"wan_sft.train" not in cmdline or str(output_dir).encode() not in cmdline:
                continue
            if f"SLURM_NODEID={node_id}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def test_cluster_bad_dataset_rejected_before_anything_is_queued(cluster, tmp_path, demo):
    """(4) same rule and message as single-node, exit 2, sbatch never reached: nothing in squeue."""
    bad = tmp_path / "bad.csv"
    bad.write_text('video,prompt\nmissing.mp4,"a maze"\n')
    env = clean_env(MODEL_BASE_PATH=str(demo["model"]))
    flags = ["--dataset", str(bad), *SIZE]
    queued_before = squeue_ids()
    single = run(["bash", str(REPO / "train_single_node.sh"), *flags], tmp_path, env)
    result = multi([*flags, "--cpu", "--num_nodes", "2"], tmp_path, env)
    expected = (f"error: {bad} row 1 ({tmp_path / 'missing.mp4'}): file not found; run prepare_csv.py --csv {bad} "
                f"--output fixed.csv to list them and write only the good rows")
    assert single.returncode == result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == single.stderr.strip().splitlines()[-1] == expected
    assert "sbatch" not in result.stdout and not (tmp_path / "output").exists()
    assert squeue_ids() == queued_before == set()  # nothing queued (the jobs of the tests above have ended)


def squeue_ids() -> set[str]:
    queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=True)
    return set(queue.stdout.split())


def test_cluster_job_that_lost_a_node_continues_on_one_node(cluster, tmp_path, demo):
    """2 nodes stop after step 3 (6 of 8 samples of epoch 0); resubmitted on 1 node with --allow_world_size_change,
    the epoch continues where it stopped: every sample of each epoch exactly once, step numbering continues."""
    from collections import Counter

    env = clean_env(MODEL_BASE_PATH=str(demo["model"]))
    flags = ["--cpu", "--dataset", str(demo["csv"]), "--gpus_per_node", "1", "--output_dir", "out", *SIZE,
             "--lora_rank", "4", "--num_epochs", "2", "--save_steps", "2", "--sbatch_args", "--time 15"]
    first = multi([*flags, "--num_nodes", "2", "--max_steps", "3"], tmp_path, env)
    assert first.returncode == 0, first.stdout + first.stderr
    job = re.search(r"submitted job (\d+)", first.stdout).group(1)
    assert wait_job_done(job, 420) == "COMPLETED", (tmp_path / "out" / f"slurm-{job}.out").read_text()[-5000:]
    second = multi([*flags, "--num_nodes", "1", "--allow_world_size_change"], tmp_path, env)
    assert second.returncode == 0, second.stdout + second.stderr
    again = re.search(r"submitted job (\d+)", second.stdout).group(1)
    log = (tmp_path / "out" / f"slurm-{again}.out")
    assert wait_job_done(again, 420) == "COMPLETED", log.read_text()[-5000:]
    assert ("resuming with 1 processes x 1 accumulation steps instead of 2 x 1: global batch 1 samples per optimizer "
            "step instead of 2 (--allow_world_size_change); epoch 0 continues from sample 6 of 8") in log.read_text()
    records = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 3 + 2 + 8 + 1))
    for epoch in (0, 1):
        assert Counter(i for r in records if r["epoch"] == epoch for i in r["samples"]) == Counter(range(8))


@pytest.mark.parametrize("saves_a_state, requeued", [(True, True), (False, False)])
def test_a_hung_or_timed_out_run_is_requeued_only_if_it_saved_a_new_state(tmp_path, monkeypatch, saves_a_state,
                                                                        requeued):
    """The batch script requeues after the step watchdog (exit 124) only when the run got further than the newest
    state it started from; a run that hangs before saving anything would otherwise requeue forever."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    old_state = out / "states" / "step-00000004"
    old_state.mkdir(parents=True)
    (old_state / "COMPLETE").write_text("{}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    new_state = out / "states" / "step-00000006"
    save = f"mkdir -p '{new_state}' && echo '{{}}' > '{new_state}/COMPLETE'\n" if saves_a_state else ""
    (bin_dir / "srun").write_text(f"#!/bin/bash\n{save}exit {slurm.WATCHDOG_EXIT}\n")
    (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho \"$@\" >> '{tmp_path}/scontrol.log'\necho node1\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    args = parse(["--dataset", "d.csv", "--model_base_path", "m", "--num_nodes", "1", "--cpu",
                  "--output_dir", str(out)])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1"}
    result = subprocess.run(["bash", "-c", slurm.batch_body(args)], env=env, capture_output=True, text=True,
                            timeout=60)
    calls = (tmp_path / "scontrol.log").read_text()
    if requeued:
        assert result.returncode == 0 and "requeue 77" in calls, result.stdout + result.stderr
        assert "requeueing job 77" in result.stdout
    else:
        assert result.returncode == 1 and "requeue" not in calls
        assert ("error: a rank hung (step watchdog, see its message above) (srun exit 124), and this run saved no "
                "new state: not requeueing a job that makes no progress") in result.stderr
        assert str(out / "states") in result.stderr
