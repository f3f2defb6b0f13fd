"""Our encoder against transformers.BertModel on the real MiniLM weights, and the checkpoint key map.

The reference runs with eager attention: it is the textbook computation, and the only one that
returns attention probabilities. Tolerance 1e-5 in float32 throughout.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from mtbert.bert import BertConfig, BertModel
from mtbert.checkpoint import load_base, load_weights, resolve_base

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5

SINGLES = [  # very different lengths, so most of the batch is padding
    "Fine.",
    "The gorgeously elaborate continuation of `` The Lord of the Rings '' trilogy is so huge that a column "
    "of words can not adequately describe co-writer\\/director Peter Jackson 's expanded vision.",
    "A movie that is neither funny nor sad, just long.",
    "Why?",
]
PAIRS = (["How old are you?", "What is the best way to learn machine learning from scratch as a beginner?"],
         ["What is your age?", "How do I learn ML?"])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On the shared 2-core machine a second intra-op thread waits for a busy core at every op:
    # with other jobs running, one thread makes this module several times faster.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def minilm():
    """(ours, tokenizer, reference), loaded once: the weights are 90 MB."""
    ours, tok = load_base("minilm-l6")
    ref = transformers.BertModel.from_pretrained(str(resolve_base("minilm-l6")), attn_implementation="eager",
                                                 local_files_only=True).eval()
    return ours.eval(), tok, ref


def batch(tok, kind):
    enc = tok.encode(SINGLES) if kind == "singles" else tok.encode(*PAIRS)
    assert not enc["attention_mask"].all(), "the batch must contain padding to test masking"
    if kind == "pairs":
        assert enc["token_type_ids"].any(), "the pair batch must use token type 1"
    return enc


def max_diff(a, b):
    return (a - b).abs().max().item()


def attended(h, enc):  # (B, T, H) -> (N, H)
    # Hidden states at PAD positions are meaningless (no one attends to them), ours are zeros
    # when unpadded and the reference's differ by rounding: compare real tokens only.
    return h[enc["attention_mask"].bool()]


# ---- numerical parity with transformers.BertModel ---------------------------------------------

@pytest.mark.parametrize("kind", ["singles", "pairs"])
def test_matches_reference_with_attentions(minilm, kind):
    ours, tok, ref = minilm
    enc = batch(tok, kind)
    with torch.no_grad():
        o = ours(**enc, output_attentions=True)
        r = ref(**enc, output_attentions=True)
    assert o.last_hidden_state.shape == r.last_hidden_state.shape
    assert max_diff(attended(o.last_hidden_state, enc), attended(r.last_hidden_state, enc)) <= TOL
    assert max_diff(o.pooler_output, r.pooler_output) <= TOL
    assert len(o.attentions) == len(r.attentions) == ours.config.num_hidden_layers
    for a, b in zip(o.attentions, r.attentions):  # every position, padding included
        assert a.shape == b.shape
        assert max_diff(a, b) <= TOL


@pytest.mark.parametrize("kind", ["singles", "pairs"])
def test_fast_path_matches_reference(minilm, kind):
    ours, tok, ref = minilm
    enc = batch(tok, kind)
    with torch.no_grad():
        o = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        r = ref(**enc)
    assert o.attentions is None
    assert o.last_hidden_state.shape == r.last_hidden_state.shape  # (B, T, H) even though unpadded inside
    assert max_diff(attended(o.last_hidden_state, enc), attended(r.last_hidden_state, enc)) <= TOL
    assert max_diff(o.pooler_output, r.pooler_output) <= TOL


def _hf_grads(model: BertModel) -> dict[str, torch.Tensor]:
    """Our parameter gradients under Hugging Face names (the fused qkv split), via the key map."""
    with torch.device("meta"):  # no storage, no initialisation: the grads are assigned
        g = BertModel(model.config)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    g.load_state_dict(grads, strict=False, assign=True)
    return {k: v for k, v in g.hf_state_dict().items() if not v.is_meta}


def _loss(out, enc):  # touches every attended hidden state and the pooler
    return attended(out.last_hidden_state, enc).square().mean() + out.pooler_output.sum()


@contextlib.contextmanager
def _grads_and(model, explicit_attention: bool):
    """Gradients on the shared fixture model (no 90 MB copies), everything restored afterwards.
    The word embeddings' gradient (12 M weights, a plain nn.Embedding) is left out: it is slow."""
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    attns = [layer.attention for layer in getattr(model, "layers", [])]
    saved = [m.p for m in dropouts], [a.dropout_p for a in attns]
    try:
        model.embeddings.word_embeddings.weight.requires_grad_(False)
        if explicit_attention:
            # train mode with attention dropout takes the explicit CPU path; a dropout p too small
            # to ever drop makes it deterministic; the hidden dropouts are switched off
            model.train()
            for m in dropouts:
                m.p = 0.0
            for a in attns:
                a.dropout_p = 1e-30  # keep probability 1 - 1e-30 rounds to 1.0
        yield model
    finally:
        model.eval()
        model.embeddings.word_embeddings.weight.requires_grad_(True)
        for m, p in zip(dropouts, saved[0]):
            m.p = p
        for a, p in zip(attns, saved[1]):
            a.dropout_p = p
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_gradients_match_reference(minilm, path):
    """Backward through unpadding: SDPA (no attention dropout), and the explicit path that training
    with attention dropout takes on CPU."""
    ours, tok, ref = minilm
    enc = batch(tok, "pairs")
    with _grads_and(ours, path == "explicit"), _grads_and(ref, False):
        _loss(ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), enc).backward()
        _loss(ref(**enc), enc).backward()
        ours_g = _hf_grads(ours)
        ref_g = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert set(ours_g) == set(ref_g) and len(ref_g) == len(list(ref.parameters())) - 1
    for name, g in ref_g.items():
        scale = max(g.abs().max().item(), 1.0)
        assert max_diff(ours_g[name], g) <= TOL * scale, name


def test_no_padding_and_no_mask_agree(minilm):
    ours, tok, ref = minilm
    enc = tok.encode(["One sentence only, no padding at all."])
    with torch.no_grad():
        full = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        none = ours(enc["input_ids"])
        r = ref(**enc)
    assert torch.equal(full.last_hidden_state, none.last_hidden_state)
    assert max_diff(full.last_hidden_state, r.last_hidden_state) <= TOL


@pytest.mark.parametrize("output_attentions", [False, True])
def test_padding_is_masked(minilm, output_attentions):
    ours, tok, _ = minilm
    enc = batch(tok, "singles")
    pads = ~enc["attention_mask"].bool()
    other = {k: v.clone() for k, v in enc.items()}
    other["input_ids"][pads] = tok._tk.token_to_id("movie")  # a real word where padding was
    other["token_type_ids"][pads] = 1
    with torch.no_grad():
        a = ours(**enc, output_attentions=output_attentions)
        b = ours(**other, output_attentions=output_attentions)
    assert max_diff(attended(a.last_hidden_state, enc), attended(b.last_hidden_state, enc)) <= 1e-6
    assert max_diff(a.pooler_output, b.pooler_output) <= 1e-6
    if output_attentions:  # and nothing attends to padding
        assert all(p[pads[:, None, None, :].expand_as(p)].abs().max() == 0 for p in a.attentions)


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    tiny = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1:, 6:] = 0
    for hidden, attn in ((0.5, 0.0), (0.0, 0.5)):  # each dropout site on its own
        model = BertModel(BertConfig(**tiny, hidden_dropout_prob=hidden, attention_probs_dropout_prob=attn))
        model.eval()
        e1, e2 = model(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state
        assert torch.equal(e1, e2)
        model.train()
        t1, t2 = model(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state
        real = mask.bool()
        assert not torch.allclose(t1[real], t2[real]), (hidden, attn)
        assert not torch.allclose(t1[real], e1[real]), (hidden, attn)


# ---- checkpoint key map ------------------------------------------------------------------------

def test_key_map_round_trips(minilm):
    ours, tok, ref = minilm
    sd = ours.hf_state_dict()
    assert set(sd) == set(load_weights(resolve_base("minilm-l6"))) - {"embeddings.position_ids"}
    fresh = BertModel(ours.config).eval()
    fresh.load_hf_state_dict(sd)
    enc = batch(tok, "pairs")
    with torch.no_grad():
        assert torch.equal(fresh(**enc).last_hidden_state, ours(**enc).last_hidden_state)
    with torch.device("meta"):  # skip the random initialisation; the weights are assigned
        hf = transformers.BertModel(ref.config)
    result = hf.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    want = ref.state_dict()
    for name, t in hf.state_dict().items():
        assert torch.equal(t, want[name]), name


def test_unknown_and_missing_names_are_listed(minilm):
    ours = minilm[0]
    sd = ours.hf_state_dict()
    sd["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(1)
    del sd["encoder.layer.3.output.LayerNorm.bias"]
    with torch.device("meta"), pytest.raises(KeyError) as e:  # meta: names and shapes only, no storage
        BertModel(ours.config).load_hf_state_dict(sd)
    msg = str(e.value)
    assert "encoder.layer.0.attention.self.rotary.weight" in msg
    assert "encoder.layer.3.output.LayerNorm.bias" in msg


def test_wrong_shape_names_weight_and_both_shapes(minilm):
    ours = minilm[0]
    sd = ours.hf_state_dict()
    sd["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(10, 384)
    with torch.device("meta"), pytest.raises(ValueError) as e:
        BertModel(ours.config).load_hf_state_dict(sd)
    msg = str(e.value)
    assert "encoder.layer.1.intermediate.dense.weight" in msg and "(10, 384)" in msg and "(1536, 384)" in msg


def test_bert_prefix_and_gamma_beta_names_load(minilm):
    ours, tok, _ = minilm
    old = {}
    for k, v in ours.hf_state_dict().items():  # as in the original Google conversions of BertForPreTraining
        k = re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k))
        old["bert." + k] = v
    assert any(k.endswith("LayerNorm.gamma") for k in old)
    old["cls.predictions.bias"] = torch.zeros(30522)  # the pre-training head, ignored
    old["bert.embeddings.position_ids"] = torch.arange(512)[None]
    fresh = BertModel(ours.config).eval()
    fresh.load_hf_state_dict(old)
    enc = batch(tok, "singles")
    with torch.no_grad():
        assert torch.equal(fresh(**enc).pooler_output, ours(**enc).pooler_output)


# ---- the speed benchmark still runs ------------------------------------------------------------

def test_encoder_benchmark_smoke(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Encoder\n\nstale\n\n## Trainer\n\nsomeone else's section\n")
    cmd = [sys.executable, str(REPO / "benchmarks" / "encoder.py"), "--quick", "--reps", "1", "--warmup", "0",
           "--batches", "1", "--infer-batch", "4", "--train-batch", "2", "--max-length", "16",
           "--threads", "1", "--data-dir", str(REPO / "data" / "sample"), "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    text = out.read_text()
    assert "stale" not in text and "someone else's section" in text
    enc = text.split("## Encoder", 1)[1].split("## Trainer", 1)[0]
    ratios = re.findall(r"\| ([0-9.]+)x \|", enc)
    assert len(ratios) == 4 and all(float(r) > 0 for r in ratios)  # inference and train step, SST and Quora
    # the section names the command (less its output path, which is the machine's) and the commit
    assert "benchmarks/encoder.py" in enc and "--out" not in enc and str(out) not in enc
    assert "torch " + torch.__version__ in enc and "- commit: " in enc
