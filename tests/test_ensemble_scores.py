"""scripts/ensemble_scores.py: a checkpoint alone scores what `evaluate` measures, the mean of two copies
of one checkpoint scores the same, two different ones the score of their averaged predictions, and a
binary task or a missing file is refused in words."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from mtbert.checkpoint import load_checkpoint
from mtbert.data import load_split
from mtbert.evaluate import predict_raw, task_metrics
from mtbert.train import Trainer
from test_train import tiny_cfg

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/ensemble_scores.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def rows(stdout: str) -> dict[str, float]:
    table = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| checkpoints")]
    return {c[0]: float(c[2]) for c in ([x.strip() for x in line.strip("|").split("|")] for line in table)}


def test_alone_copies_and_pairs_score_as_their_averaged_predictions(tiny_base, tmp_path):
    bests = []
    for seed in (3, 4):
        assert Trainer(tiny_cfg(tiny_base, epochs=1, seed=seed), tmp_path / f"run{seed}", progress=False).run() == "finished"
        bests.append(tmp_path / f"run{seed}" / "best")
    out = run(bests[0], bests[0], bests[1], "--task", "sts", "--data-dir", SAMPLE)
    assert out.returncode == 0, out.stderr
    got = rows(out.stdout)
    examples = load_split(SAMPLE, "dev", ["sts"])["sts"][0]
    raw = [predict_raw(*load_checkpoint(b)[:2], "sts", examples) for b in bests]
    spec = load_checkpoint(bests[0])[0].cfg.task("sts")
    alone = [task_metrics(spec, r, examples)["sts_corr"] for r in raw]
    mean = task_metrics(spec, (raw[0] + raw[1]) / 2, examples)["sts_corr"]
    a, b = str(bests[0]), str(bests[1])
    assert got[a] == round(alone[0], 4) and got[b] == round(alone[1], 4)
    assert got[f"{a} + {a}"] == got[a]  # one checkpoint twice is itself
    assert got[f"{a} + {b}"] == round(mean, 4) and alone[0] != alone[1]
    assert np.isclose(got[f"{a} + {a} + {b}"], round(task_metrics(spec, (2 * raw[0] + raw[1]) / 3, examples)["sts_corr"], 4))


    out = run(bests[0], "--task", "para", "--data-dir", SAMPLE)
    assert out.returncode == 2 and "binary" in out.stderr and "para_ensemble.py" in out.stderr


def test_a_missing_checkpoint_is_refused_in_words(tmp_path):
    out = run(tmp_path / "nowhere", "--task", "sts")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "nowhere" in out.stderr
