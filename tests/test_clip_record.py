"""The clip-check record: a relaunch decodes only clips whose file identity changed; a changed clip is still caught."""
import json
import os

import pytest
from test_data import make_video

from wan_sft import clip_record
from wan_sft.config import InputError
from wan_sft.data import validate_training_csv, write_training_csv
from wan_sft.prepare import main as prepare_csv


@pytest.fixture
def decodes(monkeypatch):
    """The clips the check really decodes, in order."""
    seen = []
    real = clip_record.probe_video

    def counting(path):
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(clip_record, "probe_video", counting)
    return seen


@pytest.fixture
def dataset(tmp_path):
    clips = [make_video(tmp_path / f"clip{i}.mp4") for i in range(4)]
    csv_path = tmp_path / "d.csv"
    write_training_csv(csv_path, [(clip, f"prompt {i}") for i, clip in enumerate(clips)])
    return csv_path, clips


def check(csv_path, capsys, **kwargs):
    validate_training_csv(csv_path, 9, 64, 64, **kwargs)
    return capsys.readouterr().out


def test_relaunch_decodes_only_changed_clips_and_says_how_many(dataset, decodes, capsys):
    csv_path, clips = dataset
    record = csv_path.parent / "d.csv.clips.json"
    assert f"clip check: 4 of 4 clips decoded, 0 unchanged since the last check ({record})" in check(csv_path, capsys)
    assert sorted(decodes) == [f"clip{i}.mp4" for i in range(4)]
    entry = json.loads(record.read_text())[clips[0]]
    assert entry == [os.stat(clips[0]).st_size, os.stat(clips[0]).st_mtime_ns, [9, 64, 64, 16.0]]

    decodes.clear()
    assert "clip check: 0 of 4 clips decoded, 4 unchanged" in check(csv_path, capsys)
    assert decodes == []

    os.utime(clips[2], ns=(1, 1))  # same bytes, new mtime: decoded again
    assert "clip check: 1 of 4 clips decoded, 3 unchanged" in check(csv_path, capsys)
    assert decodes == ["clip2.mp4"]

    decodes.clear()
    assert (f"clip check: 4 of 4 clips decoded, 0 unchanged since the last check ({record}; --recheck)"
            in check(csv_path, capsys, recheck=True))
    assert len(decodes) == 4


def test_a_clip_replaced_after_the_check_is_still_caught(dataset, decodes, capsys):
    csv_path, clips = dataset
    check(csv_path, capsys)
    make_video(clips[1], num_frames=5)  # rewritten in place: other size and mtime
    with pytest.raises(InputError, match=r"row 2 \(.*clip1.mp4\): has 5 frames, fewer than --num_frames 9"):
        check(csv_path, capsys)
    with pytest.raises(InputError, match="has 5 frames"):  # the finding is recorded too: still refused, not decoded
        decodes.clear()
        check(csv_path, capsys)
    assert decodes == []


def test_an_unreadable_clip_is_recorded_with_its_reason(dataset, capsys):
    csv_path, clips = dataset
    with open(clips[3], "r+b") as f:
        f.truncate(300)
    with pytest.raises(InputError) as first:
        check(csv_path, capsys)
    with pytest.raises(InputError) as second:
        check(csv_path, capsys)
    assert str(first.value) == str(second.value) and "clip3.mp4" in str(first.value)


def test_a_damaged_record_means_a_full_check(dataset, decodes, capsys):
    csv_path, _ = dataset
    (csv_path.parent / "d.csv.clips.json").write_text('{"x": [1, 2')
    validate_training_csv(csv_path, 9, 64, 64)
    captured = capsys.readouterr()
    assert f"warning: clip-check record {csv_path}.clips.json is unreadable; checking every clip again" in captured.err
    assert len(decodes) == 4


def test_prepare_csv_writes_the_record_the_launch_reads(tmp_path, decodes, capsys):
    for i in range(3):
        make_video(tmp_path / "videos" / f"clip{i}.mp4")
        (tmp_path / "videos" / f"clip{i}.txt").write_text(f"prompt {i}")
    output = tmp_path / "out" / "train.csv"
    assert prepare_csv(["--video_dir", str(tmp_path / "videos"), "--output", str(output), "--num_frames", "9",
                        "--height", "64", "--width", "64"]) == 0
    assert len(decodes) == 3 and (tmp_path / "out" / "train.csv.clips.json").is_file()
    decodes.clear()
    assert "clip check: 0 of 3 clips decoded, 3 unchanged" in check(output, capsys)
    assert decodes == []
