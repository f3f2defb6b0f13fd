"""scripts/probe_table.py: runs side by side at their last dev evaluation, read from run folders."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(folder: Path, sst: float, para: float, steps: int) -> Path:
    folder.mkdir()
    rows = [{"type": "step", "step": s, "step_time": 1.0 + s / 100} for s in range(1, steps + 1)]
    rows += [{"type": "eval", "split": "dev", "step": steps // 2, "sst_acc": 0.9, "para_acc": 0.9,
              "sts_corr": 0.9, "average": 0.9, "examples": {"sst": 1000}},  # a better earlier one is not used
             {"type": "eval", "split": "dev", "step": steps, "sst_acc": sst, "para_acc": para, "sts_corr": 0.8,
              "average": (sst + para + 0.8) / 3, "examples": {"sst": 1000, "para": 2000, "sts": 800}},
             {"type": "eval", "split": "train", "step": steps, "sst_acc": 0.99, "para_acc": 0.99}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"type": "st')
    return folder


def test_rows_are_the_last_dev_evaluation_with_changes_against_the_first_run(tmp_path):
    a, b = _run(tmp_path / "a", 0.45, 0.80, 10), _run(tmp_path / "b", 0.47, 0.79, 6)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_table.py"), f"base={a}", f"new={b}"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[2] == "| base | 10 | 1.06 | 0.800 | 0.450 = 450 of 1,000 | 0.800 | 0.683 |"
    assert out[3] == "| new | 6 | 1.04 | 0.790 (-0.010) | 0.470 = 470 of 1,000 (+0.020) | 0.800 (+0.000) | 0.687 (+0.003) |"


def test_a_run_given_without_a_label_is_refused(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_table.py"), str(_run(tmp_path / "a", .4, .8, 2))],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "LABEL=RUN_DIR" in r.stderr
