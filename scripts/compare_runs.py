"""Two or more runs' dev evaluations at the same step, side by side: what adding (or dropping) a task
did to the others at the same budget.

    python scripts/compare_runs.py runs/<four-task run> runs/<three-task run> --step 100 \
        --section "A fourth task: MRPC"

Each run's columns are its own tasks' metrics (every metric of every task, then the Average of the
main scores); a task a run did not train shows "–". The evaluation compared is the one each run
made during training at --step (on the dev subsets its config names), and, where both have it, the
final whole-dev evaluation of their best checkpoints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine, markdown_table, write_section  # noqa: E402
from mtbert import runfolder  # noqa: E402
from mtbert.config import TrainConfig  # noqa: E402
from mtbert.evaluate import seed_average  # noqa: E402


def specs_of(run: Path) -> list:
    return TrainConfig.from_dict(runfolder.read_config(run)).task_specs()


def evaluation(run: Path, step: int | None) -> dict | None:
    """The dev evaluation at `step` during training, or (step None) the final whole-dev one."""
    evals = [r for r in runfolder.read_metrics(run)[0] if r.get("type") == "eval" and r.get("split") == "dev"]
    if step is None:
        full = [r for r in evals if r.get("full")]
        return full[-1] if full else None
    return next((r for r in evals if r.get("step") == step and not r.get("full")), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--step", type=int, required=True, help="the training step whose evaluations are compared")
    ap.add_argument("--section", default=None, help="write the table into docs/results.md under this heading")
    ap.add_argument("--command", default=None, help="the commands that produced the runs")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    specs = {r: specs_of(r) for r in runs}
    keys = list(dict.fromkeys((s.metric_key(m), s.metric_title(m)) for r in runs for s in specs[r] for m in s.metrics))
    keys.append(("average", "Average"))
    keys.append(("cs224n", "Average of SST, Paraphrase, STS"))  # the same three in every run: comparable
    body = []
    for label, step in ((f"at step {args.step}", args.step), ("best checkpoint, whole dev sets", None)):
        rows = []
        for r in runs:
            e = evaluation(r, step)
            if e is None:
                continue
            e = {**e, "cs224n": seed_average(e)}
            names = ", ".join(s.name for s in specs[r])
            rows.append([f"{names} ({r.name})", str(e["step"]),
                         *[f"{e[k]:.3f}" if isinstance(e.get(k), (int, float)) else "–" for k, _ in keys]])
        if len(rows) == len(runs):
            body.append(f"Dev evaluation {label}:\n\n" + markdown_table(["tasks (run)", "step", *[t for _, t in keys]],
                                                                          rows))
    if not body:
        ap.error(f"no evaluation at step {args.step} in every run")
    body.append(f"Machine: {machine('cpu')}." + (f"\n\nCommands: {args.command}" if args.command else ""))
    text = "\n\n".join(body)
    print(text)
    if args.section:
        write_section(args.out, args.section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
