"""benchmarks/train.py runs end to end and writes its section without touching the others."""
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_train_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\n## Encoder\n\nkeep me\n")
    r = subprocess.run([sys.executable, "benchmarks/train.py", "--reps", "2", "--warmup", "0", "--batch-size", "2",
                        "--max-length", "16", "--data-dir", "data/sample", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    threads = torch.get_num_threads()
    assert "keep me" in text and \
        f"## Training step: every method (minilm, cpu, {threads} thread{'s' if threads != 1 else ''})" in text
    from mtbert.methods import METHODS
    assert all(f"| {name} |" in text for name in METHODS if name != "sum")  # every method timed
    # the section names the code and the command, but not where this run wrote its output
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert f"commit {commit.strip()}" in text and str(tmp_path) not in text
    assert "Command: `python benchmarks/train.py --reps 2 --warmup 0 --batch-size 2 --max-length 16 --data-dir " \
           "data/sample`" in text
    for method in ("sum (one backward)", "sum + telemetry", "pcgrad"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        ms, per_s = float(row.split("|")[2]), float(row.split("|")[3])
        assert ms > 0
        # batch 2 x 3 tasks per step; the table rounds ms to an integer and examples/s to 0.1
        assert 6000 / (ms + 0.5) - 0.05 <= per_s <= 6000 / max(ms - 0.5, 1e-9) + 0.05
