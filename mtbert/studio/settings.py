"""The Train page's settings form, declared once per trainer setting: its section, label, help
and bounds, and the form's values under a preset. The form itself is built from TrainConfig, so a
new setting appears by itself (tests/test_runs.py refuses one without a label here)."""
from __future__ import annotations

from dataclasses import dataclass

SECTIONS = {
    "Model and tasks": ("name", "base_model", "mode", "freeze_word_embeddings", "tasks", "schedule",
                        "gradient_method", "pooling", "pair_encoding", "para_encoding", "sts_encoding",
                        "para_features", "sts_loss", "dropout", "max_length"),
    "Optimisation": ("epochs", "batch_size", "lr", "head_lr", "layer_lr_decay", "optimizer", "weight_decay",
                     "warmup_steps", "lr_decay", "grad_clip", "bucket", "sst_weight", "para_weight", "sts_weight",
                     "ema_decay"),
    "Budget": ("max_steps", "time_budget_s", "train_subset"),
    "Evaluation": ("eval_every", "eval_every_s", "full_eval_at_s", "eval_subset", "train_eval_subset",
                   "final_full_eval", "eval_batch_size", "calibrate_para"),
    "Machine": ("device", "bf16", "seed"),
}
DATA_SETTINGS = ("data_dir", "quora_train")  # set by the data picker, not the form
TASK_SETTINGS = ("tasks_file", "task_definitions")  # set by the tasks the page adds, not the form


@dataclass(frozen=True)
class Range:
    """The bounds TrainConfig enforces on a number (None: no bound there); the form's min and max
    and the "Allowed" line of its help come from here (tests/test_runs.py checks they agree)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        lo = f"{self.low:g} {'<' if self.low_open else '≤'} " if self.low is not None else ""
        return f"{lo}value {'<' if self.high_open else '≤'} {self.high:g}"


@dataclass(frozen=True)
class About:
    label: str  # what the form shows; the config key is in the help
    help: str | None = None
    range: Range | None = None


AT_LEAST_1, AT_LEAST_0, ABOVE_0 = Range(1), Range(0), Range(0, low_open=True)
# every form setting's label, description and bounds; a TrainConfig field missing here would be
# labelled with its bare config key, which tests/test_runs.py refuses
ABOUT = {
    "name": About("Run name", "the run folder is named after the start time and this"),
    "base_model": About("Base model", "minilm-l6 (the packaged all-MiniLM-L6-v2), a local BERT folder, or a Hub id"),
    "mode": About("Training mode", "finetune: train the encoder too; frozen: train the heads only (the seed's "
                                   "first mode)"),
    "freeze_word_embeddings": About("Freeze word embeddings", "keep the word-embedding table as it is (12 M of "
                                    "MiniLM's 22.7 M weights): cheaper steps and smaller PCGrad buffers"),
    "tasks": About("Tasks", "sst: SST-5 sentiment; para: Quora paraphrase; sts: STS similarity"),
    "schedule": About("Task schedule", "parallel: one batch of every task per step; round-robin: a pass of one "
                                       "task, then the next"),
    "gradient_method": About("Gradient method", "sum: add the task losses; pcgrad: project away conflicting "
                                                "task gradients"),
    "pooling": About("Sentence pooling", "cls: the [CLS] token's vector; mean: the mean of the token vectors"),
    "pair_encoding": About("Pair encoding", "separate: encode each sentence alone (the seed); joint: "
                                            "[CLS] a [SEP] b [SEP]"),
    "para_encoding": About("Quora pair encoding", "empty: as Pair encoding; else this encoding for Quora only"),
    "sts_encoding": About("STS pair encoding", "empty: as Pair encoding; else this encoding for STS only"),
    "para_features": About("Paraphrase head features", "concat: [u; v] (the seed); concat_diff_prod: "
                                                       "[u; v; |u−v|; u·v]"),
    "sts_loss": About("STS loss", "cosine_mse: squared error of the predicted 0–5 score; cosine_embedding: "
                                  "the seed's cosine embedding loss on ±1 targets (separate pair encoding only)"),
    "dropout": About("Dropout", "the encoder's (hidden and attention) and the task heads'", Range(0, 1, high_open=True)),
    "max_length": About("Max tokens per input", "longer inputs are cut to this many tokens", Range(8, 512)),
    "epochs": About("Epochs", None, AT_LEAST_1),
    "batch_size": About("Batch size per task", "examples of each task in one batch", AT_LEAST_1),
    "lr": About("Learning rate (top layer)", "of the encoder's top layer (the layers below get less with "
                                             "Layer-wise lr decay) and of the heads unless Head learning rate "
                                             "is set", ABOVE_0),
    "head_lr": About("Head learning rate", "empty: the same as Learning rate", ABOVE_0),
    "layer_lr_decay": About("Layer-wise lr decay", "1: one learning rate for the whole encoder; below 1: each "
                                                   "layer down gets this factor of the one above's (the top layer "
                                                   "gets Learning rate)", Range(0, 1, low_open=True)),
    "optimizer": About("Optimizer"),
    "weight_decay": About("Weight decay", None, AT_LEAST_0),
    "warmup_steps": About("Warm-up steps", "steps over which the learning rate rises linearly to its value",
                          AT_LEAST_0),
    "lr_decay": About("Learning-rate decay", "after the warm-up: constant (none), or down to 0 at the last step "
                                             "(or the end of the time budget), linearly or along a cosine"),
    "grad_clip": About("Gradient clipping (max norm)", "empty: no clipping", ABOVE_0),
    "bucket": About("Length bucketing", "batches of similar lengths: less padding, faster steps"),
    "sst_weight": About("SST loss weight", "the SST loss's weight in the sum (the logged loss is unweighted)",
                        ABOVE_0),
    "para_weight": About("Quora loss weight", "the Quora loss's weight in the sum (the logged loss is "
                                              "unweighted)", ABOVE_0),
    "sts_weight": About("STS loss weight", "the STS loss's weight in the sum (the logged loss is unweighted)",
                        ABOVE_0),
    "ema_decay": About("Weight averaging (EMA decay)", "empty: evaluate the weights as trained; else evaluate "
                       "and keep as best a moving average of them (e.g. 0.999; it warms up, averaging about the "
                       "last tenth of the steps so far until that is 1/(1-decay))", Range(0, 1, True, True)),
    "max_steps": About("Max steps", "empty: no limit; stops early when reached", AT_LEAST_1),
    "time_budget_s": About("Time budget (seconds)", "empty: no limit; stops after this many seconds of "
                                                    "training", ABOVE_0),
    "train_subset": About("Training examples per task", "empty: all; else train on this many examples per task",
                          AT_LEAST_1),
    "eval_every": About("Evaluate every (steps)", "empty: evaluate on dev at every epoch end only", AT_LEAST_1),
    "eval_every_s": About("Evaluate every (seconds)", "empty: by steps and epochs only; else also after every "
                                                      "this many seconds of training", ABOVE_0),
    "full_eval_at_s": About("Full-dev evaluations at (seconds)", "comma-separated seconds of training time at "
                                                                 "which to evaluate on the whole dev set",
                            ABOVE_0),
    "eval_subset": About("Dev examples per task", "empty: the whole dev set; else this many examples per task",
                         AT_LEAST_1),
    "train_eval_subset": About("Train-row examples per task", "train examples per task for the results' Train "
                                                              "row; empty: all", AT_LEAST_1),
    "final_full_eval": About("Final full-dev evaluation", "with a dev subset: evaluate the best checkpoint on "
                                                          "the whole dev set at the end"),
    "eval_batch_size": About("Evaluation batch size", None, AT_LEAST_1),
    "calibrate_para": About("Calibrate the Quora threshold", "fit the Quora duplicate threshold on the dev eval "
                            "subset (for train data whose duplicate rate differs from dev's, like the stand-in "
                            "Quora set)"),
    "device": About("Device", "auto: CUDA when there is a GPU, else the CPU"),
    "bf16": About("bfloat16 autocast", "on CUDA only"),
    "seed": About("Random seed"),
}


# optional settings whose values are those of another setting (None: follow that setting)
SAME_CHOICES_AS = {"para_encoding": "pair_encoding", "sts_encoding": "pair_encoding"}


@dataclass
class Setting:
    name: str
    kind: str  # choice | tasks | bool | int | float | list | text
    default: object
    optional: bool = False  # None (an empty field) is allowed
    choices: tuple = ()
    section: str = "Other"
    label: str = ""
    description: str | None = None
    range: Range | None = None

    @property
    def help(self) -> str:
        """The widget's tooltip: what the setting does, its config key and the values allowed."""
        allowed = (("any of " if self.kind == "tasks" else "") + ", ".join(f"`{c}`" for c in self.choices)
                   if self.choices else
                   str(self.range) + (" each" if self.kind == "list" else "") if self.range else None)
        if allowed and self.optional:
            allowed += ", or (none)" if self.kind == "choice" else ", or empty"
        key = f"Config key: `{self.name}`" + (f" · Allowed: {allowed}" if allowed else "")
        return f"{self.description}\n\n{key}" if self.description else key

    def to_widget(self, value):
        """A config value as its form widget holds it (lists and empty text as strings)."""
        if self.kind == "list":
            return ", ".join(str(v) for v in value or [])
        if self.kind == "text" and value is None:
            return ""
        return value

    def from_widget(self, value):
        """The config value for what the form holds: empty optional text is None, a list is split
        on commas (numbers where they parse)."""
        if self.kind == "list":
            return [_number_or_text(v.strip()) for v in str(value or "").split(",") if v.strip()]
        if self.kind == "text":
            value = str(value or "").strip()
            return None if self.optional and not value else value
        return value


def _number_or_text(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def settings_spec() -> list[Setting]:
    """One entry per TrainConfig field, in form order: a new trainer setting appears in the form
    by itself (in the "Other" section until it is given a place)."""
    from dataclasses import MISSING, fields

    from ..config import CHOICES, TASKS, TrainConfig

    where = {name: sec for sec, names in SECTIONS.items() for name in names}
    out = []
    for f in fields(TrainConfig):
        if f.name in DATA_SETTINGS + TASK_SETTINGS:
            continue
        default = f.default_factory() if f.default is MISSING else f.default
        if f.name == "tasks" and default is None:  # None: every defined task, i.e. the built-in ones here
            default = list(TASKS)
        t = str(f.type)
        choices = TASKS if f.name == "tasks" else CHOICES.get(f.name) or CHOICES.get(SAME_CHOICES_AS.get(f.name), ())
        kind = ("tasks" if f.name == "tasks" else "choice" if choices else
                "bool" if t.startswith("bool") else "int" if t.startswith("int") else
                "float" if t.startswith("float") else "list" if t.startswith("list") else "text")
        about = ABOUT.get(f.name, About(f.name))  # undeclared: the bare key, which the tests refuse
        out.append(Setting(f.name, kind, default, "None" in t, tuple(choices), where.get(f.name, "Other"),
                           about.label, about.help, about.range))
    order = list(SECTIONS) + ["Other"]
    return sorted(out, key=lambda s: order.index(s.section))  # stable: field order within a section


def preset_values(preset: str | None) -> dict:
    """Every form setting's value under a preset (None: the defaults)."""
    from ..config import preset_settings

    values = {s.name: s.default for s in settings_spec()}
    values.update({k: v for k, v in (preset_settings(preset) if preset else {}).items() if k not in DATA_SETTINGS})
    return values
