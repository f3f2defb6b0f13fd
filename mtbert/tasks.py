"""A task is data: what it reads, what it predicts, which head and loss train it, how it is scored.

One `TaskSpec` per task. The CS224N trio are three built-in definitions (`builtin_tasks`); a
YAML task file (`read_tasks_file`) adds tasks of the user's own or replaces the trio. Every field
is checked here, once, with a message that names the field and its allowed values; the reader,
the model, the metrics, the studio and the model card only read the definition.

Heads (the model's output for one task):
  linear            sentence: dropout -> linear on the pooled sentence
  concat            pair, encoded separately: dropout, [u; v] -> linear
  concat_diff_prod  pair, encoded separately: dropout, [u; v; |u-v|; u*v] -> linear
  cosine            pair regression: a hidden->hidden projection on u and v, cosine x range
  cross             pair, cross-encoded jointly ([CLS] a [SEP] b [SEP]) -> dropout -> linear
  cross_concat      pair, read both ways: dropout, [j; u; v; |u-v|; u*v] -> linear, with j the pooled joint
                    encoding: the sum of a cross head's logits and a concat_diff_prod head's, in one model
  cosine_cross      pair regression, read both ways: the cosine head's score plus a linear read of the
                    pooled joint encoding, which starts at 0 (so the head starts as the cosine head)
Losses: ce (K logits), bce (two classes, one logit), mse (a score in the range),
cosine_embedding (the cosine head, labels above the range's middle are +1, the rest -1),
cosent (the cosine head: CoSENT's ranking loss on the batch's cosines, Su 2022; the score is then the
cosine mapped from [-1, 1] onto the range).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

INPUTS = ("sentence", "pair")
KINDS = ("classification", "regression")
FORMATS = ("delimited", "jsonl")
QUOTING = ("minimal", "none")
ENCODINGS = ("utf-8-sig", "utf-8", "latin-1")
SPLITS = ("train", "dev", "test")
HEADS = {"sentence": ("linear",),
         "pair": ("concat", "concat_diff_prod", "cosine", "cross", "cross_concat", "cosine_cross")}
COSINE_HEADS = ("cosine", "cosine_cross")  # they predict a score from a cosine: regression only
# a pair's encodings: the encoder inputs a batch of it holds (mtbert/data.py make_batch)
PAIR_READS = {"separate": ("a", "b"), "joint": ("enc",), "both": ("enc", "a", "b")}
PAIR_ENCODINGS = tuple(PAIR_READS)
# the encoding of each head that does not read the two sentences apart only
HEAD_ENCODINGS = {"cross": "joint", "cross_concat": "both", "cosine_cross": "both"}
LOSSES = {"classification": ("ce", "bce"), "regression": ("mse", "cosine_embedding", "cosent")}
METRICS = {"classification": ("accuracy", "f1", "macro_f1"), "regression": ("pearson", "spearman")}
# the key of a metric in results (sst_acc, sts_corr, ...): the names the CS224N tables always used
METRIC_KEYS = {"accuracy": "acc", "f1": "f1", "macro_f1": "macro_f1", "pearson": "corr", "spearman": "spearman"}
METRIC_TITLES = {"accuracy": "acc", "f1": "F1", "macro_f1": "macro-F1", "pearson": "corr", "spearman": "Spearman"}
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class TaskError(ValueError):
    """A task definition that cannot be used; the message names the task, the field and what is allowed."""


@dataclass(frozen=True)
class TaskSpec:
    # identity
    name: str
    title: str = ""
    # input and target
    input: str = "sentence"                      # sentence | pair
    kind: str = "classification"                 # classification | regression
    classes: int | None = None                   # classification: K >= 2
    label_names: tuple | None = None             # classification: K names; a file may give a label by name
    range: tuple | None = None                   # regression: (low, high), both inclusive
    # files, per split; relative paths are under data_dir (the task's own, else the run's)
    files: dict = field(default_factory=dict)
    data_dir: str | None = None
    # reading
    format: str = "delimited"                    # delimited (with a header row) | jsonl
    delimiter: str = "\t"
    quoting: str = "minimal"                     # minimal (csv's quotes) | none (a quote is a character)
    encoding: str = "utf-8-sig"                  # utf-8-sig reads files with and without a byte-order mark
    text_columns: tuple = ("sentence",)          # one column per input sentence
    label_column: str | None = None              # None: an unlabelled task (predict only)
    id_column: str | None = None                 # None: the row's line number is its id
    # model, training, evaluation
    head: str = "linear"
    loss: str = "ce"
    weight: float = 1.0
    metrics: tuple = ("accuracy",)
    main_metric: str = "accuracy"                # the score that enters the average

    def __post_init__(self):
        for name in ("label_names", "range", "text_columns", "metrics"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        if isinstance(self.text_columns, str):
            object.__setattr__(self, "text_columns", (self.text_columns,))
        if isinstance(self.metrics, str):
            object.__setattr__(self, "metrics", (self.metrics,))
        object.__setattr__(self, "files", dict(self.files or {}))
        if not self.title:
            object.__setattr__(self, "title", self.name)
        _validate(self)

    # -- what the rest of mtbert asks of a task --

    @property
    def is_pair(self) -> bool:
        return self.input == "pair"

    @property
    def pair_encoding(self) -> str:
        """How the inputs reach the encoder: joint for a cross-encoded pair, both for a pair read jointly and
        one sentence at a time (cross_concat, cosine_cross), else separate."""
        return HEAD_ENCODINGS.get(self.head, "separate")

    @property
    def reads_jointly(self) -> bool:
        """A pair task whose head reads [CLS] a [SEP] b [SEP] (alone or beside the two sentences)."""
        return self.is_pair and "enc" in PAIR_READS[self.pair_encoding]

    @property
    def reads_apart(self) -> bool:
        """A pair task whose head reads each sentence encoded alone (alone or beside the joint read)."""
        return self.is_pair and "a" in PAIR_READS[self.pair_encoding]

    @property
    def num_outputs(self) -> int:
        """Width of the task's output: K logits (ce), one logit or score (bce, regression)."""
        return self.classes if self.kind == "classification" and self.loss == "ce" else 1

    @property
    def binary(self) -> bool:
        """Predicted as one probability (of class 1) with a decision threshold."""
        return self.kind == "classification" and self.loss == "bce"

    def metric_key(self, metric: str) -> str:
        return f"{self.name}_{METRIC_KEYS[metric]}"

    @property
    def main_key(self) -> str:
        return self.metric_key(self.main_metric)

    def metric_title(self, metric: str) -> str:
        return f"{self.title} {METRIC_TITLES[metric]}"

    def label_name(self, k: int) -> str:
        return str(self.label_names[k]) if self.label_names else str(k)

    def file(self, split: str, data_dir) -> Path | None:
        """The split's file: absolute as given, else under the task's data_dir or the run's."""
        name = self.files.get(split)
        if not name:
            return None
        p = Path(name).expanduser()
        return p if p.is_absolute() else Path(self.data_dir or data_dir or ".").expanduser() / p

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("label_names", "range", "text_columns", "metrics"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "TaskSpec":
        if not isinstance(d, dict):
            raise TaskError(f"{where}a task is a mapping of fields, got {type(d).__name__}")
        name = d.get("name")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise TaskError(f"{where}task {name!r}: unknown field(s) {', '.join(unknown)}; "
                            f"known fields: {', '.join(known)}")
        if "name" not in d:
            raise TaskError(f"{where}a task has no name; every task needs name: (lower case letters, digits, _)")
        try:
            return cls(**d)
        except TaskError as e:
            raise TaskError(f"{where}{e}") from None
        except TypeError as e:
            raise TaskError(f"{where}task {name!r}: {e}") from None


def _fail(spec, fld: str, why: str) -> None:
    raise TaskError(f"task {spec.name!r}: field {fld}={getattr(spec, fld)!r} is not allowed; {why}")


def _choice(spec, fld: str, allowed) -> None:
    if getattr(spec, fld) not in allowed:
        _fail(spec, fld, f"allowed values: {', '.join(map(str, allowed))}")


def _validate(s: TaskSpec) -> None:
    if not isinstance(s.name, str) or not NAME_PATTERN.match(s.name):
        raise TaskError(f"task name {s.name!r} is not allowed; allowed values: a lower-case letter, then up to "
                        "31 lower-case letters, digits or _ (it names the task's metrics and weights)")
    if not isinstance(s.title, str):
        _fail(s, "title", "allowed values: a text")
    _choice(s, "input", INPUTS)
    _choice(s, "kind", KINDS)
    _choice(s, "format", FORMATS)
    _choice(s, "quoting", QUOTING)
    _choice(s, "encoding", ENCODINGS)
    if s.kind == "classification":
        if not isinstance(s.classes, int) or isinstance(s.classes, bool) or s.classes < 2:
            _fail(s, "classes", "allowed values: an integer >= 2 for a classification task")
        if s.label_names is not None and (len(s.label_names) != s.classes
                                          or len({str(n) for n in s.label_names}) != s.classes):
            _fail(s, "label_names", f"allowed values: {s.classes} distinct names, one per class, or none")
        if s.range is not None:
            _fail(s, "range", "allowed values: none for a classification task (range is for regression)")
    else:
        if (s.range is None or len(s.range) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x)
                                                             for x in s.range) or s.range[0] >= s.range[1]):
            _fail(s, "range", "allowed values: [low, high] with low < high for a regression task")
        object.__setattr__(s, "range", (float(s.range[0]), float(s.range[1])))
        if s.classes is not None or s.label_names is not None:
            _fail(s, "classes", "allowed values: none for a regression task (classes and label_names are "
                                "for classification)")
    if not isinstance(s.files, dict) or set(s.files) - set(SPLITS) or \
            not all(isinstance(v, str) and v for v in s.files.values()):
        _fail(s, "files", f"allowed values: a mapping of {', '.join(SPLITS)} to file paths")
    if s.data_dir is not None and not (isinstance(s.data_dir, str) and s.data_dir):
        _fail(s, "data_dir", "allowed values: a folder, or none (the run's data_dir)")
    if s.format == "delimited" and not (isinstance(s.delimiter, str) and len(s.delimiter) == 1
                                        and s.delimiter not in "\"\r\n"):
        _fail(s, "delimiter", "allowed values: one character other than a quote or a line break, e.g. \"\\t\" or \",\"")
    want = 2 if s.is_pair else 1
    if len(s.text_columns) != want or not all(isinstance(c, str) and c for c in s.text_columns):
        _fail(s, "text_columns", f"allowed values: {want} column name{'s' if want > 1 else ''} for a "
                                 f"{s.input} task")
    for fld in ("label_column", "id_column"):
        v = getattr(s, fld)
        if v is not None and not (isinstance(v, str) and v):
            _fail(s, fld, "allowed values: a column name, or none")
    _choice(s, "head", HEADS[s.input])
    _choice(s, "loss", LOSSES[s.kind])
    if s.loss == "bce" and s.classes != 2:
        _fail(s, "loss", "allowed values: ce for more than two classes (bce predicts one probability)")
    if s.head in COSINE_HEADS and s.kind != "regression":
        _fail(s, "head", f"allowed values: {', '.join(h for h in HEADS['pair'] if h not in COSINE_HEADS)} for "
                         f"classification ({s.head} predicts a score)")
    if s.loss in ("cosine_embedding", "cosent") and s.head != "cosine":
        _fail(s, "loss", f"allowed values: mse unless head is cosine ({s.loss} trains the cosine head)")
    if not (isinstance(s.weight, (int, float)) and not isinstance(s.weight, bool)
            and math.isfinite(s.weight) and s.weight > 0):
        _fail(s, "weight", "allowed values: a number > 0")
    allowed = METRICS[s.kind]
    if s.kind == "classification" and s.classes != 2:
        allowed = tuple(m for m in allowed if m != "f1")  # f1 is the positive class's, for two classes
    if not s.metrics or len(set(s.metrics)) != len(s.metrics) or any(m not in allowed for m in s.metrics):
        _fail(s, "metrics", f"allowed values: a list of {', '.join(allowed)} for this task")
    if s.main_metric not in s.metrics:
        _fail(s, "main_metric", f"allowed values: one of the task's metrics ({', '.join(s.metrics)})")


# ---- the CS224N trio ------------------------------------------------------------------------

BUILTIN_NAMES = ("sst", "para", "sts")
SST_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")
CS224N_FILES = {"sst": "ids-sst-{split}.csv", "para": "quora-{split}.csv", "sts": "sts-{split}.csv"}
_TEST_FILE_SPLIT = "test-student"  # the CS224N starter's name for its unlabelled test files


def builtin_tasks(pair_encoding: str = "separate", para_encoding: str | None = None,
                  sts_encoding: str | None = None, para_features: str = "concat",
                  sts_loss: str = "cosine_mse") -> list[TaskSpec]:
    """SST-5, Quora and STS as the CS224N project defines them; the settings choose their heads.

    The arguments are the training settings of the same names (and the model config of checkpoints
    saved before tasks were data): pair_encoding joint cross-encodes a pair and both reads it jointly and
    separately (Quora: the cross_concat head; STS: cosine_cross, the cosine head plus the joint read), para_features picks
    the separately encoded paraphrase features, sts_loss cosine_embedding is the seed's STS variant
    and cosent the CoSENT ranking loss (both for the separately encoded cosine head).
    """
    files = {t: {s: pattern.format(split=_TEST_FILE_SPLIT if s == "test" else s) for s in SPLITS}
             for t, pattern in CS224N_FILES.items()}
    para_enc, sts_enc = para_encoding or pair_encoding, sts_encoding or pair_encoding
    # both: the task's separate head with a joint read beside it
    para_head = {"joint": "cross", "both": "cross_concat"}.get(para_enc, para_features)
    sts_head = {"joint": "cross", "both": "cosine_cross"}.get(sts_enc, "cosine")
    return [
        TaskSpec("sst", "SST", "sentence", "classification", classes=5, label_names=SST_LABELS,
                 files=files["sst"], text_columns=("sentence",), label_column="sentiment", id_column="id",
                 head="linear", loss="ce", metrics=("accuracy",), main_metric="accuracy"),
        TaskSpec("para", "Paraphrase", "pair", "classification", classes=2,
                 label_names=("not duplicate", "duplicate"), files=files["para"],
                 text_columns=("sentence1", "sentence2"), label_column="is_duplicate", id_column="id",
                 head=para_head, loss="bce",
                 metrics=("accuracy",), main_metric="accuracy"),
        TaskSpec("sts", "STS", "pair", "regression", range=(0.0, 5.0), files=files["sts"],
                 text_columns=("sentence1", "sentence2"), label_column="similarity", id_column="id",
                 head=sts_head,
                 loss=sts_loss if sts_loss in ("cosine_embedding", "cosent") and sts_head == "cosine" else "mse",
                 metrics=("pearson", "spearman"), main_metric="pearson"),
    ]


def builtin_task(name: str) -> TaskSpec:
    """A built-in task with the default heads (for callers that name a task without a model)."""
    for spec in builtin_tasks():
        if spec.name == name:
            return spec
    raise TaskError(f"task={name!r} is not allowed; built-in tasks: {', '.join(BUILTIN_NAMES)}")


# ---- task files -----------------------------------------------------------------------------

def read_tasks_file(path) -> tuple[list[TaskSpec], bool]:
    """(the file's tasks, whether the built-in tasks stay). The file is YAML:

        builtin: true        # keep sst, para, sts beside these (false: only these)
        tasks:
          - name: mrpc
            ...              # TaskSpec's fields
    """
    from .io import read_document
    path = Path(path)
    doc = read_document(path, "tasks file", TaskError, always_yaml=True)
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not doc["tasks"]:
        raise TaskError(f"tasks file {path}: expected a YAML mapping with a non-empty list under tasks: "
                        "(and optionally builtin: true|false)")
    unknown = sorted(set(doc) - {"tasks", "builtin"})
    if unknown:
        raise TaskError(f"tasks file {path}: unknown key(s) {', '.join(map(str, unknown))}; "
                        "allowed keys: tasks, builtin")
    keep = doc.get("builtin", True)
    if not isinstance(keep, bool):
        raise TaskError(f"tasks file {path}: builtin={keep!r} is not allowed; allowed values: true, false")
    specs = [TaskSpec.from_dict(d, where=f"tasks file {path}, task {i + 1}: ") for i, d in enumerate(doc["tasks"])]
    return specs, keep


def check_unique(specs: list[TaskSpec], where: str = "") -> None:
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise TaskError(f"{where}task name {s.name!r} is defined twice; task names must be unique "
                            "(a task file that redefines a built-in task sets builtin: false)")
        seen.add(s.name)


def available_tasks(tasks_file=None, **builtin_settings) -> list[TaskSpec]:
    """The built-in tasks (unless the file drops them), then the file's, in that order."""
    specs = builtin_tasks(**builtin_settings)
    if tasks_file:
        own, keep = read_tasks_file(tasks_file)
        specs = (specs if keep else []) + own
        check_unique(specs, where=f"tasks file {tasks_file}: ")
    return specs


def select(specs: list[TaskSpec], names) -> list[TaskSpec]:
    """The named tasks, in the order they are defined; None: all of them."""
    if names is None:
        return list(specs)
    by_name = {s.name: s for s in specs}
    bad = [n for n in names if n not in by_name]
    if bad or not names or len(set(names)) != len(names):
        raise TaskError(f"setting tasks={list(names)!r} is not allowed; choose a non-empty subset of "
                        f"{', '.join(by_name)}")
    return [s for s in specs if s.name in names]


def specs_from_dicts(items: list[dict]) -> list[TaskSpec]:
    specs = [TaskSpec.from_dict(d) for d in items]
    check_unique(specs)
    return specs


def with_weight(spec: TaskSpec, weight: float) -> TaskSpec:
    return replace(spec, weight=weight)


# the model config of checkpoints saved before tasks were data; it describes the built-in trio
LEGACY_MODEL_FIELDS = ("pair_encoding", "para_encoding", "sts_encoding", "para_features", "sts_loss")


def specs_of_model_config(d: dict) -> list[TaskSpec]:
    """The task definitions a saved model config (mtbert.json's `model`) describes."""
    if d.get("tasks") is not None:
        return specs_from_dicts(d["tasks"])
    return builtin_tasks(**{k: d[k] for k in LEGACY_MODEL_FIELDS if d.get(k) is not None})
