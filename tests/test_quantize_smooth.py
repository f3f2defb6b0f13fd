"""SmoothQuant before int8 (mtbert/quantize.py): the smoothing rewrite alone leaves fp32 outputs as they
were; int8 after it is closer to fp32 than int8 without it; calibration reads training sentences only;
full-range activations only where the CPU's int8 kernel cannot overflow; bad settings named."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.ao.nn.quantized.dynamic as nnqd
import torch.nn as nn

from mtbert.bert import BertConfig, BertModel
from mtbert.checkpoint import load_checkpoint, load_encoder
from mtbert.data import SAMPLE_DIR, load_split
from mtbert.evaluate import predict_raw
from mtbert.quantize import (QCONFIG, QCONFIG_7BIT_WEIGHTS, SMOOTHED, FullRangeLinear, SmoothedLinear,
                             calibration_sentences, default_tokenizer, for_inference, int8_qconfig, smooth,
                             smoothing_scale)
from tests.conftest import REPO

SHIPPED = REPO / "checkpoints" / "minilm-l6-heads"
TEXTS = ["A gripping, beautifully shot film.", "How do I learn Python quickly?",
         "The plot is thin and the jokes fall flat, but the cast is charming.", "Why?"]


def train_sentences() -> set[str]:
    return {t for ex, _ in load_split(SAMPLE_DIR, "train").values() for e in ex for t in (e.text_a, e.text_b) if t}


def encode(encoder, tok, texts=TEXTS) -> torch.Tensor:
    """last_hidden_state at the real tokens, (N, H)."""
    enc = tok.encode(texts)
    with torch.inference_mode():
        out = encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden_state
    return out[enc["attention_mask"].bool()]


class EncoderOnly(nn.Module):
    """The least for_inference converts: an `encoder` and a `cfg`."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.cfg = encoder, None


class RecordingTokenizer:
    """The tokenizer, remembering every sentence it encodes."""

    def __init__(self, tok):
        self.tok, self.seen = tok, []

    def encode(self, texts, pairs=None):
        self.seen += list(texts) + list(pairs or [])
        return self.tok.encode(texts, pairs)


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(SHIPPED)


@pytest.fixture(scope="module")
def sample_dev(shipped):
    return {t: ex[:64] for t, (ex, _) in load_split(SAMPLE_DIR, "dev", shipped[0].cfg.tasks).items()}


@pytest.fixture(scope="module")
def int8_pair(shipped):
    """(smoothed int8 model, plain int8 model, the sentences the smoothing's calibration encoded)."""
    model, tok, _ = shipped
    recording = RecordingTokenizer(tok)
    return (for_inference(model, "int8", tokenizer=recording), for_inference(model, "int8", tokenizer=tok, alpha=0),
            recording.seen)


@pytest.mark.parametrize("alpha", [0.5, "auto"])
def test_smoothing_alone_is_exact_in_fp32_on_the_tiny_model(tiny_base, alpha):
    encoder, tok = load_encoder(tiny_base)
    with torch.no_grad():  # outlier channels, as trained BERTs have them, so that the scales are far from 1
        encoder.embeddings.LayerNorm.weight[3] = 30.0
        encoder.layers[0].output_norm.weight[7] = -20.0
        encoder.layers[0].intermediate.bias[5] = 15.0
    before = encode(encoder, tok)
    smoothed = smooth(copy.deepcopy(encoder), tok, calibration_sentences(per_task=16), alpha)
    torch.testing.assert_close(encode(smoothed, tok), before, atol=1e-5, rtol=1e-5)
    for i, layer in enumerate(smoothed.layers):
        assert isinstance(layer.attention.qkv, SmoothedLinear) and isinstance(layer.intermediate, SmoothedLinear)
        assert isinstance(layer.output, SmoothedLinear)
        if alpha == 0.5:  # a fixed alpha always rescales; the planted outlier channels gave their range away
            assert not torch.allclose(layer.intermediate.inv_scale, torch.ones(32))
            assert not torch.equal(layer.attention_output.weight, encoder.layers[i].attention_output.weight)
    assert smoothed.layers[0].attention.qkv.inv_scale[3] < 0.5 * smoothed.layers[0].attention.qkv.inv_scale.median() \
        or alpha == "auto"


def test_smoothing_scale_is_smoothquants_and_leaves_silent_channels_alone():
    x_max = torch.tensor([16.0, 1.0, 0.0])
    weight = torch.tensor([[0.25, -4.0, 2.0], [-1.0, 1.0, 0.5]])  # column maxima 1, 4, 2
    torch.testing.assert_close(smoothing_scale(x_max, weight, 0.5), torch.tensor([4.0, 0.5, 1.0]))
    torch.testing.assert_close(smoothing_scale(x_max, weight, 1.0), torch.tensor([16.0, 1.0, 1.0]))


def test_smoothing_alone_is_exact_in_fp32_on_the_shipped_checkpoint(shipped, sample_dev):
    model, tok, _ = shipped
    smoothed = copy.deepcopy(model, memo={id(model.cfg): model.cfg})
    smooth(smoothed.encoder, tok)
    assert sum(isinstance(m, SmoothedLinear) for m in smoothed.encoder.modules()) == 3 * len(model.encoder.layers)
    for task, examples in sample_dev.items():
        np.testing.assert_allclose(predict_raw(smoothed, tok, task, examples), predict_raw(model, tok, task, examples),
                                   atol=1e-5, rtol=0, err_msg=task)


def test_int8_after_smoothing_is_closer_to_fp32_than_without(shipped, sample_dev, int8_pair):
    model, tok, _ = shipped
    smoothed, plain, _ = int8_pair
    assert smoothed.precision == plain.precision == "int8" and not hasattr(model, "precision")
    worst = {"smoothed": 0.0, "plain": 0.0}
    for task, examples in sample_dev.items():
        spec = model.cfg.task(task)
        scale = spec.range[1] - spec.range[0] if spec.kind == "regression" else 1.0
        ref = predict_raw(model, tok, task, examples)
        err = {name: np.abs(predict_raw(m, tok, task, examples) - ref) / scale
               for name, m in (("smoothed", smoothed), ("plain", plain))}
        assert 0 < err["smoothed"].mean() < err["plain"].mean(), (task, {k: v.mean() for k, v in err.items()})
        worst = {k: max(worst[k], float(v.max())) for k, v in err.items()}
    assert worst["smoothed"] < worst["plain"], worst


def test_calibration_reads_training_sentences_only(int8_pair):
    seen = int8_pair[2]
    assert 200 <= len(seen) == len(set(seen)), "a few hundred distinct sentences"
    assert set(seen) <= train_sentences(), "calibration sentences must come from the training files"
    assert seen == calibration_sentences(), "deterministic: the same sentences, in the same order, every time"
    with pytest.raises(Exception, match="train"):  # a folder without training files is an error, never dev data
        calibration_sentences(REPO / "docs")


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_keeps_the_kernels_pair_sums_in_int16_where_the_cpu_lacks_vnni(vnni, monkeypatch, int8_pair):
    assert {type(m) for m in int8_pair[0].encoder.modules() if isinstance(m, nnqd.Linear)} == {FullRangeLinear}
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: vnni)
    assert int8_qconfig() is (QCONFIG if vnni else QCONFIG_7BIT_WEIGHTS)
    # the worst case for the pair sums: activations at their top level times weights at theirs, same sign
    linear = nn.Linear(256, 8)
    with torch.no_grad():
        linear.weight.fill_(0.5)
        linear.bias.zero_()
    x = torch.full((4, 256), 3.0)
    x[0, 0] = -1.0  # a range that includes both signs puts the rest at the top of 0..255
    fast = for_inference(EncoderOnly(nn.Sequential(linear)), "int8", alpha=0).encoder[0]
    assert isinstance(fast, FullRangeLinear)
    levels = fast.weight().int_repr()
    assert int(levels.max()) == (127 if vnni else 63) and int(levels.abs().max()) <= (127 if vnni else 64)
    worst = 255 * int(levels.abs().max()) * 2
    assert vnni or worst <= 32767, f"pairs of products reach {worst}: int16 saturates"
    torch.testing.assert_close(fast(x), linear(x), rtol=0.01, atol=0.05)


def test_bad_smoothing_settings_are_named(tiny_base):
    encoder, tok = load_encoder(tiny_base)
    with pytest.raises(ValueError, match=r"alpha=1\.5 is not allowed; choose 'auto' or a number in \[0, 1\]"):
        smooth(encoder, tok, TEXTS, 1.5)
    with pytest.raises(ValueError, match=r"alpha='best' is not allowed"):
        smooth(encoder, tok, TEXTS, "best")
    with pytest.raises(ValueError, match=r"names=\['pooler'\] are not allowed; choose among " + ", ".join(SMOOTHED)):
        smooth(encoder, tok, TEXTS, names=("pooler",))
    with pytest.raises(ValueError, match="calibration sentences"):
        smooth(encoder, tok, [])
    other = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=64))
    with pytest.raises(ValueError, match=r"100 word pieces.*pass the model's own tokenizer \(tokenizer=\.\.\.\)"):
        default_tokenizer(other)
