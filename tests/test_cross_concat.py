"""The cross_concat pair head (pair encoding "both", mtbert/model.py): a pair read jointly and one
sentence at a time, W [j; u; v; |u-v|; u*v] + b, against a hand computation; with lora_per_task the
joint read's own adapter set; the evaluation path, explanations, the settings and a trained checkpoint."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mtbert.checkpoint import load_checkpoint, load_encoder
from mtbert.cli import build_parser, given_settings
from mtbert.config import TrainConfig
from mtbert.data import Example, make_batch
from mtbert.evaluate import predict_raw
from mtbert.explain import integrated_gradients
from mtbert.lora import LoraConfig, LoraError, add_lora, task_adapters
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.tasks import TaskError, TaskSpec, builtin_tasks

PAIRS = [Example("p1", "How do I learn Python ?", "What is the best way to learn Python ?", 1),
         Example("p2", "Is the moon made of cheese ?", "How tall is Everest ?", 0),
         Example("p3", "How do I learn Python ?", "How tall is Everest ?", 0)]  # a repeated question


def both_model(base, per_task: bool = True, std: float = 0.3) -> tuple[MultitaskBert, object]:
    """The tiny model, Quora and STS read both ways by cross_concat heads (STS's built-in one is
    cosine_cross: tests/test_cosine_cross.py), with adapters whose B is not zero, in eval mode."""
    encoder, tok = load_encoder(base)
    torch.manual_seed(2)
    tasks = [replace(s, head="cross_concat") if s.name == "sts" else s for s in builtin_tasks(pair_encoding="both")]
    model = MultitaskBert(encoder, ModelConfig(pooling="mean", tasks=tasks)).eval()
    for p in add_lora(model, LoraConfig(rank=4, per_task=per_task)).parameters():
        torch.nn.init.normal_(p, std=std)
    return model, tok


def test_builtin_pairs_read_both_ways_get_the_cross_concat_head_and_a_five_wide_layer(tiny_base):
    specs = {s.name: s for s in builtin_tasks(para_encoding="both")}
    assert (specs["para"].head, specs["para"].loss, specs["para"].pair_encoding) == ("cross_concat", "bce", "both")
    assert (specs["sts"].head, specs["sts"].pair_encoding) == ("cosine", "separate")
    sts = {s.name: s for s in builtin_tasks(sts_encoding="both", sts_loss="cosent")}["sts"]
    assert (sts.head, sts.loss) == ("cosine_cross", "mse")  # cosent trains the cosine head only
    model, _ = both_model(tiny_base)
    H = model.encoder.config.hidden_size
    assert model.task_heads["para"].weight.shape == (1, 5 * H)
    assert model.adapter_sets() == ["sst", "para", "sts", "para:joint", "sts:joint"]
    assert list(model.lora.tasks) == model.adapter_sets()


@pytest.mark.parametrize("task", ["para", "sts"])
def test_the_output_is_a_cross_head_on_the_joint_read_plus_a_concat_diff_prod_head(tiny_base, task):
    model, tok = both_model(tiny_base)
    batch = make_batch(model.cfg.task(task), PAIRS, tok)
    assert {"enc", "a", "b"} <= set(batch)
    H, head = model.encoder.config.hidden_size, model.task_heads[task]
    with torch.no_grad():
        j = model.embed(batch["enc"], f"{task}:joint")
        u, v = model.embed(batch["a"], task), model.embed(batch["b"], task)
        z = (j @ head.weight[:, :H].T + torch.cat([u, v, (u - v).abs(), u * v], -1) @ head.weight[:, H:].T
             + head.bias).squeeze(-1)
        want = torch.sigmoid(z) if task == "para" else 5 * torch.sigmoid(z)
        torch.testing.assert_close(model.predict(task, batch), want.clamp(0, 5), atol=1e-5, rtol=0)
        # the joint read uses its own adapters: the task's own set gives another j
        assert not torch.allclose(model.embed(batch["enc"], task), j, atol=1e-3)
        # and only them: zeroing them leaves u, v as they were and makes j the frozen encoder's
        for ad in model.lora.tasks[f"{task}:joint"]["layers"]:
            for a in ad.values():
                a.lora_B.zero_()
        torch.testing.assert_close(model.embed(batch["a"], task), u, atol=0, rtol=0)
        frozen, _ = load_encoder(tiny_base)
        plain = MultitaskBert(frozen, model.cfg).eval()
        torch.testing.assert_close(model.embed(batch["enc"], f"{task}:joint"), plain.embed(batch["enc"]),
                                   atol=1e-5, rtol=0)
    with pytest.raises(LoraError, match="allowed values: .*para:joint"):
        with task_adapters(model, "nope"):
            pass


@pytest.mark.parametrize("per_task", [True, False])
def test_the_evaluation_path_equals_predict_and_counts_its_progress(tiny_base, per_task):
    """predict_raw embeds each distinct sentence once, encodes each pair jointly and gathers: the same
    numbers as model.predict on the batch."""
    model, tok = both_model(tiny_base, per_task=per_task)
    seen = []
    for task in ("para", "sts"):
        got = torch.from_numpy(predict_raw(model, tok, task, PAIRS, batch_size=2,
                                           progress=lambda done, total: seen.append((done, total))))
        want = model.predict(task, make_batch(model.cfg.task(task), PAIRS, tok))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert seen[-1] == (3, 3) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:3]))


def test_explanations_add_each_word_pieces_two_reads_and_stay_complete(tiny_base):
    model, tok = both_model(tiny_base, std=0.05)
    a, b = PAIRS[0].text_a, PAIRS[0].text_b
    ig = integrated_gradients(model, tok, "para", a, b, steps=64)
    assert ig.encoding == "both"
    assert ig.tokens == [list(tok.encode_one(a).tokens), list(tok.encode_one(b).tokens)]
    assert ig.gap < 0.01  # the rows add up to f(x) - f(baseline): nothing of the joint read is lost
    assert ig.f_x == pytest.approx(float(model.predict("para", make_batch(model.cfg.task("para"), PAIRS[:1], tok))),
                                   abs=1e-6)
    # the joint read's share is in the rows: with the separate part of the head at zero, the rows are the
    # joint read's attributions alone, and they still add up
    H = model.encoder.config.hidden_size
    with torch.no_grad():
        model.task_heads["para"].weight[:, H:] = 0
    joint_only = integrated_gradients(model, tok, "para", a, b, steps=64)
    assert joint_only.gap < 0.01 and abs(joint_only.total) > 1e-4


def test_a_cut_pair_keeps_every_attribution():
    from mtbert.explain import _added
    import numpy as np
    own = np.array([0.0, 1.0, 2.0, 3.0, 0.0])  # [CLS] w1 w2 w3 [SEP]
    joint_first = np.array([0.0, 10.0, 20.0, 0.0])  # [CLS] w1 w2 [SEP]: cut after two word pieces
    joint_second = np.array([10.0, 20.0, 0.0])  # w1 w2 [SEP]
    assert _added(own, joint_first, 0).tolist() == [0.0, 11.0, 22.0, 3.0, 0.0]
    assert _added(own, joint_second, 1).tolist() == [0.0, 11.0, 22.0, 3.0, 0.0]


def test_the_setting_names_both_and_a_sentence_task_refuses_the_head():
    args = build_parser().parse_args(["train", "--para-encoding", "both"])
    cfg = TrainConfig(**given_settings(args))
    assert {s.name: s.head for s in cfg.task_specs()}["para"] == "cross_concat"
    with pytest.raises(ValueError, match="para_encoding.*separate, joint, both"):
        TrainConfig(para_encoding="twice")
    with pytest.raises(TaskError, match="head='cross_concat' is not allowed; allowed values: linear"):
        TaskSpec("s", input="sentence", classes=2, head="cross_concat")
    spec = TaskSpec("nli", input="pair", classes=3, head="cross_concat", text_columns=("p", "h"))
    assert spec.pair_encoding == "both" and spec.num_outputs == 3


def train_reading_both_ways(base, run_dir, task: str, **encoding) -> MultitaskBert:
    """Trains the tiny model with per-task adapters and `task` read both ways; checks that both reads
    trained their adapters and that the best checkpoint predicts as the trained model; the checkpoint's
    model."""
    from test_lora import predictions
    from test_train import tiny_cfg
    from mtbert.train import Trainer
    cfg = tiny_cfg(base, epochs=2, mode="lora", lora_per_task=True, lora_rank=2, lr=5e-3, **encoding)
    t = Trainer(cfg, run_dir, progress=False)
    assert t.run() == "finished"
    loaded, tok, _ = load_checkpoint(run_dir / "best")
    assert list(loaded.lora.tasks) == loaded.adapter_sets()
    for name in (task, f"{task}:joint"):  # both reads trained their adapters
        assert all(torch.count_nonzero(a.lora_B) > 0 for ad in loaded.lora.tasks[name]["layers"] for a in ad.values())
    got, want = predictions(t.model, t.tok), predictions(loaded, tok)
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=0, rtol=0)
    return loaded


def test_training_reads_both_ways_and_its_checkpoint_predicts_as_the_trained_model(tiny_base, tmp_path):
    loaded = train_reading_both_ways(tiny_base, tmp_path / "run", "para", para_encoding="both")
    assert loaded.cfg.task("para").head == "cross_concat"


def test_each_reads_own_logits_are_its_share_of_the_sum_and_the_read_loss_adds_them(tiny_base):
    """read_loss_weight: the joint read's logits depend on j alone, the separate read's on u, v alone;
    the two shares add up to the head's logits (the bias counted once), and the loss is the sum's loss
    plus the weight times the mean of the reads' own losses."""
    import torch.nn.functional as F
    model, tok = both_model(tiny_base)
    batch = make_batch(model.cfg.task("para"), PAIRS, tok)
    head = model.task_heads["para"]
    with torch.no_grad():
        out, (zj, zs) = model.output("para", batch, reads=True)
        torch.testing.assert_close(out, model.output("para", batch), atol=0, rtol=0)
        torch.testing.assert_close(zj + zs - head.bias, out, atol=1e-5, rtol=0)
        j = model.embed(batch["enc"], "para:joint")
        u, v = model.embed(batch["a"], "para"), model.embed(batch["b"], "para")
        j2 = torch.randn_like(j)  # another joint read moves only the joint share, and vice versa
        _, (zj2, zs2) = model.pair_output("para", u, v, j2, reads=True)
        torch.testing.assert_close(zs2, zs, atol=1e-6, rtol=0)  # u, v embedded apart: float rounding
        assert not torch.allclose(zj2, zj, atol=1e-3)
        _, (zj3, zs3) = model.pair_output("para", v, u * 2, j, reads=True)
        torch.testing.assert_close(zj3, zj, atol=1e-6, rtol=0)
        assert not torch.allclose(zs3, zs, atol=1e-3)
        y = batch["labels"].float()
        bce = F.binary_cross_entropy_with_logits
        want = bce(out, y) + 0.7 * (bce(zj, y) + bce(zs, y)) / 2
        torch.testing.assert_close(model.loss("para", batch, read_weight=0.7), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.loss("para", batch), bce(out, y), atol=1e-6, rtol=0)
        sts = make_batch(model.cfg.task("sts"), [Example("s", "a cat sits", "a cat sat", 4.2),
                                                 Example("t", "dogs run", "it rains", 0.4)], tok)
        out, (zj, zs) = model.output("sts", sts, reads=True)  # regression: each share through the sigmoid
        assert (0 < zj).all() and (zj < 5).all() and (0 < zs).all() and (zs < 5).all()
    with pytest.raises(ValueError, match="only a cross_concat head reads a pair two ways"):
        model.output("sst", make_batch(model.cfg.task("sst"), [Example("x", "fine", None, 2)], tok), reads=True)


def test_the_trainer_passes_the_read_loss_weight_and_other_heads_ignore_it(tiny_base, tmp_path, monkeypatch):
    from test_train import tiny_cfg
    from mtbert.train import Trainer
    seen = []
    plain = MultitaskBert.loss

    def spy(self, task, batch, read_weight=0.0):
        seen.append((task, read_weight))
        return plain(self, task, batch, read_weight)
    monkeypatch.setattr(MultitaskBert, "loss", spy)
    cfg = tiny_cfg(tiny_base, max_steps=1, para_encoding="both", read_loss_weight=0.5)
    assert Trainer(cfg, tmp_path / "run", progress=False, log=lambda m: None).run() == "finished"
    assert sorted(set(seen)) == [("para", 0.5), ("sst", 0.5), ("sts", 0.5)]  # only para's head uses it
    monkeypatch.undo()
    encoder, tok = load_encoder(tiny_base)
    plain_model = MultitaskBert(encoder, ModelConfig(pooling="mean")).eval()  # sst linear, para concat, sts cosine
    with torch.no_grad():
        for task in ("sst", "para", "sts"):
            examples = PAIRS if task == "para" else [Example("s", "a cat sits", "a cat sat", 4.2),
                                                     Example("t", "dogs run", "it rains", 0.4)]
            if task == "sst":
                examples = [Example("x", "fine", None, 2), Example("y", "awful", None, 0)]
            batch = make_batch(plain_model.cfg.task(task), examples, tok)
            torch.testing.assert_close(plain_model.loss(task, batch, read_weight=0.5), plain_model.loss(task, batch),
                                       atol=0, rtol=0)
    with pytest.raises(ValueError, match="read_loss_weight=-1 is not allowed; allowed values: a number >= 0"):
        TrainConfig(read_loss_weight=-1, para_encoding="both")
