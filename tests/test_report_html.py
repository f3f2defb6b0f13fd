"""`python -m mtbert report`: one self-contained HTML file per run, on a tiny checkpoint and a few
labelled rows: each task's section and figures, escaped text, no URL but XML namespace names, every
plot drawn in Chromium from file:// with every other request aborted, the comparison of two
checkpoints, and bad arguments answered with a message, not a traceback."""
from __future__ import annotations

import csv
import datetime as dt
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtbert.checkpoint import load_encoder, save_checkpoint, set_logit_offset
from mtbert.data import SAMPLE_DIR
from mtbert.htmlreport import XML_NAMESPACES, offline_plotlyjs
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.tasks import builtin_task
from streamlit_server import CHROMIUM, chromium

REPO = Path(__file__).resolve().parents[1]
ROWS = 30
SCRIPT = '<script>alert("mtbert")</script>'
# figures per task section: sst (5 classes), para (binary), sts (regression)
FIGURES = {"sst": 4, "para": 7, "sts": 2}


def run_cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mtbert", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def make_checkpoint(base: Path, folder: Path, seed: int, **model_cfg) -> Path:
    encoder, tok = load_encoder(base, max_length=32)
    torch.manual_seed(seed)
    return save_checkpoint(MultitaskBert(encoder, ModelConfig.from_dict(model_cfg)), tok, folder, base=str(base))


@pytest.fixture(scope="module")
def tiny(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    a = make_checkpoint(tiny_base, root / "ckpt-a", seed=0)
    set_logit_offset(a, "para", 0.25)  # the threshold sigmoid(-0.25) = 0.438 is shown
    b = make_checkpoint(tiny_base, root / "ckpt-b", seed=1)
    only_sst = make_checkpoint(tiny_base, root / "ckpt-sst", seed=2, tasks=[builtin_task("sst").to_dict()])
    data = root / "data"
    data.mkdir()
    for f in SAMPLE_DIR.glob("*-dev.csv"):
        with open(f, newline="", encoding="utf-8") as src:
            rows = list(csv.reader(src, delimiter="\t"))[:ROWS + 1]
        if f.name == "sts-dev.csv":  # every sts row is listed (largest errors), so this one shows
            rows[1][2] = f"A man {SCRIPT} plays a guitar."
        with open(data / f.name, "w", newline="", encoding="utf-8") as dst:
            csv.writer(dst, delimiter="\t").writerows(rows)
    return {"a": a, "b": b, "only_sst": only_sst, "data": data, "root": root}


@pytest.fixture(scope="module")
def single(tiny):
    out = tiny["root"] / "out" / "single.html"
    p = run_cli("report", "--checkpoint", tiny["a"], "--data-dir", tiny["data"], "--out", out, "--mistakes", 100)
    assert p.returncode == 0, p.stderr
    return out, out.read_text(encoding="utf-8"), p


@pytest.fixture(scope="module")
def compared(tiny):
    out = tiny["root"] / "compare.html"
    p = run_cli("report", "--checkpoint", tiny["a"], "--checkpoint", tiny["b"], "--data-dir", tiny["data"],
                "--out", out)
    assert p.returncode == 0, p.stderr
    return out, out.read_text(encoding="utf-8")


def test_report_holds_every_tasks_section_figures_and_a_header(single, tiny):
    out, text, p = single
    assert f"wrote {out}" in p.stderr
    for task, n in FIGURES.items():
        assert f'id="main-{task}"' in text
        assert len(re.findall(rf'data-figure="main-{task}-', text)) == n
    assert text.count('class="plotly-graph-div"') == sum(FIGURES.values())
    assert str(tiny["a"]) in text and f"dev split of {tiny['data']}" in text
    assert text.count(f"<td>{ROWS}</td>") >= 3  # examples per task in the header
    meta = json.loads((tiny["a"] / "mtbert.json").read_text())
    assert f"<td>{html.escape(meta['base_model'])}</td>" in text  # what the checkpoint was trained from
    assert dt.date.today().strftime("%Y-%m-%d") in text and "mtbert 0.1.0" in text
    assert "stored in the checkpoint: <b>0.438</b>" in text  # sigmoid(-0.25)
    assert "The 30 largest errors" in text and "most confident mistakes" in text


def test_report_escapes_text_and_inlines_plotly_once(single):
    _, text, _ = single
    assert SCRIPT not in text
    assert "A man &lt;script&gt;alert(&quot;mtbert&quot;)&lt;/script&gt; plays a guitar." in text
    bundle = offline_plotlyjs()
    assert text.count(bundle[:2000]) == 1 and len(bundle) > 1_000_000
    assert not re.search(r"<script[^>]*\bsrc=", text)


URL = re.compile(r"https?://[^\s\"'`<>()\\]*")


def test_the_report_file_holds_no_url_but_xml_namespace_names(single, compared):
    for text in (single[1], compared[1]):
        urls = URL.findall(text)
        assert urls, "the SVG namespace names must be there: plotly draws with them"
        assert set(urls) <= set(XML_NAMESPACES), sorted(set(urls) - set(XML_NAMESPACES))
        assert "cdn.plot.ly" not in text or "offline:cdn.plot.ly" in text


def test_the_check_catches_a_url():
    assert set(URL.findall('x="https://cdn.plot.ly/un/"')) - set(XML_NAMESPACES)
    assert not set(URL.findall('n="http://www.w3.org/2000/svg"')) - set(XML_NAMESPACES)


def test_comparison_report_holds_both_checkpoints_and_the_tests(compared, tiny):
    _, text = compared
    for task in FIGURES:
        assert f'id="compare-{task}"' in text and f'id="A-{task}"' in text and f'id="B-{task}"' in text
    assert text.count('class="mcnemar"') == 2 and "McNemar test" in text  # sst, para
    assert text.count('class="bootstrap"') == 1 and "Paired bootstrap of the pearson difference" in text
    assert "A right, B wrong" in text and "B right, A wrong" in text and "B closer to gold" in text
    assert f"A: {tiny['a']}" in text and f"B: {tiny['b']}" in text


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                    reason="no /usr/bin/chromium (apt-get install -y chromium); CI must have it")
def test_chromium_draws_every_plot_offline(single, compared):
    with chromium() as browser:
        for path, text in (single[:2], compared):
            want = text.count('class="plotly-graph-div"')
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            own, others, errors = path.resolve().as_uri(), [], []

            def route(r):
                if r.request.url == own:
                    r.continue_()
                else:
                    others.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.resolve().as_uri())
            page.wait_for_function(f"[...document.querySelectorAll('.js-plotly-plot')]"
                                   f".filter(e => e.querySelector('svg.main-svg')).length >= {want}", timeout=60_000)
            # drawn: an SVG holding the figure's data (a trace, or a heatmap's image)
            drawn = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')].filter(e => "
                                  "e.querySelector('svg.main-svg .cartesianlayer .trace, svg.main-svg image')).length")
            page.mouse.wheel(0, 20_000)  # scrolling and resizing must not fetch anything either
            page.set_viewport_size({"width": 900, "height": 700})
            page.wait_for_timeout(500)
            page.close()
            assert drawn == want > 0
            assert others == [] and errors == []


@pytest.mark.parametrize("args,code,message", [
    (["--task", "nope"], 1, "--task nope is not allowed; this checkpoint's tasks: sst, para, sts"),
    (["--task", "para", "--input", "{data}/ids-sst-dev.csv"], 1, "sentence1"),
    (["--input", "{data}/sts-dev.csv"], 1, "--input needs exactly one --task"),
    (["--checkpoint", "{only_sst}"], 1, "has no task para; its tasks: sst"),
    (["--checkpoint", "{b}", "--checkpoint", "{b}"], 2, "--checkpoint was given 3 times"),
    (["--out", "{root}"], 2, "is a folder; give a file name"),
    (["--split", "test"], 2, "invalid choice: 'test'"),
], ids=["unknown-task", "file-of-another-task", "input-without-task", "b-lacks-a-task", "three-checkpoints",
        "out-is-a-folder", "bad-split"])
def test_bad_arguments_get_a_message_and_no_traceback(tiny, args, code, message):
    out = tiny["root"] / "bad.html"
    args = [a.format(**{k: v for k, v in tiny.items()}) for a in args]
    base = ["report", "--checkpoint", tiny["a"], "--data-dir", tiny["data"]]
    if "--out" not in args:
        base += ["--out", out]
    p = run_cli(*base, *args)
    assert p.returncode == code, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()
