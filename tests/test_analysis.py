"""mtbert.analysis: every metric against scikit-learn / scipy on the same (seeded, tied) predictions,
the threshold curve against the model's own predictions, the error browser, and comparisons."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, pearsonr, spearmanr
from sklearn import metrics as skm

from mtbert import analysis as an
from mtbert import evalfigures as ef
from mtbert.checkpoint import load_encoder
from mtbert.data import SAMPLE_DIR, Example, read_task_file
from mtbert.evaluate import predict_raw
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.tasks import TaskSpec, builtin_task

SST, PARA, STS = builtin_task("sst"), builtin_task("para"), builtin_task("sts")
TWO = TaskSpec("two", kind="classification", classes=2, label_names=("no", "yes"), label_column="label",
               metrics=("accuracy", "f1"), main_metric="accuracy")


def examples(labels, seed=0) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [Example(str(i), " ".join(["w"] * int(rng.integers(1, 30))), "second sentence here", lab)
            for i, lab in enumerate(labels)]


def class_result(spec, n=400, seed=0, skill=2.0, threshold=0.5, gold=None) -> an.TaskResult:
    """Random probabilities that lean towards the gold class, rounded so that many tie."""
    rng = np.random.default_rng(seed)
    k = spec.classes
    gold = rng.integers(0, k, n) if gold is None else gold
    n = len(gold)
    if spec.binary:
        raw = np.round(1 / (1 + np.exp(-(skill * (gold - 0.5) + rng.normal(0, 1.5, n)))), 1)
    else:
        logits = rng.normal(0, 1, (n, k)) + skill * np.eye(k)[gold]
        raw = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)
        raw = raw / raw.sum(1, keepdims=True)
    return an.TaskResult(spec, examples(gold.tolist(), seed), raw, threshold)


def reg_result(n=300, seed=0, noise=1.0, gold=None) -> an.TaskResult:
    rng = np.random.default_rng(seed)
    gold = np.round(rng.uniform(0, 5, n), 1) if gold is None else gold
    pred = np.clip(np.round(gold + rng.normal(0, noise, len(gold)), 1), 0, 5)
    return an.TaskResult(STS, examples(gold.tolist(), seed), pred)


# ---- classification metrics --------------------------------------------------------------------

@pytest.mark.parametrize("spec", [TWO, SST, PARA], ids=["K2-ce", "K5", "K2-bce"])
def test_classification_report_matches_scikit_learn(spec):
    r = class_result(spec, seed=3)
    rep = an.classification_report(r)
    k = spec.classes
    y, p = r.gold, r.pred
    assert rep["labels"] == [spec.label_name(i) for i in range(k)]
    np.testing.assert_array_equal(rep["confusion"], skm.confusion_matrix(y, p, labels=range(k)))
    np.testing.assert_allclose(rep["confusion_normalised"],
                               skm.confusion_matrix(y, p, labels=range(k), normalize="true"))
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, p, labels=range(k), zero_division=0)
    np.testing.assert_allclose(rep["precision"], pr)
    np.testing.assert_allclose(rep["recall"], rc)
    np.testing.assert_allclose(rep["f1"], f1)
    np.testing.assert_array_equal(rep["support"], sup)
    assert rep["macro_f1"] == pytest.approx(skm.f1_score(y, p, labels=range(k), average="macro", zero_division=0))
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y, p))


def test_a_class_never_predicted_nor_present_scores_zero_not_nan():
    r = an.TaskResult(SST, examples([0, 0, 1, 1]), np.eye(5)[[0, 1, 1, 1]])
    rep = an.classification_report(r)
    assert rep["f1"][4] == 0 and rep["precision"][4] == 0 and rep["recall"][4] == 0
    assert rep["macro_f1"] == pytest.approx(skm.f1_score([0, 0, 1, 1], [0, 1, 1, 1], labels=range(5),
                                                         average="macro", zero_division=0))


def test_binary_curves_match_scikit_learn_with_ties():
    r = class_result(PARA, n=500, seed=1)
    assert len(np.unique(r.raw)) < 15  # many ties
    y = r.gold
    roc = an.roc_curve(r)
    fpr, tpr, thr = skm.roc_curve(y, r.raw, drop_intermediate=False)
    np.testing.assert_allclose(roc["fpr"], fpr)
    np.testing.assert_allclose(roc["tpr"], tpr)
    np.testing.assert_allclose(roc["thresholds"][1:], thr[1:])
    assert roc["auc"] == pytest.approx(skm.roc_auc_score(y, r.raw))
    pr = an.pr_curve(r)
    prec, rec, _ = skm.precision_recall_curve(y, r.raw)
    np.testing.assert_allclose(pr["precision"], prec[::-1])
    np.testing.assert_allclose(pr["recall"], rec[::-1])
    assert pr["ap"] == pytest.approx(skm.average_precision_score(y, r.raw))
    s = an.summary(r)
    assert s["roc_auc"] == roc["auc"] and s["average_precision"] == pr["ap"]
    assert s["f1"] == pytest.approx(skm.f1_score(y, r.pred))


def test_one_class_only_gives_nan_areas_not_an_error():
    r = an.TaskResult(PARA, examples([1, 1, 1]), np.array([0.2, 0.6, 0.9]))
    assert math.isnan(an.roc_curve(r)["auc"])
    assert an.pr_curve(r)["ap"] == pytest.approx(1.0)


def test_threshold_curve_counts_raw_above_the_threshold():
    r = class_result(PARA, n=300, seed=2, threshold=0.37)
    c = an.threshold_curve(r, points=11)
    assert 0.37 in c["thresholds"] and len(c["thresholds"]) == 12
    for t, acc, f1 in zip(c["thresholds"], c["accuracy"], c["f1"]):
        pred = (r.raw > t).astype(int)
        assert acc == pytest.approx(skm.accuracy_score(r.gold, pred))
        assert f1 == pytest.approx(skm.f1_score(r.gold, pred, zero_division=0))
    assert c["stored_accuracy"] == pytest.approx(skm.accuracy_score(r.gold, r.pred))
    assert c["best_accuracy"] == max(c["accuracy"])
    with pytest.raises(ValueError, match="task sst is not a binary task"):
        an.threshold_curve(class_result(SST))


def test_ece_on_a_worked_example():
    # confidences 0.9, 0.9, 0.6, 0.6, 0.55 (bins (0.8,0.9], (0.5,0.6]); correct: yes, no | yes, yes, no
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6], [0.45, 0.55]])
    r = an.TaskResult(TWO, examples([0, 1, 1, 1, 0]), probs)
    rel = an.reliability(r, bins=10)
    # bin (0.8, 0.9]: 2 examples, conf 0.9, acc 0.5; bin (0.5, 0.6]: 3 examples, conf 0.5833, acc 2/3
    expected = (2 * abs(0.5 - 0.9) + 3 * abs(2 / 3 - (0.6 + 0.6 + 0.55) / 3)) / 5
    assert rel["ece"] == pytest.approx(expected)
    assert rel["count"].tolist() == [0, 0, 0, 0, 0, 3, 0, 0, 2, 0]
    assert rel["accuracy"][8] == pytest.approx(0.5) and rel["confidence"][5] == pytest.approx(1.75 / 3)
    assert math.isnan(rel["accuracy"][0])


def test_binary_confidence_uses_the_stored_offset():
    # threshold 0.2 is offset logit(0.8); raw 0.2 is then exactly P = 0.5
    r = an.TaskResult(PARA, examples([1, 0, 1]), np.array([0.2, 0.5, 0.1]), threshold=0.2)
    assert r.offset == pytest.approx(math.log(4))
    assert r.pred.tolist() == [0, 1, 0]
    np.testing.assert_allclose(r.probs[:, 1], [0.5, 0.8, 1 / (1 + 9 / 4)], rtol=1e-6)
    assert an.summary(r)["para_acc"] == pytest.approx(0.0)


# ---- regression --------------------------------------------------------------------------------

def test_regression_report_matches_scipy_and_a_hand_binning():
    r = reg_result(seed=4)
    rep = an.regression_report(r, bins=5)
    assert rep["pearson"] == pytest.approx(pearsonr(r.raw, r.gold)[0])
    assert rep["spearman"] == pytest.approx(spearmanr(r.raw, r.gold)[0])
    assert rep["mae"] == pytest.approx(skm.mean_absolute_error(r.gold, r.raw))
    assert rep["bins"] == ["0–1", "1–2", "2–3", "3–4", "4–5"]
    for b in range(5):
        inside = (r.gold >= b) & ((r.gold < b + 1) if b < 4 else (r.gold <= 5))
        assert rep["count"][b] == inside.sum()
        assert rep["mean_abs_error"][b] == pytest.approx(np.abs(r.raw - r.gold)[inside].mean())
        assert rep["mean_signed_error"][b] == pytest.approx((r.raw - r.gold)[inside].mean())
    s = an.summary(r)
    assert s["sts_corr"] == pytest.approx(rep["pearson"]) and s["spearman"] == pytest.approx(rep["spearman"])
    with pytest.raises(ValueError, match="not a regression task"):
        an.regression_report(class_result(SST))


# ---- the error browser --------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [SST, PARA], ids=["K5", "binary"])
def test_mistakes_are_mistakes_most_confident_first_and_filtered(spec):
    r = class_result(spec, seed=5, skill=0.5)
    rows = an.mistakes(r, limit=None)
    assert len(rows) == int((~r.correct).sum()) > 10
    assert all(row["gold"] != row["predicted"] for row in rows)
    conf = [row["confidence"] for row in rows]
    assert conf == sorted(conf, reverse=True)
    for row in rows:
        i = row["index"]
        assert row["id"] == r.examples[i].id and row["confidence"] == pytest.approx(r.confidence[i])
        assert row["words"] == len(r.examples[i].text_a.split()) + 3
    name = spec.label_name(1)
    by_label = an.mistakes(r, label=name, limit=None)
    assert by_label and all(row["gold"] == name for row in by_label)
    assert by_label == an.mistakes(r, label=1, limit=None)
    assert len(by_label) == int(((~r.correct) & (r.gold == 1)).sum())
    short = an.mistakes(r, min_words=10, max_words=20, limit=None)
    assert short and all(10 <= row["words"] <= 20 for row in short)
    assert len(an.mistakes(r, limit=3)) == 3
    with pytest.raises(ValueError, match="label='nope' is not allowed"):
        an.mistakes(r, label="nope")


def test_regression_mistakes_are_the_largest_errors_and_filter_by_gold_bin():
    r = reg_result(seed=6)
    rows = an.mistakes(r, limit=None)
    assert len(rows) == r.n
    errors = [row["abs_error"] for row in rows]
    assert errors == sorted(errors, reverse=True) and errors[0] == pytest.approx(r.abs_error.max())
    top = an.mistakes(r, gold_bin=4, limit=None)
    assert top and all(4 <= row["gold"] <= 5 for row in top)
    assert len(top) == an.regression_report(r)["count"][4]
    ranged = an.mistakes(r, gold_bin=(1.0, 1.5), limit=None)
    assert ranged and all(1.0 <= row["gold"] <= 1.5 for row in ranged)
    with pytest.raises(ValueError, match="gold_bin=7 is not allowed"):
        an.mistakes(r, gold_bin=7)


def test_unlabelled_examples_are_refused_with_a_message():
    with pytest.raises(ValueError, match="1 of 2 examples have no label.*labelled set"):
        an.TaskResult(SST, [Example("a", "x", None, 1), Example("b", "y", None, None)], np.eye(5)[:2])


# ---- comparing two checkpoints ----------------------------------------------------------------

def test_mcnemar_against_a_hand_computed_binomial_and_swapping():
    a = class_result(SST, seed=7, skill=1.5)
    b = an.TaskResult(SST, a.examples, class_result(SST, seed=8, skill=2.5, gold=a.gold).raw)
    c = an.compare(a, b)
    m = c["mcnemar"]
    assert m["b01"] == int((~a.correct & b.correct).sum()) and m["b10"] == int((a.correct & ~b.correct).sum())
    n, k = m["b01"] + m["b10"], min(m["b01"], m["b10"])
    assert n > 0 and m["b01"] != m["b10"]
    assert m["p"] == pytest.approx(min(1.0, 2 * binom.cdf(k, n, 0.5)))  # the exact two-sided test, p = 1/2
    assert len(c["b_right_a_wrong"]) == min(50, m["b01"]) and len(c["a_right_b_wrong"]) == min(50, m["b10"])
    assert all(row["b_predicted"] == row["gold"] != row["a_predicted"] for row in c["b_right_a_wrong"])
    assert c["metrics"]["sst_acc"]["delta"] == pytest.approx(b.correct.mean() - a.correct.mean())
    s = an.compare(b, a)
    assert (s["mcnemar"]["b01"], s["mcnemar"]["b10"]) == (m["b10"], m["b01"])
    assert s["mcnemar"]["p"] == pytest.approx(m["p"])
    assert s["a_right_b_wrong"] == [{**row, "a_predicted": row["b_predicted"], "b_predicted": row["a_predicted"],
                                     "a_confidence": row["b_confidence"], "b_confidence": row["a_confidence"]}
                                    for row in c["b_right_a_wrong"]]
    assert all(s["metrics"][k]["delta"] == pytest.approx(-v["delta"]) for k, v in c["metrics"].items())


def test_identical_checkpoints_give_zero_deltas_and_p_one():
    a = class_result(PARA, seed=9)
    c = an.compare(a, an.TaskResult(PARA, a.examples, a.raw.copy(), a.threshold))
    assert c["mcnemar"] == {"b01": 0, "b10": 0, "n": 0, "p": 1.0}
    assert c["a_right_b_wrong"] == c["b_right_a_wrong"] == []
    assert c["metrics"] and all(v["delta"] == 0 for v in c["metrics"].values())
    r = reg_result(seed=9)
    c = an.compare(r, an.TaskResult(STS, r.examples, r.raw.copy()))
    assert c["bootstrap"]["delta"] == 0 and c["bootstrap"]["low"] == c["bootstrap"]["high"] == 0
    assert c["a_better"] == c["b_better"] == []


def test_paired_bootstrap_contains_the_estimate_and_is_reproducible_by_seed():
    gold = np.round(np.random.default_rng(10).uniform(0, 5, 300), 1)
    a, b = reg_result(seed=11, noise=1.2, gold=gold), reg_result(seed=12, noise=0.9, gold=gold)
    b = an.TaskResult(STS, a.examples, b.raw)
    c = an.compare(a, b, seed=3)
    bs = c["bootstrap"]
    assert bs["metric"] == "pearson" and bs["resamples"] == 2000 and bs["used"] == 2000
    assert bs["delta"] == pytest.approx(pearsonr(b.raw, gold)[0] - pearsonr(a.raw, gold)[0])
    assert bs["low"] < bs["delta"] < bs["high"]
    assert an.compare(a, b, seed=3)["bootstrap"] == bs
    assert an.compare(a, b, seed=4)["bootstrap"]["low"] != bs["low"]
    sp = an.paired_bootstrap(a, b, seed=3, resamples=300, metric="spearman")
    assert sp["low"] < sp["delta"] < sp["high"]
    assert sp["delta"] == pytest.approx(spearmanr(b.raw, gold)[0] - spearmanr(a.raw, gold)[0])
    flipped = an.compare(b, a, seed=3)
    assert flipped["a_better"] == [{**row, "a_predicted": row["b_predicted"], "b_predicted": row["a_predicted"],
                                    "a_abs_error": row["b_abs_error"], "b_abs_error": row["a_abs_error"],
                                    "improvement": -row["improvement"]} for row in c["b_better"]]
    assert all(row["improvement"] > 0 for row in c["b_better"])


def test_compare_refuses_different_examples():
    a, b = reg_result(seed=1), reg_result(seed=2)
    with pytest.raises(ValueError, match="not on the same examples"):
        an.compare(a, b)


# ---- on a real (tiny) model --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tiny_base):
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(0)
    return MultitaskBert(encoder, ModelConfig()).eval(), tok


def test_threshold_curve_at_the_stored_threshold_is_the_models_own_accuracy(tiny_model):
    model, tok = tiny_model
    pairs, _ = read_task_file(PARA, SAMPLE_DIR / "quora-dev.csv")
    pairs = pairs[:80]
    plain = predict_raw(model, tok, "para", pairs)
    offset = float(-np.log(np.median(plain) / (1 - np.median(plain))))  # the threshold falls mid-spread
    model.cfg.logit_offsets["para"] = offset
    try:
        own = predict_raw(model, tok, "para", pairs) > 0.5
        calls = []
        r = an.predict_task(model, tok, "para", pairs, batch_size=32, progress=lambda d, t: calls.append((d, t)))
        assert model.cfg.logit_offset("para") == offset  # restored
    finally:
        model.cfg.logit_offsets.pop("para")
    assert calls == [(32, 80), (64, 80), (80, 80)]
    np.testing.assert_allclose(r.raw, plain, rtol=1e-5)
    assert r.threshold == pytest.approx(1 / (1 + math.exp(offset)))
    gold = np.array([e.label for e in pairs]) > 0.5
    assert 0 < own.sum() < len(own)
    np.testing.assert_array_equal(r.pred, own)
    assert an.threshold_curve(r)["stored_accuracy"] == pytest.approx(float((own == gold).mean()))
    assert an.summary(r)["para_acc"] == pytest.approx(float((own == gold).mean()))
    an.predict_task(model, tok, "para", pairs[:5])
    assert "para" not in model.cfg.logit_offsets  # no offset stored before: none left behind


def test_evaluate_checkpoint_counts_progress_over_all_tasks(tiny_model):
    model, tok = tiny_model
    data = {"sst": read_task_file(SST, SAMPLE_DIR / "ids-sst-dev.csv")[0][:10],
            "sts": read_task_file(STS, SAMPLE_DIR / "sts-dev.csv")[0][:6]}
    calls = []
    out = an.evaluate_checkpoint(model, tok, data, progress=lambda d, t: calls.append((d, t)), batch_size=4)
    assert list(out) == ["sst", "sts"] and out["sst"].raw.shape == (10, 5) and out["sts"].raw.shape == (6,)
    assert calls[-1] == (16, 16) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    with pytest.raises(ValueError, match="have no label"):
        an.predict_task(model, tok, "sst", [Example("x", "a sentence", None, None)])


# ---- figures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,names", [
    (lambda: class_result(SST), ["confusion", "confusion_normalised", "per_class", "reliability"]),
    (lambda: class_result(PARA, threshold=0.4), ["confusion", "confusion_normalised", "per_class", "threshold",
                                                 "roc", "pr", "reliability"]),
    (lambda: reg_result(), ["scatter", "error_by_bin"])], ids=["K5", "binary", "regression"])
def test_task_figures_fit_the_task_kind_and_carry_titles_and_labels(make, names):
    r = make()
    figs = ef.task_figures(r)
    assert [n for n, _ in figs] == names
    for _, fig in figs:
        assert fig.layout.title.text.startswith(r.spec.title) and fig.layout.xaxis.title.text and fig.data
    if r.is_classification:
        assert list(figs[0][1].data[0].x) == [r.spec.label_name(k) for k in range(r.spec.classes)]
    if r.spec.binary:
        shapes = dict(figs)["threshold"].layout.shapes
        assert shapes[0].x0 == pytest.approx(0.4)


def test_regression_scatter_turns_into_a_histogram_beyond_the_point_limit():
    r = reg_result(n=200)
    assert ef.scatter_figure(r.gold, r.raw, (0, 5), max_points=100).data[0].type == "histogram2d"
    assert ef.scatter_figure(r.gold, r.raw, (0, 5), max_points=1000).data[0].type == "scatter"


def test_compare_figures():
    a = class_result(PARA, seed=1)
    b = an.TaskResult(PARA, a.examples, class_result(PARA, seed=2, skill=3, gold=a.gold).raw)
    figs = dict(ef.compare_figures(a, b, a_name="base", b_name="tuned"))
    assert set(figs) == {"deltas", "roc_both"}
    assert "tuned minus base" in figs["deltas"].layout.title.text
