"""Inference precision: the encoder's Linear layers in fp32 (exact), int8 or bf16.

Nearly all of an encoder's arithmetic is in its Linear layers (Q/K/V, attention output, the
feed-forward pair), and on CPU fp32 GEMMs are what bound evaluation time. Two cheaper forms:
  int8  dynamic quantization (torch.ao): int8 weights per output channel, activations quantized
        per batch on the fly; fast on CPUs with AVX-512 VNNI / AVX-VNNI.
  bf16  bf16 weights and GEMM inputs, fp32 accumulation and output; fast on CPUs with AMX or
        AVX-512 BF16, slow elsewhere.
Everything else (embeddings, LayerNorm, attention, the residual stream, the task heads) stays
fp32, so the error is only the Linear layers' rounding. Inference only: nothing here trains.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

PRECISIONS = ("fp32", "int8", "bf16")
# per output channel: one scale per row keeps the rows with small weights from rounding to a few levels
QCONFIG = torch.ao.quantization.per_channel_dynamic_qconfig


def check_precision(precision: str, setting: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{setting}={precision!r} is not allowed; choose one of {', '.join(PRECISIONS)}")
    return precision


class BF16Linear(nn.Module):
    """A Linear layer whose GEMM runs in bf16: fp32 in, fp32 out (the accumulation is fp32)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16"


def for_inference(model: nn.Module, precision: str = "fp32", copy_model: bool = True) -> nn.Module:
    """The model with its encoder's Linear layers in `precision`, in eval mode. fp32 returns the
    model itself; int8/bf16 a converted copy (or the model converted in place, copy_model=False),
    which keeps `precision` as an attribute so that converting twice is a no-op."""
    check_precision(precision)
    if precision == "fp32" or getattr(model, "precision", "fp32") == precision:
        return model.eval()
    if getattr(model, "precision", "fp32") != "fp32":
        raise ValueError(f"precision={precision!r}: this model is already {model.precision}; "
                         "convert the fp32 model instead")
    model = copy.deepcopy(model) if copy_model else model
    model.eval()
    if precision == "int8":
        with warnings.catch_warnings():  # torch.ao's deprecation notices; the API works in this torch
            warnings.simplefilter("ignore")
            model.encoder = torch.ao.quantization.quantize_dynamic(model.encoder, {nn.Linear: QCONFIG}, dtype=torch.qint8,
                                                                   inplace=True)
    else:
        model.encoder.to(torch.bfloat16)
        model.encoder.register_forward_hook(_float_outputs)
    model.precision = precision
    return model


def _float_outputs(module, args, out):
    return type(out)(out.last_hidden_state.float(), out.pooler_output.float(),
                     None if out.attentions is None else tuple(a.float() for a in out.attentions))


def _replace_linears(module: nn.Module, make) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
        else:
            _replace_linears(child, make)
