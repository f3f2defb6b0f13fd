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
                   gram: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """PCGrad on (K, P) task gradients: (sum_i g_i^PC of shape (P,), number of projections).

    Task i visits the others in the order of torch.randperm(K, generator=order_generator), one
    permutation per task, drawn for i = 0..K-1 whatever the gradients, so the generator's stream
    depends only on the number of steps. `gram` (grads @ grads.T) may be passed to reuse it.
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
        return sum_rows(grads), 0
    return C.sum(0).to(device=grads.device, dtype=grads.dtype) @ grads, n


def sum_rows(grads: torch.Tensor) -> torch.Tensor:
    """g_0 + g_1 + ..., added in that order."""
    total = grads[0].clone()
    for k in range(1, grads.size(0)):
        total.add_(grads[k])
    return total


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

    # subclasses: (K, P) gradients with the shared columns first, and their (K, K) Gram matrix
    # over the shared columns -> ((P,) update, number of projections)
    def combine(self, grads: torch.Tensor, n_shared: int, gram: torch.Tensor) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def backward(self, losses: dict[str, torch.Tensor]) -> dict:
        tasks = self._check(losses)
        grads, layout, n_shared = self._task_gradients([losses[t] for t in tasks])
        if self.all_reduce is not None:
            for k in range(len(tasks)):
                self.all_reduce(grads[k])  # row k is contiguous: reduced in place
        shared = grads[:, :n_shared]
        # every dot product PCGrad and the telemetry need, in one pass; K x K, so to the CPU
        gram = (shared @ shared.T).double().cpu()
        update, n_proj = self.combine(grads, n_shared, gram)
        stats = gradient_stats(grads, gram, tasks, n_shared) if self.telemetry else {}
        stats["projections"] = n_proj
        del grads
        self._write(update, layout)
        return stats

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

    def _task_gradients(self, losses: list[torch.Tensor]):
        """(K, P) flat gradients, shared parameters' columns first; layout [(param index, start, numel)]."""
        K = len(losses)
        per_task = [torch.autograd.grad(loss, self.params, retain_graph=k < K - 1, allow_unused=True)
                    for k, loss in enumerate(losses)]
        users = [[k for k in range(K) if per_task[k][i] is not None] for i in range(len(self.params))]
        shared = [i for i, u in enumerate(users) if len(u) >= 2]
        own = [i for i, u in enumerate(users) if len(u) == 1]
        layout, start = [], 0
        for i in shared + own:
            layout.append((i, start, self.params[i].numel()))
            start += self.params[i].numel()
        n_shared = sum(self.params[i].numel() for i in shared)
        grads = torch.empty(K, start, dtype=self.dtype, device=self.params[0].device)
        for k in range(K):
            for i, s, n in layout:
                g = per_task[k][i]
                if g is None:  # a task that does not use a parameter has zeros there
                    grads[k, s:s + n].zero_()
                else:
                    grads[k, s:s + n] = g.reshape(-1)
            per_task[k] = None  # free the autograd outputs as we go
        return grads, layout, n_shared

    def _write(self, update: torch.Tensor, layout) -> None:
        for p in self.params:
            p.grad = None
        for i, s, n in layout:
            p = self.params[i]
            p.grad = update[s:s + n].view(p.shape).to(p.dtype)


class Sum(GradientMethod):
    """The seed: minimise L = sum of task losses; the gradient is g_sst + g_para + g_sts."""

    name = "sum"

    def combine(self, grads, n_shared, gram):
        return sum_rows(grads), 0

    def backward(self, losses):
        if self.telemetry:  # per-task gradients, so that cosines and norms can be reported
            return super().backward(losses)
        tasks = self._check(losses)
        for p in self.params:
            p.grad = None
        sum(losses[t] for t in tasks).backward()
        if self.all_reduce is not None:
            # all_reduce is linear, so reducing the summed gradient = summing the reduced ones
            have = [p for p in self.params if p.grad is not None]
            flat = torch.cat([p.grad.reshape(-1).to(self.dtype) for p in have])
            self.all_reduce(flat)
            s = 0
            for p in have:
                p.grad.copy_(flat[s:s + p.numel()].view(p.shape))
                s += p.numel()
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

    def combine(self, grads, n_shared, gram):
        shared, n = pcgrad_project(grads[:, :n_shared], self.generator, gram)
        return torch.cat([shared, sum_rows(grads[:, n_shared:])]), n

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
