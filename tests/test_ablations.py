"""scripts/ablations.py: every variant runs, the table lands in its own section with conflict statistics."""
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_ablation_script_smoke(tiny_base, tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "minilm-cpu-60min.yaml").read_text())
    cfg.update(base_model=str(tiny_base), data_dir=str(REPO / "data" / "sample"), quora_train=None,
               batch_size=4, max_length=24, warmup_steps=1)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "results.md"
    out.write_text("# Results\n\n## Recipe\n\nkeep me\n")
    r = subprocess.run([sys.executable, "scripts/ablations.py", "--config", str(tmp_path / "base.yaml"),
                        "--budget", "2", "--subset", "16", "--eval-subset", "8", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "keep me" in text and "## Ablations" in text
    # the command is shown without its output file, and the section names the commit measured
    assert "--subset 16 --eval-subset 8`" in text and str(out) not in text and ", commit " in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "variant" not in line]
    assert len(rows) == 4
    base, rr = rows[0].split("|"), rows[1].split("|")
    assert "sst/para" in base[9]  # PCGrad's view of the three tasks' gradients
    assert int(base[6]) > 0 and rr[9].strip() == "–"  # round-robin steps train one task: nothing to compare
