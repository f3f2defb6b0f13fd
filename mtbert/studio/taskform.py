"""The Train page's "Add a task": from a data file to a task definition the trainer reads.

A file is detected (JSONL, or delimited with a TAB, comma or semicolon, its quoting and encoding),
scanned (its columns, first rows, and what each column's values look like), and a definition is
guessed from it (text, label and id columns, the kind, classes or range, head, loss, metrics);
the page shows every guess as a choice. The definition built from the choices is checked the way
the trainer will use it: `TaskSpec.from_dict` (its message names the field) and `read_task_file`
on each of its files (rows, usable rows, the first bad lines). The added tasks are written as a
task file (docs/tasks.md) under the runs folder, the file a run's `tasks_file` names.

Uploads and the parts of a train file split for dev go under `<runs>/task-data/`, task files under
`<runs>/task-files/`: the trainer is another process and reads paths. No Streamlit in here.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError, ReadReport, _raise_field_limit, read_task_file
from ..tasks import (BUILTIN_NAMES, COSINE_HEADS, HEADS, LOSSES, METRICS, TaskError, TaskSpec, builtin_tasks,
                     check_unique)

TASK_DATA = "task-data"    # uploads and split files, under the runs folder
TASK_FILES = "task-files"  # the task files runs are started with, under the runs folder
PREVIEW_ROWS = 10
SCAN_ROWS = 200_000        # rows scanned for the columns' values (a guess needs no more)
FEW = 20                   # a label column with at most this many distinct values holds classes
SNIFF_BYTES = 64 * 1024
DELIMITERS = {"\t": "TAB", ",": "comma", ";": "semicolon"}
ENCODING_NAMES = {"utf-8-sig": "UTF-8", "utf-8": "UTF-8 (a byte-order mark is kept)", "latin-1": "Latin-1"}
ID_NAMES = ("id", "idx", "index", "guid", "uid", "pair_id", "pairid")
LABEL_NAMES = ("label", "labels", "gold_label", "target", "class", "category", "sentiment", "score",
               "similarity", "is_duplicate", "quality", "rating", "stars", "y")
TEXT_NAMES = ("sentence", "text", "sentence1", "sentence2", "premise", "hypothesis", "question1",
              "question2", "text_a", "text_b", "#1 string", "#2 string", "review", "content")
DEV_SHARE = 0.2            # the part of a train file split off for dev, unless chosen


# ---- detecting and scanning a file -----------------------------------------------------------

@dataclass(frozen=True)
class Reading:
    """How a file is read: TaskSpec's reading fields."""
    format: str = "delimited"
    delimiter: str = "\t"
    quoting: str = "minimal"
    encoding: str = "utf-8-sig"

    def describe(self) -> str:
        if self.format == "jsonl":
            return f"JSONL (one object per line), {ENCODING_NAMES[self.encoding]}"
        quotes = "csv quoting" if self.quoting == "minimal" else "quotes are plain characters"
        return (f"delimited, {DELIMITERS.get(self.delimiter, repr(self.delimiter))}-separated with a header row, "
                f"{quotes}, {ENCODING_NAMES[self.encoding]}")


@dataclass
class Column:
    """What one column's values look like (over the rows scanned)."""
    name: str
    filled: int = 0             # non-empty values
    numbers: int = 0            # of them, numbers
    integers: int = 0           # of them, whole numbers
    low: float | None = None
    high: float | None = None
    distinct: list = field(default_factory=list)  # in order of first appearance, at most FEW + 1
    length: float = 0.0         # mean length of the values

    @property
    def numeric(self) -> bool:
        return self.filled > 0 and self.numbers == self.filled

    @property
    def few(self) -> bool:
        return len(self.distinct) <= FEW

    def add(self, value: str) -> None:
        value = value.strip()
        if not value:
            return
        self.length += (len(value) - self.length) / (self.filled + 1)
        self.filled += 1
        if len(self.distinct) <= FEW and value not in self.distinct:
            self.distinct.append(value)
        try:
            x = float(value)
        except ValueError:
            return
        if math.isfinite(x):
            self.numbers += 1
            self.integers += x == int(x)
            self.low = x if self.low is None else min(self.low, x)
            self.high = x if self.high is None else max(self.high, x)


@dataclass
class FileInfo:
    path: str
    reading: Reading
    columns: list[str]
    preview: list[dict]         # the first rows, column -> value
    stats: dict[str, Column]
    rows: int                   # rows scanned (all of them, up to SCAN_ROWS)


def _encoding(head: bytes) -> str:
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not merely a character cut at the end of the sample
            return "latin-1"
    return "utf-8-sig"  # reads UTF-8 with and without a byte-order mark


def _records(text: str, delimiter: str, quoting: str, limit: int | None = None) -> list[list[str]]:
    q = csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL
    out = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=q)
    try:
        for row in reader:
            out.append(row)
            if limit and len(out) >= limit:
                break
    except csv.Error:
        pass
    return out


def _misfits(rows: list[list[str]], delimiter: str) -> int:
    """Records of the sample that do not look like the header's: a width of their own, or a field
    that swallowed a line break or a TAB (a quote that opened and never closed; a comma or a
    semicolon inside quotes is a sentence's own)."""
    width = len(rows[0])
    swallowed = ("\n", "\t") if delimiter == "\t" else ("\n",)
    return sum(len(r) != width or any(x in f for f in r for x in swallowed) for r in rows[1:])


def detect(path) -> Reading:
    """The reading a file most likely needs: JSONL when its first line is a JSON object, else the
    delimiter (TAB, comma, semicolon) that splits its header and rows alike, csv quoting unless
    plain quotes fit the file better, UTF-8 unless the bytes are not (then Latin-1)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    encoding = _encoding(head)
    text = head.decode("utf-8-sig" if encoding == "utf-8-sig" else encoding, errors="replace")
    if len(head) == SNIFF_BYTES:  # drop the last line: the sample cuts it
        text = text[:text.rfind("\n") + 1] or text
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        raise DataError(f"{path}: empty file")
    if first.lstrip().startswith("{"):
        try:
            if isinstance(json.loads(first), dict):
                return Reading("jsonl", encoding=encoding)
        except ValueError:
            pass
    best = None
    for order, d in enumerate(DELIMITERS):
        for quoting in ("minimal", "none"):
            rows = _records(text, d, quoting, limit=200)
            if not rows or len(rows[0]) < 2:
                continue
            # fewest misfit rows, then the widest header, then TAB before comma before semicolon,
            # csv quoting before plain quotes
            score = (_misfits(rows, d), -len(rows[0]), order, quoting != "minimal")
            if best is None or score < best[0]:
                best = (score, Reading("delimited", d, quoting, encoding))
    if best is None:
        raise DataError(f"{path}: neither JSONL nor a header row split by TAB, comma or semicolon "
                        f"(first line: {first[:80]!r})")
    return best[1]


def _json_text(v) -> str:
    if isinstance(v, bool):
        return str(int(v))  # as the reader takes a label: true is 1
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def scan(path, reading: Reading | None = None) -> FileInfo:
    """The file's columns, its first rows and what each column holds, read as `reading` says
    (detected when None)."""
    path = Path(path)
    reading = reading or detect(path)
    columns: list[str] = []
    rows: list[dict] = []
    stats: dict[str, Column] = {}
    n = 0

    def add(row: dict) -> None:
        nonlocal n
        n += 1
        if len(rows) < PREVIEW_ROWS:
            rows.append(row)
        for c, v in row.items():
            if c in stats:
                stats[c].add(v)

    try:
        with open(path, encoding=reading.encoding, errors="replace", newline="") as fp:
            if reading.format == "jsonl":
                for line in fp:
                    if n >= SCAN_ROWS:
                        break
                    try:
                        obj = json.loads(line) if line.strip() else None
                    except ValueError:
                        continue  # read_task_file reports it, by line
                    if not isinstance(obj, dict):
                        continue
                    for k in obj:
                        if k not in stats:
                            columns.append(k)
                            stats[k] = Column(k)
                    add({k: _json_text(v) for k, v in obj.items()})
            else:
                q = csv.QUOTE_NONE if reading.quoting == "none" else csv.QUOTE_MINIMAL
                reader = csv.reader(fp, delimiter=reading.delimiter, quoting=q)
                header = next(reader, None)
                if not header:
                    raise DataError(f"{path}: empty file, expected a header row")
                columns = [h.strip() for h in header]
                stats = {c: Column(c) for c in columns if c}
                while n < SCAN_ROWS:
                    try:
                        row = next(reader)
                    except StopIteration:
                        break
                    except csv.Error:
                        continue
                    if len(row) == len(columns):
                        add(dict(zip(columns, row)))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {reading.encoding} ({e.reason})") from None
    return FileInfo(str(path), reading, columns, rows, stats, n)


# ---- guessing the definition -------------------------------------------------------------------

def suggest_name(stem: str, taken=()) -> str:
    """A task name from a file name (lower case, digits, _), not one of `taken`."""
    stem = re.sub(r"[-_.](train|dev|test|valid|validation)$", "", stem.lower())
    name = re.sub(r"[^a-z0-9_]+", "_", stem).strip("_") or "task"
    if not name[0].isalpha():
        name = "t_" + name
    name = name[:28]
    out, i = name, 2
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    return out


def _named(columns: list[str], names) -> list[str]:
    return [c for c in columns if c.lower() in names]


def guess_label(col: Column | None) -> dict:
    """kind, classes, label_names and range for a label column: classes when its values are few
    (named by its values unless they are 0 … K−1), else a score between its lowest and highest value."""
    if col is None or not col.filled:
        return {"kind": "classification", "classes": 2, "label_names": None, "range": (0.0, 1.0)}
    rng = (0.0, 1.0)
    if col.numbers:
        lo, hi = math.floor(col.low), math.ceil(col.high)
        rng = (float(lo), float(hi if hi > lo else lo + 1))
    if col.numeric and (not col.few or col.integers < col.numbers):
        return {"kind": "regression", "classes": 2, "label_names": None, "range": rng}
    if not col.few:  # many distinct values, not numbers: no label the guess can use
        return {"kind": "classification", "classes": 2, "label_names": None, "range": rng}
    if col.numeric:
        values = sorted(col.distinct, key=float)
        if [float(v) for v in values] == [float(k) for k in range(len(values))] and len(values) >= 2:
            return {"kind": "classification", "classes": len(values), "label_names": None, "range": rng}
    else:
        values = sorted(col.distinct)
    return {"kind": "classification", "classes": max(2, len(values)), "label_names": values if len(values) >= 2
            else None, "range": rng}


def model_defaults(input: str, kind: str, classes: int | None) -> dict:
    """The head, loss and metrics a task of this shape starts with: a linear head for a sentence,
    [u; v; |u−v|; u·v] for a classified pair, the cosine head for a scored pair; cross-entropy over
    more than two classes, one logit (bce) for two, squared error for a score."""
    if kind == "regression":
        return {"head": "cosine" if input == "pair" else "linear", "loss": "mse",
                "metrics": ["pearson", "spearman"], "main_metric": "pearson"}
    two = classes == 2
    return {"head": "concat_diff_prod" if input == "pair" else "linear", "loss": "bce" if two else "ce",
            "metrics": ["accuracy", "f1" if two else "macro_f1"], "main_metric": "accuracy"}


def head_choices(input: str, kind: str) -> list[str]:
    return [h for h in HEADS.get(input, ()) if kind == "regression" or h not in COSINE_HEADS]


def loss_choices(kind: str, classes: int | None, head: str) -> list[str]:
    return [x for x in LOSSES.get(kind, ()) if (x != "bce" or classes == 2)
            and (x not in ("cosine_embedding", "cosent") or head == "cosine")]


def metric_choices(kind: str, classes: int | None) -> list[str]:
    return [m for m in METRICS.get(kind, ()) if m != "f1" or classes == 2]


def guess(info: FileInfo, taken=()) -> dict:
    """A whole definition from a scanned file, as TaskSpec's fields (files left to the caller):
    the id, label and text columns by their names, else by their values; the label's kind,
    classes or range; the head, loss and metrics of that shape; a name from the file's."""
    cols = [c for c in info.columns if c]
    st = info.stats
    ids = [c for c in _named(cols, ID_NAMES) if st[c].filled == info.rows]
    id_col = ids[0] if ids else None
    rest = [c for c in cols if c != id_col]
    labels = _named(rest, LABEL_NAMES)
    if not labels:  # the last column with few values, or with numbers
        labels = [c for c in reversed(rest) if st[c].few or st[c].numeric]
    label = labels[0] if labels else (rest[-1] if rest else None)
    texts = _named([c for c in rest if c != label], TEXT_NAMES)
    others = [c for c in rest if c != label and c not in texts and not st[c].numeric]
    texts += sorted(others, key=lambda c: -st[c].length)  # the longest values after the named ones
    long = [c for c in texts if st[c].length >= 15 or c.lower() in TEXT_NAMES]
    input = "pair" if len(long) >= 2 else "sentence"
    text_columns = (texts + rest)[:2] if input == "pair" else (texts + rest)[:1]
    lab = guess_label(st.get(label))
    name = suggest_name(Path(info.path).stem, taken)
    return {"name": name, "title": name.replace("_", " ").capitalize() if name else "", "input": input,
            **lab, "format": info.reading.format, "delimiter": info.reading.delimiter,
            "quoting": info.reading.quoting, "encoding": info.reading.encoding,
            "text_columns": text_columns, "label_column": label, "id_column": id_col,
            **model_defaults(input, lab["kind"], lab["classes"]), "weight": 1.0}


# ---- the definition and its check --------------------------------------------------------------

def parse_names(text: str) -> list[str] | None:
    """Label names as typed: comma-separated, class 0 first; empty: none."""
    names = [n.strip() for n in (text or "").split(",")]
    return [n for n in names if n] or None


def build_spec(*, name, title, input, kind, train_file, dev_file, format, delimiter, quoting, encoding,
               text_columns, label_column, id_column=None, classes=None, label_names=None, range=None,
               head, loss, metrics, main_metric, weight=1.0) -> dict:
    """A task definition (TaskSpec's fields) from the page's choices: the fields of the other kind
    and of the other input left out, the files as absolute paths (the trainer runs elsewhere)."""
    d = {"name": (name or "").strip(), "title": (title or "").strip(), "input": input, "kind": kind}
    if kind == "classification":
        d["classes"] = int(classes) if isinstance(classes, (int, float)) and not isinstance(classes, bool) else classes
        if label_names:
            d["label_names"] = list(label_names)
    else:
        d["range"] = list(range) if range is not None else None
    files = {"train": train_file, "dev": dev_file}
    d["files"] = {k: str(Path(v).expanduser().resolve()) for k, v in files.items() if v}
    d["format"] = format
    if format == "delimited":
        d.update(delimiter=delimiter, quoting=quoting)
    d["encoding"] = encoding
    d["text_columns"] = list(text_columns)[:2 if input == "pair" else 1]
    d["label_column"] = label_column or None
    if id_column:
        d["id_column"] = id_column
    d.update(head=head, loss=loss, weight=float(weight), metrics=list(metrics), main_metric=main_metric)
    return d


@dataclass
class Check:
    spec: TaskSpec | None = None
    problems: list[str] = field(default_factory=list)
    reports: list[tuple[str, ReadReport]] = field(default_factory=list)  # (what, report) per file read

    @property
    def ok(self) -> bool:
        return self.spec is not None and not self.problems

    def counts(self) -> list[dict]:
        return [{"file": what, "rows": r.rows, "usable": r.usable, "skipped": r.skipped} for what, r in self.reports]

    def bad_lines(self) -> list[dict]:
        return [{"file": what, "line": n, "why": why} for what, r in self.reports for n, why in r.bad_lines]


# the fields that say how a file reads (its head, loss, metrics, weight and title do not)
READ_FIELDS = ("name", "input", "kind", "classes", "label_names", "range", "format", "delimiter", "quoting",
               "encoding", "text_columns", "label_column", "id_column")


def read_report(spec: TaskSpec, path) -> ReadReport:
    """Rows, usable rows and the first bad lines of one file read with the definition."""
    return read_task_file(spec, path, labelled=spec.label_column is not None)[1]


def check(d: dict, taken=(), whole_train: str | None = None, report=read_report) -> Check:
    """The definition as the trainer will take it: its fields (TaskError's message), a name no
    other task has, and each file read with it (rows, usable rows, the first bad lines). A
    train and a dev file are needed, each with usable rows. `whole_train`: the file a train and
    dev part were split from, read too so its bad lines are shown by their lines in it.
    `report(spec, path)`: read_report, or a cached one."""
    out = Check()
    try:
        spec = TaskSpec.from_dict(d)
    except TaskError as e:
        out.problems.append(str(e))
        return out
    if spec.name in taken:
        out.problems.append(f"task name {spec.name!r} is taken "
                            f"({'a built-in task' if spec.name in BUILTIN_NAMES else 'a task added already'}); "
                            "choose another name")
    if spec.label_column is None:
        out.problems.append(f"task {spec.name!r}: choose its label column (a task trains on labelled rows)")
    files = [("train (whole file)", Path(whole_train))] if whole_train else []
    for split in ("train", "dev"):
        p = spec.file(split, None)
        if p is None:
            out.problems.append(f"task {spec.name!r} needs a {split} file: the trainer evaluates every task "
                                "on its dev file (give one, or split off part of the train file)")
        else:
            files.append((f"{split} part" if whole_train else split, p))
    for what, p in files:
        if not p.is_file():
            out.problems.append(f"{p}: no such file ({what} of task {spec.name})")
            continue
        try:
            rep = report(spec, p)
        except DataError as e:
            out.problems.append(str(e))
            continue
        out.reports.append((what, rep))
        if not rep.usable and not what.endswith("(whole file)"):
            out.problems.append(f"{p}: no usable rows ({what} of task {spec.name}); the first bad lines say why")
    out.spec = spec
    return out


# ---- files under the runs folder -------------------------------------------------------------

def safe_name(name: str) -> str:
    """A file name safe to write: letters, digits, ., _, - (the rest become _), no leading dot."""
    name = Path(str(name).replace("\\", "/")).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._") or "file"
    stem, dot, suffix = name.rpartition(".")
    return (f"{stem[:80]}.{suffix[:10]}" if dot and stem else name[:90])


def save_upload(name: str, data: bytes, runs_dir) -> Path:
    """An uploaded file under `<runs>/task-data/`, named after it and its content (the same upload
    is saved once; another with the same name does not overwrite it)."""
    folder = Path(runs_dir) / TASK_DATA
    folder.mkdir(parents=True, exist_ok=True)
    stem, dot, suffix = safe_name(name).rpartition(".")
    digest = hashlib.sha256(data).hexdigest()[:10]
    path = folder / (f"{stem}-{digest}.{suffix}" if dot and stem else f"{safe_name(name)}-{digest}")
    if not path.is_file():
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def split_file(path, reading: Reading, runs_dir, share: float = DEV_SHARE, seed: int = 0) -> tuple[Path, Path]:
    """The file's records in two files under `<runs>/task-data/`: a random `share` for dev, the
    rest for train, each in the file's order and format (a delimited file keeps its header). The
    same file (path, size, modification time) and share give the same parts, written once."""
    path = Path(path).resolve()
    if not 0 < share < 1:
        raise ValueError(f"share={share!r} is not allowed; allowed values: 0 < share < 1")
    stat = path.stat()
    key = hashlib.sha256(repr((str(path), stat.st_size, stat.st_mtime_ns, reading, share, seed)).encode()
                         ).hexdigest()[:10]
    stem, suffix = safe_name(path.stem), path.suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", path.suffix) else ""
    folder = Path(runs_dir) / TASK_DATA
    parts = folder / f"{stem}-{key}-train{suffix}", folder / f"{stem}-{key}-dev{suffix}"
    if all(p.is_file() for p in parts):
        return parts
    encoding = "utf-8" if reading.encoding == "utf-8-sig" else reading.encoding
    text = path.read_bytes().decode(reading.encoding, errors="surrogateescape")
    header: list[str] | None = None
    if reading.format == "jsonl":
        records = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    else:
        q = csv.QUOTE_NONE if reading.quoting == "none" else csv.QUOTE_MINIMAL
        _raise_field_limit()
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=reading.delimiter, quoting=q))
        if not rows:
            raise DataError(f"{path}: empty file, expected a header row")
        header, records = rows[0], rows[1:]
    if len(records) < 2:
        raise DataError(f"{path}: {len(records)} row(s); a dev part needs a file of at least 2 rows")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_dev = min(len(records) - 1, max(1, round(share * len(records))))
    dev = set(order[:n_dev])
    folder.mkdir(parents=True, exist_ok=True)
    for part, keep in zip(parts, (lambda i: i not in dev, lambda i: i in dev)):
        chosen = [r for i, r in enumerate(records) if keep(i)]
        tmp = part.with_name(part.name + ".part")
        with open(tmp, "w", encoding=encoding, errors="surrogateescape", newline="") as f:
            if header is None:
                f.write("".join(line + "\n" for line in chosen))
            else:
                quoting = dict(quoting=csv.QUOTE_NONE, quotechar=None) if reading.quoting == "none" else {}
                w = csv.writer(f, delimiter=reading.delimiter, lineterminator="\n", **quoting)
                w.writerows([header, *chosen])
        tmp.replace(part)
    return parts


def tasks_file_text(specs: list[dict], builtin: bool = True) -> str:
    """A task file (docs/tasks.md's format): the definitions, each field once, in TaskSpec's order."""
    import yaml

    tasks = []
    for d in specs:
        full = TaskSpec.from_dict(d).to_dict()
        tasks.append({k: v for k, v in full.items() if v is not None})
    head = "# Tasks added on the Train page (the format: docs/tasks.md)\n"
    return head + yaml.safe_dump({"builtin": builtin, "tasks": tasks}, sort_keys=False, allow_unicode=True,
                                 default_flow_style=None, width=100)


def write_tasks_file(specs: list[dict], runs_dir) -> Path:
    """The added tasks as a task file `<runs>/task-files/<time>.yaml`, beside the built-in tasks."""
    all_specs = [TaskSpec.from_dict(d) for d in specs]
    check_unique(builtin_tasks() + all_specs, where="the added tasks: ")
    folder = Path(runs_dir) / TASK_FILES
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = folder / f"{stamp}.yaml", 2
    while path.exists():
        path, i = folder / f"{stamp}-{i}.yaml", i + 1
    path.write_text(tasks_file_text([s.to_dict() for s in all_specs]), encoding="utf-8")
    return path


def describe(d: dict) -> str:
    """One line about an added task: its name, title, input, target, head, loss and files."""
    target = (f"{d.get('classes')} classes" + (f" ({', '.join(map(str, d['label_names']))})"
                                               if d.get("label_names") else "")
              if d.get("kind") == "classification" else "a score {:g}–{:g}".format(*d.get("range") or (0, 1)))
    files = ", ".join(f"{k}: {Path(v).name}" for k, v in (d.get("files") or {}).items())
    return (f"**{d['name']}** ({d.get('title') or d['name']}) · {d.get('input')} → {target} · "
            f"{d.get('head')} head, {d.get('loss')} loss · {files}")

