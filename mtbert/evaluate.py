"""Metrics on any split (SST acc, Quora acc, STS Pearson/Spearman, the seed's Average) and prediction files."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from .data import Example, make_batch

from .report import SEED_COLUMNS, seed_table  # noqa: F401  (re-exported)


def _to_device(batch: dict, device) -> dict:
    return {k: (_to_device(v, device) if isinstance(v, dict) else
                v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.inference_mode()
def predict_raw(model, tokenizer, task: str, examples: list[Example], batch_size: int = 64,
                device: str | torch.device = "cpu", autocast_dtype=None) -> np.ndarray:
    """Model outputs in input order: sst (N, 5) probabilities; para (N,) probability; sts (N,) 0..5."""
    # sorting by length cuts padding to a minimum; the permutation is undone at the end
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text_a) + len(examples[i].text_b or ""))
    was_training = model.training
    model.eval()
    outs = []
    try:
        for s in range(0, len(order), batch_size):
            chunk = [examples[i] for i in order[s:s + batch_size]]
            batch = _to_device(make_batch(task, chunk, tokenizer, model.cfg.encoding(task)), device)
            with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                outs.append(model.predict(task, batch).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        return np.zeros((0, 5) if task == "sst" else (0,), dtype=np.float32)
    flat = torch.cat(outs).numpy()
    result = np.empty_like(flat)
    result[np.array(order)] = flat
    return result


def to_predictions(task: str, raw: np.ndarray) -> list:
    """sst: class 0..4; para: 0/1; sts: float 0..5 (the `mtbert predict` output)."""
    if task == "sst":
        return raw.argmax(-1).astype(int).tolist()
    if task == "para":
        return (raw > 0.5).astype(int).tolist()
    return [round(float(x), 4) for x in raw]


def predict_examples(model, tokenizer, task: str, examples: list[Example], batch_size: int = 64,
                     device="cpu", autocast_dtype=None) -> list:
    return to_predictions(task, predict_raw(model, tokenizer, task, examples, batch_size, device, autocast_dtype))


def task_metrics(task: str, raw: np.ndarray, examples: list[Example]) -> dict:
    y = np.array([e.label for e in examples], dtype=np.float64)
    if task == "sst":
        return {"sst_acc": float((raw.argmax(-1) == y).mean())}
    if task == "para":
        return {"para_acc": float(((raw > 0.5) == (y > 0.5)).mean())}
    if len(y) < 2 or np.std(raw) == 0 or np.std(y) == 0:
        return {"sts_corr": float("nan"), "sts_spearman": float("nan")}
    return {"sts_corr": float(pearsonr(raw, y)[0]), "sts_spearman": float(spearmanr(raw, y)[0])}


def fit_para_offset(probs: np.ndarray, labels) -> float:
    """The logit offset that maximises accuracy on (probs, labels): a fitted decision threshold.

    The stand-in Quora train set is 46 % duplicates with easier negatives than natural Quora
    (37 %), so a model trained on it says "duplicate" too often; one scalar fixes most of that.
    Of the equally good thresholds, the one nearest 0.5 (offset 0) wins.
    """
    y = np.asarray(labels, dtype=np.float64) > 0.5
    if len(y) == 0 or y.all() or not y.any():
        return 0.0
    logit = _logit(probs)
    order = np.argsort(logit)
    s, ys = logit[order], y[order]
    # predicting "duplicate" for everything above cut k: correct = negatives below + positives above
    neg_below = np.concatenate([[0], np.cumsum(~ys)])
    pos_above = ys.sum() - np.concatenate([[0], np.cumsum(ys)])
    correct = neg_below + pos_above
    cuts = np.concatenate([[s[0] - 1.0], (s[1:] + s[:-1]) / 2, [s[-1] + 1.0]])
    distinct = np.concatenate([[True], s[1:] != s[:-1], [True]])  # no cut between equal logits
    correct = np.where(distinct, correct, -1)
    best = np.flatnonzero(correct == correct.max())
    threshold = cuts[best[np.argmin(np.abs(cuts[best]))]]
    return float(-threshold)


def _logit(probs) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def shift_para_probs(probs: np.ndarray, offset: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(_logit(probs) + offset)))


def calibrate_para(model, tokenizer, examples: list[Example], fit: int, seed: int = 0, batch_size: int = 64,
                   device="cpu") -> dict:
    """Fit model.cfg.para_logit_offset on `fit` labelled Quora pairs (a seeded random pick) and
    score the fitted threshold on the pairs the fit never saw: for a checkpoint trained without
    `calibrate_para`. Sets the offset on the model; returns what it measured."""
    if not 0 < fit < len(examples):
        raise ValueError(f"fit={fit} is not allowed; allowed values: 1..{len(examples) - 1} "
                         f"(there are {len(examples)} labelled pairs and some must be held out)")
    previous = model.cfg.para_logit_offset
    model.cfg.para_logit_offset = 0.0
    raw = predict_raw(model, tokenizer, "para", examples, batch_size, device)
    y = np.array([e.label for e in examples], dtype=np.float64) > 0.5
    picked = np.zeros(len(examples), dtype=bool)
    picked[np.random.default_rng(seed).permutation(len(examples))[:fit]] = True
    offset = fit_para_offset(raw[picked], y[picked])
    model.cfg.para_logit_offset = offset
    acc = lambda probs, mask: float(((probs[mask] > 0.5) == y[mask]).mean())
    shifted = shift_para_probs(raw, offset)
    return {"offset": offset, "previous_offset": previous, "fit_pairs": int(picked.sum()),
            "heldout_pairs": int((~picked).sum()), "acc_fit": acc(shifted, picked),
            "acc_heldout": acc(shifted, ~picked), "acc_heldout_at_0.5": acc(raw, ~picked),
            "acc_heldout_previous": acc(shift_para_probs(raw, previous), ~picked)}


def seed_average(m: dict) -> float:
    """The seed's Average: the mean of the task scores present."""
    main = [m[k] for k in ("para_acc", "sst_acc", "sts_corr") if k in m and not math.isnan(m[k])]
    return float(np.mean(main)) if main else float("nan")


def evaluate(model, tokenizer, data: dict[str, list[Example]], batch_size: int = 64, device="cpu",
             autocast_dtype=None, calibrate_para: bool = False, raw_out: dict | None = None) -> dict:
    """Metrics for every task present in `data`; `average` is the mean of those present (the seed's Average).

    calibrate_para: fit model.cfg.para_logit_offset on these Quora examples first (and keep it);
    `para_acc_uncalibrated` then reports the plain 0.5 threshold next to it.
    raw_out: filled with each task's raw outputs (the calibrated ones for para).
    """
    out = {}
    for task, examples in data.items():
        if not examples:
            continue
        if task == "para" and calibrate_para:
            model.cfg.para_logit_offset = 0.0
            raw = predict_raw(model, tokenizer, task, examples, batch_size, device, autocast_dtype)
            out["para_acc_uncalibrated"] = task_metrics(task, raw, examples)["para_acc"]
            model.cfg.para_logit_offset = fit_para_offset(raw, [e.label for e in examples])
            out["para_logit_offset"] = model.cfg.para_logit_offset
            raw = shift_para_probs(raw, model.cfg.para_logit_offset)
        else:
            raw = predict_raw(model, tokenizer, task, examples, batch_size, device, autocast_dtype)
        if raw_out is not None:
            raw_out[task] = raw
        out.update(task_metrics(task, raw, examples))
    out["average"] = seed_average(out)
    return out


def write_predictions(path: str | Path, ids: list[str], preds: list) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "prediction"])
        w.writerows(zip(ids, preds))
