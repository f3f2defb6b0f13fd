"""Inference precision: the encoder in fp32 (exact), int8 or bf16.

Nearly all of an encoder's arithmetic is in its Linear layers (Q/K/V, attention output, the
feed-forward pair), and on CPU their fp32 GEMMs bound evaluation time. Two cheaper forms:
  int8  dynamic quantization (torch.ao) of the encoder's Linear layers: int8 weights per output
        channel, activations quantized per batch on the fly, everything else fp32; fast with
        AVX-512 VNNI / AVX-VNNI.
  bf16  the encoder's weights and activations in bf16 (GEMMs and LayerNorm statistics accumulate in
        fp32); its outputs return to fp32 for the task heads. Fast on CPUs with AMX or AVX-512
        BF16 (several times fp32 there, docs/benchmarks.md), slow elsewhere. With the activations
        in bf16 too, no cast runs around each GEMM: casts cost as much as the bf16 GEMMs themselves.
The task heads always stay fp32. Inference only: nothing here trains.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from .config import PRECISIONS

# per output channel: one scale per row keeps the rows with small weights from rounding to a few levels
QCONFIG = torch.ao.quantization.per_channel_dynamic_qconfig


def check_precision(precision: str, setting: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{setting}={precision!r} is not allowed; choose one of {', '.join(PRECISIONS)}")
    return precision


def for_inference(model: nn.Module, precision: str = "fp32", copy_model: bool = True) -> nn.Module:
    """The model for inference in `precision`. fp32 returns the model itself; int8/bf16 a converted
    copy in eval mode (or the model converted in place, copy_model=False) that shares the model's
    cfg and keeps `precision` as an attribute, so that converting twice is a no-op."""
    check_precision(precision)
    if precision == "fp32" or getattr(model, "precision", "fp32") == precision:
        return model  # as it is: the trainer's model goes on training (predict_raw switches to eval itself)
    if getattr(model, "precision", "fp32") != "fp32":
        raise ValueError(f"precision={precision!r}: this model is already {model.precision}; "
                         "convert the fp32 model instead")
    # the copy shares the task config: a decision threshold fitted through it is the model's own
    model = copy.deepcopy(model, memo={id(model.cfg): model.cfg}) if copy_model else model
    model.eval()
    if precision == "int8":
        with warnings.catch_warnings():  # torch.ao's deprecation notices; the API works in this torch
            warnings.simplefilter("ignore")
            model.encoder = torch.ao.quantization.quantize_dynamic(model.encoder, {nn.Linear: QCONFIG},
                                                                   dtype=torch.qint8, inplace=True)
    else:
        model.encoder.to(torch.bfloat16)
        model.encoder.register_forward_hook(_float_outputs)
    model.precision = precision
    return model


def _float_outputs(module, args, out):
    return type(out)(out.last_hidden_state.float(), out.pooler_output.float(),
                     None if out.attentions is None else tuple(a.float() for a in out.attentions))
