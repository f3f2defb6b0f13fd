"""The Evaluate page in a real browser: `streamlit run app.py` driven by Playwright in Debian's
Chromium. A tiny checkpoint is evaluated on the shipped sample's dev split; every figure must draw
(plotly's SVG); then one of its most confident mistakes is opened in the Playground, which must
show that example's text and answer it, and its Why tab must colour the example's tokens with the
attributions `mtbert.explain` computes. Every request for a host other than 127.0.0.1 is aborted
and must never happen.

Skipped only when /usr/bin/chromium is missing outside CI; in CI (env CI set) it must run.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from playwright.sync_api import expect

from mtbert import analysis, evalfigures
from mtbert.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from mtbert.data import SAMPLE_DIR, load_split
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.studio import playground as pg
from streamlit_server import CHROMIUM, chromium, streamlit_app
from test_browser import keep_on_loopback, shot, wait_idle

pytestmark = pytest.mark.slow

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("no /usr/bin/chromium (apt-get install -y chromium); CI must have it", allow_module_level=True)

RUN = "20260101-000000-tiny"


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_base):
    """The studio with one run checkpoint (a tiny BERT, untrained heads: plenty of mistakes) and no
    shipped ones, so that the tiny checkpoint is the page's first choice."""
    runs_dir = tmp_path_factory.mktemp("runs")
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(0)
    save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, runs_dir / RUN / "best", base=str(tiny_base))
    (runs_dir / RUN / "status.json").write_text('{"state": "finished"}', encoding="utf-8")
    env = {**os.environ, "MTBERT_RUNS_DIR": str(runs_dir),
           "MTBERT_CHECKPOINTS_DIR": str(tmp_path_factory.mktemp("no-shipped"))}
    with streamlit_app(env, tmp_path_factory.mktemp("log") / "streamlit.log", start_timeout=60) as url:
        yield url, runs_dir / RUN / "best"


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def plots_drawn(page) -> int:
    return page.locator(".js-plotly-plot .main-svg").count()


def test_evaluate_draws_every_figure_and_opens_a_mistake_in_the_playground(studio, browser):
    url, checkpoint = studio
    model, tok, _ = load_checkpoint(checkpoint)
    data = {t: x for t, (x, _) in load_split(SAMPLE_DIR, "dev", model.cfg.tasks).items()}
    expected = {t: analysis.predict_task(model, tok, t, x) for t, x in data.items()}
    figures = {t: len(evalfigures.task_figures(r)) for t, r in expected.items()}

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside = keep_on_loopback(page)
    page.goto(f"{url}/Evaluate")
    page.get_by_role("heading", name="Evaluate", exact=True).wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_role("button", name="Evaluate", exact=True).click()
    page.get_by_role("heading", name="Results").wait_for(timeout=120_000)
    wait_idle(page)
    # every task's tab holds the figures the engine builds for its kind, each drawn by plotly (its SVG);
    # each tab is opened so that its figures are seen at their size
    total = sum(figures.values())
    expect(page.locator(".js-plotly-plot")).to_have_count(total, timeout=30_000)
    for spec in reversed(model.cfg.tasks):
        page.get_by_role("tab", name=spec.title).click()
        page.wait_for_timeout(300)
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {total}",
                           timeout=30_000)
    shot(page, "evaluate-sentiment", page.locator(".js-plotly-plot").first)

    # the error browser: select the most confident mistake, open it in the Playground
    first = analysis.mistakes(expected["sst"], limit=1)[0]
    grid = page.locator("[data-testid='stDataFrame']").first
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    opener = page.get_by_role("button", name="Open in the Playground").first
    expect(opener).to_be_disabled()
    page.mouse.click(box["x"] + 14, box["y"] + 35 + 17)  # the row marker of the first row, below the header
    expect(opener).to_be_enabled(timeout=30_000)
    shot(page, "evaluate-mistakes", grid)
    opener.click()
    page.get_by_role("heading", name="Playground", exact=True).wait_for(timeout=60_000)
    wait_idle(page)
    assert page.url.endswith("/Playground")
    expect(page.get_by_label("Sentence", exact=True)).to_have_value(first["text_a"], timeout=30_000)
    expect(page.get_by_label("Sentence to explain", exact=True)).to_have_value(first["text_a"])  # the Why tab's
    expect(page.locator("[data-testid='stMetricValue']").first).to_have_text(first["predicted"], timeout=30_000)
    shot(page, "evaluate-opened-in-playground")

    # the same example on the Why tab: its tokens coloured by Integrated Gradients, the sum checked
    page.get_by_role("tab", name="Why").click()
    page.get_by_role("button", name="Explain", exact=True).click()
    tokens = page.locator(".mtbert-attribution .mtbert-token")
    tokens.first.wait_for(timeout=60_000)
    attr = pg.attribution(model, tok, "sst", first["text_a"], steps=pg.DEFAULT_IG_STEPS)
    assert tokens.all_inner_texts() == [t for row in attr.tokens for t in row]
    shown = [float(v) for v in tokens.evaluate_all("els => els.map(e => e.dataset.attribution)")]
    assert shown == pytest.approx([float(v) for row in attr.attributions for v in row], rel=1e-4, abs=1e-7)
    expect(page.get_by_text(re.compile(r"attributions sum to .* f\(x\) − f\(baseline\)"))).to_be_visible()
    shot(page, "evaluate-why", tokens.first)
    assert not outside, f"requests left the machine: {outside[:5]}"
    page.close()
