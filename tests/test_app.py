"""Every studio page's logic through Streamlit's AppTest, on hand-made run folders and a tiny model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from mtbert import lock
from mtbert.checkpoint import load_encoder, save_checkpoint
from mtbert.config import TrainConfig, read_config_file
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.studio import settings

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60  # the first page run imports torch


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(d))
    monkeypatch.chdir(tmp_path)  # nothing the pages write may land in the repository
    yield d
    st.cache_resource.clear()
    st.cache_data.clear()


def page(name: str) -> AppTest:
    return AppTest.from_file(str(REPO / name), default_timeout=TIMEOUT)


def fake_run(runs_dir: Path, name: str, state: str = "finished", pid: int | None = None, records=(), **status):
    d = runs_dir / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TrainConfig(name=name, gradient_method="pcgrad").to_dict()))
    (d / "status.json").write_text(json.dumps({"run_id": name, "state": state, "pid": pid, **status}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def records(n: int = 5) -> list[dict]:
    steps = [{"type": "step", "step": i, "epoch": 0, "loss": {"sst": 1.6, "para": 0.7, "sts": 2.0 - 0.1 * i},
              "loss_total": 4.3, "cos": {"sst/para": -0.1, "sst/sts": 0.2, "para/sts": 0.3},
              "conflicts": 1, "projections": 2, "task_weights": {"sst": 1.0, "para": 1.2, "sts": 1.0}}
             for i in range(1, n + 1)]
    return steps + [{"type": "eval", "split": "dev", "step": n, "sst_acc": 0.4, "para_acc": 0.7, "sts_corr": 0.8,
                     "average": 0.63}]


def active_run(runs_dir: Path, name: str) -> Path:
    """A run that looks alive: its status and the lock name this (live) test process."""
    d = fake_run(runs_dir, name, state="running", pid=os.getpid(), records=records(), step=5, total_steps=10,
                 epoch=0, epochs=1, eta_s=65.0, examples_per_s=12.5)
    lock.acquire(runs_dir / ".lock", name)
    return d


def messages(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def no_exception(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


# ---- home --------------------------------------------------------------------------------------------

def test_home_shows_the_machine_runs_and_checkpoints(runs_dir):
    fake_run(runs_dir, "20260101-000000-old", records=records())
    active_run(runs_dir, "20260102-000000-now")
    at = no_exception(page("app.py").run())
    text = " ".join(m.value for m in at.markdown)
    assert "**Device:** CPU only" in text or "**Device:** CUDA GPU" in text
    assert "`minilm-l6`: available (packaged weights, sha256 verified)" in text
    assert "shipped sample: `data/sample`" in text and str(REPO) not in text  # no paths of the server
    assert any("20260102-000000-now" in m for m in messages(at, "info"))
    runs_table, ckpt_table = (df.value for df in at.dataframe)
    assert list(runs_table["run"]) == ["20260102-000000-now", "20260101-000000-old"]
    assert "minilm-l6 (plain base model, untrained heads)" in list(ckpt_table["checkpoint"])


# ---- train -------------------------------------------------------------------------------------------

def test_train_form_starts_at_the_quick_demo_and_applies_the_defaults():
    """A newcomer's form holds the quick CPU demo (configs/quick-demo.yaml); "defaults" resets it."""
    at = no_exception(page("app_pages/1_Train.py").run())
    demo = read_config_file(REPO / "configs" / "quick-demo.yaml")
    assert at.selectbox(key="preset").value == "quick CPU demo"
    assert at.number_input(key="setting.time_budget_s").value == demo["time_budget_s"]
    assert at.number_input(key="setting.lr").value == demo["lr"]
    assert at.selectbox(key="setting.pooling").value == demo["pooling"] == "mean"
    assert at.text_input(key="setting.name").value == "quick-demo"
    at.selectbox(key="preset").set_value(next(o for o in at.selectbox(key="preset").options
                                              if o.startswith("defaults"))).run()
    defaults = TrainConfig()
    assert at.number_input(key="setting.epochs").value == defaults.epochs
    assert at.number_input(key="setting.lr").value == defaults.lr
    assert at.selectbox(key="setting.gradient_method").value == defaults.gradient_method
    assert at.multiselect(key="setting.tasks").value == ["sst", "para", "sts"]
    assert at.number_input(key="setting.max_steps").value is None
    assert at.number_input(key="setting.time_budget_s").value is None
    assert "No run yet" in " ".join(c.value for c in at.caption)


def test_train_form_widgets_follow_the_settings_declarations():
    """Each widget's label, help, choices and bounds are those declared beside the setting in
    TrainConfig (an open bound is the widget's limit too, and TrainConfig refuses the bound itself)."""
    from dataclasses import fields

    from mtbert.config import allowed_values, optional

    declared = {f.name: f for f in fields(TrainConfig)}
    at = no_exception(page("app_pages/1_Train.py").run())
    widget = {"choice": at.selectbox, "tasks": at.multiselect, "bool": at.checkbox, "int": at.number_input,
              "float": at.number_input, "list": at.text_input, "text": at.text_input}
    numbers = 0
    for s in settings.settings_spec():
        f = declared[s.name]
        m, w = f.metadata, widget[s.kind](key=f"setting.{s.name}")
        assert w.label == m["label"] and w.help.startswith(m["help"]), s.name
        if s.kind not in ("bool", "tasks") and allowed_values(f):
            assert w.help.endswith(f"Allowed: {allowed_values(f)}"), s.name
        if s.kind == "choice":
            assert w.options == ["(none)"] * optional(f) + list(m["choices"]), s.name
        if s.kind in ("int", "float") and m["range"]:
            r, numbers = m["range"], numbers + 1
            assert w.min == r.low and w.max == (None if r.high is None or r.high_open else r.high), s.name
    assert at.multiselect(key="setting.tasks").options == ["sst", "para", "sts"]
    assert numbers >= 20


def test_train_page_attaches_to_the_active_run_and_refuses_a_second_start(runs_dir):
    active_run(runs_dir, "20260101-000000-busy")
    at = no_exception(page("app_pages/1_Train.py").run())
    assert any("20260101-000000-busy" in h.value for h in at.subheader)
    bar = at.get("progress")[0]
    assert "running · step 5/10 · epoch 1/1 · ETA 1:05 · 12.5 examples/s" in bar.proto.text
    assert len(at.get("plotly_chart")) == 5  # loss, dev, PCGrad conflicts, gradient cosine, task weights
    assert any(b.label == "Stop" for b in at.button)
    button(at, "Start training").click().run()
    errors = messages(at, "error")
    assert any("Not started: another training is running: run 20260101-000000-busy" in e for e in errors), errors
    assert [p.name for p in runs_dir.iterdir() if p.is_dir()] == ["20260101-000000-busy"]


def test_train_refuses_a_bad_setting_by_name(runs_dir):
    at = page("app_pages/1_Train.py").run()
    at.multiselect(key="setting.tasks").set_value([])
    button(at, "Start training").click().run()
    assert any("Not started: setting tasks=[] is not allowed" in e for e in messages(at, "error"))
    assert not any(p.is_dir() for p in runs_dir.iterdir())


def test_finished_run_shows_the_seed_table_and_its_checkpoint(runs_dir):
    fake_run(runs_dir, "20260101-000000-done", records=records(), step=5, total_steps=5, best_checkpoint="best",
             results={"train": {"para_acc": 0.75, "sst_acc": 0.5, "sts_corr": 0.9, "average": 0.72},
                      "dev": {"para_acc": 0.7, "sst_acc": 0.45, "sts_corr": 0.8, "average": 0.65}})
    at = no_exception(page("app_pages/1_Train.py").run())
    assert any("Checkpoint: **20260101-000000-done/best**" in s for s in messages(at, "success"))
    table = at.dataframe[-1].value
    assert list(table[""]) == ["Train", "Dev"] and list(table["Average"]) == [0.72, 0.65]
    assert not any(b.label == "Stop" for b in at.button)


def test_failed_run_shows_its_error_and_a_stopped_one_offers_resume(runs_dir):
    fake_run(runs_dir, "20260101-000000-bad", state="failed", error="the sst loss became nan at step 3")
    at = no_exception(page("app_pages/1_Train.py").run())
    assert any("The run failed: the sst loss became nan at step 3" in e for e in messages(at, "error"))
    stopped = fake_run(runs_dir, "20260102-000000-paused", state="stopped", step=7)
    (stopped / "last").mkdir()
    (stopped / "last" / "trainer_state.json").write_text("{}")
    at = no_exception(page("app_pages/1_Train.py").run())
    assert any("Stopped at step 7" in w for w in messages(at, "warning"))
    assert any(b.label == "Resume" for b in at.button)


def test_data_picker_counts_rows_and_warns_about_missing_files(tmp_path):
    at = no_exception(page("app_pages/1_Train.py").run())
    assert any("train: sst 3,000, para 3,000, sts 3,000" in m.value for m in at.markdown)  # the shipped sample
    at.radio(key="data_source").set_value("another folder").run()
    at.text_input(key="data_folder").set_value(str(tmp_path / "nowhere")).run()
    assert any("nowhere: not a folder" in e for e in messages(at, "error"))
    only_sst = tmp_path / "only-sst"
    only_sst.mkdir()
    (only_sst / "ids-sst-train.csv").write_text("\tid\tsentence\tsentiment\n0\ta\tgood\t3\n")
    at.text_input(key="data_folder").set_value(str(only_sst)).run()
    warning = " ".join(messages(at, "warning"))
    assert "A run would fail: no usable data in: train para (quora-train.csv)" in warning


def write_moods(folder: Path, n_train: int = 40, n_dev: int = 20) -> tuple[Path, Path]:
    """A 3-class sentence task of one's own: comma-separated, the label by its name."""
    moods = ("negative", "neutral", "positive")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n in (("train", n_train), ("dev", n_dev)):
        path = folder / f"moods-{split}.csv"
        path.write_text("id,text,mood\n" + "".join(f"{split}{i},\"Sentence {i}, rather {moods[i % 3]}.\",{moods[i % 3]}\n"
                                                   for i in range(n)))
        out.append(path)
    return out[0], out[1]


def test_train_page_adds_a_task_from_a_file_and_starts_it_with_the_others(runs_dir, tmp_path, monkeypatch):
    from mtbert.studio import runs
    from mtbert.tasks import read_tasks_file

    started = []
    monkeypatch.setattr(runs, "start_run", lambda config: started.append(config) or runs_dir / "never-made")
    train, dev = write_moods(tmp_path / "mine")
    with open(dev, "a") as f:
        f.write("dev20,,neutral\n")  # a bad line, shown by its line number
    at = no_exception(page("app_pages/1_Train.py").run())
    at.text_input(key="task_train_path").set_value(str(train)).run()
    no_exception(at)
    assert any("Detected: delimited, comma-separated with a header row" in m.value for m in at.markdown)
    preview = next(df.value for df in at.dataframe if "mood" in df.value.columns)
    assert list(preview.columns) == ["id", "text", "mood"] and len(preview) == 10
    assert preview["text"][0] == "Sentence 0, rather negative."
    assert at.session_state["task_name"] == "moods" and at.session_state["task_classes"] == 3
    assert at.text_input(key="task_label_names").value == "negative, neutral, positive"
    assert at.selectbox(key="task_head").value == "linear" and at.selectbox(key="task_loss").value == "ce"
    assert any("needs a dev file" in e for e in messages(at, "error"))
    assert button(at, "Add task").disabled
    at.text_input(key="task_dev_path").set_value(str(dev)).run()
    counts = next(df.value for df in at.dataframe if "usable" in df.value.columns and "skipped" in df.value.columns)
    assert counts.to_dict("records") == [{"file": "train", "rows": 40, "usable": 40, "skipped": 0},
                                         {"file": "dev", "rows": 21, "usable": 20, "skipped": 1}]
    bad = next(df.value for df in at.dataframe if "why" in df.value.columns)
    assert bad.to_dict("records") == [{"file": "dev", "line": 22, "why": "empty text"}]
    # a mapping the definition refuses: the field's message, and no Add
    at.selectbox(key="task_loss").set_value("ce").run()
    at.number_input(key="task_classes").set_value(2).run()
    assert at.selectbox(key="task_loss").value == "bce"  # two classes: one logit
    assert any("field label_names=('negative', 'neutral', 'positive') is not allowed; allowed values: 2 distinct"
               in e for e in messages(at, "error")), messages(at, "error")
    assert button(at, "Add task").disabled
    at.number_input(key="task_classes").set_value(3).run()
    at.text_input(key="task_title").set_value("Mood").run()
    assert not messages(at, "error") and not button(at, "Add task").disabled
    button(at, "Add task").click().run()
    no_exception(at)
    assert any("Added task moods" in s for s in messages(at, "success"))
    assert any(m.value.startswith("**moods** (Mood) · sentence → 3 classes") for m in at.markdown)
    tasks = at.multiselect(key="setting.tasks")
    assert "moods" in tasks.options and tasks.value == ["sst", "para", "sts", "moods"]
    assert at.text_input(key="task_train_path").value == ""  # a fresh draft
    tasks.set_value(["sst", "moods"])  # in the form: sent with its submit button
    button(at, "Start training").click().run()
    no_exception(at)
    assert len(started) == 1, messages(at, "error")
    config = started[0]
    assert config["tasks"] == ["sst", "moods"] and Path(config["tasks_file"]).parent == runs_dir / "task-files"
    specs, keep = read_tasks_file(config["tasks_file"])
    assert keep and [(s.name, s.title, s.classes, s.files["dev"]) for s in specs] == [("moods", "Mood", 3, str(dev))]
    assert [s.name for s in TrainConfig.from_dict(config).task_specs()] == ["sst", "moods"]  # the trainer takes it


def test_train_page_splits_a_dev_part_off_and_removes_an_added_task(runs_dir, tmp_path, monkeypatch):
    from mtbert.studio import runs

    started = []
    monkeypatch.setattr(runs, "start_run", lambda config: started.append(config) or runs_dir / "never-made")
    train, _ = write_moods(tmp_path / "mine", n_train=50)
    at = page("app_pages/1_Train.py").run()
    at.text_input(key="task_train_path").set_value(str(train)).run()
    at.radio(key="task_dev_source").set_value("a part of the train file").run()
    no_exception(at)
    counts = next(df.value for df in at.dataframe if "skipped" in df.value.columns)
    assert counts.to_dict("records") == [{"file": "train (whole file)", "rows": 50, "usable": 50, "skipped": 0},
                                         {"file": "train part", "rows": 40, "usable": 40, "skipped": 0},
                                         {"file": "dev part", "rows": 10, "usable": 10, "skipped": 0}]
    button(at, "Add task").click().run()
    added = at.session_state["own_tasks"][0]["files"]
    assert all(Path(f).parent == runs_dir / "task-data" for f in added.values())
    button(at, "Remove").click().run()
    no_exception(at)
    assert at.session_state["own_tasks"] == [] and "moods" not in at.multiselect(key="setting.tasks").options
    button(at, "Start training").click().run()
    assert started[0].get("tasks_file") is None and started[0]["tasks"] == ["sst", "para", "sts"]


# ---- playground -----------------------------------------------------------------------------------

@pytest.fixture
def checkpoint(runs_dir, tiny_base) -> str:
    run = fake_run(runs_dir, "20260101-000000-tiny")
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(0)
    save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, run / "best", base=str(tiny_base))
    return "20260101-000000-tiny/best"


def select(at: AppTest, key: str, name: str) -> None:
    """Pick the option whose label is `name` or starts with `name (` (the shipped `minilm-l6-heads`
    must not be taken for the base model `minilm-l6`)."""
    box = at.selectbox(key=key)
    box.select_index(next(i for i, o in enumerate(box.options) if o == name or o.startswith(name + " ("))).run()


def test_playground_sentiment_compare_and_bad_input(checkpoint):
    at = no_exception(page("app_pages/2_Playground.py").run())
    select(at, "ckpt_a", checkpoint)
    at.text_area(key="sst_text").set_value("   ")
    at.button(key="sst_go").click().run()
    assert any("only whitespace" in w for w in messages(at, "warning"))
    at.text_area(key="sst_text").set_value("A gorgeous, witty, seductive movie.")
    at.button(key="sst_go").click().run()
    labels = {"very negative", "negative", "neutral", "positive", "very positive"}
    assert [m.value in labels for m in at.metric] == [True]
    assert at.metric[0].label == f"Predicted · {checkpoint}"
    at.toggle(key="compare").set_value(True).run()
    select(at, "ckpt_b", "minilm-l6")
    assert any("UNTRAINED task heads" in w for w in messages(at, "warning"))  # the base model says what it is
    at.button(key="sst_go").click().run()
    assert [m.label for m in at.metric] == [f"Predicted · {checkpoint}", "Predicted · minilm-l6"]
    no_exception(at)


def test_playground_pair_attention_and_long_input(checkpoint):
    at = page("app_pages/2_Playground.py").run()
    select(at, "ckpt_a", checkpoint)
    at.text_input(key="para_a").set_value("How old are you?")
    at.text_input(key="para_b").set_value("")
    at.button(key="para_go").click().run()
    assert any("The second sentence is empty" in w for w in messages(at, "warning"))
    at.text_input(key="para_b").set_value("What is your age?").run()
    at.button(key="para_go").click().run()
    at.text_input(key="sts_a").set_value("How old are you?")
    at.text_input(key="sts_b").set_value("What is your age?")
    at.button(key="sts_go").click().run()
    values = {m.label: float(m.value) for m in at.metric}
    assert 0 <= values["Paraphrase probability"] <= 1 and 0 <= values["STS (0–5)"] <= 5
    at.text_input(key="attn_a").set_value("word " * 600)
    at.button(key="attn_go").click().run()
    no_exception(at)
    assert any("602 tokens" in i and "cut" in i for i in messages(at, "info"))  # visible truncation
    assert at.slider(key="attn_layer").max == 1 and at.slider(key="attn_head").max == 3
    assert len(at.get("iframe")) == 1  # the bertviz view


def test_playground_opens_an_example_sent_from_another_page_and_answers_it(runs_dir, checkpoint):
    """The Evaluate page's error browser stores a prefill and switches page: the Playground picks that
    checkpoint, fills the task's inputs and shows the answer without another click."""
    from mtbert.studio import playground as pg

    path = str(runs_dir / checkpoint)
    at = page("app_pages/2_Playground.py")
    at.session_state[pg.PREFILL_KEY] = pg.prefill(path, "para", "How old are you?", "What is your age?")
    at.run()
    no_exception(at)
    assert at.selectbox(key="ckpt_a").value.path == path
    assert (at.text_input(key="para_a").value, at.text_input(key="para_b").value) == ("How old are you?",
                                                                                        "What is your age?")
    model, tok, _ = pg.load_model(path)
    expected = pg.task_answer(model, tok, "para", "How old are you?", "What is your age?")
    assert [m.value for m in at.metric] == [f"{expected['value']:.2f}"]
    at.run()  # the answer was asked for once: it stays, and nothing is recomputed into a second answer
    assert len(at.metric) == 1 and pg.PREFILL_KEY not in at.session_state


def test_playground_answers_in_the_chosen_arithmetic(runs_dir, checkpoint):
    from mtbert.studio import playground as pg

    at = page("app_pages/2_Playground.py").run()
    select(at, "ckpt_a", checkpoint)
    at.selectbox(key="precision").set_value("int8").run()
    at.text_area(key="sst_text").set_value("A gorgeous, witty, seductive movie.")
    at.button(key="sst_go").click().run()
    no_exception(at)
    model, tok, meta = pg.load_model(str(runs_dir / checkpoint), precision="int8")
    assert meta["precision"] == "int8" and getattr(model, "precision", None) == "int8"
    expected = pg.task_answer(model, tok, "sst", "A gorgeous, witty, seductive movie.")
    assert [m.value for m in at.metric] == [expected["top"]]
    assert f"probability {expected['value'][expected['top']]:.2f}" in [c.value for c in at.caption]


def test_playground_reports_a_checkpoint_that_cannot_load(runs_dir):
    broken = fake_run(runs_dir, "20260101-000000-broken")
    (broken / "best").mkdir()
    (broken / "best" / "mtbert.json").write_text("{not json")
    at = page("app_pages/2_Playground.py").run()
    select(at, "ckpt_a", "20260101-000000-broken/best")
    no_exception(at)
    assert any("20260101-000000-broken/best cannot be loaded" in e for e in messages(at, "error"))


# ---- runs ------------------------------------------------------------------------------------------

def test_runs_page_table_overlay_and_confirmed_delete(runs_dir):
    fake_run(runs_dir, "20260101-000000-a", records=records(3))
    fake_run(runs_dir, "20260102-000000-b", records=records(6))
    active_run(runs_dir, "20260103-000000-live")
    at = no_exception(page("app_pages/3_Runs.py").run())
    table = at.dataframe[0].value
    assert list(table["run"]) == ["20260103-000000-live", "20260102-000000-b", "20260101-000000-a"]
    assert list(table["gradient_method"]) == ["pcgrad"] * 3 and list(table["Average"]) == [0.63] * 3
    assert len(at.get("plotly_chart")) == 3  # total loss, dev average, task weights
    at.selectbox(key="delete_choice").set_value("20260101-000000-a").run()
    at.button(key="delete_ask").click().run()
    assert any("Delete run **20260101-000000-a**" in w for w in messages(at, "warning"))
    assert (runs_dir / "20260101-000000-a").is_dir()  # nothing happens before the confirmation
    at.button(key="delete_yes").click().run()
    assert not (runs_dir / "20260101-000000-a").exists()
    at.selectbox(key="delete_choice").set_value("20260103-000000-live").run()
    at.button(key="delete_ask").click().run()
    at.button(key="delete_yes").click().run()
    assert any("active; stop it before deleting" in e for e in messages(at, "error"))
    assert (runs_dir / "20260103-000000-live").is_dir()


def test_runs_page_without_runs():
    at = no_exception(page("app_pages/3_Runs.py").run())
    assert "No runs in" in at.caption[0].value


def test_train_form_survives_a_visit_to_another_page():
    at = page("app.py").run()
    at.switch_page("app_pages/1_Train.py").run()
    at.selectbox(key="preset").set_value("seed (CS224N report)").run()  # away from the quick demo's values
    at.radio(key="data_source").set_value("another folder").run()
    at.switch_page("app_pages/3_Runs.py").run()
    at.switch_page("app_pages/1_Train.py").run()
    no_exception(at)
    assert at.selectbox(key="preset").value == "seed (CS224N report)"
    assert at.number_input(key="setting.lr").value == TrainConfig().lr != settings.preset_values("quick CPU demo")["lr"]
    assert at.radio(key="data_source").value == "another folder"


# ---- the Hub push section and checkpoint paths (more in test_studio_reliability.py) -------------

def test_runs_page_push_section_names_where_the_token_comes_from_never_the_token(runs_dir, tiny_base, monkeypatch):
    from mtbert.studio import checkpoints

    monkeypatch.setattr(checkpoints, "CHECKPOINTS_DIR", runs_dir.parent / "no-shipped")
    fake_run(runs_dir, "20260101-000000-early")  # no checkpoint yet
    at = no_exception(page("app_pages/3_Runs.py").run())
    assert "No checkpoint to push yet" in " ".join(c.value for c in at.caption)
    run = fake_run(runs_dir, "20260102-000000-tiny")
    encoder, tok = load_encoder(tiny_base, max_length=32)
    save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, run / "best", base=str(tiny_base))
    token = "hf_EnvToken0123456789abcdefSECRET"
    monkeypatch.setenv("HF_TOKEN", token)
    at = no_exception(page("app_pages/3_Runs.py").run())
    assert at.selectbox(key="push_checkpoint").options == ["20260102-000000-tiny/best"]
    captions = " ".join(c.value for c in at.caption)
    assert "Token: the HF_TOKEN environment variable." in captions and token not in captions
    at.text_input(key="push_repo").set_value("")
    at.button(key="push_go").click().run()
    assert any("Not pushed: type the Hub repo to push to, as USER/NAME" in e for e in messages(at, "error"))


def test_playground_offers_a_typed_folder_and_refuses_one_outside(runs_dir, checkpoint, monkeypatch, tmp_path):
    from mtbert.studio import checkpoints

    monkeypatch.setattr(checkpoints, "CHECKPOINTS_DIR", tmp_path / "no-shipped")
    at = no_exception(page("app_pages/2_Playground.py").run())
    select(at, "ckpt_a", "another checkpoint folder (type its path)")
    at.text_input(key="ckpt_a_path").set_value(f"runs/{checkpoint}").run()
    no_exception(at)
    assert any(c.value.startswith("base ") for c in at.caption)  # loaded: the model's description
    at.text_input(key="ckpt_a_path").set_value(str(tmp_path)).run()
    assert any(e.startswith(f"{tmp_path} cannot be loaded: ") and "no checkpoint there; allowed places" in e
               for e in messages(at, "error"))


# ---- evaluate --------------------------------------------------------------------------------------

def run_until(at: AppTest, done, timeout: float = 120) -> AppTest:
    """Rerun the page until `done(at)`: the evaluation runs in a background thread."""
    import time

    deadline = time.time() + timeout
    while not done(at):
        assert time.time() < deadline, "the evaluation did not finish"
        time.sleep(0.5)
        at.run()
    return at


def has_results(at: AppTest) -> bool:
    return any(h.value == "Results" for h in at.subheader)


def test_evaluate_page_scores_a_split_and_compares_two_checkpoints(runs_dir, checkpoint, tiny_base):
    from mtbert import analysis
    from mtbert.data import SAMPLE_DIR, load_split
    from mtbert.studio import playground as pg

    at = page("app_pages/4_Evaluate.py").run()
    no_exception(at)
    select(at, "ev_ckpt_a", checkpoint)
    at.multiselect(key="ev_tasks").set_value(["sst", "sts"]).run()
    at.button(key="ev_go").click().run()
    run_until(at, has_results)
    no_exception(at)
    model, tok, _ = pg.load_model(str(runs_dir / checkpoint))
    data = {t: x for t, (x, _) in load_split(SAMPLE_DIR, "dev", [model.cfg.task("sst")]).items()}
    expected = analysis.summary(analysis.predict_task(model, tok, "sst", data["sst"]))
    shown = {m.label: m.value for m in at.metric}
    assert shown["sst_acc"] == f"{expected['sst_acc']:.3f}"
    assert [t.label for t in at.tabs] == [model.cfg.task("sst").title, model.cfg.task("sts").title]

    # a second checkpoint: the same tiny encoder, other heads
    other = fake_run(runs_dir, "20260102-000000-other")
    encoder, tok2 = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(1)
    save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok2, other / "best", base=str(tiny_base))
    at.toggle(key="ev_compare").set_value(True).run()
    select(at, "ev_ckpt_b", "20260102-000000-other/best")
    at.button(key="ev_go").click().run()
    run_until(at, lambda a: has_results(a) and any("McNemar" in m.value for m in a.markdown))
    no_exception(at)
    assert any("bootstrap" in m.value for m in at.markdown)  # the regression task's interval
    assert all(m.delta is not None for m in at.metric)


def test_evaluate_page_says_what_is_wrong_with_a_file(runs_dir, checkpoint):
    at = page("app_pages/4_Evaluate.py").run()
    select(at, "ev_ckpt_a", checkpoint)
    at.radio(key="ev_data_kind").set_value("a labelled file of one task").run()
    at.button(key="ev_go").click().run()
    no_exception(at)
    assert any("Choose a labelled file first" in w for w in messages(at, "warning"))
