"""The Gradio playground, launched for real on 127.0.0.1 and driven with gradio_client: it answers
what mtbert.studio.playground answers, for a local checkpoint and for one pulled from a (stand-in) Hub
repo named by MTBERT_HUB_CHECKPOINT, and turns bad input into the playground's own messages. Its
API names checkpoints (never a folder of the server) and every value it returns."""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch

from hub_stub import HubStub, point_huggingface_hub_at
from mtbert import hub
from mtbert.studio import playground as pg
from mtbert.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from mtbert.model import ModelConfig, MultitaskBert

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")  # gradio's pandas use
TOKEN = "hf_GradioTestToken_SECRET"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", None}
HUB_ID = "tester/tiny-for-gradio"
LOCAL = "20261125-120000-tiny/best"  # the run checkpoint, by the name the app offers it under
BROKEN = "20261125-110000-broken/best"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    """A run folder with a tiny checkpoint, the same checkpoint on the stand-in Hub, and the app."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("gradio")
    outside = []  # every host looked up or connected to that is not this machine: analytics, CDNs, the Hub
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kw):
        if host not in LOCAL_HOSTS:
            outside.append(host)
            raise socket.gaierror(f"test: no network ({host})")
        return real_getaddrinfo(host, *args, **kw)

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in LOCAL_HOSTS:
            outside.append(address[0])
            raise OSError(f"test: no network ({address[0]})")
        return real_connect(sock, address)

    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    mp.setattr(socket.socket, "connect", connect)
    server = HubStub(token=TOKEN).start()
    app = None
    try:
        point_huggingface_hub_at(mp, server.url, tmp)
        mp.setenv("MTBERT_RUNS_DIR", str(tmp / "runs"))
        mp.delenv(pg.JS_ENV, raising=False)
        run = tmp / "runs" / "20261125-120000-tiny"
        run.mkdir(parents=True)
        (run / "config.json").write_text("{}")
        encoder, tok = load_encoder(tiny_base)
        torch.manual_seed(5)
        local = save_checkpoint(MultitaskBert(encoder, ModelConfig.from_dict({"pair_encoding": "joint"})), tok, run / "best",
                                base="minilm-l6", metrics={"dev": {"sst_acc": 0.25, "average": 0.25}})
        hub.push_checkpoint(local, HUB_ID, token=TOKEN)
        broken = tmp / "runs" / BROKEN
        broken.mkdir(parents=True)
        (broken.parent / "config.json").write_text("{}")
        (broken / "mtbert.json").write_text("{not json")
        mp.setenv(hub.HUB_CHECKPOINT_ENV, HUB_ID)

        import gradio_app
        from gradio_client import Client

        assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
        choices = gradio_app.checkpoint_choices()
        app = gradio_app.build_app(choices)
        assert app.analytics_enabled is False
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        yield {"client": client, "choices": choices, "local": str(local), "server": server, "outside": outside,
               "tmp": tmp}
    finally:
        if app is not None:
            app.close()
        server.stop()
        mp.undo()


def test_choices_offer_the_hub_checkpoint_and_the_local_ones(served):
    names = [c.name for c in served["choices"]]
    assert names[0] == HUB_ID and LOCAL in names and "minilm-l6" in names
    assert next(c for c in served["choices"] if c.name == LOCAL).path == served["local"]  # known to the server


def strings(x):
    """Every string in a JSON-like value, the keys of its mappings included."""
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from strings(v)


def test_the_api_names_checkpoints_and_outputs_and_shows_no_server_path(served):
    api = served["client"].view_api(return_format="dict", print_info=False)
    endpoints = api["named_endpoints"]
    assert {"/sentiment", "/pair", "/attention", "/redraw"} <= set(endpoints)
    server_dirs = (str(REPO), str(served["tmp"]), str(served["tmp"].resolve()))
    for text in strings(api):
        assert not any(d in text for d in server_dirs), text
        assert not (text.startswith("/") and Path(text).exists()), f"a path of the server: {text}"
    for name, endpoint in endpoints.items():
        checkpoint = endpoint["parameters"][0]
        assert checkpoint["label"] == "Checkpoint" and LOCAL in checkpoint["type"]["enum"]
        assert HUB_ID in checkpoint["type"]["enum"] and "minilm-l6-heads" in checkpoint["type"]["enum"]
        for value in endpoint["parameters"] + endpoint["returns"]:
            assert value.get("label") and not re.fullmatch(r"(value|parameter)_\d+", value["label"]), (name, value)
    assert [r["label"] for r in endpoints["/pair"]["returns"]] == ["Paraphrase probability", "Similarity (0–5)",
                                                                   "Note on the input"]


def test_a_checkpoint_not_on_offer_is_refused_without_server_paths(served):
    from gradio_client.exceptions import AppError

    server_dirs = (str(REPO), str(served["tmp"]), str(served["tmp"].resolve()))
    for value in (served["local"], "../../../etc", "/etc"):  # a folder, even the real one, is no name
        with pytest.raises(AppError) as e:
            served["client"].predict(value, "Fine.", api_name="/sentiment")
        message = str(e.value).replace(value, "<the value sent>")
        assert LOCAL in message and not any(d in message for d in server_dirs), message
    with pytest.raises(AppError, match=f"{BROKEN} cannot be loaded") as e:
        served["client"].predict(BROKEN, "Fine.", api_name="/sentiment")
    assert not any(d in str(e.value) for d in server_dirs), str(e.value)


def test_sentiment_is_the_playground_distribution(served):
    text = "A gorgeous, witty, seductive movie."
    label, note = served["client"].predict(LOCAL, text, api_name="/sentiment")
    model, tok, _ = load_checkpoint(served["local"])
    want = pg.sentiment(model, tok, text)
    got = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(got) == set(pg.SST_LABELS) and label["label"] == want["label_name"]
    for name, p in zip(want["labels"], want["probs"]):
        assert got[name] == pytest.approx(p, abs=1e-6)
    assert note == ""


def test_pair_scores_from_the_hub_checkpoint(served):
    a, b = "How do I learn to cook?", "What is the best way to learn cooking?"
    para, sim, note = served["client"].predict(HUB_ID, a, b, api_name="/pair")
    model, tok, _ = load_checkpoint(served["local"])
    want = pg.pair_scores(model, tok, a, b)
    assert para == pytest.approx(want["paraphrase"], abs=1e-3) and sim == pytest.approx(want["similarity"], abs=1e-3)
    files = {r.path.split("/resolve/")[-1].split("/", 1)[-1]
             for r in served["server"].requests if "/resolve/" in r.path}
    assert "heads.safetensors" in files  # it really came from the (stand-in) Hub


def test_attention_heatmap_and_bertviz_view(served):
    a, b = "The movie was not bad at all.", "I liked it."
    fig, frame, note = served["client"].predict(LOCAL, a, b, 1, 3, "head", api_name="/attention")
    model, tok, _ = load_checkpoint(served["local"])
    view = pg.attention(model, tok, a, b)
    plot = json.loads(fig["plot"]) if isinstance(fig.get("plot"), str) else fig["plot"]
    z = plot["data"][0]["z"]
    want = view.attentions[1][0, 3]
    assert torch.allclose(torch.tensor(z), want, atol=1e-6)
    assert frame.startswith("<iframe") and 'sandbox="allow-scripts"' in frame and "srcdoc=" in frame
    assert "head_view" in frame or "bertviz" in frame
    for token in view.tokens[1:4]:
        assert json.dumps(token)[1:-1] in frame.replace("&quot;", '"')


def test_moving_a_slider_redraws_only_a_view_already_asked_for(served):
    client, a = served["client"], "The movie was not bad at all."
    fig, frame, _ = client.predict(LOCAL, a, "", 0, 2, "model", api_name="/redraw")
    model, tok, _ = load_checkpoint(served["local"])
    want = pg.attention(model, tok, a).attentions[0][0, 2]
    plot = json.loads(fig["plot"]) if isinstance(fig.get("plot"), str) else fig["plot"]
    assert torch.allclose(torch.tensor(plot["data"][0]["z"]), want, atol=1e-6) and "<iframe" in frame
    # no sentence yet: nothing is drawn and no error pops up
    skipped = client.predict(LOCAL, "", "", 1, 0, "head", api_name="/redraw")
    assert len(skipped) == 3 and all(x["__type__"] == "update" and not set(x.get("props", {})) - {"__type__"}
                                     for x in skipped)  # gr.skip(): empty updates, the outputs stay as they are


def test_bad_input_comes_back_as_the_playground_message(served):
    from gradio_client.exceptions import AppError

    client = served["client"]
    with pytest.raises(AppError, match="The sentence is only whitespace"):
        client.predict(LOCAL, "   ", api_name="/sentiment")
    with pytest.raises(AppError, match="second sentence is empty"):
        client.predict(LOCAL, "One.", "", api_name="/pair")
    with pytest.raises(AppError, match=r"layer must be 0\.\.1 and head 0\.\.3"):
        client.predict(LOCAL, "One sentence.", "", 5, 0, "head", api_name="/attention")


def test_nothing_leaves_the_machine(served):
    """Analytics off, no version check, no CDN: every connection of the app and its client was local."""
    served["client"].predict(LOCAL, "Fine.", api_name="/sentiment")
    assert served["outside"] == []
