"""How much averaging checkpoints' outputs buys on one task: each checkpoint's dev score alone, then the
score of the mean output of every combination of two or more of them.

    python scripts/ensemble_scores.py RUN_A/best RUN_B/best RUN_C/best --task sts --data-dir data/cs224n

The mean is of what each checkpoint predicts (a score in the task's range, or class probabilities), as a
task with several members (lora_task_members) averages its members. For a regression or multi-class
task; a binary task's threshold is a fit of its own (scripts/para_ensemble.py does it for Quora).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import markdown_table  # noqa: E402
from mtbert.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from mtbert.data import DataError, load_split  # noqa: E402
from mtbert.evaluate import predict_raw, task_metrics  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint folders with the task")
    ap.add_argument("--task", required=True, help="the task to score (a regression or multi-class task)")
    ap.add_argument("--data-dir", default="data/cs224n", help="the folder of the task's files")
    ap.add_argument("--split", default="dev", choices=("train", "dev"))
    args = ap.parse_args(argv)
    try:
        models = [load_checkpoint(c)[:2] for c in args.checkpoints]
        spec = models[0][0].cfg.task(args.task)
        if spec.binary:
            ap.error(f"--task {args.task} is binary: its threshold is a fit of its own; use scripts/para_ensemble.py")
        examples = load_split(args.data_dir, args.split, [spec])[spec.name][0]
        outputs = [predict_raw(model, tok, spec.name, examples) for model, tok in models]
    except (CheckpointError, DataError, ValueError) as e:
        ap.error(str(e))
    key = spec.metric_key(spec.metrics[0])
    rows = []
    for k in range(1, len(outputs) + 1):
        for combo in itertools.combinations(range(len(outputs)), k):
            score = task_metrics(spec, np.mean([outputs[i] for i in combo], axis=0), examples)[key]
            rows.append([" + ".join(args.checkpoints[i] for i in combo), str(k), f"{score:.4f}"])
    print(f"{spec.name} {args.split}: {len(examples):,} examples, {key} of each checkpoint and of the mean output "
          "of each combination")
    print(markdown_table(["checkpoints", "members", key], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
