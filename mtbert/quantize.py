"""Inference precision: the encoder in fp32 (exact), int8 or bf16.

Nearly all of an encoder's arithmetic is in its Linear layers (Q/K/V, attention output, the
feed-forward pair), and on CPU their fp32 GEMMs bound evaluation time. Two cheaper forms:
  int8  dynamic quantization (torch.ao) of the encoder's Linear layers: int8 weights per output
        channel, activations quantized per batch on the fly, everything else fp32; fast with
        AVX-512 VNNI / AVX-VNNI. Smoothed first (SmoothQuant, Xiao et al. 2023): a few input
        channels of BERT's Linear layers carry activations up to 15 times larger than the median
        channel's, and one scale per tensor then leaves the others a few int8 levels. Dividing activation channel j
        by s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha) and multiplying weight column j by s_j is an
        exact rewrite in fp32 that moves the outliers' range into the weights, which are quantized
        per output channel and absorb it. max|X_j| comes from a calibration pass over training
        sentences (the shipped sample's, offline). Activations use all 256 int8 levels, not
        torch.ao's 128; without AVX-512 VNNI the weights take 7 bits instead (int8_qconfig).
  bf16  the encoder's weights and activations in bf16 (GEMMs and LayerNorm statistics accumulate in
        fp32); its outputs return to fp32 for the task heads. Fast on CPUs with AMX or AVX-512
        BF16 (several times fp32 there, docs/benchmarks.md), slow elsewhere. With the activations
        in bf16 too, no cast runs around each GEMM: casts cost as much as the bf16 GEMMs themselves.
The task heads always stay fp32. Shared LoRA adapters are folded into the weights before the
conversion; adapters per task (one W cannot hold them all) stay fp32, hooked on the converted layers.
Inference only: nothing here trains.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.ao.nn.quantized.dynamic as nnqd
from torch.ao.quantization import PerChannelMinMaxObserver, QConfig

from .config import PRECISIONS
from .lora import attach_hooks, detach_hooks, lora_of, merge_lora

# per output channel: one scale per row keeps the rows with small weights from rounding to a few levels
QCONFIG = torch.ao.quantization.per_channel_dynamic_qconfig
# Without VNNI, fbgemm's int8 kernel adds pairs of u8 x s8 products in int16, saturating. torch.ao
# avoids that by giving activations 128 levels (reduce_range); weights in -64..63 avoid it as well
# (255 * 64 * 2 = 32,640 fits) and leave activations all 256, which measured closer to fp32.
QCONFIG_7BIT_WEIGHTS = QConfig(activation=QCONFIG.activation, weight=PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63))

# SmoothQuant's migration strength. Swept per Linear of MiniLM-L6 on training sentences, int8's error
# was least at 0.7-0.9 for nearly all of them; at 0.5 (the paper's default for OPT) the FFN output's
# error was up to twice that without smoothing.
# "auto" picks each Linear's best of ALPHAS instead, about three times the calibration's cost.
SMOOTH_ALPHA = 0.8
ALPHAS = tuple(a / 10 for a in range(3, 11))  # below 0.3 no Linear of MiniLM-L6 gained
CALIBRATION_STRIDE = 16  # calibration rows kept for the alpha search: every 16th token, and the extremes
CALIBRATION_PER_TASK = 128  # training sentences per built-in task: 384 in all, ~7,000 tokens
CALIBRATION_BATCH = 64
SMOOTHED = ("qkv", "attention_output", "intermediate", "output")  # every Linear of a BertLayer


def check_precision(precision: str, setting: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{setting}={precision!r} is not allowed; choose one of {', '.join(PRECISIONS)}")
    return precision


def for_inference(model: nn.Module, precision: str = "fp32", copy_model: bool = True, tokenizer=None,
                  calibration: list[str] | None = None, alpha: float | str = SMOOTH_ALPHA) -> nn.Module:
    """The model for inference in `precision`. fp32 returns the model itself; int8/bf16 a converted
    copy in eval mode (or the model converted in place, copy_model=False) that shares the model's
    cfg and keeps `precision` as an attribute, so that converting twice is a no-op.

    int8 only: `tokenizer` and `calibration` (sentences) feed the smoothing's calibration pass;
    by default the packaged MiniLM tokenizer (same vocabulary as BERT uncased) and the shipped
    sample's training sentences (`calibration_sentences`); alpha is SmoothQuant's migration strength,
    "auto" (each Linear's best) or a number in [0, 1], 0 for no smoothing."""
    check_precision(precision)
    lora = lora_of(model)
    fold = lora is not None and not lora.cfg.per_task  # shared adapters fold into W, at every precision
    if (precision == "fp32" and not fold) or (precision != "fp32" and getattr(model, "precision", "fp32") == precision):
        return model  # as it is: the trainer's model goes on training (predict_raw switches to eval itself)
    if getattr(model, "precision", "fp32") != "fp32":
        raise ValueError(f"precision={precision!r}: this model is already {model.precision}; "
                         "convert the fp32 model instead")
    # the copy shares the task config: a decision threshold fitted through it is the model's own
    model = copy.deepcopy(model, memo={id(model.cfg): model.cfg}) if copy_model else model
    model.eval()
    per_task = lora is not None and lora.cfg.per_task
    if fold:  # first: the smoothing and the casts rescale what the Linear layers read, and in fp32 a
        merge_lora(model)  # plain encoder runs 1.5x as fast as one with an adapter hook on every Linear
    if precision == "fp32":
        return model
    if per_task:  # K tasks' adapters cannot fold into one W: they stay fp32, hooked on the converted layers
        detach_hooks(model.encoder)  # calibration reads the base's activations (no task to choose)
    if precision == "int8":
        if alpha:  # per task: every smoothed Linear wrapped, so the adapters read its input unscaled
            smooth(model.encoder, tokenizer, calibration, alpha, fold=not per_task)
        with warnings.catch_warnings():  # torch.ao's deprecation notices; the API works in this torch
            warnings.simplefilter("ignore")
            model.encoder = torch.ao.quantization.quantize_dynamic(
                model.encoder, {nn.Linear: int8_qconfig()}, dtype=torch.qint8, inplace=True,
                mapping={nn.Linear: FullRangeLinear})
    else:
        model.encoder.to(torch.bfloat16)
        model.encoder.register_forward_hook(_float_outputs)
    if per_task:
        attach_hooks(model)
    model.precision = precision
    return model


def _float_outputs(module, args, out):
    return type(out)(out.last_hidden_state.float(), out.pooler_output.float(),
                     None if out.attentions is None else tuple(a.float() for a in out.attentions))


# ---- SmoothQuant ------------------------------------------------------------------------------

class SmoothedLinear(nn.Module):
    """linear(x / s), the weights already multiplied by s: the output of the original Linear.

    BERT is post-LN: a LayerNorm's output feeds the next Linear and the residual sum, so 1/s cannot
    be folded into the LayerNorm's gamma and beta without changing the residual; one elementwise
    product per token (H multiplications against the Linear's H x out) applies it here instead."""

    def __init__(self, linear: nn.Linear, inv_scale: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x):
        return self.linear(x * self.inv_scale)


def calibration_sentences(data_dir: str | Path | None = None, per_task: int = CALIBRATION_PER_TASK) -> list[str]:
    """The first `per_task` distinct sentences of each built-in task's TRAINING file (both sides of
    a pair), in file order: deterministic, never dev data. Default: the shipped sample, offline."""
    from .data import BUILTIN_NAMES, SAMPLE_DIR, load_split
    picked: list[str] = []
    seen: set[str] = set()
    for examples, _ in load_split(SAMPLE_DIR if data_dir is None else data_dir, "train", BUILTIN_NAMES).values():
        texts = [t for e in examples for t in (e.text_a, e.text_b) if t and t not in seen]
        texts = list(dict.fromkeys(texts))[:per_task]
        seen.update(texts)
        picked += texts
    return picked


def default_tokenizer(encoder: nn.Module):
    """The packaged MiniLM tokenizer, if its vocabulary is the encoder's (BERT uncased)."""
    from .checkpoint import minilm_folder
    from .tokenizer import Tokenizer
    tok = Tokenizer.from_folder(minilm_folder())
    if tok.vocab_size != encoder.config.vocab_size:
        raise ValueError(f"precision='int8' calibrates on tokenised sentences: this encoder's vocabulary has "
                         f"{encoder.config.vocab_size} word pieces, not the packaged tokenizer's "
                         f"{tok.vocab_size}; pass the model's own tokenizer (tokenizer=...)")
    return tok


class Calibration(NamedTuple):
    maxima: dict[str, torch.Tensor]  # Linear name -> (in,) max |x| per input channel
    rows: dict[str, torch.Tensor]  # Linear name -> (R, in) input rows (only if asked for): see calibrate


@torch.inference_mode()
def calibrate(encoder: nn.Module, tokenizer, sentences: list[str], names=SMOOTHED,
              batch_size: int = CALIBRATION_BATCH, keep_rows: bool = False) -> Calibration:
    """The inputs of each BertLayer Linear named in `names` over the real tokens of `sentences`,
    keyed by the Linear's module name in `encoder`: per input channel max |x| and, with keep_rows,
    a sample of rows: every CALIBRATION_STRIDE-th token and each batch's tokens that hold a channel's
    largest |x| (so that any smoothing's per-tensor range on the sample is the one on all tokens,
    as it is in an evaluation batch)."""
    linears = {n: m for n, m in encoder.named_modules()
               if isinstance(m, nn.Linear) and n.startswith("layers.") and n.rsplit(".", 1)[-1] in names}
    maxima: dict[str, torch.Tensor] = {}
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in linears}

    def hook(name):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].size(-1))  # (tokens, in)
            m, at = x.abs().max(0)
            maxima[name] = torch.maximum(maxima[name], m) if name in maxima else m
            if keep_rows:
                rows[name] += [x[::CALIBRATION_STRIDE], x[at.unique()]]
        return record
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    was_training = encoder.training
    encoder.eval()
    try:
        for i in range(0, len(sentences), batch_size):
            # padding never reaches the Linears: a padded batch runs unpadded (bert.Unpadding)
            enc = tokenizer.encode(sentences[i:i + batch_size])
            encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    return Calibration(maxima, {n: torch.cat(r) for n, r in rows.items() if r})


def smoothing_scale(x_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha), per input channel j; 1 for a channel
    calibration never saw active (its 1/s would blow up whatever it meets later)."""
    w_max = weight.detach().abs().amax(0)  # (in,)
    s = x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return torch.where(x_max > 0, s.clamp(min=1e-5), torch.ones_like(s))


class FullRangeLinear(nnqd.Linear):
    """torch.ao's dynamic int8 Linear with activations on all 256 levels, not 128 (reduce_range):
    the spare bit halves the activations' rounding. Safe with int8_qconfig's weights."""

    def forward(self, x):
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                  reduce_range=False).to(x.dtype)


def int8_qconfig():
    """Weights on all int8 levels where the CPU has AVX-512 VNNI (products accumulate in int32),
    else in -64..63 (QCONFIG_7BIT_WEIGHTS)."""
    return QCONFIG if torch.cpu._is_vnni_supported() else QCONFIG_7BIT_WEIGHTS


def quantization_error(linear: nn.Linear, rows: torch.Tensor, ref: torch.Tensor, s: torch.Tensor) -> float:
    """Relative error ||int8(x / s, W * s) - ref|| / ||ref|| of the Linear on calibration rows x,
    ref = linear(x)."""
    scaled = copy.deepcopy(linear)
    with torch.no_grad():
        scaled.weight *= s
    scaled.qconfig = int8_qconfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = FullRangeLinear.from_float(scaled)
    with torch.inference_mode():
        return float((q(rows / s) - ref).norm() / ref.norm().clamp(min=1e-12))


def best_scale(linear: nn.Linear, x_max: torch.Tensor, rows: torch.Tensor, alphas) -> torch.Tensor:
    """The smoothing scale of the alpha in `alphas` with the least int8 error on the calibration rows
    (s = 1, no smoothing, among the candidates): each Linear's outliers differ, and so does its best
    migration strength (SmoothQuant's alpha sweep, per layer)."""
    candidates = [torch.ones_like(x_max)] + [smoothing_scale(x_max, linear.weight, a) for a in alphas]
    with torch.inference_mode():
        ref = linear(rows)
    errors = [quantization_error(linear, rows, ref, s) for s in candidates]
    return candidates[min(range(len(errors)), key=errors.__getitem__)]


@torch.no_grad()
def smooth(encoder: nn.Module, tokenizer=None, sentences: list[str] | None = None, alpha=SMOOTH_ALPHA,
           names=SMOOTHED, fold: bool = True) -> nn.Module:
    """Rewrite `encoder` (a bert.BertModel, in place) so that its fp32 outputs stay the same while the
    inputs of the Linears named in `names` lose their outlier channels: each Linear's weight columns
    are multiplied by s and its input divided by s. attention_output's 1/s folds into the value rows
    of qkv (the attention context is linear in V; fold=False wraps it like the others, keeping every
    Linear's input and output as they were, for LoRA adapters hooked on them); the others get a
    SmoothedLinear. alpha: a number in [0, 1] for every Linear, or "auto" for each Linear's best of
    ALPHAS on the calibration rows."""
    auto = alpha == "auto"
    if not auto and not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(f"alpha={alpha!r} is not allowed; choose 'auto' or a number in [0, 1]")
    bad = set(names) - set(SMOOTHED)
    if bad:
        raise ValueError(f"names={sorted(bad)} are not allowed; choose among {', '.join(SMOOTHED)}")
    tokenizer = default_tokenizer(encoder) if tokenizer is None else tokenizer
    sentences = calibration_sentences() if sentences is None else sentences
    if not sentences:
        raise ValueError("smoothing needs calibration sentences; got none")
    cal = calibrate(encoder, tokenizer, sentences, names, keep_rows=auto)

    def scale(key, linear):
        if auto:
            return best_scale(linear, cal.maxima[key], cal.rows[key], ALPHAS)
        return smoothing_scale(cal.maxima[key], linear.weight, alpha)

    for i, layer in enumerate(encoder.layers):
        att = layer.attention
        if "attention_output" in names:
            s = scale(f"layers.{i}.attention_output", layer.attention_output)
            H = s.numel()
            layer.attention_output.weight *= s
            if fold:
                att.qkv.weight[2 * H:] /= s[:, None]  # value rows: the context comes out divided by s
                att.qkv.bias[2 * H:] /= s
            else:
                layer.attention_output = SmoothedLinear(layer.attention_output, 1.0 / s)
        for name, parent, attr in (("qkv", att, "qkv"), ("intermediate", layer, "intermediate"),
                                   ("output", layer, "output")):
            if name in names:
                key = f"layers.{i}.attention.qkv" if name == "qkv" else f"layers.{i}.{name}"
                linear = getattr(parent, attr)
                s = scale(key, linear)
                linear.weight *= s
                setattr(parent, attr, SmoothedLinear(linear, 1.0 / s))
    return encoder
