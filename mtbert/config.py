"""Training settings as plain data: the seed's defaults, validation that names the setting, presets."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .tasks import BUILTIN_NAMES, TaskSpec, available_tasks, select, specs_from_dicts, with_weight

TASKS = BUILTIN_NAMES  # the built-in tasks; a task file adds others (mtbert/tasks.py)
MODEL_CHOICES = {
    "pooling": ("cls", "mean"),
    "pair_encoding": ("separate", "joint"),
    "para_features": ("concat", "concat_diff_prod"),
    "sts_loss": ("cosine_mse", "cosine_embedding"),
}
CHOICES = {
    "mode": ("finetune", "frozen"),
    "schedule": ("parallel", "round-robin"),
    "gradient_method": ("sum", "pcgrad"),
    "optimizer": ("adam", "adamw", "sgd"),
    "lr_decay": ("none", "linear", "cosine"),
    "device": ("auto", "cpu", "cuda"),
    **MODEL_CHOICES,
}


@dataclass
class TrainConfig:
    name: str = "run"
    base_model: str = "minilm-l6"  # minilm-l6 | a folder | a Hub repo id (bert-base-uncased)
    mode: str = "finetune"
    freeze_word_embeddings: bool = False  # 12 M of MiniLM's 22.7 M weights: cheaper steps, PCGrad buffers
    tasks: list | None = None  # names of the tasks to train; None: every task defined (built-in and tasks_file's)
    tasks_file: str | None = None  # a YAML file of task definitions, added to the built-in tasks or replacing them
    # the definitions of the tasks trained, as the run started: config.json keeps them, so a run resumes
    # (and its checkpoints load) without the task file; None: from the built-in tasks and tasks_file
    task_definitions: list | None = None
    schedule: str = "parallel"
    gradient_method: str = "sum"
    # model
    pooling: str = "cls"
    pair_encoding: str = "separate"
    para_encoding: str | None = None  # per-task override of pair_encoding (e.g. joint for Quora only)
    sts_encoding: str | None = None
    para_features: str = "concat"
    sts_loss: str = "cosine_mse"
    dropout: float = 0.1
    # each task's loss is scaled by its weight before the gradients are formed (sum and PCGrad alike)
    sst_weight: float = 1.0
    para_weight: float = 1.0
    sts_weight: float = 1.0
    max_length: int = 128
    # optimisation (the seed: Adam, lr 1e-5, batch 8, 10 epochs)
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-5
    head_lr: float | None = None  # None: same as lr
    layer_lr_decay: float = 1.0  # encoder layer l of L gets lr * decay^(L-1-l), the embeddings lr * decay^L
    # evaluate (and keep as best) an exponential moving average of the weights; None: the weights themselves
    ema_decay: float | None = None
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "none"
    grad_clip: float | None = 1.0
    bucket: bool = False  # length bucketing: batches of similar lengths, less padding
    # budget
    max_steps: int | None = None
    time_budget_s: float | None = None
    train_subset: int | None = None  # examples per task, for quick runs
    # evaluation
    eval_every: int | None = None  # steps; dev evaluation also runs at every epoch end
    eval_every_s: float | None = None  # seconds of training time between dev evaluations
    full_eval_at_s: list = field(default_factory=list)  # training-time marks for a full-dev evaluation
    eval_subset: int | None = None  # dev examples per task (None: all)
    train_eval_subset: int | None = 1000  # train examples per task for the final Train row
    final_full_eval: bool = True  # with eval_subset: evaluate the best checkpoint on the whole dev set at the end
    eval_batch_size: int = 64
    # fit the Quora decision threshold on the dev eval subset at each evaluation (see docs/results.md)
    calibrate_para: bool = False
    # data
    data_dir: str | None = None  # None: the shipped sample (data/sample); data/cs224n: `mtbert data fetch`'s
    quora_train: str | None = None  # another Quora train file instead of data_dir's quora-train.csv
    # machine
    device: str = "auto"
    bf16: bool = True  # autocast on CUDA only
    seed: int = 11711

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"setting {name}={getattr(self, name)!r} is not allowed; "
                                 f"allowed values: {', '.join(allowed)}")
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        positive = {"epochs": 1, "batch_size": 1, "max_length": 8, "eval_batch_size": 1}
        for name, lo in positive.items():
            if not isinstance(getattr(self, name), int) or getattr(self, name) < lo:
                raise ValueError(f"setting {name}={getattr(self, name)!r} is not allowed; "
                                 f"allowed values: integers >= {lo}")
        if self.max_length > 512:
            raise ValueError(f"setting max_length={self.max_length} is not allowed; allowed values: 8..512")
        for name in ("max_steps", "train_subset", "eval_every", "eval_subset", "train_eval_subset"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"setting {name}={v!r} is not allowed; allowed values: none or an integer >= 1")
        for name in ("para_encoding", "sts_encoding"):
            if getattr(self, name) not in (None, *CHOICES["pair_encoding"]):
                raise ValueError(f"setting {name}={getattr(self, name)!r} is not allowed; allowed values: "
                                 f"{', '.join(CHOICES['pair_encoding'])} or none (= pair_encoding)")
        if self.full_eval_at_s is None:
            self.full_eval_at_s = []
        if isinstance(self.full_eval_at_s, (int, float)):
            self.full_eval_at_s = [self.full_eval_at_s]
        if isinstance(self.full_eval_at_s, str):
            self.full_eval_at_s = [float(x) for x in self.full_eval_at_s.split(",") if x.strip()]
        if any(not isinstance(x, (int, float)) or x <= 0 for x in self.full_eval_at_s):
            raise ValueError(f"setting full_eval_at_s={self.full_eval_at_s!r} is not allowed; "
                             "allowed values: a list of positive numbers of seconds")
        self.full_eval_at_s = sorted(float(x) for x in self.full_eval_at_s)
        for name in ("lr", "head_lr", "time_budget_s", "eval_every_s"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"setting {name}={v!r} is not allowed; allowed values: a number > 0"
                                 + (" or none" if name != "lr" else ""))
        for name in ("sst_weight", "para_weight", "sts_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"setting {name}={v!r} is not allowed; allowed values: a number > 0 "
                                 "(leave the task out of tasks to not train it)")
        if not (isinstance(self.layer_lr_decay, (int, float)) and 0.0 < self.layer_lr_decay <= 1.0):
            raise ValueError(f"setting layer_lr_decay={self.layer_lr_decay!r} is not allowed; "
                             "allowed values: 0 < layer_lr_decay <= 1 (1: one lr for the whole encoder)")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float))
                                               and 0.0 < self.ema_decay < 1.0):
            raise ValueError(f"setting ema_decay={self.ema_decay!r} is not allowed; "
                             "allowed values: none (no average) or 0 < ema_decay < 1 (e.g. 0.999)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"setting dropout={self.dropout} is not allowed; allowed values: 0 <= dropout < 1")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("settings weight_decay and warmup_steps must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"setting grad_clip={self.grad_clip} is not allowed; allowed values: a number > 0 or none")
        self.tasks = [s.name for s in self.task_specs()]  # checked, in the order of definition

    def defined_tasks(self) -> list[TaskSpec]:
        """Every task this config can train: its saved definitions, else the built-in tasks (their heads
        set by the settings below) and the task file's."""
        if self.task_definitions is not None:
            return specs_from_dicts(self.task_definitions)
        return available_tasks(self.tasks_file, pair_encoding=self.pair_encoding, para_encoding=self.para_encoding,
                               sts_encoding=self.sts_encoding, para_features=self.para_features,
                               sts_loss=self.sts_loss)

    def task_specs(self) -> list[TaskSpec]:
        """The tasks trained, each with its loss weight (a built-in task's from <name>_weight)."""
        return [with_weight(s, s.weight * getattr(self, f"{s.name}_weight", 1.0)) if s.name in TASKS else s
                for s in select(self.defined_tasks(), self.tasks)]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        return cls.from_dict({**read_config_file(path), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"config file {path}: cannot be read ({e.strerror})") from e
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            d = yaml.safe_load(text)
        else:
            d = json.loads(text)
    except Exception as e:
        raise ValueError(f"config file {path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'} ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"config file {path}: expected a mapping of settings, got {type(d).__name__}")
    return d


CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
# the Train page's presets: label -> a config file in configs/, the same file the CLI takes with --config
PRESET_FILES = {
    "quick CPU demo": "quick-demo.yaml",
    "seed (CS224N report)": "seed.yaml",
    "recipe: 60 minutes on a CPU, full data": "minilm-cpu-60min.yaml",
}
PRESETS = tuple(PRESET_FILES)


def preset_settings(label: str) -> dict:
    """The settings of a preset, read from its config file (checked like any config file)."""
    if label not in PRESET_FILES:
        raise ValueError(f"preset={label!r} is not allowed; allowed values: {', '.join(PRESET_FILES)}")
    path = CONFIGS_DIR / PRESET_FILES[label]
    settings = read_config_file(path)
    TrainConfig.from_dict(settings)  # a broken preset file fails here, naming the setting
    return settings
