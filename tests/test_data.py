import csv

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wan_sft.config import InputError
from wan_sft.data import (
    ClipDataset,
    Problem,
    Sample,
    check_samples,
    load_clip,
    read_training_csv,
    validate_training_csv,
    write_training_csv,
)
from wan_sft.video import write_video

TRICKY_PROMPTS = ['Draw a red path, then stop.', 'He said "go" twice', 'line one\nline two', 'a,"b",\r\nc', "42",
                  "  padded  ", "émoji 🧩, ünïcode"]


def make_video(path, num_frames=9, width=64, height=64):
    """Frame i is a flat grey of level 15*i, so frames can be told apart after lossy encoding."""
    write_video(path, [np.full((height, width, 3), 15 * i, np.uint8) for i in range(num_frames)])
    return str(path)


def write_text(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def clip(tmp_path):
    return make_video(tmp_path / "clip.mp4")


def test_round_trip_of_tricky_prompts_through_pandas_and_reader(tmp_path, clip):
    rows = [(clip, prompt) for prompt in TRICKY_PROMPTS]
    write_training_csv(tmp_path / "d.csv", rows)
    assert [(s.video, s.prompt) for s in read_training_csv(tmp_path / "d.csv")] == rows
    frame = pd.read_csv(tmp_path / "d.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["video", "prompt"]
    assert list(frame.itertuples(index=False, name=None)) == rows
    assert (tmp_path / "d.csv").read_text().startswith('"video","prompt"\n')


def test_relative_paths_numeric_prompt_bom_and_row_numbers(tmp_path, clip):
    csv_path = write_text(tmp_path / "d.csv", "\ufeffvideo,prompt\nclip.mp4,42\n\n./clip.mp4,hello\n")
    assert read_training_csv(csv_path) == [Sample(clip, "42", 1), Sample(clip, "hello", 2)]


def test_columns_in_other_order_are_accepted(tmp_path, clip):
    csv_path = write_text(tmp_path / "d.csv", "prompt,video\nhi,clip.mp4\n")
    assert read_training_csv(csv_path) == [Sample(clip, "hi", 1)]


@pytest.mark.parametrize("content, message", [
    ("video\nclip.mp4\n", "header is 'video' (missing column(s) prompt); it must be exactly 'video,prompt'"),
    ("video,prompt,id\nclip.mp4,hi,3\n",
     "header is 'video,prompt,id' (unexpected column(s) id); it must be exactly 'video,prompt'"),
    ("file,text\nclip.mp4,hi\n", "header is 'file,text' (missing column(s) video, prompt; unexpected column(s) "
                                 "file, text); it must be exactly 'video,prompt'"),
    ("", "file is empty; expected a header line 'video,prompt' and one row per clip"),
    ("video,prompt\n", "has a header but no data rows; add one 'video,prompt' row per clip"),
])
def test_bad_header_or_empty_file(tmp_path, content, message):
    csv_path = write_text(tmp_path / "d.csv", content)
    with pytest.raises(InputError) as error:
        read_training_csv(csv_path)
    assert str(error.value) == f"{csv_path}: {message}"


def test_unquoted_comma_names_row_and_fix(tmp_path, clip):
    csv_path = write_text(tmp_path / "d.csv", 'video,prompt\nclip.mp4,fine\nclip.mp4,go left, then right\n')
    with pytest.raises(InputError) as error:
        read_training_csv(csv_path)
    assert str(error.value) == (
        f'{csv_path} row 2 (line 3): has 3 field(s), expected 2 (video,prompt); quote fields that contain commas, '
        f'e.g. "a, b", or run prepare_csv.py --csv {csv_path} --output fixed.csv to re-quote the file')


def test_empty_prompt_names_row(tmp_path, clip):
    csv_path = write_text(tmp_path / "d.csv", 'video,prompt\nclip.mp4,ok\nclip.mp4,"  "\n')
    with pytest.raises(InputError) as error:
        read_training_csv(csv_path)
    assert str(error.value) == (f"{csv_path} row 2 ({clip}): prompt is empty; write the clip's prompt in the "
                                f"prompt column (an empty prompt crashes the text encoder)")


def test_non_utf8_names_line(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes("video,prompt\nclip.mp4,ok\nclip.mp4,café\n".encode("latin-1"))
    with pytest.raises(InputError) as error:
        read_training_csv(csv_path)
    assert str(error.value) == f"{csv_path}: line 3 is not valid UTF-8 (byte 0xe9); save the file as UTF-8"


def test_missing_csv(tmp_path):
    with pytest.raises(InputError, match="nope.csv: file not found"):
        read_training_csv(tmp_path / "nope.csv")


def test_paths_with_spaces_quotes_and_unicode(tmp_path):
    video = make_video(tmp_path / 'dir with space/qu"ote\'s ünï 🧩.mp4')
    write_training_csv(tmp_path / "d.csv", [(video, "p")])
    samples = read_training_csv(tmp_path / "d.csv")
    assert samples == [Sample(video, "p", 1)]
    assert check_samples(samples, 9, 64, 64) == ([], [])


def test_check_samples_classifies_problems(tmp_path, clip):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes(open(clip, "rb").read()[:600])
    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    (tmp_path / "image.mp4").write_bytes((tmp_path / "image.png").read_bytes())
    short = make_video(tmp_path / "short.mp4", num_frames=5)
    wide = make_video(tmp_path / "wide.mp4", width=128)
    slightly_off = make_video(tmp_path / "slightly.mp4", width=64, height=68)
    names = ["clip", "missing", "empty", "truncated", "image", "short", "wide", "slightly"]
    samples = [Sample(str(tmp_path / f"{name}.mp4"), "p", row) for row, name in enumerate(names, 1)]
    fatal, warnings = check_samples(samples, 9, 64, 64, workers=4)
    assert [(p.row, p.kind) for p in fatal] == [(2, "file not found"), (3, "empty file"), (4, "unreadable video"),
                                                (5, "not a video"), (6, "too few frames")]
    assert str(fatal[0]) == f"row 2 ({tmp_path / 'missing.mp4'}): file not found"
    assert str(fatal[1]) == f"row 3 ({tmp_path / 'empty.mp4'}): file is empty (0 bytes)"
    assert str(fatal[3]) == (f"row 5 ({tmp_path / 'image.mp4'}): is a still image (1 frame), not a video; "
                             f"point the row at the clip")
    assert str(fatal[4]) == (
        f"row 6 ({short}): has 5 frames, fewer than --num_frames 9: DiffSynth would silently train on a 5-frame "
        f"clip (and <= 4 frames gives NaN loss); run prepare_csv.py --trim to resample it to 9 frames")
    assert warnings == [
        Problem(7, wide, "is 128x64, not 64x64 (WxH): training resizes it (--fit stretch)", "resolution differs"),
        Problem(8, slightly_off, "is 64x68, not 64x64 (WxH): training resizes it (--fit stretch)",
                "resolution differs")]
    # only a crop the user asked for cuts the puzzle; a small cut is only a resize
    fatal, warnings = check_samples(samples[6:], 9, 64, 64, fit="crop")
    assert fatal == [Problem(7, wide, "is 128x64, not 64x64 (WxH): --fit crop would cut 50% of its width, likely "
                                      "cutting the puzzle; use --fit stretch (the benchmark's mapping) or "
                                      "--height/--width of a 128:64 aspect ratio", "crop cuts the puzzle")]
    assert warnings == [Problem(8, slightly_off, "is 64x68, not 64x64 (WxH): training resizes it (--fit crop)",
                                "resolution differs")]
    assert check_samples(samples[6:], 9, 64, 64, fit="pad")[0] == []


def test_validate_reports_first_problem_and_count(tmp_path, clip, capsys):
    make_video(tmp_path / "wide.mp4", width=96)
    csv_path = write_text(tmp_path / "d.csv", "video,prompt\nclip.mp4,a\nx.mp4,b\ny.mp4,c\nwide.mp4,d\n")
    with pytest.raises(InputError) as error:
        validate_training_csv(csv_path, 9, 64, 64)
    assert str(error.value) == (
        f"{csv_path} row 2 ({tmp_path / 'x.mp4'}): file not found ... and 1 more rows with problems; "
        f"run prepare_csv.py --csv {csv_path} --output fixed.csv to list them and write only the good rows")
    assert "warning:" in capsys.readouterr().err
    with pytest.raises(InputError, match="--num_frames 8 is invalid"):
        validate_training_csv(csv_path, 8, 64, 64)


def test_validate_accepts_good_csv(tmp_path, clip):
    csv_path = write_text(tmp_path / "d.csv", "video,prompt\nclip.mp4,a\n")
    assert validate_training_csv(csv_path, 9, 64, 64) == [Sample(clip, "a", 1)]


def test_load_clip_and_dataset(tmp_path, clip):
    frames = load_clip(clip, 5, 32, 64)
    assert len(frames) == 5 and all(frame.size == (64, 32) for frame in frames)
    item = ClipDataset([Sample(clip, "p", 1)], 5, 32, 64)[0]
    assert item["prompt"] == "p" and item["index"] == 0 and len(item["video"]) == 5
    with pytest.raises(InputError, match="has only 9 frames, fewer than --num_frames 13"):
        load_clip(clip, 13, 64, 64)


def test_written_csv_is_all_quoted(tmp_path):
    write_training_csv(tmp_path / "d.csv", [("/a b.mp4", "x")])
    with open(tmp_path / "d.csv", newline="") as f:
        assert f.read() == '"video","prompt"\n"/a b.mp4","x"\n'
    assert list(csv.reader(open(tmp_path / "d.csv"))) == [["video", "prompt"], ["/a b.mp4", "x"]]


def test_a_clip_longer_than_num_frames_stops_the_launcher(tmp_path):
    long = make_video(tmp_path / "long.mp4", num_frames=13)
    csv_path = write_text(tmp_path / "d.csv", "video,prompt\nlong.mp4,a\n")
    with pytest.raises(InputError) as error:
        validate_training_csv(csv_path, 9, 64, 64)
    assert str(error.value) == (
        f"{csv_path} row 1 ({long}): has 13 frames, more than --num_frames 9: training takes the first 9, so the "
        f"solution would be cut at 69% of the clip; run prepare_csv.py --trim to resample the whole clip to 9 frames "
        f"(first and last kept); run prepare_csv.py --csv {csv_path} --output fixed.csv to list them and write only "
        f"the good rows")
    assert check_samples([Sample(long, "a", 1)], 13, 64, 64) == ([], [])
