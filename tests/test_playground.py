"""mtbert.studio.playground: input checks, task outputs, attention, offline bertviz pages, batch files."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest
import torch

from mtbert.checkpoint import load_encoder, save_checkpoint
from mtbert.data import Example
from mtbert.evaluate import predict_examples
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.studio import checkpoints, runs
from mtbert.studio import playground as pg


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:  # module-wide: the loaded model fixture needs it too
        mp.setenv("MTBERT_RUNS_DIR", str(root))
        yield root


@pytest.fixture(autouse=True)
def no_js_setting(ckpt_root, monkeypatch):
    monkeypatch.delenv(pg.JS_ENV, raising=False)


def make_checkpoint(base, folder, **model_cfg):
    encoder, tok = load_encoder(base, max_length=32)
    torch.manual_seed(0)
    model = MultitaskBert(encoder, ModelConfig.from_dict(model_cfg))
    return save_checkpoint(model, tok, folder, base=str(base))


@pytest.fixture(scope="module")
def loaded(tiny_base, ckpt_root):
    path = make_checkpoint(tiny_base, ckpt_root / "run-a" / "best")
    return pg.load_model(str(path))


def test_empty_and_whitespace_inputs_get_a_message(loaded):
    model, tok, _ = loaded
    with pytest.raises(pg.InputError, match="The sentence is empty"):
        pg.sentiment(model, tok, "")
    with pytest.raises(pg.InputError, match="The sentence is only whitespace"):
        pg.sentiment(model, tok, " \t\n ")
    with pytest.raises(pg.InputError, match="The second sentence is only whitespace"):
        pg.pair_scores(model, tok, "fine", "   ")
    with pytest.raises(pg.InputError, match="at most 100,000"):
        pg.check_text("x" * (pg.MAX_CHARS + 1))


def test_sentiment_is_a_distribution_over_five_classes(loaded):
    model, tok, meta = loaded
    assert meta["untrained_heads"] is False
    r = pg.sentiment(model, tok, "  A gorgeous, witty, seductive movie. ")
    assert len(r["probs"]) == 5 and sum(r["probs"]) == pytest.approx(1.0, abs=1e-5)
    assert r["label"] == max(range(5), key=r["probs"].__getitem__)
    assert r["label_name"] == pg.SST_LABELS[r["label"]] and r["note"] is None
    # the same as the batch path the evaluator uses
    assert predict_examples(model, tok, "sst", [Example("0", "A gorgeous, witty, seductive movie.", None, None)]) \
        == [r["label"]]


def test_long_input_is_cut_visibly(loaded):
    model, tok, _ = loaded
    text = "good " * 600  # 600 words: more than the 512 positions BERT has, and than max_length 32
    assert pg.token_count(tok, text) == 602
    r = pg.sentiment(model, tok, text)
    assert r["note"] == "The sentence is 602 tokens; the model reads only the first 32 tokens, the rest was cut."
    pair = pg.pair_scores(model, tok, text, "short")
    assert "The first sentence is 602 tokens" in pair["note"]
    view = pg.attention(model, tok, text)
    assert len(view.tokens) == 32 and "602 tokens" in view.note


def test_pair_scores_in_range_for_separate_and_joint_encodings(tiny_base, ckpt_root, loaded):
    model, tok, _ = loaded
    r = pg.pair_scores(model, tok, "How old are you?", "What is your age?")
    assert 0.0 <= r["paraphrase"] <= 1.0 and 0.0 <= r["similarity"] <= 5.0 and r["note"] is None
    joint = pg.load_model(str(make_checkpoint(tiny_base, ckpt_root / "run-j" / "best", pair_encoding="joint")))
    rj = pg.pair_scores(joint[0], joint[1], "How old are you?", "What is your age?")
    assert 0.0 <= rj["paraphrase"] <= 1.0 and 0.0 <= rj["similarity"] <= 5.0
    assert rj["paraphrase"] != pytest.approx(r["paraphrase"])


def test_attention_of_a_pair(loaded):
    model, tok, _ = loaded
    view = pg.attention(model, tok, "How old are you?", "What is your age?")
    assert view.tokens == ["[CLS]", "how", "old", "are", "you", "?", "[SEP]", "what", "is", "your", "age", "?", "[SEP]"]
    assert view.sentence_b_start == 7
    L = len(view.tokens)
    assert view.num_layers == 2 and view.num_heads == 4
    for a in view.attentions:
        assert a.shape == (1, 4, L, L)
        assert torch.allclose(a.sum(-1), torch.ones(1, 4, L), atol=1e-5)  # each row a distribution
    single = pg.attention(model, tok, "Fine.")
    assert single.sentence_b_start is None and single.tokens == ["[CLS]", "fine", ".", "[SEP]"]


def test_heatmap_shows_the_chosen_head(loaded):
    model, tok, _ = loaded
    view = pg.attention(model, tok, "the the cat")
    fig = pg.attention_heatmap(view, 1, 3)
    assert [list(r) for r in fig.data[0].z] == view.attentions[1][0, 3].tolist()
    assert list(fig.layout.xaxis.ticktext) == view.tokens  # repeated tokens keep their own columns
    with pytest.raises(pg.InputError, match="layer must be 0..1 and head 0..3"):
        pg.attention_heatmap(view, 2, 0)


@pytest.fixture
def fake_js(tmp_path):
    (tmp_path / "d3.min.js").write_text("window.d3 = {marker: 'D3-LOCAL'}; // </script> inside the code")
    (tmp_path / "jquery.min.js").write_text("window.jQuery = {marker: 'JQ-LOCAL'};")
    return tmp_path


# a tag that would fetch a script or stylesheet: an absolute or protocol-relative URL
OUTSIDE = re.compile(r"""<(script|link)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""", re.I)


def test_bertviz_pages_inline_the_shipped_libraries_and_load_nothing(loaded):
    from bertviz import head_view

    model, tok, _ = loaded
    view = pg.attention(model, tok, "How old are you?", "What is your age?")
    raw = head_view(attention=list(view.attentions), tokens=view.tokens, html_action="return").data
    assert OUTSIDE.search(raw) and "require.config({" in raw  # what bertviz itself would fetch
    scripts = {name: (pg.JS_DIR / name).read_text(encoding="utf-8") for name in pg.JS_FILES}
    for kind in ("head", "model"):
        html = pg.bertviz_html(view, kind)
        assert not OUTSIDE.search(html), OUTSIDE.search(html)
        assert not re.search(r"<script\b[^>]*\bsrc\s*=", html, re.I)  # every script is inline
        assert "require.config({" not in html  # bertviz's block naming the CDN paths
        # each library whole (the head of its code and its last statement), in manifest order
        at = [html.index(code[:200]) for code in scripts.values()]
        assert at == sorted(at) and all(code.rstrip()[-200:] in html for code in scripts.values())
        assert at[-1] < html.index("requirejs(['jquery', 'd3']")
        # nothing closes a script early or makes the parser skip a closing tag ("<!--" ... "<script")
        rest = html
        for code in scripts.values():
            rest = rest.replace(code, "")
        assert rest.count("<script") == rest.count("</script>") and "<!--" not in html
        assert "Sentence B -> Sentence B" in html  # the pair's views (sentence_b_start reached bertviz)
        assert pg.bertviz_height(view, kind) > 13 * 7
    with pytest.raises(ValueError, match="kind='neuron' is not allowed"):
        pg.bertviz_html(view, "neuron")
    with pytest.raises(RuntimeError, match="cdn.example"):  # a link bertviz might add later is refused
        pg.inline_js('<script src="https://cdn.example/x.js"></script>', pg.JS_DIR)


def test_bertviz_js_folder_setting(loaded, fake_js, monkeypatch):
    assert pg.js_dir() == pg.JS_DIR  # by default: the copies inside the package
    monkeypatch.setenv(pg.JS_ENV, str(fake_js))
    assert pg.js_dir() == fake_js
    model, tok, _ = loaded
    html = pg.bertviz_html(pg.attention(model, tok, "Hi there."), "model")
    assert html.index("JQ-LOCAL") < html.index("D3-LOCAL") and "https://d3js.org" not in html
    (fake_js / "d3.min.js").unlink()
    with pytest.raises(pg.InputError, match=r"MTBERT_BERTVIZ_JS=.*missing d3.min.js.*unset it"):
        pg.js_dir()


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_js_matches_its_manifest_and_carries_its_licences():
    names = {f["name"] for f in pg.JS_MANIFEST}
    assert names == {p.name for p in pg.JS_DIR.iterdir() if not p.name.startswith(".")} - {"manifest.json"}
    assert set(pg.JS_FILES) == {"d3.min.js", "jquery.min.js"}
    for f in pg.JS_MANIFEST:
        assert sha256(pg.JS_DIR / f["name"]) == f["sha256"], f["name"]
        pkg, version = f["source"]["npm"].split("@")
        assert version == f["version"] and f["source"]["path"].startswith("package/")
        if "license_file" in f:  # a script: its banner names the version, its licence file is listed
            assert f"v{version}" in (pg.JS_DIR / f["name"]).read_text(encoding="utf-8")[:300]
            lic = next(x for x in pg.JS_MANIFEST if x["name"] == f["license_file"])
            assert lic["license"] == f["license"] and lic["source"]["npm"] == f["source"]["npm"]
            text = (pg.JS_DIR / lic["name"]).read_text(encoding="utf-8")
            assert {"MIT": "Permission is hereby granted",
                    "BSD-3-Clause": "Redistribution and use in source and binary forms"}[f["license"]] in text
    d3 = next(f for f in pg.JS_MANIFEST if f["name"] == "d3.min.js")
    assert d3["version"].split(".")[0] in ("4", "5")  # bertviz calls the v4/v5 API (d3.schemeCategory10)


def test_a_changed_or_missing_shipped_file_is_refused(tmp_path, monkeypatch):
    import shutil

    folder, shipped = tmp_path / "js", pg.JS_DIR
    shutil.copytree(shipped, folder)
    monkeypatch.setattr(pg, "JS_DIR", folder)
    assert pg.js_dir() == folder
    hits = pg._check_shipped_js.cache_info().hits
    assert pg.js_dir() == folder and pg._check_shipped_js.cache_info().hits == hits + 1  # hashed once
    d3 = folder / "d3.min.js"
    d3.write_bytes(d3.read_bytes().replace(b"d3js.org", b"d3js.com", 1))
    with pytest.raises(pg.InputError, match=r"d3\.min\.js has sha256 [0-9a-f]{64}, but manifest.json expects"):
        pg.js_dir()
    shutil.copy(shipped / d3.name, d3)
    assert pg.js_dir() == folder  # put back: accepted again
    (folder / "jquery.min.js").unlink()
    with pytest.raises(pg.InputError, match=r"jquery\.min\.js is missing"):
        pg.js_dir()


def test_tokens_cannot_break_out_of_the_bertviz_script(loaded, fake_js):
    view = pg.AttentionView(["[CLS]", "</script><script>alert(1)</script>", "<!--", "[SEP]"],
                            tuple(torch.full((1, 1, 4, 4), 0.25) for _ in range(2)))
    html = pg.bertviz_html(view, "head", folder=fake_js)
    assert "alert(1)" in html
    assert html.count("<script") == html.count("</script>")
    assert "<!--" not in html


def test_plain_base_model_is_labelled_as_untrained():
    model, tok, meta = pg.load_model("minilm-l6")
    assert meta["untrained_heads"] is True
    assert "UNTRAINED task heads" in pg.describe_model(meta)
    again = pg.load_model("minilm-l6")[0]
    assert torch.equal(model.task_heads["sst"].weight, again.task_heads["sst"].weight)  # the same heads on every load


def test_a_shipped_checkpoint_is_described_in_words():
    """The Playground's caption of the shipped checkpoint, as loaded: scores by name, the Quora
    held-out count as an integer with thousands separators, no raw metric key."""
    shipped = next(c for c in checkpoints.list_checkpoints() if c.kind == "shipped")
    _, _, meta = pg.load_model(shipped.path)
    dev = meta["metrics"]["dev"]
    text = pg.describe_model(meta)
    assert text.startswith(f"base {meta['base_model']}, {meta['model']['pooling']} pooling; dev: Quora accuracy ")
    assert (f"Quora accuracy {dev['para_acc']:.3f} ({dev['para_acc_heldout']:.3f} on the "
            f"{dev['para_heldout_examples']:,} pairs the threshold never saw, ") in text
    assert f"SST accuracy {dev['sst_acc']:.3f}" in text and f"STS Pearson {dev['sts_corr']:.3f}" in text
    assert dev["para_heldout_examples"] >= 1000 and f"{dev['para_heldout_examples']}" not in text
    for key in (k for k in dev if "_" in k):
        assert key not in text and key.replace("_", " ") not in text, f"{key} shown raw"


def test_a_base_given_as_a_local_folder_is_named_by_the_folder(tiny_base):
    """The caption names a base model given by path by its folder's name, not the machine's full path;
    a registered name or a Hub id stays as it is."""
    text = pg.describe_model({"base_model": str(tiny_base), "model": {"pooling": "mean"}})
    assert text == f"base {tiny_base.name} (a local folder), mean pooling" and str(tiny_base.parent) not in text
    for name in ("minilm-l6", "sentence-transformers/all-MiniLM-L6-v2"):
        assert pg.describe_model({"base_model": name, "model": {"pooling": "cls"}}) == f"base {name}, cls pooling"


def test_metrics_without_words_are_shown_as_they_are():
    text = pg.describe_metrics({"sst_acc": 0.5, "new_score": 0.25, "pairs_seen": 12345, "average": float("nan")})
    assert text == "SST accuracy 0.500, new score 0.250, pairs seen 12,345"
    # a detail without what it needs still says its value, under its own name
    assert pg.describe_metrics({"para_acc": 0.7, "para_acc_heldout": 0.6}) == "Quora accuracy 0.700 (para acc heldout 0.600)"


def test_load_model_refuses_paths_outside_checkpoints_and_runs(tiny_base, tmp_path):
    outside = make_checkpoint(tiny_base, tmp_path / "outside")
    with pytest.raises(runs.RunError, match="allowed places"):
        pg.load_model(str(outside))


def upload(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def test_read_upload_detects_the_task_and_explains_what_it_cannot_read():
    sst = upload([["", "id", "sentence", "sentiment"], ["0", "a1", "great fun", "4"], ["1", "a2", "dull", "1"]])
    task, examples, report = pg.read_upload(sst)
    assert task == "sst" and [e.id for e in examples] == ["a1", "a2"] and report.usable == 2
    unlabelled_pairs = upload([["", "id", "sentence1", "sentence2"], ["0", "p1", "a b", "c d"]])
    with pytest.raises(pg.InputError, match="choose the task"):
        pg.read_upload(unlabelled_pairs)
    assert pg.read_upload(unlabelled_pairs, "sts")[0] == "sts"
    with pytest.raises(pg.InputError, match="empty"):
        pg.read_upload(b"  \n")
    with pytest.raises(pg.InputError, match="the uploaded file: no column 'id' for task sst"):
        pg.read_upload(upload([["x", "y"], ["1", "2"]]), "sst")
    with pytest.raises(pg.InputError, match="No usable rows"):
        pg.read_upload(upload([["", "id", "sentence", "sentiment"], ["0", "a1", "", "4"]]))
    with pytest.raises(pg.InputError, match="task='qa' is not allowed"):
        pg.read_upload(sst, "qa")


def test_batch_job_writes_the_predictions_csv_in_the_background(loaded):
    model, tok, _ = loaded
    examples = [Example(f"id{i}", a, b, None) for i, (a, b) in
                enumerate([("how old are you", "what is your age"), ("a cat", "a dog"), ("x", "y")])]
    job = pg.BatchJob("sts", examples).start(model, tok, chunk=2)
    job.join(60)
    assert job.finished and job.error is None and job.fraction == 1.0
    rows = list(csv.reader(io.StringIO(job.csv.decode())))
    assert rows[0] == ["id", "prediction"] and [r[0] for r in rows[1:]] == ["id0", "id1", "id2"]
    want = predict_examples(model, tok, "sts", examples)
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(want)
    bad = pg.BatchJob("nope", examples).start(model, tok)
    bad.join(60)
    assert bad.finished and bad.csv is None and "nope" in bad.error


def test_sentiment_figure_compares_models(loaded):
    model, tok, _ = loaded
    r = pg.sentiment(model, tok, "fine")
    fig = pg.sentiment_figure({"a": r, "b": r})
    assert [t.name for t in fig.data] == ["a", "b"] and list(fig.data[0].y) == r["probs"]
    assert re.fullmatch(r"\d\.\d\d", fig.data[0].text[0])


def test_the_best_shipped_checkpoint_is_offered_first(tmp_path, monkeypatch):
    """Pages default to the first offered checkpoint: among shipped ones, the best by dev average,
    then those without scores; the name only breaks ties."""
    for name, avg in (("a-low", 0.61), ("b-high", 0.74), ("c-unscored", None), ("d-high", 0.74)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mtbert.json").write_text("{}")
        if avg is not None:
            (tmp_path / name / "metrics.json").write_text(json.dumps({"dev": {"average": avg}}))
    monkeypatch.setattr(checkpoints, "CHECKPOINTS_DIR", tmp_path)
    shipped = [c for c in checkpoints.list_checkpoints() if c.kind == "shipped"]
    assert [c.name for c in shipped] == ["b-high", "d-high", "a-low", "c-unscored"]
    assert shipped[0].label == "b-high (shipped, dev average 0.740)" and shipped[-1].label == "c-unscored (shipped)"
