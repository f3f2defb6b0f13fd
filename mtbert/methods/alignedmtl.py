"""Aligned-MTL: independent component alignment (Senushkin et al., CVPR 2023)."""
from __future__ import annotations

import torch

from ..gradients import GradientMethod
from ._solvers import check_finite


class AlignedMTL(GradientMethod):
    """Makes the task gradients orthogonal and of equal norm before averaging them: with the
    eigendecomposition G = V Λ V^T of the Gram matrix (rank r; eigenvalues below
    max(Λ) K machine-epsilon are dropped), the balance transform is B = sqrt(λ_min) V Λ^{-1/2} V^T
    and λ = B (1/K) (mean-based, as torchjd): the aligned gradients' matrix has all its singular
    values equal to sqrt(λ_min), the smallest non-zero one (the paper's Algorithm 1).
    """

    name = "alignedmtl"
    summary = "align the task gradients to equal, orthogonal components (Aligned-MTL, Senushkin et al. 2023)"

    def coefficients(self, gram, losses):
        check_finite(gram, self.name)
        K = gram.size(0)
        mean = torch.full((K,), 1.0 / K, dtype=torch.float64)
        lam, V = torch.linalg.eigh(gram, UPLO="U")
        rank = int((lam > lam.max() * K * torch.finfo(gram.dtype).eps).sum())
        if rank == 0:  # no gradient at all
            return mean, 0
        order = torch.argsort(lam, descending=True)[:rank]
        lam, V = lam[order], V[:, order]
        B = lam[-1].sqrt() * V @ torch.diag(lam.rsqrt()) @ V.T
        return B @ mean, 0
