"""Metrics on any split (each task's metrics, the average of their main scores) and prediction files."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from .data import Example, as_spec, make_batch
from .model import joint_read, mean_of_members

from .report import SEED_COLUMNS, seed_table  # noqa: F401  (re-exported)


def _to_device(batch: dict, device) -> dict:
    return {k: (_to_device(v, device) if isinstance(v, dict) else
                v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def predict_one_batch(model, tokenizer, task: str, examples: list[Example], device="cpu") -> torch.Tensor:
    """model.predict on `examples` as one batch (so identical inputs get identical answers, padding
    alike), over both orders for an order-free pair task, as predict_raw answers."""
    spec = model.cfg.task(task)
    orders = [examples] + ([[e.swapped() for e in examples]] if model.cfg.both_orders(task) else [])
    outs = [model.output(task, _to_device(make_batch(spec, ex, tokenizer), device)) for ex in orders]
    return model.finish(task, sum(outs) / len(outs))


@torch.inference_mode()
def predict_raw(model, tokenizer, task: str, examples: list[Example], batch_size: int = 64,
                device: str | torch.device = "cpu", autocast_dtype=None, progress=None) -> np.ndarray:
    """Model outputs in input order: (N, K) class probabilities, (N,) probability of class 1 (binary),
    or (N,) score in the task's range. progress(done, total), if given, is called after each batch.

    The same numbers as predict_one_batch one example at a time, faster: everything is tokenised at
    once, batches are sorted by token count (the least padding), and a separately encoded pair task
    embeds each distinct sentence once (a dev set repeats its questions) and applies its head to the
    gathered embeddings. An order-free pair task (model.cfg.symmetric) is answered with the mean of
    its outputs (logits, or scores) over (a, b) and (b, a): the sentences' embeddings serve both
    orders, and only a joint read encodes each pair twice."""
    spec = model.cfg.task(task)
    if not examples:
        return np.zeros((0, spec.num_outputs) if spec.num_outputs > 1 else (0,), dtype=np.float32)
    device = torch.device(device)
    texts_a, texts_b = [e.text_a for e in examples], [e.text_b for e in examples] if spec.is_pair else None
    orders = [(texts_a, texts_b)] + ([(texts_b, texts_a)] if model.cfg.both_orders(task) else [])
    mean_of_orders = lambda outs: outs[0] if len(outs) == 1 else sum(outs) / len(outs)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if spec.reads_apart:
                distinct, (ia, ib) = _distinct(texts_a, texts_b)
                members = model.members(task)
                joint_units = len(orders) * len(examples) if spec.reads_jointly else 0
                done = _progress_in(progress, len(examples), len(members) * len(distinct) + joint_units)
                js = [None] * len(orders)
                if spec.reads_jointly:  # the cross_concat head's joint read: one encoding per pair and order
                    js = [_encoded_batches(tokenizer, a, b, batch_size, device,
                                           lambda enc: model.embed(enc, joint_read(task)), _after(done, k * len(examples)))
                          for k, (a, b) in enumerate(orders)]
                outs = []
                for k, member in enumerate(members):  # each member embeds with its own adapters
                    # a batch of pairs is 2 x batch_size sentences, as when each pair's two sides are encoded together
                    emb = _encoded_batches(tokenizer, distinct, None, 2 * batch_size, device,
                                           lambda enc, m=member: model.embed(enc, m),
                                           _after(done, joint_units + k * len(distinct)))
                    u, v = emb[ia.to(device)], emb[ib.to(device)]
                    outs.append(mean_of_orders([model.pair_output(task, x, y, j, member=member)
                                                for (x, y), j in zip(((u, v), (v, u)), js)]))
                out = model.finish(task, mean_of_members(outs))
            else:
                done = _progress_in(progress, len(examples), len(orders) * len(examples))
                out = model.finish(task, mean_of_orders([
                    _encoded_batches(tokenizer, a, b, batch_size, device, lambda enc: model.output(task, {"enc": enc}),
                                     _after(done, k * len(examples)))
                    for k, (a, b) in enumerate(orders)]))
    finally:
        model.train(was_training)
    return out.float().cpu().numpy()


def _after(done, before: int):
    """A batch callback counting on from `before` units already done (None without progress)."""
    return None if done is None else (lambda n: done(before + n))


def _distinct(*columns: list[str]) -> tuple[list[str], list[torch.Tensor]]:
    """The distinct strings of the columns, and each column as indices into them."""
    index: dict[str, int] = {}
    cols = [torch.tensor([index.setdefault(t, len(index)) for t in col], dtype=torch.long) for col in columns]
    return list(index), cols


def _progress_in(progress, total: int, units: int):
    """A callback counting `units` of work done, reported to progress as examples out of `total`."""
    if progress is None:
        return None
    return lambda done: progress(total if done >= units else done * total // units, total)


def _encoded_batches(tokenizer, texts: list[str], pairs: list[str] | None, batch_size: int, device,
                     fn, done=None) -> torch.Tensor:
    """fn over the texts (or text pairs) in batches of similar token counts; its rows in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is not allowed; choose a positive integer")
    enc = tokenizer.encode(texts, pairs)  # padded to the longest of all; each batch is cut to its own longest
    lengths = enc["attention_mask"].sum(1)
    order = torch.sort(lengths, stable=True).indices
    out = None
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        T = int(lengths[idx[-1]])
        rows = fn({k: v[idx, :T].to(device) for k, v in enc.items()})
        if out is None:
            out = rows.new_empty((len(order), *rows.shape[1:]))
        out[idx.to(out.device)] = rows
        if done is not None:
            done(s + len(idx))
    return out


def to_predictions(spec, raw: np.ndarray) -> list:
    """A class index (classification) or a score to 4 decimals (regression): `mtbert predict`'s output."""
    spec = as_spec(spec)
    if spec.kind == "regression":
        return [round(float(x), 4) for x in raw]
    return class_predictions(spec, raw).astype(int).tolist()


def class_predictions(spec, raw: np.ndarray) -> np.ndarray:
    return (raw > 0.5).astype(int) if raw.ndim == 1 else raw.argmax(-1)


def predict_examples(model, tokenizer, task: str, examples: list[Example], batch_size: int = 64,
                     device="cpu", autocast_dtype=None) -> list:
    return to_predictions(model.cfg.task(task), predict_raw(model, tokenizer, task, examples, batch_size, device, autocast_dtype))


def task_metrics(spec, raw: np.ndarray, examples: list[Example]) -> dict:
    """The task's metrics, keyed as in results (sst_acc, para_acc, sts_corr, mrpc_f1, ...)."""
    spec = as_spec(spec)
    y = np.array([e.label for e in examples], dtype=np.float64)
    out = {}
    if spec.kind == "classification":
        pred = class_predictions(spec, raw)
        for m in spec.metrics:
            out[spec.metric_key(m)] = {"accuracy": lambda: float((pred == y).mean()),
                                       "f1": lambda: _f1(pred == 1, y == 1),
                                       "macro_f1": lambda: float(np.mean([_f1(pred == k, y == k)
                                                                          for k in range(spec.classes)]))}[m]()
        return out
    degenerate = len(y) < 2 or np.std(raw) == 0 or np.std(y) == 0
    for m in spec.metrics:
        corr = pearsonr if m == "pearson" else spearmanr
        out[spec.metric_key(m)] = float("nan") if degenerate else float(corr(raw, y)[0])
    return out


def _f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """F1 of one class; 0 when the class is neither predicted nor present (as scikit-learn's zero_division=0)."""
    tp = float((pred & gold).sum())
    denom = float(pred.sum() + gold.sum())
    return 2 * tp / denom if denom else 0.0


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
                   device="cpu", task: str = "para") -> dict:
    """Fit a binary task's logit offset on `fit` labelled pairs (a seeded random pick) and
    score the fitted threshold on the pairs the fit never saw: for a checkpoint trained without
    `calibrate_para`. Sets the offset on the model; returns what it measured."""
    if not 0 < fit < len(examples):
        raise ValueError(f"fit={fit} is not allowed; allowed values: 1..{len(examples) - 1} "
                         f"(there are {len(examples)} labelled pairs and some must be held out)")
    if not model.cfg.task(task).binary:
        raise ValueError(f"task={task!r} is not allowed; a decision threshold is fitted for binary (bce) tasks: "
                         f"{', '.join(s.name for s in model.cfg.tasks if s.binary) or 'none in this model'}")
    previous = model.cfg.logit_offset(task)
    model.cfg.logit_offsets[task] = 0.0
    raw = predict_raw(model, tokenizer, task, examples, batch_size, device)
    y = np.array([e.label for e in examples], dtype=np.float64) > 0.5
    picked = np.zeros(len(examples), dtype=bool)
    picked[np.random.default_rng(seed).permutation(len(examples))[:fit]] = True
    offset = fit_para_offset(raw[picked], y[picked])
    model.cfg.logit_offsets[task] = offset
    acc = lambda probs, mask: float(((probs[mask] > 0.5) == y[mask]).mean())
    shifted = shift_para_probs(raw, offset)
    return {"offset": offset, "previous_offset": previous, "fit_pairs": int(picked.sum()),
            "heldout_pairs": int((~picked).sum()), "acc_fit": acc(shifted, picked),
            "acc_heldout": acc(shifted, ~picked), "acc_heldout_at_0.5": acc(raw, ~picked),
            "acc_heldout_previous": acc(shift_para_probs(raw, previous), ~picked)}


def seed_average(m: dict, specs=None) -> float:
    """The Average: the mean of the tasks' main scores present (the seed's Paraphrase acc, SST acc and
    STS corr for the built-in trio)."""
    keys = [s.main_key for s in specs] if specs is not None else ["para_acc", "sst_acc", "sts_corr"]
    main = [m[k] for k in keys if isinstance(m.get(k), (int, float)) and not math.isnan(m[k])]
    return float(np.mean(main)) if main else float("nan")


def evaluate(model, tokenizer, data: dict[str, list[Example]], batch_size: int = 64, device="cpu",
             autocast_dtype=None, calibrate_para: bool = False, raw_out: dict | None = None,
             calibrate: tuple = ()) -> dict:
    """Metrics for every task present in `data`; `average` is the mean of their main scores.

    calibrate: binary tasks whose decision threshold (model.cfg.logit_offsets) is fitted on these
    examples first, and kept; `<task>_acc_uncalibrated` then reports the plain 0.5 threshold next to
    it (calibrate_para=True is calibrate=("para",)).
    raw_out: filled with each task's raw outputs (the calibrated ones for calibrated tasks).
    """
    calibrate = set(calibrate) | ({"para"} if calibrate_para else set())
    out = {}
    for task, examples in data.items():
        if not examples:
            continue
        spec = model.cfg.task(task)
        if task in calibrate and spec.binary:
            model.cfg.logit_offsets[task] = 0.0
            raw = predict_raw(model, tokenizer, task, examples, batch_size, device, autocast_dtype)
            out[f"{task}_acc_uncalibrated"] = float(((raw > 0.5) == (np.array([e.label for e in examples]) > 0.5)).mean())
            model.cfg.logit_offsets[task] = fit_para_offset(raw, [e.label for e in examples])
            out[f"{task}_logit_offset"] = model.cfg.logit_offsets[task]
            raw = shift_para_probs(raw, model.cfg.logit_offsets[task])
        else:
            raw = predict_raw(model, tokenizer, task, examples, batch_size, device, autocast_dtype)
        if raw_out is not None:
            raw_out[task] = raw
        out.update(task_metrics(spec, raw, examples))
    out["average"] = seed_average(out, [model.cfg.task(t) for t in data if data[t]])
    return out


def write_predictions(path: str | Path, ids: list[str], preds: list) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "prediction"])
        w.writerows(zip(ids, preds))


def predict_text(model, tokenizer, task: str, text_a: str, text_b: str | None = None) -> dict:
    """One input of one task, as the Playground and the Gradio app show it:
    {"task", "title", "kind": "classes" | "probability" | "score", "value", ...}:
      classes      value: {label name: probability}, top: the most likely label
      probability  value: P(class 1) with the decision threshold applied, label: the class it implies
      score        value: the score, range: (low, high)
    """
    spec = model.cfg.task(task)
    if spec.is_pair and text_b is None:
        raise ValueError(f"task {task} reads a pair of sentences; give the second one too")
    raw = predict_raw(model, tokenizer, task, [Example("0", text_a, text_b if spec.is_pair else None, None)])[0]
    out = {"task": task, "title": spec.title}
    if spec.kind == "regression":
        return {**out, "kind": "score", "value": float(raw), "range": spec.range}
    if spec.binary:
        p = float(raw)
        return {**out, "kind": "probability", "value": p, "label": spec.label_name(int(p > 0.5)),
                "positive": spec.label_name(1)}
    probs = {spec.label_name(k): float(x) for k, x in enumerate(raw)}
    return {**out, "kind": "classes", "value": probs, "top": max(probs, key=probs.get)}
