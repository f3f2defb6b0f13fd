"""The studio's reliability promises and the Hub in the studio, through the pages themselves
(Streamlit's AppTest) on a tiny random BERT:

- checkpoint paths from the UI: the Playground's typed folder and pickers, the Runs page's Push,
  refuse `..`, absolute paths elsewhere and symlinks leading out, with a clear message;
- Stop and Resume on the Train page with a real trainer process: nothing but the step in flight
  can be lost, every step 1..N is recorded exactly once; Start takes over a stale lock and is
  refused, naming the run, while a live one holds it;
- the Push button against the stand-in Hub (tests/hub_stub.py), its errors, and the token (from
  the Streamlit secrets) never shown; the Playground loading the Hub checkpoints the deployment
  names (MTBERT_HUB_CHECKPOINT), and nothing else.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from hub_stub import HubStub, point_huggingface_hub_at
from mtbert import hub, lock, runfolder
from mtbert.checkpoint import load_encoder, save_checkpoint
from mtbert.config import TrainConfig
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.studio import checkpoints, runs
from mtbert.studio import playground as pg

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 90  # a page's first run imports torch; this machine may be busy
TOKEN = "hf_StudioToken0123456789abcdefSECRET"
TYPED = pg.TYPED_PATH.label
SENTENCE = "A gorgeous, witty, seductive movie."


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(d))
    monkeypatch.delenv("MTBERT_HUB_CHECKPOINT", raising=False)
    monkeypatch.setattr(checkpoints, "CHECKPOINTS_DIR", tmp_path / "shipped")  # none: the real MiniLM stays unloaded
    monkeypatch.chdir(tmp_path)  # relative paths typed in the UI start here; nothing lands in the repo
    yield d
    st.cache_resource.clear()
    st.cache_data.clear()
    owner = lock.read_lock(d / ".lock")  # a trainer a failed test left behind must not outlive it
    if owner and owner.get("pid") != os.getpid():
        try:
            os.kill(owner["pid"], signal.SIGCONT)
            os.kill(owner["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def page(name: str) -> AppTest:
    return AppTest.from_file(str(REPO / name), default_timeout=TIMEOUT)


def no_exception(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def messages(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def select(at: AppTest, key: str, label_part: str) -> AppTest:
    box = at.selectbox(key=key)
    return box.select_index(next(i for i, o in enumerate(box.options) if label_part in o)).run()


def page_text(at: AppTest) -> str:
    """Every element of the page as its protobuf text: what the browser would receive."""
    out = []

    def walk(node):
        if getattr(node, "proto", None) is not None:
            out.append(str(node.proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return "\n".join(out)


def make_run(runs_dir: Path, name: str) -> Path:
    d = runs_dir / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(TrainConfig(name=name).to_dict()))
    (d / "status.json").write_text(json.dumps({"run_id": name, "state": "finished", "pid": None}))
    return d


def make_checkpoint(tiny_base: Path, folder: Path, seed: int = 0) -> Path:
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(seed)
    return save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, folder, base="minilm-l6",
                           metrics={"dev": {"sst_acc": 0.25, "average": 0.25}})


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- checkpoint paths from the UI ------------------------------------------------------------

@pytest.fixture
def places(runs_dir, tmp_path, tiny_base) -> dict:
    """A good run checkpoint, a real checkpoint outside the allowed places, a run folder that is a
    symlink to outside, and a run whose best/ holds a weights file linked from outside."""
    good = make_checkpoint(tiny_base, make_run(runs_dir, "20260101-000000-good") / "best")
    outside_run = tmp_path / "elsewhere" / "20260102-000000-sneaky"
    outside_run.mkdir(parents=True)
    (outside_run / "config.json").write_text(json.dumps(TrainConfig(name="sneaky").to_dict()))
    make_checkpoint(tiny_base, outside_run / "best", seed=1)
    (runs_dir / outside_run.name).symlink_to(outside_run, target_is_directory=True)
    linked = make_checkpoint(tiny_base, make_run(runs_dir, "20260103-000000-linked") / "best", seed=2)
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(outside_run / "best" / "model.safetensors")
    return {"good": good, "outside": outside_run / "best", "sneaky": f"runs/{outside_run.name}/best",
            "linked": linked}


def test_safe_checkpoint_path_refuses_every_way_out(places, runs_dir):
    assert checkpoints.safe_checkpoint_path(str(places["good"])) == places["good"].resolve()
    assert checkpoints.safe_checkpoint_path("runs/20260101-000000-good/best") == places["good"].resolve()
    refused = {
        "runs/../elsewhere/20260102-000000-sneaky/best": r"'\.\.' is not allowed",
        "runs/20260101-000000-good/best/../../../elsewhere": r"'\.\.' is not allowed",
        str(places["outside"]): "no checkpoint there; allowed places: .*runs",
        "/etc": "no checkpoint there; allowed places",
        "~/.ssh": "no checkpoint there; allowed places",
        places["sneaky"]: "a symbolic link leading outside the allowed places",
        str(runs_dir / "20260102-000000-sneaky" / "best"): "a symbolic link leading outside the allowed places",
        str(places["linked"]): "model.safetensors links outside the allowed folders",
        "tester/not-offered": "no checkpoint there",
        "   ": "checkpoint path is empty",
    }
    for path, why in refused.items():
        with pytest.raises(runs.RunError, match=why):
            checkpoints.safe_checkpoint_path(path)
        with pytest.raises(runs.RunError, match=why):
            pg.load_model(path)


def test_playground_refuses_typed_and_listed_paths_leading_out(places):
    at = no_exception(page("app_pages/2_Playground.py").run())
    options = at.selectbox(key="ckpt_a").options
    assert options[-1] == TYPED and "20260102-000000-sneaky/best" in options  # listed: it is in runs/
    # what the user types; each is refused, with why, and no model is offered
    typed = {"runs/../elsewhere/20260102-000000-sneaky/best": "'..' is not allowed in a checkpoint path",
             str(places["outside"]): "no checkpoint there; allowed places:",
             "/etc": "no checkpoint there; allowed places:",
             places["sneaky"]: "a symbolic link leading outside the allowed places",
             str(places["linked"]): "model.safetensors links outside the allowed folders"}
    select(at, "ckpt_a", TYPED)
    assert any("Type the path of a checkpoint folder" in i for i in messages(at, "info"))
    for path, why in typed.items():
        at.text_input(key="ckpt_a_path").set_value(path).run()
        no_exception(at)
        errors = messages(at, "error")
        assert any(e.startswith(f"{path} cannot be loaded: ") and why in e for e in errors), (path, errors)
        assert not at.get("text_area"), path  # no sentiment box: nothing was loaded
    # the listed symlinked run fails the same way when picked
    select(at, "ckpt_a", "20260102-000000-sneaky/best")
    assert any("a symbolic link leading outside the allowed places" in e for e in messages(at, "error"))
    assert not at.get("text_area")
    # and a folder inside the allowed places, typed, works
    select(at, "ckpt_a", TYPED)
    at.text_input(key="ckpt_a_path").set_value("runs/20260101-000000-good/best").run()
    at.text_area(key="sst_text").set_value(SENTENCE)
    at.button(key="sst_go").click().run()
    no_exception(at)
    model, tok, _ = pg.load_model(str(places["good"]))
    want = pg.sentiment(model, tok, SENTENCE)
    assert [(m.label, m.value) for m in at.metric] == [
        ("Predicted · runs/20260101-000000-good/best", want["label_name"])]


def test_runs_page_push_refuses_a_checkpoint_leading_out(places, monkeypatch, tmp_path):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "ENDPOINT", "http://127.0.0.1:9")  # nothing may be sent anywhere anyway
    at = page("app_pages/3_Runs.py")
    at.secrets["HF_TOKEN"] = TOKEN
    at.run()
    for choice, why in (("20260102-000000-sneaky/best", "a symbolic link leading outside the allowed places"),
                        ("20260103-000000-linked/best", "model.safetensors links outside the allowed folders")):
        select(at, "push_checkpoint", choice)
        at.text_input(key="push_repo").set_value("tester/leak").run()
        at.button(key="push_go").click().run()
        no_exception(at)
        assert any(e.startswith("Not pushed: ") and why in e for e in messages(at, "error")), choice
    assert TOKEN not in page_text(at)


# ---- Stop and Resume from the Train page, and the lock ---------------------------------------

TRAIN = dict(epochs=2, batch_size=4, lr=1e-3, train_subset=24, eval_subset=4, train_eval_subset=4, max_length=24,
             seed=3)


def metrics_steps(run: Path) -> list[int]:
    return [r["step"] for r in runfolder.read_metrics(run)[0] if r.get("type") == "step"]


def wait_for(pred, timeout: float = 300, every: float = 0.2, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def fill_train_form(at: AppTest, tiny_base: Path, name: str) -> None:
    at.text_input(key="setting.name").set_value(name)
    at.text_input(key="setting.base_model").set_value(str(tiny_base))
    at.selectbox(key="setting.gradient_method").set_value("pcgrad")
    at.checkbox(key="setting.final_full_eval").uncheck()
    for k, v in TRAIN.items():
        at.number_input(key=f"setting.{k}").set_value(v)  # sent with the form's submit button


def test_stop_and_resume_from_the_train_page_lose_nothing(runs_dir, tiny_base, monkeypatch):
    # the trainer the page starts is born frozen (SIGSTOP), so that however fast this machine is,
    # the checks below happen while it is alive and Stop lands in the middle of the run
    frozen: list[int] = []
    spawn = runs._spawn

    def spawn_frozen(run_dir, args):
        proc = spawn(run_dir, args)
        if not frozen:  # the first trainer only; the resumed one runs freely
            os.kill(proc.pid, signal.SIGSTOP)
            frozen.append(proc.pid)
        return proc

    monkeypatch.setattr(runs, "_spawn", spawn_frozen)
    # a crashed trainer's lock (its PID is gone) must not block the studio
    (runs_dir / ".lock").write_text(json.dumps({"pid": dead_pid(), "run_id": "20260101-000000-crashed"}))
    at = no_exception(page("app_pages/1_Train.py").run())
    fill_train_form(at, tiny_base, "studio")
    button(at, "Start training").click().run()
    no_exception(at)
    assert not messages(at, "error")
    run = Path(at.session_state["watch"])
    assert run.parent == runs_dir and run.name.endswith("-studio")
    pid, = frozen
    try:
        owner = lock.read_lock(runs_dir / ".lock")
        assert owner == {"pid": pid, "run_id": run.name}  # the stale lock was taken over

        # a second browser session meanwhile: Start is refused, naming the live run; nothing is created
        other = page("app_pages/1_Train.py").run()
        fill_train_form(other, tiny_base, "second")
        button(other, "Start training").click().run()
        errors = messages(other, "error")
        assert any(f"Not started: another training is running: run {run.name}" in e for e in errors), errors
        assert sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) == [run.name]
    finally:
        os.kill(pid, signal.SIGCONT)

    # freeze it again once two steps are recorded, press Stop, let it go on
    wait_for(lambda: len(metrics_steps(run)) >= 2, every=0.002, what="two training steps")
    os.kill(pid, signal.SIGSTOP)
    try:
        in_flight = max(metrics_steps(run))
        at.run()
        button(at, "Stop").click().run()
        no_exception(at)
        assert not messages(at, "error")
    finally:
        os.kill(pid, signal.SIGCONT)
    status = wait_for(lambda: (s := runs.read_status(run))["state"] not in runs.LIVE_STATES and s, what="the stop")
    assert status["state"] == "stopped", status
    stopped_at = status["step"]
    total = status["total_steps"]
    assert in_flight <= stopped_at <= in_flight + 1 < total, (in_flight, status)  # the step in flight, no more
    saved = json.loads((run / "last" / "trainer_state.json").read_text())
    assert saved["step"] == stopped_at
    assert metrics_steps(run) == list(range(1, stopped_at + 1))
    wait_for(lambda: runs.active_run() is None, what="the lock's release")

    at.run()
    assert any(f"Stopped at step {stopped_at}" in w for w in messages(at, "warning"))
    button(at, "Resume").click().run()
    no_exception(at)
    assert not messages(at, "error")
    status = wait_for(lambda: (s := runs.read_status(run))["state"] not in runs.LIVE_STATES and s,
                      what="the resumed run's end")
    assert status["state"] == "finished", status
    assert status["step"] == total
    assert metrics_steps(run) == list(range(1, total + 1))  # every step exactly once: none lost, none repeated
    log = (run / "train.log").read_text()
    assert "[stop]" in log and "[resume]" in log
    wait_for(lambda: runs.active_run() is None, what="the lock's release")
    at.run()
    assert any(f"Checkpoint: **{run.name}/best**" in s for s in messages(at, "success"))
    print(f"\nstopped at step {stopped_at} (step {in_flight} recorded when Stop was pressed), "
          f"resumed, finished at step {total}; every step recorded once")


# ---- the Hub in the studio -------------------------------------------------------------------

@pytest.fixture
def stub_hub(monkeypatch, tmp_path):
    with HubStub(token=TOKEN) as server:
        point_huggingface_hub_at(monkeypatch, server.url, tmp_path)
        yield server


@pytest.fixture
def run_checkpoint(runs_dir, tiny_base) -> Path:
    folder = make_checkpoint(tiny_base, make_run(runs_dir, "20260101-000000-tiny") / "best")
    (folder / "trainer_state.json").write_text("{}")  # resume state: stays local
    return folder


def push_page(choice: str, repo_id: str, token: str | None = None, private: bool = False) -> AppTest:
    at = page("app_pages/3_Runs.py")
    if token is not None:
        at.secrets["HF_TOKEN"] = token
    at.run()
    select(at, "push_checkpoint", choice)
    at.text_input(key="push_repo").set_value(repo_id)
    if private:
        at.checkbox(key="push_private").check()
    at.button(key="push_go").click().run()
    return no_exception(at)


def test_push_button_sends_the_checkpoint_with_the_token_from_secrets(stub_hub, run_checkpoint):
    at = push_page("20260101-000000-tiny/best", "tester/from-studio", token=TOKEN, private=True)
    assert any("Token: HF_TOKEN in the Streamlit secrets" in c for c in messages(at, "caption"))
    url = f"{stub_hub.url}/tester/from-studio"
    assert messages(at, "success") == [f"Pushed 20260101-000000-tiny/best to {url}"]
    repo = stub_hub.repo("tester/from-studio")
    local = {f.name: f.read_bytes() for f in run_checkpoint.iterdir() if not f.name.startswith("trainer_state")}
    assert set(repo.files) == set(local) | {"README.md"}
    assert {n: repo.files[n] for n in local} == local and repo.private is True
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in stub_hub.requests)  # secrets' token
    text = page_text(at)
    assert "tester/from-studio" in text and TOKEN not in text  # the page as sent to the browser
    sent = b"".join(r.body for r in stub_hub.requests) + b"".join(repo.files.values())
    assert TOKEN.encode() not in sent


def test_push_button_explains_failures_without_the_token(run_checkpoint, monkeypatch, tmp_path):
    wrong = "hf_WrongToken9876543210zyxwvuSECRET"
    with HubStub(token=TOKEN, echo_auth=True) as server:  # a server that quotes the credentials back
        point_huggingface_hub_at(monkeypatch, server.url, tmp_path)
        at = push_page("20260101-000000-tiny/best", "tester/refused", token=wrong)
        errors = messages(at, "error")
        assert any(e.startswith("Not pushed: push to tester/refused failed: the token was refused (401)")
                   for e in errors), errors
        text = page_text(at)
        assert "tester/refused" in text and wrong not in text
        assert server.repos == {}

        at = push_page("20260101-000000-tiny/best", "tester/none")  # no secret, no HF_TOKEN, no login
        assert any("No token found" in c for c in messages(at, "caption"))
        assert any(e.startswith("Not pushed: no Hugging Face token") for e in messages(at, "error"))

        at = push_page("20260101-000000-tiny/best", "not a repo id", token=TOKEN)
        assert any(e.startswith("Not pushed: ") and "'not a repo id'" in e for e in messages(at, "error"))
        at = push_page("20260101-000000-tiny/best", "  ", token=TOKEN)
        assert any("type the Hub repo to push to, as USER/NAME" in e for e in messages(at, "error"))
        assert server.repos == {} and TOKEN not in page_text(at)


def test_playground_loads_exactly_the_hub_checkpoints_it_offers(stub_hub, run_checkpoint, monkeypatch):
    hub.push_checkpoint(run_checkpoint, "tester/tiny-hub", token=TOKEN)
    monkeypatch.setenv("MTBERT_HUB_CHECKPOINT", "tester/tiny-hub")
    at = no_exception(page("app_pages/2_Playground.py").run())
    options = at.selectbox(key="ckpt_a").options
    assert options[0] == "tester/tiny-hub (Hugging Face Hub)"  # what the deployment names comes first
    assert any(c.startswith("tester/tiny-hub from the Hugging Face Hub: ") for c in messages(at, "caption"))
    at.text_area(key="sst_text").set_value(SENTENCE)
    at.button(key="sst_go").click().run()
    no_exception(at)
    model, tok, _ = pg.load_model(str(run_checkpoint))  # the same weights, loaded from the folder
    want = pg.sentiment(model, tok, SENTENCE)
    assert [(m.label, m.value) for m in at.metric] == [("Predicted · tester/tiny-hub", want["label_name"])]
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["data"][0]["y"] == pytest.approx(want["probs"], abs=1e-6)

    # a Hub id the deployment did not name is a path like any other: refused, and never fetched
    asked = len(stub_hub.requests)
    select(at, "ckpt_a", TYPED)
    at.text_input(key="ckpt_a_path").set_value("tester/other").run()
    assert any(e.startswith("tester/other cannot be loaded: tester/other: no checkpoint there")
               for e in messages(at, "error"))
    with pytest.raises(runs.RunError, match="no checkpoint there"):
        pg.load_model("tester/other")
    assert all("tester/other" not in r.path for r in stub_hub.requests[asked:])


def test_playground_reports_a_malformed_hub_setting_and_keeps_the_local_checkpoints(run_checkpoint, monkeypatch):
    monkeypatch.setenv("MTBERT_HUB_CHECKPOINT", "tester/ok, not/a/repo")
    at = no_exception(page("app_pages/2_Playground.py").run())
    assert any("MTBERT_HUB_CHECKPOINT: 'not/a/repo' is not a Hub model repo id" in e for e in messages(at, "error"))
    assert at.selectbox(key="ckpt_a").options[0] == "20260101-000000-tiny/best"
    assert any(c.startswith("base minilm-l6, cls pooling; dev: ") and "SST accuracy 0.250" in c
               for c in messages(at, "caption"))  # the local checkpoint loaded
    with pytest.raises(runs.RunError):
        pg.load_model("tester/ok")  # a malformed setting offers nothing from the Hub
