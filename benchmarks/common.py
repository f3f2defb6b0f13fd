"""Shared pieces of the benchmark scripts: real sentences, paired timing, machine facts, docs section.

Timings on a shared machine are noisy, so every benchmark here times ours and the reference
alternately (ABAB..., the order flipped every repetition), after warm-up, and reports medians
and the ratio reference / ours measured in the same run.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "cs224n"  # the full CS224N files (`python -m mtbert data fetch`); --data-dir elsewhere
DOC = ROOT / "docs" / "benchmarks.md"


def _rows(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def sst_sentences(n: int, seed: int = 0, data_dir: Path = DATA) -> list[str]:
    """n SST training sentences, a fixed random sample (the file is sorted by nothing useful)."""
    s = [r["sentence"].strip() for r in _rows(Path(data_dir) / "ids-sst-train.csv") if r.get("sentence")]
    return random.Random(seed).sample(s, n)


def quora_pairs(n: int, seed: int = 0, data_dir: Path = DATA) -> list[tuple[str, str]]:
    """n Quora dev question pairs (rows with a missing side, like the two malformed ones, skipped)."""
    p = [(r["sentence1"].strip(), r["sentence2"].strip()) for r in _rows(Path(data_dir) / "quora-dev.csv")
         if r.get("sentence1") and r.get("sentence2")]
    return random.Random(seed).sample(p, n)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int, device: str = "cpu"
                ) -> dict[str, list[float]]:
    """Seconds per call of each fn, `reps` samples each, run alternately with the order flipped
    every repetition so slow drifts in machine load hit all of them alike."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    sync(device)
    times = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            t = time.perf_counter()
            fns[n]()
            sync(device)
            times[n].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: str, threads: str | None = None) -> str:
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    threads = threads or str(torch.get_num_threads())
    return (f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch threads {threads} (of {os.cpu_count()} logical CPUs), CPU {cpu_model()}{gpu}")


def load_average() -> str:
    """The 1-minute load average: how busy the (shared) machine was, i.e. how noisy the timings are."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def today() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def commit() -> str:
    """The checked-out commit, so that a number names the code that produced it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + (" with uncommitted changes" if dirty else "")) if head else "unknown"


# where a script writes its results: they change nothing measured, and the folder may be a private one
OUTPUT_FLAGS = ("--out", "--runs-dir")


def command(script: str, argv: list[str]) -> str:
    """The command line to show beside a result, without the output flags."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in OUTPUT_FLAGS:
            skip = True
        elif arg.split("=", 1)[0] not in OUTPUT_FLAGS:
            shown.append(arg)
    return " ".join(["python", script, *shown])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(path: str | Path, heading: str, body: str) -> None:
    """Replace the `## heading` section of a markdown file (up to the next `## `), leaving the
    other sections (written by other benchmarks) alone; create the file or section if missing."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## {heading}\n\n{body.strip()}\n"
    pat = re.compile(rf"^## {re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
