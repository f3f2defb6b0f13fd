"""CAGrad: Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone and Liu, NeurIPS 2021)."""
from __future__ import annotations

from ..gradients import GradientMethod, Hyper
from ._solvers import cagrad_weights, check_finite, trace_normalise

# ||g_w|| below this, in units of the gradients' total norm: a Pareto-stationary point, no update
# (torchjd's norm_eps)
STATIONARY = 1e-4


class CAGrad(GradientMethod):
    """The update d maximises the worst task's improvement min_k g_k . d within a ball around the
    mean gradient g_0, ||d - g_0|| <= c ||g_0||. By duality d = g_0 + (c ||g_0|| / ||g_w||) g_w, where
    g_w = sum_k w_k g_k with w on the simplex minimising g_w . g_0 + c ||g_0|| ||g_w||; in weights,
    λ = 1/K + (c ||g_0|| / ||g_w||) w (mean-based, as torchjd; the official code divides by 1 + c^2
    on top). The Gram matrix is first divided by its trace (the weights do not depend on the
    gradients' scale), and w is found exactly (see _solvers.cagrad_weights). c = 0 is the mean.
    """

    name = "cagrad"
    summary = "the best worst-task improvement near the mean gradient (CAGrad, Liu et al. 2021)"
    hyper = {"c": Hyper(0.5, "radius c of the ball around the mean gradient",
                        "0 is the plain mean gradient; larger trades the average improvement for the "
                        "worst task's (the paper's 0.5)", low=0.0)}

    def coefficients(self, gram, losses):
        check_finite(gram, self.name)
        return cagrad_weights(trace_normalise(gram, 0.0), self.c, STATIONARY), 0
