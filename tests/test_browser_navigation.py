"""The studio's navigation, form labels and runs table as a person sees them: a real `streamlit run
app.py` on 127.0.0.1, driven by Playwright in Debian's Chromium.

The sidebar names the home page "Home" (never "app", the entrypoint's file name) and every page keeps
its URL (/Train, /Playground, /Runs); the Train form labels each setting in words, its help naming
the config key and the allowed values; the runs table shows the scores right after the run's name.

Skipped only when /usr/bin/chromium is missing outside CI; in CI (env CI set) it must run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urljoin

import pytest
from playwright.sync_api import expect

from mtbert.config import TrainConfig
from mtbert.studio import settings
from streamlit_server import CHROMIUM, chromium, streamlit_app

PAGES = {"Train": "Train", "Playground": "Playground", "Evaluate": "Evaluate", "Probe": "Probe", "Sweeps": "Sweeps",
         "Runs": "Runs"}  # sidebar title -> URL path

pytestmark = pytest.mark.slow

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("no /usr/bin/chromium (apt-get install -y chromium); CI must have it", allow_module_level=True)


def runs_folder(root: Path) -> Path:
    """A runs folder holding one finished run with dev scores (and a long name, as real ones have)."""
    folder = root / "runs"
    run = folder / "20260101-120000-a-long-descriptive-run-name"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(TrainConfig(name="x", gradient_method="pcgrad").to_dict()))
    (run / "status.json").write_text(json.dumps({"run_id": run.name, "state": "finished", "step": 40, "results": {
        "dev": {"para_acc": 0.71, "sst_acc": 0.42, "sts_corr": 0.81, "average": 0.6467}}}))
    return folder


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    env = {**os.environ, "MTBERT_RUNS_DIR": str(runs_folder(root))}
    with streamlit_app(env, root / "streamlit.log", start_timeout=90) as url:
        yield url


def wait_idle(page, timeout: float = 60_000) -> None:
    """Until Streamlit has finished running the script (its status widget disappears)."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=timeout)


def sidebar_entries(page) -> list[str]:
    return page.locator("[data-testid='stSidebarNavLink'] [data-testid='stMarkdownContainer']").all_inner_texts()


def open_page(browser, url: str, heading: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=60_000)
    wait_idle(page)
    return page


def test_the_sidebar_calls_the_home_page_home_and_every_page_keeps_its_url(studio, browser):
    page = open_page(browser, studio, "mtbert studio")
    entries = sidebar_entries(page)
    assert entries[0] == "Home" and "app" not in [e.lower() for e in entries], entries
    assert entries[1:] == list(PAGES)
    for title, path in PAGES.items():  # through the sidebar, then by typing the URL
        page.locator("[data-testid='stSidebarNavLink']").filter(has_text=title).click()
        page.get_by_role("heading", name=title, exact=True).wait_for(timeout=60_000)
        assert page.url == f"{studio}/{path}"
        page.goto(f"{studio}/{path}")
        page.get_by_role("heading", name=title, exact=True).wait_for(timeout=60_000)
        wait_idle(page)
        assert sidebar_entries(page)[0] == "Home"
    page.locator("[data-testid='stSidebarNavLink']").filter(has_text="Home").click()
    page.get_by_role("heading", name="Where next").wait_for(timeout=60_000)
    links = page.locator("[data-testid='stPageLink'] a")
    expect(links).to_have_count(len(PAGES), timeout=30_000)
    hrefs = [urljoin(f"{studio}/", links.nth(i).get_attribute("href")) for i in range(len(PAGES))]
    assert hrefs == [f"{studio}/{p}" for p in PAGES.values()]
    assert [t.strip() for t in links.all_inner_texts()] == list(PAGES)  # titled as in the sidebar
    page.close()


def test_a_fresh_studio_opened_at_a_page_url_calls_the_home_page_home(browser, tmp_path):
    """Streamlit would serve a folder named pages/ beside app.py as its older multipage app (the
    entrypoint listed as 'app') until app.py has run once; the page files live in app_pages/."""
    env = {**os.environ, "MTBERT_RUNS_DIR": str(runs_folder(tmp_path))}
    with streamlit_app(env, tmp_path / "streamlit.log", start_timeout=90) as url:
        page = open_page(browser, f"{url}/Train", "Train")
        entries = sidebar_entries(page)
        page.close()
    assert entries[0] == "Home" and "app" not in [e.lower() for e in entries], entries


def test_the_train_form_labels_every_setting_in_words(studio, browser):
    page = open_page(browser, f"{studio}/Train", "Train")
    spec = settings.settings_spec()
    sections = page.locator("[data-testid='stForm'] [data-testid='stExpander'] details")
    expect(sections).to_have_count(len(dict.fromkeys(s.section for s in spec)))  # the whole form is drawn
    closed = sections.locator("xpath=self::*[not(@open)]")
    while closed.count():  # a closed section's widgets are in the page but cannot be seen or hovered
        closed.first.locator("summary").click()
        page.wait_for_timeout(300)
    expect(closed).to_have_count(0)
    for s in spec:
        expect(page.get_by_label(s.label, exact=True)).to_have_count(1)
        expect(page.get_by_label(s.name, exact=True)).to_have_count(0)  # never the bare config key
    lr = next(s for s in spec if s.name == "lr")
    page.locator("[data-testid='stNumberInput']").filter(has_text=lr.label).locator(
        "[data-testid='stTooltipIcon']").hover()
    tip = page.locator("[data-testid='stTooltipContent']")
    expect(tip).to_contain_text("Config key: lr")
    expect(tip).to_contain_text(f"Allowed: {lr.allowed}")
    page.close()


def test_the_runs_table_shows_the_scores_first_within_its_width(studio, browser):
    page = open_page(browser, f"{studio}/Runs", "Runs")
    table = page.locator("[data-testid='stDataFrame']").first
    headers = table.locator("[role='columnheader']")
    expect(headers.first).to_have_text("run", timeout=30_000)
    wanted = ["run", "Average", "Paraphrase acc", "SST acc", "STS corr"]  # the scores first, the Average leading
    assert headers.all_inner_texts()[:len(wanted)] == wanted  # pinned: they stay when the settings scroll
    page.close()
