"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""
from __future__ import annotations

import torch

from ..gradients import GradientMethod, Hyper
from ._solvers import check_finite, nash_weights

RIDGE = 1e-8  # added to the normalised Gram's diagonal when G a = 1/a has no solution


class NashMTL(GradientMethod):
    """The Nash bargaining solution: a > 0 with G a = 1/a, i.e. every task's improvement g_k . d
    times its weight a_k is 1 (the update d = sum_k a_k g_k maximises sum_k log(g_k . d) on a
    ball). As in the official code and torchjd, G is first divided by its Frobenius norm (the
    weights do not depend on the gradients' scale), and the update is scaled down to norm max_norm
    when it is longer. a is found exactly (damped Newton on a^T G a / 2 - sum log a) instead of by
    the official sequence of convex programs; with linearly dependent, opposed gradients (no
    solution) a tiny ridge is added to G. The official `update_weights_every` saves the solve, not
    the per-task gradients, so it is not offered.
    """

    name = "nashmtl"
    summary = "the Nash bargaining solution among the task gradients (Nash-MTL, Navon et al. 2022)"
    hyper = {"max_norm": Hyper(1.0, "largest norm of the update",
                               "the update on the shared parameters is scaled down to this norm when "
                               "longer (the paper's 1); 0 turns the scaling off", low=0.0)}

    def coefficients(self, gram, losses):
        check_finite(gram, self.name)
        K = gram.size(0)
        scale = torch.linalg.matrix_norm(gram)
        if scale == 0:
            return torch.zeros(K, dtype=torch.float64), 0
        a = nash_weights(gram / scale)
        if a is None:
            a = nash_weights(gram / scale + RIDGE * torch.eye(K, dtype=torch.float64))
        norm = max(float(a @ gram @ a), 0.0) ** 0.5
        if self.max_norm > 0 and norm > self.max_norm:
            a = a * (self.max_norm / norm)
        return a, 0
