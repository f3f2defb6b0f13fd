"""The quick CPU demo, as a newcomer runs it: `python -m mtbert train --config configs/quick-demo.yaml`
on the shipped sample and the packaged MiniLM, then `python -m mtbert evaluate` on its best checkpoint.

It must train for at most 3 minutes and beat, on all three tasks of the sample's dev files, the
checkpoint the repository shipped before the demo existed (heads over the frozen MiniLM:
`python -m mtbert evaluate --checkpoint checkpoints/minilm-l6-heads --split dev --data-dir data/sample`
gave Quora 0.755, SST 0.375, STS 0.856). That bar stays fixed when the shipped checkpoint changes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BAR = {"Paraphrase acc": 0.755, "SST acc": 0.375, "STS corr": 0.856}
MAX_TRAIN_S = 180

pytestmark = pytest.mark.slow


def evaluate_table(checkpoint: Path) -> dict[str, float]:
    """The Dev row of `mtbert evaluate`'s table, by column title."""
    r = subprocess.run([sys.executable, "-m", "mtbert", "evaluate", "--checkpoint", str(checkpoint),
                        "--split", "dev", "--data-dir", "data/sample"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("|")]
    titles = [c.strip() for c in lines[0].strip("|").split("|")]
    dev = next(line for line in lines if line.startswith("| Dev"))
    return {t: float(v) for t, v in zip(titles[1:], dev.strip("|").split("|")[1:])}


def test_quick_demo_trains_in_3_minutes_and_beats_the_old_shipped_checkpoint(tmp_path):
    run = tmp_path / "quick-demo"
    r = subprocess.run([sys.executable, "-m", "mtbert", "train", "--config", "configs/quick-demo.yaml",
                        "--run-dir", str(run), "--no-progress"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"type": "eval"' in line]
    assert max(e["train_time_s"] for e in evals) <= MAX_TRAIN_S
    scores = evaluate_table(run / "best")
    short = {t: f"{scores[t]:.3f} <= {bar}" for t, bar in BAR.items() if not scores[t] > bar}
    assert not short, f"the quick demo's best checkpoint does not beat the bar: {short}"
    # the evaluate command and the run's own record of its best checkpoint agree
    best = json.loads((run / "best" / "metrics.json").read_text())["dev"]
    assert abs(best["sst_acc"] - scores["SST acc"]) < 1e-3 and abs(best["sts_corr"] - scores["STS corr"]) < 1e-3
