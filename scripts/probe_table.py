"""Probes side by side at their last dev evaluation: one markdown row per run, the first run as
the reference each row's change is measured against.

    python scripts/probe_table.py "recipe=runs/A" "SST phrases=runs/B" "CoSENT=runs/C"

Each row reads the run folder only: steps trained, the median step time, the last evaluation on the
dev split (the one at the end of its schedule, so no run is picked by its best moment) with SST
accuracy also as a count of sentences, and the change of each score against the first run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import markdown_table  # noqa: E402
from mtbert import runfolder  # noqa: E402

SCORES = (("para_acc", "Quora acc"), ("sst_acc", "SST acc"), ("sts_corr", "STS corr"), ("average", "Average"))


def last_dev(run: Path) -> tuple[dict, list[dict]]:
    """(the last dev evaluation, the step records) of a run folder."""
    rows, _ = runfolder.read_metrics(run)
    evals = [r for r in rows if r.get("type") == "eval" and r.get("split") == "dev"]
    if not evals:
        raise SystemExit(f"{run}: no dev evaluation in metrics.jsonl")
    return evals[-1], [r for r in rows if r.get("type") == "step"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    args = ap.parse_args(argv)
    out, ref = [], None
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: give each run as LABEL=RUN_DIR")
        e, steps = last_dev(Path(path))
        ref = ref or e
        times = [s["step_time"] for s in steps if isinstance(s.get("step_time"), (int, float))]
        row = [label, str(e["step"]), f"{statistics.median(times):.2f}" if times else "–"]
        for key, _ in SCORES:
            v = e.get(key)
            cell = "–" if v is None else f"{v:.3f}"
            n = (e.get("examples") or {}).get("sst")
            if key == "sst_acc" and v is not None and n:
                cell += f" = {round(v * n)} of {n:,}"
            if e is not ref and v is not None and ref.get(key) is not None:
                cell += f" ({v - ref[key]:+.3f})"
            row.append(cell)
        out.append(row)
    print(markdown_table(["run", "steps", "median step (s)"] + [name for _, name in SCORES], out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
