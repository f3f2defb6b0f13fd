"""Every task's data: the readers a task definition configures, the split's files, and batching.

The CS224N minBERT files (the built-in tasks') are TAB-separated, a header, an unnamed index as first column,
pandas QUOTE_MINIMAL quoting (a quoted field may hold TABs and newlines). A malformed row is
skipped and reported by its physical line number instead of failing the whole file, because the
official quora-dev.csv has two rows broken by an unbalanced quote.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .tasks import BUILTIN_NAMES, PAIR_ENCODINGS, PAIR_READS, TaskError, TaskSpec, builtin_task, builtin_tasks

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TASKS = BUILTIN_NAMES
# the built-in tasks' CS224N columns, as their definitions declare them
TEXT_COLUMNS = {s.name: s.text_columns for s in builtin_tasks()}
LABEL_COLUMN = {s.name: s.label_column for s in builtin_tasks()}
SPLITS = ("train", "dev", "test-student")  # the CS224N file names' splits; a task definition says "test"

REPO_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_DIR / "data" / "sample"   # shipped, the offline default
FULL_DATA_DIR = REPO_DIR / "data" / "cs224n"  # where `python -m mtbert data fetch` puts the official files
FETCH_COMMAND = "python -m mtbert data fetch --dest {dest}"
MAX_BAD_LINES = 10
BUCKET_BATCHES = 50  # length bucketing sorts within chunks of this many batches


class DataError(Exception):
    """Unusable data: a missing file, a missing column, a bad setting. The message says which."""


@dataclass(frozen=True)
class Example:
    id: str
    text_a: str
    text_b: str | None                # None for a sentence task
    label: int | float | None         # a class index or a score; None if unlabelled

    def swapped(self) -> "Example":
        """The pair read the other way round, (b, a), with the same id and label."""
        return Example(self.id, self.text_b, self.text_a, self.label)


@dataclass
class ReadReport:
    path: str
    task: str
    rows: int = 0
    usable: int = 0
    skipped: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (physical line, reason), first 10
    note: str = ""                    # e.g. that a stand-in file replaced a missing one

    def summary(self) -> str:
        s = f"{Path(self.path).name}: {self.usable:,} usable of {self.rows:,} rows"
        if self.skipped:
            shown = "; ".join(f"line {n}: {why}" for n, why in self.bad_lines)
            unshown = self.skipped - len(self.bad_lines)
            more = f"; and {unshown:,} more" if unshown else ""
            s += f"; {self.skipped:,} skipped ({shown}{more})"
        return s + (f" [{self.note}]" if self.note else "")


def _check_choice(setting: str, value, allowed) -> None:
    if value not in allowed:
        raise DataError(f"{setting}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def as_spec(task) -> TaskSpec:
    """A task definition, or the name of a built-in one (with its default heads)."""
    if isinstance(task, TaskSpec):
        return task
    try:
        return builtin_task(task)
    except TaskError as e:
        raise DataError(str(e)) from None


def _split_key(split: str) -> str:
    return "test" if split == "test-student" else split


# ---- reading one file -----------------------------------------------------------------------

def _raise_field_limit() -> None:
    # a field that swallowed the rest of a file after a stray quote can be huge; read it, then reject it
    limit = (1 << 31) - 1
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def parse_label(spec: TaskSpec, raw) -> tuple[int | float | None, str]:
    """(label, '') or (None, reason): a class index (by number or by name) or a score in the range."""
    name = spec.label_column
    if isinstance(raw, bool):
        raw = int(raw)
    text = raw.strip() if isinstance(raw, str) else "" if raw is None else str(raw)
    if not text:
        return None, f"empty {name}"
    if spec.kind == "classification" and spec.label_names and text in spec.label_names:
        return spec.label_names.index(text), ""
    try:
        x = float(text)
    except ValueError:
        named = f" (or one of {', '.join(map(repr, spec.label_names))})" if spec.label_names else ""
        return None, f"non-numeric {name} {text[:20]!r}{named}"
    if spec.kind == "regression":
        lo, hi = spec.range
        return (x, "") if lo <= x <= hi else (None, f"{name} {text[:20]} outside {lo:g}..{hi:g}")
    hi = spec.classes - 1
    if not math.isfinite(x) or x != int(x):
        return None, f"{name} {text[:20]} is not a whole number"
    return (int(x), "") if 0 <= x <= hi else (None, f"{name} {text[:20]} outside 0..{hi}")


def _parse_fields(spec: TaskSpec, texts: list[str], ex_id: str, raw_label, labelled: bool
                  ) -> tuple[Example | None, str]:
    label, why = (None, "") if not labelled else parse_label(spec, raw_label)
    for name, text in zip(spec.text_columns, texts):
        if not text:
            why = why or f"empty {name}"
    if not ex_id:
        why = why or "empty id"
    if why:
        return None, why
    return Example(ex_id, texts[0], texts[1] if len(texts) > 1 else None, label), ""


def _parse_row(spec: TaskSpec, row: list[str], width: int, cols: dict[str, int], label_col: int | None,
               line: int) -> tuple[Example | None, str]:
    """(example, '') or (None, reason) for one delimited record."""
    if len(row) != width:
        return None, f"expected {width} fields, found {len(row)} (unbalanced quote?)"
    if spec.delimiter == "\t" and any("\t" in f for f in row):
        # no sentence holds a TAB; a field that does is a quoted one that ran on past its end
        return None, "unbalanced quote: a field runs across a TAB"
    if any("\udc80" <= c <= "\udcff" for f in row for c in f):  # surrogateescape'd bytes
        return None, "undecodable bytes (not UTF-8)"
    texts = [row[cols[c]].strip() for c in spec.text_columns]
    ex_id = row[cols[spec.id_column]].strip() if spec.id_column else str(line)
    ex, why = _parse_fields(spec, texts, ex_id, row[label_col] if label_col is not None else None,
                            label_col is not None)
    if why and spec.quoting == "minimal" and any(f.count('"') % 2 for f in row):
        why = f"unbalanced quote ({why})"  # a lone literal quote left over: say why it broke
    return ex, why


def _field_of(spec: TaskSpec, column: str) -> str:
    if column in spec.text_columns:
        return "text_columns"
    return "label_column" if column == spec.label_column else "id_column"


def _columns(path: Path, spec: TaskSpec, header: list[str], labelled: bool | None
             ) -> tuple[dict[str, int], int | None]:
    """Column name -> index, and the label's index (None when reading unlabelled)."""
    cols: dict[str, int] = {}
    for i, h in enumerate(header):
        cols.setdefault(h.strip(), i)
    for c in ((spec.id_column,) if spec.id_column else ()) + spec.text_columns:
        if c not in cols:
            shown = ", ".join(map(repr, header))[:200]
            raise DataError(f"{path}: no column {c!r} for task {spec.name} (its {_field_of(spec, c)}); "
                            f"header: {shown}")
    if labelled is None:  # test files have no label column
        labelled = spec.label_column is not None and spec.label_column in cols
    if labelled and spec.label_column not in cols:
        shown = ", ".join(map(repr, header))[:200]
        raise DataError(f"{path}: no column {spec.label_column!r} for labelled {spec.name} data (its "
                        f"label_column); header: {shown}")
    return cols, cols[spec.label_column] if labelled else None


class _Reader:
    """Counts rows, keeps the usable ones, remembers the first bad lines."""

    def __init__(self, path: Path, spec: TaskSpec):
        self.report, self.examples = ReadReport(str(path), spec.name), []

    def add(self, ex: Example | None, why: str, first_line: int, last_line: int) -> None:
        self.report.rows += 1
        if ex is not None:
            self.examples.append(ex)
            return
        self.report.skipped += 1
        if len(self.report.bad_lines) < MAX_BAD_LINES:
            span = f" (the record runs to line {last_line})" if last_line > first_line else ""
            self.report.bad_lines.append((first_line, why + span))

    def done(self) -> tuple[list[Example], ReadReport]:
        self.report.usable = len(self.examples)
        return self.examples, self.report


def _read_delimited(path: Path, spec: TaskSpec, fp, labelled: bool | None, out: _Reader) -> None:
    quoting = csv.QUOTE_NONE if spec.quoting == "none" else csv.QUOTE_MINIMAL
    reader = csv.reader(fp, delimiter=spec.delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file, expected a header row") from None
    except csv.Error as e:
        raise DataError(f"{path}: unreadable header row ({e})") from None
    cols, label_col = _columns(path, spec, header, labelled)
    last_line = reader.line_num
    while True:
        try:
            row = next(reader)
            ex, why = _parse_row(spec, row, len(header), cols, label_col, last_line + 1)
        except StopIteration:
            break
        except csv.Error as e:
            ex, why = None, f"unreadable row ({e})"
        first_line, last_line = last_line + 1, reader.line_num
        out.add(ex, why, first_line, last_line)


def _read_jsonl(path: Path, spec: TaskSpec, fp, labelled: bool | None, out: _Reader) -> None:
    keys_checked = False
    for n, line in enumerate(fp, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            out.add(None, f"not a JSON object ({e.msg})", n, n)
            continue
        if not isinstance(obj, dict):
            out.add(None, f"not a JSON object (a {type(obj).__name__})", n, n)
            continue
        if not keys_checked:  # the first record stands for the file's columns, as a header would
            _, label_col = _columns(path, spec, list(obj), labelled)
            labelled, keys_checked = label_col is not None, True
        texts = [obj.get(c) for c in spec.text_columns]
        if not all(isinstance(t, str) for t in texts):
            bad = next(c for c, t in zip(spec.text_columns, texts) if not isinstance(t, str))
            out.add(None, f"{bad} is {'missing' if bad not in obj else 'not a text'}", n, n)
            continue
        ex_id = str(obj.get(spec.id_column, "")).strip() if spec.id_column else str(n)
        ex, why = _parse_fields(spec, [t.strip() for t in texts], ex_id, obj.get(spec.label_column), labelled)
        out.add(ex, why, n, n)
    if not keys_checked and out.report.rows == 0:
        raise DataError(f"{path}: empty file, expected one JSON object per line")


def read_task_file(task, path, labelled: bool | None = None) -> tuple[list[Example], ReadReport]:
    """Read one file of a task in its own format. labelled=None: labelled iff the file has the label column."""
    spec = as_spec(task)
    path = Path(path)
    out = _Reader(path, spec)
    _raise_field_limit()
    try:
        # surrogateescape keeps bad bytes so the row, not the file, is rejected
        with open(path, encoding=spec.encoding, errors="surrogateescape", newline="") as fp:
            (_read_jsonl if spec.format == "jsonl" else _read_delimited)(path, spec, fp, labelled, out)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return out.done()


# ---- which files make a split ---------------------------------------------------------------

def data_files(data_dir, split: str, tasks=BUILTIN_NAMES) -> dict[str, Path]:
    """task -> the file of `split` for each task (whether it exists or not); a task without one is left out."""
    _check_choice("split", split, SPLITS + ("test",))
    out = {}
    for t in tasks:
        p = as_spec(t).file(_split_key(split), data_dir)
        if p is not None:
            out[as_spec(t).name] = p
    return out


def _resolve(data_dir, split, tasks, overrides) -> tuple[dict[str, Path], dict[str, str]]:
    files = data_files(data_dir, split, tasks)
    notes: dict[str, str] = {}
    names = [as_spec(t).name for t in tasks]
    for task, p in (overrides or {}).items():
        _check_choice("data override task", task, names)
        files[task] = Path(p)
        notes[task] = f"override: {p}"
    for task, note in notes.items():
        log.info("%s %s data: %s", split, task, note)
    return files, notes


def resolve_files(data_dir, split: str, overrides: dict[str, str] | None = None,
                  tasks=BUILTIN_NAMES) -> dict[str, Path]:
    """The files a split really reads: each task's own under `data_dir`, and per-task
    `overrides` (e.g. {"para": another Quora train file}), logged."""
    return _resolve(data_dir, split, tasks, overrides)[0]


def missing_file_message(path: Path, split: str, task, overridden: bool = False) -> str:
    """What to do about a missing data file: the official CS224N files are one command away."""
    name = as_spec(task).name
    msg = f"{path}: no such file ({split} data for task {name})"
    if overridden:
        return msg
    if name not in BUILTIN_NAMES:
        return msg + "; the task's files are set by its definition (files:, data_dir:)"
    msg += f"; fetch the official CS224N files with `{FETCH_COMMAND.format(dest=path.parent)}`"
    if name == "para" and split == "train":
        msg += ", or give another Quora train file with --quora-train FILE (config: quora_train)"
    return msg


def load_split(data_dir, split: str, tasks=BUILTIN_NAMES, overrides: dict[str, str] | None = None
               ) -> dict[str, tuple[list[Example], ReadReport]]:
    """name -> (examples, report) for each task; a task without a file for the split is an error."""
    specs = [as_spec(t) for t in tasks]
    files, notes = _resolve(data_dir, split, specs, overrides)
    out = {}
    for s in specs:
        path = files.get(s.name)
        if path is None:
            raise DataError(f"task {s.name} has no {_split_key(split)} file (its definition's files: "
                            f"{', '.join(s.files) or 'none'})")
        if not path.is_file():
            raise DataError(missing_file_message(path, split, s, overridden=s.name in notes))
        examples, report = read_task_file(s, path)
        report.note = notes.get(s.name, "")
        out[s.name] = (examples, report)
    return out


# ---- batching -------------------------------------------------------------------------------

def make_batch(task, examples: list[Example], tokenizer, pair_encoding: str | None = None) -> dict:
    """Tokenise a list of examples into the model's inputs, labels and ids.

    A sentence task gives `enc`; a pair gives `enc` cross-encoded (joint), `a` and `b` (separate) or
    all three (both), as the task's head wants unless `pair_encoding` says otherwise."""
    import torch  # here, not at the top: reading files (the CLI, the studio) should not load torch
    spec = as_spec(task)
    pair_encoding = pair_encoding or spec.pair_encoding
    _check_choice("pair_encoding", pair_encoding, PAIR_ENCODINGS)
    batch: dict = {"ids": [e.id for e in examples]}
    texts_a = [e.text_a for e in examples]
    if not spec.is_pair:
        batch["enc"] = tokenizer.encode(texts_a)
    else:
        reads = PAIR_READS[pair_encoding]
        if "enc" in reads:
            batch["enc"] = tokenizer.encode(texts_a, pairs=[e.text_b for e in examples])
        if "a" in reads:
            batch["a"] = tokenizer.encode(texts_a)
            batch["b"] = tokenizer.encode([e.text_b for e in examples])
    labels = [e.label for e in examples]
    if any(y is None for y in labels):
        batch["labels"] = None
    else:
        batch["labels"] = torch.tensor(labels, dtype=torch.long if spec.num_outputs > 1 else torch.float)
    return batch


def example_length(e: Example) -> int:
    # characters track token counts closely enough to group similar lengths; no tokenising needed
    return len(e.text_a) + (len(e.text_b) if e.text_b else 0)


def batch_order(examples: list[Example], batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, bucket: bool = False) -> list[list[int]]:
    """Indices of each batch. Bucketing sorts by length within chunks of BUCKET_BATCHES batches
    (less padding), then shuffles the batches so lengths do not come in a ramp."""
    import torch
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} is not allowed; choose a positive integer")
    n = len(examples)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if bucket:
        chunk = batch_size * BUCKET_BATCHES
        order = [i for s in range(0, n, chunk)
                 for i in sorted(order[s:s + chunk], key=lambda i: example_length(examples[i]))]
    groups = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if bucket and shuffle:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return groups


def batches(task, examples: list[Example], batch_size: int, tokenizer,
            pair_encoding: str | None = None, shuffle: bool = False,
            generator: torch.Generator | None = None, bucket: bool = False) -> Iterator[dict]:
    """Tokenised batches over `examples`; the order is fixed by `generator` when shuffling."""
    for idx in batch_order(examples, batch_size, shuffle, generator, bucket):
        yield make_batch(task, [examples[i] for i in idx], tokenizer, pair_encoding)
