"""A full disk (a real tmpfs of a few hundred KB, mounted by the test; CI runs as root): the write that fails leaves
no partial file, everything finished before stays complete and loadable, and the run ends with one line naming the
path and the free space."""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from test_evaluation import FRAMES, H, W  # noqa: F401 - the tiny puzzle size

from conftest import REPO, free_port, losses, run_script, start_until_state, train_command


@contextlib.contextmanager
def small_filesystem(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(filesystem: Path, leave: int) -> Path:
    """A filler file that leaves `leave` bytes free."""
    filler = filesystem / "filler"
    free = shutil.disk_usage(filesystem).free
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") and p.name != "filler"]


def test_eval_item_on_a_full_disk_keeps_finished_items(tmp_path):
    from test_evaluation import _candidates

    from wan_sft.puzzles import generate_maze_task

    dataset = tmp_path / "dataset"
    generate_maze_task(dataset, 4, (3, 4), width=96, height=160, num_frames=9, fps=8, layout="vlmpuzzle")
    candidates = _candidates(dataset, tmp_path / "cands", "solution_image_path")
    with small_filesystem(tmp_path / "small", "64k") as small:  # 16 pages: 3 items of 4 files, then full
        out = small / "eval"
        result = run_script([sys.executable, "parallel_eval.py", "--dataset_root", str(dataset), "--candidates_dir",
                             str(candidates), "--output_dir", str(out)], cwd=REPO)
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        match = re.fullmatch(r"error: could not write (\S+): No space left on device; ([\d.]+) MiB free on that "
                             r"filesystem\. Finished items are kept: free space and rerun the same command to do the "
                             r"rest", last)
        assert match and Path(match[1]).parent == out / "maze_square", last
        assert float(match[2]) < 0.01
        assert "Traceback" not in result.stderr and not partial_files(out)
        finished = sorted(out.glob("maze_square/*.json"))
        assert 0 < len(finished) < 4
        for path in finished:  # complete and loadable, with every file they name
            record = json.loads(path.read_text())
            assert all((out / record[kind]).is_file() for kind in ("last_frame", "input", "overlay"))


def test_training_on_a_full_disk_stops_with_one_line_and_resumes(demo_data, tmp_path):
    with small_filesystem(tmp_path / "small", "4m") as small:
        out = small / "out"
        command = train_command(demo_data, out, "--num_gpus", "1", "--save_steps", "4", "--num_epochs", "1")
        process = start_until_state(command, tmp_path, out / "states" / "step-00000004", stderr=subprocess.PIPE)
        rank = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])
        os.kill(rank, signal.SIGSTOP)  # fill the disk between two saves: room for step 8's two exports, not its state
        pages = lambda size: -(-size // 4096) * 4096  # noqa: E731 - tmpfs allocates whole pages
        filler = fill(small, 2 * pages((out / "step-4.safetensors").stat().st_size) + 2 * 4096)
        os.kill(rank, signal.SIGCONT)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 1, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        match = re.fullmatch(r"error: could not write (\S+): (.+); ([\d.]+) MiB free on that filesystem\. Earlier "
                             r"exports and the newest complete state are intact: free space and rerun the same "
                             r"command to resume", last)
        assert match and match[1] == str(out / "states" / ".tmp-step-00000008"), last
        assert not partial_files(out) and not list((out / "states").glob(".tmp-*"))  # the partial state is removed
        assert sorted(p.name for p in (out / "states").iterdir()) == ["step-00000004"]
        assert (out / "states" / "step-00000004" / "COMPLETE").exists()
        assert (out / "epoch-0.safetensors").is_file()  # the exports before the state were complete

        filler.unlink()
        command[command.index("--port") + 1] = free_port()
        rerun = run_script(command, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "resuming from step " in rerun.stdout
        assert [r["step"] for r in losses(out)] == list(range(1, 9))


def test_generating_eval_worker_on_a_full_disk_stops_the_run_with_one_line(tiny_model, tmp_path):
    from wan_sft.puzzles import generate_midpoint_task

    dataset = tmp_path / "dataset"
    generate_midpoint_task(dataset, 2, width=96, height=160, num_frames=9, fps=8, layout="vlmpuzzle")
    with small_filesystem(tmp_path / "small", "8k") as small:  # 2 pages: run_settings.json, then full
        out = small / "eval"
        result = run_script([sys.executable, "parallel_eval.py", "--dataset_root", str(dataset), "--model_base_path",
                             str(tiny_model), "--output_dir", str(out), "--num_frames", "9", "--height", "160",
                             "--width", "96", "--num_inference_steps", "1", "--workers", "1"], cwd=REPO,
                            env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"error: could not write {out}/midpoint/\S+\.mp4: .+; 0\.0 MiB free on that filesystem\. "
                            r"Finished items are kept: free space and rerun the same command to do the rest",
                            last), last
        assert "Traceback" not in result.stderr and not partial_files(out)
        assert not list(out.glob("midpoint/*"))
