"""Data parallelism over torch.distributed, started by `torchrun --nproc-per-node N -m mtbert train …`.

Every rank holds the whole model and takes its slice of each step's global batch. Gradients are
averaged across ranks per task, before the gradient method runs, so PCGrad's surgery sees the
global task gradients and every rank applies the same update. (That is the all-reduce DDP does;
it is done here per task because DDP's hooks only ever see the already-summed gradient.)
"""
from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    """(rank, world_size); starts the process group when torchrun asked for more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def local_device(kind: str) -> torch.device:
    if kind == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(kind)


def average_(t: torch.Tensor) -> None:
    """In-place mean over ranks: the hook handed to the gradient method."""
    dist.all_reduce(t)
    t.div_(dist.get_world_size())


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop request seen by one rank stops all)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_model(model: torch.nn.Module) -> None:
    for p in model.state_dict().values():
        dist.broadcast(p, src=0)


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown(clean: bool = True) -> None:
    """Ends the process group. After a clean run every rank first waits for the others, so that none
    tears its connections down while a peer still holds them (a rank that failed cannot be waited for);
    the backend's threads then end here rather than in the interpreter's teardown."""
    if dist.is_initialized():
        if clean and active():
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()
