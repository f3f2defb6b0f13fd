"""mtbert.explain: Integrated Gradients over the word-piece embeddings (against captum), completeness,
attention rollout, and the Playground's Why tab and rollout views."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mtbert import explain
from mtbert.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from mtbert.data import Example, make_batch
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.studio import playground as pg
from mtbert.tasks import TaskSpec, builtin_tasks

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "minilm-l6-heads"
NLI = TaskSpec("nli", "Entailment", "pair", "classification", classes=3,
               label_names=("entailment", "neutral", "contradiction"), text_columns=("premise", "hypothesis"),
               label_column="label", head="cross", loss="ce")
# (task, first text, second text, target): a sentence, two separately encoded pairs (binary, cosine
# regression) and a jointly encoded one with a class other than the predicted one
CASES = [("sst", "A gorgeous, witty, seductive movie.", None, None),
         ("para", "How old are you?", "What is your age?", None),
         ("sts", "A man is playing a guitar.", "A woman slices an onion.", None),
         ("nli", "A dog runs in the park.", "An animal is outside.", "neutral")]


def tiny_model(base):
    """The tiny BERT with the built-in heads plus a jointly encoded 3-class pair task. Mean pooling and
    heads drawn wider than training starts them: the untrained [CLS] is much the same for every input,
    and the outputs should move with it."""
    encoder, tok = load_encoder(base, max_length=32)
    torch.manual_seed(0)
    model = MultitaskBert(encoder, ModelConfig(pooling="mean", tasks=[*builtin_tasks(), NLI],
                                               logit_offsets={"para": 0.3}))
    with torch.no_grad():
        for head in model.task_heads.values():
            head.weight.normal_(0, 0.5)
    return model.eval(), tok


@pytest.fixture(scope="module")
def tiny(tiny_base):
    return tiny_model(tiny_base)


@pytest.fixture(scope="module")
def shipped():
    model, tok, _ = load_checkpoint(SHIPPED)
    return model, tok


def inputs_and_baseline(model, tok, task, a, b):
    """The word-piece embeddings of each encoder input and the baseline, built here from the ids:
    [PAD]'s embedding wherever the token is not [CLS] or [SEP]."""
    batch = make_batch(model.cfg.task(task), [Example("0", a, b, None)], tok)
    batch = {k: batch[k] for k in ("enc", "a", "b") if k in batch}
    E = model.encoder.embeddings.word_embeddings.weight.detach()
    keep = {tok.encode_one("x").ids[0], tok.encode_one("x").ids[-1]}  # [CLS], [SEP]
    x, x0 = [], []
    for enc in batch.values():
        ids = enc["input_ids"][0]
        x.append(E[ids])
        x0.append(torch.stack([E[i] if int(i) in keep else E[tok.pad_id] for i in ids]))
    return batch, x, x0


@pytest.mark.parametrize("task,a,b,target", CASES)
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_integrated_gradients_equal_captums(tiny, task, a, b, target, method):
    from captum.attr import IntegratedGradients

    model, tok = tiny
    attr = explain.integrated_gradients(model, tok, task, a, b, target=target, steps=20, batch=6, method=method)
    batch, x, x0 = inputs_and_baseline(model, tok, task, a, b)
    spec = model.cfg.task(task)
    k = spec.label_names.index(target) if target else (int(model.predict(task, batch).argmax(-1)[0])
                                                        if spec.loss == "ce" else None)
    assert attr.target == k
    f = explain.output_function(model, task, batch, k)
    ref = IntegratedGradients(f).attribute(tuple(t[None] for t in x), baselines=tuple(t[None] for t in x0),
                                           n_steps=20, method=method, internal_batch_size=6)
    ref = torch.cat([r[0].sum(-1) for r in ref]).double().numpy()  # per token, all encoder inputs in order
    ours = np.concatenate(attr.attributions)
    assert ours.shape == ref.shape and np.abs(ours).max() > 1e-4  # something to compare
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    # the explained output is the model's prediction: the class probability, P(class 1) with the
    # decision offset, the (unclipped) score
    pred = model.predict(task, batch)[0]
    expect = float(pred[k]) if k is not None else float(pred) if spec.kind == "classification" \
        else float(model.predict(task, batch)[0])  # this score lies inside the range: not clipped
    assert attr.f_x == pytest.approx(expect, abs=1e-5)
    # the rows shown: one per sentence, [CLS]/[SEP] kept and never credited
    assert len(attr.tokens) == (2 if b else 1) and attr.encoding == (
        "sentence" if b is None else spec.pair_encoding)
    assert attr.tokens[0][0] == "[CLS]" and attr.tokens[-1][-1] == "[SEP]"
    specials = np.concatenate([[t in ("[CLS]", "[SEP]") for t in row] for row in attr.tokens])
    assert np.all(ours[specials] == 0.0)


def test_the_decision_offset_is_in_the_explained_probability(tiny):
    model, tok = tiny
    attr = explain.integrated_gradients(model, tok, "para", "How old are you?", "What is your age?")
    batch = make_batch(model.cfg.task("para"), [Example("0", "How old are you?", "What is your age?", None)], tok)
    with torch.no_grad():
        logit = float(model.output("para", batch)[0])
    assert attr.f_x == pytest.approx(float(torch.sigmoid(torch.tensor(logit + 0.3))), abs=1e-6)
    assert "decision offset +0.300" in attr.output


@pytest.mark.parametrize("task,a,b,target", CASES)
def test_completeness_on_the_tiny_model(tiny, task, a, b, target):
    model, tok = tiny
    attr = explain.integrated_gradients(model, tok, task, a, b, target=target)
    assert attr.steps == explain.DEFAULT_STEPS and attr.method == "gausslegendre"
    assert abs(attr.delta) > 1e-3  # the input moves the output: a gap of a nothing would be no check
    assert attr.gap < 0.01


@pytest.mark.parametrize("task,a,b", [
    ("sst", "The acting is wooden and the plot never takes off.", None),
    ("para", "How do I cook rice without a rice cooker?", "What is the capital city of Australia?"),
    ("sts", "A man is playing a guitar.", "A man plays the guitar."),
])
def test_completeness_on_the_shipped_checkpoint(shipped, task, a, b):
    model, tok = shipped
    attr = explain.integrated_gradients(model, tok, task, a, b)
    assert abs(attr.delta) > 1e-2 and attr.gap < 0.01, (attr.total, attr.delta)


def test_the_token_the_model_reads_gets_the_largest_attribution(tiny_base):
    """Mean pooling over near-identity layers (the tiny model's layers start small) and a head that
    reads one direction d, given as the word embedding of "cat": only "cat" moves the output."""
    model, tok = tiny_model(tiny_base)
    cat = tok.encode_one("cat").ids[1]
    with torch.no_grad():
        d = torch.randn(model.encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
        model.encoder.embeddings.word_embeddings.weight[cat] = 5 * d / d.norm()
        head = model.task_heads["sst"]
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0] = d / d.norm()
    attr = explain.integrated_gradients(model, tok, "sst", "the old cat sat on the warm mat", target=0)
    tokens, values = attr.tokens[0], np.abs(attr.attributions[0])
    assert tokens[int(values.argmax())] == "cat"
    assert values.max() > 3 * np.sort(values)[-2]  # by a wide margin, not by chance
    assert attr.gap < 0.01


def test_bad_targets_steps_and_methods_are_refused_by_name(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"target=7 is not allowed for task sst; choose a class: 0..4"):
        explain.integrated_gradients(model, tok, "sst", "fine", target=7)
    with pytest.raises(ValueError, match=r"target=0 is not allowed for task para: it explains the probability"):
        explain.integrated_gradients(model, tok, "para", "a", "b", target=0)
    with pytest.raises(ValueError, match=r"task sts: it explains its score only"):
        explain.integrated_gradients(model, tok, "sts", "a", "b", target=1)
    with pytest.raises(ValueError, match=r"steps=1 is not allowed; choose an integer >= 2"):
        explain.integrated_gradients(model, tok, "sst", "fine", steps=1)
    with pytest.raises(ValueError, match=r"method='simpson' is not allowed; choose one of gausslegendre"):
        explain.integrated_gradients(model, tok, "sst", "fine", method="simpson")
    with pytest.raises(pg.InputError, match="The second sentence is empty"):
        pg.attribution(model, tok, "nli", "A dog runs.", "")
    with pytest.raises(pg.InputError, match="target=7 is not allowed"):
        pg.attribution(model, tok, "sst", "fine", target=7)
    assert explain.integrated_gradients(model, tok, "sst", "fine", target="negative").target == 1


def test_training_mode_is_restored_and_no_parameter_gradient_is_left(tiny):
    model, tok = tiny
    model.train()
    try:
        explain.integrated_gradients(model, tok, "sst", "fine", steps=4)
        assert model.training and all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_a_cut_input_says_so(tiny):
    model, tok = tiny
    attr = pg.attribution(model, tok, "sst", "good " * 100, steps=4)
    assert len(attr.tokens[0]) == 32 and "The sentence is 102 tokens" in attr.note


# ---- rollout ---------------------------------------------------------------------------------

def test_rollout_against_a_hand_computation():
    third = np.full((3, 3), 1 / 3)
    to_first = np.zeros((3, 3))
    to_first[:, 0] = 1.0
    layer1 = np.stack([np.eye(3), third])  # mean 0.5 I + J/6 -> A~ = 0.75 I + J/12
    layer2 = np.stack([to_first, to_first])  # A~ rows: [1 0 0], [.5 .5 0], [.5 0 .5]
    r = explain.attention_rollout([layer1, torch.tensor(layer2)[None]])  # numpy or a torch batch of one
    expected = np.array([[5 / 6, 1 / 12, 1 / 12],  # A~2 A~1, the later layer on the left
                         [11 / 24, 11 / 24, 1 / 12],
                         [11 / 24, 1 / 12, 11 / 24]])
    np.testing.assert_allclose(r, expected, atol=1e-12)
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="at least one layer"):
        explain.attention_rollout([])


def test_rollout_views(tiny):
    model, tok = tiny
    view = pg.attention(model, tok, "How old are you?", "What is your age?")
    r = pg.rollout(view)
    assert r.shape == (len(view.tokens),) * 2
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-6)
    assert np.allclose(pg.rollout_heatmap(view).data[0].z, r)
    bar = pg.rollout_cls_figure(view)
    assert np.allclose(bar.data[0].y, r[0]) and list(bar.layout.xaxis.ticktext) == view.tokens


# ---- token colouring --------------------------------------------------------------------------

def html_values(page: str) -> list[tuple[str, float, str]]:
    """(token, attribution, background) of each coloured token of attribution_html."""
    return [(tok, float(v), bg) for v, bg, tok in
            re.findall(r'data-attribution="([^"]+)" style="background: (rgba\([^)]*\))[^"]*">([^<]*)</span>', page)]


def test_attribution_html_colours_by_sign_and_size():
    attr = explain.Attribution("t", "out", None, [["[CLS]", "<b>", "$x$", "[SEP]"], ["ok", "[SEP]"]],
                               [np.array([0.0, 0.5, -1.0, 0.0]), np.array([0.25, 0.0])], 1.0, 0.0, "joint", 8,
                               "gausslegendre")
    page = pg.attribution_html(attr)
    assert page.count('<div style="line-height') == 2  # a pair: two rows
    assert html_values(page) == [
        ("[CLS]", 0.0, "rgba(22, 163, 74, 0.000)"), ("&lt;b&gt;", 0.5, "rgba(22, 163, 74, 0.500)"),
        ("&#36;x&#36;", -1.0, "rgba(220, 38, 38, 1.000)"), ("[SEP]", 0.0, "rgba(22, 163, 74, 0.000)"),
        ("ok", 0.25, "rgba(22, 163, 74, 0.250)"), ("[SEP]", 0.0, "rgba(22, 163, 74, 0.000)")]
    assert pg.completeness_caption(attr) == "attributions sum to -0.250; f(x) − f(baseline) = 1.000 (gap 125.0 %)"


# ---- the Playground page ------------------------------------------------------------------------

@pytest.fixture
def page_checkpoint(tmp_path, monkeypatch, tiny_base):
    from test_app import fake_run

    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(runs))
    monkeypatch.chdir(tmp_path)  # nothing the page writes may land in the repository
    model, tok = tiny_model(tiny_base)
    path = save_checkpoint(model, tok, fake_run(runs, "20260101-000000-why") / "best", base=str(tiny_base))
    yield "20260101-000000-why/best", path
    import streamlit as st
    st.cache_resource.clear()


def test_why_tab_shows_the_attributions_and_the_completeness_check(page_checkpoint):
    from streamlit.testing.v1 import AppTest
    from test_app import messages, no_exception, select

    name, path = page_checkpoint
    at = no_exception(AppTest.from_file(str(REPO / "app_pages/2_Playground.py"), default_timeout=60).run())
    select(at, "ckpt_a", name)
    at.selectbox(key="why_task").set_value("sst").run()
    at.text_area(key="why_text").set_value("  ")
    at.button(key="why_go").click().run()
    assert any("The sentence is only whitespace" in w for w in messages(at, "warning"))
    model, tok, _ = pg.load_model(str(path))
    for task, a, b, target in (("sst", "A gorgeous, witty, seductive movie.", None, "positive"),
                               ("nli", "A dog runs in the park.", "An animal is outside.", None)):
        at.selectbox(key="why_task").set_value(task).run()
        if b is None:
            at.text_area(key="why_text").set_value(a)
        else:
            at.text_input(key="why_a").set_value(a)
            at.text_input(key="why_b").set_value(b)
        if target:
            at.selectbox(key="why_target").set_value(target)
        at.button(key="why_go").click().run()
        no_exception(at)
        want = pg.attribution(model, tok, task, a, b, target=target)
        page = next(m.value for m in at.markdown if "mtbert-attribution" in m.value)
        shown = html_values(page)
        assert [t for t, _, _ in shown] == [t for row in want.tokens for t in row]
        np.testing.assert_allclose([v for _, v, _ in shown], np.concatenate(want.attributions), rtol=1e-6, atol=1e-9)
        assert page.count('<div style="line-height') == (2 if b else 1)
        assert pg.completeness_caption(want) in messages(at, "caption")
        assert want.output in " ".join(messages(at, "markdown"))
    # the attention tab: the rollout next to the per-head view, and the [CLS] row
    at.text_input(key="attn_a").set_value("How old are you?")
    at.button(key="attn_go").click().run()
    no_exception(at)
    charts = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec)
              for c in at.get("plotly_chart")}
    view = pg.attention(model, tok, "How old are you?")
    rollout = next(c for t, c in charts.items() if t.startswith("Attention rollout"))
    np.testing.assert_allclose(rollout["data"][0]["z"], pg.rollout(view), atol=1e-6)
    cls = next(c for t, c in charts.items() if t.startswith("Rollout of [CLS]"))
    np.testing.assert_allclose(cls["data"][0]["y"], pg.rollout(view)[0], atol=1e-6)
