"""Training settings as plain data: each setting declared once, beside its default, with what every
reader of it needs (its section and label in the Train form, its help, its allowed values); the
validation, the `train` CLI flags, the resume check, the Train form and the model card's settings
table are all derived from those declarations. Also the presets."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .io import read_document
from .lora import TARGETS as LORA_TARGETS, parse_targets
from .methods import METHODS, method_settings
from .tasks import (BUILTIN_NAMES, PAIR_ENCODINGS, TaskSpec, available_tasks, select, specs_from_dicts,
                    with_weight)

TASKS = BUILTIN_NAMES  # the built-in tasks; a task file adds others (mtbert/tasks.py)


@dataclass(frozen=True)
class Range:
    """The bounds of a number setting (None: no bound there)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False

    def __contains__(self, v) -> bool:
        return ((self.low is None or v > self.low or (v == self.low and not self.low_open))
                and (self.high is None or v < self.high or (v == self.high and not self.high_open)))

    def describe(self, name: str, kind: str) -> str:
        """In words: "a number > 0", "an integer >= 1", "0 < layer_lr_decay <= 1",
        "an integer, 8 <= max_length <= 512"."""
        if self.high is None:
            noun = {"int": "an integer", "list": "a list of numbers"}.get(kind, "a number")
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        lo = f"{self.low:g} {'<' if self.low_open else '<='} " if self.low is not None else ""
        hi = f" {'<' if self.high_open else '<='} {self.high:g}"
        return ("an integer, " if kind == "int" else "") + f"{lo}{name}{hi}"


AT_LEAST_1, AT_LEAST_0, ABOVE_0 = Range(1), Range(0), Range(0, low_open=True)
PRECISIONS = ("fp32", "int8", "bf16")  # inference arithmetic of the encoder (mtbert/quantize.py)
SAMPLED = ("proportional", "temperature", "annealed")  # the schedules that draw one task per step


def _positive(text: str, integer: bool):
    """text as an integer >= 1 or a finite number > 0; None when it is not one."""
    if integer:
        return int(text) if text.isdigit() and int(text) >= 1 else None
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) and v > 0 else None


def setting(default, *, section: str, label: str, help: str, choices: tuple = (), range: Range | None = None,
            card: bool = True, resume: bool = False):
    """A TrainConfig field with its declaration: the Train form's section and label, the help the form
    and `--help` show, the values allowed (choices, or a number range; None is allowed when the field's
    type says `| None`), whether the model card lists it, and whether `--resume` may change it."""
    meta = dict(section=section, label=label, help=help, choices=tuple(choices), range=range, card=card,
                resume=resume)
    if isinstance(default, list):  # a mutable default: each config gets its own copy
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


MODEL, METHOD, OPTIM, BUDGET, EVAL, DATA, MACHINE = ("Model and tasks", "Multitask method", "Optimisation", "Budget",
                                                     "Evaluation", "Data", "Machine")


@dataclass
class TrainConfig:
    name: str = setting("run", section=MODEL, label="Run name", card=False,
                        help="the run folder is named after the start time and this")
    base_model: str = setting("minilm-l6", section=MODEL, label="Base model", card=False,  # the card has its own line
                              help="minilm-l6 (the packaged all-MiniLM-L6-v2), a local BERT folder, or a Hub id "
                                   "(e.g. bert-base-uncased)")
    mode: str = setting("finetune", section=MODEL, label="Training mode", choices=("finetune", "frozen", "lora"),
                        help="finetune: train the encoder too; frozen: train the heads only (the seed's first mode); "
                             "lora: train low-rank adapters of the frozen encoder and the heads (docs/lora.md)")
    # LoRA (mode: lora): h = W x + (alpha/r) B A x on the chosen Linear layers of every encoder layer
    lora_rank: int = setting(8, section=MODEL, label="LoRA rank r", range=AT_LEAST_1,
                             help="mode lora: the rank r of each adapter (A is r x in, B is out x r)")
    lora_alpha: float = setting(16.0, section=MODEL, label="LoRA alpha", range=ABOVE_0,
                                help="mode lora: the adapters' update is scaled by alpha / r")
    lora_targets: list = setting(list(LORA_TARGETS), section=MODEL, label="LoRA target layers",
                                 help="mode lora: the Linear layers of each encoder layer that get adapters, "
                                      f"comma-separated; allowed: {', '.join(LORA_TARGETS)}")
    lora_dropout: float = setting(0.1, section=MODEL, label="LoRA dropout", range=Range(0, 1, high_open=True),
                                  help="mode lora: dropout on the adapters' input")
    lora_per_task: bool = setting(False, section=MODEL, label="LoRA adapters per task",
                                  help="mode lora: one set of adapters for each task (each task's inputs are encoded "
                                       "with its own; K tasks: K times the adapters) instead of one set shared by "
                                       "all; such a checkpoint cannot be exported with --merge")
    lora_task_ranks: list = setting([], section=MODEL, label="LoRA rank by task",
                                    help="mode lora with lora_per_task: a rank of their own for some tasks' adapters, "
                                         "as task=rank (e.g. sts=32); alpha scales with the rank, so alpha / r stays "
                                         "lora_alpha / lora_rank")
    lora_task_members: list = setting([], section=MODEL, label="Ensemble members by task",
                                      help="mode lora with lora_per_task: K members for some tasks, as task=K (e.g. "
                                           "sts=3): K sets of adapters and heads, each trained on the task's loss "
                                           "alone; the task predicts their mean (an ensemble in one checkpoint, at "
                                           "K times that task's cost)")
    freeze_word_embeddings: bool = setting(False, section=MODEL, label="Freeze word embeddings",
                                           help="keep the word-embedding table as it is (12 M of MiniLM's 22.7 M "
                                                "weights): cheaper steps and smaller PCGrad buffers")
    tasks: list | None = setting(None, section=MODEL, label="Tasks",
                                 help="the names of the tasks to train (sst: SST-5 sentiment, para: Quora paraphrase, "
                                      "sts: STS similarity, and the task file's); unset: every task defined")
    # the card shows the tasks' definitions; the file's path would name the author's disk
    tasks_file: str | None = setting(None, section=MODEL, label="Task file", card=False,
                                     help="a YAML file of task definitions, added to the built-in tasks or "
                                          "replacing them (docs/tasks.md)")
    task_definitions: list | None = setting(None, section=MODEL, label="Task definitions", card=False,
                                            help="the definitions of the tasks trained, as the run started (the "
                                                 "trainer writes them into config.json, so a run resumes and its "
                                                 "checkpoints load without the task file); none: from the "
                                                 "built-in tasks and the task file")
    schedule: str = setting("parallel", section=METHOD, label="Task schedule",
                            choices=("parallel", "round-robin", *SAMPLED),
                            help="parallel: one batch of every task per step; round-robin: a pass of one task, "
                                 "then the next; proportional, temperature, annealed: one task per step, drawn "
                                 "with probability proportional to its number of batches N, to N^(1/τ), or to "
                                 "N^α with α annealed from 1 to 0.2 over the epochs (Stickland and Murray 2019)")
    sampling_temperature: float = setting(2.0, section=METHOD, label="Sampling temperature τ", range=AT_LEAST_1,
                                          help="the temperature schedule's τ: a task is drawn with probability "
                                               "proportional to N^(1/τ); 1 is proportional, larger is closer to "
                                               "uniform")
    sampling_weights: list = setting([], section=METHOD, label="Sampling weight by task",
                                     help="sampled schedules (proportional, temperature, annealed): a factor on some "
                                          "tasks' draw weight, as task=w (e.g. sst=0.5: SST drawn half as often, "
                                          "relative to the others, as the schedule alone would draw it); the "
                                          "probabilities are renormalised, tasks not named keep 1")
    gradient_method: str = setting("sum", section=METHOD, label="Gradient method", choices=tuple(METHODS),
                                   help="; ".join(f"{n}: {cls.summary}" for n, cls in METHODS.items())
                                   + " (docs/methods.md)")
    # each method's hyperparameters (<method>_<key>), declared on the method's class
    for _name, (_method, _key, _h) in method_settings().items():  # noqa: B007 (class namespace)
        __annotations__[_name] = "int" if _h.integer else "float"
        locals()[_name] = setting(_h.default, section=METHOD, label=f"{_method}: {_h.label}", help=_h.help,
                                  range=Range(_h.low, _h.high, _h.low_open, _h.high_open))
        del _name, _method, _key, _h
    method_lr: float = setting(0.025, section=METHOD, label="Learning rate of learned task weights", range=ABOVE_0,
                               help="the optimizer's rate for the task weights a method learns (uw's "
                                    "log-variances, gradnorm's weights), on the same warm-up and decay")
    telemetry_every: int = setting(1, section=METHOD, label="Gradient telemetry every (steps)", range=AT_LEAST_1,
                                   card=False,
                                   help="record each task's gradient norm, the gradient cosines and conflicts every "
                                        "this many steps; in between, sum and the loss weightings (gradnorm "
                                        "excepted) run one backward of the weighted loss instead of one per task "
                                        "(the gradient methods need every task's gradient at every step)")
    # model
    pooling: str = setting("cls", section=MODEL, label="Sentence pooling", choices=("cls", "mean"),
                           help="cls: the [CLS] token's vector; mean: the mean of the token vectors")
    pair_encoding: str = setting("separate", section=MODEL, label="Pair encoding", choices=PAIR_ENCODINGS,
                                 help="separate: encode each sentence alone (the seed); joint: [CLS] a [SEP] b [SEP]; "
                                      "both: the two reads (Quora: their features into one linear head; STS: the "
                                      "cosine head plus a linear read of the joint encoding)")
    para_encoding: str | None = setting(None, section=MODEL, label="Quora pair encoding", choices=PAIR_ENCODINGS,
                                        help="none: as Pair encoding; else this encoding for Quora only")
    sts_encoding: str | None = setting(None, section=MODEL, label="STS pair encoding", choices=PAIR_ENCODINGS,
                                       help="none: as Pair encoding; else this encoding for STS only")
    symmetric_pairs: list = setting([], section=MODEL, label="Order-free pair tasks",
                                    help="pair tasks whose answer does not depend on the order of the two sentences "
                                         "(e.g. para: a duplicate of b is b's duplicate of a): each training pair is "
                                         "read in a random order, and the model answers with the mean of its logits "
                                         "over both orders (a joint read encodes the pair twice) (docs/quality.md)")
    para_features: str = setting("concat", section=MODEL, label="Paraphrase head features",
                                 choices=("concat", "concat_diff_prod"),
                                 help="concat: [u; v] (the seed); concat_diff_prod: [u; v; |u-v|; u*v]")
    sts_loss: str = setting("cosine_mse", section=MODEL, label="STS loss",
                            choices=("cosine_mse", "cosine_embedding", "cosent"),
                            help="cosine_mse: squared error of the predicted 0-5 score; cosine_embedding: the seed's "
                                 "cosine embedding loss on +-1 targets; cosent: CoSENT (Su 2022), a ranking loss on "
                                 "the cosines of the batch's pairs (the last two: separate pair encoding only; "
                                 "docs/quality.md)")
    cosent_scale: float = setting(20.0, section=MODEL, label="CoSENT scale λ", range=ABOVE_0,
                                  help="CoSENT's λ: log(1 + Σ exp(λ (cos_j - cos_i))) over the pairs with "
                                       "y_i > y_j (Su 2022 uses 20)")
    sst_phrases_file: str | None = setting(None, section=MODEL, label="SST trees file (phrase training)", card=False,
                                           help="none: SST trains on whole sentences; else the treebank's PTB trees "
                                                "of the training sentences (sst-trees/train.txt), whose labelled "
                                                "phrases fill part of each SST batch (docs/quality.md)")
    sst_phrase_ratio: float = setting(0.0, section=MODEL, label="SST phrase share of a batch",
                                      range=Range(0, 1, high_open=True),
                                      help="the fraction of each SST batch given to treebank phrases "
                                           "(round(ratio x batch size), at least 1); used with an SST trees file")
    sst_phrase_min_words: int = setting(2, section=MODEL, label="SST phrase minimum words", range=AT_LEAST_1,
                                        help="phrases shorter than this many words (tokens) are left out")
    dropout: float = setting(0.1, section=MODEL, label="Dropout", range=Range(0, 1, high_open=True),
                             help="the encoder's (hidden and attention) and the task heads'")
    rdrop_alpha: float = setting(0.0, section=MODEL, label="R-Drop α", range=AT_LEAST_0,
                                 help="0: off; else R-Drop (Liang et al. 2021): each batch goes through the model "
                                      "twice with dropout, and the loss is the mean of the two task losses plus α "
                                      "times the symmetric KL of the two predicted distributions (the squared "
                                      "difference of the two scores for a regression task); twice the compute "
                                      "per step (docs/quality.md)")
    read_loss_weight: float = setting(0.0, section=MODEL, label="Each read's own loss (pair read both ways)",
                                      range=AT_LEAST_0,
                                      help="0: off; else a pair read both ways (the cross_concat head) adds this "
                                           "weight x the mean loss of each read's own logits (the joint read's "
                                           "and the separate read's, each with the head's bias) to the loss of "
                                           "their sum, so that neither read leans on the other; other heads ignore it "
                                           "(docs/quality.md)")
    # each task's loss is scaled by its weight before the gradients are formed (sum and PCGrad alike)
    sst_weight: float = setting(1.0, section=OPTIM, label="SST loss weight", range=ABOVE_0,
                                help="the SST loss's weight in the sum (the logged loss is unweighted; leave sst "
                                     "out of Tasks to not train it)")
    para_weight: float = setting(1.0, section=OPTIM, label="Quora loss weight", range=ABOVE_0,
                                 help="the Quora loss's weight in the sum (the logged loss is unweighted; leave "
                                      "para out of Tasks to not train it)")
    sts_weight: float = setting(1.0, section=OPTIM, label="STS loss weight", range=ABOVE_0,
                                help="the STS loss's weight in the sum (the logged loss is unweighted; leave sts "
                                     "out of Tasks to not train it)")
    max_length: int = setting(128, section=MODEL, label="Max tokens per input", range=Range(8, 512),
                              help="longer inputs are cut to this many tokens")
    # optimisation (the seed: Adam, lr 1e-5, batch 8, 10 epochs); a resumed run may train for longer
    epochs: int = setting(10, section=OPTIM, label="Epochs", range=AT_LEAST_1, resume=True,
                          help="passes over the training data (a step or time budget may end the run first)")
    batch_size: int = setting(8, section=OPTIM, label="Batch size per task", range=AT_LEAST_1,
                              help="examples of each task in one batch")
    lr: float = setting(1e-5, section=OPTIM, label="Learning rate (top layer)", range=ABOVE_0,
                        help="of the encoder's top layer (the layers below get less with Layer-wise lr decay) "
                             "and of the heads unless Head learning rate is set")
    head_lr: float | None = setting(None, section=OPTIM, label="Head learning rate", range=ABOVE_0,
                                    help="none: the same as Learning rate")
    layer_lr_decay: float = setting(1.0, section=OPTIM, label="Layer-wise lr decay", range=Range(0, 1, low_open=True),
                                    help="1: one learning rate for the whole encoder; below 1: each layer down gets "
                                         "this factor of the one above's (the top layer gets Learning rate, the "
                                         "embeddings one factor less than the bottom layer)")
    ema_decay: float | None = setting(None, section=OPTIM, label="Weight averaging (EMA decay)",
                                      range=Range(0, 1, low_open=True, high_open=True),
                                      help="none: evaluate the weights as trained; else evaluate and keep as best a "
                                           "moving average of them (e.g. 0.999; it warms up, averaging about the "
                                           "last tenth of the steps so far until that is 1/(1-decay))")
    optimizer: str = setting("adam", section=OPTIM, label="Optimizer", choices=("adam", "adamw", "sgd"),
                             help="adam (the seed's), adamw (Adam with decoupled weight decay) or plain sgd")
    weight_decay: float = setting(0.0, section=OPTIM, label="Weight decay", range=AT_LEAST_0,
                                  help="the optimizer's weight decay (decoupled with adamw)")
    warmup_steps: int = setting(0, section=OPTIM, label="Warm-up steps", range=AT_LEAST_0,
                                help="steps over which the learning rate rises linearly to its value")
    lr_decay: str = setting("none", section=OPTIM, label="Learning-rate decay", choices=("none", "linear", "cosine"),
                            help="after the warm-up: constant (none), or down to 0 at the last step (or the end of "
                                 "the time budget), linearly or along a cosine")
    grad_clip: float | None = setting(1.0, section=OPTIM, label="Gradient clipping (max norm)", range=ABOVE_0,
                                      help="none: no clipping")
    bucket: bool = setting(False, section=OPTIM, label="Length bucketing", card=False,
                           help="batches of similar lengths: less padding, faster steps")
    # budget: what a resumed run may extend
    max_steps: int | None = setting(None, section=BUDGET, label="Max steps", range=AT_LEAST_1, resume=True,
                                    help="none: no limit; stops early when reached")
    time_budget_s: float | None = setting(None, section=BUDGET, label="Time budget (seconds)", range=ABOVE_0,
                                          resume=True,
                                          help="none: no limit; stops after this many seconds of training")
    train_subset: int | None = setting(None, section=BUDGET, label="Training examples per task", range=AT_LEAST_1,
                                       help="none: all; else train on this many examples per task (quick runs)")
    # evaluation: how a run is watched, not what it trains, so the card leaves it out
    eval_every: int | None = setting(None, section=EVAL, label="Evaluate every (steps)", range=AT_LEAST_1,
                                     card=False, resume=True,
                                     help="none: evaluate on dev at every epoch end only; else also every this "
                                          "many steps")
    eval_every_s: float | None = setting(None, section=EVAL, label="Evaluate every (seconds)", range=ABOVE_0,
                                         card=False,
                                         help="none: by steps and epochs only; else also after every this many "
                                              "seconds of training")
    full_eval_at_s: list = setting([], section=EVAL, label="Full-dev evaluations at (seconds)", range=ABOVE_0,
                                   card=False,
                                   help="comma-separated seconds of training time at which to evaluate on the "
                                        "whole dev set")
    eval_subset: int | None = setting(None, section=EVAL, label="Dev examples per task", range=AT_LEAST_1,
                                      card=False, help="none: the whole dev set; else this many examples per task")
    train_eval_subset: int | None = setting(1000, section=EVAL, label="Train-row examples per task",
                                            range=AT_LEAST_1, card=False,
                                            help="train examples per task for the results' Train row; none: all")
    final_full_eval: bool = setting(True, section=EVAL, label="Final full-dev evaluation", card=False,
                                    help="with a dev subset: evaluate the best checkpoint on the whole dev set "
                                         "at the end")
    eval_batch_size: int = setting(64, section=EVAL, label="Evaluation batch size", range=AT_LEAST_1, card=False,
                                   help="examples per batch when evaluating")
    eval_precision: str = setting("fp32", section=EVAL, label="Evaluation precision", choices=PRECISIONS, card=False,
                                  help="the encoder's arithmetic when evaluating: fp32 (exact), bf16 (several times "
                                       "faster on CPUs with AMX or AVX-512 BF16, metrics within about 0.001) or "
                                       "int8 (dynamic quantization, CPU only); docs/benchmarks.md")
    calibrate_para: bool = setting(False, section=EVAL, label="Calibrate the Quora threshold", card=False,
                                   help="fit the Quora duplicate threshold on the dev eval subset at each "
                                        "evaluation (for train data whose duplicate rate differs from dev's, like "
                                        "the stand-in Quora set; docs/results.md)")
    # data: paths name the author's disk, so the card leaves them out
    data_dir: str | None = setting(None, section=DATA, label="Data folder", card=False,
                                   help="the folder of the tasks' files; none: the shipped sample (data/sample); "
                                        "data/cs224n: where `python -m mtbert data fetch` puts the CS224N files")
    quora_train: str | None = setting(None, section=DATA, label="Quora train file", card=False,
                                      help="another Quora train file instead of the data folder's quora-train.csv")
    # machine: a resumed run may move to another device
    device: str = setting("auto", section=MACHINE, label="Device", choices=("auto", "cpu", "cuda"), card=False,
                          resume=True, help="auto: CUDA when there is a GPU, else the CPU")
    bf16: bool = setting(True, section=MACHINE, label="bfloat16 autocast", help="on CUDA only")
    bf16_cpu: bool = setting(False, section=MACHINE, label="bfloat16 autocast on the CPU", resume=True,
                             help="training steps under bfloat16 autocast on the CPU too: faster on CPUs with "
                                  "AVX-512 BF16 or AMX (adapter steps 1.25x on a 2-core AMD EPYC, "
                                  "docs/benchmarks.md), slower on CPUs without; "
                                  "weights, optimizer and evaluation stay in float32")
    seed: int = setting(11711, section=MACHINE, label="Random seed",
                        help="seeds the heads' initial weights, dropout, the data subsets and order, and PCGrad")

    def __post_init__(self):
        if isinstance(self.tasks, str):  # "sst,sts" from the command line
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if self.full_eval_at_s is None:
            self.full_eval_at_s = []
        if isinstance(self.full_eval_at_s, (int, float)):
            self.full_eval_at_s = [self.full_eval_at_s]
        if isinstance(self.full_eval_at_s, str):  # "600, 1200" from the command line or the form
            self.full_eval_at_s = [number_or_text(x.strip()) for x in self.full_eval_at_s.split(",") if x.strip()]
        for f in fields(self):
            value = getattr(self, f.name)
            if allowed_values(f) and not allows(f, value):
                raise ValueError(f"setting {f.name}={value!r} is not allowed; allowed values: {allowed_values(f)}")
        self.full_eval_at_s = sorted(float(x) for x in self.full_eval_at_s)
        if METHODS[self.gradient_method].uses_losses and self.schedule != "parallel":
            raise ValueError(f"gradient_method={self.gradient_method!r} weights every task's loss at each step: it "
                             f"needs schedule='parallel', not schedule={self.schedule!r}")
        self.lora_targets = parse_targets(self.lora_targets)  # a list of names, checked against the allowed ones
        self.tasks = [s.name for s in self.task_specs()]  # checked, in the order of definition
        self.lora_task_ranks = [f"{t}={r}" for t, r in self.task_rank_map().items()]
        self.lora_task_members = [f"{t}={k}" for t, k in self.task_member_map().items()]
        self.sampling_weights = [f"{t}={w:g}" for t, w in self.sampling_weight_map().items()]
        self.symmetric_pairs = self.symmetric_task_list()
        self._check_quality_options()

    def task_rank_map(self) -> dict[str, int]:
        """lora_task_ranks as task -> rank, from "sts=32,para=16" (command line, form), a list of such
        items, or a mapping (YAML); each item checked, and only with per-task adapters."""
        return self._per_task_adapter_counts("lora_task_ranks", "rank", "sts=32")

    def task_member_map(self) -> dict[str, int]:
        """lora_task_members as task -> K, read and checked as lora_task_ranks; a task read both ways
        (pair_encoding both) already holds two reads and takes no members."""
        out = self._per_task_adapter_counts("lora_task_members", "K", "sts=3")
        both = [s.name for s in self.task_specs() if out.get(s.name, 1) > 1 and s.pair_encoding == "both"]
        if both:
            raise ValueError(f"setting lora_task_members names {', '.join(both)}, read both ways (pair_encoding "
                             "both); allowed values: task=K for tasks read one way")
        return out

    def sampling_weight_map(self) -> dict[str, float]:
        """sampling_weights as task -> factor, read as lora_task_ranks but each a number > 0, and only with
        a sampled schedule (the others draw no task)."""
        out = self._per_task_values("sampling_weights", "w", "sst=0.5", integer=False)
        if out and self.schedule not in SAMPLED:
            raise ValueError(f"setting sampling_weights={self.sampling_weights!r} is not allowed with "
                             f"schedule={self.schedule!r}; allowed values: none, or set schedule to "
                             f"{', '.join(SAMPLED[:-1])} or {SAMPLED[-1]}")
        return out

    def symmetric_task_list(self) -> list[str]:
        """symmetric_pairs as a list of task names, from "para,sts" (command line, form) or a list (YAML);
        each a pair task trained, named once."""
        value = self.symmetric_pairs
        names = [n.strip() for x in ([value] if isinstance(value, str) else (value or [])) for n in str(x).split(",")]
        names = [n for n in names if n]
        pairs = [s.name for s in self.task_specs() if s.is_pair]
        bad = [n for n in names if n not in pairs]
        if bad or len(set(names)) < len(names):
            raise ValueError(f"setting symmetric_pairs={value!r} is not allowed; allowed values: pair tasks "
                             f"trained, each named once ({', '.join(pairs) or 'none is trained'})")
        return names

    def _per_task_adapter_counts(self, name: str, what: str, example: str) -> dict[str, int]:
        """A per-task count of the adapters (integers >= 1), only with per-task adapters."""
        out = self._per_task_values(name, what, example, integer=True)
        if out and not (self.mode == "lora" and self.lora_per_task):
            raise ValueError(f"setting {name}={getattr(self, name)!r} is not allowed without per-task adapters; "
                             "allowed values: none, or set mode=lora and lora_per_task=true")
        return out

    def _per_task_values(self, name: str, what: str, example: str, integer: bool) -> dict:
        """A per-task setting as task -> value (integers >= 1, or numbers > 0), from "a=1,b=2" (command
        line, form), a list of such items, or a mapping (YAML); each item checked against the tasks."""
        value = getattr(self, name)
        items = value.items() if isinstance(value, dict) else [
            tuple(x.split("=", 1)) if isinstance(x, str) and "=" in x else (x, None)
            for x in (value.split(",") if isinstance(value, str) else (value or [])) if str(x).strip()]
        out = {}
        for task, n in items:
            task, n = str(task).strip(), str(n).strip()
            v = _positive(n, integer)
            if not task or v is None or task in out:
                kind = "an integer >= 1" if integer else "a number > 0"
                raise ValueError(f"setting {name}={value!r} is not allowed; allowed values: task={what} items, "
                                 f"one per task, each {what} {kind} (e.g. {example})")
            out[task] = v
        unknown = [t for t in out if t not in self.tasks]
        if unknown:
            raise ValueError(f"setting {name} names {', '.join(unknown)}; allowed values: task={what} for the "
                             f"tasks trained ({', '.join(self.tasks)})")
        return out

    def _check_quality_options(self) -> None:
        """The settings of docs/quality.md that only make sense together."""
        # a ratio without the file is unused (as a temperature is without its schedule); the reverse is a slip
        if self.sst_phrases_file and not self.sst_phrase_ratio:
            raise ValueError(f"setting sst_phrases_file={self.sst_phrases_file!r} is not allowed with "
                             "sst_phrase_ratio=0; allowed values: none, or set sst_phrase_ratio (0 < ratio < 1, "
                             "e.g. 0.25: the share of each SST batch given to phrases)")
        if self.sst_phrases_file and "sst" not in self.tasks:
            raise ValueError(f"setting sst_phrases_file={self.sst_phrases_file!r} is not allowed without the sst "
                             f"task; allowed values: none, or add sst to tasks (tasks={self.tasks})")
        if self.sst_phrases_file and sst_phrase_count(self.batch_size, self.sst_phrase_ratio) >= self.batch_size:
            raise ValueError(f"setting sst_phrase_ratio={self.sst_phrase_ratio} is not allowed with batch_size="
                             f"{self.batch_size}: it leaves no place for a sentence; allowed values: a ratio with "
                             f"round(ratio x batch_size) < batch_size, and a batch_size >= 2")
        if self.rdrop_alpha and self.dropout == 0:
            raise ValueError(f"setting rdrop_alpha={self.rdrop_alpha} is not allowed with dropout=0: the two passes "
                             "would be the same; allowed values: rdrop_alpha=0, or a dropout > 0")
        embedding = [s.name for s in self.task_specs() if s.loss == "cosine_embedding"]
        if self.rdrop_alpha and embedding:  # that loss works on the embeddings, not on a prediction
            raise ValueError(f"setting rdrop_alpha={self.rdrop_alpha} is not allowed with the cosine_embedding loss "
                             f"(task {embedding[0]}); allowed values: rdrop_alpha=0, or another loss (sts_loss "
                             "cosine_mse or cosent)")

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


# ---- reading the declarations ------------------------------------------------------------------

def kind(f) -> str:
    """bool | int | float | list | str: the field's annotation (a string here) without its `| None`."""
    return str(f.type).split(" |")[0]


def optional(f) -> bool:
    """None is allowed (an empty form field, `none` on the command line)."""
    return str(f.type).endswith("| None")


def allowed_values(f) -> str | None:
    """The values a setting allows, in words: the one text its error message, its `--help` and its
    form help show. None: any value of its type."""
    m = f.metadata
    if m["choices"]:
        return ", ".join(("none",) * optional(f) + m["choices"])
    if m["range"]:
        return ("none or " if optional(f) else "") + m["range"].describe(f.name, kind(f))
    return "true, false" if kind(f) == "bool" else None


def allows(f, value) -> bool:
    """Whether the setting's declaration allows the value (a list: each of its items)."""
    m, k = f.metadata, kind(f)
    if value is None:
        return optional(f)
    if m["choices"]:
        return value in m["choices"]
    if k == "bool":
        return isinstance(value, bool)
    items = value if k == "list" and isinstance(value, list) else [value]
    number = int if k == "int" else (int, float)
    return all(isinstance(v, number) and not isinstance(v, bool) and math.isfinite(v) and v in m["range"]
               for v in items)


def sst_phrase_count(batch_size: int, ratio: float) -> int:
    """The places of an SST batch given to treebank phrases (the rest hold sentences)."""
    return max(1, round(batch_size * ratio)) if ratio > 0 else 0


def number_or_text(text: str):
    """A list item typed as text: its number, or the text itself for the validation to refuse by name."""
    try:
        return float(text)
    except ValueError:
        return text


# the declarations read across: which settings the model card lists, which --resume may change
CHOICES = {f.name: f.metadata["choices"] for f in fields(TrainConfig) if f.metadata["choices"]}
CARD_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.metadata["card"])
RESUME_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.metadata["resume"])


def read_config_file(path: str | Path) -> dict:
    d = read_document(path, "config file")
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
