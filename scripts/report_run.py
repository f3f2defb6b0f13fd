"""Write a run's results into docs/results.md: the seed-layout table (Train and Dev rows), every
dev evaluation over training time, and what PCGrad saw — all read from the run folder.

    python scripts/report_run.py runs/<run-id> --section "Recipe: MiniLM, 60 minutes on 2 CPU cores"
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine, markdown_table, write_section  # noqa: E402
from mtbert import runfolder  # noqa: E402
from mtbert.config import TrainConfig  # noqa: E402
from mtbert.report import other_metrics, result_columns  # noqa: E402
from mtbert.tasks import builtin_tasks  # noqa: E402


def columns(cfg: dict) -> tuple:
    """The run's results columns: each task's main score, the Average, then the tasks' other metrics."""
    try:
        specs = TrainConfig.from_dict(cfg).task_specs()
    except (ValueError, TypeError):
        specs = builtin_tasks()
    return tuple(result_columns(specs)) + tuple(other_metrics(specs))


def fmt(m: dict, k: str) -> str:
    v = m.get(k)
    return f"{v:.3f}" if isinstance(v, (int, float)) else "–"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    # no default: a forgotten --section would otherwise replace whichever section the default names
    ap.add_argument("--section", required=True, help="the `## ` heading of the section to write or replace")
    ap.add_argument("--command", default=None, help="the command that produced the run")
    ap.add_argument("--wall", default=None, help="wall time as measured outside (e.g. /usr/bin/time)")
    ap.add_argument("--machine", default=None,
                    help="the machine the run was made on, when not this one (default: this machine's CPU)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.md"), help="the markdown file (default: docs/results.md)")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    status = runfolder.read_status(run)
    if status is None:
        ap.error(f"{run}: not a run folder (no readable {runfolder.STATUS})")
    cfg = runfolder.read_config(run)
    COLS = columns(cfg)
    recs = runfolder.read_metrics(run)[0]
    steps = [r for r in recs if r["type"] == "step"]
    evals = [r for r in recs if r["type"] == "eval"]
    res = status.get("results") or {}
    table = markdown_table(["", *[t for _, t in COLS]],
                           [[name.capitalize(), *[fmt(res.get(name, {}), k) for k, _ in COLS]]
                            for name in ("train", "dev") if name in res])
    dev_evals = [e for e in evals if e["split"] == "dev"]
    calibrated = any("para_acc_uncalibrated" in e for e in dev_evals)
    extra = [("para_acc_uncalibrated", "Paraphrase acc at 0.5")] if calibrated else []
    best_file = run / runfolder.BEST / "metrics.json"
    best_step = json.loads(best_file.read_text()).get("step") if best_file.is_file() else None
    final = dev_evals[-1] if dev_evals and dev_evals[-1].get("full") and status.get("results") else None

    def step_label(e: dict) -> str:  # the closing full-dev evaluation scores the best checkpoint
        return f"{e['step']} (best checkpoint: step {best_step})" if e is final and best_step else str(e["step"])

    curve = markdown_table(["training time (min)", "step", "dev examples", *[t for _, t in COLS + tuple(extra)]],
                           [[f"{e['train_time_s'] / 60:.1f}", step_label(e),
                             "all" if e.get("full") else f"≤ {max(e.get('examples', {}).values() or [0])} per task",
                             *[fmt(e, k) for k, _ in COLS + tuple(extra)]] for e in dev_evals])
    dev = res.get("dev", {})
    threshold = ""
    if "para_logit_offset" in dev:
        p = 1 / (1 + math.exp(dev["para_logit_offset"]))
        threshold = (f"\n\nQuora decision threshold: fitted on the dev evaluation subset "
                     f"({cfg.get('eval_subset')} pairs) at the best checkpoint's evaluation — duplicate when "
                     f"P ≥ {p:.3f} (logit offset {dev['para_logit_offset']:+.2f}). Whole dev set at that threshold: "
                     f"{fmt(dev, 'para_acc')}; on the {dev.get('para_heldout_examples', '?')} dev pairs the fit never saw: "
                     f"{fmt(dev, 'para_acc_heldout')}; at the plain 0.5 threshold: {fmt(dev, 'para_acc_uncalibrated')}.")
    cos = {}
    for r in steps:
        for pair, c in (r.get("cos") or {}).items():
            if c is not None:
                cos.setdefault(pair, []).append(c)
    conflict_steps = sum(1 for r in steps if r.get("conflicts", 0) > 0)
    projections = sum(r.get("projections", 0) for r in steps)
    times = [r["step_time"] for r in steps]
    # a sampled schedule trains one task per step: how the steps were shared out is part of the result
    batches = Counter(t for r in steps for t in r.get("tasks", []))
    shares = ", ".join(f"{t} {batches[t]:,}" for t in (cfg.get("tasks") or batches) if t in batches)
    pcgrad = (f"{len(steps)} steps, median step {statistics.median(times):.2f} s; batches per task: {shares}; "
              f"steps with at least one "
              f"conflicting task pair: {conflict_steps} ({100 * conflict_steps / max(1, len(steps)):.0f} %); "
              f"PCGrad projections: {projections}; mean gradient cosine: "
              + ", ".join(f"{p} {statistics.mean(v):+.3f}" for p, v in cos.items()))
    # data paths by their last part only, as in the model card: the folder is the reader's own
    settings = ", ".join(f"{k}={Path(v).name if k in ('data_dir', 'quora_train', 'tasks_file') and v else v}"
                         for k, v in cfg.items() if k not in ("name", "task_definitions"))
    body = (f"{table}\n\nTrain row: {cfg.get('train_eval_subset') or 'all'} train examples per task; Dev row: the "
            f"whole dev sets (CS224N Quora: 20,212 pairs). Both rows describe the best checkpoint (by dev "
            f"average).{threshold}\n\nDev evaluations during training:\n\n{curve}\n\nTraining: {pcgrad}.\n\n"
            f"Command: `{args.command or 'python -m mtbert train --config ...'}`"
            f"{'; wall time ' + args.wall if args.wall else ''}; training time "
            f"{sum(times) / 60:.1f} min (evaluation not counted).\n\nMachine: {args.machine or machine('cpu')}.\n\n"
            f"Settings: {settings}")
    print(body)
    write_section(args.out, args.section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
