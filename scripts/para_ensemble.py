"""Quora accuracy of checkpoints' paraphrase logits summed: how far two readings of the pairs (say a
cross-encoded and a separately encoded head) make different mistakes.

    python scripts/para_ensemble.py RUN_A/best RUN_B/best --data-dir data/cs224n --quora-train FILE

Each checkpoint's Quora probability on the whole dev set at the plain threshold, as a logit; the sum
of the logits is one more reading. Every reading gets its threshold fitted the way a run fits it (on
the first checkpoint's run's evaluation subset of dev pairs) and is scored on the whole dev set, on
the pairs the fit never saw and at the plain threshold, so the rows compare like for like.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import markdown_table  # noqa: E402
from mtbert.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from mtbert.data import DataError  # noqa: E402
from mtbert.evaluate import _logit, fit_para_offset, predict_raw  # noqa: E402
from mtbert.train import TrainingError, run_eval_sets  # noqa: E402


def para_logits(model, tok, examples: list) -> np.ndarray:
    """The model's Quora logits for `examples`, before its stored threshold (float32, CPU)."""
    model.cfg.logit_offsets["para"] = 0.0
    return _logit(predict_raw(model, tok, "para", examples))


def scores(logits: np.ndarray, y: np.ndarray, fit: np.ndarray) -> dict:
    """A reading's threshold fitted on the `fit` pairs, and its accuracies."""
    offset = fit_para_offset(1 / (1 + np.exp(-logits[fit])), y[fit])
    pred = logits + offset > 0
    return {"offset": offset, "acc": float((pred == y).mean()), "heldout": float((pred == y)[~fit].mean()),
            "plain": float(((logits > 0) == y).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint folders a training run wrote (RUN/best)")
    ap.add_argument("--data-dir", help="the folder of the CS224N files (default: the first run's own)")
    ap.add_argument("--quora-train", help="the Quora train file of the first run, where it is now")
    args = ap.parse_args(argv)
    folders = [Path(c) for c in args.checkpoints]
    try:  # the first checkpoint's run says which dev pairs the threshold is fitted on
        model, tok, meta = load_checkpoint(folders[0])
        _, sets = run_eval_sets(folders[0], meta, args.data_dir, args.quora_train)
    except (CheckpointError, DataError, TrainingError) as e:
        ap.error(str(e))
    examples = sets["dev_full"]["para"]
    fit_ids = {e.id for e in sets["dev"]["para"]}
    fit = np.array([e.id in fit_ids for e in examples])
    y = np.array([e.label for e in examples]) > 0.5
    logits = [para_logits(model, tok, examples)]
    logits += [para_logits(*load_checkpoint(f)[:2], examples) for f in folders[1:]]
    readings = [(str(f), lg) for f, lg in zip(folders, logits)]
    if len(logits) > 1:
        readings.append(("sum of the logits", np.sum(logits, axis=0)))
    rows = []
    for name, lg in readings:
        s = scores(lg, y, fit)
        rows.append([name, f"{s['offset']:+.3f}", f"{s['acc']:.4f}", f"{s['heldout']:.4f}", f"{s['plain']:.4f}"])
    print(f"Quora dev: {len(examples):,} pairs; threshold fitted on {int(fit.sum()):,}, "
          f"held out {int((~fit).sum()):,}")
    if len(logits) > 1:
        both = [lg > 0 for lg in logits]
        print(f"the first two at the plain threshold agree on {float((both[0] == both[1]).mean()):.3f} of the pairs")
    print(markdown_table(["reading", "logit offset", "Quora acc", "held-out acc", "acc at 0.5"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
