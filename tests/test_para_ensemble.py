"""scripts/para_ensemble.py: checkpoints' Quora logits alone and summed, each reading thresholded the way
a run thresholds it. A checkpoint alone must score what its run recorded; two copies of one checkpoint
summed double every logit, so the fitted offset doubles and the accuracies stay."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mtbert.train import Trainer
from test_train import tiny_cfg

REPO = Path(__file__).resolve().parents[1]


def rows(stdout: str) -> dict[str, list[str]]:
    table = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| reading")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)}


def test_a_checkpoint_alone_scores_its_runs_quora_and_a_doubled_reading_keeps_its_accuracy(tiny_base, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_base, epochs=1, calibrate_para=True)
    assert Trainer(cfg, run, progress=False).run() == "finished"
    best = run / "best"
    dev = json.loads((best / "metrics.json").read_text())["dev"]
    out = subprocess.run([sys.executable, "scripts/para_ensemble.py", str(best), str(best)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    table = rows(out.stdout)
    alone, summed = table[str(best)], table["sum of the logits"]
    assert float(alone[1]) == round(dev["para_acc"], 4) and float(alone[2]) == round(dev["para_acc_heldout"], 4)
    assert float(alone[0]) == round(dev["para_logit_offset"], 3)
    assert summed[1:] == alone[1:] and abs(float(summed[0]) - 2 * float(alone[0])) <= 0.002
    assert "agree on 1.000 of the pairs" in out.stdout


def test_a_checkpoint_without_its_runs_settings_is_refused(tiny_base, tmp_path):
    out = subprocess.run([sys.executable, "scripts/para_ensemble.py", str(tiny_base)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and str(tiny_base) in out.stderr and "Traceback" not in out.stderr
