"""The STS CoSENT loss and R-Drop (mtbert/model.py), as training settings and in the trainer."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mtbert.checkpoint import load_base
from mtbert.config import TrainConfig
from mtbert.data import Example, make_batch
from mtbert.model import ModelConfig, MultitaskBert, cosent_loss
from mtbert.tasks import TaskError, TaskSpec, builtin_tasks
from mtbert.train import Trainer

SST = [Example("s1", "a gorgeous , witty film", None, 4), Example("s2", "dull", None, 0),
       Example("s3", "it is a movie that exists , with actors in it", None, 2)]
PAIRS = [Example("p1", "How do I learn Python ?", "What is the best way to learn Python ?", 1),
         Example("p2", "Is the moon made of cheese ?", "How tall is Everest ?", 0),
         Example("p3", "A man plays a guitar .", "A man is playing the guitar loudly on stage .", 1),
         Example("p4", "A dog runs .", "A dog is running in the park .", 1)]
STS = [Example(e.id, e.text_a, e.text_b, y) for e, y in zip(PAIRS, (3.8, 0.0, 4.6, 2.4))]


def model_for(base, dropout: float = 0.0, **cfg) -> tuple[MultitaskBert, object]:
    enc, tok = load_base(str(base), dropout=dropout)
    torch.manual_seed(0)
    return MultitaskBert(enc, ModelConfig.from_dict({"dropout": dropout, **cfg})), tok


# ---- CoSENT -----------------------------------------------------------------------------------

def test_cosent_is_su_2022_formula_on_a_hand_computed_batch():
    cos, y = torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64), torch.tensor([5.0, 1.0, 3.0])
    # pairs (i, j) with y_i > y_j: (0, 1), (0, 2), (2, 1); terms λ (cos_j - cos_i) = -16, -8, -8
    assert float(cosent_loss(cos, y, 20.0)) == pytest.approx(math.log(1 + math.exp(-16) + 2 * math.exp(-8)))
    # the wrong order costs: cos 0.1 for the most similar pair, 0.9 for the least; terms 16, 8, 8
    swapped = cosent_loss(torch.tensor([0.1, 0.9, 0.5], dtype=torch.float64), y, 20.0)
    assert float(swapped) == pytest.approx(math.log(1 + math.exp(16) + 2 * math.exp(8)), rel=1e-9)
    assert float(cosent_loss(cos, torch.tensor([2.0, 2.0, 2.0]))) == pytest.approx(0.0)  # ties: no pair counts


def test_cosent_depends_on_the_order_of_the_labels_only():
    g = torch.Generator().manual_seed(1)
    cos, y = torch.rand(16, generator=g) * 2 - 1, torch.randint(0, 6, (16,), generator=g).float()
    base = cosent_loss(cos, y)
    for monotone in (lambda t: t.exp(), lambda t: 3 * t ** 3 - 7, lambda t: torch.sigmoid(t - 2.5)):
        assert torch.allclose(cosent_loss(cos, monotone(y)), base)
    assert not torch.allclose(cosent_loss(cos, -y), base)  # a decreasing map reverses the order: not invariant


def test_the_cosent_sts_head_scores_the_cosine_over_the_range_and_trains_on_it(tiny_base):
    model, tok = model_for(tiny_base, sts_loss="cosent")
    assert model.cfg.task("sts").loss == "cosent"
    model.cosent_scale = 7.5
    sts = make_batch("sts", STS, tok)
    head = model.task_heads["sts"]
    cos = F.cosine_similarity(head(model.embed(sts["a"])), head(model.embed(sts["b"])))
    assert torch.allclose(model.output("sts", sts), 5 * (cos + 1) / 2, atol=1e-6)  # [-1, 1] onto 0..5
    assert torch.allclose(model.loss("sts", sts), cosent_loss(cos, sts["labels"], 7.5), atol=1e-5)
    model.loss("sts", sts).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_cosent_is_a_cosine_head_loss_and_a_joint_sts_keeps_mse():
    with pytest.raises(TaskError, match="loss='cosent' is not allowed; allowed values: mse unless head is cosine"):
        TaskSpec("s", input="pair", kind="regression", range=(0, 1), head="cross", loss="cosent",
                 text_columns=("a", "b"), metrics=("pearson",), main_metric="pearson")
    assert [s.loss for s in builtin_tasks(sts_loss="cosent") if s.name == "sts"] == ["cosent"]
    assert [s.loss for s in builtin_tasks(sts_loss="cosent", sts_encoding="joint") if s.name == "sts"] == ["mse"]


# ---- R-Drop -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sts_loss", ["cosine_mse", "cosent"])
def test_without_dropout_r_drop_is_the_plain_loss(tiny_base, sts_loss):
    model, tok = model_for(tiny_base, dropout=0.0, sts_loss=sts_loss)
    model.train()
    for task, examples in (("sst", SST), ("para", PAIRS), ("sts", STS)):
        batch = make_batch(model.cfg.task(task), examples, tok)
        plain = model.loss(task, batch)
        assert torch.allclose(model.rdrop_loss(task, batch, alpha=5.0), plain, atol=1e-6), task


def by_hand(task: str, out1: torch.Tensor, out2: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """R-Drop's objective written out: the mean of the two negative log-likelihoods (squared errors)
    and alpha x ½(KL(p1‖p2) + KL(p2‖p1)) (the squared difference of the scores)."""
    if task == "sts":
        nll = ((out1 - y) ** 2).mean() + ((out2 - y) ** 2).mean()
        return nll / 2 + alpha * ((out1 - out2) ** 2).mean()
    if task == "sst":
        p1 = torch.exp(out1) / torch.exp(out1).sum(1, keepdim=True)
        p2 = torch.exp(out2) / torch.exp(out2).sum(1, keepdim=True)
        rows = torch.arange(len(y))
        nll = -torch.log(p1[rows, y]).mean() - torch.log(p2[rows, y]).mean()
    else:
        q1, q2 = 1 / (1 + torch.exp(-out1)), 1 / (1 + torch.exp(-out2))
        p1, p2 = torch.stack([1 - q1, q1], 1), torch.stack([1 - q2, q2], 1)
        rows, yi = torch.arange(len(y)), y.long()
        nll = -torch.log(p1[rows, yi]).mean() - torch.log(p2[rows, yi]).mean()
    kl = (p1 * torch.log(p1 / p2)).sum(1) + (p2 * torch.log(p2 / p1)).sum(1)
    return nll / 2 + alpha * 0.5 * kl.mean()


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_r_drop_gradient_matches_a_hand_written_reference(tiny_base, task):
    model, tok = model_for(tiny_base, dropout=0.3)
    model.train()
    examples = {"sst": SST, "para": PAIRS, "sts": STS}[task]
    batch = make_batch(model.cfg.task(task), examples, tok)
    params = [p for p in model.parameters() if p.requires_grad]

    torch.manual_seed(42)  # the same dropout masks for both computations
    loss = model.rdrop_loss(task, batch, alpha=2.0)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    torch.manual_seed(42)
    out1, out2 = model.output(task, batch), model.output(task, batch)
    assert not torch.allclose(out1, out2)  # dropout made the two passes differ
    ref = by_hand(task, out1, out2, batch["labels"], alpha=2.0)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    assert torch.allclose(loss, ref, atol=1e-5)
    assert ref > by_hand(task, out1, out2, batch["labels"], alpha=0.0)  # the R-Drop term is on
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None or not g.any()
            continue
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)


def tiny_cfg(base, **kw) -> TrainConfig:
    d = dict(base_model=str(base), epochs=1, max_steps=2, batch_size=4, lr=1e-3, train_subset=8, eval_subset=4,
             train_eval_subset=4, max_length=32, seed=3, final_full_eval=False)
    return TrainConfig(**{**d, **kw})


def test_the_trainer_uses_r_drop_and_the_cosent_scale_it_is_given(tiny_base, tmp_path, monkeypatch):
    calls = []
    plain = MultitaskBert.rdrop_loss

    def spy(self, task, batch, alpha, *rest):
        calls.append((task, alpha, self.cosent_scale, self.cfg.task(task).loss))
        return plain(self, task, batch, alpha, *rest)
    monkeypatch.setattr(MultitaskBert, "rdrop_loss", spy)
    cfg = tiny_cfg(tiny_base, rdrop_alpha=0.5, sts_loss="cosent", cosent_scale=12.0)
    run = tmp_path / "run"
    assert Trainer(cfg, run, progress=False, log=lambda m: None).run() == "finished"
    assert sorted(set(calls)) == [("para", 0.5, 12.0, "bce"), ("sst", 0.5, 12.0, "ce"), ("sts", 0.5, 12.0, "cosent")]
    assert len(calls) == 2 * 3  # two steps of the three tasks
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for r in recs if r["type"] == "step" for v in r["loss"].values())
    calls.clear()
    assert Trainer(tiny_cfg(tiny_base), tmp_path / "off", progress=False, log=lambda m: None).run() == "finished"
    assert calls == []  # rdrop_alpha 0: one pass, the plain loss


@pytest.mark.parametrize("bad, needle", [
    ({"rdrop_alpha": -1}, "rdrop_alpha=-1 is not allowed; allowed values: a number >= 0"),
    ({"rdrop_alpha": 1.0, "dropout": 0.0}, "rdrop_alpha=1.0 is not allowed with dropout=0"),
    ({"rdrop_alpha": 1.0, "sts_loss": "cosine_embedding"}, "not allowed with the cosine_embedding loss (task sts)"),
    ({"sts_loss": "angle"}, "sts_loss='angle' is not allowed; allowed values: cosine_mse, cosine_embedding, cosent"),
    ({"cosent_scale": 0}, "cosent_scale=0 is not allowed; allowed values: a number > 0"),
])
def test_bad_settings_name_the_setting_and_the_allowed_values(bad, needle):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(bad)
    assert needle in str(e.value)
