"""Error analysis of one checkpoint, or two, on a labelled set: where and why the model fails.

Everything here is numbers (numpy, scipy); the figures are drawn by mtbert.evalfigures and the HTML
report by mtbert.htmlreport, so a page, the CLI and the tests all read the same values.

One `TaskResult` holds one checkpoint's outputs on one labelled set of one task. `raw` is what
`evaluate.predict_raw` gives, except that for a binary task it is P(class 1) *without* the stored
logit offset o: the checkpoint then predicts class 1 when raw > threshold = sigmoid(-o), and the
threshold curve can show every other threshold beside the stored one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import trapezoid
from scipy.stats import binomtest, pearsonr, rankdata, spearmanr

from .data import Example
from .evaluate import _logit, predict_raw, shift_para_probs, task_metrics
from .tasks import TaskSpec

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95


@dataclass
class TaskResult:
    """One checkpoint's predictions on one labelled set of one task."""
    spec: TaskSpec
    examples: list[Example]
    raw: np.ndarray         # (N, K) class probabilities | (N,) P(class 1) without the stored offset | (N,) score
    threshold: float = 0.5  # binary: predict class 1 when raw > threshold (sigmoid(-offset))

    def __post_init__(self):
        self.raw = np.asarray(self.raw, dtype=np.float64)
        if len(self.raw) != len(self.examples):
            raise ValueError(f"task {self.spec.name}: {len(self.raw)} outputs for {len(self.examples)} examples")
        _check_labelled(self.spec, self.examples)

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def is_classification(self) -> bool:
        return self.spec.kind == "classification"

    @property
    def gold(self) -> np.ndarray:
        y = np.array([e.label for e in self.examples], dtype=np.float64)
        return y.astype(int) if self.is_classification else y

    @property
    def offset(self) -> float:
        """The logit offset the threshold stands for (0 at threshold 0.5)."""
        return float(-_logit(self.threshold))

    @property
    def probs(self) -> np.ndarray:
        """(N, K) class probabilities as the checkpoint states them (a binary task's with its offset)."""
        if not self.is_classification:
            raise ValueError(f"task {self.spec.name} is a regression task; it has no class probabilities")
        if self.spec.binary:
            p1 = shift_para_probs(self.raw, self.offset) if self.threshold != 0.5 else self.raw
            return np.stack([1.0 - p1, p1], axis=1)
        return self.raw

    @property
    def pred(self) -> np.ndarray:
        """The predicted class index, or the predicted score."""
        if not self.is_classification:
            return self.raw
        if self.spec.binary:
            return (self.raw > self.threshold).astype(int)
        return self.raw.argmax(-1)

    @property
    def confidence(self) -> np.ndarray:
        """The stated probability of the predicted class (classification only)."""
        return self.probs[np.arange(self.n), self.pred]

    @property
    def correct(self) -> np.ndarray | None:
        return self.pred == self.gold if self.is_classification else None

    @property
    def abs_error(self) -> np.ndarray:
        return np.abs(self.raw - self.gold)

    def words(self) -> np.ndarray:
        return np.array([_words(e) for e in self.examples], dtype=int)


def _words(e: Example) -> int:
    return len(e.text_a.split()) + (len(e.text_b.split()) if e.text_b else 0)


def _check_labelled(spec: TaskSpec, examples: list[Example]) -> None:
    missing = [e.id for e in examples if e.label is None]
    if missing:
        raise ValueError(f"task {spec.name}: {len(missing)} of {len(examples)} examples have no label (first: id "
                         f"{missing[0]}); error analysis needs a labelled set (a train or dev file, or a "
                         f"labelled file with the task's {spec.label_column or 'label'} column)")


# ---- predicting --------------------------------------------------------------------------------

def predict_task(model, tokenizer, task: str, examples: list[Example], batch_size: int = 64, progress=None,
                 device="cpu") -> TaskResult:
    """The checkpoint's outputs on labelled examples. progress(done, total) is called after each batch.
    A binary task is predicted with its logit offset set to 0 for the call (and restored afterwards),
    so raw is the un-offset P(class 1) and the stored offset becomes the result's threshold."""
    spec = model.cfg.task(task)
    _check_labelled(spec, examples)
    offsets = model.cfg.logit_offsets
    had, stored = task in offsets, model.cfg.logit_offset(task)
    if spec.binary:
        offsets[task] = 0.0
    try:
        raw = predict_raw(model, tokenizer, task, examples, batch_size, device, progress=progress)
    finally:
        if spec.binary:
            if had:
                offsets[task] = stored
            else:
                offsets.pop(task, None)
    threshold = 1.0 / (1.0 + math.exp(stored)) if spec.binary else 0.5
    return TaskResult(spec, list(examples), raw, threshold)


def evaluate_checkpoint(model, tokenizer, data: dict[str, list[Example]], progress=None, batch_size: int = 64,
                        device="cpu") -> dict[str, TaskResult]:
    """predict_task for every task in `data`; progress(done, total) counts examples over all tasks."""
    total = sum(len(v) for v in data.values())
    out, before = {}, 0
    for task, examples in data.items():
        step = None if progress is None else (lambda done, _n, b=before: progress(b + done, total))
        out[task] = predict_task(model, tokenizer, task, examples, batch_size, step, device)
        before += len(examples)
    return out


# ---- metrics -----------------------------------------------------------------------------------

def summary(r: TaskResult) -> dict:
    """The task's metrics (keyed as evaluate.task_metrics: sst_acc, sts_corr, ...) plus n and extras:
    accuracy, macro_f1, ece (classification); threshold, f1, roc_auc, average_precision (binary);
    pearson, spearman, mae, rmse (regression)."""
    raw = r.probs[:, 1] if r.spec.binary else r.raw
    out = {"n": r.n, **task_metrics(r.spec, raw, r.examples)}
    if r.is_classification:
        rep = classification_report(r)
        out.update(accuracy=rep["accuracy"], macro_f1=rep["macro_f1"], ece=reliability(r)["ece"])
        if r.spec.binary:
            out.update(threshold=r.threshold, f1=float(rep["f1"][1]), roc_auc=roc_curve(r)["auc"],
                       average_precision=pr_curve(r)["ap"])
    else:
        reg = regression_report(r)
        out.update(pearson=reg["pearson"], spearman=reg["spearman"], mae=reg["mae"], rmse=reg["rmse"])
    return out


def _need(r: TaskResult, kind: str) -> None:
    ok = r.spec.binary if kind == "binary" else r.spec.kind == kind
    if not ok:
        raise ValueError(f"task {r.spec.name} is not a {kind} task; this analysis is for "
                         f"{'binary (bce) classification' if kind == 'binary' else kind} tasks")


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0 (scikit-learn's zero_division=0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def classification_report(r: TaskResult) -> dict:
    """Confusion matrix (rows gold, columns predicted), row-normalised, and per-class precision, recall,
    F1 and support; macro-F1 averages all K classes."""
    _need(r, "classification")
    k = r.spec.classes
    confusion = np.bincount(r.gold * k + r.pred, minlength=k * k).reshape(k, k)
    tp, support, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)
    return {"labels": [r.spec.label_name(i) for i in range(k)], "confusion": confusion,
            "confusion_normalised": _safe_div(confusion, support[:, None] * np.ones((1, k))),
            "precision": precision, "recall": recall, "f1": f1, "support": support,
            "macro_f1": float(f1.mean()), "accuracy": float(tp.sum() / max(r.n, 1))}


def threshold_curve(r: TaskResult, points: int = 201) -> dict:
    """Accuracy and F1 (of class 1) when class 1 is predicted for raw > t, for `points` thresholds in
    [0, 1] and the stored one (which the grid always holds)."""
    _need(r, "binary")
    t = np.unique(np.concatenate([np.linspace(0.0, 1.0, points), [r.threshold]]))
    gold = r.gold == 1
    pos, neg = np.sort(r.raw[gold]), np.sort(r.raw[~gold])
    tp = len(pos) - np.searchsorted(pos, t, side="right")   # positives above t
    fp = len(neg) - np.searchsorted(neg, t, side="right")
    tn = len(neg) - fp
    acc = (tp + tn) / max(r.n, 1)
    f1 = _safe_div(2 * tp, len(pos) + tp + fp)
    at = int(np.searchsorted(t, r.threshold))
    best = int(np.argmax(acc))
    return {"thresholds": t, "accuracy": acc, "f1": f1, "threshold": r.threshold,
            "stored_accuracy": float(acc[at]), "stored_f1": float(f1[at]),
            "best_threshold": float(t[best]), "best_accuracy": float(acc[best])}


def _binary_curve(r: TaskResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, threshold) at each distinct score, highest score first."""
    order = np.argsort(-r.raw, kind="mergesort")
    score, y = r.raw[order], (r.gold[order] == 1)
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the last index of each run of ties
    tps = np.cumsum(y)[last]
    return (last + 1) - tps, tps, score[last]


def roc_curve(r: TaskResult) -> dict:
    """ROC curve of P(class 1), starting at (0, 0), and its area (nan when one class is absent)."""
    _need(r, "binary")
    fps, tps, thr = _binary_curve(r)
    P, N = int((r.gold == 1).sum()), int((r.gold != 1).sum())
    fpr = np.r_[0.0, fps / N] if N else np.full(len(fps) + 1, np.nan)
    tpr = np.r_[0.0, tps / P] if P else np.full(len(tps) + 1, np.nan)
    auc = float(trapezoid(tpr, fpr)) if P and N else float("nan")
    return {"fpr": fpr, "tpr": tpr, "thresholds": np.r_[np.inf, thr], "auc": auc, "positives": P, "negatives": N}


def pr_curve(r: TaskResult) -> dict:
    """Precision-recall curve of P(class 1), from (recall 0, precision 1), and the average precision
    sum_n (R_n - R_n-1) P_n (nan without positives)."""
    _need(r, "binary")
    fps, tps, thr = _binary_curve(r)
    P = int((r.gold == 1).sum())
    precision = _safe_div(tps, tps + fps)
    recall = tps / P if P else np.full(len(tps), np.nan)
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision)) if P else float("nan")
    return {"precision": np.r_[1.0, precision], "recall": np.r_[0.0, recall], "thresholds": np.r_[np.inf, thr],
            "ap": ap, "positives": P, "prevalence": P / max(r.n, 1)}


def reliability(r: TaskResult, bins: int = 10) -> dict:
    """Reliability of the stated confidence (the probability of the predicted class): per bin
    (lo, hi] its count, mean confidence and accuracy; ECE = sum_b n_b/N |acc_b - conf_b|."""
    _need(r, "classification")
    edges = np.linspace(0.0, 1.0, bins + 1)
    conf, ok = r.confidence, r.correct.astype(float)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(idx, conf, bins) / count
        acc = np.bincount(idx, ok, bins) / count
    gaps = np.where(count > 0, np.abs(np.nan_to_num(acc) - np.nan_to_num(mean_conf)), 0.0)
    ece = float((count * gaps).sum() / r.n) if r.n else float("nan")
    return {"edges": edges, "confidence": mean_conf, "accuracy": acc, "count": count, "ece": ece}


def _corr(fn, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(fn(x, y)[0])


def gold_bin_edges(spec: TaskSpec, bins: int = 5) -> np.ndarray:
    lo, hi = spec.range
    return np.linspace(lo, hi, bins + 1)


def _gold_bins(r: TaskResult, bins: int) -> np.ndarray:
    """Each example's gold-score bin: [lo, hi), the last one closed."""
    return np.clip(np.searchsorted(gold_bin_edges(r.spec, bins), r.gold, side="right") - 1, 0, bins - 1)


def regression_report(r: TaskResult, bins: int = 5) -> dict:
    """Pearson, Spearman, MAE, RMSE, and per gold-score bin the count, the mean absolute error and the
    mean signed error (predicted - gold: above 0 the model scores that bin too high)."""
    _need(r, "regression")
    gold, pred = r.gold, r.raw
    err = pred - gold
    idx = _gold_bins(r, bins)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore"):
        mae_bin = np.bincount(idx, np.abs(err), bins) / count
        signed = np.bincount(idx, err, bins) / count
        mean_pred = np.bincount(idx, pred, bins) / count
    edges = gold_bin_edges(r.spec, bins)
    return {"pearson": _corr(pearsonr, pred, gold), "spearman": _corr(spearmanr, pred, gold),
            "mae": float(np.abs(err).mean()) if r.n else float("nan"),
            "rmse": float(np.sqrt((err ** 2).mean())) if r.n else float("nan"),
            "edges": edges, "bins": [f"{a:g}–{b:g}" for a, b in zip(edges[:-1], edges[1:])],
            "count": count, "mean_abs_error": mae_bin, "mean_signed_error": signed, "mean_predicted": mean_pred}


# ---- the error browser -------------------------------------------------------------------------

def _label_index(spec: TaskSpec, label) -> int:
    names = [spec.label_name(k) for k in range(spec.classes)]
    if isinstance(label, str) and label in names:
        return names.index(label)
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < spec.classes:
        return int(label)
    raise ValueError(f"label={label!r} is not allowed; task {spec.name}'s classes: "
                     f"{', '.join(names)} (or their indices 0..{spec.classes - 1})")


def _bin_mask(r: TaskResult, gold_bin, bins: int) -> np.ndarray:
    if isinstance(gold_bin, (tuple, list)) and len(gold_bin) == 2:
        lo, hi = map(float, gold_bin)
        return (r.gold >= lo) & (r.gold <= hi)
    if isinstance(gold_bin, (int, np.integer)) and not isinstance(gold_bin, bool) and 0 <= gold_bin < bins:
        return _gold_bins(r, bins) == gold_bin
    raise ValueError(f"gold_bin={gold_bin!r} is not allowed; allowed values: a bin index 0..{bins - 1} "
                     f"of {regression_report(r, bins)['bins']}, or a (low, high) pair of gold scores")


def _value(spec: TaskSpec, v) -> str | float:
    return spec.label_name(int(v)) if spec.kind == "classification" else round(float(v), 4)


def _row(r: TaskResult, i: int, words: np.ndarray) -> dict:
    e = r.examples[i]
    return {"index": int(i), "id": e.id, "text_a": e.text_a, "text_b": e.text_b,
            "gold": _value(r.spec, r.gold[i]), "predicted": _value(r.spec, r.pred[i]), "words": int(words[i])}


def mistakes(r: TaskResult, label=None, gold_bin=None, min_words: int | None = None,
             max_words: int | None = None, limit: int | None = 50, bins: int = 5) -> list[dict]:
    """The most confident mistakes first (classification: rows with `confidence`, the stated
    probability of the wrong class), or the largest absolute errors first (regression: rows with
    `abs_error`). Filters: label, the gold class (name or index; classification); gold_bin, a bin
    index of regression_report(r, bins) or a (low, high) range of gold scores (regression); words,
    the example's word count (both sentences), inclusive bounds."""
    words = r.words()
    keep = np.ones(r.n, dtype=bool)
    if r.is_classification:
        if gold_bin is not None:
            raise ValueError(f"gold_bin is for regression tasks; task {r.spec.name} is classification (use label)")
        keep &= ~r.correct
        if label is not None:
            keep &= r.gold == _label_index(r.spec, label)
        score, key = r.confidence, "confidence"
    else:
        if label is not None:
            raise ValueError(f"label is for classification tasks; task {r.spec.name} is regression (use gold_bin)")
        if gold_bin is not None:
            keep &= _bin_mask(r, gold_bin, bins)
        score, key = r.abs_error, "abs_error"
    if min_words is not None:
        keep &= words >= min_words
    if max_words is not None:
        keep &= words <= max_words
    picked = np.flatnonzero(keep)
    picked = picked[np.argsort(-score[picked], kind="mergesort")][:limit]
    return [{**_row(r, i, words), key: float(score[i])} for i in picked]


# ---- two checkpoints ---------------------------------------------------------------------------

def check_comparable(sa: TaskSpec, sb: TaskSpec) -> None:
    """Two checkpoints' definitions of a task can be compared when they predict the same thing."""
    if (sa.kind, sa.classes, sa.range, sa.binary) != (sb.kind, sb.classes, sb.range, sb.binary):
        raise ValueError(f"task {sa.name} and task {sb.name} predict different things "
                         f"({_describe(sa)} vs {_describe(sb)}); only the same task can be compared")


def _describe(s: TaskSpec) -> str:
    if s.kind == "regression":
        return f"a score in {s.range[0]:g}..{s.range[1]:g}"
    return f"{s.classes} classes" + (" with one probability (bce)" if s.binary else "")


def _check_pair(a: TaskResult, b: TaskResult) -> None:
    sa, sb = a.spec, b.spec
    check_comparable(sa, sb)
    if [e.id for e in a.examples] != [e.id for e in b.examples] or \
            not np.array_equal(a.gold, b.gold):
        raise ValueError(f"task {sa.name}: the two results are not on the same examples; "
                         "compare two checkpoints on the same labelled set")


def _pair_row(a: TaskResult, b: TaskResult, i: int, words: np.ndarray) -> dict:
    row = _row(a, i, words)
    del row["predicted"]
    row.update(a_predicted=_value(a.spec, a.pred[i]), b_predicted=_value(b.spec, b.pred[i]))
    if a.is_classification:
        row.update(a_confidence=float(a.confidence[i]), b_confidence=float(b.confidence[i]))
    else:
        row.update(a_abs_error=float(a.abs_error[i]), b_abs_error=float(b.abs_error[i]),
                   improvement=float(a.abs_error[i] - b.abs_error[i]))
    return row


def compare(a: TaskResult, b: TaskResult, seed: int = 0, limit: int | None = 50,
            resamples: int = BOOTSTRAP_RESAMPLES, level: float = BOOTSTRAP_LEVEL) -> dict:
    """Checkpoint b against checkpoint a on the same examples.

    metrics: {key: {a, b, delta = b - a}} for every number summary() gives.
    Classification: a_right_b_wrong and b_right_a_wrong rows (the wrong one's most confident first),
    and mcnemar {b01: a wrong and b right, b10: a right and b wrong, n: b01 + b10, p}, p the exact
    two-sided binomial test of b01 among the discordant pairs (1 when there are none).
    Regression: a_better and b_better rows (largest difference of absolute errors first), and
    bootstrap {metric, a, b, delta, low, high, level, resamples, seed}: a paired bootstrap interval
    of the difference of the task's main correlation (the same resampled examples for both).
    """
    _check_pair(a, b)
    sa, sb = summary(a), summary(b)
    metrics = {k: {"a": sa[k], "b": sb[k], "delta": sb[k] - sa[k]} for k in sa
               if k != "n" and isinstance(sa[k], (int, float)) and isinstance(sb.get(k), (int, float))}
    out = {"task": a.spec.name, "n": a.n, "metrics": metrics}
    words = a.words()
    if a.is_classification:
        a_only = np.flatnonzero(a.correct & ~b.correct)
        b_only = np.flatnonzero(b.correct & ~a.correct)
        a_only = a_only[np.argsort(-b.confidence[a_only], kind="mergesort")][:limit]
        b_only = b_only[np.argsort(-a.confidence[b_only], kind="mergesort")][:limit]
        b01, b10 = int((b.correct & ~a.correct).sum()), int((a.correct & ~b.correct).sum())
        p = float(binomtest(b01, b01 + b10, 0.5).pvalue) if b01 + b10 else 1.0
        out.update(a_right_b_wrong=[_pair_row(a, b, i, words) for i in a_only],
                   b_right_a_wrong=[_pair_row(a, b, i, words) for i in b_only],
                   mcnemar={"b01": b01, "b10": b10, "n": b01 + b10, "p": p})
    else:
        gain = a.abs_error - b.abs_error  # > 0: b is closer to gold
        b_better = np.flatnonzero(gain > 0)
        a_better = np.flatnonzero(gain < 0)
        b_better = b_better[np.argsort(-gain[b_better], kind="mergesort")][:limit]
        a_better = a_better[np.argsort(gain[a_better], kind="mergesort")][:limit]
        out.update(a_better=[_pair_row(a, b, i, words) for i in a_better],
                   b_better=[_pair_row(a, b, i, words) for i in b_better],
                   bootstrap=paired_bootstrap(a, b, seed=seed, resamples=resamples, level=level))
    return out


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))


def _rowwise_corr(metric: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if metric == "spearman":
        x, y = rankdata(x, axis=1), rankdata(y, axis=1)
    return _rowwise_pearson(x, y)


def paired_bootstrap(a: TaskResult, b: TaskResult, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                     level: float = BOOTSTRAP_LEVEL, metric: str | None = None) -> dict:
    """Percentile interval of corr(b) - corr(a) over `resamples` resamples of the examples (with
    replacement, the same indices for both checkpoints), seeded. metric: pearson or spearman
    (default: the task's main metric)."""
    _need(a, "regression")
    _check_pair(a, b)
    metric = metric or a.spec.main_metric
    if metric not in ("pearson", "spearman"):
        raise ValueError(f"metric={metric!r} is not allowed; allowed values: pearson, spearman")
    fn = pearsonr if metric == "pearson" else spearmanr
    gold = a.gold
    point_a, point_b = _corr(fn, a.raw, gold), _corr(fn, b.raw, gold)
    rng = np.random.default_rng(seed)
    deltas = []
    chunk = max(1, 2_000_000 // max(a.n, 1))  # bounds the memory of one chunk of resamples
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, a.n, size=(min(chunk, resamples - start), a.n))
        g = gold[idx]
        deltas.append(_rowwise_corr(metric, b.raw[idx], g) - _rowwise_corr(metric, a.raw[idx], g))
    d = np.concatenate(deltas) if deltas else np.zeros(0)
    d = d[np.isfinite(d)]
    tail = (1 - level) / 2 * 100
    low, high = (np.percentile(d, [tail, 100 - tail]) if len(d) else (float("nan"), float("nan")))
    return {"metric": metric, "a": point_a, "b": point_b, "delta": point_b - point_a, "low": float(low),
            "high": float(high), "level": level, "resamples": resamples, "used": int(len(d)), "seed": seed}
