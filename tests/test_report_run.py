"""scripts/report_run.py turns a real run folder into the results section, numbers read, not retyped."""
import json
import subprocess
import sys
from pathlib import Path

from mtbert.train import Trainer
from test_train import tiny_cfg

REPO = Path(__file__).resolve().parents[1]


def test_report_of_a_calibrated_run(tiny_base, tmp_path):
    run = tmp_path / "runs" / "r"
    cfg = tiny_cfg(tiny_base, epochs=2, calibrate_para=True, eval_subset=6, full_eval_at_s=[1e-6],
                   data_dir=str(REPO / "data" / "sample"))  # an absolute path, which the report must not print
    assert Trainer(cfg, run, progress=False).run() == "finished"
    out = tmp_path / "results.md"
    out.write_text("# Results\n\n## Other\n\nkeep me\n")
    r = subprocess.run([sys.executable, "scripts/report_run.py", str(run), "--section", "Recipe X", "--out", str(out),
                        "--command", "python -m mtbert train --config c.yaml", "--wall", "0:01:02"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "keep me" in text and "## Recipe X" in text and "wall time 0:01:02" in text
    results = json.loads((run / "status.json").read_text())["results"]
    for name in ("train", "dev"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name.capitalize()} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert cells == [f"{results[name][k]:.3f}" for k in ("para_acc", "sst_acc", "sts_corr", "average", "sts_spearman")]
    dev = results["dev"]
    assert f"on the {dev['para_heldout_examples']} dev pairs the fit never saw: {dev['para_acc_heldout']:.3f}" in text
    best_step = json.loads((run / "best" / "metrics.json").read_text())["step"]
    assert f"(best checkpoint: step {best_step})" in text
    assert "Paraphrase acc at 0.5" in text
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["type"] == "step"]
    assert f"batches per task: sst {len(steps)}, para {len(steps)}, sts {len(steps)};" in text  # parallel: all alike
    assert "Machine: Linux" in text  # this machine, by default
    settings = next(line for line in text.splitlines() if line.startswith("Settings: "))
    assert "data_dir=sample," in settings and str(REPO) not in settings
    r = subprocess.run([sys.executable, "scripts/report_run.py", str(run), "--section", "Recipe X", "--out", str(out),
                        "--machine", "one NVIDIA H200"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Machine: one NVIDIA H200." in out.read_text()
    before = out.read_text()
    r = subprocess.run([sys.executable, "scripts/report_run.py", str(run), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--section" in r.stderr  # no section named: nothing written
    assert out.read_text() == before


def test_compare_runs_puts_two_task_sets_side_by_side_at_one_step(tmp_path):
    """scripts/compare_runs.py: each run's own metrics at the step asked for, '–' for a task it did not
    train, and the CS224N three's average, which every run has."""
    from mtbert.config import TrainConfig
    runs = []
    for name, tasks, extra in (("four", "sst,para,sts,mrpc", {"mrpc_acc": 0.7, "mrpc_f1": 0.8}), ("three", "sst,para,sts", {})):
        run = tmp_path / name
        run.mkdir()
        cfg = TrainConfig(tasks_file=str(REPO / "configs" / "tasks" / "cs224n+mrpc.yaml"), tasks=tasks).to_dict()
        (run / "config.json").write_text(json.dumps(cfg))
        ev = {"type": "eval", "split": "dev", "step": 100, "sst_acc": 0.4, "para_acc": 0.8, "sts_corr": 0.86,
              "sts_spearman": 0.85, "average": 0.5, **extra}
        (run / "metrics.jsonl").write_text(json.dumps({**ev, "step": 50}) + "\n" + json.dumps(ev) + "\n")
        runs.append(str(run))
    r = subprocess.run([sys.executable, "scripts/compare_runs.py", *runs, "--step", "100"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "| tasks (run) | step | SST acc | Paraphrase acc | STS corr | STS Spearman | MRPC acc | MRPC F1 | Average " \
           "| Average of SST, Paraphrase, STS |" in lines
    assert "| sst, para, sts, mrpc (four) | 100 | 0.400 | 0.800 | 0.860 | 0.850 | 0.700 | 0.800 | 0.500 | 0.687 |" in lines
    assert "| sst, para, sts (three) | 100 | 0.400 | 0.800 | 0.860 | 0.850 | – | – | 0.500 | 0.687 |" in lines
    r = subprocess.run([sys.executable, "scripts/compare_runs.py", *runs, "--step", "7"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no evaluation at step 7 in every run" in r.stderr
