"""A task of one's own, end to end in a real browser: on the Train page, a 3-class sentence task is
added from a CSV file (an upload first, then its path), its preview and row counts are shown, it
trains beside the built-in tasks on a tiny BERT, and the Playground answers for it with one of its
labels. Every request for a host other than 127.0.0.1 is aborted and must never happen.

Skipped only when /usr/bin/chromium is missing outside CI; in CI (env CI set) it must run.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from mtbert.studio import settings
from mtbert.tasks import read_tasks_file
from streamlit_server import CHROMIUM, chromium, streamlit_app
from test_browser import choose, keep_on_loopback, open_expander, shot, start_tiny_run, tiny_data, wait_idle  # noqa: F401 (a fixture)

MOODS = ("negative", "neutral", "positive")
TITLE = "Mood"

pytestmark = pytest.mark.slow

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("no /usr/bin/chromium (apt-get install -y chromium); CI must have it", allow_module_level=True)


@pytest.fixture(scope="module")
def mood_files(tmp_path_factory) -> tuple[Path, Path]:
    """moods-train.csv (40 rows) and moods-dev.csv (20): comma-separated, a sentence and its mood by name."""
    folder = tmp_path_factory.mktemp("my-task")
    words = {"negative": "dreadful, dull and sad", "neutral": "plain, average and ordinary",
             "positive": "wonderful, bright and happy"}
    out = []
    for split, n in (("train", 40), ("dev", 20)):
        path = folder / f"moods-{split}.csv"
        path.write_text("id,text,mood\n" + "".join(
            f'{split}-{i},"Day {i} was {words[MOODS[i % 3]]}.",{MOODS[i % 3]}\n' for i in range(n)))
        out.append(path)
    return out[0], out[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "MTBERT_RUNS_DIR": str(runs_dir)}
    with streamlit_app(env, tmp_path_factory.mktemp("log") / "streamlit.log", start_timeout=90) as url:
        yield url, runs_dir
    from mtbert import lock
    owner = lock.read_lock(runs_dir / ".lock")
    if owner:  # a run the test started and left behind must not outlive it
        os.kill(owner["pid"], 15)


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def grid_text(grid) -> str:
    """The cells a dataframe shows (drawn on a canvas; the grid keeps them in an accessible table inside it)."""
    return " | ".join(grid.locator("table[role='grid'] td").all_text_contents())


def test_add_a_task_train_it_and_ask_the_playground(studio, browser, tiny_base, tiny_data, mood_files):
    url, runs_dir = studio
    train, dev = mood_files
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    outside = keep_on_loopback(page)
    page.goto(f"{url}/Train")
    page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
    wait_idle(page)
    # the form shows the preset's values a moment after the page; a rerun asked for before that
    # (typing a path) can send the form's blank widgets instead
    label = {s.name: s.label for s in settings.settings_spec()}
    max_steps = settings.preset_values("quick CPU demo")["max_steps"]
    expect(page.get_by_label(label["max_steps"], exact=True)).to_have_value(str(max_steps), timeout=30_000)
    page.get_by_text("another folder", exact=True).click()
    page.get_by_label("Folder of CS224N files", exact=True).fill(str(tiny_data))
    page.get_by_label("Folder of CS224N files", exact=True).press("Enter")
    page.get_by_text("train: sst 24, para 24, sts 24").wait_for()

    # an upload: saved under the runs folder, read and previewed like a typed path
    open_expander(page, "Add a task", page.get_by_text("an upload", exact=True))
    page.get_by_text("an upload", exact=True).click()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(train))
    page.get_by_text("Detected: delimited, comma-separated with a header row").wait_for(timeout=60_000)
    saved = list((runs_dir / "task-data").glob("moods-train-*.csv"))
    assert len(saved) == 1 and saved[0].read_bytes() == train.read_bytes()

    # a path: the preview, the guessed definition, the row counts
    page.get_by_text("a file on this machine", exact=True).click()
    page.get_by_role("textbox", name="Train file", exact=True).fill(str(train))
    page.get_by_role("textbox", name="Train file", exact=True).press("Enter")
    page.get_by_text("Preview — the first 10 of 40 rows").wait_for(timeout=60_000)
    page.get_by_text("needs a dev file").wait_for()
    expect(page.get_by_role("button", name="Add task")).to_be_disabled()
    page.get_by_role("textbox", name="Dev file", exact=True).fill(str(dev))
    page.get_by_role("textbox", name="Dev file", exact=True).press("Enter")
    page.get_by_text("Rows (read with this definition)").wait_for(timeout=60_000)
    wait_idle(page)
    expect(page.get_by_label("Label names (optional)", exact=True)).to_have_value(", ".join(MOODS))
    expect(page.get_by_label("Name", exact=True)).to_have_value("moods")
    page.get_by_label("Title", exact=True).fill(TITLE)
    page.get_by_label("Title", exact=True).press("Enter")
    wait_idle(page)
    page.wait_for_timeout(1500)  # the tables draw on a canvas, a moment after they arrive
    grids = page.locator("[data-testid='stDataFrame']")
    preview, counts = grids.nth(1), grids.nth(2)  # after the CS224N files' table
    assert "Day 1 was plain, average and ordinary." in grid_text(preview)
    assert re.search(r"train \| 40 \| 40 \| 0 \| dev \| 20 \| 20 \| 0", grid_text(counts)), grid_text(counts)
    shot(page, "train-add-task", page.get_by_text("Rows (read with this definition)"))
    page.get_by_role("button", name="Add task").click()
    page.get_by_text("Added task moods").wait_for(timeout=30_000)
    page.get_by_text("(Mood) · sentence → 3 classes (negative, neutral, positive)").wait_for()

    # train it with the built-in tasks: a tiny BERT, a few steps
    tasks = page.locator("[data-testid='stMultiSelect']").filter(
        has=page.get_by_role("combobox", name=label["tasks"], exact=True))
    expect(tasks.locator("[data-tag]")).to_have_text(["sst", "para", "sts", "moods"])  # chosen with the others
    start_tiny_run(page, "browser-task", tiny_base)
    page.get_by_text("Finished. Checkpoint:").wait_for(timeout=300_000)
    wait_idle(page)
    run = next(p for p in runs_dir.iterdir() if p.name.endswith("browser-task"))
    config = json.loads((run / "config.json").read_text())
    assert config["tasks"] == ["sst", "para", "sts", "moods"]
    specs, _ = read_tasks_file(config["tasks_file"])
    assert [(s.name, s.title, s.label_names) for s in specs] == [("moods", TITLE, MOODS)]
    assert [d["name"] for d in config["task_definitions"]] == ["sst", "para", "sts", "moods"]

    # the Playground: the checkpoint's panel for the new task answers with one of its labels
    page.goto(f"{url}/Playground")
    page.get_by_role("heading", name="Playground").wait_for(timeout=60_000)
    wait_idle(page)
    choose(page, "Checkpoint", f"{run.name}/best")
    wait_idle(page)
    heading = page.get_by_role("heading", name=TITLE, exact=True)
    heading.wait_for(timeout=60_000)
    sentence = heading.locator("xpath=following::*[(self::input or self::textarea) and @aria-label='Sentence'][1]")
    sentence.fill("Day 7 was wonderful, bright and happy.")
    sentence.press("Tab")  # Streamlit commits a text on blur
    wait_idle(page)
    predict = page.get_by_role("button", name=f"Predict {TITLE}", exact=True)
    predict.click()
    answer = predict.locator("xpath=following::*[@data-testid='stMetricValue'][1]")
    answer.wait_for(timeout=60_000)
    assert answer.inner_text().strip() in MOODS
    wait_idle(page)
    shot(page, "playground-own-task", answer)
    assert not outside, f"requests left the machine: {outside[:5]}"
    page.close()
