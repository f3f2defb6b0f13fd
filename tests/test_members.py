"""Ensemble members of a task (lora_task_members, mtbert/model.py): K heads and K adapter sets for a
task, each trained on the task's loss of its own output, the task's output their mean. Checked against
K models of one member each, on every prediction path; the loss and its gradients against each
member's own; checkpoints, settings and a real training run."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mtbert.checkpoint import load_checkpoint, save_checkpoint
from mtbert.cli import build_parser, given_settings
from mtbert.config import TrainConfig
from mtbert.data import make_batch
from mtbert.lora import ADAPTERS_FILE, LoraConfig, add_lora, lora_of
from mtbert.model import ModelConfig, MultitaskBert, member_name
from mtbert.tasks import builtin_tasks
from test_lora import PAIRS, SINGLES, assert_close, predictions
from test_lora_per_task import TASKS, bare_encoder, raw_predictions
from mtbert.checkpoint import load_encoder

MEMBERS = {"sst": 2, "sts": 3}


def with_members(base, members=MEMBERS, seed: int = 1, **cfg) -> tuple[MultitaskBert, object]:
    """The tiny model with per-task adapters and `members`, every trained weight random (as after
    training), in eval mode."""
    encoder, tok = load_encoder(base)
    torch.manual_seed(seed)
    model = MultitaskBert(encoder, ModelConfig(pooling="mean", members=members, **cfg)).eval()
    for p in add_lora(model, LoraConfig(rank=2, alpha=4.0, per_task=True)).parameters():
        torch.nn.init.normal_(p, std=0.3)
    for p in model.task_heads.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model, tok


def member_alone(model: MultitaskBert, task: str, m: int) -> MultitaskBert:
    """A model without members whose `task` is member m of `model`: that member's head and adapters."""
    alone = MultitaskBert(bare_encoder(model), ModelConfig(pooling="mean")).eval()
    add_lora(alone, LoraConfig(**model.lora.cfg.to_dict()))
    for t in TASKS:
        src = member_name(t, m) if t == task else t
        alone.task_heads[t].load_state_dict(model.task_heads[src].state_dict())
        alone.lora.tasks[t].load_state_dict(model.lora.tasks[src].state_dict())
    return alone


def test_a_tasks_output_is_the_mean_of_its_members_each_a_model_of_its_own(tiny_base):
    model, tok = with_members(tiny_base)
    assert model.members("sts") == ["sts", "sts:2", "sts:3"] and model.members("para") == ["para"]
    got, got_raw = predictions(model, tok), raw_predictions(model, tok)
    batches = {"sst": make_batch("sst", SINGLES, tok), "sts": make_batch("sts", PAIRS, tok, "separate")}
    for task, k in MEMBERS.items():
        alone = [member_alone(model, task, m) for m in range(1, k + 1)]
        with torch.inference_mode():
            outs = [a.output(task, batches[task]) for a in alone]
        want = model.finish(task, torch.stack(outs).mean(0))
        torch.testing.assert_close(got[task], want, atol=1e-6, rtol=0)
        torch.testing.assert_close(got_raw[task], want, atol=1e-5, rtol=0)  # predict_raw's separate path
        members = [predictions(a, tok)[task] for a in alone]
        assert not torch.allclose(members[0], members[1], atol=1e-4)  # the members differ
    # a task with one member is the task's own head and adapters, untouched by the others' members
    torch.testing.assert_close(got["para"], predictions(member_alone(model, "sts", 1), tok)["para"], atol=0, rtol=0)


def test_each_member_learns_from_its_own_loss_only(tiny_base):
    model, tok = with_members(tiny_base)
    model.dropout.p = 0.0
    for mod in model.lora.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    batch = make_batch("sts", PAIRS, tok, "separate")
    batch["labels"] = torch.tensor([4.2, 0.4])
    loss = model.loss("sts", batch)
    outs = model.member_outputs("sts", batch)
    own = [torch.nn.functional.mse_loss(o.float(), batch["labels"]) for o in outs]
    torch.testing.assert_close(loss, sum(own) / 3)
    # not the loss of the mean: the members are not pulled toward each other's errors
    assert not torch.allclose(loss, torch.nn.functional.mse_loss(torch.stack(outs).mean(0), batch["labels"]))
    loss.backward()
    head2 = model.task_heads["sts:2"].weight.grad.clone()
    model.zero_grad()
    (own_2 := model.loss_of("sts", model.member_outputs("sts", batch)[1], batch["labels"]) / 3).backward()
    torch.testing.assert_close(model.task_heads["sts:2"].weight.grad, head2)
    assert model.task_heads["sts"].weight.grad is None or not model.task_heads["sts"].weight.grad.any()
    assert own_2.item() > 0


def test_a_checkpoint_with_members_names_each_and_reloads_them(tiny_base, tmp_path):
    model, tok = with_members(tiny_base)
    folder = save_checkpoint(model, tok, tmp_path / "best", base=str(tiny_base), include_encoder=False)
    meta = json.loads((folder / "mtbert.json").read_text())
    assert meta["model"]["members"] == MEMBERS
    assert {k.split(".")[1] for k in load_file(str(folder / ADAPTERS_FILE))} == {
        "sst", "sst:2", "para", "sts", "sts:2", "sts:3"}
    assert {k.split(".")[0] for k in load_file(str(folder / "heads.safetensors"))} == {
        "sst", "sst:2", "para", "sts", "sts:2", "sts:3"}
    from mtbert.hub import model_card
    card = str(model_card(folder, "t/members"))
    assert "3 sets for sts, an ensemble of 3 members whose mean it predicts" in card and "2 sets for sst" in card
    loaded, ltok, _ = load_checkpoint(folder)
    assert loaded.cfg.members == MEMBERS and lora_of(loaded).cfg.per_task
    assert_close(predictions(loaded, ltok), predictions(model, tok), atol=0)
    assert_close(raw_predictions(loaded, ltok), raw_predictions(model, tok), atol=0)
    # one member per task is the model as it was before members existed: the same dict, the same weights
    plain = ModelConfig(pooling="mean", members={"sts": 1})
    assert plain.members == {} and "members" not in plain.to_dict()
    torch.manual_seed(5)
    a = MultitaskBert(bare_encoder(model), ModelConfig(pooling="mean")).task_heads.state_dict()
    torch.manual_seed(5)
    b = MultitaskBert(bare_encoder(model), ModelConfig(pooling="mean", members={"sts": 2})).task_heads.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_members_setting_is_parsed_and_checked_by_name():
    cfg = TrainConfig.from_dict(given_settings(build_parser().parse_args(
        ["train", "--mode", "lora", "--lora-per-task", "--lora-task-members", "sts=3"])))
    assert cfg.lora_task_members == ["sts=3"] and cfg.task_member_map() == {"sts": 3}
    assert TrainConfig(mode="lora", lora_per_task=True, lora_task_members={"sts": 2}).task_member_map() == {"sts": 2}
    assert TrainConfig().task_member_map() == {}
    for bad in ("sts=0", "sts=x", "sts", "sts=2,sts=3"):
        with pytest.raises(ValueError, match=r"setting lora_task_members=.* allowed values: task=K items"):
            TrainConfig(mode="lora", lora_per_task=True, lora_task_members=bad)
    with pytest.raises(ValueError, match=r"lora_task_members names mrpc; allowed values: task=K for the tasks "
                                         r"trained \(sst, para, sts\)"):
        TrainConfig(mode="lora", lora_per_task=True, lora_task_members="mrpc=2")
    with pytest.raises(ValueError, match=r"lora_task_members='sts=2' is not allowed without per-task adapters"):
        TrainConfig(mode="lora", lora_task_members="sts=2")
    with pytest.raises(ValueError, match=r"lora_task_members names para, read both ways"):
        TrainConfig(mode="lora", lora_per_task=True, para_encoding="both", lora_task_members="para=2")
    specs = builtin_tasks()
    with pytest.raises(ValueError, match=r"members\['mrpc'\]=2 is not allowed"):
        ModelConfig(tasks=specs, members={"mrpc": 2})
    with pytest.raises(ValueError, match=r"members\['sts'\]=0 is not allowed"):
        ModelConfig(tasks=specs, members={"sts": 0})


def test_training_with_members_trains_each_and_resumes_exactly(tiny_base, tmp_path):
    from test_train import assert_resumes_exactly, tiny_cfg
    from mtbert.train import Trainer
    cfg = tiny_cfg(tiny_base, epochs=2, mode="lora", lora_per_task=True, lora_rank=2, lora_targets="query,value",
                   lr=5e-3, lora_task_members="sts=2")
    full = tmp_path / "runs" / "full"
    t = Trainer(cfg, full, progress=False)
    assert t.run() == "finished"
    loaded, tok, meta = load_checkpoint(full / "best")
    assert loaded.cfg.members == {"sts": 2}
    first, second = (loaded.lora.tasks[n]["layers"][0]["query"].lora_B for n in ("sts", "sts:2"))
    assert first.any() and second.any() and not torch.allclose(first, second)  # both trained, each its own way
    assert not torch.equal(loaded.task_heads["sts"].weight, loaded.task_heads["sts:2"].weight)
    assert_close(raw_predictions(t.model, t.tok), raw_predictions(loaded, tok), atol=0)
    assert_resumes_exactly(cfg, full, tmp_path / "runs" / "part", stop_at=3)


def test_export_stores_heads_and_adapters_in_half_precision_and_they_load_back(tiny_base, tmp_path, capsys):
    """--heads-dtype float16 halves heads.safetensors (most of it the members' cosine projections); the
    loaded heads are the float16 roundings of the originals, the model predicts as before to float16's
    precision, and export says which copy metrics.json measured. With --merge it is refused by name."""
    from mtbert.cli import main
    model, tok = with_members(tiny_base)
    src = save_checkpoint(model, tok, tmp_path / "best", base=str(tiny_base), include_encoder=False,
                          metrics={"dev": {"average": 0.5}})
    out = tmp_path / "half"
    assert main(["export", "--checkpoint", str(src), "--out", str(out), "--adapters-dtype", "float16",
                 "--heads-dtype", "float16"]) == 0
    assert "measures the copy with its adapters in float16 and heads in float16" in capsys.readouterr().out
    full, half = (load_file(str(f / "heads.safetensors")) for f in (src, out))
    assert {v.dtype for v in half.values()} == {torch.float16} and half.keys() == full.keys()
    nbytes = lambda tensors: sum(v.numel() * v.element_size() for v in tensors.values())
    assert 2 * nbytes(half) == nbytes(full)
    loaded, ltok, _ = load_checkpoint(out)
    heads = {f"{n}.{k}": v for n, h in loaded.heads().items() for k, v in h.state_dict().items()}
    for k, v in full.items():
        assert heads[k].dtype == torch.float32 and torch.equal(heads[k], v.half().float()), k
    assert_close(predictions(loaded, ltok), predictions(model, tok), atol=2e-2)
    assert main(["export", "--checkpoint", str(src), "--out", str(tmp_path / "x"), "--heads-dtype", "float16",
                 "--merge"]) == 1
    assert "--heads-dtype applies to a checkpoint exported without --merge" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
