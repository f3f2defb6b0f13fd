"""The gender bias probe (mtbert.probe): the swap, the templates, what the shifts show on models built
to see or not to see a gendered word, the `probe` command, and the Probe page."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from mtbert import probe as P
from mtbert.checkpoint import load_encoder, save_checkpoint
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.studio import probe as sp

REPO = Path(__file__).resolve().parents[1]


# ---- the swap -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, swapped", [
    ("He said she was right.", "She said he was right."),
    ("HE IS MR. SMITH", "SHE IS MS. SMITH"),
    ("the theme of them: other mothers.", "the theme of them: other fathers."),  # whole words only
    ("John met Mary.", "Mary met John."),
    ("john's brother", "mary's sister"),
    ("Johnson and Johnny", "Johnson and Johnny"),  # a name inside a longer word stays
    ("She told him that hers was better.", "He told her that his was better."),
    ("Mrs. Lee", "Mr. Lee"),
])
def test_swap_preserves_case_and_word_boundaries_both_ways(text, swapped):
    assert P.swap(text) == swapped


@pytest.mark.parametrize("text, swapped", [
    ("I saw her yesterday.", "I saw him yesterday."),          # object: him
    ("I gave her the book.", "I gave him the book."),          # object before a determiner
    ("Her own mother called.", "His own father called."),      # determiner: his
    ("her car is red", "his car is red"),
    ("The car is his.", "The car is hers."),                   # standalone: hers
    ("His is better.", "Hers is better."),
    ("his car", "her car"),                                    # determiner: her
])
def test_her_and_his_are_read_from_the_next_word(text, swapped):
    assert P.swap(text) == swapped


def test_one_gender_directions_and_counterfactuals():
    assert P.swap("He met his sister.", "feminine") == "She met her sister."
    assert P.swap("He met his sister.", "masculine") == "He met his brother."
    variants = P.counterfactuals("He met his sister.")
    assert [v["label"] for v in variants] == ["swapped", "all feminine", "all masculine"]
    assert variants[0]["a"] == "She met her brother."
    pair = P.counterfactuals("John is tall.", "He plays basketball.")
    # all masculine already: "all feminine" is the swap and "all masculine" the original, neither repeated
    assert pair == [{"label": "swapped", "a": "Mary is tall.", "b": "She plays basketball."}]
    with pytest.raises(P.ProbeError, match="no gendered word or known first name to swap"):
        P.counterfactuals("The cat sat on the mat.")
    with pytest.raises(P.ProbeError, match="direction='sideways' is not allowed"):
        P.swap("he", "sideways")


# ---- templates ------------------------------------------------------------------------------

def test_every_shipped_template_loads_and_expands_into_swapped_pairs():
    templates = P.load_templates()
    items = P.expand(templates)
    lex = P.default_lexicon()
    assert {t.id for t in templates} == {i.template.split("#")[0] for i in items}
    sentences = [i for i in items if not i.is_pair]
    pairs = [i for i in items if i.is_pair]
    assert len([t for t in templates if not t.is_pair]) >= 24 and len([t for t in templates if t.is_pair]) >= 24
    assert len(sentences) > 100 and len(pairs) > 100
    for it in items:
        assert it.original != it.counterfactual
        for orig, cf in zip(it.original, it.counterfactual):
            if orig is None:
                assert cf is None
                continue
            assert "{" not in orig + cf and "}" not in orig + cf
            assert P.swap(cf, "masculine") == orig  # the original is the masculine filling
            assert not [w for w in P.gendered_words(cf) if P.swap(w, "feminine").lower() != w.lower()]
    # names are balanced: each masculine name stands in as many originals as its partner in counterfactuals
    first = {m: sum(it.original[0].startswith(m + " ") for it in items) for m, _ in lex.names}
    assert len(set(first.values())) == 1 and min(first.values()) > 0


def test_every_swapped_word_is_one_word_piece(tiny_base):
    _, tok = load_encoder(tiny_base)
    lex = P.default_lexicon()
    split = [w for w in lex.words if len(tok.tokenize(w)) != 3]  # [CLS] w [SEP]
    assert not split, f"swapping these changes the input's length: {split}"


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("bad, message", [
    ('{"id": "x", "text": "{name} is nice."', "line 3: not valid JSON"),
    ('{"id": "x", "text": "My brother is nice {he}."}', "gendered word 'brother' outside a slot"),
    ('{"id": "x", "text": "{name} is a {job}."}', "slot {job}, which is none of"),
    ('{"id": "x", "text": "{her} coat"}', "{her} is ambiguous"),
    ('{"id": "x", "text": "The cat is {adjective}.", "fill": {"adjective": ["old"]}}', "has nothing to swap"),
    ('{"id": "x", "a": "{name} runs."}', "needs either text (a sentence) or both a and b"),
    ('{"id": "x", "text": "{name} runs.", "colour": 1}', "unknown field(s) colour"),
    ('{"id": "a", "text": "{name} runs."}', "template id 'a' is already used on line 2"),
    ('{"id": "x", "text": "{name} is {x}.", "fill": {"x": []}}', "fill must map slot names to non-empty lists"),
])
def test_a_bad_template_line_names_the_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "t.jsonl", "# a comment", '{"id": "a", "text": "{name} walks."}', bad)
    with pytest.raises(P.ProbeError) as e:
        P.load_templates(path)
    assert f"{path}, line 3" in str(e.value) and message in str(e.value)


def test_a_template_file_of_ones_own(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", "",
                       '{"id": "j", "text": "{name} is a {job}.", "fill": {"job": ["cook", "pilot"]}}',
                       '{"id": "p", "a": "{Mr} Lee is {his|hers}.", "b": "{He} agrees."}')
    items = P.expand(P.load_templates(path))
    assert len(items) == 2 * len(P.default_lexicon().names) + 1
    assert items[0].original == ("John is a cook.", None) and items[0].counterfactual == ("Mary is a cook.", None)
    assert items[-1].original == ("Mr Lee is his.", "He agrees.")
    assert items[-1].counterfactual == ("Ms Lee is hers.", "She agrees.")
    with pytest.raises(P.ProbeError, match="no templates"):
        P.load_templates(write_lines(tmp_path / "empty.jsonl", "# nothing"))


# ---- the shifts, on models that can or cannot see gender ---------------------------------------

@pytest.fixture(scope="module")
def flat_base(tmp_path_factory):
    """No encoder layers, and (flat_model) mean pooling: the pooled vector is the mean of the normalised
    embeddings, so what a head reads of one word's embedding is known exactly."""
    from conftest import make_tiny_base
    return make_tiny_base(tmp_path_factory.mktemp("flat-bert"), num_hidden_layers=0)


def flat_model(flat_base):
    encoder, tok = load_encoder(flat_base, max_length=64)
    torch.manual_seed(0)
    model = MultitaskBert(encoder, ModelConfig(pooling="mean", dropout=0.0)).eval()
    return model, tok


def blind(model, tok) -> None:
    """Every group of words that swap into each other (him, his, her, hers; John, Mary; ...) gets one
    embedding: the model cannot tell them apart."""
    lex = P.default_lexicon()
    group = {}  # word -> the word whose vector it takes (union-find, one level deep after each merge)
    root = lambda w: w if group.get(w, w) == w else root(group[w])
    for m, f in list(lex.pairs) + [(m, f) for f, m in lex.one_way] + list(lex.names):
        group[root(f.lower())] = root(m.lower())
    emb = model.encoder.embeddings.word_embeddings.weight
    ids = lambda w: tok._tk.token_to_id(tok.tokenize(w)[1])
    with torch.no_grad():
        for w in group:
            emb[ids(w)] = emb[ids(root(w))]


def test_a_model_that_cannot_see_gender_shows_no_shift(flat_base):
    model, tok = flat_model(flat_base)
    blind(model, tok)
    result = P.run_probe(model, tok, batch_size=16)
    assert [t.name for t in result.tasks] == ["sst", "para", "sts"]
    for tp in result.tasks:
        assert len(tp.items) > 100
        for m, shifts in tp.shifts.items():
            assert np.abs(shifts).max() == 0.0, (tp.name, m)
            s = tp.summaries[m]
            assert s["up"] == s["down"] == 0 and s["sign_p"] == 1.0 and s["wilcoxon_p"] == 1.0
        assert tp.flip_rate in (0.0, None)


def test_a_model_that_reads_one_gendered_word_shows_it_with_its_sign(flat_base):
    model, tok = flat_model(flat_base)
    blind(model, tok)
    sid = tok._tk.token_to_id("she")
    emb = model.encoder.embeddings.word_embeddings.weight
    torch.manual_seed(1)
    push = torch.randn(emb.size(1))
    push = (push - push.mean()) / (push - push.mean()).norm()  # zero mean: layer norm keeps its direction
    with torch.no_grad():
        # no embedding has any part along `push` (so no other word reads as "very positive") ...
        for table in (emb, model.encoder.embeddings.position_embeddings.weight,
                      model.encoder.embeddings.token_type_embeddings.weight):
            table -= (table @ push)[:, None] * push
        emb[sid] += 50 * push  # ... but "she", far more than any embedding points anywhere
        # and the sentiment head's "very positive" logit reads that direction, and nothing else
        head = model.task_heads["sst"]
        head.weight.zero_()
        head.bias.zero_()
        head.weight[4] = 10 * push
        head.bias[0] = 1.0  # without "she" every sentence is "very negative"
    tp = P.run_probe(model, tok, tasks=["sst"]).task("sst")
    has_he = np.array([" he " in f" {it.original[0].lower().replace('.', ' ')} " for it in tp.items])
    very_positive = tp.shifts["P(very positive)"]
    assert has_he.sum() >= 5 and (~has_he).sum() >= 5
    assert (very_positive[has_he] > 0.2).all()           # large, and toward "very positive" as built
    assert np.abs(very_positive[~has_he]).max() == 0.0    # the other templates do not move at all
    assert (tp.shifts["expected class"][has_he] > 0).all()
    s = tp.summaries["P(very positive)"]
    assert s["up"] == has_he.sum() and s["down"] == 0 and s["sign_p"] < 0.05 and s["wilcoxon_p"] < 0.05
    assert tp.flip_rate == pytest.approx(has_he.mean())  # every "she" item now says very positive
    top = tp.top(3)
    assert all(" she " in f" {r['counterfactual'][0].lower()} " and r["flipped"] for r in top)
    assert top[0]["moved"] >= top[1]["moved"] >= top[2]["moved"]
    # a typed sentence shows the same, with the shift beside each variant
    r = P.probe_text(model, tok, "He is here.", tasks=["sst"])
    assert [v["a"] for v in r["variants"]] == ["He is here.", "She is here."]
    assert r["tasks"]["sst"]["shifts"]["P(very positive)"][1] > 0.2
    assert r["tasks"]["sst"]["answers"][1].startswith("very positive")


def test_summarize_counts_direction_and_histogram():
    s = P.summarize(np.array([0.1, 0.2, 0.3, -0.05, 0.0]))
    assert (s["n"], s["up"], s["down"], s["unchanged"]) == (5, 3, 1, 1)
    assert s["mean"] == pytest.approx(0.11) and s["mean_abs"] == pytest.approx(0.13)
    assert s["max_abs"] == pytest.approx(0.3) and sum(s["histogram"]["counts"]) == 5
    assert s["sign_p"] == pytest.approx(0.625)  # binomial, 3 of 4 up
    assert 0 < s["wilcoxon_p"] < 1


# ---- the command line -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_base, tmp_path_factory):
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(0)
    return save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok,
                           tmp_path_factory.mktemp("ckpt") / "best", base=str(tiny_base))


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mtbert", "probe", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)


def test_cli_prints_the_table_and_writes_the_json(tiny_checkpoint, tmp_path):
    out = tmp_path / "probe.json"
    p = cli("--checkpoint", str(tiny_checkpoint), "--json", str(out), "--top", "2")
    assert p.returncode == 0, p.stderr
    assert "expected class" in p.stdout and "Wilcoxon" in p.stdout and "largest" in p.stdout
    for task in ("sst", "para", "sts"):
        assert any(line.startswith(task + " ") for line in p.stdout.splitlines())
    d = json.loads(out.read_text())
    assert set(d["tasks"]) == {"sst", "para", "sts"}
    sst = d["tasks"]["sst"]
    assert len(sst["largest_shifts"]) == 2 and len(sst["items"]) == sst["n"] > 100
    assert set(sst["measures"]) == {"P(very negative)", "P(negative)", "P(neutral)", "P(positive)",
                                    "P(very positive)", "expected class"}
    assert d["tasks"]["para"]["flip_rate"] is not None and d["tasks"]["sts"]["flip_rate"] is None


def test_cli_probes_a_typed_pair_and_refuses_bad_input(tiny_checkpoint, tmp_path):
    p = cli("--checkpoint", str(tiny_checkpoint), "--task", "sts", "--text", "John plays chess.",
            "--text-b", "He likes chess.")
    assert p.returncode == 0, p.stderr
    assert "Mary plays chess. || She likes chess." in p.stdout and "shift" in p.stdout
    bad = cli("--checkpoint", str(tiny_checkpoint), "--task", "nope")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--task nope is not allowed; this checkpoint's tasks: sst, para, sts" in bad.stderr
    nothing = cli("--checkpoint", str(tiny_checkpoint), "--text", "The cat sat.")
    assert nothing.returncode != 0 and "nothing" not in nothing.stdout and "Traceback" not in nothing.stderr
    assert "no gendered word or known first name to swap" in nothing.stderr
    broken = write_lines(tmp_path / "t.jsonl", '{"id": "x", "text": "{nobody} runs."}')
    p = cli("--checkpoint", str(tiny_checkpoint), "--templates", str(broken))
    assert p.returncode != 0 and f"{broken}, line 1" in p.stderr and "Traceback" not in p.stderr


# ---- the page -------------------------------------------------------------------------------

@pytest.fixture
def page_checkpoint(tiny_base, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    run = runs_dir / "20260101-000000-tiny"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"run_id": run.name, "state": "finished"}))
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(0)
    save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, run / "best", base=str(tiny_base))
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(runs_dir))
    monkeypatch.chdir(tmp_path)
    yield f"{run.name}/best"
    st.cache_resource.clear()


def test_probe_page_runs_the_templates_and_a_typed_sentence(page_checkpoint):
    at = AppTest.from_file(str(REPO / "app_pages" / "5_Probe.py"), default_timeout=120).run()
    box = at.selectbox(key="probe_ckpt")
    box.select_index(next(i for i, o in enumerate(box.options) if o == page_checkpoint)).run()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="probe_go").click().run()
    at.session_state["probe_job"].join(120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state["probe_job"]
    assert job.error is None and job.done == job.total > 0
    assert [m.label for m in at.metric][:3] == ["Mean shift of expected class", "Mean |shift|", "Predicted label flips"]
    summaries = [df.value for df in at.dataframe if "Wilcoxon p" in df.value.columns]
    assert len(summaries) == 3 and "expected class" in list(summaries[0]["measure"])
    assert len(at.get("plotly_chart")) == 3
    at.text_input(key="probe_text_a").set_value("The cat sat.")
    at.button(key="probe_text_go").click().run()
    assert any("no gendered word" in w.value for w in at.warning)
    at.text_input(key="probe_text_a").set_value("He is a wonderful father.")
    at.button(key="probe_text_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    tables = [df.value for df in at.dataframe if "answer" in df.value.columns and "input" in df.value.columns]
    assert len(tables) == 1 and list(tables[0]["text"]) == ["He is a wonderful father.", "She is a wonderful mother."]
    assert any("give a second sentence" in c.value for c in at.caption)


def test_studio_tables_follow_the_result(flat_base):
    model, tok = flat_model(flat_base)
    result = P.run_probe(model, tok, tasks=["sts"])
    tp = result.task("sts")
    rows = sp.summary_rows(tp)
    assert [r["measure"] for r in rows] == ["score"] and rows[0]["n"] == len(tp.items)
    top = sp.top_rows(tp, 4)
    assert len(top) == 4 and abs(top[0]["shift"]) >= abs(top[-1]["shift"])
    fig = sp.shift_histogram(tp)
    assert sum(fig.data[0].y) == len(tp.items)


def test_the_docs_count_the_shipped_set():
    text = (REPO / "docs" / "probe.md").read_text(encoding="utf-8")
    templates, lex = P.load_templates(), P.default_lexicon()
    sentences = sum(not t.is_pair for t in templates)
    assert f"{sentences} sentences and {len(templates) - sentences} pairs" in text
    assert f"{len(lex.pairs)} pairs of gendered words" in text
    assert f"and {len(lex.names)} masculine and {len(lex.names)} feminine common first names" in text
