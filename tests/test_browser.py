"""End to end in a real browser: `streamlit run app.py`, driven by Playwright in Debian's Chromium.

Trains a tiny run from the Train page and waits for the loss chart to draw and the run to finish,
gets a sentiment prediction in the Playground, and draws bertviz's head view and model view from
the d3 and jQuery shipped inside mtbert (each must draw, and answer a hover by drawing something
else), while every request for a host other than 127.0.0.1 is aborted and must never happen.
Screenshots of every page go to artifacts/screenshots/ (CI keeps them); with
MTBERT_DOC_SCREENSHOTS=1 also to docs/screenshots/.

Skipped only when /usr/bin/chromium is missing outside CI; in CI (env CI set) it must run.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from mtbert.studio import checkpoints, settings
from mtbert.studio.playground import JS_ENV
from streamlit_server import streamlit_app

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts" / "screenshots"
DOCS = REPO / "docs" / "screenshots"
SST_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")

pytestmark = pytest.mark.slow

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("no /usr/bin/chromium (apt-get install -y chromium); CI must have it", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """The shipped sample cut to 24 rows per file: a folder of CS224N files the Train page can pick,
    small enough that the trainer's final full-dev evaluation takes no time."""
    from mtbert.data import SAMPLE_DIR

    folder = tmp_path_factory.mktemp("tiny-data")
    for f in SAMPLE_DIR.glob("*.csv"):
        with open(f, newline="", encoding="utf-8") as src, open(folder / f.name, "w", newline="", encoding="utf-8") as dst:
            rows = list(csv.reader(src, delimiter="\t"))[:25]
            csv.writer(dst, delimiter="\t").writerows(rows)
    return folder


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A real `streamlit run app.py` on a free port, with its own empty runs folder, and without
    MTBERT_BERTVIZ_JS: bertviz must draw from the JavaScript shipped in the package."""
    runs_dir = tmp_path_factory.mktemp("runs")
    env = {k: v for k, v in os.environ.items() if k != JS_ENV}
    env["MTBERT_RUNS_DIR"] = str(runs_dir)
    with streamlit_app(env, tmp_path_factory.mktemp("log") / "streamlit.log", start_timeout=60) as url:
        yield url, runs_dir
    # a run the test started and left behind must not outlive it
    from mtbert import lock
    owner = lock.read_lock(runs_dir / ".lock")
    if owner:
        os.kill(owner["pid"], 15)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def shot(page, name: str, at=None) -> None:
    """A viewport screenshot, scrolled to `at` (Streamlit scrolls inside its own container, so a
    full-page shot would show no more than the viewport)."""
    for _ in range(3 if at is not None else 0):
        try:  # the element may be redrawn under us (the live charts refresh every second)
            at.scroll_into_view_if_needed(timeout=5000)
            break
        except Exception:
            page.wait_for_timeout(500)
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("MTBERT_DOC_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / path.name)


def wait_idle(page, timeout: float = 60_000) -> None:
    """Until Streamlit has finished running the script (its status widget disappears)."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=timeout)


def open_expander(page, title: str, shows) -> None:
    """Open the expander titled `title` until `shows` (a locator inside it) is visible: a click that
    lands while the page reruns can be drawn again closed, and a second click would close it."""
    closed = page.locator("[data-testid='stExpander'] details:not([open]) > summary").filter(has_text=title)
    wait_idle(page)
    for _ in range(5):
        if closed.count():
            closed.first.click()
        try:
            shows.wait_for(timeout=3000)
            return
        except Exception:
            wait_idle(page)
    expect(shows).to_be_visible()


def choose(page, label: str, option: str) -> None:
    """Pick `option` (a substring) in the Streamlit selectbox labelled `label`."""
    box = page.get_by_role("combobox", name=label, exact=True)
    wanted = page.get_by_role("option").filter(has_text=option).first
    for _ in range(5):  # a click that lands while the page reruns can leave the list closed
        box.click()
        try:
            wanted.wait_for(timeout=3000)
            break
        except Exception:
            page.keyboard.press("Escape")
    wanted.click()
    expect(box).to_have_value(re.compile(re.escape(option)))


def set_number(page, label: str, value) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Tab")  # Streamlit commits a number on blur


def start_tiny_run(page, name: str, tiny_base) -> None:
    """Cut the Train form down to a tiny BERT, a few steps and small subsets, name the run, start
    it and wait for its heading ("3 · Run <id>")."""
    label = {s.name: s.label for s in settings.settings_spec()}  # the form's widgets by config key
    evaluation = page.get_by_label(label["eval_subset"], exact=True)
    open_expander(page, "Evaluation", evaluation)
    for key, value in {"max_steps": 6, "train_subset": 48, "eval_subset": 16, "train_eval_subset": 16,
                       "max_length": 32, "eval_every": 3}.items():
        set_number(page, label[key], value)
    page.get_by_label(label["name"], exact=True).fill(name)
    page.get_by_label(label["base_model"], exact=True).fill(str(tiny_base))
    page.get_by_role("button", name="Start training").click()
    page.get_by_role("heading", name=name).wait_for(timeout=30_000)


def keep_on_loopback(page) -> list[str]:
    """Abort every request of the page (its frames included) for a host other than this machine;
    the returned list collects them, so the test can demand it stays empty."""
    outside = []

    def route(r):
        url = r.request.url
        if urlparse(url).scheme in ("data", "blob") or urlparse(url).hostname in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    page.route("**/*", route)
    return outside


def bertviz_frame(page, kind: str):
    """The bertviz view's frame (st.iframe with srcdoc), once its SVG has drawn."""
    frame = page.frame_locator(f"iframe[title='bertviz {kind} view of the attention']")
    frame.locator("#vis svg line").first.wait_for(state="attached", timeout=60_000)
    page.wait_for_timeout(500)
    return frame


def svg_state(frame) -> dict:
    """What bertviz's SVG shows: element counts, the texts, the inline opacities, the arcs shown."""
    return frame.locator("#vis svg").evaluate("""svg => {
        const all = s => [...svg.querySelectorAll(s)];
        return {
            text: all('text').length, line: all('line').length, rect: all('rect').length,
            detail: all('.detail').length, texts: all('text').map(t => t.textContent).join('|'),
            hidden_group: svg.querySelector('#attention') && svg.querySelector('#attention').getAttribute('visibility'),
            shown_lines: all("line[visibility='visible']").length,
            opacities: all('rect, g').map(e => e.style.opacity).join(','),
            faded_groups: all('g').filter(g => g.style.opacity === '0').length,
        };
    }""")


def test_train_watch_then_play(studio, browser, tiny_base, tiny_data):
    url, runs_dir = studio
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = keep_on_loopback(page)

    # home: what this machine offers
    page.goto(url)
    page.get_by_text("mtbert studio").first.wait_for(timeout=60_000)
    page.get_by_role("heading", name="This machine").wait_for(timeout=60_000)
    page.get_by_role("heading", name="Where next").wait_for()
    expect(page.get_by_text("Device:")).to_be_visible()
    pages = (REPO / "app.py").read_text(encoding="utf-8").count("st.Page(")  # the navigation's pages
    expect(page.locator("[data-testid='stPageLink']")).to_have_count(pages - 1)  # a link to each but Home
    wait_idle(page)
    page.wait_for_timeout(1500)  # the tables draw on a canvas, a moment after they arrive
    shot(page, "home")

    # train: the quick preset, cut down (a tiny BERT, 24 rows per file, a few steps) to stay quick
    page.goto(f"{url}/Train")
    page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
    wait_idle(page)
    label = {s.name: s.label for s in settings.settings_spec()}  # the form's widgets by config key
    demo = settings.preset_values("quick CPU demo")
    expect(page.get_by_label(label["max_steps"], exact=True)).to_have_value(str(demo["max_steps"]))  # the preset
    page.wait_for_timeout(2000)  # the first run of the page draws the form, then settles
    page.get_by_text("another folder", exact=True).click()
    page.get_by_label("Folder of CS224N files", exact=True).fill(str(tiny_data))
    page.get_by_label("Folder of CS224N files", exact=True).press("Enter")
    page.get_by_text("train: sst 24, para 24, sts 24").wait_for()  # the row counts of the chosen folder
    expect(page.get_by_label(label["max_steps"], exact=True)).to_have_value(str(demo["max_steps"]))  # still there
    start_tiny_run(page, "browser-test", tiny_base)

    # the loss chart draws a line once two steps are in
    page.wait_for_function("""() => {
        const plot = document.querySelector('.js-plotly-plot');
        if (!plot) return false;
        return [...plot.querySelectorAll('.scatterlayer path.js-line')].some(p => (p.getAttribute('d') || '').includes('L'));
    }""", timeout=180_000, polling=1000)
    shot(page, "train-running", page.locator(".js-plotly-plot").first)
    page.reload()  # a reload re-attaches to the run (running, or just finished) from its folder
    page.get_by_role("heading", name="browser-test").wait_for(timeout=60_000)
    page.get_by_text("Finished. Checkpoint:").wait_for(timeout=300_000)
    wait_idle(page)
    expect(page.get_by_text("(the seed report's table, for the best checkpoint)")).to_be_visible()
    expect(page.locator("[data-testid='stDataFrame']").last).to_be_visible()
    shot(page, "train-finished", page.get_by_text("Finished. Checkpoint:"))
    run_ids = [p.name for p in runs_dir.iterdir() if p.is_dir()]
    assert len(run_ids) == 1 and run_ids[0].endswith("browser-test")

    # playground: the run's best checkpoint predicts a sentiment
    page.goto(f"{url}/Playground")
    page.get_by_role("heading", name="Playground").wait_for(timeout=60_000)
    wait_idle(page)
    shipped = [c.name for c in checkpoints.list_checkpoints() if c.kind == "shipped"]
    if shipped:  # side by side: the shipped checkpoint and the run just trained
        page.get_by_text("Compare two checkpoints side by side").click()
        choose(page, "Checkpoint", f"{shipped[0]} (shipped")
        choose(page, "Second checkpoint", f"{run_ids[0]}/best")
    else:
        choose(page, "Checkpoint", f"{run_ids[0]}/best")
    wait_idle(page)
    page.get_by_label("Sentence", exact=True).fill("A gorgeous, witty, seductive movie.")
    page.get_by_role("button", name="Predict SST").click()
    metrics = page.locator("[data-testid='stMetricValue']")
    expect(metrics).to_have_count(2 if shipped else 1, timeout=60_000)
    assert all(m.strip() in SST_LABELS for m in metrics.all_inner_texts())
    wait_idle(page)
    shot(page, "playground")

    # attention: bertviz's two views, drawn from the d3/jQuery inside the package
    page.get_by_role("tab", name="Attention").click()
    page.get_by_label("Sentence A", exact=True).fill("The movie was not bad at all.")
    page.get_by_role("button", name="Show attention").click()
    head = bertviz_frame(page, "head")
    before = svg_state(head)
    assert before["text"] >= 2 * 9, "both token columns ([CLS] the movie was not bad at all . [SEP])"
    assert before["line"] > 0 and before["rect"] > 0 and before["hidden_group"] is None
    shot(page, "attention", page.locator("iframe[title='bertviz head view of the attention']"))
    head.locator("#left text").filter(has_text="movie").hover()  # only that token's arcs stay shown
    after = svg_state(head)
    assert after["hidden_group"] == "hidden" and 0 < after["shown_lines"] < before["line"]
    assert after["opacities"] != before["opacities"]  # its weights light up the other column

    page.get_by_text("model view", exact=True).click()
    model = bertviz_frame(page, "model")
    before = svg_state(model)
    assert before["line"] > 0 and before["detail"] == 0, "thumbnails of every layer and head, no detail yet"
    thumb = model.locator("#attn_background_1_0 ~ rect")  # the thumbnail's click area (layer 1, head 0)
    thumb.hover()
    assert thumb.evaluate("e => e.style.cursor") == "pointer"
    thumb.click()
    opened = svg_state(model)
    assert opened["detail"] > 0 and "Layer 1, Head 0" in opened["texts"], "the clicked head's detail view"
    shot(page, "attention-model", page.locator("iframe[title='bertviz model view of the attention']"))
    model.locator("g.detail").first.locator("text.token").filter(has_text="movie").hover()
    hovered = svg_state(model)
    assert opened["faded_groups"] == 0 and hovered["faded_groups"] > 0  # only that token's lines stay

    # batch: a CS224N file in, id,prediction CSV out
    page.get_by_role("tab", name="Batch file").click()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(tiny_data / "ids-sst-dev.csv"))
    page.get_by_role("button", name="Predict the file").click()
    download = page.get_by_role("button", name="Download predictions CSV")
    download.wait_for(timeout=60_000)
    with page.expect_download() as dl:
        download.click()
    rows = list(csv.reader(open(dl.value.path(), newline="")))
    assert rows[0] == ["id", "prediction"] and len(rows) == 25
    assert {r[1] for r in rows[1:]} <= {"0", "1", "2", "3", "4"}

    # runs: the table lists the run
    page.goto(f"{url}/Runs")
    page.get_by_role("heading", name="Runs").wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_text("Compare curves").wait_for()
    shot(page, "runs")
    assert not outside, f"requests left the machine: {outside[:5]}"
    page.close()
