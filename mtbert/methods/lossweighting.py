"""Loss-weighting methods: each step's task weights come from the task losses (and, for GradNorm, the
task gradients' norms), and the update is the gradient of sum_k c_k L_k, heads included.

    uw        uncertainty weighting (Kendall et al. 2018): learned log-variances s_k
    dwa       Dynamic Weight Average (Liu et al. 2019): the loss ratio of the last two windows
    rlw       Random Loss Weighting (Lin et al. 2021): softmax of a standard normal draw per step
    gradnorm  GradNorm (Chen et al. 2018): learned weights that equalise the gradient norms' training rates
    famo      FAMO (Liu et al. 2023): logits moved by the change of the log losses between steps

The update rules follow LibMTL (LibMTL/weighting/*.py) and, for FAMO, its authors' code. The weights
are computed from the GLOBAL losses (averaged over the ranks under DDP, see GradientMethod), so every
rank finds the same weights and, for uw and gradnorm, sets the same gradient on the learned weights.

Every method keeps one weight per task, by position in order_tasks() order: the tasks are fixed when
the method is made (`tasks=...`, as the trainer does) or at its first step, and every step must train
all of them (the `parallel` schedule). All state is tensors (state_dict), so a resumed run continues
exactly; learned weights (uw's s, gradnorm's s) are also in the trainer's optimizer at `method_lr`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..gradients import AllReduce, GradientMethod, Hyper, order_tasks

# FAMO's and LibMTL's offset in log(L_k - min_k + eps): keeps a zero loss finite
FAMO_EPS = 1e-8
# LibMTL's initial log-variance (its UW starts every s_k at -0.5: c_k = exp(0.5)/2 = 0.82)
UW_INIT = -0.5


class LossWeighting(GradientMethod):
    """Base of the loss weightings: fixes the task list, checks it at each step, keys state by position.

    Subclasses implement `_setup(K)` (make the per-task state) and `_weights(losses, gram)` -> (K,)
    float64 c, the weights of this step; a learned weight's .grad is set there, from the global losses.
    """

    uses_losses = True
    needs_gram = False
    weights_heads = True  # the heads get c_k g_k: the gradient of sum_k c_k L_k
    learned = False  # parameters() holds weights the trainer's optimizer must step

    def __init__(self, params, seed: int = 0, telemetry: bool = True, all_reduce: AllReduce | None = None,
                 tasks=None, **hyper):
        super().__init__(params, seed, telemetry, all_reduce, **hyper)
        self.tasks: list[str] | None = None
        self.K: int | None = None
        if tasks is not None:
            self._fix_tasks(order_tasks(tasks))

    def _fix_tasks(self, tasks: list[str]) -> None:
        if not tasks:
            raise ValueError(f"{self.name} needs at least one task")
        if self.K is None:
            self.K = len(tasks)
            self._setup(self.K)
        elif self.K != len(tasks):  # state restored before the names were known
            raise ValueError(f"{self.name} holds weights for {self.K} task(s); this run trains {len(tasks)}: "
                             f"{', '.join(tasks)}")
        self.tasks = tasks

    def backward(self, losses: dict[str, torch.Tensor]) -> dict:
        present = self._check(losses)
        if self.tasks is None:
            self._fix_tasks(present)
        elif present != self.tasks:
            raise ValueError(f"{self.name} keeps one weight per task of {', '.join(self.tasks)}: every step must "
                             f"train all of them (schedule='parallel'); this step has {', '.join(present)}")
        return super().backward(losses)

    def coefficients(self, gram, losses):
        return self._weights(losses, gram), 0

    def parameters(self) -> list[nn.Parameter]:
        if not self.learned:
            return []
        if self.K is None:
            raise ValueError(f"{self.name} learns one weight per task: make it with tasks=[...] so that the "
                             "optimizer gets its weights before the first step")
        return self._learned()

    def _setup(self, K: int) -> None:
        raise NotImplementedError

    def _weights(self, losses: torch.Tensor, gram: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _learned(self) -> list[nn.Parameter]:
        return []

    def _restore_k(self, state: dict, key: str) -> None:
        """load_state_dict before any step or task list: the state's shape tells K."""
        if self.K is None:
            self.K = int(state[key].shape[-1])
            self._setup(self.K)
        elif state[key].shape[-1] != self.K:
            raise ValueError(f"{self.name}'s saved state holds {state[key].shape[-1]} task weight(s); "
                             f"this run trains {self.K} task(s)")


def _set_grad(p: nn.Parameter, grad: torch.Tensor) -> None:
    p.grad = grad.to(device=p.device, dtype=p.dtype)


def _copy_into(p: torch.Tensor, value) -> None:
    with torch.no_grad():
        p.copy_(torch.as_tensor(value).to(device=p.device, dtype=p.dtype))


class UncertaintyWeighting(LossWeighting):
    """Kendall et al. 2018 in LibMTL's form: L = sum_k (exp(-s_k) L_k + s_k) / 2, s_k = log sigma_k^2
    learned (starting at -0.5). The model's gradient is sum_k c_k g_k with c_k = exp(-s_k)/2; s's gradient
    dL/ds_k = (1 - exp(-s_k) L_k)/2 is set from the global losses, and the trainer's optimizer steps it.
    With one task the gradient is scaled by c (0.82 at the start), not left plain."""

    name = "uw"
    summary = "learned uncertainty weights exp(-s_k)/2 with a log-variance s_k per task (Kendall et al. 2018)"
    learned = True

    def _setup(self, K):
        self.log_var = nn.Parameter(torch.full((K,), UW_INIT))

    def _learned(self):
        return [self.log_var]

    def _weights(self, losses, gram):
        s = self.log_var.detach().double().cpu()
        precision = torch.exp(-s)
        _set_grad(self.log_var, (1.0 - precision * losses) / 2)
        return precision / 2

    def state_dict(self):
        return {} if self.K is None else {"log_var": self.log_var.detach().cpu().clone()}

    def load_state_dict(self, state):
        if "log_var" in state:
            self._restore_k(state, "log_var")
            _copy_into(self.log_var, state["log_var"])


class DynamicWeightAverage(LossWeighting):
    """Liu et al. 2019: c_k = K softmax_k(r_k / T), r_k = Lbar_k(n-1) / Lbar_k(n-2), the ratio of task k's mean
    loss over the last two complete windows of `window` steps (the paper's epochs; a window of steps keeps the
    rule independent of the epoch length and exact on resume). c = 1 until two windows are complete."""

    name = "dwa"
    summary = "weights K softmax(r_k/T) from each task's loss ratio over the last two windows of steps (Liu et al. 2019)"
    hyper = {
        "temperature": Hyper(2.0, "Temperature T", "the softmax temperature; larger is closer to equal weights",
                             low=0.0, low_open=True),
        "window": Hyper(50, "Window (steps)", "the losses are averaged over windows of this many steps (the "
                        "paper's epochs); the weights use the last two complete windows", low=1, integer=True),
    }

    def _setup(self, K):
        self.window_sum = torch.zeros(K, dtype=torch.float64)
        self.window_steps = torch.zeros((), dtype=torch.int64)
        self.history = torch.zeros(2, K, dtype=torch.float64)  # the last two window means, older first
        self.windows = torch.zeros((), dtype=torch.int64)  # complete windows so far

    def _weights(self, losses, gram):
        if self.windows >= 2:
            old, new = self.history
            ratio = torch.where(old > 0, new / old.clamp(min=1e-300), torch.ones_like(new))  # a zero mean has no ratio
            c = self.K * torch.softmax(ratio / self.temperature, dim=0)
        else:
            c = torch.ones(self.K, dtype=torch.float64)
        self.window_sum += losses
        self.window_steps += 1
        if int(self.window_steps) == int(self.window):
            self.history = torch.stack([self.history[1], self.window_sum / self.window_steps])
            self.window_sum = torch.zeros_like(self.window_sum)
            self.window_steps.zero_()
            self.windows += 1
        return c

    def state_dict(self):
        if self.K is None:
            return {}
        return {"window_sum": self.window_sum.clone(), "window_steps": self.window_steps.clone(),
                "history": self.history.clone(), "windows": self.windows.clone()}

    def load_state_dict(self, state):
        if "history" in state:
            self._restore_k(state, "history")
            self.window_sum = state["window_sum"].double().cpu().clone()
            self.window_steps = state["window_steps"].long().cpu().clone()
            self.history = state["history"].double().cpu().clone()
            self.windows = state["windows"].long().cpu().clone()


class RandomLossWeighting(LossWeighting):
    """Lin et al. 2021: c = softmax(z), z ~ N(0, I) drawn afresh each step from a CPU torch.Generator
    seeded with `seed` (never the global RNG; its state is in state_dict). The weights sum to 1, as in the
    paper and LibMTL (sum's add up to K)."""

    name = "rlw"
    summary = "random weights softmax(z), z ~ N(0, I) drawn each step (Lin et al. 2021)"

    def __init__(self, params, seed: int = 0, telemetry: bool = True, all_reduce: AllReduce | None = None,
                 tasks=None, **hyper):
        self.generator = torch.Generator().manual_seed(seed)
        super().__init__(params, seed, telemetry, all_reduce, tasks, **hyper)

    def _setup(self, K):
        pass

    def _weights(self, losses, gram):
        return torch.softmax(torch.randn(self.K, generator=self.generator, dtype=torch.float64), dim=0)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        if "generator" in state:
            self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())


class GradNorm(LossWeighting):
    """Chen et al. 2018, with LibMTL's parametrisation w = K softmax(s) (s learned, starting equal).

    The update is sum_k w_k g_k. GradNorm's loss L_grad = sum_k |G_k - Gbar r_k^alpha|, with G_k = w_k ||g_k||
    over the shared parameters (from the Gram matrix's diagonal: the global gradients), Gbar = mean_k G_k and
    r_k = Lt_k / mean(Lt), Lt_k = L_k(t) / L_k(0) (L_k(0): the first step's loss), the target held constant.
    Its gradient on s, through the softmax, is set here; the trainer's optimizer steps it. With nothing
    shared (a frozen encoder) every G_k is 0 and the weights stay equal."""

    name = "gradnorm"
    summary = "learned weights that balance the task gradients' norms by their training rates (Chen et al. 2018)"
    needs_gram = True
    learned = True
    hyper = {"alpha": Hyper(1.5, "Restoring force α", "how strongly tasks that train slower get larger gradient "
                            "norms; 0 equalises the norms", low=0.0)}

    def _setup(self, K):
        self.logits = nn.Parameter(torch.zeros(K))
        self.initial_losses: torch.Tensor | None = None

    def _learned(self):
        return [self.logits]

    def _weights(self, losses, gram):
        K = self.K
        p = torch.softmax(self.logits.detach().double().cpu(), dim=0)
        w = K * p
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        L0 = self.initial_losses
        rate = torch.where(L0 > 0, losses / L0, torch.ones_like(losses))  # a zero first loss has no rate
        r = rate / rate.mean()
        norms = gram.diagonal().clamp(min=0).sqrt()
        G = w * norms
        target = G.mean() * r ** self.alpha
        dw = torch.sign(G - target) * norms  # d L_grad / d w_k (torch's |x|' at 0 is 0 too)
        _set_grad(self.logits, K * p * (dw - (p * dw).sum()))  # through w = K softmax(s)
        return w

    def state_dict(self):
        if self.K is None:
            return {}
        state = {"logits": self.logits.detach().cpu().clone()}
        if self.initial_losses is not None:
            state["initial_losses"] = self.initial_losses.clone()
        return state

    def load_state_dict(self, state):
        if "logits" in state:
            self._restore_k(state, "logits")
            _copy_into(self.logits, state["logits"])
            self.initial_losses = state["initial_losses"].double().cpu().clone() if "initial_losses" in state else None


class FAMO(LossWeighting):
    """Liu et al. 2023 (the authors' code; min_k = 0): w = softmax(z), D_k = L_k + eps, and the update is
    the gradient of sum_k w_k log(D_k) / C, i.e. c_k = w_k / (C D_k) with C = sum_k w_k / D_k (the c_k sum to 1).

    z is moved by its own Adam (lr `lr`, weight decay `gamma`, as the authors' torch.optim.Adam) on the
    gradient J_softmax(z)^T delta, delta_k = log D_k(t-1) - log D_k(t). As in LibMTL the change is taken
    between consecutive steps' losses (a fresh batch), at the start of step t, before its weights: no extra
    forward pass (the authors recompute step t-1's batch after the update). The Adam state is in state_dict."""

    name = "famo"
    summary = "weights from logits moved by the change of the log losses between steps (Liu et al. 2023)"
    hyper = {
        "lr": Hyper(0.025, "Logits' learning rate", "the learning rate of FAMO's own Adam on the task logits",
                    low=0.0, low_open=True),
        "gamma": Hyper(0.01, "Logits' weight decay γ", "the weight decay of FAMO's Adam on the task logits "
                       "(pulls the weights towards equal)", low=0.0),
    }

    def _setup(self, K):
        self.logits = torch.zeros(K, dtype=torch.float64, requires_grad=True)
        self.opt = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.gamma, foreach=False)
        self.prev_log_losses: torch.Tensor | None = None

    def _weights(self, losses, gram):
        if (losses < 0).any():
            raise ValueError(f"famo needs non-negative task losses (its lower bound is 0); got {losses.tolist()}")
        D = losses + FAMO_EPS
        log_d = D.log()
        if self.prev_log_losses is not None:
            delta = self.prev_log_losses - log_d
            p = torch.softmax(self.logits.detach(), dim=0)
            self.logits.grad = p * (delta - (p * delta).sum())  # J_softmax^T delta
            self.opt.step()
        self.prev_log_losses = log_d
        w = torch.softmax(self.logits.detach(), dim=0)
        return w / D / (w / D).sum()

    def state_dict(self):
        if self.K is None:
            return {}
        state = {"logits": self.logits.detach().clone()}
        if self.prev_log_losses is not None:
            state["prev_log_losses"] = self.prev_log_losses.clone()
        for key, v in self.opt.state.get(self.logits, {}).items():
            state[f"adam_{key}"] = v.detach().clone()
        return state

    def load_state_dict(self, state):
        if "logits" not in state:
            return
        self._restore_k(state, "logits")
        _copy_into(self.logits, state["logits"])
        self.prev_log_losses = state["prev_log_losses"].double().cpu().clone() if "prev_log_losses" in state else None
        adam = {k[len("adam_"):]: v for k, v in state.items() if k.startswith("adam_")}
        self.opt.load_state_dict({"state": {0: adam} if adam else {},
                                  "param_groups": self.opt.state_dict()["param_groups"]})


LOSS_WEIGHTINGS: tuple[type[GradientMethod], ...] = (UncertaintyWeighting, DynamicWeightAverage, RandomLossWeighting,
                                                     GradNorm, FAMO)
