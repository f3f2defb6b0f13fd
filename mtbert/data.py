"""The three tasks' data: CS224N file readers, the full-data file layout, and batching.

Files are the CS224N minBERT ones: TAB-separated, a header, an unnamed index as first column,
pandas QUOTE_MINIMAL quoting (a quoted field may hold TABs and newlines). A malformed row is
skipped and reported by its physical line number instead of failing the whole file, because the
official quora-dev.csv has two rows broken by an unbalanced quote.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TASKS = ("sst", "para", "sts")
SPLITS = ("train", "dev", "test-student")
PAIR_ENCODINGS = ("separate", "joint")

REPO_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_DIR / "data" / "sample"   # shipped, the offline default
FULL_DATA_DIR = REPO_DIR / "data" / "cs224n"  # where `python -m mtbert data fetch` puts the official files
FETCH_COMMAND = "python -m mtbert data fetch --dest {dest}"

FILE_PATTERNS = {"sst": "ids-sst-{split}.csv", "para": "quora-{split}.csv", "sts": "sts-{split}.csv"}
TEXT_COLUMNS = {"sst": ("sentence",), "para": ("sentence1", "sentence2"), "sts": ("sentence1", "sentence2")}
LABEL_COLUMN = {"sst": "sentiment", "para": "is_duplicate", "sts": "similarity"}
MAX_BAD_LINES = 10
BUCKET_BATCHES = 50  # length bucketing sorts within chunks of this many batches


class DataError(Exception):
    """Unusable data: a missing file, a missing column, a bad setting. The message says which."""


@dataclass(frozen=True)
class Example:
    id: str
    text_a: str
    text_b: str | None                # None for sst
    label: int | float | None         # sst 0..4, para 0/1, sts 0.0..5.0; None if unlabelled


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


# ---- reading one file -----------------------------------------------------------------------

def _raise_field_limit() -> None:
    # a field that swallowed the rest of a file after a stray quote can be huge; read it, then reject it
    limit = (1 << 31) - 1
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def _parse_label(task: str, raw: str) -> tuple[int | float | None, str]:
    """(label, '') or (None, reason)."""
    name = LABEL_COLUMN[task]
    raw = raw.strip()
    if not raw:
        return None, f"empty {name}"
    try:
        x = float(raw)
    except ValueError:
        return None, f"non-numeric {name} {raw[:20]!r}"
    if task == "sts":
        return (x, "") if 0.0 <= x <= 5.0 else (None, f"{name} {raw[:20]} outside 0..5")
    hi = 4 if task == "sst" else 1
    if not math.isfinite(x) or x != int(x):
        return None, f"{name} {raw[:20]} is not a whole number"
    return (int(x), "") if 0 <= x <= hi else (None, f"{name} {raw[:20]} outside 0..{hi}")


def _parse_row(task: str, row: list[str], width: int, cols: dict[str, int],
               label_col: int | None) -> tuple[Example | None, str]:
    """(example, '') or (None, reason) for one csv record."""
    if len(row) != width:
        return None, f"expected {width} fields, found {len(row)} (unbalanced quote?)"
    if any("\t" in f for f in row):
        # no sentence holds a TAB; a field that does is a quoted one that ran on past its end
        return None, "unbalanced quote: a field runs across a TAB"
    if any("\udc80" <= c <= "\udcff" for f in row for c in f):  # surrogateescape'd bytes
        return None, "undecodable bytes (not UTF-8)"
    texts = [row[cols[c]].strip() for c in TEXT_COLUMNS[task]]
    ex_id = row[cols["id"]].strip()
    label, why = (None, "") if label_col is None else _parse_label(task, row[label_col])
    for name, text in zip(TEXT_COLUMNS[task], texts):
        if not text:
            why = why or f"empty {name}"
    if not ex_id:
        why = why or "empty id"
    if why:
        if any(f.count('"') % 2 for f in row):  # a lone literal quote left over: say why it broke
            why = f"unbalanced quote ({why})"
        return None, why
    return Example(ex_id, texts[0], texts[1] if len(texts) > 1 else None, label), ""


def _columns(path: Path, task: str, header: list[str], labelled: bool | None) -> tuple[dict[str, int], int | None]:
    """Column name -> index, and the label's index (None when reading unlabelled)."""
    cols: dict[str, int] = {}
    for i, h in enumerate(header):
        cols.setdefault(h.strip(), i)
    for c in ("id",) + TEXT_COLUMNS[task]:
        if c not in cols:
            shown = ", ".join(map(repr, header))[:200]
            raise DataError(f"{path}: no column {c!r} for task {task} (header: {shown})")
    label_name = LABEL_COLUMN[task]
    if labelled is None:  # test-student files have no label column
        labelled = label_name in cols
    if labelled and label_name not in cols:
        raise DataError(f"{path}: no column {label_name!r} for labelled {task} data")
    return cols, cols[label_name] if labelled else None


def read_task_file(task: str, path, labelled: bool | None = None) -> tuple[list[Example], ReadReport]:
    """Read one CS224N file. labelled=None: labelled iff the header has the label column."""
    _check_choice("task", task, TASKS)
    path = Path(path)
    report = ReadReport(str(path), task)
    examples: list[Example] = []
    _raise_field_limit()
    try:
        # utf-8-sig drops a BOM; surrogateescape keeps bad bytes so the row, not the file, is rejected
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fp:
            reader = csv.reader(fp, delimiter="\t")
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}: empty file, expected a header row") from None
            except csv.Error as e:
                raise DataError(f"{path}: unreadable header row ({e})") from None
            cols, label_col = _columns(path, task, header, labelled)
            last_line = reader.line_num
            while True:
                try:
                    row = next(reader)
                    ex, why = _parse_row(task, row, len(header), cols, label_col)
                except StopIteration:
                    break
                except csv.Error as e:
                    ex, why = None, f"unreadable row ({e})"
                first_line, last_line = last_line + 1, reader.line_num
                report.rows += 1
                if ex is not None:
                    examples.append(ex)
                    continue
                report.skipped += 1
                if len(report.bad_lines) < MAX_BAD_LINES:
                    span = f" (the record runs to line {last_line})" if last_line > first_line else ""
                    report.bad_lines.append((first_line, why + span))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    report.usable = len(examples)
    return examples, report


# ---- which files make a split ---------------------------------------------------------------

def data_files(data_dir, split: str) -> dict[str, Path]:
    """task -> the CS224N file name for `split` under `data_dir` (whether it exists or not)."""
    _check_choice("split", split, SPLITS)
    return {t: Path(data_dir) / FILE_PATTERNS[t].format(split=split) for t in TASKS}


def _resolve(data_dir, split, overrides) -> tuple[dict[str, Path], dict[str, str]]:
    files = data_files(data_dir, split)
    notes: dict[str, str] = {}
    for task, p in (overrides or {}).items():
        _check_choice("data override task", task, TASKS)
        files[task] = Path(p)
        notes[task] = f"override: {p}"
    for task, note in notes.items():
        log.info("%s %s data: %s", split, task, note)
    return files, notes


def resolve_files(data_dir, split: str, overrides: dict[str, str] | None = None) -> dict[str, Path]:
    """The files a split really reads: the CS224N names under `data_dir`, and per-task
    `overrides` (e.g. {"para": another Quora train file}), logged."""
    return _resolve(data_dir, split, overrides)[0]


def missing_file_message(path: Path, split: str, task: str, overridden: bool = False) -> str:
    """What to do about a missing data file: the official files are one command away."""
    msg = f"{path}: no such file ({split} data for task {task})"
    if overridden:
        return msg
    msg += f"; fetch the official CS224N files with `{FETCH_COMMAND.format(dest=path.parent)}`"
    if task == "para" and split == "train":
        msg += ", or give another Quora train file with --quora-train FILE (config: quora_train)"
    return msg


def load_split(data_dir, split: str, tasks=TASKS, overrides: dict[str, str] | None = None
               ) -> dict[str, tuple[list[Example], ReadReport]]:
    for t in tasks:
        _check_choice("task", t, TASKS)
    files, notes = _resolve(data_dir, split, overrides)
    out = {}
    for t in tasks:
        if not files[t].is_file():
            raise DataError(missing_file_message(files[t], split, t, overridden=t in notes))
        examples, report = read_task_file(t, files[t])
        report.note = notes.get(t, "")
        out[t] = (examples, report)
    return out


# ---- batching -------------------------------------------------------------------------------

def make_batch(task: str, examples: list[Example], tokenizer, pair_encoding: str = "separate") -> dict:
    """Tokenise a list of examples into the model's inputs, labels and ids."""
    import torch  # here, not at the top: reading files (the CLI, the studio) should not load torch
    _check_choice("task", task, TASKS)
    _check_choice("pair_encoding", pair_encoding, PAIR_ENCODINGS)
    batch: dict = {"ids": [e.id for e in examples]}
    texts_a = [e.text_a for e in examples]
    if task == "sst":
        batch["enc"] = tokenizer.encode(texts_a)
    elif pair_encoding == "joint":
        batch["enc"] = tokenizer.encode(texts_a, pairs=[e.text_b for e in examples])
    else:
        batch["a"] = tokenizer.encode(texts_a)
        batch["b"] = tokenizer.encode([e.text_b for e in examples])
    labels = [e.label for e in examples]
    if any(y is None for y in labels):
        batch["labels"] = None
    else:
        batch["labels"] = torch.tensor(labels, dtype=torch.long if task == "sst" else torch.float)
    return batch


def _length(e: Example) -> int:
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
                 for i in sorted(order[s:s + chunk], key=lambda i: _length(examples[i]))]
    groups = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if bucket and shuffle:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return groups


def batches(task: str, examples: list[Example], batch_size: int, tokenizer,
            pair_encoding: str = "separate", shuffle: bool = False,
            generator: torch.Generator | None = None, bucket: bool = False) -> Iterator[dict]:
    """Tokenised batches over `examples`; the order is fixed by `generator` when shuffling."""
    for idx in batch_order(examples, batch_size, shuffle, generator, bucket):
        yield make_batch(task, [examples[i] for i in idx], tokenizer, pair_encoding)
