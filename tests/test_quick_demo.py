"""The quick CPU demo, as a newcomer runs it: `python -m mtbert train --config configs/quick-demo.yaml`
on the shipped sample and the packaged MiniLM, then `python -m mtbert evaluate` on its best checkpoint.

Its 240 steps must beat, on all three tasks of the sample's dev files, the checkpoint the
repository shipped before the demo existed (heads over the frozen MiniLM:
`python -m mtbert evaluate --checkpoint checkpoints/minilm-l6-heads --split dev --data-dir data/sample`
gave Quora 0.755, SST 0.375, STS 0.856). That bar stays fixed when the shipped checkpoint changes.
The steps are what is checked, on any machine: a slower one than the 2 cores the demo was measured
on would reach the config's time budget (under 3 minutes) first, and that budget is checked apart.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_tables import evaluate_table

REPO = Path(__file__).resolve().parents[1]
BAR = {"Paraphrase acc": 0.755, "SST acc": 0.375, "STS corr": 0.856}
MAX_TRAIN_S = 180

pytestmark = pytest.mark.slow


def train_demo(run: Path, *flags: str) -> tuple[str, list[dict]]:
    """Train the demo into run; its stdout and its dev evaluations."""
    r = subprocess.run([sys.executable, "-m", "mtbert", "train", "--config", "configs/quick-demo.yaml",
                        "--run-dir", str(run), "--no-progress", *flags],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"type": "eval"' in line]
    return r.stdout, evals


def test_quick_demo_beats_the_old_shipped_checkpoint_in_its_240_steps(tmp_path):
    run = tmp_path / "quick-demo"
    out, evals = train_demo(run, "--time-budget-s", "none")
    assert "[finish] max_steps 240 reached" in out
    steps = {e["step"] for e in evals}  # every 60 steps, and at the end of each epoch of 188
    assert {60, 120, 180, 240} <= steps and max(steps) == 240
    scores = evaluate_table(run / "best")
    short = {t: f"{scores[t]:.3f} <= {bar}" for t, bar in BAR.items() if not scores[t] > bar}
    assert not short, f"the quick demo's best checkpoint does not beat the bar: {short}"
    # the evaluate command and the run's own record of its best checkpoint agree
    best = json.loads((run / "best" / "metrics.json").read_text())["dev"]
    assert abs(best["sst_acc"] - scores["SST acc"]) < 1e-3 and abs(best["sts_corr"] - scores["STS corr"]) < 1e-3


def test_the_demos_time_budget_ends_it_on_a_slower_machine(tmp_path):
    """The config's budget is what keeps the demo under 3 minutes anywhere; a budget of a few seconds
    stands in for a machine too slow for 240 steps: the run ends on the budget, evaluates and keeps
    a best checkpoint."""
    budget = yaml.safe_load((REPO / "configs" / "quick-demo.yaml").read_text())["time_budget_s"]
    assert budget <= MAX_TRAIN_S
    run = tmp_path / "slow"
    out, evals = train_demo(run, "--time-budget-s", "6")
    assert "[finish] time budget 6 s reached" in out
    last = evals[-1]
    assert 6 <= last["train_time_s"] and last["step"] < 240
    assert (run / "best" / "mtbert.json").is_file()
