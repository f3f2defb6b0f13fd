"""Many people on one studio at once: a real `streamlit run app.py` on 127.0.0.1
and SESSIONS browser sessions, each its own websocket speaking Streamlit's protocol as the browser
does (BackMsg `rerun_script` carrying the widget states, ForwardMsg deltas back), all using the
Playground at the same moment, each with its own checkpoint, sentence and sentence pair. Every
session must get the answer for its own input: the page's numbers are compared with
`mtbert.studio.playground` called directly on the same checkpoint.

No browser: one server process plus a few threads, light enough for a busy CI machine.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import connect

from mtbert.studio import playground as pg
from mtbert.checkpoint import load_encoder, save_checkpoint
from mtbert.config import TrainConfig
from mtbert.model import ModelConfig, MultitaskBert
from streamlit_server import streamlit_app

REPO = Path(__file__).resolve().parents[1]
SESSIONS = 8
CHECKPOINTS = ("20260101-000000-tiny-a/best", "20260102-000000-tiny-b/best")
SENTENCES = ["A gorgeous, witty, seductive movie.", "Dull, overlong and utterly forgettable.",
             "The cast is fine but the script is a mess.", "I laughed, I cried, I bought the soundtrack.",
             "Nothing happens for two hours.", "A small miracle of a film.", "The sequel nobody asked for.",
             "Every frame is a painting."]
PAIRS = [("How do I learn to cook?", "What is the best way to learn cooking?"),
         ("Is the earth flat?", "Why is the sky blue?"),
         ("What is the capital of France?", "Which city is the capital of France?"),
         ("How old are you?", "What is your age?"),
         ("A man is playing a guitar.", "A man plays the guitar."),
         ("The cat sat on the mat.", "Stocks fell sharply today."),
         ("A woman is slicing an onion.", "Someone cuts an onion."),
         ("Can I learn Python in a month?", "Where do penguins live?")]
FINISHED = ForwardMsg.ScriptFinishedStatus.Value("FINISHED_SUCCESSFULLY")
TIMEOUT = 300  # seconds for one page run; generous for a loaded machine


def make_checkpoint(tiny_base: Path, folder: Path, seed: int) -> None:
    """A tiny random BERT whose answers differ visibly from one input to the next (mean pooling and
    larger head weights), so that one session receiving another's answer cannot go unnoticed."""
    folder.parent.mkdir(parents=True)
    (folder.parent / "config.json").write_text(json.dumps(TrainConfig(name=folder.parent.name).to_dict()))
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(seed)
    model = MultitaskBert(encoder, ModelConfig.from_dict({"pooling": "mean", "sts_encoding": "joint"}))
    with torch.no_grad():
        for head in model.heads().values():
            head.weight.normal_(0.0, 0.3)
    save_checkpoint(model, tok, folder, base="minilm-l6")


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_base):
    """`streamlit run app.py` on a free port, with two checkpoints in its runs folder and no
    shipped checkpoint (MTBERT_CHECKPOINTS_DIR: an empty folder), so nothing loads the real MiniLM."""
    root = tmp_path_factory.mktemp("studio")
    for seed, name in enumerate(CHECKPOINTS):
        make_checkpoint(tiny_base, root / "runs" / name, seed)
    (root / "no-shipped").mkdir()
    env = {**os.environ, "MTBERT_RUNS_DIR": str(root / "runs"), "MTBERT_CHECKPOINTS_DIR": str(root / "no-shipped")}
    env.pop("MTBERT_HUB_CHECKPOINT", None)
    with streamlit_app(env, root / "streamlit.log") as url:
        yield url, root / "runs"


class Session:
    """One browser tab on the Playground, as the Streamlit frontend talks to the server."""

    def __init__(self, url: str):
        self.url = url.replace("http://", "ws://") + "/_stcore/stream"
        self.ids: dict[str, str] = {}  # widget key -> the widget id the server gave it
        self.values: dict[str, str] = {}  # widget key -> the text (or option label) it holds
        self.options: dict[str, list[str]] = {}

    def __enter__(self) -> "Session":
        # a browser sends no keepalive pings (the server does, and they are answered); a busy
        # server must not have the connection dropped for answering one late
        self._conn = connect(self.url, subprotocols=["streamlit"], max_size=None, open_timeout=60,
                             ping_interval=None)
        self.ws = self._conn.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._conn.__exit__(*exc)

    def run(self, clicks: tuple[str, ...] = ()) -> list[tuple[str, object]]:
        """Rerun the page with the current widget values (and buttons clicked); its elements."""
        msg = BackMsg()
        msg.rerun_script.page_name = "Playground"
        for key, value in self.values.items():
            w = msg.rerun_script.widget_states.widgets.add()
            w.id, w.string_value = self.ids[key], value
        for key in clicks:
            w = msg.rerun_script.widget_states.widgets.add()
            w.id, w.trigger_value = self.ids[key], True
        self.ws.send(msg.SerializeToString())
        elements = []
        while True:
            fwd = ForwardMsg()
            fwd.ParseFromString(self.ws.recv(timeout=TIMEOUT))
            kind = fwd.WhichOneof("type")
            assert kind != "ref_hash", "the server sent a cached message reference; this client keeps no cache"
            if kind == "script_finished":
                assert fwd.script_finished == FINISHED, ForwardMsg.ScriptFinishedStatus.Name(fwd.script_finished)
                break
            if kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                el = fwd.delta.new_element
                ek = el.WhichOneof("type")
                proto = getattr(el, ek)
                assert ek != "exception", f"{proto.type}: {proto.message}"
                wid = getattr(proto, "id", "")
                if isinstance(wid, str) and wid.startswith("$$ID-"):
                    key = wid.split("-", 2)[2]
                    self.ids[key] = wid
                    if ek == "selectbox":
                        self.options[key] = list(proto.options)
                elements.append((ek, proto))
        errors = [p.body for k, p in elements if k == "alert" and p.format == p.ERROR]
        assert not errors, errors
        return elements


def sentiment_on_page(elements) -> tuple[str, str, list[float]]:
    (label, value), = [(p.label, p.body) for k, p in elements if k == "metric" and p.label.startswith("Predicted")]
    chart, = [json.loads(p.spec) for k, p in elements if k == "plotly_chart"]
    return label, value, chart["data"][0]["y"]


def pair_on_page(elements) -> tuple[str, str]:
    metrics = {p.label: p.body for k, p in elements if k == "metric"}
    return metrics["Paraphrase probability"], metrics["STS (0–5)"]


def test_concurrent_playground_sessions_each_get_their_own_answer(studio, monkeypatch):
    url, runs_dir = studio
    # what each session must see: the playground's functions called directly on its checkpoint
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(runs_dir))
    models = [pg.load_model(str(runs_dir / name)) for name in CHECKPOINTS]
    expected = []
    for i in range(SESSIONS):
        model, tok, _ = models[i % len(models)]
        s = pg.sentiment(model, tok, SENTENCES[i])
        p = pg.pair_scores(model, tok, *PAIRS[i])
        expected.append({"label": s["label_name"], "probs": s["probs"],
                         "pair": (f"{p['paraphrase']:.2f}", f"{p['similarity']:.2f}")})
    # the answers must tell the sessions apart, or a mix-up could pass unseen
    for i in range(SESSIONS):
        for j in range(i):
            assert max(abs(a - b) for a, b in zip(expected[i]["probs"], expected[j]["probs"])) > 1e-3, (i, j)
            assert expected[i]["pair"] != expected[j]["pair"], (i, j)

    start = threading.Barrier(SESSIONS, timeout=TIMEOUT)
    results: dict[int, dict] = {}
    failures: list[str] = []

    def user(i: int) -> None:
        try:
            with Session(url) as s:
                t = time.perf_counter()
                first = s.run()  # the page as it opens
                timings = {"open_s": time.perf_counter() - t}
                assert [k for k, _ in first].count("selectbox") >= 1
                mine = CHECKPOINTS[i % len(CHECKPOINTS)]
                assert mine in s.options["ckpt_a"], s.options["ckpt_a"]
                s.values["ckpt_a"] = mine
                s.run()  # the checkpoint picked
                start.wait()  # everyone asks at the same moment
                t = time.perf_counter()
                s.values["sst_text"] = SENTENCES[i]
                sst = sentiment_on_page(s.run(clicks=("sst_go",)))
                timings["sentiment_s"] = time.perf_counter() - t
                start.wait()
                t = time.perf_counter()
                s.values["para_a"], s.values["para_b"] = PAIRS[i]  # the two pair tasks' panels
                s.values["sts_a"], s.values["sts_b"] = PAIRS[i]
                pair = pair_on_page(s.run(clicks=("para_go", "sts_go")))
                timings["pair_s"] = time.perf_counter() - t
                results[i] = {"sst": sst, "pair": pair, **timings}
        except BaseException as e:  # reported below with the session's number
            failures.append(f"session {i}: {type(e).__name__}: {e}")
            start.abort()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * TIMEOUT)
    wall = time.perf_counter() - t0
    assert not failures, failures
    assert sorted(results) == list(range(SESSIONS))
    for i, r in results.items():
        label, value, probs = r["sst"]
        want = expected[i]
        assert label == f"Predicted · {CHECKPOINTS[i % len(CHECKPOINTS)]}", (i, label)
        assert value == want["label"], (i, value, want["label"])
        assert probs == pytest.approx(want["probs"], abs=1e-5), i
        assert r["pair"] == want["pair"], (i, r["pair"], want["pair"])
    slowest = {k: max(r[k] for r in results.values()) for k in ("open_s", "sentiment_s", "pair_s")}
    print(f"\n{SESSIONS} concurrent sessions, {wall:.1f} s in all; slowest: page open {slowest['open_s']:.2f} s, "
          f"sentiment answer {slowest['sentiment_s']:.2f} s, pair answer {slowest['pair_s']:.2f} s")
