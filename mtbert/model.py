"""The multitask model: one shared BERT encoder and one head per task definition (mtbert/tasks.py).

What a head computes, by the task's `head`:
  linear            z = W dropout(pool(x))                                  sentence tasks
  concat            z = W dropout([u; v])            u, v: a and b encoded separately
  concat_diff_prod  z = W dropout([u; v; |u-v|; u*v])
  cosine            score = low + (high-low) cos(P u, P v), P hidden->hidden   pair regression
                    (with the cosent loss: low + (high-low) (cos+1)/2, all of [-1, 1] on the range)
  cross             z = W dropout(pool([CLS] a [SEP] b [SEP]))             jointly cross-encoded pair
  cross_concat      z = W dropout([j; u; v; |u-v|; u*v]), j = pool([CLS] a [SEP] b [SEP])
                    the pair read both ways: a cross head's logits plus a concat_diff_prod head's
                    (with lora_per_task the joint read has adapters of its own, as a second model would)
  cosine_cross      score = low + (high-low) (cos(P u, P v) + w dropout(j) + c)      pair regression read both ways
                    the cosine head plus a linear read of the joint encoding; w, c start at 0, so it starts
                    as the cosine head and the joint read learns what the cosine misses. One layer holds both:
                    its first H rows are P, its last row (w, c)
z is K logits (ce), one logit (bce) or, for regression, a score low + (high-low) sigmoid(z).
A task with K members (ModelConfig.members, the setting lora_task_members) has K heads and, with
lora_per_task, K adapter sets: "sts", "sts:2", ..., "sts:K". Each member is trained on the task's loss
of its own output (so they stay independent models), and the task's output is the mean of theirs: an
ensemble inside one checkpoint, whose members differ by their adapters' initialisation and dropout.
The CS224N trio are the built-in definitions: sst linear/ce, para concat/bce, sts cosine/mse
(the seed report's heads), so their numbers are the ones the three fixed heads always gave.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bert import BertModel
from .lora import task_adapters
from .tasks import COSINE_HEADS, TaskError, TaskSpec, builtin_tasks, check_unique, specs_of_model_config

POOLING = ("cls", "mean")
COSENT_SCALE = 20.0  # Su (2022)'s λ
FEATURE_WIDTH = {"linear": 1, "cross": 1, "concat": 2, "concat_diff_prod": 4, "cross_concat": 5}


def joint_read(task: str) -> str:
    """The adapter set (lora_per_task) of the joint read of a task read both ways; no task name holds a ':'."""
    return f"{task}:joint"


def member_name(task: str, m: int) -> str:
    """Member m (1-based) of a task: its head's and its adapter set's name. Member 1 is the task itself, so a
    model with one member per task is the model without members."""
    return task if m == 1 else f"{task}:{m}"


def mean_of_members(outs: list[torch.Tensor]) -> torch.Tensor:
    """A task's output from its members' outputs: the one itself, or their mean."""
    return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)


@dataclass
class ModelConfig:
    pooling: str = "cls"
    dropout: float = 0.1
    tasks: list = None  # TaskSpecs (dicts in JSON); None: the built-in trio with the seed's heads
    # added to a binary task's logit at prediction time only (not in the loss): a decision threshold
    # fitted on dev when the training pairs' label mix differs from the data predicted on
    logit_offsets: dict = field(default_factory=dict)
    members: dict = field(default_factory=dict)  # task -> K > 1 members (heads and adapter sets); others have one
    # pair tasks answered as the mean of their logits over both orders of the pair (symmetric_pairs)
    symmetric: list = field(default_factory=list)

    def __post_init__(self):
        if self.pooling not in POOLING:
            raise ValueError(f"pooling={self.pooling!r} is not allowed; choose one of {', '.join(POOLING)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} is not allowed; choose a value in [0, 1)")
        specs = builtin_tasks() if self.tasks is None else self.tasks
        self.tasks = [s if isinstance(s, TaskSpec) else TaskSpec.from_dict(s) for s in specs]
        check_unique(self.tasks)
        self.logit_offsets = {k: float(v) for k, v in (self.logit_offsets or {}).items()}
        for k, v in self.logit_offsets.items():
            if k not in self.names or not self.task(k).binary or not math.isfinite(v):
                raise ValueError(f"logit_offsets[{k!r}]={v} is not allowed; allowed: a finite number for a "
                                 "binary (bce) task of the model")
        self.members = dict(self.members or {})
        for k, n in list(self.members.items()):
            if k not in self.names or isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"members[{k!r}]={n!r} is not allowed; allowed: an integer >= 1 for a task of the "
                                 f"model ({', '.join(self.names)})")
            if n > 1 and self.task(k).pair_encoding == "both":
                raise ValueError(f"members[{k!r}]={n} is not allowed: task {k} is read both ways (pair_encoding both), "
                                 "which is already two reads of each pair; allowed: 1 for it")
            if n == 1:
                del self.members[k]
        self.symmetric = list(self.symmetric or [])
        for k in self.symmetric:
            if k not in self.names or not self.task(k).is_pair:
                raise ValueError(f"symmetric[{k!r}] is not allowed; allowed: the pair tasks of the model "
                                 f"({', '.join(s.name for s in self.tasks if s.is_pair) or 'none'})")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for s in self.tasks:
            if s.name == name:
                return s
        raise TaskError(f"task={name!r} is not allowed; this model's tasks: {', '.join(self.names)}")

    def both_orders(self, task: str) -> bool:
        """Whether `task` is answered over (a, b) and (b, a) (an order-free pair task)."""
        return task in self.symmetric and self.task(task).is_pair

    def encoding(self, task: str) -> str:
        """How `task` reaches the encoder: joint (cross-encoded pair) or separate."""
        return self.task(task).pair_encoding

    def logit_offset(self, task: str) -> float:
        return self.logit_offsets.get(task, 0.0)

    @property
    def para_logit_offset(self) -> float:  # the Quora threshold, by the name the CS224N tools know it
        return self.logit_offset("para")

    @para_logit_offset.setter
    def para_logit_offset(self, value: float) -> None:
        self.logit_offsets["para"] = float(value)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """A saved model config; one without `tasks` is the built-in trio, its heads set by the old fields."""
        offsets = d.get("logit_offsets") or ({"para": d["para_logit_offset"]} if d.get("para_logit_offset") else {})
        return cls(pooling=d.get("pooling", "cls"), dropout=d.get("dropout", 0.1), tasks=specs_of_model_config(d),
                   logit_offsets=offsets, members=d.get("members") or {}, symmetric=d.get("symmetric") or [])

    def to_dict(self) -> dict:
        d = {"pooling": self.pooling, "dropout": self.dropout, "tasks": [s.to_dict() for s in self.tasks],
             "logit_offsets": dict(self.logit_offsets)}
        if self.members:  # a model without members writes the very dict it did before members existed
            d["members"] = dict(self.members)
        if self.symmetric:  # likewise
            d["symmetric"] = list(self.symmetric)
        return d


def head_shape(spec: TaskSpec, hidden: int) -> tuple[int, int]:
    """(in, out) of a task's linear layer."""
    if spec.head in COSINE_HEADS:  # P; cosine_cross: one more row, the joint read's
        return hidden, hidden + (spec.head == "cosine_cross")
    return FEATURE_WIDTH[spec.head] * hidden, spec.num_outputs


class MultitaskBert(nn.Module):
    def __init__(self, encoder: BertModel, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        H = encoder.config.hidden_size
        self.dropout = nn.Dropout(cfg.dropout)
        self.cosent_scale = COSENT_SCALE  # a training setting (cosent_scale), not part of the saved model
        self.task_heads = nn.ModuleDict()
        # the tasks' own heads, then their further members': a model without members draws the same weights
        for specs in ({s.name: s for s in cfg.tasks}, {n: s for s in cfg.tasks for n in self.members(s.name)[1:]}):
            self.task_heads.update({n: nn.Linear(*head_shape(spec, H)) for n, spec in specs.items()})
            for n, spec in specs.items():
                nn.init.normal_(self.task_heads[n].weight, std=0.02)
                nn.init.zeros_(self.task_heads[n].bias)
                if spec.head in COSINE_HEADS:  # P at the identity: the pretrained embeddings' cosine (and a joint read of 0)
                    nn.init.eye_(self.task_heads[n].weight)

    def heads(self) -> dict[str, nn.Module]:
        return dict(self.task_heads)

    def members(self, task: str) -> list[str]:
        """The names of `task`'s members (heads, adapter sets): [task] unless it has several."""
        return [member_name(task, m) for m in range(1, self.cfg.members.get(task, 1) + 1)]

    def adapter_sets(self) -> list[str]:
        """The names of the LoRA adapter sets with lora_per_task: one per task, one more for the joint
        read of each task read both ways, and one for each further member of a task."""
        return (self.cfg.names + [joint_read(s.name) for s in self.cfg.tasks if s.pair_encoding == "both"]
                + [n for t in self.cfg.names for n in self.members(t)[1:]])

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.cfg.tasks

    # ---- embeddings ------------------------------------------------------------------------

    def embed(self, enc: dict, task: str | None = None) -> torch.Tensor:
        """Pooled sentence embedding, (B, H), of `task`'s inputs: the one encoder call of every task's
        forward, so it is where per-task LoRA adapters (lora_per_task) are chosen."""
        with task_adapters(self, task):
            out = self.encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                               inputs_embeds=enc.get("inputs_embeds"))  # (B, T, H) word pieces, for attributions
        if self.cfg.pooling == "cls":
            return out.last_hidden_state[:, 0]
        m = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)  # (B, T, 1)
        return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1.0)

    def embed_pair(self, batch: dict, task: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """u, v for a separately encoded pair of `task`; both sides go through one encoder call."""
        B = batch["a"]["input_ids"].size(0)
        both = _stack_encodings(batch["a"], batch["b"])
        uv = self.embed(both, task)  # (2B, H)
        return uv[:B], uv[B:]

    # ---- task outputs ----------------------------------------------------------------------

    def output(self, task: str, batch: dict, reads: bool = False):
        """ce: (B, K) logits; bce: (B,) logit; regression: (B,) score (unclipped); for a task with members,
        the mean of theirs. With reads=True (a cross_concat task only): (output, [the joint read's output,
        the separate read's output])."""
        return mean_of_members(self.member_outputs(task, batch, reads))

    def member_outputs(self, task: str, batch: dict, reads: bool = False) -> list:
        """output() of each of the task's members (one item for a task without members)."""
        spec = self.cfg.task(task)
        if reads and spec.head != "cross_concat":
            raise ValueError(f"task {task}: only a cross_concat head reads a pair two ways (its head is {spec.head})")
        if spec.head in ("linear", "cross"):
            return [self._logits_out(spec, self.task_heads[n](self.dropout(self.embed(batch["enc"], n))))
                    for n in self.members(task)]
        j = self.embed(batch["enc"], joint_read(task)) if spec.pair_encoding == "both" else None
        return [self.pair_output(task, *self.embed_pair(batch, n), j, reads=reads, member=n) for n in self.members(task)]

    def pair_output(self, task: str, u: torch.Tensor, v: torch.Tensor, j: torch.Tensor | None = None,
                    reads: bool = False, member: str | None = None):
        """output() of a separately encoded pair task from its sentence embeddings u, v (B, H) (and, for
        a task read both ways, the pooled joint encoding j (B, H)): inference embeds each distinct
        sentence once and gathers them here. `member`: whose head (default: the task's own), for u, v
        embedded with that member's adapters."""
        spec, head = self.cfg.task(task), self.task_heads[member or task]
        if spec.head in COSINE_HEADS:
            lo, hi = spec.range
            H = u.size(-1)
            P, b = head.weight[:H], head.bias[:H]
            cos = F.cosine_similarity(F.linear(u, P, b), F.linear(v, P, b), dim=-1)
            if spec.head == "cosine_cross":
                cos = cos + F.linear(self.dropout(j), head.weight[H:], head.bias[H:]).squeeze(-1)
            # CoSENT only orders the cosines, which then spread over [-1, 1]: clipping at 0 would merge the low ones
            return lo + (hi - lo) * ((cos + 1) / 2 if spec.loss == "cosent" else cos)
        u, v = self.dropout(u), self.dropout(v)
        feats = [u, v] if spec.head == "concat" else [u, v, (u - v).abs(), u * v]
        if spec.head == "cross_concat":
            feats.insert(0, self.dropout(j))
        out = self._logits_out(spec, head(torch.cat(feats, dim=-1)))
        if not reads:
            return out
        # W [j; s] + b = W_j j + W_s s + b: each read's share of the logits, each with the whole bias
        H = j.size(-1)
        parts = [F.linear(feats[0], head.weight[:, :H], head.bias),
                 F.linear(torch.cat(feats[1:], dim=-1), head.weight[:, H:], head.bias)]
        return out, [self._logits_out(spec, z) for z in parts]

    @staticmethod
    def _logits_out(spec: TaskSpec, z: torch.Tensor) -> torch.Tensor:
        if spec.num_outputs > 1:
            return z
        z = z.squeeze(-1)
        if spec.kind == "regression":
            lo, hi = spec.range
            return lo + (hi - lo) * torch.sigmoid(z)
        return z

    # ---- losses ----------------------------------------------------------------------------

    def loss(self, task: str, batch: dict, read_weight: float = 0.0) -> torch.Tensor:
        """The task's loss; with read_weight > 0 on a cross_concat task, plus read_weight x the mean of the
        losses of each read's own logits (deep supervision: each read must answer alone as well)."""
        spec, y = self.cfg.task(task), batch["labels"]
        if spec.loss == "cosine_embedding":  # the seed's STS variant: labels mapped to +-1 at mid-range
            target = torch.where(y.float() >= sum(spec.range) / 2, 1.0, -1.0)
            losses = [F.cosine_embedding_loss(*(self.task_heads[n](x) for x in self.embed_pair(batch, n)), target)
                      for n in self.members(task)]
            return sum(losses) / len(losses)
        return self._loss_and_output(task, batch, read_weight)[0]

    def _loss_and_output(self, task: str, batch: dict, read_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        y = batch["labels"]
        if not (read_weight and self.cfg.task(task).head == "cross_concat"):
            # each member answers for itself (the mean of their losses, not the loss of their mean), so
            # the members stay independent models, as an ensemble's do
            outs = self.member_outputs(task, batch)
            loss = sum(self.loss_of(task, o, y) for o in outs) / len(outs)
            return loss, mean_of_members(outs)
        out, parts = self.output(task, batch, reads=True)
        read_loss = sum(self.loss_of(task, p, y) for p in parts) / len(parts)
        return self.loss_of(task, out, y) + read_weight * read_loss, out

    def loss_of(self, task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's loss of an output() (every loss but cosine_embedding, which works on the embeddings)."""
        spec = self.cfg.task(task)
        if spec.loss == "ce":
            return F.cross_entropy(out, y)
        if spec.loss == "bce":
            return F.binary_cross_entropy_with_logits(out, y.float())
        if spec.loss == "cosent":
            lo, hi = spec.range
            return cosent_loss(2 * (out.float() - lo) / (hi - lo) - 1, y, self.cosent_scale)
        if spec.loss == "cosine_embedding":
            raise ValueError(f"task {task}: the cosine_embedding loss is not computed from a prediction "
                             "(it is not allowed with rdrop_alpha > 0)")
        return F.mse_loss(out.float(), y.float())

    def rdrop_loss(self, task: str, batch: dict, alpha: float, read_weight: float = 0.0) -> torch.Tensor:
        """R-Drop (Liang et al. 2021): two passes with independent dropout, the mean of their task losses
        plus alpha x the divergence of the two predictions: ½(KL(p1‖p2) + KL(p2‖p1)) of the class
        distributions (softmax for ce, Bernoulli for bce), (s1 - s2)² of a regression score; each a mean
        over the batch. This is half the paper's objective (it sums the two task losses), so the paper's
        α = 4 is alpha = 2 here."""
        (l1, out1), (l2, out2) = (self._loss_and_output(task, batch, read_weight) for _ in range(2))
        return (l1 + l2) / 2 + alpha * prediction_divergence(self.cfg.task(task), out1.float(), out2.float())

    # ---- predictions -----------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, task: str, batch: dict) -> torch.Tensor:
        """ce: class probabilities (B, K); bce: probability of class 1 (offset applied); regression: the
        score clipped to the task's range."""
        return self.finish(task, self.output(task, batch))

    def finish(self, task: str, out: torch.Tensor) -> torch.Tensor:
        """predict() from output()."""
        spec = self.cfg.task(task)
        if spec.loss == "ce":
            return out.softmax(-1)
        if spec.binary:
            return torch.sigmoid(out + self.cfg.logit_offset(task))
        return out.clamp(*spec.range)


def cosent_loss(cos: torch.Tensor, y: torch.Tensor, scale: float = COSENT_SCALE) -> torch.Tensor:
    """CoSENT (Su 2022): log(1 + Σ_{y_i > y_j} exp(λ (cos_j − cos_i))) over the batch's pairs of pairs: a
    pair rated more similar should have the larger cosine. Only the labels' order matters."""
    diff = scale * (cos[None, :] - cos[:, None])  # (i, j): λ (cos_j - cos_i)
    y = y.float()
    terms = diff[y[:, None] > y[None, :]]
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)  # the 0 is log(1)


def prediction_divergence(spec: TaskSpec, out1: torch.Tensor, out2: torch.Tensor) -> torch.Tensor:
    """R-Drop's term between two output()s of one batch: the symmetric KL of the predicted distributions
    (classification), the squared difference of the scores (regression); a mean over the batch."""
    if spec.kind == "regression":
        return F.mse_loss(out1, out2)
    if spec.num_outputs > 1:
        lp, lq = out1.log_softmax(-1), out2.log_softmax(-1)
    else:  # one logit z: the distribution (1 - σ(z), σ(z)) = softmax([0, z])
        lp = torch.stack([F.logsigmoid(-out1), F.logsigmoid(out1)], dim=-1)
        lq = torch.stack([F.logsigmoid(-out2), F.logsigmoid(out2)], dim=-1)
    kl_pq = (lp.exp() * (lp - lq)).sum(-1)
    kl_qp = (lq.exp() * (lq - lp)).sum(-1)
    return 0.5 * (kl_pq + kl_qp).mean()


ENCODING_KEYS = ("input_ids", "attention_mask", "token_type_ids", "inputs_embeds")


def _stack_encodings(a: dict, b: dict) -> dict:
    """Concatenate two padded encodings along the batch, padding the shorter one (along T; the
    optional inputs_embeds (B, T, H) too)."""
    T = max(a["input_ids"].size(1), b["input_ids"].size(1))

    def pad(x):  # (B, t, *rest) -> (B, T, *rest)
        return F.pad(x, (0, 0) * (x.dim() - 2) + (0, T - x.size(1)))

    return {k: torch.cat([pad(a[k]), pad(b[k])]) for k in ENCODING_KEYS if k in a or k in b}
