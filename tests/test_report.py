"""The HTML reports, rendered from real files and checked in headless Chromium, over http and from file://."""
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import chromium, load_all_images, serve_directory, watch
from wan_sft.inference import DEFAULT_NEGATIVE_PROMPT
from wan_sft.leaderboard import COLUMNS
from wan_sft.report import moving_average, write_report, write_training_report

HTML_PROMPT = "<b>bold</b> & <script>window.pwned = 1</script> 迷宫"
# (task, id, pass, failure_reason); maze_square 1/4, midpoint 2/3 (Last Frame 3/3), color_grid not scored;
# overall 3/7 scored.
ITEMS = [
    ("maze_square", "maze_square_s0_00001", True, None),
    ("maze_square", "maze_square_s0_00002", False, "not_connected"),
    ("maze_square", "maze_square_s0_00003", False, "not_connected"),
    ("maze_square", "maze_square_s0_00004", False, "misses_goal"),
    ("midpoint", "midpoint_s0_00001", True, None),
    ("midpoint", "midpoint_s0_00002", True, None),
    ("midpoint", "midpoint_s0_00003", False, "wrong_option"),
    ("color_grid", "color_grid_s0_00001", None, None),
]
EXPECTED_RATES = {"maze_square": ("4", "1", "25.0%"), "midpoint": ("3", "2", "66.7%"), "color_grid": ("1", "0", "—"),
                  "overall": ("8", "3", "42.9%")}


def _png(path: Path, color) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 48), color).save(path)
    return path


def _record(task, item_id, passed, reason, run: Path, puzzles: Path) -> dict:
    """A results.jsonl line: maze puzzles live outside the run folder (absolute path), midpoint ones inside it."""
    if task == "maze_square":
        puzzle = str(_png(puzzles / f"{item_id}_puzzle.png", "white"))
        fields = {"red_pixels": 1234, "wall_overlap_pixels": 0, "touches_start": True, "touches_goal": passed,
                  "connected": passed, "corridor_precision": 0.93, "column": "Maze Square", "rule": "maze"}
    elif task == "midpoint":
        puzzle = _png(run / "inputs" / f"{item_id}_puzzle.png", "white").relative_to(run).as_posix()
        fields = {"answer": "B" if passed else "C", "correct_option": "B", "centroid": [10.5, 20.25],
                  "column": "Eyeballing Point", "rule": "major_frame", "last_frame_pass": True, "prompt": HTML_PROMPT}
    else:
        puzzle = _png(run / "inputs" / f"{item_id}_puzzle.png", "white").relative_to(run).as_posix()
        fields = {"column": "Visual Symmetry", "rule": "best_frame", "metric": "rgb", "distance": 1234.5,
                  "best_frame": 3, "not_scored": "the leaderboard has no pass threshold for visual puzzles"}
    _png(run / task / f"{item_id}.png", "red")
    _png(run / task / f"{item_id}_overlay.png", "blue")
    return {"task": task, "id": item_id, "pass": passed, "failure_reason": reason, **fields, "puzzle": puzzle,
            "last_frame": f"{task}/{item_id}.png", "video": None, "overlay": f"{task}/{item_id}_overlay.png",
            "seconds_generate": 12.3, "seconds_score": 0.02, "worker": 0}


def _write_results(run: Path, puzzles: Path) -> None:
    lines = [json.dumps(_record(*item, run, puzzles)) for item in ITEMS]
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory) -> Path:
    """A run folder with results.jsonl, summary.json and images; the maze puzzles sit in a sibling folder whose
    name needs URL quoting."""
    root = tmp_path_factory.mktemp("eval")
    run = root / "run"
    _write_results(run, root / "puzzle set")
    summary = {
        "overall": {"items": 8, "scored": 7, "passed": 3, "pass_rate": 3 / 7},
        "tasks": {"maze_square": {"items": 4, "passed": 1, "pass_rate": 0.25,
                                  "failure_reasons": {"not_connected": 2, "misses_goal": 1},
                                  "mean_red_pixels": 1234.0, "mean_corridor_precision": 0.93},
                  "midpoint": {"items": 3, "passed": 2, "pass_rate": 2 / 3, "failure_reasons": {"wrong_option": 1}}},
        "failure_reasons": {"not_connected": 2, "misses_goal": 1, "wrong_option": 1},
        "items_per_hour": 120.0,
        "unfinished": {"midpoint/midpoint_s0_00009": "generation timed out"},
        "settings": {"lora": "/ckpt/step-100.safetensors", "num_frames": 9, "seed": 0,
                     "negative_prompt": DEFAULT_NEGATIVE_PROMPT},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    write_report(run)
    return run


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


def _open(page, url: str):
    problems = watch(page)
    page.goto(url, wait_until="load")
    return problems


def _rates_table(page) -> dict:
    return page.evaluate("""Object.fromEntries([...document.querySelectorAll('#pass-rates tr[data-task]')].map(row =>
        [row.dataset.task, ['.items', '.passed', '.rate'].map(c => row.querySelector(c).textContent.trim())]))""")


def _shown_cards(page) -> list[tuple[str, str, str]]:
    """(task, verdict, badge text) of each card not hidden by the filters."""
    return [tuple(card) for card in page.evaluate("""[...document.querySelectorAll('.card')].filter(c => !c.hidden)
        .map(c => [c.dataset.task, c.dataset.verdict, c.querySelector('.badge').textContent])""")]


def _filter(page, task: str, verdict: str) -> list[tuple[str, str, str]]:
    page.select_option("#task-filter", task)
    page.select_option("#verdict-filter", verdict)
    return _shown_cards(page)


def test_report_over_http(eval_run, page):
    with serve_directory(eval_run.parent) as base:  # the parent: the out-of-folder puzzles must be reachable too
        problems = _open(page, f"{base}/run/report.html")
        broken = load_all_images(page)
        assert page.locator("img").count() == 3 * len(ITEMS)
        assert broken == []
        assert problems.all() == []
        assert all(url.startswith(base) for url in problems.requested_urls), problems.requested_urls
    assert page.evaluate("[...document.images].every(img => img.loading === 'eager')")  # load_all_images switched them


def test_report_from_file_url(eval_run, page):
    problems = _open(page, (eval_run / "report.html").as_uri())
    assert page.locator("img[loading=lazy]").count() == 3 * len(ITEMS)
    assert load_all_images(page) == []
    assert problems.all() == []
    assert all(url.startswith("file://") for url in problems.requested_urls), problems.requested_urls


def test_puzzle_outside_run_is_linked_relatively(eval_run):
    html = (eval_run / "report.html").read_text()
    assert 'src="../puzzle%20set/maze_square_s0_00001_puzzle.png"' in html
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) == 3 * len(ITEMS) and not [s for s in sources if s.startswith(("/", "file:", "http"))]


def test_pass_rate_table_and_failure_reasons(eval_run, page):
    _open(page, (eval_run / "report.html").as_uri())
    assert _rates_table(page) == {task: list(cells) for task, cells in EXPECTED_RATES.items()}
    assert page.text_content("#overall-rate") == "42.9%"
    reasons = page.evaluate("""Object.fromEntries([...document.querySelectorAll('#failure-reasons tbody tr')]
        .map(row => [...row.cells].map(cell => cell.textContent)))""")
    assert reasons == {"not_connected": "2", "misses_goal": "1", "wrong_option": "1"}
    assert "/ckpt/step-100.safetensors" in page.text_content("#settings")
    assert page.locator("#unfinished td").all_text_contents() == ["midpoint/midpoint_s0_00009", "generation timed out"]


def _leaderboard(page) -> dict:
    """{row: {column: cell text}} of the leaderboard table."""
    return page.evaluate("""Object.fromEntries([...document.querySelectorAll('#leaderboard tbody tr')].map(row =>
        [row.dataset.row, Object.fromEntries([...row.querySelectorAll('td[data-column]')]
            .map(td => [td.dataset.column, td.textContent.trim()]))]))""")


def test_leaderboard_table_and_published_row(eval_run, page):
    problems = _open(page, (eval_run / "report.html").as_uri())
    assert page.is_visible("#leaderboard")
    table = _leaderboard(page)
    ours = table["ours"]
    assert (ours["Maze Square"], ours["Eyeballing Point"], ours["Visual Symmetry"]) == ("25.0%", "66.7%", "—")
    assert ours["Average"] == "45.8%" and page.text_content("#average") == "45.8%"  # (25 + 66.7) / 2
    assert ours["Maze Hexagon"] == "not run" and len(ours) == len(COLUMNS) + 1
    assert table["last-frame"]["Eyeballing Point"] == "100.0%" and table["last-frame"]["Maze Square"] == ""
    assert table["counts"]["Visual Symmetry"] == "0/0 (1 not scored)" and table["counts"]["Maze Square"] == "1/4"
    assert table["published"] == {
        "Eyeballing Point": "17.78%", "Eyeballing Line": "10.00%", "Eyeballing Shape": "20.00%",
        "Maze Square": "0.00%", "Maze Hexagon": "0.00%", "Maze Labyrinth": "0.00%", "Visual Symmetry": "7.50%",
        "Visual Gradient": "10.00%", "Visual Compositionality": "7.50%", "ARC-AGI-2": "0.71%", "Average": "7.35%"}
    assert page.text_content("#leaderboard tr[data-row=published] th") == "Wan2.2-TI2V-5B zero-shot (published)"
    source = " ".join(page.text_content("#published-source").split())
    assert "its Average over the columns present here: 8.89%" in source
    assert "expected to score about 0%" in " ".join(page.text_content("#random-weights").split())
    legend = page.locator("#overlay-legend dt").all_text_contents()
    assert legend == ["Mazes", "Eyeballing", "Visual puzzles"]
    assert problems.all() == []


def test_prompts_render_as_text_and_the_negative_prompt_has_a_translation(eval_run, page):
    problems = _open(page, (eval_run / "report.html").as_uri())
    assert page.evaluate("window.pwned") is None
    assert page.locator(".prompt").first.text_content() == HTML_PROMPT
    assert page.locator(".card b").count() == 0
    assert page.locator("#settings span[lang=zh]").text_content() == DEFAULT_NEGATIVE_PROMPT
    assert page.text_content("#settings .translation").startswith("English: garish colours, overexposed, static")
    assert problems.all() == []


def test_filters(eval_run, page):
    _open(page, (eval_run / "report.html").as_uri())
    assert len(_shown_cards(page)) == len(ITEMS)
    assert page.text_content("#shown-count") == f"{len(ITEMS)} of {len(ITEMS)} shown"

    midpoint = _filter(page, "midpoint", "all")
    assert [t for t, _, _ in midpoint] == ["midpoint"] * 3

    failed = _filter(page, "all", "fail")
    assert len(failed) == 4 and {(v, b) for _, v, b in failed} == {("fail", "FAIL")}

    passed = _filter(page, "all", "pass")
    assert len(passed) == 3 and {(v, b) for _, v, b in passed} == {("pass", "PASS")}
    assert _filter(page, "all", "unscored") == [("color_grid", "unscored", "NOT SCORED")]

    assert _filter(page, "maze_square", "fail") == [("maze_square", "fail", "FAIL")] * 3
    assert _filter(page, "midpoint", "fail") == [("midpoint", "fail", "FAIL")]
    assert _filter(page, "maze_square", "pass") == [("maze_square", "pass", "PASS")]
    assert page.text_content("#shown-count") == f"1 of {len(ITEMS)} shown"
    assert len(_filter(page, "all", "all")) == len(ITEMS)


def test_report_without_summary_counts_from_results(tmp_path, page):
    """A summary.json lacking optional keys (here, all but overall) still gives per-task figures."""
    run = tmp_path / "run"
    _write_results(run, tmp_path / "puzzles")
    overall = {"items": 8, "scored": 7, "passed": 3, "pass_rate": 3 / 7}
    (run / "summary.json").write_text(json.dumps({"overall": overall}))
    problems = _open(page, write_report(run).as_uri())
    assert _rates_table(page) == {task: list(cells) for task, cells in EXPECTED_RATES.items()}
    assert load_all_images(page) == []
    assert problems.all() == []


def test_missing_image_shows_placeholder(tmp_path, page):
    run = tmp_path / "run"
    _write_results(run, tmp_path / "puzzles")
    (run / "midpoint" / "midpoint_s0_00003_overlay.png").unlink()
    problems = _open(page, write_report(run).as_uri())
    assert page.locator("img").count() == 3 * len(ITEMS) - 1
    assert page.locator(".missing").all_text_contents() == ["no overlay"]
    assert load_all_images(page) == []
    assert problems.all() == []


# ------------------------------------------------------------------------------------------------ training report

def _write_train_log(run: Path, steps: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": s, "epoch": (s - 1) // 20, "loss": 0.1 + 0.3 / s + 0.02 * math.sin(s), "lr": 1e-4,
                         "step_seconds": 1.5}) for s in range(1, steps + 1)]
    (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")


def _series(page, chart: str) -> dict[str, int]:
    """Series name -> number of points, for each <path> of a chart."""
    return page.evaluate(f"""Object.fromEntries([...document.querySelectorAll('{chart} path.series')]
        .map(p => [p.dataset.series, p.getAttribute('d').split(/[ML]/).filter(Boolean).length]))""")


@pytest.mark.parametrize("steps", [1, 60])
def test_training_report_with_loss_only(tmp_path, page, steps):
    _write_train_log(tmp_path, steps)
    problems = _open(page, write_training_report(tmp_path).as_uri())
    window = max(1, steps // 20)
    assert _series(page, "#loss-chart") == {"loss": steps, f"mean of {window}": steps}
    assert page.locator("#validation-chart").count() == 0
    assert page.locator(".best-marker").count() == 0
    assert "No validation results yet." in page.text_content("body")
    assert problems.all() == []


def test_training_report_with_validation_and_best(tmp_path, page):
    _write_train_log(tmp_path, 60)
    rows = ["step,task,items,passed,pass_rate"] + [
        f"{step},{task},4,{passed},{passed / 4}"
        for step, results in ((20, (1, 2)), (40, (3, 4)), (60, (2, 3)))
        for task, passed in zip(("maze", "midpoint"), results, strict=True)]
    (tmp_path / "validation.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "best.json").write_text(json.dumps({"step": 40, "pass_rate": 0.875, "lora": "step-40.safetensors"}))
    problems = _open(page, write_training_report(tmp_path).as_uri())

    assert _series(page, "#loss-chart") == {"loss": 60, "mean of 3": 60}
    assert _series(page, "#validation-chart") == {"maze": 3, "midpoint": 3}
    for chart in ("#loss-chart", "#validation-chart"):
        assert page.locator(f"{chart} .best-marker").get_attribute("data-step") == "40"
    assert page.locator("#validation tr.best").get_attribute("data-step") == "40"
    assert page.text_content("#best").split() == ["Best", "checkpoint:", "step", "40,", "pass", "rate", "87.5%", "—",
                                                  "step-40.safetensors"]
    assert problems.all() == []


def test_moving_average():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0], 5) == [2.0]


HOSTILE = '"><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def _not_run(page, problems) -> None:
    assert page.evaluate("window.pwned") is None
    assert problems.all() == [] and not [u for u in problems.requested_urls if u.endswith("/x")]
    assert page.locator("body script").count() <= 1  # the page's own filter script only


def test_hostile_ids_and_prompts_are_shown_as_text_in_the_eval_report(tmp_path, page):
    """data.json comes from elsewhere: ids, tasks and prompts with markup, quotes and newlines are text."""
    run = tmp_path / "run"
    record = _record("maze_square", "ok_id", False, "not_connected", run, tmp_path / "puzzles")
    prompt = f"line one\nline two {HOSTILE} 'single' \"double\""
    record.update(id=f"id{HOSTILE}", prompt=prompt, failure_reason=f"reason{HOSTILE}")
    (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    (run / "summary.json").write_text(json.dumps({"settings": {"lora": f"/ckpt/{HOSTILE}"},
                                                  "unfinished": {f"maze_square/{HOSTILE}": f"why {HOSTILE}"}}))
    problems = _open(page, write_report(run).as_uri())
    _not_run(page, problems)
    card = page.locator(".card")
    assert card.locator(".item-id").text_content() == f"id{HOSTILE}"
    assert card.locator(".reason").text_content() == f"reason{HOSTILE}"
    card.locator("details summary").click()
    assert prompt.replace("\n", "\\n").replace('"', '\\"') in card.locator("details pre").inner_text()  # JSON text
    assert f"/ckpt/{HOSTILE}" in page.inner_text("body") and f"why {HOSTILE}" in page.inner_text("body")


def test_hostile_task_names_and_lora_are_shown_as_text_in_the_training_report(tmp_path, page):
    _write_train_log(tmp_path, 4)
    task = f"maze{HOSTILE}"
    (tmp_path / "validation.csv").write_text(
        "step,task,items,passed,pass_rate\n" + "".join(f'{s},"{task.replace(chr(34), 2 * chr(34))}",4,1,0.25\n'
                                                        for s in (2, 4)))
    (tmp_path / "best.json").write_text(json.dumps({"step": 2, "pass_rate": 0.25, "lora": f"x{HOSTILE}"}))
    problems = _open(page, write_training_report(tmp_path).as_uri())
    _not_run(page, problems)
    assert page.locator("#validation th").nth(1).text_content() == task
    assert page.locator("#validation-chart text.legend").text_content() == task
    assert page.locator("#best code").text_content() == f"x{HOSTILE}"
