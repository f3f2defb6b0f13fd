"""How the task losses of one step become one gradient: `sum` and PCGrad, with conflict telemetry.

The trainer computes one loss per task (the "parallel" schedule) and hands them over:

    method = make_method("pcgrad", [p for p in model.parameters() if p.requires_grad], seed=0)
    stats = method.backward({"sst": l_sst, "para": l_para, "sts": l_sts})  # sets p.grad
    optimizer.step()

Each method is one small class behind `backward(losses) -> stats` (the LibMTL layout), so a new
method (GradVac, CAGrad, ...) is one more `GradientMethod` subclass with its own `combine`.

Shared vs task-only parameters are found, per step, from which losses reach a parameter
(`torch.autograd.grad(..., allow_unused=True)` returns None for the others):
  shared     used by >= 2 of the present tasks (the encoder; also a layer that only two of the
             three tasks use). In the per-task flat vectors over the shared parameters a task that
             does not use a parameter has zeros there. Treating a subset-shared parameter as
             unshared is the bug of the popular pytorch-pcgrad; we do not.
  task-only  used by one task (its head): it gets that task's gradient, never projected.
  unused     used by no present task: p.grad is set to None, as after
             zero_grad(set_to_none=True) + loss.backward(), so the optimizer skips it.

`backward` OVERWRITES p.grad (it does not accumulate like loss.backward()).

Memory: every task's gradient is copied into one (K, P) buffer over the P entries of the
parameters some present task uses, shared parameters first, in at least float32 (float32 for bf16/fp16 params), so the surgery and
the telemetry are never done in bf16. Peak extra memory is about 2 x K x P floats while the
autograd outputs are copied in (K = 3: ~2.6 GB for bert-base, ~0.5 GB for MiniLM-L6).

Distributed training: `all_reduce(flat)` is applied in place to each task's full flat gradient
(row k of the buffer: one contiguous (P,) float tensor over every parameter some present task
uses, task-only ones included, zeros where task k does not reach) BEFORE the surgery,
so every rank projects the same global gradients with the same generator state and applies the
same update. Averaging is the callable's job (e.g. dist.all_reduce then divide by world size).
Telemetry is computed after the reduction, i.e. on the global gradients. (`sum` with
telemetry=False has no per-task gradients: it reduces the summed one, the same thing since
all_reduce is linear.)

`stats` (plain JSON; floats that are not finite are reported as null):
  grad_norm    {task: ||g_task||} over the shared parameters; over all of the task's parameters
               when nothing is shared (one task, or a frozen encoder).
  cos          {"a/b": cosine(g_a, g_b)} on the shared parameters, pairs in TASKS order restricted
               to the present tasks. {} with one task; ABSENT (no key) with >= 2 tasks and no
               shared parameters (a frozen encoder): a cosine over nothing is not 0.
  conflicts    number of pairs with cos < 0.
  projections  number of projections PCGrad applied (0 for sum).
With telemetry=False only {"projections": n} is returned.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from .tasks import BUILTIN_NAMES as TASKS

AllReduce = Callable[[torch.Tensor], None]


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
    """

    def __init__(self, params: list[nn.Parameter], order: list[int], n_shared: int, n_used: int,
                 K: int, dtype: torch.dtype):
        self.order, self.n_shared_params, self.n_used_params = order, n_shared, n_used
        self.shared, self.own = frozenset(order[:n_shared]), frozenset(order[n_shared:n_used])
        self.start, s = {}, 0
        for pos, i in enumerate(order):
            if pos == n_shared:
                self.n_shared = s
            if pos == n_used:
                self.n_used = s
            self.start[i] = s
            s += params[i].numel()
        if n_shared == len(order):
            self.n_shared = s
        if n_used == len(order):
            self.n_used = s
        device = params[0].device
        self.rows = torch.zeros(K, s, dtype=dtype, device=device)
        self.update = torch.zeros(s, dtype=dtype, device=device)
        self.row_views = [self._views(params, self.rows[k]) for k in range(K)]
        self.update_views = self._views(params, self.update)

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
        return new


class GradientMethod:
    """Per-task gradients -> one gradient in p.grad. Subclasses implement `combine`."""

    name = "?"

    def __init__(self, params, seed: int = 0, telemetry: bool = True, all_reduce: AllReduce | None = None):
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
        self._buf: _Buffers | None = None
        self._k: int | None = None  # tasks in the last step

    # subclasses: (K, P) gradients with the shared columns first, and their (K, K) Gram matrix
    # over the shared columns -> the (P,) update written into `out`; returns the number of projections
    def combine(self, grads: torch.Tensor, n_shared: int, gram: torch.Tensor, out: torch.Tensor) -> int:
        raise NotImplementedError

    def backward(self, losses: dict[str, torch.Tensor]) -> dict:
        tasks = self._check(losses)
        grads, n_shared = self._task_gradients([losses[t] for t in tasks])
        if self.all_reduce is not None:
            for k in range(len(tasks)):
                self.all_reduce(grads[k])  # row k is contiguous: reduced in place
        shared = grads[:, :n_shared]
        # every dot product PCGrad and the telemetry need, in one pass; K x K, so to the CPU
        gram = (shared @ shared.T).double().cpu()
        n_proj = self.combine(grads, n_shared, gram, self._buf.update[:grads.size(1)])
        stats = gradient_stats(grads, gram, tasks, n_shared) if self.telemetry else {}
        stats["projections"] = n_proj
        self._write(self._buf.update_views)
        return stats

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
        self._k = None
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
        for i in self._copied:
            params[i].grad = None
        try:
            for k, loss in enumerate(losses):
                task[0] = k
                buf.rows[k].zero_()
                views = buf.row_views[k]
                for i in self._direct:
                    params[i].grad = views[i]
                # the losses may share part of one graph (one trunk, three heads): keep it until the last
                torch.autograd.backward(loss, inputs=params, retain_graph=k < K - 1)
                for i in self._copied:
                    if params[i].grad is not None:
                        views[i].copy_(params[i].grad)
                        params[i].grad = None
        finally:
            for h in hooks:
                h.remove()
            for p in params:
                p.grad = None
        shared = [i for i, u in enumerate(users) if len(u) >= 2]
        own = [i for i, u in enumerate(users) if len(u) == 1]
        if not buf.matches(shared, own):
            buf = self._buf = buf.relayout(params, shared, own, K)
        self._k = K
        return buf.rows[:K, :buf.n_used], buf.n_shared

    def _write(self, views: list[torch.Tensor]) -> None:
        """p.grad = the parameter's view of `views` (a copy for a bf16 parameter); None if unused."""
        buf = self._buf
        for i in buf.order[:buf.n_used_params]:
            p = self.params[i]
            p.grad = views[i] if p.dtype == views[i].dtype else views[i].to(p.dtype)


class Sum(GradientMethod):
    """The seed: minimise L = sum of task losses; the gradient is g_sst + g_para + g_sts."""

    name = "sum"

    def combine(self, grads, n_shared, gram, out):
        sum_rows(grads, out)
        return 0

    def backward(self, losses):
        if self.telemetry:  # per-task gradients, so that cosines and norms can be reported
            return super().backward(losses)
        tasks = self._check(losses)
        total = sum(losses[t] for t in tasks)
        if self.all_reduce is None:  # one plain backward: autograd's own gradient tensors
            for p in self.params:
                p.grad = None
            torch.autograd.backward(total, inputs=self.params)
            return {"projections": 0}
        # all_reduce is linear, so reducing the summed gradient = summing the reduced ones
        grads, _ = self._task_gradients([total])
        self.all_reduce(grads[0])
        self._write(self._buf.row_views[0])
        return {"projections": 0}


class PCGrad(GradientMethod):
    """Projecting Conflicting Gradients (Yu et al. 2020, Algorithm 1) on the shared parameters.

    Task-only columns have one non-zero row, so summing them gives each head its own gradient.
    The task order is drawn from a torch.Generator seeded with `seed`; its state is in
    state_dict(), so a resumed run draws the same orders.
    """

    name = "pcgrad"

    def __init__(self, params, seed: int = 0, telemetry: bool = True, all_reduce: AllReduce | None = None):
        super().__init__(params, seed, telemetry, all_reduce)
        self.generator = torch.Generator().manual_seed(seed)  # CPU: the orders are tiny

    def combine(self, grads, n_shared, gram, out):
        _, n = pcgrad_project(grads[:, :n_shared], self.generator, gram, out=out[:n_shared])
        sum_rows(grads[:, n_shared:], out[n_shared:])
        return n

    def state_dict(self) -> dict:
        """{"generator": uint8 tensor}: fits trainer_state.safetensors (or .tolist() for JSON)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        gen = state["generator"]
        if not isinstance(gen, torch.Tensor):
            gen = torch.tensor(gen, dtype=torch.uint8)
        self.generator.set_state(gen.to(device="cpu", dtype=torch.uint8))


METHODS: dict[str, type[GradientMethod]] = {"sum": Sum, "pcgrad": PCGrad}


def make_method(name: str, params, seed: int = 0, telemetry: bool = True,
                all_reduce: AllReduce | None = None) -> GradientMethod:
    if name not in METHODS:
        raise ValueError(f"setting gradient_method={name!r} is not allowed; allowed values: {', '.join(METHODS)}")
    return METHODS[name](params, seed=seed, telemetry=telemetry, all_reduce=all_reduce)
