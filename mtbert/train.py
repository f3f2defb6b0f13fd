"""The multitask training loop: schedules, gradient methods, telemetry, run folders, exact resume.

A run folder (docs/run-folder.md) is the only thing the trainer shares with the outside world:
config.json, status.json, metrics.jsonl, best/ and last/. The studio starts this as its own
process and reads that folder.

One screen per idea: task streams -> the plan -> lr schedule and optimizer groups -> the weight
average -> the builders (data, model, optimizer, gradient method) -> the run's state (TrainState:
what last/ saves and a resume restores, in one place) -> the Trainer, whose loop is a few small
steps: why stop, train a step, maybe evaluate, report.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import distributed as dist
from . import runfolder
from .checkpoint import CheckpointError, load_base, load_checkpoint, save_checkpoint
from .config import SAMPLED, TrainConfig, sst_phrase_count
from .data import SAMPLE_DIR, Example, batch_order, load_split, make_batch
from .evaluate import evaluate, seed_average, shift_para_probs
from .methods import METHODS, make_method
from .io import atomic_write_json
from .lora import LoraConfig, add_lora, lora_parameters
from .model import ModelConfig, MultitaskBert
from .quantize import for_inference
from .runfolder import LAST, LAST_ASIDE, STATE_JSON, STATE_TENSORS, new_run_dir
from .sst_trees import PhraseDraw, phrase_examples
from .tasks import BUILTIN_NAMES, select


class TrainingError(Exception):
    """A run that cannot go on: bad data, a non-finite loss, an unwritable folder."""


# ---- data streams ---------------------------------------------------------------------------

SWAP_DRAW = 2  # keeps the swap draws' seeds apart from any other stream's


class TaskStream:
    """Batches of one task, pass after pass. Its whole state is (pass, position): the order of each
    pass is a pure function of (seed, task, pass), so a resumed run sees exactly the same batches.
    `index` is the task's place among the defined tasks (the built-in trio: 0, 1, 2), its stream's seed."""

    def __init__(self, task: str, examples: list[Example], batch_size: int, seed: int, bucket: bool,
                 index: int | None = None, swap: bool = False):
        self.task, self.examples, self.batch_size, self.seed, self.bucket = task, examples, batch_size, seed, bucket
        self.swap = swap  # an order-free pair task (symmetric_pairs): each pair read as (b, a) with probability 1/2
        self.index = index if index is not None else (BUILTIN_NAMES.index(task) if task in BUILTIN_NAMES else 0)
        self.n_batches = max(1, math.ceil(len(examples) / batch_size))
        self.pass_idx, self.position = 0, 0
        self._order = None

    def _batches_of_pass(self, p: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.index * 100003 + p)
        return batch_order(self.examples, self.batch_size, shuffle=True, generator=g, bucket=self.bucket)

    def next(self) -> list[Example]:
        if self.position >= self.n_batches:
            self.pass_idx, self.position = self.pass_idx + 1, 0
            self._order = None
        if self._order is None:
            self._order = self._batches_of_pass(self.pass_idx)
        chosen = self._order[self.position]
        self.position += 1
        batch = [self.examples[i] for i in chosen]
        if self.swap:  # which pairs are swapped is a function of the batch's place too, so resuming repeats it
            flip = np.random.default_rng((SWAP_DRAW, self.seed, self.index, self.pass_idx, self.position)).random(len(batch))
            batch = [e.swapped() if f < 0.5 else e for e, f in zip(batch, flip)]
        return batch

    def state(self) -> dict:
        return {"pass": self.pass_idx, "position": self.position}

    def load_state(self, s: dict) -> None:
        self.pass_idx, self.position, self._order = s["pass"], s["position"], None


class MixedStream(TaskStream):
    """A TaskStream whose every batch also holds `draw.k` extra examples (SST's treebank phrases). The
    draw is a function of the batch's number, so (pass, position) still is the stream's whole state."""

    def __init__(self, *args, draw: PhraseDraw, **kw):
        super().__init__(*args, **kw)
        self.draw = draw

    def next(self) -> list[Example]:
        sentences = super().next()
        return sentences + self.draw(self.pass_idx * self.n_batches + self.position - 1)


def subset(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(examples):
        return examples
    idx = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()[:n]
    return [examples[i] for i in sorted(idx)]


# ---- the plan: which task(s) each step trains --------------------------------------------------


@dataclass
class Plan:
    """parallel: every step one batch of every task; an epoch ends with the shortest loader.
    round-robin: a whole pass of one task, then the next (the seed's first attempt).
    Sampled (Stickland and Murray 2019): every step one batch of ONE task, drawn with probability
        p_k ∝ w_k N_k^α,  N_k the task's number of batches, w_k its sampling weight (1 unless set),
    proportional α = 1; temperature α = 1/τ (τ > 1 flattens the mix towards uniform, so a small task
    is seen more than its size says); annealed α = 1 − 0.8 (e − 1)/(E − 1) in epoch e of E, from
    proportional to nearly uniform. An epoch of a sampled schedule is Σ N_k steps, as many as
    round-robin's. The draw is a pure function of (seed, epoch, step in epoch): a resumed run, and
    every rank of a distributed one, draws the same tasks."""
    schedule: str
    tasks: list
    n_batches: dict
    seed: int = 0
    temperature: float = 2.0
    epochs: int = 1
    weights: dict = field(default_factory=dict)  # sampling_weights: a factor on some tasks' N_k^α

    @property
    def steps_per_epoch(self) -> int:
        if self.schedule == "parallel":
            return min(self.n_batches[t] for t in self.tasks)
        return sum(self.n_batches[t] for t in self.tasks)

    def alpha(self, epoch: int) -> float:
        if self.schedule == "proportional":
            return 1.0
        if self.schedule == "temperature":
            return 1.0 / self.temperature
        return 1.0 - 0.8 * epoch / (self.epochs - 1) if self.epochs > 1 else 1.0  # epoch counts from 0

    def probabilities(self, epoch: int = 0) -> dict[str, float]:
        """Each task's probability of being drawn at a step of `epoch` (sampled schedules)."""
        w = {t: self.weights.get(t, 1.0) * self.n_batches[t] ** self.alpha(epoch) for t in self.tasks}
        total = sum(w.values())
        return {t: v / total for t, v in w.items()}

    def tasks_at(self, step_in_epoch: int, epoch: int = 0) -> list[str]:
        if self.schedule == "parallel":
            return self.tasks
        if self.schedule in SAMPLED:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 100_003 + step_in_epoch)
            p = torch.tensor(list(self.probabilities(epoch).values()), dtype=torch.float64)
            return [self.tasks[int(torch.multinomial(p, 1, generator=g))]]
        for t in self.tasks:
            if step_in_epoch < self.n_batches[t]:
                return [t]
            step_in_epoch -= self.n_batches[t]
        raise IndexError(step_in_epoch)


def lr_lambda(cfg: TrainConfig, total_steps: int, clock=None):
    """Warmup, then constant or decaying to 0. With a time budget the decay follows the budget's clock
    (training seconds used / budget) whenever that runs out before the steps do."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.lr_decay == "none":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.time_budget_s and clock is not None:
            progress = max(progress, min(1.0, clock() / cfg.time_budget_s))
        return 1.0 - progress if cfg.lr_decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return f


def encoder_groups(encoder, lr: float, decay: float = 1.0) -> list[dict]:
    """Optimizer groups for the trainable encoder weights, the top layer first (its lr is the one logged).

    decay < 1 is layer-wise lr decay: layer l of L gets lr * decay^(L-1-l) and the embeddings
    lr * decay^L, so the lower layers keep more of what pre-training put there. decay == 1 keeps
    one group (the layout that runs saved before this setting existed resume into).
    """
    trainable = lambda mod: [p for p in mod.parameters() if p.requires_grad]
    if decay == 1.0:
        params = trainable(encoder)
        return [{"params": params, "lr": lr}] if params else []
    L = len(encoder.layers)
    parts = [(encoder.layers[l], lr * decay ** (L - 1 - l)) for l in reversed(range(L))]
    parts.append((encoder.embeddings, lr * decay ** L))
    seen = {id(p) for mod, _ in parts for p in mod.parameters()}
    rest = [p for p in trainable(encoder) if id(p) not in seen]  # the pooler sits above the top layer
    groups = [{"params": rest, "lr": lr}] if rest else []
    groups += [{"params": trainable(mod), "lr": g_lr} for mod, g_lr in parts if trainable(mod)]
    return groups


class WeightAverage:
    """An exponential moving average of the trainable weights, kept in a copy of the model that
    evaluation and the best checkpoint use (the training weights go on unchanged). Dev accuracy
    swings between evaluations (SST by up to .02); the average smooths the last ~1/(1-decay) steps.
    The decay warms up as min(decay, (1+n)/(10+n)), so the pretrained start fades out quickly (and
    until step ~10/(1-decay) the average spans roughly the last n/10 steps)."""

    def __init__(self, model: MultitaskBert, decay: float):
        self.decay, self.n = decay, 0
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        pairs = [(a, p) for a, p in zip(self.model.parameters(), model.parameters()) if p.requires_grad]
        self.avg, self.live = [a for a, _ in pairs], [p for _, p in pairs]

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.avg, self.live, 1.0 - d)  # avg += (1-d) (w - avg), one fused pass

    def state_tensors(self) -> dict:
        return {f"ema.{i}": a.detach().cpu().contiguous() for i, a in enumerate(self.avg)}

    @torch.no_grad()
    def load_state(self, tensors: dict, n: int) -> None:
        """`n`: the updates so far, i.e. the training step (one update per step from the start)."""
        for i, a in enumerate(self.avg):
            a.copy_(tensors[f"ema.{i}"])
        self.n = n


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("setting device=cuda is not allowed here: no CUDA device found; allowed values: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device(batch: dict, device) -> dict:
    return {k: (to_device(v, device) if isinstance(v, dict) else
                v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


# ---- builders: what a run is made of, from its config --------------------------------------------
#
# Called in this order by Trainer._setup, right after torch.manual_seed(cfg.seed). The model's new
# heads are the only thing drawn from the global generator before the first step (in task order);
# the streams and PCGrad have generators of their own. Keep it so: exact resume and the recorded
# reference losses depend on it.

@dataclass
class RunData:
    """The examples of one run. `dev` (eval_subset) chooses best/ mid-run; `dev_full` is the whole
    dev split for full_eval_at_s and the final report; `train_eval` is the report's Train row."""
    specs: dict      # task name -> TaskSpec (with its loss weight)
    train: dict      # task -> examples (train_subset)
    dev: dict
    dev_full: dict
    train_eval: dict
    streams: dict    # task -> TaskStream over `train`


def build_data(cfg: TrainConfig, log) -> RunData:
    """Read the train and dev splits of the trained tasks (each file's report goes to `log`), take the
    subsets and open one stream per task. Subsets and streams have generators of their own (seeded
    from cfg.seed), so none of this draws from the global one."""
    specs, train, dev = read_splits(cfg, log)
    train_data = {t: subset(train[t], cfg.train_subset, cfg.seed) for t in cfg.tasks}
    index = {s.name: i for i, s in enumerate(cfg.defined_tasks())}  # a stream's seed: its task's place
    streams = {t: TaskStream(t, train_data[t], cfg.batch_size, cfg.seed, cfg.bucket, index[t],
                             swap=t in cfg.symmetric_pairs) for t in cfg.tasks}
    if cfg.sst_phrases_file:
        streams["sst"] = sst_phrase_stream(cfg, specs["sst"], train_data["sst"], index["sst"], log)
    return RunData(specs=specs, train=train_data, streams=streams, **eval_sets(cfg, train, dev))


def read_splits(cfg: TrainConfig, log) -> tuple[dict, dict, dict]:
    """(task name -> TaskSpec with its loss weight, task -> train examples, task -> dev examples): the
    whole splits of the run's tasks, each file's report to `log`; a task without usable examples stops."""
    specs = {s.name: s for s in cfg.task_specs()}
    data_dir = cfg.data_dir or str(SAMPLE_DIR)
    overrides = {"para": cfg.quora_train} if cfg.quora_train and "para" in cfg.tasks else None
    splits = {"train": load_split(data_dir, "train", specs.values(), overrides=overrides),
              "dev": load_split(data_dir, "dev", specs.values())}
    for split, loaded in splits.items():
        for task, (examples, report) in loaded.items():
            log(f"[data] {split} {task}: {report.summary()}")
            if not examples:
                raise TrainingError(f"no usable {task} {split} examples in {report.path}")
    train, dev = ({t: v[0] for t, v in splits[x].items()} for x in ("train", "dev"))
    return specs, train, dev


def eval_sets(cfg: TrainConfig, train: dict, dev: dict) -> dict:
    """A run's evaluation sets (RunData's dev, dev_full and train_eval) from its whole train and dev
    splits; each subset is drawn with a seed of its own, so `rescore` draws the same ones."""
    return dict(dev={t: subset(dev[t], cfg.eval_subset, cfg.seed + 1) for t in cfg.tasks},
                dev_full={t: dev[t] for t in cfg.tasks},
                train_eval={t: subset(train[t], cfg.train_eval_subset, cfg.seed + 2) for t in cfg.tasks})


def measure(model, tok, cfg: TrainConfig, split: str, data: dict, fit_on: list = (), full: bool = False,
            calibrate: bool = False, device="cpu", amp=None) -> dict:
    """The metrics a run records for `model` on `data`. With `calibrate` the Quora threshold is fitted
    first (on `data`'s pairs; with `full`, on the eval subset `fit_on`) and kept in model.cfg. With
    `full` on dev, Quora is scored at the threshold fitted on `fit_on` and also on the pairs the fit
    never saw and at the plain 0.5 threshold, so the fit's gain is visible."""
    model = for_inference(model, cfg.eval_precision, tokenizer=tok)  # shares the model's cfg (thresholds)
    specs = [model.cfg.task(t) for t in data]
    extra = {}
    if full and cfg.calibrate_para and "para" in data and split == "dev":
        if calibrate and fit_on:  # mid-run: the weights moved since the last fit
            evaluate(model, tok, {"para": fit_on}, cfg.eval_batch_size, device, amp, calibrate_para=True)
        raw = {}
        examples = data["para"]
        extra = {"para_acc": evaluate(model, tok, {"para": examples}, cfg.eval_batch_size, device, amp,
                                      raw_out=raw)["para_acc"]}
        seen = {e.id for e in fit_on}
        held = np.array([e.id not in seen for e in examples])
        y = np.array([e.label for e in examples]) > 0.5
        offset = model.cfg.para_logit_offset
        plain = shift_para_probs(raw["para"], -offset) > 0.5
        extra.update({"para_logit_offset": offset,
                      "para_acc_heldout": float(((raw["para"] > 0.5) == y)[held].mean()) if held.any() else float("nan"),
                      "para_heldout_examples": int(held.sum()),
                      "para_acc_uncalibrated": float((plain == y).mean())})
        data = {t: v for t, v in data.items() if t != "para"}
    m = evaluate(model, tok, data, cfg.eval_batch_size, device, amp, calibrate_para=calibrate and cfg.calibrate_para)
    if extra:
        m.update(extra)
        m["average"] = seed_average(m, specs)
    return m


def run_eval_sets(folder: str | Path, meta: dict, data_dir: str | None = None, quora_train: str | None = None,
                  log=lambda line: None) -> tuple[TrainConfig, dict]:
    """(the run's settings, its evaluation sets as `eval_sets` draws them) for a checkpoint a training
    run wrote (`meta`: its mtbert.json). data_dir and quora_train replace the run's own, which may not
    exist where the checkpoint is now."""
    settings = meta.get("train_config")
    if not settings:
        raise CheckpointError(f"{folder}: its mtbert.json has no train_config; only a checkpoint a training run "
                              "wrote can be measured the way its run measured it (use evaluate instead)")
    given = {"data_dir": data_dir, "quora_train": quora_train}
    cfg = TrainConfig.from_dict({**settings, **{k: v for k, v in given.items() if v}})
    return cfg, eval_sets(cfg, *read_splits(cfg, log)[1:])


def rescore(folder: str | Path, data_dir: str | None = None, quora_train: str | None = None,
            log=lambda line: None) -> dict:
    """Measure a checkpoint the trainer wrote again, as its run's final report did: the Train row on the
    run's train_eval subset, the Dev row on the whole dev split (Quora at the stored threshold, with the
    held-out and 0.5-threshold accuracies), in float32 on the CPU. Writes them into its metrics.json
    (the step and other keys kept) and returns them. For a copy whose weights changed since its run
    measured them, such as `export --adapters-dtype float16`. data_dir and quora_train replace the
    run's own, which may not exist where the checkpoint is now."""
    folder = Path(folder)
    model, tok, meta = load_checkpoint(folder)
    cfg, sets = run_eval_sets(folder, meta, data_dir, quora_train, log)
    results = {"train": measure(model, tok, cfg, "train", sets["train_eval"]),
               "dev": measure(model, tok, cfg, "dev", sets["dev_full"], fit_on=sets["dev"].get("para", []),
                              full=True)}
    atomic_write_json(folder / "metrics.json", {**meta.get("metrics", {}), **results})
    return results


def sst_phrase_stream(cfg: TrainConfig, spec, sentences: list[Example], index: int, log) -> MixedStream:
    """SST's stream with round(ratio x batch_size) places of each batch given to treebank phrases of the
    run's training sentences (docs/quality.md)."""
    if spec.kind != "classification":
        raise TrainingError(f"setting sst_phrases_file needs sst to be a classification task (it is {spec.kind})")
    phrases, summary = phrase_examples(cfg.sst_phrases_file, sentences, cfg.sst_phrase_min_words, spec.classes)
    log(f"[data] train sst phrases: {summary}")
    if not phrases:
        raise TrainingError(f"sst_phrases_file={cfg.sst_phrases_file!r} gave no phrases: none of its trees is a "
                            "training sentence with a phrase of at least sst_phrase_min_words="
                            f"{cfg.sst_phrase_min_words} words (is it the trees file of this SST train split?)")
    k = sst_phrase_count(cfg.batch_size, cfg.sst_phrase_ratio)
    draw = PhraseDraw(phrases, k, seed=cfg.seed * 1000 + index * 100003)
    return MixedStream("sst", sentences, cfg.batch_size - k, cfg.seed, cfg.bucket, index, draw=draw)


def build_model(cfg: TrainConfig, tasks: list, device: torch.device, checkpoint: Path | None = None):
    """(model, tokenizer) in training mode on `device`: the base encoder with new heads for `tasks`,
    or, when resuming, the model saved in `checkpoint`. Then frozen as the config says (before the
    optimizer and the weight average are built, so that they see only the trained weights)."""
    if checkpoint is not None:
        model, tok, _ = load_checkpoint(checkpoint)
    else:
        encoder, tok = load_base(cfg.base_model, cfg.max_length, dropout=cfg.dropout)
        model = MultitaskBert(encoder, ModelConfig(pooling=cfg.pooling, dropout=cfg.dropout, tasks=tasks,
                                                   members=cfg.task_member_map(), symmetric=cfg.symmetric_pairs))
        if cfg.mode == "lora":  # after the heads: A's initialisation draws from the global generator too
            add_lora(model, LoraConfig(cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets), cfg.lora_dropout,
                                       cfg.lora_per_task, cfg.task_rank_map()))
    model.to(device).train()
    model.cosent_scale = cfg.cosent_scale
    if dist.active():  # every rank starts from rank 0's heads
        dist.broadcast_model(model)
    if cfg.mode in ("frozen", "lora"):  # frozen: the seed's "pre-trained embeddings" mode, heads only;
        model.encoder.requires_grad_(False)  # lora: the heads and the adapters (model.lora, not in the encoder)
    if cfg.freeze_word_embeddings:
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    return model, tok


def head_params(model: MultitaskBert) -> list:
    return [p for h in model.heads().values() for p in h.parameters()]


def build_optimizer(cfg: TrainConfig, model: MultitaskBert, device: torch.device, total_steps: int, clock,
                    method_params: list | None = None):
    """(optimizer, lr scheduler). The groups: the encoder's (one per layer with layer_lr_decay < 1,
    top first), the heads' at head_lr, then the gradient method's learned task weights (if any) at
    method_lr without weight decay. Their order is the order of the saved optimizer state.
    `clock()`: training seconds so far, for a schedule that follows the time budget."""
    groups = encoder_groups(model.encoder, cfg.lr, cfg.layer_lr_decay)
    if lora_parameters(model):  # the adapters stand in for the encoder: its learning rate
        groups.insert(0, {"params": lora_parameters(model), "lr": cfg.lr})
    groups.append({"params": head_params(model), "lr": cfg.head_lr or cfg.lr})
    if method_params:
        groups.append({"params": list(method_params), "lr": cfg.method_lr, "weight_decay": 0.0})
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[cfg.optimizer]
    extra = {"fused": True} if device.type == "cuda" else {}
    opt = opt_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps, clock))


def build_method(cfg: TrainConfig, model: MultitaskBert):
    """The gradient method over the trainable encoder weights, then the heads' (its flat layout).
    Under torchrun it averages each task's gradient over the ranks before combining them."""
    enc = [p for p in model.encoder.parameters() if p.requires_grad] + lora_parameters(model)
    hyper = {key: getattr(cfg, f"{cfg.gradient_method}_{key}") for key in METHODS[cfg.gradient_method].hyper}
    method = make_method(cfg.gradient_method, enc + head_params(model), seed=cfg.seed, telemetry=True,
                         all_reduce=dist.average_ if dist.active() else None, tasks=cfg.tasks, **hyper)
    for p in method.parameters():  # learned task weights live beside the model
        p.data = p.data.to(next(model.parameters()).device)
    return method


# ---- the run's state ------------------------------------------------------------------------------

SAVED_FIELDS = ("step", "epoch", "step_in_epoch", "best_avg", "train_time")  # trainer_state.json's first keys


@dataclass
class TrainState:
    """Where a run stands. The SAVED_FIELDS go into last/ and come back on resume (with the streams'
    positions and the optimizer, scheduler, method, average and RNG states: Trainer._write_state);
    the others belong to this process and start afresh."""
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_avg: float = -math.inf  # best/ holds the weights of the best dev average so far
    train_time: float = 0.0      # seconds spent in training steps (evaluation and saving excluded)
    # this process only
    last_saved_step: int | None = None  # last/ holds this step: the finish need not save it again
    last_dev: dict | None = None        # the latest dev evaluation: the report's Dev row if no best/
    last_dev_step: int | None = None    # its step: the finish evaluates unless it is the last step
    next_eval_s: float = 0.0            # eval_every_s: the training clock of the next dev evaluation
    pending_full: list = field(default_factory=list)  # full_eval_at_s marks still ahead
    step_time_avg: float | None = None  # seconds per step, smoothed, for the ETA
    status_at: float = 0.0              # when status.json last had the step count

    def saved(self) -> dict:
        d = {k: getattr(self, k) for k in SAVED_FIELDS}
        d["best_avg"] = None if self.best_avg == -math.inf else self.best_avg  # JSON has no -inf
        return d

    @classmethod
    def resumed(cls, saved: dict) -> "TrainState":
        d = {k: saved[k] for k in SAVED_FIELDS}
        d["best_avg"] = -math.inf if d["best_avg"] is None else d["best_avg"]
        return cls(**d)


STOP_REQUESTED = "stop requested"


# ---- the trainer ----------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 log=None):
        self.cfg, self.run_dir, self.resume, self.progress = cfg, Path(run_dir), resume, progress
        self.log = log or (lambda msg: print(msg, flush=True))
        self.stop_requested = False
        self.rank, self.world = 0, 1
        self.status = {"run_id": self.run_dir.name, "state": "queued", "pid": os.getpid(), "error": None,
                       "epochs": cfg.epochs, "step": 0, "epoch": 0, "best_checkpoint": None,
                       "best_dev_average": None, "started_at": time.time()}

    # -- status & metrics --

    @property
    def is_main(self) -> bool:  # only rank 0 writes the run folder
        return self.rank == 0

    @property
    def step(self) -> int:  # the steps done; what a subclass's _train_step looks at
        return self.state.step

    def set_status(self, **kw) -> None:
        self.status.update(kw, updated_at=time.time())
        if self.is_main:
            runfolder.write_status(self.run_dir, self.status)

    def _record(self, rec: dict) -> None:
        if self.is_main:
            self.metrics.write(rec)

    # -- setup --

    def _setup(self) -> None:
        cfg = self.cfg
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # before the model: its new heads draw from it
        self.device = dist.local_device(pick_device(cfg.device).type)
        self.amp = torch.bfloat16 if (cfg.bf16 if self.device.type == "cuda" else cfg.bf16_cpu) else None
        if cfg.eval_precision == "int8" and self.device.type != "cpu":
            raise ValueError(f"eval_precision='int8' is not allowed on {self.device.type}: int8 inference runs "
                             "on the CPU only; choose fp32 or bf16")
        self.data = build_data(cfg, self.log)
        self.model, self.tok = build_model(cfg, list(self.data.specs.values()), self.device,
                                           checkpoint=self._last_dir() if self.resume else None)
        self.plan = Plan(cfg.schedule, cfg.tasks, {t: s.n_batches for t, s in self.data.streams.items()},
                         seed=cfg.seed, temperature=cfg.sampling_temperature, epochs=cfg.epochs,
                         weights=cfg.sampling_weight_map())
        self.total_steps = min(cfg.epochs * self.plan.steps_per_epoch, cfg.max_steps or math.inf)
        self.state = TrainState()
        self.method = build_method(cfg, self.model)
        self.opt, self.sched = build_optimizer(cfg, self.model, self.device, self.total_steps,
                                               clock=lambda: self.state.train_time,
                                               method_params=self.method.parameters())
        self.ema = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.eval_model = self.ema.model if self.ema else self.model
        if self.resume:
            self._load_state()

    def _last_dir(self) -> Path:
        last = self.run_dir / LAST
        if not (last / STATE_JSON).is_file() and (self.run_dir / LAST_ASIDE / STATE_JSON).is_file():
            return self.run_dir / LAST_ASIDE  # a crash between the two renames of a save
        if not (last / STATE_JSON).is_file():
            raise TrainingError(f"cannot resume {self.run_dir}: no saved state in {last} "
                                "(the run stopped before its first save)")
        return last

    # -- resume state: the TrainState, data positions, optimizer, scheduler, method, RNGs (no pickle) --
    #
    # trainer_state.safetensors: opt.<param id>.<name>, rng.torch, rng.cuda (on a GPU), method.<name>,
    # ema.<i> (with ema_decay). trainer_state.json: the SAVED_FIELDS, then streams, scheduler,
    # param_groups, python_random (for the record; not restored) and config. Runs saved in this
    # layout must keep resuming: change it only by adding keys.

    def _write_state(self, folder: Path) -> None:
        opt = self.opt.state_dict()
        tensors = {f"opt.{pid}.{k}": v.detach().cpu().contiguous()
                   for pid, st in opt["state"].items() for k, v in st.items() if isinstance(v, torch.Tensor)}
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        for k, v in self.method.state_dict().items():
            tensors[f"method.{k}"] = v
        if self.ema:
            tensors.update(self.ema.state_tensors())
        save_file(tensors, str(folder / STATE_TENSORS))
        saved = {**self.state.saved(), "streams": {t: s.state() for t, s in self.data.streams.items()},
                 "scheduler": self.sched.state_dict(),  # plain numbers; lr_lambdas are None for functions
                 "param_groups": opt["param_groups"], "python_random": repr(random.getstate()),
                 "config": self.cfg.to_dict()}
        (folder / STATE_JSON).write_text(json.dumps(saved, indent=2))

    def _load_state(self) -> None:
        folder = self._last_dir()
        saved = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
        opt_state = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v.to(self.device) if name != "step" else v
        self.opt.load_state_dict({"state": opt_state, "param_groups": saved["param_groups"]})
        self.sched.load_state_dict(saved["scheduler"])
        self.method.load_state_dict({k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")})
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        if self.ema:
            if "ema.0" not in tensors:
                raise TrainingError(f"cannot resume {self.run_dir} with ema_decay set: {folder} holds no "
                                    "weight average (the run was started without ema_decay)")
            self.ema.load_state(tensors, saved["step"])
        for t, s in self.data.streams.items():
            s.load_state(saved["streams"][t])
        self.state = TrainState.resumed(saved)
        runfolder.truncate_metrics(self.run_dir, self.state.step)
        self.log(f"[resume] from {folder} at step {self.state.step} (epoch {self.state.epoch})")

    # -- saving --

    def _save(self, name: str, metrics: dict | None = None, with_state: bool = False) -> None:
        """last/ holds the training weights (for resuming); best/ the weights that were evaluated."""
        if name == "last":
            self.state.last_saved_step = self.state.step
        if not self.is_main:
            return
        try:
            model = self.model if name == "last" else self.eval_model
            save_checkpoint(model, self.tok, self.run_dir / name, base=self.cfg.base_model,
                            metrics=metrics, include_encoder=self.cfg.mode == "finetune",
                            extra={"run_id": self.run_dir.name, "step": self.state.step,
                                   "train_config": self.cfg.to_dict()},
                            write_extra=self._write_state if with_state else None)
        except OSError as e:
            where = e.filename or (self.run_dir / name)
            raise TrainingError(f"could not write checkpoint {name}/ at {where}: {e.strerror or e}; "
                                f"the previous {name}/ is intact") from e

    # -- evaluation --

    def _evaluate(self, split: str, data: dict, full: bool = False, calibrate: bool = False) -> dict:
        t0 = time.time()
        s = self.state
        m = measure(self.eval_model, self.tok, self.cfg, split, data, fit_on=self.data.dev.get("para", []),
                    full=full, calibrate=calibrate, device=self.device,
                    # on the CPU eval_precision decides evaluation's arithmetic; bf16_cpu is for the training steps
                    amp=self.amp if self.device.type == "cuda" else None)
        self._record({"type": "eval", "split": split, "step": s.step, "epoch": s.epoch, "time": time.time(),
                      "train_time_s": s.train_time, "full": full, "examples": {t: len(v) for t, v in data.items()},
                      **m})
        shown = " ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
        self.log(f"[eval] {split}{' (full)' if full else ''} step {s.step} "
                 f"({s.train_time / 60:.1f} min of training, eval took {time.time() - t0:.0f} s): {shown}")
        return m

    def _dev_eval(self) -> None:
        """Evaluate on the dev subset; a new best average replaces best/."""
        s, m = self.state, {}
        if self.is_main:  # evaluation and checkpoints happen once, on rank 0
            m = self._evaluate("dev", self.data.dev, calibrate=True)
            if m["average"] == m["average"] and m["average"] > s.best_avg:
                s.best_avg = m["average"]
                self._save("best", metrics={"dev": m, "step": s.step})
                self.set_status(best_checkpoint="best", best_dev_average=m["average"])
                self.log(f"[checkpoint] best/ (dev average {m['average']:.4f})")
        s.last_dev, s.last_dev_step = m, s.step
        if self.cfg.eval_every_s:
            s.next_eval_s = s.train_time + self.cfg.eval_every_s

    # -- one optimisation step --

    def _train_step(self, tasks: list[str]) -> dict:
        """One batch of each of `tasks`, one update; returns (and records) the step's metrics line."""
        t0 = time.perf_counter()
        losses, n_examples = {}, 0
        for t in tasks:
            examples = self.data.streams[t].next()[self.rank::self.world]  # this rank's slice of the global batch
            n_examples += len(examples) * (2 if self.data.specs[t].is_pair else 1) * self.world
            batch = to_device(make_batch(self.model.cfg.task(t), examples, self.tok), self.device)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                read_weight = self.cfg.read_loss_weight
                losses[t] = (self.model.rdrop_loss(t, batch, self.cfg.rdrop_alpha, read_weight) if self.cfg.rdrop_alpha
                             else self.model.loss(t, batch, read_weight)).float()
        self._check_finite(losses)
        # the same on every rank, and on a resumed run: a function of the step number alone
        self.method.telemetry = self.state.step % self.cfg.telemetry_every == 0
        stats = self.method.backward({t: v * self.data.specs[t].weight for t, v in losses.items()})
        # each task's effective weight λ_k on its own (unweighted) loss's gradient: its loss weight times
        # what the gradient method made of it (update = Σ λ_k ∇L_k on the shared parameters)
        method_weights = stats.pop("weights", {})
        stats["task_weights"] = {t: self.data.specs[t].weight * method_weights.get(t, 1.0) for t in losses}
        if self.cfg.grad_clip:
            weighting = {id(p) for p in self.method.parameters()}  # the model's gradient only
            params = [p for g in self.opt.param_groups for p in g["params"]
                      if p.grad is not None and id(p) not in weighting]
            total = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            stats["grad_norm_total"] = float(total)
        lr = self.sched.get_last_lr()[0]  # the rate this update uses (the top layer's)
        self.opt.step()
        if self.ema:
            self.ema.update()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.step_in_epoch += 1
        dt = time.perf_counter() - t0
        shown = torch.stack([v.detach() for v in losses.values()])
        if dist.active():  # log the global batch's loss
            dist.average_(shown)
        rec = {"type": "step", "step": self.state.step, "epoch": self.state.epoch, "time": time.time(),
               "tasks": list(tasks), "loss": {t: float(v) for t, v in zip(losses, shown)}, "loss_total": float(shown.sum()),
               "lr": lr, "examples_per_s": n_examples / dt, "step_time": dt, **stats}
        self._record(rec)
        return rec

    def _check_finite(self, losses: dict) -> None:
        """Stop on a NaN or infinite loss before it reaches the weights; every rank stops together."""
        bad = [(t, v.item()) for t, v in losses.items() if not torch.isfinite(v)]
        if dist.any_rank(bool(bad)):
            what = f"the {bad[0][0]} loss became {bad[0][1]}" if bad else "a loss on another rank became non-finite"
            raise TrainingError(f"{what} at step {self.state.step + 1} (lr {self.sched.get_last_lr()[0]:.2e}); "
                                "training stopped. Lower the learning rate or keep grad_clip on; "
                                "the last good checkpoint is in last/")

    # -- the run --

    def run(self) -> str:
        self.rank, self.world = dist.init()
        if not self.is_main:
            self.log = lambda msg: None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume and self.is_main:
            if self.cfg.task_definitions is None:  # the run keeps its tasks' definitions, not the file's name
                self.cfg.task_definitions = [s.to_dict() for s in select(self.cfg.defined_tasks(), self.cfg.tasks)]
            runfolder.write_config(self.run_dir, self.cfg.to_dict())
        try:
            if self.is_main:
                runfolder.acquire_lock(self.run_dir)
        except runfolder.LockHeld as e:
            self.set_status(state="failed", error=str(e))
            raise TrainingError(str(e)) from e
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.metrics, clean = None, False
        try:
            self.set_status(state="running", error=None, started_at=time.time())
            self._setup()
            self.metrics = runfolder.MetricsWriter(self.run_dir) if self.is_main else None
            self.set_status(total_steps=self.total_steps, step=self.state.step, epoch=self.state.epoch)
            state = self._loop()
            self.set_status(state=state, eta_s=0.0, step=self.state.step, epoch=self.state.epoch)
            self.log(f"[done] {state} at step {self.state.step}; run folder {self.run_dir}")
            clean = True
            return state
        except BaseException as e:
            msg = str(e) if isinstance(e, (TrainingError, ValueError)) else \
                f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
            self.set_status(state="failed", error=msg)
            raise
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self.metrics:
                self.metrics.close()
            if self.is_main:
                runfolder.release_lock(self.run_dir)
            dist.shutdown(clean)

    def _on_signal(self, signum, frame):
        if self.stop_requested:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        self.stop_requested = True
        self.log(f"[stop] signal {signum}: finishing the step in flight, then saving")

    # -- the loop: why stop, one step, maybe evaluate, report --

    def _loop(self) -> str:
        cfg, s = self.cfg, self.state
        s.pending_full = [x for x in cfg.full_eval_at_s if x > s.train_time]  # marks passed before a resume stay done
        s.next_eval_s = s.train_time + (cfg.eval_every_s or 0)
        bar = None
        if self.progress and self.is_main:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=s.step, unit="step", dynamic_ncols=True, mininterval=0.5)
        try:
            while True:
                if s.step_in_epoch >= self.plan.steps_per_epoch:
                    self._end_epoch()
                why = self._why_stop()
                if why == STOP_REQUESTED:
                    self._save("last", with_state=True)
                    return "stopped"
                if why:
                    return self._finish(why)
                t0 = time.perf_counter()
                rec = self._train_step(self.plan.tasks_at(s.step_in_epoch, s.epoch))
                s.train_time += time.perf_counter() - t0
                if bar is not None:  # before evaluating, which may take a while
                    bar.update(1)
                    bar.set_postfix({t: f"{v:.3f}" for t, v in rec["loss"].items()}, refresh=False)
                self._maybe_evaluate()
                self._report(rec)
        finally:
            if bar is not None:
                bar.close()

    def _why_stop(self) -> str | None:
        """Why the run ends before its next step, or None. Every rank must give the same answer, so
        what one rank alone sees (a signal, its own clock) goes through any_rank, on every rank
        in the same order."""
        cfg, s = self.cfg, self.state
        if s.epoch >= cfg.epochs:
            return "all epochs done"
        if dist.any_rank(self.stop_requested):
            return STOP_REQUESTED
        if s.step >= self.total_steps:
            return f"max_steps {self.total_steps} reached"
        if cfg.time_budget_s and dist.any_rank(s.train_time >= cfg.time_budget_s):
            return f"time budget {cfg.time_budget_s:.0f} s reached"
        return None

    def _eval_step(self) -> bool:  # eval_every: this step is one of every eval_every
        return bool(self.cfg.eval_every and self.state.step % self.cfg.eval_every == 0)

    def _maybe_evaluate(self) -> None:
        """After a step: the dev subset every eval_every steps or eval_every_s seconds of training,
        and the whole dev set at each full_eval_at_s mark the training clock has passed."""
        cfg, s = self.cfg, self.state
        if self._eval_step() or (cfg.eval_every_s and s.train_time >= s.next_eval_s):
            self._dev_eval()
        while s.pending_full and s.train_time >= s.pending_full[0]:
            s.pending_full.pop(0)
            self._evaluate("dev", self.data.dev_full, full=True, calibrate=True)

    def _end_epoch(self) -> None:
        """A dev evaluation (unless the step just had one) and last/, to resume from."""
        s = self.state
        s.epoch, s.step_in_epoch = s.epoch + 1, 0
        self.set_status(step=s.step, epoch=s.epoch)
        if not self._eval_step():
            self._dev_eval()
        self._save("last", with_state=True)

    def _report(self, rec: dict) -> None:
        """status.json's step, epoch, speed and ETA, at most once a second (the studio polls it)."""
        s = self.state
        dt = rec["step_time"]
        s.step_time_avg = dt if s.step_time_avg is None else 0.9 * s.step_time_avg + 0.1 * dt
        if time.time() - s.status_at <= 1.0:
            return
        eta = (self.total_steps - s.step) * s.step_time_avg
        if self.cfg.time_budget_s:  # the budget may end the run before the steps do
            eta = min(eta, max(0.0, self.cfg.time_budget_s - s.train_time))
        self.set_status(step=s.step, epoch=s.epoch, eta_s=eta, examples_per_s=rec["examples_per_s"])
        s.status_at = time.time()

    def _finish(self, why: str) -> str:
        self.log(f"[finish] {why}")
        if not self.is_main:
            dist.barrier()  # rank 0 evaluates and saves
            return "finished"
        s = self.state
        if s.last_dev_step != s.step:
            self._dev_eval()
        if s.last_saved_step != s.step:
            self._save("last", with_state=True)
        # the seed's table describes the best checkpoint: Train and Dev rows from the same weights
        best = self.run_dir / "best"
        if (best / "mtbert.json").is_file():
            self.model, self.tok, meta = load_checkpoint(best, device=str(self.device))
            self.eval_model = self.model
            dev = meta["metrics"].get("dev", {})
        else:
            dev = s.last_dev
        if self.cfg.eval_subset and self.cfg.final_full_eval:  # chosen on a dev subset; report the whole dev set
            dev = self._evaluate("dev", self.data.dev_full, full=True)
        train = self._evaluate("train", self.data.train_eval)
        results = {"train": train, "dev": dev}
        if (best / "mtbert.json").is_file():
            atomic_write_json(best / "metrics.json", {**results, "step": meta["metrics"].get("step")})
        self.set_status(results=results)
        dist.barrier()
        return "finished"


def train(cfg: TrainConfig, run_dir: str | Path | None = None, **kw) -> Path:
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg.name)
    Trainer(cfg, run_dir, **kw).run()
    return run_dir
