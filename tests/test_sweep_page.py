"""The Sweeps page through Streamlit's AppTest: a sweep started from the page writes its folder and runs
for real in the background; the page shows its progress, re-attaches after a reload, and ends with the
results table and charts. Also its refusals and the studio logic's readings of a sweep folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from mtbert import lock, runfolder, sweep
from mtbert.studio import sweeps as sw

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "app_pages" / "6_Sweeps.py")


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MTBERT_SWEEPS_DIR", str(tmp_path / "sweeps"))
    monkeypatch.chdir(tmp_path)  # nothing the page writes may land in the repository
    yield tmp_path
    for d in sweep.list_sweeps():  # a runner a failed test left behind must not outlive it
        pid = sweep.load(d).get("pid")
        if isinstance(pid, int) and pid != os.getpid() and lock.pid_alive(pid):
            os.kill(pid, 9)
    st.cache_data.clear()


def page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60)


def no_exception(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def fill(at: AppTest, config: Path, methods: list[str], seeds: int, vary: str = "") -> AppTest:
    at.text_input(key="sweep_config_file").input(str(config))
    at.multiselect(key="sweep_methods").set_value(methods)
    at.number_input(key="sweep_seeds").set_value(seeds)
    at.text_area(key="sweep_vary").input(vary)
    return at


def start(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Start sweep").click()
    return no_exception(at.run())


def tiny_config(dirs: Path, base_model: str) -> Path:
    path = dirs / "tiny.yaml"
    path.write_text("\n".join(f"{k}: {v}" for k, v in dict(
        name="page-sweep", base_model=base_model, epochs=1, batch_size=4, lr=1e-3, train_subset=16, max_steps=2,
        eval_subset=8, train_eval_subset=8, max_length=24, final_full_eval="false", seed=9).items()) + "\n")
    return path


def test_a_sweep_started_on_the_page_shows_its_progress_and_then_its_table(dirs, tiny_base):
    at = no_exception(page().run())
    assert "No sweeps" in " ".join(c.value for c in at.caption)
    at = start(fill(at, tiny_config(dirs, str(tiny_base)), ["sum", "pcgrad"], 1))
    [folder] = sweep.list_sweeps()
    assert folder.name.endswith("-page-sweep") and (folder / sweep.SWEEP_JSON).is_file()
    doc = sweep.load(folder)
    assert [r["variant"] for r in doc["runs"]] == [{"gradient_method": "sum"}, {"gradient_method": "pcgrad"}]
    assert not [e.value for e in at.error]
    assert at.selectbox(key="sweep_choice").value == folder.name
    bar = at.get("progress")[0]
    assert "runs ended" in bar.proto.text and bar.proto.text.split(" · ")[0] in ("starting", "running")

    # a fresh session (a reload) finds the sweep in its folder, running or already done
    again = no_exception(page().run())
    assert again.selectbox(key="sweep_choice").value == folder.name
    table = again.dataframe[0].value
    assert list(table["variant"]) == ["gradient_method=sum", "gradient_method=pcgrad"]

    end = time.time() + 240
    while sw.is_live(sw.status(folder)) and time.time() < end:
        time.sleep(0.5)
    assert sweep.load(folder)["state"] == "done", sw.log_tail(folder)
    done = no_exception(page().run())
    assert "2/2 runs ended (2 done, 0 failed)" in done.get("progress")[0].proto.text
    res = sweep.results(folder)
    results = done.dataframe[1].value
    assert list(results["variant"]) == ["gradient_method=sum", "gradient_method=pcgrad"]
    assert list(results["Average"]) == [f"{row['metrics']['average']['mean']:.3f}" for row in res["rows"]]
    versus = done.dataframe[2].value  # against sum: one seed says nothing about the noise
    assert list(versus["variant"]) == ["gradient_method=pcgrad"] and list(versus["Average"]) == ["–"]
    charts = done.get("plotly_chart")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts]
    assert titles[0].startswith("Sweep ") and "Dev average per evaluation" in titles
    bars = json.loads(charts[0].proto.spec)["data"]
    assert [b["name"] for b in bars] == ["gradient_method=sum (n=1)", "gradient_method=pcgrad (n=1)"]


def test_the_page_refuses_a_bad_setting_by_name_and_a_start_beside_another_training(dirs):
    at = no_exception(page().run())
    at = start(fill(at, tiny_config(dirs, "minilm-l6"), ["sum"], 2, vary="lr=1e-5,fast"))
    assert any("setting lr='fast' is not allowed; allowed values: a number > 0" in e.value for e in at.error)
    assert sweep.list_sweeps() == []
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.acquire(runfolder.lock_path(), "20260101-000000-busy", pid=other.pid)
        at = start(fill(at, tiny_config(dirs, "minilm-l6"), ["sum"], 2))
        assert any("another training is running: run 20260101-000000-busy" in e.value for e in at.error)
        assert sweep.list_sweeps() == []
    finally:
        other.kill()
        other.wait()


def test_an_interrupted_sweep_reads_as_such_and_offers_resume(dirs):
    d = sweep.create({"max_steps": 2}, {"gradient_method": ["sum"]}, 2, dirs / "sweeps" / "20260101-000000-x")
    doc = sweep.load(d)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    doc.update(state="running", pid=dead.pid)
    doc["runs"][0].update(state="done")
    sweep.save(d, doc)
    st_ = sw.status(d)
    assert st_["state"] == "interrupted" and sw.progress(st_)[0] == 0.5
    at = no_exception(page().run())
    assert any("interrupted: 1 of 2 runs unfinished" in w.value for w in at.warning)
    assert any(b.label == "Resume sweep" for b in at.button)
