"""Order-free pair tasks (symmetric_pairs): a pair of such a task is read in a random order in training,
and the model answers with the mean of its outputs over (a, b) and (b, a). Checked against a hand
computation on every pair head (separate, joint and both reads, with members), on the evaluation and
Playground paths; the training streams' swaps, their resume, a real run, checkpoints and the setting."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from mtbert.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from mtbert.cli import build_parser, given_settings
from mtbert.config import TrainConfig
from mtbert.data import Example, make_batch
from mtbert.evaluate import predict_raw
from mtbert.lora import LoraConfig, add_lora
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.tasks import builtin_tasks
from mtbert.train import TaskStream, Trainer, build_data

PAIRS = [Example("p1", "How do I learn Python ?", "What is the best way to learn Python ?", 1),
         Example("p2", "Is the moon made of cheese ?", "How tall is Everest ?", 0),
         Example("p3", "How do I learn Python ?", "How tall is Everest ?", 0)]  # a repeated question
SWAPPED = [Example(e.id, e.text_b, e.text_a, e.label) for e in PAIRS]

# (para's encoding, sts's head, members): the pair heads an order-free task can have
HEADS = {"separate": ("separate", "cosine", {}), "joint": ("joint", "cosine", {}),
         "both": ("both", "cross_concat", {}), "members": ("separate", "cosine", {"para": 2, "sts": 2})}


def model_with(base, heads: str, symmetric=("para", "sts")) -> tuple[MultitaskBert, object]:
    """The tiny model with per-task adapters, every trained weight random (as after training), in eval mode."""
    para_encoding, sts_head, members = HEADS[heads]
    encoder, tok = load_encoder(base)
    torch.manual_seed(4)
    tasks = [replace(s, head=sts_head) if s.name == "sts" else s
             for s in builtin_tasks(para_encoding=para_encoding, sts_encoding="both" if sts_head != "cosine" else None)]
    model = MultitaskBert(encoder, ModelConfig(pooling="mean", tasks=tasks, members=members,
                                               symmetric=list(symmetric),
                                               logit_offsets={"para": -0.7})).eval()
    for p in add_lora(model, LoraConfig(rank=2, per_task=True)).parameters():
        torch.nn.init.normal_(p, std=0.3)
    for p in model.task_heads.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model, tok


def by_hand(model, tok, task: str, orders) -> torch.Tensor:
    """finish(the mean of output() over the given orders of PAIRS), one batch each."""
    with torch.inference_mode():
        outs = [model.output(task, make_batch(model.cfg.task(task), ex, tok)) for ex in orders]
    return model.finish(task, sum(outs) / len(outs))


@pytest.mark.parametrize("heads", list(HEADS))
def test_an_order_free_task_answers_the_mean_of_its_outputs_over_both_orders(tiny_base, heads):
    model, tok = model_with(tiny_base, heads)
    for task in ("para", "sts"):
        one_way = by_hand(model, tok, task, [PAIRS])
        want = by_hand(model, tok, task, [PAIRS, SWAPPED])
        got = torch.from_numpy(predict_raw(model, tok, task, PAIRS, batch_size=2))
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=0)
        # the same answer whichever way round the pair is given
        torch.testing.assert_close(torch.from_numpy(predict_raw(model, tok, task, SWAPPED)), got, atol=1e-5, rtol=0)
        if task == "para" or heads == "both":  # heads that read the order: the one-way answer differs
            assert not torch.allclose(one_way.float(), want.float(), atol=1e-4)


def test_a_task_not_named_answers_one_way_as_before(tiny_base):
    model, tok = model_with(tiny_base, "both", symmetric=())
    got = torch.from_numpy(predict_raw(model, tok, "para", PAIRS))
    torch.testing.assert_close(got, by_hand(model, tok, "para", [PAIRS]).float(), atol=1e-5, rtol=0)
    assert "symmetric" not in model.cfg.to_dict()  # a model without it writes the very dict it did before


def test_the_playground_answers_as_evaluation_does(tiny_base):
    from mtbert.studio.playground import pair_scores
    model, tok = model_with(tiny_base, "both")
    e = PAIRS[0]
    got = pair_scores(model, tok, e.text_a, e.text_b)
    assert got["paraphrase"] == pytest.approx(float(predict_raw(model, tok, "para", [e])[0]), abs=1e-6)
    assert got["paraphrase"] == pytest.approx(pair_scores(model, tok, e.text_b, e.text_a)["paraphrase"], abs=1e-6)


def test_the_gender_probe_answers_both_orders_too(tiny_base):
    from mtbert.probe import ProbeItem, run_probe
    model, tok = model_with(tiny_base, "both", symmetric=("para",))
    items = [ProbeItem("t", (e.text_a, e.text_b), (e.text_b, e.text_a)) for e in PAIRS]  # each item's two orders
    got = run_probe(model, tok, items, tasks=["para"])
    t = got.tasks[0]
    torch.testing.assert_close(torch.from_numpy(t.original), torch.from_numpy(t.counterfactual), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(t.original).float(),
                               torch.from_numpy(predict_raw(model, tok, "para", PAIRS)), atol=1e-5, rtol=0)


def test_an_explanation_says_which_order_it_explains(tiny_base):
    from mtbert.explain import integrated_gradients
    model, tok = model_with(tiny_base, "both", symmetric=("para",))
    e = PAIRS[0]
    att = integrated_gradients(model, tok, "para", e.text_a, e.text_b, steps=4)
    assert att.output.endswith("for the pair in the order given")
    # f(x) is the answer to (a, b) alone, not the mean over both orders the model answers with
    assert att.f_x == pytest.approx(float(by_hand(model, tok, "para", [[e]])[0]), abs=1e-5)
    assert att.f_x != pytest.approx(float(predict_raw(model, tok, "para", [e])[0]), abs=1e-4)
    model.cfg.symmetric = []
    assert not integrated_gradients(model, tok, "para", e.text_a, e.text_b, steps=4).output.endswith("order given")


def test_training_streams_swap_about_half_the_pairs_and_repeat_them_on_resume():
    ex = [Example(str(i), f"a{i}", f"b{i}", i % 2) for i in range(64)]
    plain = TaskStream("para", ex, 8, seed=5, bucket=False, index=1)
    swapping = TaskStream("para", ex, 8, seed=5, bucket=False, index=1, swap=True)
    seen = []
    for _ in range(24):  # three passes
        a, b = plain.next(), swapping.next()
        assert [e.id for e in a] == [e.id for e in b]  # the same pairs, in the same batches
        for x, y in zip(a, b):
            assert y == x or y == Example(x.id, x.text_b, x.text_a, x.label)  # the label goes with the pair
            seen.append(y != x)
    assert 0.35 < sum(seen) / len(seen) < 0.65
    # which pairs are swapped is a function of the batch's place: a stream resumed there repeats it
    again = TaskStream("para", ex, 8, seed=5, bucket=False, index=1, swap=True)
    again.load_state({"pass": 1, "position": 3})
    swapping.load_state({"pass": 1, "position": 3})
    assert again.next() == swapping.next()
    # and differs from one batch to the next, and between passes of the same pairs
    firsts = {}
    for p in range(3):
        s = TaskStream("para", ex, 8, seed=5, bucket=False, index=1, swap=True)
        s.load_state({"pass": p, "position": 0})
        firsts[p] = {e.id: e.text_a for b in range(8) for e in s.next()}
    assert firsts[0] != firsts[1] != firsts[2]


def test_a_real_run_trains_swapped_pairs_and_its_checkpoint_answers_both_ways(tiny_base, tmp_path):
    from test_train import assert_resumes_exactly, tiny_cfg
    cfg = tiny_cfg(tiny_base, symmetric_pairs="para")
    read = []

    class Reading(Trainer):
        def _setup(self):
            super()._setup()
            stream, plain_next = self.data.streams["para"], self.data.streams["para"].next

            def next_():
                out = plain_next()
                read.extend(out)
                return out
            stream.next = next_

    full = tmp_path / "runs" / "full"
    assert Reading(cfg, full, progress=False).run() == "finished"
    train = {e.id: e for e in build_data(tiny_cfg(tiny_base), lambda m: None).train["para"]}
    swapped = [e for e in read if (e.text_a, e.text_b) == (train[e.id].text_b, train[e.id].text_a)]
    assert read and 0 < len(swapped) < len(read) and all(e.label == train[e.id].label for e in read)
    meta = json.loads((full / "best" / "mtbert.json").read_text())
    assert meta["model"]["symmetric"] == ["para"]
    loaded, tok, _ = load_checkpoint(full / "best")
    assert loaded.cfg.symmetric == ["para"]
    torch.testing.assert_close(predict_raw(loaded, tok, "para", PAIRS), predict_raw(loaded, tok, "para", SWAPPED),
                               atol=1e-6, rtol=0)
    assert_resumes_exactly(cfg, full, tmp_path / "runs" / "part", stop_at=3)


def test_a_checkpoint_keeps_its_order_free_tasks(tiny_base, tmp_path):
    model, tok = model_with(tiny_base, "both", symmetric=("para",))
    folder = save_checkpoint(model, tok, tmp_path / "ck", base=str(tiny_base), include_encoder=False)
    loaded, tok2, _ = load_checkpoint(folder)
    assert loaded.cfg.symmetric == ["para"]
    torch.testing.assert_close(predict_raw(loaded, tok2, "para", PAIRS), predict_raw(model, tok, "para", PAIRS),
                               atol=0, rtol=0)


def test_the_setting_is_parsed_and_checked_by_name():
    cfg = TrainConfig.from_dict(given_settings(build_parser().parse_args(["train", "--symmetric-pairs", "para,sts"])))
    assert cfg.symmetric_pairs == ["para", "sts"]
    assert TrainConfig(symmetric_pairs=["para"]).symmetric_pairs == ["para"]
    assert TrainConfig().symmetric_pairs == []
    for bad in ("sst", "mrpc", "para,para"):  # a sentence task, a task not trained, a task named twice
        with pytest.raises(ValueError, match=r"setting symmetric_pairs=.* is not allowed; allowed values: pair tasks "
                                             r"trained, each named once \(para, sts\)"):
            TrainConfig(symmetric_pairs=bad)
    with pytest.raises(ValueError, match=r"symmetric\['sst'\] is not allowed; allowed: the pair tasks of the model "
                                         r"\(para, sts\)"):
        ModelConfig(tasks=builtin_tasks(), symmetric=["sst"])
