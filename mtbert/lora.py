"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for our BERT encoder.

An adapted Linear layer computes h = W x + b + (alpha / r) B A dropout(x), with W, b the frozen base
weights, A (r, in) initialised Kaiming-uniform and B (out, r) at zero, so that at step 0 the model is
exactly the base model; only A and B (and the task heads) train.

Why a module of our own rather than peft: peft replaces each adapted nn.Linear of a Hugging Face
model with a wrapper (renaming the weights under it), and our encoder fuses query, key and value
into one Linear (mtbert/bert.py), whose output peft would adapt as one block. Here the adapters live
beside the encoder (`model.lora`) and reach it through forward hooks on its Linear layers; a fused
qkv layer gets one adapter per chosen part, each adding to its third of the output. The encoder's
own weights, names and Hugging Face key map stay untouched: a checkpoint stores the adapters alone
(mtbert/checkpoint.py), and `merge_lora` folds W + (alpha/r) B A back into a plain BERT.

With per_task (the setting lora_per_task), every task of the model has its own adapters
(`tasks[task].layers[i][target]`) over the one frozen base, and the hooks add the adapters of the task
whose inputs are being encoded: `task_adapters(model, task)` says which, around each encoder call of
a task (MultitaskBert.embed does it for every task's forward). An encoder call with no task chosen
raises LoraError rather than run without adapters.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

# target -> (the BertLayer Linear it adapts, which third of that Linear's output it adds to (the fused
# query/key/value projection) or None for all of it)
WHERE = {
    "query": ("attention.qkv", 0),
    "key": ("attention.qkv", 1),
    "value": ("attention.qkv", 2),
    "attention_output": ("attention_output", None),
    "intermediate": ("intermediate", None),
    "output": ("output", None),
}
TARGETS = tuple(WHERE)
ADAPTERS_FILE = "adapters.safetensors"


class LoraError(ValueError):
    """A LoRA setting or adapter file that cannot be used; the message names the setting and the values allowed."""


@dataclass
class LoraConfig:
    rank: int = 8          # r
    alpha: float = 16.0    # the update is scaled by alpha / r, so changing r keeps the step size comparable
    targets: tuple = TARGETS
    dropout: float = 0.1   # on the adapter's input only
    per_task: bool = False  # one set of adapters per task instead of one shared by all
    task_ranks: dict = field(default_factory=dict)  # per_task: task -> a rank of its own (alpha scales with it)

    def __post_init__(self):
        self.targets = tuple(parse_targets(self.targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise LoraError(f"setting lora_rank={self.rank!r} is not allowed; allowed values: an integer >= 1")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < math.inf:
            raise LoraError(f"setting lora_alpha={self.alpha!r} is not allowed; allowed values: a number > 0")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise LoraError(f"setting lora_dropout={self.dropout!r} is not allowed; allowed values: "
                            "0 <= lora_dropout < 1")
        if not isinstance(self.per_task, bool):
            raise LoraError(f"setting lora_per_task={self.per_task!r} is not allowed; allowed values: true, false")
        self.task_ranks = dict(self.task_ranks or {})
        for task, r in self.task_ranks.items():
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise LoraError(f"setting lora_task_ranks={task}={r!r} is not allowed; allowed values: task=rank "
                                "with an integer rank >= 1")
        if self.task_ranks and not self.per_task:
            raise LoraError("setting lora_task_ranks is not allowed with shared adapters; allowed values: none, "
                            "or set lora_per_task=true")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def for_set(self, adapter_set: str) -> "LoraConfig":
        """The settings of one per-task adapter set ("para:joint" is task para's): its task's rank, if it
        has one, with alpha scaled alike so that alpha / r, the update's scale, stays the shared one."""
        r = self.task_ranks.get(adapter_set.split(":")[0], self.rank)
        return replace(self, rank=r, alpha=self.alpha * r / self.rank, task_ranks={})

    def to_dict(self) -> dict:
        d = {**asdict(self), "targets": list(self.targets)}
        if not self.per_task:  # shared adapters: the very dict checkpoints held before per_task existed
            del d["per_task"]
        if not self.task_ranks:  # likewise for one rank for all
            del d["task_ranks"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        known = ("rank", "alpha", "targets", "dropout", "per_task", "task_ranks")
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise LoraError(f"unknown LoRA setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**d)


def parse_targets(value) -> list[str]:
    """lora_targets as a list of names: from a list, or "query,value" as typed on the command line."""
    names = [t.strip() for t in value.split(",")] if isinstance(value, str) else list(value or [])
    names = [t for t in names if t != ""]
    if not names or not all(isinstance(t, str) and t in WHERE for t in names) or len(set(names)) != len(names):
        raise LoraError(f"setting lora_targets={value!r} is not allowed; allowed values: one or more (no repeats) "
                        f"of {', '.join(TARGETS)}")
    return [t for t in TARGETS if t in names]  # one order, whatever the order typed


class LoraAdapter(nn.Module):
    """One adapted weight's low-rank update: (alpha/r) B A dropout(x)."""

    def __init__(self, d_in: int, d_out: int, cfg: LoraConfig):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, cfg.rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init, as in the paper's loralib
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = cfg.scale

    def forward(self, x):  # (..., in) -> (..., out)
        x = x.to(self.lora_A.dtype)  # a bf16 encoder (mtbert/quantize.py) with fp32 adapters
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    def delta_weight(self) -> torch.Tensor:  # (out, in)
        return (self.lora_B @ self.lora_A) * self.scale


# The task each per-task Lora encodes for, by id(lora), set by task_adapters. A context variable, not
# an attribute: one cached model answers several Streamlit sessions' threads at once, each its own task.
_ACTIVE: ContextVar[dict] = ContextVar("mtbert_lora_task", default={})


class Lora(nn.Module):
    """The adapters of every layer, trained and saved with the model: `layers[i][target]`, or with
    per_task `tasks[task].layers[i][target]` for each of `tasks`."""

    def __init__(self, encoder, cfg: LoraConfig, tasks: list[str] = ()):
        super().__init__()
        self.cfg = cfg
        H, I = encoder.config.hidden_size, encoder.config.intermediate_size
        shape = {"query": (H, H), "key": (H, H), "value": (H, H), "attention_output": (H, H),
                 "intermediate": (H, I), "output": (I, H)}  # (in, out)

        def layers(cfg):
            return nn.ModuleList(nn.ModuleDict({t: LoraAdapter(*shape[t], cfg) for t in cfg.targets})
                                 for _ in encoder.layers)
        if cfg.per_task:
            if not tasks:
                raise LoraError("setting lora_per_task=true needs the model's tasks, one set of adapters each")
            unknown = sorted(set(cfg.task_ranks) - {t.split(":")[0] for t in tasks})
            if unknown:
                raise LoraError(f"setting lora_task_ranks names {', '.join(unknown)}, not a task of this model; "
                                f"allowed values: task=rank for tasks {', '.join(dict.fromkeys(t.split(':')[0] for t in tasks))}")
            self.tasks = nn.ModuleDict({t: nn.ModuleDict({"layers": layers(cfg.for_set(t))}) for t in tasks})
        else:
            self.layers = layers(cfg)

    @property
    def active_task(self) -> str | None:
        return _ACTIVE.get().get(id(self))

    def layer(self, i: int) -> nn.ModuleDict:
        """Layer i's adapters for the inputs being encoded now."""
        if not self.cfg.per_task:
            return self.layers[i]
        task = self.active_task
        if task is None:
            raise LoraError("this model has one set of LoRA adapters per task (lora_per_task=true), and its encoder "
                            "ran with no task chosen, so no adapter set applies; encode through the task's forward "
                            "(model.output, loss, predict or embed(enc, task)) or inside task_adapters(model, task) "
                            f"with one of its tasks: {', '.join(self.tasks)}")
        return self.tasks[task]["layers"][i]


@contextmanager
def task_adapters(model, task: str | None):
    """Inside the block, a model with per-task adapters encodes with `task`'s. A no-op for task None
    (an enclosing block's task stays) and for a model without per-task adapters."""
    lora = lora_of(model)
    if task is None or lora is None or not lora.cfg.per_task:
        yield
        return
    if task not in lora.tasks:
        raise LoraError(f"task={task!r} has no LoRA adapters in this model; allowed values: {', '.join(lora.tasks)}")
    token = _ACTIVE.set({**_ACTIVE.get(), id(lora): task})
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def per_task_adapters(model) -> bool:
    """Whether the model's encoder needs a task to run (lora_per_task)."""
    lora = lora_of(model)
    return lora is not None and lora.cfg.per_task


class _Hook:
    """A forward hook adding layer i's adapters to one of its Linear outputs. A plain object holding
    the Lora (not a closure), so that copy.deepcopy of the model (the weight average, inference
    copies) gives the copy hooks on the copy's adapters."""

    def __init__(self, lora: Lora, i: int, parts: list[tuple[str, int | None]]):
        self.lora, self.i, self.parts = lora, i, parts

    def __call__(self, module, args, out):
        x, adapters = args[0], self.lora.layer(self.i)
        if self.parts[0][1] is None:  # one adapter over the whole output
            return out + adapters[self.parts[0][0]](x).to(out.dtype)
        third = out.size(-1) // 3
        chosen = dict((i, t) for t, i in self.parts)
        delta = [adapters[chosen[i]](x).to(out.dtype) if i in chosen else out.new_zeros(*out.shape[:-1], third)
                 for i in range(3)]
        return out + torch.cat(delta, dim=-1)


def add_lora(model, cfg: LoraConfig) -> Lora:
    """Attach adapters to a MultitaskBert's encoder (on its device): `model.lora`, hooked into its Linear
    layers; with cfg.per_task one set for each of the model's tasks. The encoder's own weights are left
    as they are (the trainer freezes them)."""
    if lora_of(model) is not None:
        raise LoraError("this model already has LoRA adapters")
    device = next(model.encoder.parameters()).device
    lora = Lora(model.encoder, cfg, model.adapter_sets()).to(device).train(model.training)  # dropout as the model's
    model.lora = lora  # a submodule: moved, averaged, saved and switched to eval with the model
    attach_hooks(model)
    return lora


def attach_hooks(model) -> None:
    """Hook model.lora into the Linear layers now at the adapted places of the encoder (again, after
    mtbert/quantize.py has swapped them for converted ones)."""
    lora = model.lora
    by_module: dict[str, list] = {}
    for t in lora.cfg.targets:
        path, part = WHERE[t]
        by_module.setdefault(path, []).append((t, part))
    for i, layer in enumerate(model.encoder.layers):
        for path, parts in by_module.items():
            layer.get_submodule(path).register_forward_hook(_Hook(lora, i, parts))


def lora_of(model) -> Lora | None:
    lora = getattr(model, "lora", None)
    return lora if isinstance(lora, Lora) else None


def lora_parameters(model) -> list:
    lora = lora_of(model)
    return list(lora.parameters()) if lora is not None else []


def detach_hooks(encoder) -> None:
    for m in encoder.modules():
        for k in [k for k, h in m._forward_hooks.items() if isinstance(h, _Hook)]:
            del m._forward_hooks[k]


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its base weight (W += (alpha/r) B A, in place) and remove the adapters:
    the model becomes a plain MultitaskBert computing what the adapted one did."""
    lora = lora_of(model)
    if lora is None:
        return model
    if lora.cfg.per_task:
        raise LoraError("this model has one set of LoRA adapters per task (lora_per_task=true): one set of merged "
                        "weights can hold only one of them; keep the adapters (an adapter checkpoint loads "
                        "with load_checkpoint)")
    for layer, adapters in zip(model.encoder.layers, lora.layers):
        for t, adapter in adapters.items():
            path, part = WHERE[t]
            w = layer.get_submodule(path).weight  # (out, in); the fused qkv's rows are [query; key; value]
            rows = w if part is None else w[part * (w.size(0) // 3):(part + 1) * (w.size(0) // 3)]
            rows += adapter.delta_weight().to(w.dtype)
    detach_hooks(model.encoder)
    del model.lora
    return model
