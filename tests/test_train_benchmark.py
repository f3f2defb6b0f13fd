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


def test_lora_step_benchmark_smoke(tmp_path, tiny_base):
    """benchmarks/lora_step.py times every variant on every task of an adapter recipe, the reference at
    1.00x, and rewrites only its own section."""
    from benchmarks.lora_step import VARIANTS
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"base_model: {tiny_base}\nmode: lora\nlora_rank: 2\nlora_per_task: true\n"
                   "lora_task_members: {sts: 2}\ntasks: [sst, para, sts]\nschedule: proportional\n"
                   "gradient_method: pcgrad\nbatch_size: 2\nmax_length: 16\nema_decay: 0.99\n")
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\n## Encoder\n\nkeep me\n")
    r = subprocess.run([sys.executable, "benchmarks/lora_step.py", "--config", str(cfg), "--reps", "2", "--warmup", "0",
                        "--threads", "1", "--data-dir", "data/sample", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "keep me" in text and "## Training step: adapter recipe, bf16 autocast and adapter dropout" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [row.split("|")[1].strip() for row in rows] == [label for label, _, _ in VARIANTS]
    cells = [c.strip() for c in rows[0].split("|")[2:-1]]
    assert len(cells) == 4 and all(c.endswith("(1.00x)") and float(c.split()[0]) > 0 for c in cells)
    assert "sst drawn" in text and str(tmp_path) not in text.replace(str(cfg), "")
