"""The cosine_cross head (STS read both ways, mtbert/model.py): the cosine head's score plus a linear
read of the jointly encoded pair, 5 (cos(P u + b, P v + b) + w j + c), against a hand computation;
it starts as the cosine head, the evaluation path and explanations agree with predict, the settings
choose it, a classified task refuses it, and a trained checkpoint predicts as the trained model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtbert.checkpoint import load_encoder
from mtbert.config import TrainConfig
from mtbert.data import Example, make_batch
from mtbert.evaluate import predict_raw
from mtbert.explain import integrated_gradients
from mtbert.lora import LoraConfig, add_lora
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.studio.taskform import head_choices, loss_choices
from mtbert.tasks import TaskError, TaskSpec, builtin_tasks

PAIRS = [Example("s1", "A man is playing a guitar .", "A man plays the guitar .", 4.6),
         Example("s2", "A cat sits on the mat .", "Stocks fell sharply today .", 0.2),
         Example("s3", "A man is playing a guitar .", "A woman is cutting onions .", 0.8)]


def sts_both_model(base, std: float = 0.3) -> tuple[MultitaskBert, object]:
    """The tiny model with STS read both ways, per-task adapters whose B is not zero, in eval mode."""
    encoder, tok = load_encoder(base)
    torch.manual_seed(4)
    model = MultitaskBert(encoder, ModelConfig(pooling="mean", tasks=builtin_tasks(sts_encoding="both"))).eval()
    for p in add_lora(model, LoraConfig(rank=4, per_task=True)).parameters():
        torch.nn.init.normal_(p, std=std)
    return model, tok


def by_hand(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(the cosine read's score, the whole score) of the STS batch, from the embeddings and the layer."""
    head, H = model.task_heads["sts"], model.encoder.config.hidden_size
    j = model.embed(batch["enc"], "sts:joint")
    u, v = model.embed(batch["a"], "sts"), model.embed(batch["b"], "sts")
    P, b, w, c = head.weight[:H], head.bias[:H], head.weight[H], head.bias[H]
    cos = F.cosine_similarity(u @ P.T + b, v @ P.T + b, dim=-1)
    return 5 * cos, 5 * (cos + j @ w + c)


def test_sts_encoding_both_chooses_it_with_one_more_row_and_a_joint_adapter_set(tiny_base):
    sts = {s.name: s for s in TrainConfig(sts_encoding="both").task_specs()}["sts"]
    assert (sts.head, sts.loss, sts.pair_encoding, sts.reads_jointly, sts.reads_apart) == (
        "cosine_cross", "mse", "both", True, True)
    para = {s.name: s for s in TrainConfig(sts_encoding="both").task_specs()}["para"]
    assert para.head == "concat"  # Quora keeps its own encoding
    model, _ = sts_both_model(tiny_base)
    H = model.encoder.config.hidden_size
    assert model.task_heads["sts"].weight.shape == (H + 1, H)
    assert model.adapter_sets() == ["sst", "para", "sts", "sts:joint"]
    assert list(model.lora.tasks) == model.adapter_sets()


def test_it_starts_as_the_cosine_head_and_then_adds_the_joint_read(tiny_base):
    model, tok = sts_both_model(tiny_base)
    batch = make_batch(model.cfg.task("sts"), PAIRS, tok)
    assert {"enc", "a", "b"} <= set(batch)
    head, H = model.task_heads["sts"], model.encoder.config.hidden_size
    with torch.no_grad():
        # fresh: P = I, b = 0 and the joint row zero, so the score is 5 cos(u, v)
        assert torch.equal(head.weight[:H], torch.eye(H)) and not head.weight[H].any() and not head.bias.any()
        cosine_read, whole = by_hand(model, batch)
        torch.testing.assert_close(whole, cosine_read, atol=0, rtol=0)
        torch.testing.assert_close(model.output("sts", batch), cosine_read, atol=1e-5, rtol=0)
        # a trained layer: every part counts
        torch.manual_seed(0)
        head.weight.add_(0.05 * torch.randn_like(head.weight))
        head.bias.add_(0.05 * torch.randn_like(head.bias))
        cosine_read, whole = by_hand(model, batch)
        assert (whole - cosine_read).abs().max() > 1e-3
        torch.testing.assert_close(model.output("sts", batch), whole, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.predict("sts", batch), whole.clamp(0, 5), atol=1e-5, rtol=0)
        # the loss is the squared error of that score
        torch.testing.assert_close(model.loss("sts", batch), F.mse_loss(whole, batch["labels"].float()),
                                   atol=1e-5, rtol=0)
        # the joint read goes through its own adapters only
        assert not torch.allclose(model.embed(batch["enc"], "sts"), model.embed(batch["enc"], "sts:joint"),
                                  atol=1e-3)


def test_the_evaluation_path_and_explanations_agree_with_predict(tiny_base):
    model, tok = sts_both_model(tiny_base, std=0.05)
    H = model.encoder.config.hidden_size
    with torch.no_grad():
        model.task_heads["sts"].weight[H] = 0.05 * torch.randn(H)
    got = torch.from_numpy(predict_raw(model, tok, "sts", PAIRS, batch_size=2))
    want = model.predict("sts", make_batch(model.cfg.task("sts"), PAIRS, tok))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    ig = integrated_gradients(model, tok, "sts", PAIRS[0].text_a, PAIRS[0].text_b, steps=64)
    assert ig.encoding == "both" and len(ig.tokens) == 2
    with torch.no_grad():
        f_x = float(model.output("sts", make_batch(model.cfg.task("sts"), PAIRS[:1], tok)))
    assert ig.f_x == pytest.approx(f_x, abs=1e-5)
    assert ig.gap < 0.01  # the two reads' attributions add up to f(x) - f(baseline)


def test_a_classified_task_and_the_ranking_losses_refuse_it():
    with pytest.raises(TaskError, match="head='cosine_cross' is not allowed; allowed values: concat, "
                                        "concat_diff_prod, cross, cross_concat for classification"):
        TaskSpec("nli", input="pair", classes=3, head="cosine_cross", text_columns=("p", "h"))
    with pytest.raises(TaskError, match="loss='cosent' is not allowed; allowed values: mse unless head is cosine"):
        TaskSpec("sim", input="pair", kind="regression", range=(0, 1), head="cosine_cross", loss="cosent",
                 metrics=("pearson",), main_metric="pearson", text_columns=("a", "b"))
    assert "cosine_cross" not in head_choices("pair", "classification")
    assert "cosine_cross" in head_choices("pair", "regression")
    assert loss_choices("regression", None, "cosine_cross") == ["mse"]


def test_training_reads_sts_both_ways_and_its_checkpoint_predicts_as_the_trained_model(tiny_base, tmp_path):
    from test_cross_concat import train_reading_both_ways
    loaded = train_reading_both_ways(tiny_base, tmp_path / "run", "sts", sts_encoding="both")
    H = loaded.encoder.config.hidden_size
    assert loaded.cfg.task("sts").head == "cosine_cross"
    assert loaded.task_heads["sts"].weight[H].abs().sum() > 0  # the joint read's row moved from 0
