"""A few training steps of every gradient method on a small three-task model, data-parallel or not.

`torchrun --nproc-per-node 2 tests/ddp_methods.py OUT` writes, from rank 0, OUT/<method>.safetensors
with the parameters (and the method's learned weights) after the steps; tests/test_distributed.py
runs the same steps in one process on the global batch and compares.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mtbert.methods import METHODS, make_method  # noqa: E402

STEPS, BATCH = 4, 8  # the global batch of each task; every rank takes BATCH / world of it


class Net(nn.Module):
    """trunk: every task; pair: para and sts only; one head per task."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(6, 8).double()
        self.pair = nn.Linear(8, 8).double()
        self.heads = nn.ModuleDict({"sst": nn.Linear(8, 5), "para": nn.Linear(8, 1), "sts": nn.Linear(8, 1)}).double()

    def losses(self, step: int, part: slice) -> dict:
        g = torch.Generator().manual_seed(100 + step)  # the step's global batch, the same on every rank
        x = {t: torch.randn(BATCH, 6, generator=g, dtype=torch.float64) for t in self.heads}
        y_sst = torch.randint(0, 5, (BATCH,), generator=g)
        y_para = torch.randint(0, 2, (BATCH,), generator=g).double()
        y_sts = 5 * torch.rand(BATCH, generator=g, dtype=torch.float64)
        h = {t: torch.tanh(self.trunk(x[t][part])) for t in x}
        return {"sst": F.cross_entropy(self.heads["sst"](h["sst"]), y_sst[part]),
                "para": F.binary_cross_entropy_with_logits(
                    self.heads["para"](torch.tanh(self.pair(h["para"]))).squeeze(-1), y_para[part]),
                "sts": F.mse_loss(self.heads["sts"](torch.tanh(self.pair(h["sts"]))).squeeze(-1), y_sts[part])}


def train(name: str, rank: int = 0, world: int = 1, all_reduce=None) -> dict[str, torch.Tensor]:
    """The parameters after STEPS steps of plain SGD with method `name` (rank's slice of each batch)."""
    model = Net()
    params = list(model.parameters())
    method = make_method(name, params, seed=3, telemetry=True, all_reduce=all_reduce, tasks=list(model.heads))
    extra = method.parameters()
    opt = torch.optim.SGD([{"params": params}, *([{"params": extra}] if extra else [])], lr=0.1)
    for step in range(STEPS):
        method.backward(model.losses(step, slice(rank, None, world)))
        opt.step()
        opt.zero_grad(set_to_none=True)
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out.update({f"method.{i}": p.detach().clone() for i, p in enumerate(extra)})
    return out


if __name__ == "__main__":
    from safetensors.torch import save_file

    from mtbert.distributed import average_, init, shutdown

    rank, world = init()
    out = Path(sys.argv[1])
    for name in METHODS:
        state = train(name, rank, world, all_reduce=average_)
        if rank == 0:
            save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"{name}.safetensors"))
    shutdown()  # as a training ends: both ranks done with their collectives before the group goes away
