"""The Evaluate page's logic, without Streamlit: what is evaluated (a split of a data folder, or one
labelled file of one task), the evaluation itself in a background thread with its progress, and a
cache of finished evaluations per (checkpoint, data), shared by every session of the studio.

The numbers and figures are the engine's (mtbert.analysis, mtbert.evalfigures), the same the
`mtbert report` HTML file shows.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError, load_split
from .jobs import BackgroundJob
from .playground import InputError, read_upload

SPLITS = ("dev", "train")  # labelled splits; the CS224N test files carry no labels


@dataclass(frozen=True)
class Source:
    """Labelled examples per task, and what they are in words and as a cache key."""
    label: str
    key: tuple
    data: dict = field(compare=False, hash=False)  # task -> list[Example]
    notes: tuple = ()  # rows skipped while reading, one line per task that had any

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.data.values())


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def split_source(data_dir, split: str, specs: list, shown_dir: str | None = None) -> Source:
    """A split of a data folder for the given task definitions; a task without labelled rows there is
    an InputError naming it."""
    if split not in SPLITS:
        raise InputError(f"split={split!r} is not allowed; choose one of {', '.join(SPLITS)}")
    if not specs:
        raise InputError("Choose at least one task.")
    try:
        loaded = load_split(data_dir, split, specs)
    except DataError as e:
        raise InputError(str(e)) from None
    data, notes, keys = {}, [], []
    for s in specs:
        examples, report = loaded[s.name]
        examples = [e for e in examples if e.label is not None]
        if not examples:
            raise InputError(f"The {split} file of task {s.name} has no labelled rows: {report.summary()}")
        data[s.name] = examples
        keys.append((s.name, _file_key(Path(report.path))))
        if report.skipped:
            notes.append(f"{s.name}: {report.summary()}")
    label = f"{split} split of {shown_dir or data_dir}"
    return Source(label, ("split", split, tuple(keys)), data, tuple(notes))


def file_source(name: str, content: bytes, task: str, specs: list) -> Source:
    """One labelled file of one task (an upload), read in the task's own format."""
    task, examples, report = read_upload(content, task, specs)
    examples = [e for e in examples if e.label is not None]
    if not examples:
        raise InputError(f"{name} has no labelled rows for task {task}: evaluation needs the gold labels.")
    digest = hashlib.sha256(content).hexdigest()
    notes = (f"{task}: {report.summary()}",) if report.skipped else ()
    return Source(f"{name} (task {task})", ("file", task, digest), {task: examples}, notes)


def checkpoint_key(path: str) -> tuple:
    """A checkpoint as a cache key: a folder by its files' sizes and times (a retrained run/best is
    another checkpoint), anything else (a Hub repo id, a base model) by name."""
    folder = Path(path)
    if folder.is_dir():
        return ("folder",) + tuple(_file_key(f) for f in sorted(folder.iterdir()) if f.is_file())
    return ("name", path)


class EvaluationJob(BackgroundJob):
    """Every task of a Source predicted and analysed; `results` (task -> mtbert.analysis.TaskResult)."""

    def __init__(self, source: Source):
        super().__init__(total=source.size)
        self.source = source

    @property
    def results(self) -> dict | None:
        return self.result

    def start(self, model, tokenizer) -> "EvaluationJob":
        self.model, self.tokenizer = model, tokenizer
        return super().start()

    def work(self) -> dict:
        from ..analysis import predict_task

        results, before = {}, 0
        for task, examples in self.source.data.items():
            results[task] = predict_task(self.model, self.tokenizer, task, examples,
                                         progress=lambda done, total, before=before: self.progress(before + done))
            before += len(examples)
            self.progress(before)
        return results


class Evaluations:
    """Jobs by (checkpoint, data): a second request for the same pair gets the running or finished
    job, not a second computation. The oldest finished ones go beyond `keep`."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._jobs: OrderedDict[tuple, EvaluationJob] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ckpt_key: tuple, source: Source) -> EvaluationJob | None:
        with self._lock:
            job = self._jobs.get((ckpt_key, source.key))
            if job is not None and job.error is not None:  # a failure is not cached: try again
                del self._jobs[(ckpt_key, source.key)]
                return None
            return job

    def start(self, ckpt_key: tuple, source: Source, model, tokenizer) -> EvaluationJob:
        with self._lock:
            key = (ckpt_key, source.key)
            job = self._jobs.get(key)
            if job is None or job.error is not None:
                job = self._jobs[key] = EvaluationJob(source).start(model, tokenizer)
            self._jobs.move_to_end(key)
            finished = [k for k, j in self._jobs.items() if j.finished and k != key]
            for k in finished[:max(0, len(self._jobs) - self.keep)]:
                del self._jobs[k]
            return job


def comparison_text(c: dict, a_name: str, b_name: str) -> str:
    """The significance test of analysis.compare in words (markdown)."""
    if "mcnemar" in c:
        m = c["mcnemar"]
        verdict = ("a real difference at the 5 % level" if m["p"] < 0.05 else
                   "no difference beyond chance at the 5 % level")
        return (f"McNemar test on the {m['n']:,} examples exactly one of them gets right: {b_name} alone is right on "
                f"{m['b01']:,}, {a_name} alone on {m['b10']:,}; exact binomial p = {m['p']:.3g}, {verdict}.")
    bs = c["bootstrap"]
    excludes = not (bs["low"] <= 0 <= bs["high"])
    verdict = "the interval excludes 0: a real difference" if excludes else "the interval includes 0: no clear difference"
    return (f"Paired bootstrap of the {bs['metric']} difference ({b_name} − {a_name}) over {bs['resamples']:,} "
            f"resamples of the same examples: {bs['delta']:+.4f}, {bs['level']:.0%} interval "
            f"[{bs['low']:+.4f}, {bs['high']:+.4f}]; {verdict}.")
