"""Fast evaluation: predict_raw (all tokenised at once, length-sorted batches, each distinct sentence of a
separately encoded pair set embedded once) gives model.predict's numbers, in input order; int8 / bf16
inference stay close; the --precision flag of `mtbert evaluate` / `mtbert predict` and load_model."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtbert.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from mtbert.data import SAMPLE_DIR, Example, load_split, make_batch
from mtbert.evaluate import evaluate, predict_raw
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.quantize import PRECISIONS, check_precision, for_inference

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "minilm-l6-heads"

# Quora-like: questions repeat across pairs and sides, one pair is a sentence with itself, lengths vary
QUESTIONS = ["How do I learn Python?", "What is the best way to learn Python quickly and well?",
             "Is the moon made of cheese?", "How tall is Everest?", "Why?",
             "What would happen if every person on Earth jumped at exactly the same moment in time?"]
PAIRS = [Example(f"p{i}", QUESTIONS[a], QUESTIONS[b], float(i % 2))
         for i, (a, b) in enumerate([(0, 1), (2, 3), (1, 0), (4, 5), (0, 0), (5, 2), (3, 3), (1, 4), (0, 1)])]
SENTENCES = [Example(f"s{i}", q, None, i % 5) for i, q in enumerate(QUESTIONS + QUESTIONS[:2])]


def one_by_one(model, tok, task: str, examples: list[Example]) -> np.ndarray:
    """The reference: each example alone through model.predict (no padding, no batching, no reuse)."""
    return np.concatenate([model.predict(task, make_batch(model.cfg.task(task), [e], tok)).float().numpy()
                           for e in examples])


def tiny_model(base, **cfg) -> tuple[MultitaskBert, object]:
    encoder, tok = load_encoder(base, max_length=32)
    torch.manual_seed(0)
    model = MultitaskBert(encoder, ModelConfig.from_dict(cfg)).eval()
    with torch.no_grad():  # heads far from their init, so that outputs differ between examples
        for head in model.task_heads.values():
            head.weight.normal_(0, 0.5)
    return model, tok


@pytest.mark.parametrize("cfg", [
    {"pooling": "mean", "para_features": "concat_diff_prod", "sts_encoding": "joint",
     "logit_offsets": {"para": 0.3}},  # separate concat_diff_prod (deduplicated) and cross (joint)
    {"pooling": "cls"},  # concat and cosine, both deduplicated
])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_fp32_matches_one_example_at_a_time(tiny_base, cfg, batch_size):
    model, tok = tiny_model(tiny_base, **cfg)
    for task, examples in (("sst", SENTENCES), ("para", PAIRS), ("sts", PAIRS)):
        got = predict_raw(model, tok, task, examples, batch_size=batch_size)
        ref = one_by_one(model, tok, task, examples)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6, err_msg=f"{task} {cfg}")
        assert np.ptp(ref, axis=0).max() > 1e-5  # the outputs differ (beyond the tolerance): a permutation would show


def test_pairs_come_back_in_input_order_with_repeats_equal(tiny_base):
    model, tok = tiny_model(tiny_base, pooling="mean", para_features="concat_diff_prod")
    got = predict_raw(model, tok, "para", PAIRS, batch_size=2)
    assert got[0] == pytest.approx(got[-1], abs=1e-7)  # the same pair twice: the same embeddings, the same answer
    perm = [8, 3, 0, 5, 1, 7, 2, 6, 4]
    np.testing.assert_allclose(predict_raw(model, tok, "para", [PAIRS[i] for i in perm], batch_size=2), got[perm],
                               rtol=1e-6, atol=1e-7)
    # a sentence paired with itself: u == v, so |u - v| is exactly zero in the features
    assert predict_raw(model, tok, "sts", [PAIRS[4]])[0] == pytest.approx(one_by_one(model, tok, "sts", [PAIRS[4]])[0])


def test_progress_counts_examples_and_empty_input(tiny_base):
    model, tok = tiny_model(tiny_base)
    calls = []
    predict_raw(model, tok, "para", PAIRS, batch_size=2, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (len(PAIRS), len(PAIRS)) and all(n == len(PAIRS) for _, n in calls)
    # 6 distinct questions in sentence batches of 2 x 2 (a batch of pairs holds two sentences each)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == 2
    assert predict_raw(model, tok, "sst", []).shape == (0, 5)
    assert predict_raw(model, tok, "para", []).shape == (0,)
    with pytest.raises(ValueError, match="batch_size=0 is not allowed"):
        predict_raw(model, tok, "sst", SENTENCES, batch_size=0)


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(SHIPPED)


@pytest.fixture(scope="module")
def sample_dev(shipped):
    model = shipped[0]
    return {t: ex[:24] for t, (ex, _) in load_split(SAMPLE_DIR, "dev", model.cfg.tasks).items()}


def test_shipped_checkpoint_fp32_matches_one_example_at_a_time(shipped, sample_dev):
    model, tok, _ = shipped
    for task, examples in sample_dev.items():
        np.testing.assert_allclose(predict_raw(model, tok, task, examples), one_by_one(model, tok, task, examples),
                                   rtol=1e-6, atol=1e-6, err_msg=task)


@pytest.mark.parametrize("precision,tol", [("bf16", 0.05), ("int8", 0.25)])
def test_int8_and_bf16_stay_close_and_leave_the_model_alone(shipped, sample_dev, precision, tol):
    model, tok, _ = shipped
    before = {t: predict_raw(model, tok, t, ex) for t, ex in sample_dev.items()}
    fast = for_inference(model, precision)
    assert fast is not model and fast.precision == precision and not hasattr(model, "precision")
    assert for_inference(fast, precision) is fast
    for task, examples in sample_dev.items():
        got = predict_raw(fast, tok, task, examples)
        spec = model.cfg.task(task)
        scale = spec.range[1] - spec.range[0] if spec.kind == "regression" else 1.0
        err = np.abs(got - before[task]).max() / scale
        assert 0 < err < tol, f"{precision} {task}: {err}"  # cheaper arithmetic: close, not identical
        np.testing.assert_array_equal(predict_raw(model, tok, task, examples), before[task])  # fp32 untouched


def test_evaluate_takes_a_converted_model_and_precision_names_its_values(shipped, sample_dev):
    model, tok, _ = shipped
    m32 = evaluate(model, tok, sample_dev)
    m16 = evaluate(for_inference(model, "bf16"), tok, sample_dev)
    assert abs(m16["sst_acc"] - m32["sst_acc"]) <= 2 / len(sample_dev["sst"])
    assert set(PRECISIONS) == {"fp32", "int8", "bf16"} and for_inference(model, "fp32") is model
    with pytest.raises(ValueError, match=r"precision='fp16' is not allowed; choose one of fp32, int8, bf16"):
        check_precision("fp16")
    with pytest.raises(ValueError, match=r"--precision='int4' is not allowed; choose one of fp32, int8, bf16"):
        check_precision("int4", "--precision")
    with pytest.raises(ValueError, match=r"precision='int4' is not allowed"):
        for_inference(model, "int4")
    with pytest.raises(ValueError, match="already int8"):
        for_inference(for_inference(model, "int8"), "bf16")


def test_load_model_precision(tiny_base, tmp_path, monkeypatch):
    from mtbert.studio import playground as pg
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(tmp_path))
    model, tok = tiny_model(tiny_base)
    path = save_checkpoint(model, tok, tmp_path / "run-q" / "best", base=str(tiny_base))
    exact, _, meta32 = pg.load_model(str(path))
    fast, _, meta8 = pg.load_model(str(path), precision="int8")
    assert meta32["precision"] == "fp32" and meta8["precision"] == "int8" and fast.precision == "int8"
    a, b = (pg.task_answer(m, tok, "sts", "A man plays.", "A man is playing a guitar.")["value"] for m in (exact, fast))
    assert a != b and a == pytest.approx(b, abs=0.25)
    with pytest.raises(ValueError, match="precision='fp64' is not allowed; choose one of fp32, int8, bf16"):
        pg.load_model(str(path), precision="fp64")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtbert", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_precision_flag(tiny_base, tmp_path):
    model, tok = tiny_model(tiny_base)
    ckpt = save_checkpoint(model, tok, tmp_path / "ckpt", base=str(tiny_base))
    dev = tmp_path / "sst-dev.csv"
    rows = (SAMPLE_DIR / "ids-sst-dev.csv").read_text(encoding="utf-8").splitlines()[:13]
    dev.write_text("\n".join(rows) + "\n", encoding="utf-8")
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"pred-{precision}.csv"
        r = _cli("predict", "--checkpoint", str(ckpt), "--task", "sst", "--input", str(dev), "--output", str(out),
                 "--precision", precision)
        assert r.returncode == 0, r.stderr
        outs[precision] = [row["prediction"] for row in csv.DictReader(out.open())]
    assert len(outs["fp32"]) == 12
    exact = predict_raw(model, tok, "sst", [Example(str(i), s, None, None) for i, s in
                                            enumerate(row.split("\t")[2] for row in rows[1:])]).argmax(-1)
    assert outs["fp32"] == [str(k) for k in exact]
    r = _cli("evaluate", "--checkpoint", str(ckpt), "--task", "sst", "--input", str(dev), "--precision", "int8")
    assert r.returncode == 0, r.stderr
    assert "SST" in r.stdout
    r = _cli("evaluate", "--checkpoint", str(ckpt), "--task", "sst", "--input", str(dev), "--precision", "fp16")
    assert r.returncode == 1
    assert "--precision='fp16' is not allowed; choose one of fp32, int8, bf16" in r.stderr


def test_trainer_evaluates_in_its_eval_precision_and_trains_alike(tiny_base, tmp_path):
    from mtbert.config import TrainConfig
    from mtbert.train import Trainer
    runs = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        cfg = TrainConfig(base_model=str(tiny_base), epochs=1, batch_size=4, lr=1e-3, train_subset=16,
                          eval_subset=6, train_eval_subset=8, max_length=32, seed=3, calibrate_para=True,
                          full_eval_at_s=[1e-6], eval_precision=precision)
        assert Trainer(cfg, run, progress=False).run() == "finished"
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        runs[precision] = recs
        best = json.loads((run / "best" / "mtbert.json").read_text())
        chosen = json.loads((run / "best" / "metrics.json").read_text())
        # the threshold fitted through the converted copy is the trained model's own
        assert best["model"]["logit_offsets"]["para"] == chosen["dev"]["para_logit_offset"]
    losses = {p: [r["loss"] for r in recs if r["type"] == "step"] for p, recs in runs.items()}
    assert losses["fp32"] == losses["bf16"] and losses["fp32"]  # evaluation never touches training
    evals = {p: [r for r in recs if r["type"] == "eval"] for p, recs in runs.items()}
    assert len(evals["fp32"]) == len(evals["bf16"]) > 0
    for a, b in zip(evals["fp32"], evals["bf16"]):
        # a few dev examples of an untrained tiny model: correlations move a lot, so only their kind is compared
        assert (a["split"], a["full"], a["examples"]) == (b["split"], b["full"], b["examples"])
    assert any(a["sts_corr"] != b["sts_corr"] for a, b in zip(evals["fp32"], evals["bf16"]))  # bf16 did run
    with pytest.raises(ValueError, match="eval_precision='fp8' is not allowed"):
        TrainConfig(eval_precision="fp8")
