"""`python -m mtbert evaluate` as a user runs it, its printed table read back by column title."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def evaluate_table(checkpoint: Path | str, data_dir: Path | str = "data/sample", *flags: str) -> dict[str, float]:
    """The Dev row of `mtbert evaluate --split dev`'s table, by column title."""
    r = subprocess.run([sys.executable, "-m", "mtbert", "evaluate", "--checkpoint", str(checkpoint),
                        "--split", "dev", "--data-dir", str(data_dir), *flags],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("|")]
    titles = [c.strip() for c in lines[0].strip("|").split("|")]
    dev = next(line for line in lines if line.startswith("| Dev"))
    return {t: float(v) for t, v in zip(titles[1:], dev.strip("|").split("|")[1:]) if v.strip()}
