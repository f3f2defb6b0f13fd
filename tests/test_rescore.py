"""`python -m mtbert rescore`: a trained checkpoint's metrics.json measured again the way its run measured
it. On the run's own best/ it must reproduce the trainer's numbers exactly; on a float16 export it must
write what the copy's own weights score."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtbert.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from mtbert.cli import main
from mtbert.data import SAMPLE_DIR, load_split
from mtbert.evaluate import evaluate
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.quantize import for_inference
from mtbert.train import Trainer
from test_train import tiny_cfg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lora_run(tiny_base, tmp_path_factory) -> Path:
    """A finished tiny adapter run whose Quora threshold is fitted on an 8-pair eval subset."""
    run = tmp_path_factory.mktemp("rescore") / "run"
    cfg = tiny_cfg(tiny_base, epochs=1, mode="lora", lora_rank=2, lr=5e-3, calibrate_para=True)
    assert Trainer(cfg, run, progress=False).run() == "finished"
    return run


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
                                        for x, y in ((a[k], b[k]) for k in a))


def test_rescore_of_a_runs_best_checkpoint_reproduces_the_trainers_metrics_exactly(lora_run, tmp_path):
    best = tmp_path / "best"
    shutil.copytree(lora_run / "best", best)
    before = json.loads((best / "metrics.json").read_text())
    assert before["dev"]["para_heldout_examples"] > 0 and "para_acc_uncalibrated" in before["dev"]
    (best / "metrics.json").write_text(json.dumps({"step": before["step"]}))  # forget them
    out = subprocess.run([sys.executable, "-m", "mtbert", "rescore", "--checkpoint", str(best)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    after = json.loads((best / "metrics.json").read_text())
    assert after["step"] == before["step"]
    for split in ("train", "dev"):
        assert same(after[split], before[split]), split
    assert "| Train |" in out.stdout and "| Dev |" in out.stdout and "wrote" in out.stdout
    assert "[data] dev para:" in out.stderr


def test_rescore_of_a_float16_export_writes_what_the_copy_scores(lora_run, tmp_path, capsys):
    out = tmp_path / "half"
    assert main(["export", "--checkpoint", str(lora_run / "best"), "--out", str(out),
                 "--adapters-dtype", "float16"]) == 0
    assert f"rescore --checkpoint {out}" in capsys.readouterr().out  # export says its metrics are float32's
    stored = json.loads((out / "metrics.json").read_text())
    assert main(["rescore", "--checkpoint", str(out)]) == 0
    now = json.loads((out / "metrics.json").read_text())
    assert now["step"] == stored["step"] and now.keys() == stored.keys()
    model, tok, _ = load_checkpoint(out)
    specs = [model.cfg.task(t) for t in ("sst", "sts")]
    dev = {t: v[0] for t, v in load_split(SAMPLE_DIR, "dev", specs).items()}
    direct = evaluate(for_inference(model, "fp32", tokenizer=tok), tok, dev)  # as runs evaluate (adapters merged)
    for key in ("sst_acc", "sts_corr", "sts_spearman"):
        assert now["dev"][key] == direct[key], key
    assert now["dev"]["para_logit_offset"] == model.cfg.para_logit_offset  # the stored threshold is kept


def test_rescore_refuses_what_it_cannot_measure_and_leaves_metrics_untouched(lora_run, tiny_base, tmp_path,
                                                                           capsys):
    assert main(["rescore", "--checkpoint", str(tmp_path / "nowhere")]) == 1
    assert "not a checkpoint folder" in capsys.readouterr().err
    encoder, tok = load_encoder(tiny_base)
    plain = save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, tmp_path / "plain", base=str(tiny_base),
                            include_encoder=False, metrics={"dev": {"average": 0.5}})
    assert main(["rescore", "--checkpoint", str(plain)]) == 1
    assert "has no train_config" in capsys.readouterr().err
    best = tmp_path / "best"
    shutil.copytree(lora_run / "best", best)
    before = (best / "metrics.json").read_bytes()
    assert main(["rescore", "--checkpoint", str(best), "--quora-train", str(tmp_path / "missing.csv")]) == 1
    err = capsys.readouterr().err
    assert "missing.csv" in err and "--quora-train" in err
    assert (best / "metrics.json").read_bytes() == before
