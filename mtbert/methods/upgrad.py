"""UPGrad: unconflicting projection of gradients (Quinton and Rey 2024, "Jacobian descent for
multi-objective optimization")."""
from __future__ import annotations

import numpy as np
import torch

from ..gradients import GradientMethod, Hyper
from ._solvers import check_finite, lower_bound_projection, trace_normalise


class UPGrad(GradientMethod):
    """Each task's gradient, weighted 1/K, is projected onto the dual cone of the task gradients
    {d : g_k . d >= 0 for all k}, and the projections are added: the update conflicts with no
    task. In weights (Proposition 1 of the paper) projecting sum_k u_k g_k gives sum_k v_k g_k
    with v = argmin v^T G v subject to v >= u; with u = e_i / K for each task i, λ = sum_i v^(i).
    As in the paper's implementation (torchjd), G is divided by its trace (left as 0 when the trace is
    below norm_eps: then λ is the mean) and reg_eps I is added to make it positive definite; each
    projection is an exact NNLS. The number of projections counts the tasks whose gradient was
    outside the cone.
    """

    name = "upgrad"
    summary = "project each task gradient onto the cone of non-conflicting directions (UPGrad, Quinton and Rey 2024)"
    hyper = {
        "norm_eps": Hyper(1e-4, "smallest Gram trace that is normalised",
                          "below this total squared gradient norm the Gram matrix is not normalised and "
                          "the update is the mean gradient (the paper's 1e-4)", low=0.0),
        "reg_eps": Hyper(1e-4, "ridge added to the normalised Gram",
                         "added to the diagonal of the trace-normalised Gram matrix so that it is positive "
                         "definite (the paper's 1e-4)", low=0.0, low_open=True),
    }

    def coefficients(self, gram, losses):
        check_finite(gram, self.name)
        K = gram.size(0)
        G = (trace_normalise(gram, self.norm_eps) + self.reg_eps * torch.eye(K, dtype=torch.float64)).numpy()
        G = (G + G.T) / 2
        weights, n = np.zeros(K), 0
        for i in range(K):
            u = np.zeros(K)
            u[i] = 1.0 / K
            v = lower_bound_projection(G, u)
            n += bool((v > u).any())
            weights += v
        return torch.from_numpy(weights), n
