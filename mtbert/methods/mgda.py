"""MGDA: the multiple-gradient descent algorithm (Désidéri 2012; for deep multitask learning,
Sener and Koltun, NeurIPS 2018)."""
from __future__ import annotations

from ..gradients import GradientMethod
from ._solvers import check_finite, min_norm_weights


class MGDA(GradientMethod):
    """The min-norm point of the convex hull of the task gradients: λ on the simplex minimising
    λ^T G λ = ||sum_k λ_k g_k||^2. Its negative is a descent direction for every task (or it is 0
    at a Pareto-stationary point). Solved exactly (an active-set NNLS on the Gram matrix) rather
    than with the Frank-Wolfe iterations of Sener and Koltun's Algorithm 2, which torchjd runs
    (its epsilon and max_iters are that solver's stopping rule): no hyperparameters here.
    """

    name = "mgda"
    summary = "the min-norm point of the convex hull of the task gradients (MGDA, Sener and Koltun 2018)"

    def coefficients(self, gram, losses):
        check_finite(gram, self.name)
        return min_norm_weights(gram), 0
