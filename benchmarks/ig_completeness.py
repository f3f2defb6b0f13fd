"""How closely Integrated Gradients' attributions add up to f(x) - f(baseline), by task and rule.

    python benchmarks/ig_completeness.py            # the shipped checkpoint, the first 20 dev inputs per task

For each task of the checkpoint, the first N labelled inputs of its dev file in the shipped sample
(`data/sample`), and each integration rule: how many have a completeness gap
|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)| within 1 %, the median and
the largest gap, the largest absolute gap, and the seconds per input. Writes the table to the
"Measured completeness" section of docs/attributions.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (ROOT, command, commit, load_average, machine, markdown_table, today,  # noqa: E402
                               write_section)
from mtbert.checkpoint import load_checkpoint  # noqa: E402
from mtbert.data import SAMPLE_DIR, load_split  # noqa: E402
from mtbert.explain import integrated_gradients  # noqa: E402

RULES = (("gausslegendre", 64), ("riemann_middle", 64), ("gausslegendre", 128))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "minilm-l6-heads"))
    ap.add_argument("--inputs", type=int, default=20, help="the first N dev inputs of each task")
    ap.add_argument("--out", default=str(ROOT / "docs" / "attributions.md"))
    args = ap.parse_args(argv)
    model, tok, _ = load_checkpoint(args.checkpoint)
    data = load_split(SAMPLE_DIR, "dev", model.cfg.tasks)
    rows = []
    for spec in model.cfg.tasks:
        examples = data[spec.name][0][:args.inputs]
        for method, steps in RULES:
            gaps, absolute = [], []
            t0 = time.perf_counter()
            for e in examples:
                a = integrated_gradients(model, tok, spec.name, e.text_a, e.text_b, steps=steps, method=method)
                gaps.append(a.gap)
                absolute.append(abs(a.total - a.delta))
            per_input = (time.perf_counter() - t0) / len(examples)
            rows.append([f"{spec.title} ({spec.head})", f"{method}, {steps}",
                         f"{sum(g <= 0.01 for g in gaps)} of {len(gaps)}", f"{100 * statistics.median(gaps):.3f} %",
                         f"{100 * max(gaps):.2f} %", f"{max(absolute):.4f}", f"{per_input:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    name = Path(args.checkpoint).name
    body = (f"Checkpoint `{name}`, the first {args.inputs} dev inputs of each task in the shipped sample; "
            f"{machine('cpu')}; load average {load_average()}; {today()}, commit {commit()}.\n\n"
            f"Command: `{command('benchmarks/ig_completeness.py', sys.argv[1:] if argv is None else argv)}`\n\n"
            + markdown_table(["task (head)", "rule, points", "gap within 1 %", "median gap", "largest gap",
                              "largest absolute gap", "s per input"], rows))
    print(body)
    write_section(args.out, "Measured completeness", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
