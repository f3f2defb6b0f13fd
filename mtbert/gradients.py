"""How the task losses of one step become one gradient: `sum` and PCGrad, with conflict telemetry.

The trainer computes one loss per task (the "parallel" schedule) and hands them over:

    method = make_method("pcgrad", [p for p in model.parameters() if p.requires_grad], seed=0)
    stats = method.backward({"sst": l_sst, "para": l_para, "sts": l_sts})  # sets p.grad
    optimizer.step()

Each method is one small class behind `backward(losses) -> stats` (the LibMTL layout), so a new
method (GradVac, CAGrad, ...) is one more `GradientMethod` subclass with its own `coefficients`:
the K x K Gram matrix of the task gradients in, the weights of the task gradients out (PCGrad's
projected gradients, too, are a combination of the original ones).

Shared vs task-only parameters are found, per step, from which losses reach a parameter (the
ones whose accumulator a task's backward runs, i.e. those for which
`torch.autograd.grad(..., allow_unused=True)` would not return None):
  shared     used by >= 2 of the present tasks (the encoder; also a layer that only two of the
             three tasks use). In the per-task flat vectors over the shared parameters a task that
             does not use a parameter has zeros there. Treating a subset-shared parameter as
             unshared is the bug of the popular pytorch-pcgrad; we do not.
  task-only  used by one task (its head): it gets that task's gradient, never projected.
  unused     used by no present task: p.grad is set to None, as after
             zero_grad(set_to_none=True) + loss.backward(), so the optimizer skips it.

`backward` OVERWRITES p.grad (it does not accumulate like loss.backward()).

How, at about the price of one backward (the tasks' batches are separate, so K backward passes
do the arithmetic of one):
- One (K, P) buffer over the P entries of the parameters, shared ones first, in at least float32
  (float32 for bf16/fp16 params: the surgery and the telemetry are never done in bf16), kept from
  step to step; it is re-allocated only when K grows or the shared / task-only / unused split
  changes. Before task k's backward every p.grad is pointed at its view of row k, zeroed, and
  autograd accumulates straight into it (a bf16 parameter's gradient is copied in: a .grad must
  have its parameter's dtype).
- The update is written into one kept (P,) buffer, and p.grad are left as views of it.
- Nothing else of size P is allocated per step; the K x K Gram matrix is the one thing that goes
  to the host.
- A table that the tasks reach through embedding lookups only (the word embeddings: half of
  MiniLM's weights) is non-zero in the looked-up rows only. Those rows are read off each task's
  graph, and the zeroing, the Gram matrix and the combination touch them alone (on a CPU; on a
  GPU full passes are cheaper than finding the rows).
- retain_graph only for a graph that a later task's backward still goes through.
Memory kept between steps: (K + 1) x P floats (K = 3, float32: 1.8 GB for bert-base, 0.37 GB for
MiniLM-L6), of which P replace the gradients a plain backward makes anyway.

Distributed training: `all_reduce(flat)` is applied in place to each task's full flat gradient
(row k of the buffer: one contiguous (P,) float tensor over every parameter some present task
uses, task-only ones included, zeros where task k does not reach) BEFORE the surgery,
so every rank projects the same global gradients with the same generator state and applies the
same update. Averaging is the callable's job (e.g. dist.all_reduce then divide by world size).
Telemetry is computed after the reduction, i.e. on the global gradients. (`sum` with
telemetry=False has no per-task gradients: it reduces the summed one, the same thing since
all_reduce is linear.) Under all_reduce the looked-up-rows shortcut is off: the rows other ranks
looked up are not known here, so every table is zeroed and multiplied in full.

`stats` (plain JSON; floats that are not finite are reported as null):
  grad_norm    {task: ||g_task||} over the shared parameters; over all of the task's parameters
               when nothing is shared (one task, or a frozen encoder).
  cos          {"a/b": cosine(g_a, g_b)} on the shared parameters, pairs in TASKS order restricted
               to the present tasks. {} with one task; ABSENT (no key) with >= 2 tasks and no
               shared parameters (a frozen encoder): a cosine over nothing is not 0.
  conflicts    number of pairs with cos < 0.
  projections  number of projections PCGrad applied (0 for sum).
  weights      {task: λ_k}: the update on the shared parameters is Σ_k λ_k g_k (1 for every task with
               sum; PCGrad's are the column sums of its coefficient matrix: projecting g_i off a
               conflicting g_j adds a positive multiple of g_j, so every λ_k >= 1).
With telemetry=False only {"projections": n, "weights": ...} is returned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .tasks import BUILTIN_NAMES as TASKS

AllReduce = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class Hyper:
    """A method's hyperparameter, declared once: TrainConfig's setting <method>_<key>, its `--help`
    and its check are made from this."""
    default: float
    label: str
    help: str
    low: float | None = None  # bounds (None: none); *_open: the bound itself is refused
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def allows(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if self.integer and v != int(v):
            return False
        return ((self.low is None or v > self.low or (v == self.low and not self.low_open))
                and (self.high is None or v < self.high or (v == self.high and not self.high_open)))

    def describe(self, name: str) -> str:
        lo = "" if self.low is None else f"{self.low:g} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" {'<' if self.high_open else '<='} {self.high:g}"
        return ("an integer, " if self.integer else "a number, ") + f"{lo}{name}{hi}"

# a table (2-D parameter) smaller than this is zeroed and multiplied in full even when only a few of
# its rows are looked up: a full pass over 4 MB takes well under a millisecond, and the Gram matrix
# and the update keep the summation order of one matrix product (the position embeddings of a BERT
# stay there; the word embeddings, 30522 x 384 in MiniLM, do not)
TABLE_MIN_SIZE = 1 << 20
# columns per pass of the Gram matrix and the combination: K rows of this many float32 (1.5 MB for
# K = 3) stay in cache between the two, so a method whose weights do not depend on the Gram matrix
# reads the (K, P) rows from memory once for both
CHUNK = 1 << 17


# ---- the surgery, on plain (K, P) tensors ----------------------------------------------------
#
# Algorithm 1 of Yu et al. 2020, for each task i, over the other tasks j in a random order:
#     if g_i^PC . g_j < 0:   g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j
# always against the ORIGINAL g_j (as in the paper and its reference code), then sum_i g_i^PC.
# Since every step subtracts a multiple of an original g_j, g_i^PC = sum_m C[i, m] g_m stays a
# combination of the original gradients, and every dot product it needs is one of the Gram matrix
# G G^T:  g_i^PC . g_j = C[i] . gram[:, j].  So the surgery runs on K x K numbers and the P-sized
# vectors are touched twice (the Gram matrix, then (sum_i C[i]) @ G), instead of once per
# projection: about 2x faster on a CPU for MiniLM-sized gradients (3 x 21M).

def pcgrad_coefficients(gram: torch.Tensor, orders: list[list[int]]) -> tuple[torch.Tensor, int]:
    """C (K, K) with g_i^PC = C[i] @ grads, and the number of projections applied.

    gram: (K, K) = grads @ grads.T; orders[i]: the order in which task i visits the others.
    """
    gram = gram.detach().double().cpu()
    K = gram.size(0)
    C = torch.eye(K, dtype=torch.float64)
    n = 0
    for i in range(K):
        for j in orders[i]:
            if j == i:  # g_i . g_i >= 0: never a conflict; skip it explicitly anyway
                continue
            dot = C[i] @ gram[:, j]  # g_i^PC . g_j
            if dot < 0:  # then ||g_j|| > 0, or the dot product would be 0
                C[i, j] -= dot / gram[j, j]
                n += 1
    return C, n


def pcgrad_project(grads: torch.Tensor, order_generator: torch.Generator,
                   gram: torch.Tensor | None = None, out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """PCGrad on (K, P) task gradients: (sum_i g_i^PC of shape (P,), number of projections).

    Task i visits the others in the order of torch.randperm(K, generator=order_generator), one
    permutation per task, drawn for i = 0..K-1 whatever the gradients, so the generator's stream
    depends only on the number of steps. `gram` (grads @ grads.T) may be passed to reuse it; the
    result is written into `out` when given.
    The result is the SUM of the projected gradients (there is no `reduction` option: the
    pytorch-pcgrad one is silently ignored), matching the summed loss of the `sum` method; with
    no projection it is exactly sum_rows(grads), the `sum` method's gradient.
    """
    K = grads.size(0)
    orders = [torch.randperm(K, generator=order_generator).tolist() for _ in range(K)]
    if gram is None:
        gram = grads @ grads.T
    C, n = pcgrad_coefficients(gram, orders)
    if n == 0:
        return sum_rows(grads, out), 0
    c = C.sum(0).to(device=grads.device, dtype=grads.dtype)
    if out is None:
        return c @ grads, n
    return torch.matmul(c.unsqueeze(0), grads, out=out.unsqueeze(0)).squeeze(0), n


def sum_rows(grads: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """g_0 + g_1 + ..., added in that order (into `out` when given)."""
    K = grads.size(0)
    if out is None:
        return grads[0].clone() if K == 1 else sum_rows(grads, torch.empty_like(grads[0]))
    if K == 1:
        return out.copy_(grads[0])
    torch.add(grads[0], grads[1], out=out)
    for k in range(2, K):
        out.add_(grads[k])
    return out


def gradient_stats(grads: torch.Tensor, gram: torch.Tensor, tasks: list[str], n_shared: int) -> dict:
    """Telemetry of (K, P) task gradients whose first n_shared columns are the shared parameters;
    gram (float64, CPU) is their Gram matrix over the shared columns."""
    shared = n_shared > 0
    if shared:
        norms = gram.diagonal().clamp(min=0).sqrt()
    else:  # nothing shared: each task's norm over its own parameters (the other rows are zeros)
        norms = torch.linalg.vector_norm(grads, dim=1).double()
    stats: dict = {"grad_norm": {t: _finite(norms[k]) for k, t in enumerate(tasks)}}
    cos: dict = {}
    if shared or len(tasks) < 2:
        for a in range(len(tasks)):
            for b in range(a + 1, len(tasks)):
                # same eps rule as F.cosine_similarity: a zero gradient has cosine 0 with anything
                c = gram[a, b] / (norms[a].clamp(min=1e-8) * norms[b].clamp(min=1e-8))
                c = c.clamp(-1.0, 1.0)  # float32 Gram entries can overshoot by an ulp
                cos[f"{tasks[a]}/{tasks[b]}"] = _finite(c)
        stats["cos"] = cos
    stats["conflicts"] = sum(1 for c in cos.values() if c is not None and c < 0)
    return stats


def _finite(x: torch.Tensor) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None  # strict JSON has no NaN/Infinity


def order_tasks(names) -> list[str]:
    """The present tasks in TASKS order; any other name after them, in the given order."""
    names = list(names)
    return [t for t in TASKS if t in names] + [t for t in names if t not in TASKS]


# ---- methods ----------------------------------------------------------------------------------

class _Buffers:
    """The (K, P) rows of the task gradients and the (P,) update, with one view per parameter.

    Columns: `order` lists parameter indices, the shared ones first, then the task-only ones, then
    the unused ones, so that row k[:n_used] is one contiguous vector and [:, :n_shared] the shared
    block. The views are made once, so pointing p.grad at row k costs no allocation.
    `clean[k]`: {parameter index: the rows of its (V, H) table that may be non-zero in row k};
    every other entry of such a table is known to be 0, so zeroing it touches those rows only.
    """

    def __init__(self, params: list[nn.Parameter], order: list[int], n_shared: int, n_used: int,
                 K: int, dtype: torch.dtype):
        self.order, self.n_shared_params, self.n_used_params = order, n_shared, n_used
        self.shared, self.own = frozenset(order[:n_shared]), frozenset(order[n_shared:n_used])
        self.start, s = {}, 0
        self.n_shared = self.n_used = None
        for pos, i in enumerate(order):
            if pos == n_shared:
                self.n_shared = s
            if pos == n_used:
                self.n_used = s
            self.start[i] = s
            s += params[i].numel()
        self.n_shared = s if self.n_shared is None else self.n_shared
        self.n_used = s if self.n_used is None else self.n_used
        device = params[0].device
        self.rows = torch.zeros(K, s, dtype=dtype, device=device)
        self.update = torch.zeros(s, dtype=dtype, device=device)
        self.row_views = [self._views(params, self.rows[k]) for k in range(K)]
        self.update_views = self._views(params, self.update)
        self.clean: list[dict[int, torch.Tensor]] = [{} for _ in range(K)]

    def _views(self, params, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[self.start[i]:self.start[i] + p.numel()].view(p.shape) for i, p in enumerate(params)]

    def matches(self, shared: list[int], own: list[int]) -> bool:
        return self.shared == frozenset(shared) and self.own == frozenset(own)

    def relayout(self, params, shared: list[int], own: list[int], K: int) -> "_Buffers":
        """New buffers for a new classification, the first K rows carried over (a one-off copy)."""
        used = set(shared) | set(own)
        rest = [i for i in range(len(params)) if i not in used]
        new = _Buffers(params, shared + own + rest, len(shared), len(used), self.rows.size(0), self.rows.dtype)
        for i in used:
            n = params[i].numel()
            new.rows[:K, new.start[i]:new.start[i] + n] = self.rows[:K, self.start[i]:self.start[i] + n]
        new.clean = [{i: r for i, r in c.items() if i in used} for c in self.clean[:K]] + new.clean[K:]
        return new

    def zero_row(self, k: int) -> None:
        """Row k back to 0: the tables of clean[k] only in their listed rows, the rest in full."""
        row, clean, a = self.rows[k], self.clean[k], 0
        for i in sorted(clean, key=self.start.get):
            view = self.row_views[k][i]
            row[a:self.start[i]].zero_()
            if clean[i].numel():
                view.index_fill_(0, clean[i], 0)
            a = self.start[i] + view.numel()
        row[a:].zero_()
        self.clean[k] = {}


def walk_graph(loss: torch.Tensor, tables: dict[nn.Parameter, int]
               ) -> tuple[set, dict[int, torch.Tensor | None]]:
    """What one backward of `loss` will do, read off its graph before it runs (a few hundred nodes
    for a BERT forward: well under a millisecond):

    - the graph's nodes (parameters' AccumulateGrad nodes left out), to tell whether another
      loss's backward still needs them (retain_graph);
    - for each parameter of `tables` ({parameter: index}) that `loss` reaches: the rows its gradient
      can be non-zero in, when every path into it is an embedding lookup (the rows looked up, as
      autograd saved them), or None when some other operation uses it too (a tied output layer).
    """
    found: dict[int, list[torch.Tensor] | None] = {}
    if loss.grad_fn is None:
        return set(), {}
    seen, stack = {loss.grad_fn}, [loss.grad_fn]
    by_id = {id(p): i for p, i in tables.items()}
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None or nxt in seen:
                continue
            var = getattr(nxt, "variable", None)
            if var is None:  # an operation, not a parameter's accumulator
                seen.add(nxt)
                stack.append(nxt)
            elif id(var) in by_id:
                i = by_id[id(var)]
                ids = _looked_up(node) if found.get(i, []) is not None else None
                found[i] = None if ids is None else found.get(i, []) + [ids]
    return seen, {i: None if ids is None else torch.unique(torch.cat(ids)) for i, ids in found.items()}


def _looked_up(node) -> torch.Tensor | None:
    """The indices an embedding lookup's backward scatters into, or None for any other operation
    (or a lookup whose saved indices cannot be read): then the whole table is treated as dense."""
    if node.name() != "EmbeddingBackward0":
        return None
    try:
        return node._saved_indices.reshape(-1)
    except (AttributeError, RuntimeError):
        return None


class GradientMethod:
    """Per-task gradients -> one gradient in p.grad. Subclasses implement `coefficients`."""

    name = "?"
    summary = ""  # one line for --help and the Train form: what the method does
    hyper: dict[str, Hyper] = {}  # its hyperparameters: settings <name>_<key> of TrainConfig
    uses_losses = False  # coefficients() reads the (global) loss values
    needs_gram = True  # coefficients() reads the Gram matrix: per-task gradients even without telemetry
    weights_heads = False  # the task-only parameters (heads) get λ_k g_k too, not their plain g_k

    def __init__(self, params, seed: int = 0, telemetry: bool = True, all_reduce: AllReduce | None = None,
                 tasks=None, **hyper):
        # tasks: the names trained; a method that keeps one weight per task (the loss weightings) fixes
        # them here, the others need nothing of them
        unknown = sorted(set(hyper) - set(self.hyper))
        if unknown:
            raise ValueError(f"{self.name} has no hyperparameter {', '.join(unknown)}; "
                             f"its hyperparameters: {', '.join(self.hyper) or 'none'}")
        for key, h in self.hyper.items():
            value = hyper.get(key, h.default)
            if not h.allows(value):
                raise ValueError(f"setting {self.name}_{key}={value!r} is not allowed; allowed values: "
                                 f"{h.describe(f'{self.name}_{key}')}")
            setattr(self, key, value)
        seen: set[int] = set()
        self.params: list[nn.Parameter] = []
        for p in params:  # frozen params cannot be differentiated; tied ones must be written once
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                self.params.append(p)
        if not self.params:
            raise ValueError("params is empty: the gradient method needs at least one trainable parameter")
        self.seed = seed
        self.telemetry = telemetry
        self.all_reduce = all_reduce
        # float32 at least: bf16 dot products over millions of entries are not trustworthy
        self.dtype = torch.float32
        for p in self.params:
            self.dtype = torch.promote_types(self.dtype, p.dtype)
        # a .grad must have its parameter's dtype: the others (bf16 ones) are copied into their row
        self._direct = [i for i, p in enumerate(self.params) if p.dtype == self.dtype]
        self._copied = [i for i, p in enumerate(self.params) if p.dtype != self.dtype]
        # tables whose gradient may be row-sparse (word embeddings). Under all_reduce the other ranks'
        # rows are unknown here; on a GPU a full pass costs microseconds, while counting the looked-up
        # rows would wait for the device: there every table is treated as dense.
        self._tables = {} if all_reduce is not None or self.params[0].device.type != "cpu" else {
            self.params[i]: i for i in self._direct
            if self.params[i].dim() == 2 and self.params[i].numel() >= TABLE_MIN_SIZE}
        self._buf: _Buffers | None = None
        self._k: int | None = None  # tasks in the last step
        self._sparse: dict[int, torch.Tensor] = {}  # this step's row-sparse shared tables: index -> rows

    # subclasses: the (K, K) Gram matrix of the task gradients over the shared parameters (float64,
    # CPU; None when needs_gram is False and no telemetry is asked for) and, when uses_losses, the
    # (K,) task losses (float64, CPU, averaged over the ranks under DDP) -> (c, n): the update on the
    # shared parameters is sum_k c[k] g_k (c = None: the plain sum, added in task order), n the number
    # of projections. Task-only parameters get their plain gradient, or c[k] g_k with weights_heads.
    # Tasks come in order_tasks() order; a stateful method keys its state by position.
    def coefficients(self, gram: torch.Tensor | None, losses: torch.Tensor | None
                     ) -> tuple[torch.Tensor | None, int]:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        """Learned weighting parameters (uncertainty weighting's log-variances, ...): the trainer puts
        them in an optimizer group of their own; backward() sets their .grad."""
        return []

    def backward(self, losses: dict[str, torch.Tensor]) -> dict:
        tasks = self._check(losses)
        values = self._global_losses(losses, tasks) if self.uses_losses else None
        if not self.needs_gram and not self.telemetry:
            return self._weighted_backward(losses, tasks, values)
        grads, n_shared = self._task_gradients([losses[t] for t in tasks])
        if self.all_reduce is not None:
            for k in range(len(tasks)):
                self.all_reduce(grads[k])  # row k is contiguous: reduced in place
        if self.needs_gram:
            gram = self._gram(grads, n_shared)  # every dot product the methods and the telemetry need
            c, n_proj = self.coefficients(gram, values)
        else:  # the weights come first, so the Gram matrix (telemetry) and the update share one pass
            c, n_proj = self.coefficients(None, values)
            gram = self._gram(grads, n_shared, c, self._buf.update[:grads.size(1)])
        stats = gradient_stats(grads, gram, tasks, n_shared) if self.telemetry else {}
        stats["projections"] = n_proj
        # the update on the shared parameters is sum_k weights[k] g_k: what the method made of each task
        stats["weights"] = {t: 1.0 if c is None else float(c[k]) for k, t in enumerate(tasks)}
        if self.needs_gram:
            self._combine(grads, n_shared, c, self._buf.update[:grads.size(1)])
        self._write(self._buf.update_views)
        return stats

    def _global_losses(self, losses: dict, tasks: list[str]) -> torch.Tensor:
        """(K,) float64 on the CPU: the task losses, averaged over the ranks under DDP (so that every
        rank's loss-based state follows the global batch)."""
        values = torch.stack([losses[t].detach() for t in tasks])
        values = values.to(torch.promote_types(values.dtype, torch.float32))  # never reduced in bf16
        if self.all_reduce is not None:
            self.all_reduce(values)
        return values.double().cpu()

    def _weighted_backward(self, losses: dict, tasks: list[str], values: torch.Tensor | None) -> dict:
        """One backward of sum_k c_k L_k (a loss-weighting method without telemetry: no per-task
        gradients at all)."""
        c, n = self.coefficients(None, values)
        weights = [1.0] * len(tasks) if c is None else [float(x) for x in c]
        total = sum(w * losses[t] for w, t in zip(weights, tasks))
        if self.all_reduce is None:  # one plain backward: autograd's own gradient tensors
            for p in self.params:
                p.grad = None
            torch.autograd.backward(total, inputs=self.params)
        else:  # all_reduce is linear, so reducing the weighted sum = weighting the reduced gradients
            grads, _ = self._task_gradients([total])
            self.all_reduce(grads[0])
            self._write(self._buf.row_views[0])
        return {"projections": n, "weights": dict(zip(tasks, weights))}

    @property
    def grads(self) -> torch.Tensor | None:
        """The last step's (K, P) task gradients (all-reduced), shared columns first; None before the
        first step. Columns past the shared ones are the task-only parameters', in `layout` order."""
        b = self._buf
        return None if b is None or self._k is None else b.rows[:self._k, :b.n_used]

    @property
    def layout(self) -> list[tuple[nn.Parameter, int, int]]:
        """(parameter, first column, number of columns) of every used parameter, in column order."""
        b = self._buf
        return [] if b is None else [(self.params[i], b.start[i], self.params[i].numel())
                                     for i in b.order[:b.n_used_params]]

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers this method keeps between steps (0 before the first step)."""
        b = self._buf
        return 0 if b is None else b.rows.nbytes + b.update.nbytes

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # ---- helpers ------------------------------------------------------------------------------

    def _check(self, losses: dict) -> list[str]:
        if not losses:
            raise ValueError("losses is empty: pass one scalar loss per trained task")
        for t, loss in losses.items():
            if loss.dim() != 0:
                raise ValueError(f"loss for task {t!r} has shape {tuple(loss.shape)}; it must be a scalar")
            if not loss.requires_grad:
                raise ValueError(f"loss for task {t!r} does not depend on any trainable parameter")
        return order_tasks(losses)

    def _task_gradients(self, losses: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Runs one backward per loss, each accumulating into its own zeroed row of the buffer
        through p.grad views. Returns the (K, P) rows over the used parameters (shared columns
        first) and the number of shared columns."""
        K, params = len(losses), self.params
        self._k, self._sparse = None, {}
        buf = self._buf
        if buf is None or buf.rows.size(0) < K:
            order = buf.order if buf else list(range(len(params)))
            n_shared, n_used = (buf.n_shared_params, buf.n_used_params) if buf else (0, len(params))
            buf = self._buf = _Buffers(params, order, n_shared, n_used, K, self.dtype)
        # who reaches whom, as autograd sees it: a parameter's AccumulateGrad runs in task k's
        # backward exactly when torch.autograd.grad would not have returned None for it
        users: list[set[int]] = [set() for _ in params]
        task = [0]
        hooks = [p.register_post_accumulate_grad_hook(lambda _, u=users[i]: u.add(task[0]))
                 for i, p in enumerate(params)]
        walks = [walk_graph(loss, self._tables) for loss in losses]
        looked_up = [rows for _, rows in walks]
        # a graph is freed by its backward unless a later loss's backward goes through part of it
        # (one trunk forward, three heads)
        retain, later = [False] * K, set()
        for k in reversed(range(K)):
            retain[k] = not walks[k][0].isdisjoint(later)
            later |= walks[k][0]
        del walks, later
        for i in self._copied:
            params[i].grad = None
        try:
            for k, loss in enumerate(losses):
                task[0] = k
                buf.zero_row(k)
                views = buf.row_views[k]
                for i in self._direct:
                    params[i].grad = views[i]
                torch.autograd.backward(loss, inputs=params, retain_graph=retain[k])
                for i in self._copied:
                    if params[i].grad is not None:
                        views[i].copy_(params[i].grad)
                        params[i].grad = None
                # a table reached by lookups only is now non-zero in the looked-up rows alone
                empty = torch.empty(0, dtype=torch.long, device=buf.rows.device)
                buf.clean[k] = {i: looked_up[k].get(i, empty) for i in self._tables.values()
                                if looked_up[k].get(i, empty) is not None}
        except BaseException:
            buf.clean = [{} for _ in buf.clean]  # a backward stopped half-way: zero in full next time
            raise
        finally:
            for h in hooks:
                h.remove()
            for p in params:
                p.grad = None
        shared = [i for i, u in enumerate(users) if len(u) >= 2]
        own = [i for i, u in enumerate(users) if len(u) == 1]
        if not buf.matches(shared, own):
            buf = self._buf = buf.relayout(params, shared, own, K)
        for i in shared:  # a table every task reached by lookups only (or not at all)
            if all(i in buf.clean[k] for k in range(K)):
                rows = torch.unique(torch.cat([buf.clean[k][i] for k in range(K)]))
                if 2 * rows.numel() < params[i].size(0):  # worth it when most rows are 0
                    self._sparse[i] = rows
        self._k = K
        return buf.rows[:K, :buf.n_used], buf.n_shared

    def _segments(self, lo: int, hi: int) -> tuple[list[tuple[int, int]], list[tuple[int, torch.Tensor]]]:
        """Columns [lo, hi) split into dense ranges and the row-sparse tables in between."""
        buf, dense, tables, a = self._buf, [], [], lo
        for i in sorted(self._sparse, key=buf.start.get):
            s = buf.start[i]
            if lo <= s < hi:
                if s > a:
                    dense.append((a, s))
                tables.append((i, self._sparse[i]))
                a = s + self.params[i].numel()
        if hi > a:
            dense.append((a, hi))
        return dense, tables

    def _table_rows(self, grads: torch.Tensor, i: int, rows: torch.Tensor) -> torch.Tensor:
        """(K, len(rows) * H): the looked-up rows of table i in every task's gradient."""
        s, (V, H) = self._buf.start[i], self.params[i].shape
        # advanced indexing: index_select along dim 1 of this strided view is ~100x slower on a CPU
        return grads[:, s:s + V * H].view(-1, V, H)[:, rows].reshape(grads.size(0), -1)

    def _gram(self, grads: torch.Tensor, n_shared: int, c: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """(K, K) float64 on the CPU, over the shared columns; a row-sparse table contributes its
        looked-up rows only (the others are 0 in every task's gradient). With `out`, also the update
        of `_combine(grads, n_shared, c, out)`, chunk by chunk while each chunk is in cache."""
        dense, tables = self._segments(0, n_shared)
        gram = torch.zeros(grads.size(0), grads.size(0), dtype=torch.float64, device=grads.device)
        cc = None if c is None else c.to(device=grads.device, dtype=grads.dtype).unsqueeze(0)
        for a, b in dense:  # on a GPU one launch per segment: chunks there would cost launches
            step = CHUNK if grads.device.type == "cpu" else max(b - a, 1)
            for lo in range(a, b, step):
                x = grads[:, lo:min(lo + step, b)]
                gram += (x @ x.T).double()
                if out is not None:
                    self._combine_dense(x, cc, out[lo:lo + x.size(1)])
        for i, rows in tables:
            x = self._table_rows(grads, i, rows)
            gram += (x @ x.T).double()
            if out is not None:
                self._combine_table(x, i, rows, cc)
        if out is not None:
            self._combine_own(grads, n_shared, cc, out)
        return gram.cpu()

    def _combine(self, grads: torch.Tensor, n_shared: int, c: torch.Tensor | None, out: torch.Tensor) -> None:
        """out = sum_k c[k] g_k on the shared columns (the plain sum for c = None), the plain sum on
        the task-only ones."""
        cc = None if c is None else c.to(device=grads.device, dtype=grads.dtype).unsqueeze(0)
        dense, tables = self._segments(0, n_shared)
        for a, b in dense:
            self._combine_dense(grads[:, a:b], cc, out[a:b])
        for i, rows in tables:
            self._combine_table(self._table_rows(grads, i, rows), i, rows, cc)
        self._combine_own(grads, n_shared, cc, out)

    @staticmethod
    def _combine_dense(x: torch.Tensor, c: torch.Tensor | None, out: torch.Tensor) -> None:
        if c is None:
            sum_rows(x, out)
        else:
            torch.matmul(c, x, out=out.unsqueeze(0))

    def _combine_table(self, part: torch.Tensor, i: int, rows: torch.Tensor, c: torch.Tensor | None) -> None:
        view = self._buf.update_views[i]
        view.zero_()
        view.index_copy_(0, rows, (sum_rows(part) if c is None else (c @ part).squeeze(0)).view(len(rows), -1))

    def _combine_own(self, grads: torch.Tensor, n_shared: int, c: torch.Tensor | None, out: torch.Tensor) -> None:
        if c is not None and self.weights_heads:  # each task-only column has one non-zero row
            torch.matmul(c, grads[:, n_shared:], out=out[n_shared:].unsqueeze(0))
        else:
            sum_rows(grads[:, n_shared:], out[n_shared:])

    def _write(self, views: list[torch.Tensor]) -> None:
        """p.grad = the parameter's view of `views` (a copy for a bf16 parameter); None if unused."""
        buf = self._buf
        for i in buf.order[:buf.n_used_params]:
            p = self.params[i]
            p.grad = views[i] if p.dtype == views[i].dtype else views[i].to(p.dtype)


class Sum(GradientMethod):
    """The seed: minimise L = sum of task losses; the gradient is g_sst + g_para + g_sts."""

    name = "sum"
    summary = "add the task losses (equal weights)"
    needs_gram = False

    def coefficients(self, gram, losses):
        return None, 0


class PCGrad(GradientMethod):
    """Projecting Conflicting Gradients (Yu et al. 2020, Algorithm 1) on the shared parameters.

    Task-only columns have one non-zero row, so summing them gives each head its own gradient.
    The task order is drawn from a torch.Generator seeded with `seed`; its state is in
    state_dict(), so a resumed run draws the same orders (as pcgrad_project draws them).
    """

    name = "pcgrad"
    summary = "project away the conflicting parts of the task gradients (Yu et al. 2020)"

    def __init__(self, params, seed: int = 0, telemetry: bool = True, all_reduce: AllReduce | None = None,
                 **hyper):
        super().__init__(params, seed, telemetry, all_reduce, **hyper)
        self.generator = torch.Generator().manual_seed(seed)  # CPU: the orders are tiny

    def coefficients(self, gram, losses):
        K = gram.size(0)
        orders = [torch.randperm(K, generator=self.generator).tolist() for _ in range(K)]
        C, n = pcgrad_coefficients(gram, orders)
        return (C.sum(0) if n else None), n

    def state_dict(self) -> dict:
        """{"generator": uint8 tensor}: fits trainer_state.safetensors (or .tolist() for JSON)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        gen = state["generator"]
        if not isinstance(gen, torch.Tensor):
            gen = torch.tensor(gen, dtype=torch.uint8)
        self.generator.set_state(gen.to(device="cpu", dtype=torch.uint8))
