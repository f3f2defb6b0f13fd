"""Rebuild the shipped sample data set from the full data, reproducibly.

    python data/sample/make_sample.py --src DATA [--out data/sample] [--seed 224]

DATA holds `cs224n/` (the CS224N data files) and `quora-full/qqp-extra-labelled.csv` (the Quora
stand-in set, which gives the sample's quora-train.csv and quora-test-student.csv).

Records are copied byte for byte (so the sample is exactly CS224N format), chosen at random with a
fixed seed, kept in file order. Only clean records are eligible: one physical line, the header's
number of fields, no empty field after the index. See SOURCES.md for what comes from where.
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = {"train": 3000, "dev": 200, "test-student": 100}

# output name -> (source file relative to --src, split)
PLAN = {
    "ids-sst-train.csv": ("cs224n/ids-sst-train.csv", "train"),
    "ids-sst-dev.csv": ("cs224n/ids-sst-dev.csv", "dev"),
    "ids-sst-test-student.csv": ("cs224n/ids-sst-test-student.csv", "test-student"),
    "quora-dev.csv": ("cs224n/quora-dev.csv", "dev"),
    "sts-train.csv": ("cs224n/sts-train.csv", "train"),
    "sts-dev.csv": ("cs224n/sts-dev.csv", "dev"),
    "sts-test-student.csv": ("cs224n/sts-test-student.csv", "test-student"),
    # the official quora train/test-student files are not obtainable: both come from the stand-in
    "quora-train.csv": ("quora-full/qqp-extra-labelled.csv", "train"),
    "quora-test-student.csv": ("quora-full/qqp-extra-labelled.csv", "test-student"),
}


def clean_records(path: Path) -> tuple[str, list[str]]:
    """The header line and every clean record's raw text (one line each)."""
    with open(path, encoding="utf-8", newline="") as fp:
        lines = fp.readlines()
    reader = csv.reader(iter(lines), delimiter="\t")
    width = len(next(reader))
    out, last = [], reader.line_num
    for row in reader:
        first, last = last, reader.line_num
        if last - first == 1 and len(row) == width and all(f.strip() for f in row[1:]):
            out.append(lines[first])
    return lines[0], out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True,
                    help="the folder holding cs224n/ and quora-full/qqp-extra-labelled.csv")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=224)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    taken: dict[str, set[int]] = {}  # source -> records already used, so train and test-student are disjoint
    for name, (src, split) in PLAN.items():
        header, records = clean_records(args.src / src)
        rng = random.Random(f"{args.seed}/{name}")  # one stream per file: editing one leaves the others
        pool = [i for i in range(len(records)) if i not in taken.setdefault(src, set())]
        pick = sorted(rng.sample(pool, SIZES[split]))
        taken[src].update(pick)
        rows = [records[i] for i in pick]
        if name == "quora-test-student.csv":  # drop the label column, as in the official test files
            header = header.rsplit("\t", 1)[0] + "\n"
            rows = [r.rsplit("\t", 1)[0] + "\n" for r in rows]
        with open(args.out / name, "w", encoding="utf-8", newline="") as f:
            f.write(header + "".join(rows))
        print(f"{name}: {len(rows)} rows from {src}")


if __name__ == "__main__":
    main()
