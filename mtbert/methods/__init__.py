"""Every way mtbert turns the task losses of a step into one gradient, by name.

Each method is one small class behind `backward(losses) -> stats` (mtbert/gradients.py has the
base class, the per-task gradient buffers, `sum` and PCGrad). Gradient methods find the task
weights from the K x K Gram matrix of the per-task gradients; loss-weighting methods from the
losses (one backward on the weighted sum when no telemetry is asked for). A method's
hyperparameters are declared on its class (`hyper`) and become the settings <method>_<key>.
"""
from __future__ import annotations

from ..gradients import AllReduce, GradientMethod, Hyper, PCGrad, Sum

__all__ = ["METHODS", "GradientMethod", "Hyper", "make_method", "method_settings"]

# gradient methods: task weights from the Gram matrix of the per-task gradients
from .alignedmtl import AlignedMTL  # noqa: E402 (each family's imports beside its line)
from .cagrad import CAGrad  # noqa: E402
from .gradvac import GradVac  # noqa: E402
from .imtlg import IMTLG  # noqa: E402
from .mgda import MGDA  # noqa: E402
from .nashmtl import NashMTL  # noqa: E402
from .upgrad import UPGrad  # noqa: E402

GRADIENT_METHODS: tuple[type[GradientMethod], ...] = (GradVac, CAGrad, IMTLG, MGDA, NashMTL, AlignedMTL, UPGrad)


# loss-weighting methods: task weights from the losses (one backward on the weighted sum)
from .lossweighting import LOSS_WEIGHTINGS  # noqa: E402  (uw, dwa, rlw, gradnorm, famo)


# in the order --help and the Train form list them
METHODS: dict[str, type[GradientMethod]] = {cls.name: cls for cls in (Sum, PCGrad, *GRADIENT_METHODS,
                                                                       *LOSS_WEIGHTINGS)}


def method_settings() -> dict[str, tuple[str, str, Hyper]]:
    """{setting name: (method, key, declaration)} for every method's hyperparameters."""
    return {f"{name}_{key}": (name, key, h) for name, cls in METHODS.items() for key, h in cls.hyper.items()}


def make_method(name: str, params, seed: int = 0, telemetry: bool = True,
                all_reduce: AllReduce | None = None, **hyper) -> GradientMethod:
    if name not in METHODS:
        raise ValueError(f"setting gradient_method={name!r} is not allowed; allowed values: {', '.join(METHODS)}")
    return METHODS[name](params, seed=seed, telemetry=telemetry, all_reduce=all_reduce, **hyper)
