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

Memory: every task's gradient is copied into one (K, P) buffer over all trainable parameters,
shared parameters first, in at least float32 (float32 for bf16/fp16 params), so the surgery and
the telemetry are never done in bf16. Peak extra memory is about 2 x K x P floats while the
autograd outputs are copied in (K = 3: ~2.6 GB for bert-base, ~0.5 GB for MiniLM-L6).

Distributed training: `all_reduce(flat)` is applied in place to each task's full flat gradient
(one (P,) float tensor over all trainable parameters, row k of the buffer) BEFORE the surgery,
so every rank projects the same global gradients with the same generator state and applies the
same update. Averaging is the callable's job (e.g. dist.all_reduce then divide by world size).
Telemetry is computed after the reduction, i.e. on the global gradients.

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

from .model import TASKS

AllReduce = Callable[[torch.Tensor], None]


# ---- the surgery, on plain (K, P) tensors ----------------------------------------------------

def project_task(grads: torch.Tensor, i: int, order: list[int]) -> tuple[torch.Tensor, int]:
    """g_i^PC: task i's gradient projected, in `order`, off each ORIGINAL g_j it conflicts with.

    grads: (K, P), one flat gradient per task. Algorithm 1 of Yu et al. 2020: when
    g_i^PC . g_j < 0, g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j. Always against the
    original g_j (not g_j^PC), as in the paper and its reference code.
    Returns (g_i^PC of shape (P,), number of projections applied).
    """
    g = grads[i].clone()
    n = 0
    for j in order:
        if j == i:  # g_i . g_i >= 0: never a conflict; skip it explicitly anyway
            continue
        dot = torch.dot(g, grads[j])
        if dot < 0:  # ||g_j|| > 0 here, or the dot product would be 0
            g.sub_(grads[j], alpha=(dot / grads[j].dot(grads[j])).item())
            n += 1
    return g, n


def pcgrad_project(grads: torch.Tensor, order_generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """PCGrad on (K, P) task gradients: (sum_i g_i^PC of shape (P,), number of projections).

    For each task i (in order 0..K-1) one permutation torch.randperm(K, generator=order_generator)
    is drawn and the other tasks are visited in that order; K permutations are drawn per call
    whatever the gradients, so the generator's stream depends only on the number of steps.
    The result is the SUM of the projected gradients (there is no `reduction` option: the
    pytorch-pcgrad one is silently ignored), matching the summed loss of the `sum` method; with
    no conflict it is exactly g_0 + g_1 + ... (same additions in the same order as `sum`).
    """
    total, n_total = None, 0
    for i in range(grads.size(0)):
        order = torch.randperm(grads.size(0), generator=order_generator).tolist()
        g, n = project_task(grads, i, order)
        total = g if total is None else total.add_(g)
        n_total += n
    if total is None:  # no task
        total = grads.new_zeros(grads.size(1))
    return total, n_total


def sum_rows(grads: torch.Tensor) -> torch.Tensor:
    """g_0 + g_1 + ... in that order (the same float additions as pcgrad_project without conflicts)."""
    total = grads[0].clone()
    for k in range(1, grads.size(0)):
        total.add_(grads[k])
    return total


def gradient_stats(grads: torch.Tensor, tasks: list[str], n_shared: int) -> dict:
    """Telemetry of (K, P) task gradients whose first n_shared columns are the shared parameters."""
    shared = n_shared > 0
    G = grads[:, :n_shared] if shared else grads
    gram = (G @ G.T).double()  # (K, K); float64 from here on so the cosines stay in [-1, 1]
    norms = gram.diagonal().clamp(min=0).sqrt()
    stats: dict = {"grad_norm": {t: _finite(norms[k]) for k, t in enumerate(tasks)}}
    cos: dict = {}
    if shared or len(tasks) < 2:
        for a in range(len(tasks)):
            for b in range(a + 1, len(tasks)):
                # same eps rule as F.cosine_similarity: a zero gradient has cosine 0 with anything
                c = gram[a, b] / (norms[a].clamp(min=1e-8) * norms[b].clamp(min=1e-8))
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

    # subclasses: (K, P) gradients, shared columns first -> ((P,) update, number of projections)
    def combine(self, grads: torch.Tensor, n_shared: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def backward(self, losses: dict[str, torch.Tensor]) -> dict:
        tasks = self._check(losses)
        grads, layout, n_shared = self._task_gradients([losses[t] for t in tasks])
        if self.all_reduce is not None:
            for k in range(len(tasks)):
                self.all_reduce(grads[k])  # row k is contiguous: reduced in place
        update, n_proj = self.combine(grads, n_shared)
        stats = gradient_stats(grads, tasks, n_shared) if self.telemetry else {}
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
        """(K, P) flat gradients, shared parameters' columns first; layout [(param, start, users)]."""
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
        grads = torch.zeros(K, start, dtype=self.dtype, device=self.params[0].device)
        for k in range(K):
            for i, s, n in layout:
                g = per_task[k][i]
                if g is not None:  # a task that does not use a parameter keeps zeros there
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

    def combine(self, grads, n_shared):
        return sum_rows(grads), 0

    def backward(self, losses):
        if self.telemetry:  # per-task gradients, so that cosines and norms can be reported
            return super().backward(losses)
        tasks = self._check(losses)
        for p in self.params:
            p.grad = None
        torch.stack([losses[t].to(self.dtype) for t in tasks]).sum().backward()
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

    def combine(self, grads, n_shared):
        shared, n = pcgrad_project(grads[:, :n_shared], self.generator)
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
        raise ValueError(f"gradient_method={name!r} is not allowed; choose one of {', '.join(METHODS)}")
    return METHODS[name](params, seed=seed, telemetry=telemetry, all_reduce=all_reduce)
