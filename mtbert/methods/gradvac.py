"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat and Cao, ICLR 2021)."""
from __future__ import annotations

import torch

from ..gradients import AllReduce, GradientMethod, Hyper
from ._solvers import check_finite

EPS = 1e-8  # added to the denominators (torchjd's default)


class GradVac(GradientMethod):
    """For each task i, over the other tasks j in a random order: when the cosine phi_ij between the
    (already corrected) g_i and the original g_j is below its running target phi-hat_ij, add to g_i
    the multiple of g_j that brings the cosine up to the target,

        g_i += ||g_i|| (phi-hat sqrt(1 - phi^2) - phi sqrt(1 - phi-hat^2)) / (||g_j|| sqrt(1 - phi-hat^2)) g_j,

    then phi-hat_ij <- (1 - beta) phi-hat_ij + beta phi_ij (every pair, corrected or not). The
    update is the sum of the corrected gradients. As in PCGrad, every corrected g_i is a
    combination of the original gradients, so the whole loop runs on the Gram matrix.

    State (in state_dict, tensors only): the K x K targets phi-hat, starting at 0 (so the first
    step is PCGrad's projection), and the generator of the orders, seeded with `seed`. The targets
    are kept by task position: they start again from 0 when the number of tasks changes.
    """

    name = "gradvac"
    summary = "raise each pair's gradient cosine to its running average (GradVac, Wang et al. 2021)"
    hyper = {"beta": Hyper(0.01, "EMA rate β of the target cosines",
                           "the weight of the current cosine in each pair's running target phi-hat; the "
                           "paper's 0.01 (torchjd and LibMTL default to 0.5)", low=0.0, high=1.0)}

    def __init__(self, params, seed: int = 0, telemetry: bool = True, all_reduce: AllReduce | None = None,
                 **hyper):
        super().__init__(params, seed, telemetry, all_reduce, **hyper)
        self.generator = torch.Generator().manual_seed(seed)  # CPU: the orders are tiny
        self.phi_hat = torch.zeros(0, 0, dtype=torch.float64)

    def coefficients(self, gram, losses):
        check_finite(gram, self.name)
        K = gram.size(0)
        if self.phi_hat.shape != (K, K):
            self.phi_hat = torch.zeros(K, K, dtype=torch.float64)
        phi_hat, beta = self.phi_hat, self.beta
        C = torch.eye(K, dtype=torch.float64)  # g_i^corrected = C[i] @ grads
        n = 0
        for i in range(K):
            cG = C[i] @ gram  # g_i^corrected . g_j for every j
            others = [j for j in range(K) if j != i]
            for pos in torch.randperm(K - 1, generator=self.generator).tolist():
                j = others[pos]
                norm_i = (cG @ C[i]).clamp(min=0).sqrt()
                norm_j = gram[j, j].clamp(min=0).sqrt()
                phi = cG[j] / (norm_i * norm_j + EPS)
                target = phi_hat[i, j].clone()
                if phi < target:
                    w = (norm_i * (target * (1 - phi * phi).clamp(min=0).sqrt()
                                   - phi * (1 - target * target).clamp(min=0).sqrt())
                         / (norm_j * (1 - target * target).clamp(min=0).sqrt() + EPS))
                    C[i, j] += w
                    cG = cG + w * gram[j]
                    n += 1
                phi_hat[i, j] = (1 - beta) * target + beta * phi
        return C.sum(0), n

    def state_dict(self) -> dict:
        """{"generator": uint8 tensor, "phi_hat": (K, K) float64}: fits a safetensors file."""
        return {"generator": self.generator.get_state(), "phi_hat": self.phi_hat.clone()}

    def load_state_dict(self, state: dict) -> None:
        gen = state["generator"]
        if not isinstance(gen, torch.Tensor):
            gen = torch.tensor(gen, dtype=torch.uint8)
        self.generator.set_state(gen.to(device="cpu", dtype=torch.uint8))
        self.phi_hat = torch.as_tensor(state["phi_hat"], dtype=torch.float64).cpu().clone()
