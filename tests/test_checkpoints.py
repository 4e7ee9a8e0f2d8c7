"""Newest-complete-state discovery and pruning, on state folders written the way save() writes them."""
import json

from wan_sft import checkpoints


def make_state(root, step, complete=True, progress=True):
    state = checkpoints.states_dir(root) / checkpoints.state_name(step)
    state.mkdir(parents=True)
    (state / "optimizer.bin").write_bytes(b"x" * step)
    if progress:
        (state / checkpoints.PROGRESS).write_text(json.dumps({"global_step": step}))
    if complete:
        manifest = {p.name: p.stat().st_size for p in state.iterdir()}
        (state / checkpoints.MARKER).write_text(json.dumps(manifest))
    return state


def test_newest_complete_first_and_incomplete_ones_skipped(tmp_path, capsys):
    make_state(tmp_path, 2)
    make_state(tmp_path, 4)
    make_state(tmp_path, 6, complete=False)  # killed before the marker
    truncated = make_state(tmp_path, 8)
    (truncated / "optimizer.bin").write_bytes(b"x")  # size no longer matches the manifest
    make_state(tmp_path, 10, progress=False)
    found = checkpoints.complete_states(tmp_path)
    assert [p.name for p in found] == ["step-00000004", "step-00000002"]
    warnings = capsys.readouterr().err
    for step in (6, 8, 10):
        assert f"skipping incomplete or corrupt training state {tmp_path}/states/step-{step:08d}" in warnings


def test_no_states_means_fresh_start(tmp_path):
    assert checkpoints.complete_states(tmp_path) == []


def test_progress_round_trips(tmp_path):
    state = make_state(tmp_path, 3)
    (state / checkpoints.PROGRESS).write_text(json.dumps(
        {"global_step": 3, "epoch": 1, "sample_in_epoch": 4, "run_fingerprint": "f", "world_size": 2}))
    assert checkpoints.read_progress(state) == checkpoints.Progress(3, 1, 4, "f", 2)
