"""IMTL-G: the gradient half of Impartial Multi-Task Learning (Liu et al., ICLR 2021)."""
from __future__ import annotations

import torch

from ..gradients import GradientMethod
from ._solvers import check_finite


class IMTLG(GradientMethod):
    """The weights (summing to 1) for which the update has the same projection on every task's unit
    gradient u_k = g_k / ||g_k||: g . g_k = const * ||g_k|| for all k, i.e. G λ ∝ d with
    d_k = ||g_k||, so λ = G^+ d / sum(G^+ d) (the pseudo-inverse: linearly dependent gradients are
    allowed, as in the generalisation of Quinton and Rey 2024 that torchjd implements). All zeros
    when sum(G^+ d) vanishes.
    """

    name = "imtlg"
    summary = "equal projections of the update on every task's unit gradient (IMTL-G, Liu et al. 2021)"

    def coefficients(self, gram, losses):
        check_finite(gram, self.name)
        v = torch.linalg.pinv(gram) @ gram.diagonal().clamp(min=0).sqrt()
        total = v.sum()
        return (torch.zeros_like(v) if total.abs() < 1e-12 else v / total), 0
