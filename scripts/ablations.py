"""The seed's ablations on a common budget: parallel vs round-robin, sum vs PCGrad, cosine STS head
vs CosineEmbeddingLoss — each a change of one setting from the same base configuration.

    python scripts/ablations.py                         # writes the '## Ablations' section of docs/results.md
    python scripts/ablations.py --budget 60 --subset 200 --out smoke.md   # a quick smoke run

Every run trains for the same training-time budget on the same train subset and is scored on the
same dev subset; the table also shows what PCGrad saw (gradient conflicts between tasks).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import command, commit, machine, markdown_table, today, write_section  # noqa: E402
from mtbert.config import TrainConfig, read_config_file  # noqa: E402
from mtbert.runfolder import read_metrics, read_status  # noqa: E402
from mtbert.train import Trainer  # noqa: E402

VARIANTS = {
    "base: parallel, PCGrad, cosine-MSE STS": {},
    "round-robin schedule": {"schedule": "round-robin"},
    "sum (no PCGrad)": {"gradient_method": "sum"},
    "CosineEmbeddingLoss on STS (±1 labels)": {"sts_loss": "cosine_embedding"},
}


def conflict_stats(run_dir: Path) -> dict:
    steps = [r for r in read_metrics(run_dir)[0] if r.get("type") == "step"]
    cos = {}
    for r in steps:
        for pair, c in (r.get("cos") or {}).items():
            if c is not None:
                cos.setdefault(pair, []).append(c)
    return {"steps": len(steps),
            "conflict_steps": sum(1 for r in steps if r.get("conflicts", 0) > 0),
            "projections": sum(r.get("projections", 0) for r in steps),
            "mean_cos": {p: statistics.mean(v) for p, v in cos.items()}}


def _shown(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "minilm-cpu-60min.yaml"), help="base configuration")
    ap.add_argument("--budget", type=float, default=240, help="training seconds per run")
    ap.add_argument("--subset", type=int, default=1600, help="train examples per task")
    ap.add_argument("--eval-subset", type=int, default=1000, help="dev examples per task")
    ap.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))),
                    help="comma-separated indices into the variant list")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--runs-dir", default=None, help="keep the run folders here (default: a temp dir)")
    args = ap.parse_args(argv)
    base = read_config_file(args.config)
    common = {"time_budget_s": args.budget, "train_subset": args.subset, "eval_subset": args.eval_subset,
              "train_eval_subset": min(args.eval_subset, 500), "eval_every_s": None, "full_eval_at_s": [],
              "final_full_eval": False, "epochs": 1000}
    root = Path(args.runs_dir or tempfile.mkdtemp(prefix="ablations-"))
    rows, chosen = [], [list(VARIANTS)[int(i)] for i in args.variants.split(",")]
    for i, name in enumerate(chosen):
        cfg = TrainConfig.from_dict({**base, **common, **VARIANTS[name], "name": f"ablation-{i}"})
        run = root / f"ablation-{i}"
        t0 = time.time()
        Trainer(cfg, run, progress=False).run()
        status = read_status(run)
        dev = status["results"]["dev"]
        st = conflict_stats(run)
        cos = ", ".join(f"{p} {c:+.3f}" for p, c in st["mean_cos"].items())
        rows.append([name, f"{dev.get('para_acc', float('nan')):.3f}", f"{dev.get('sst_acc', float('nan')):.3f}",
                     f"{dev.get('sts_corr', float('nan')):.3f}", f"{dev['average']:.3f}", str(st["steps"]),
                     f"{st['conflict_steps']}/{st['steps']}", str(st["projections"]), cos or "–"])
        print(" | ".join(rows[-1]), f"({time.time() - t0:.0f} s wall)", flush=True)
    header = ["variant", "Paraphrase acc", "SST acc", "STS corr", "Average", "steps",
              "steps with a conflict", "projections", "mean gradient cosine"]
    table = markdown_table(header, rows)
    calibration = (" The Quora threshold (`calibrate_para`) is fitted on the same dev pairs it is scored on, "
                   "alike for every variant." if base.get("calibrate_para") else "")
    body = (f"{table}\n\nEach run: the base configuration `{_shown(args.config)}` with one setting "
            f"changed, {args.budget:.0f} s of training on {args.subset} train examples per task, scored on the same "
            f"{args.eval_subset} dev examples per task (best of the evaluations). Conflicts and cosines are "
            f"measured on the shared encoder's gradients every step (PCGrad projects only in the runs that use it; the `sum` "
            f"run reports what PCGrad would have seen; a round-robin step holds one task, so it has no pairs to "
            f"compare).{calibration}\n\nMachine: {machine('cpu')}. "
            f"Measured {today()}, commit {commit()}.\n\n"
            f"Command: `{command('scripts/ablations.py', argv if argv is not None else sys.argv[1:])}`")
    print(table)
    write_section(args.out, "Ablations", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
