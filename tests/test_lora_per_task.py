"""LoRA adapters per task (lora_per_task, mtbert/lora.py): each task's inputs are encoded with its own
adapters on every path (training, predict, predict_raw, attention, explanations, int8/bf16), an
encoder call with no task chosen is an error, checkpoints keep each task's adapters, and
`export --merge` refuses them."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from mtbert.checkpoint import load_checkpoint, save_checkpoint
from mtbert.cli import build_parser, given_settings, main
from mtbert.config import TrainConfig
from mtbert.data import make_batch
from mtbert.evaluate import predict_raw
from mtbert.explain import integrated_gradients
from mtbert.lora import ADAPTERS_FILE, LoraConfig, LoraError, _Hook, add_lora, lora_of, merge_lora, task_adapters
from mtbert.model import MultitaskBert
from mtbert.quantize import for_inference, smooth
from test_lora import PAIRS, SINGLES, adapted, assert_close, predictions

TASKS = ("sst", "para", "sts")
TEXT = "A gorgeous, witty, seductive movie."


def per_task(base, seed: int = 1, **lora) -> tuple[MultitaskBert, object]:
    """The tiny model with adapters per task whose B is not zero (as after training), in eval mode."""
    return adapted(base, seed, per_task=True, **lora)


def raw_predictions(model, tok) -> dict:
    """predict_raw, the evaluation path: a separately encoded pair embeds its distinct sentences alone."""
    return {t: torch.from_numpy(predict_raw(model, tok, t, SINGLES if t == "sst" else PAIRS)) for t in TASKS}


def shared_copy_of(model: MultitaskBert, task: str) -> MultitaskBert:
    """The model with one shared set of adapters: a copy of `task`'s, the same heads."""
    shared = MultitaskBert(bare_encoder(model), model.cfg).eval()
    shared.task_heads.load_state_dict(model.task_heads.state_dict())
    lora = add_lora(shared, LoraConfig(**{k: v for k, v in model.lora.cfg.to_dict().items() if k != "per_task"}))
    lora.layers.load_state_dict(model.lora.tasks[task]["layers"].state_dict())
    return shared


def bare_encoder(model: MultitaskBert):
    encoder = copy.deepcopy(model.encoder)
    for m in encoder.modules():  # the copy's hooks would point at the copy's own Lora
        for k in [k for k, h in m._forward_hooks.items() if isinstance(h, _Hook)]:
            del m._forward_hooks[k]
    return encoder


# ---- the adapters of the active task, and only those ------------------------------------------

def test_changing_one_tasks_adapters_moves_its_outputs_and_leaves_the_others_bit_identical(tiny_base):
    model, tok = per_task(tiny_base)
    before, raw_before = predictions(model, tok), raw_predictions(model, tok)
    for task in TASKS:
        changed = copy.deepcopy(model)
        for p in changed.lora.tasks[task].parameters():
            p.data.mul_(1.5)
        after, raw_after = predictions(changed, tok), raw_predictions(changed, tok)
        for other in TASKS:
            if other == task:
                assert not torch.allclose(after[other], before[other], atol=1e-4), other
                assert not torch.allclose(raw_after[other], raw_before[other], atol=1e-4), other
            else:  # the same numbers, not merely close: B's adapters never ran for A's inputs
                assert torch.equal(after[other], before[other]), (task, other)
                assert torch.equal(raw_after[other], raw_before[other]), (task, other)


def test_a_per_task_adapted_linear_is_the_hand_computation_with_the_active_tasks_adapters(tiny_base):
    model, _ = per_task(tiny_base, rank=3, alpha=5.0, targets=("query", "value", "intermediate"), dropout=0.0)
    layer, scale = model.encoder.layers[1], 5.0 / 3
    x = torch.randn(7, layer.attention.qkv.in_features)
    H = x.size(1)
    W, b = layer.attention.qkv.weight, layer.attention.qkv.bias
    lin = layer.intermediate
    seen = []
    with torch.no_grad():
        for task in TASKS:
            ad = model.lora.tasks[task]["layers"][1]
            with task_adapters(model, task):
                qkv, inter = layer.attention.qkv(x), lin(x)
            for i, part in enumerate(("query", "key", "value")):
                want = x @ W[i * H:(i + 1) * H].T + b[i * H:(i + 1) * H]
                if part in ad:  # W x + b + (alpha/r) B_t A_t x
                    want = want + scale * x @ ad[part].lora_A.T @ ad[part].lora_B.T
                torch.testing.assert_close(qkv[:, i * H:(i + 1) * H], want, atol=1e-5, rtol=1e-5, msg=(task, part))
            want = x @ lin.weight.T + lin.bias + scale * x @ ad["intermediate"].lora_A.T @ ad["intermediate"].lora_B.T
            torch.testing.assert_close(inter, want, atol=1e-5, rtol=1e-5, msg=task)
            seen.append(qkv)
    assert not torch.allclose(seen[0], seen[1]) and not torch.allclose(seen[1], seen[2])  # three distinct sets


def test_every_path_encodes_with_the_tasks_own_adapters(tiny_base):
    """predict, predict_raw, the Playground's answers and attention, and Integrated Gradients give
    for task t what a model whose one shared set of adapters is t's gives."""
    from mtbert.studio import playground as pg
    model, tok = per_task(tiny_base)
    got, raw = predictions(model, tok), raw_predictions(model, tok)
    for task in TASKS:
        shared = shared_copy_of(model, task)
        assert_close({task: got[task]}, {task: predictions(shared, tok)[task]}, atol=1e-6)
        assert_close({task: raw[task]}, {task: raw_predictions(shared, tok)[task]}, atol=1e-6)
        a, b = (TEXT, None) if task == "sst" else (PAIRS[0].text_a, PAIRS[0].text_b)
        assert pg.task_answer(model, tok, task, a, b)["value"] == pg.task_answer(shared, tok, task, a, b)["value"]
        mine, theirs = pg.attention(model, tok, TEXT, task=task), pg.attention(shared, tok, TEXT)
        for x, y in zip(mine.attentions, theirs.attentions):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
        ig, ig_shared = (integrated_gradients(m, tok, task, a, b, steps=8) for m in (model, shared))
        assert ig.f_x == pytest.approx(ig_shared.f_x, abs=1e-6)
        for x, y in zip(ig.attributions, ig_shared.attributions):
            assert x == pytest.approx(y, abs=1e-6)
    # and the attention really differs by task
    views = [pg.attention(model, tok, TEXT, task=t).attentions[-1] for t in TASKS]
    assert not torch.allclose(views[0], views[1])


def test_an_encoder_call_with_no_task_chosen_is_a_clear_error(tiny_base):
    from mtbert.studio import playground as pg
    model, tok = per_task(tiny_base)
    enc = make_batch("sst", SINGLES, tok)["enc"]
    for run in (lambda: model.encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
                lambda: model.embed(enc),  # no task: no adapters to choose
                lambda: model.encoder.layers[0].attention.qkv(torch.randn(2, 32))):
        with pytest.raises(LoraError) as e:
            run()
        msg = str(e.value)
        assert "lora_per_task=true" in msg and "no task chosen" in msg and "sst, para, sts" in msg
    with pytest.raises(LoraError, match=r"task='nope' has no LoRA adapters in this model; allowed values: sst, para"):
        with task_adapters(model, "nope"):
            pass
    with pytest.raises(pg.InputError, match=r"own LoRA adapters for each task \(lora_per_task\).*sst, para, sts"):
        pg.attention(model, tok, TEXT)
    with pytest.raises(LoraError, match="lora_per_task=true"):
        merge_lora(model)
    # a task chosen around the call, and nested choices restore the outer one
    with task_adapters(model, "sst"):
        outer = model.embed(enc)
        with task_adapters(model, "sts"):
            assert not torch.allclose(model.embed(enc), outer)
        assert torch.equal(model.embed(enc), outer)
    with pytest.raises(LoraError):  # and nothing is left chosen after the blocks
        model.embed(enc)


def test_copies_and_inference_precisions_keep_each_tasks_adapters(tiny_base):
    """Deep copies (the weight average) hook their own adapters; int8 and bf16 keep the adapters in fp32
    beside the converted encoder (K tasks' adapters cannot fold into one weight), still per task."""
    model, tok = per_task(tiny_base)
    want = predictions(model, tok)
    twin = copy.deepcopy(model)
    torch.nn.init.zeros_(twin.lora.tasks["sst"]["layers"][0]["query"].lora_B)
    assert not torch.allclose(predictions(twin, tok)["sst"], want["sst"])
    assert_close(predictions(model, tok), want, atol=0)
    hooks = lambda m: sum(isinstance(h, _Hook) for mod in m.encoder.modules() for h in mod._forward_hooks.values())
    for precision, atol in (("int8", 0.15), ("bf16", 0.05)):
        fast = for_inference(model, precision, tokenizer=tok)
        assert hooks(fast) == 4 * len(model.encoder.layers) and lora_of(fast).cfg.per_task
        assert all(p.dtype == torch.float32 for p in fast.lora.parameters())
        got = predictions(fast, tok)
        assert_close(got, want, atol=atol)
        for task in TASKS:  # the adapters matter, each task's its own: without them the answers move further
            plain = copy.deepcopy(model)
            for p in plain.lora.tasks[task].parameters():
                p.data.zero_()
            gap = (predictions(for_inference(plain, precision, tokenizer=tok), tok)[task] - want[task]).abs().max()
            assert gap > (got[task] - want[task]).abs().max(), (precision, task)
        with pytest.raises(LoraError, match="no task chosen"):
            enc = make_batch("sst", SINGLES, tok)["enc"]
            fast.encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert hooks(model) == 4 * len(model.encoder.layers)  # the trained model is left as it was


def test_smoothing_without_folding_keeps_every_linears_input_and_output(tiny_base):
    """int8 of a per-task model smooths with fold=False: attention_output is wrapped like the others
    instead of folding its scale into the value rows, so hooked adapters read the original inputs."""
    model, tok = per_task(tiny_base)
    encoder, ref = bare_encoder(model), bare_encoder(model)
    smooth(encoder, tok, [TEXT, "Dull and overlong.", PAIRS[0].text_a], alpha=0.8, fold=False)
    seen = {}  # what the module at attention_output's place reads, where the adapters are hooked
    encoder.layers[0].attention_output.register_forward_pre_hook(lambda m, a: seen.__setitem__("smoothed", a[0]))
    ref.layers[0].attention_output.register_forward_pre_hook(lambda m, a: seen.__setitem__("plain", a[0]))
    enc = make_batch("sst", SINGLES, tok)["enc"]
    with torch.no_grad():
        out = encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden_state
        want = ref(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden_state
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seen["smoothed"], seen["plain"], atol=1e-5, rtol=1e-5)
    assert type(encoder.layers[0].attention_output).__name__ == "SmoothedLinear"


# ---- settings, checkpoints, export -------------------------------------------------------------

def test_the_setting_is_checked_by_name_and_reaches_the_cli():
    assert TrainConfig().lora_per_task is False
    with pytest.raises(ValueError, match=r"setting lora_per_task='yes' is not allowed; allowed values: true, false"):
        TrainConfig(mode="lora", lora_per_task="yes")
    with pytest.raises(LoraError, match=r"setting lora_per_task=1 is not allowed; allowed values: true, false"):
        LoraConfig(per_task=1)
    args = build_parser().parse_args(["train", "--mode", "lora", "--lora-per-task"])
    assert TrainConfig.from_dict(given_settings(args)).lora_per_task is True
    args = build_parser().parse_args(["train", "--mode", "lora", "--no-lora-per-task"])
    assert TrainConfig.from_dict(given_settings(args)).lora_per_task is False
    assert LoraConfig(per_task=True).to_dict()["per_task"] is True
    assert "per_task" not in LoraConfig().to_dict()  # shared: the dict every older checkpoint holds
    assert LoraConfig.from_dict({"rank": 2, "alpha": 4.0, "targets": ["query"], "dropout": 0.0}).per_task is False


def test_a_task_with_a_rank_of_its_own_computes_by_hand_keeps_the_scale_and_reloads(tiny_base, tmp_path):
    """lora_task_ranks: STS's adapters rank 6, the others rank 2; alpha scales with the rank, so each
    set's update is (alpha/r) B A x with the shared alpha/r; the checkpoint reloads every shape."""
    model, tok = per_task(tiny_base, rank=2, alpha=3.0, dropout=0.0, task_ranks={"sts": 6})
    ranks = {t: model.lora.tasks[t]["layers"][0]["query"].lora_A.size(0) for t in TASKS}
    assert ranks == {"sst": 2, "para": 2, "sts": 6}
    layer = model.encoder.layers[0]
    x = torch.randn(5, layer.intermediate.in_features)
    with torch.no_grad():
        for task in TASKS:
            ad = model.lora.tasks[task]["layers"][0]["intermediate"]
            assert ad.scale == pytest.approx(1.5)
            with task_adapters(model, task):
                got = layer.intermediate(x)
            want = x @ layer.intermediate.weight.T + layer.intermediate.bias + 1.5 * x @ ad.lora_A.T @ ad.lora_B.T
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=task)
    assert model.lora.cfg.to_dict()["task_ranks"] == {"sts": 6}
    folder = save_checkpoint(model, tok, tmp_path / "best", base=str(tiny_base), include_encoder=False)
    loaded, ltok, _ = load_checkpoint(folder)
    assert lora_of(loaded).tasks["sts"]["layers"][-1]["output"].lora_B.shape[1] == 6
    assert_close(predictions(loaded, ltok), predictions(model, tok), atol=0)


def test_the_rank_by_task_setting_is_parsed_and_checked_by_name():
    cfg = TrainConfig.from_dict(given_settings(build_parser().parse_args(
        ["train", "--mode", "lora", "--lora-per-task", "--lora-task-ranks", "sts=32,para=16"])))
    assert cfg.lora_task_ranks == ["para=16", "sts=32"] or cfg.lora_task_ranks == ["sts=32", "para=16"]
    assert cfg.task_rank_map() == {"sts": 32, "para": 16}
    assert TrainConfig(mode="lora", lora_per_task=True, lora_task_ranks={"sts": 32}).task_rank_map() == {"sts": 32}
    assert TrainConfig().task_rank_map() == {}
    for bad in ("sts=0", "sts=x", "sts", "sts=4,sts=8"):
        with pytest.raises(ValueError, match=r"setting lora_task_ranks=.* allowed values: task=rank"):
            TrainConfig(mode="lora", lora_per_task=True, lora_task_ranks=bad)
    with pytest.raises(ValueError, match=r"names mrpc; allowed values: task=rank for the tasks trained \(sst, para, sts\)"):
        TrainConfig(mode="lora", lora_per_task=True, lora_task_ranks="mrpc=8")
    with pytest.raises(ValueError, match=r"without per-task adapters; allowed values: none, or set mode=lora and "
                                         r"lora_per_task=true"):
        TrainConfig(mode="lora", lora_task_ranks="sts=8")
    with pytest.raises(LoraError, match=r"lora_task_ranks is not allowed with shared adapters"):
        LoraConfig(task_ranks={"sts": 8})
    with pytest.raises(LoraError, match=r"lora_task_ranks=sts=0 is not allowed"):
        LoraConfig(per_task=True, task_ranks={"sts": 0})


@pytest.fixture(scope="module")
def per_task_checkpoint(tiny_base, tmp_path_factory):
    model, tok = per_task(tiny_base, rank=4, alpha=8.0)
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("lora-per-task") / "best", base=str(tiny_base),
                           include_encoder=False, metrics={"dev": {"average": 0.5}},
                           extra={"run_id": "r", "step": 7, "train_config": {"mode": "lora"}})


def test_a_per_task_checkpoint_names_each_tasks_adapters_and_reloads_them(tiny_base, per_task_checkpoint):
    meta = json.loads((per_task_checkpoint / "mtbert.json").read_text())
    assert meta["lora"]["per_task"] is True and meta["lora"]["rank"] == 4
    keys = load_file(str(per_task_checkpoint / ADAPTERS_FILE))
    assert {k.split(".")[1] for k in keys} == set(TASKS)
    assert "tasks.para.layers.1.intermediate.lora_A" in keys and all(k.startswith("tasks.") for k in keys)
    model, tok = per_task(tiny_base, rank=4, alpha=8.0)  # the same seed: the model that was saved
    loaded, ltok, _ = load_checkpoint(per_task_checkpoint)
    assert lora_of(loaded).cfg.per_task
    assert_close(predictions(loaded, ltok), predictions(model, tok), atol=0)
    from mtbert.hub import model_card
    assert "LoRA adapters of the frozen base, one set per task" in str(model_card(per_task_checkpoint, "t/lora"))
    # a shared checkpoint keeps its names
    shared, stok = adapted(tiny_base)
    folder = save_checkpoint(shared, stok, per_task_checkpoint.parent / "shared", base=str(tiny_base),
                             include_encoder=False)
    assert all(k.startswith("layers.") for k in load_file(str(folder / ADAPTERS_FILE)))
    assert "per_task" not in json.loads((folder / "mtbert.json").read_text())["lora"]


def test_export_merge_of_a_per_task_checkpoint_is_refused_saying_what_to_do(per_task_checkpoint, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", "--checkpoint", str(per_task_checkpoint), "--out", str(out), "--merge"]) == 1
    err = capsys.readouterr().err
    assert "--merge is not possible for a checkpoint trained with lora_per_task=true" in err
    assert "sst, para, sts" in err and "one merged BERT can hold only one set of weights" in err
    assert "export it without --merge" in err and not out.exists()
    assert main(["export", "--checkpoint", str(per_task_checkpoint), "--out", str(out)]) == 0
    a, atok, _ = load_checkpoint(out)
    b, btok, _ = load_checkpoint(per_task_checkpoint)
    assert_close(predictions(a, atok), predictions(b, btok), atol=0)


# ---- the trainer --------------------------------------------------------------------------------

def test_training_with_adapters_per_task_saves_a_checkpoint_that_predicts_alike_and_resumes_exactly(tiny_base,
                                                                                                   tmp_path):
    from test_train import assert_resumes_exactly, tiny_cfg
    from mtbert.train import Trainer, build_model
    cfg = tiny_cfg(tiny_base, epochs=2, mode="lora", lora_per_task=True, lora_rank=2,
                   lora_targets="query,value,output", lr=5e-3, ema_decay=0.9)
    model, _ = build_model(cfg, cfg.task_specs(), torch.device("cpu"))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[2] for n in trained if n.startswith("lora.")} == set(TASKS)
    full = tmp_path / "runs" / "full"
    t = Trainer(cfg, full, progress=False)
    assert t.run() == "finished"
    loaded, tok, meta = load_checkpoint(full / "best")
    assert meta["lora"] == {"rank": 2, "alpha": 16.0, "targets": ["query", "value", "output"], "dropout": 0.1,
                            "per_task": True}
    for task in TASKS:  # every task trained its own adapters
        assert all(torch.count_nonzero(a.lora_B) > 0 for ad in loaded.lora.tasks[task]["layers"] for a in ad.values())
    sst, para = (loaded.lora.tasks[t]["layers"][0]["query"].lora_B for t in ("sst", "para"))
    assert not torch.allclose(sst, para)
    # the final model is best/ reloaded: every task predicts as that checkpoint
    got, want = predictions(t.model, t.tok), predictions(loaded, tok)
    assert set(got) == set(TASKS)
    assert_close(got, want, atol=0)
    assert_close(raw_predictions(t.model, t.tok), raw_predictions(loaded, tok), atol=0)

    assert_resumes_exactly(cfg, full, tmp_path / "runs" / "part", stop_at=3)


def test_the_playground_answers_and_shows_attention_with_the_chosen_tasks_adapters(per_task_checkpoint, tmp_path,
                                                                                  monkeypatch):
    import shutil

    import streamlit as st
    from test_app import fake_run, messages, no_exception, page, select
    from mtbert.studio import playground as pg
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(runs))
    monkeypatch.chdir(tmp_path)
    run = fake_run(runs, "20260101-000000-per-task")
    shutil.copytree(per_task_checkpoint, run / "best")
    model, tok, _ = load_checkpoint(per_task_checkpoint)
    try:
        at = no_exception(page("app_pages/2_Playground.py").run())
        select(at, "ckpt_a", "20260101-000000-per-task/best")
        at.text_area(key="sst_text").set_value(TEXT)
        at.button(key="sst_go").click().run()
        want = pg.task_answer(model, tok, "sst", TEXT)
        assert no_exception(at).metric[0].value == want["top"]
        at.text_input(key="attn_a").set_value(TEXT)
        assert [o.rsplit(" (", 1)[-1] for o in at.selectbox(key="attn_task").options] == ["sst)", "para)", "sts)"]
        at.selectbox(key="attn_task").set_value("sts").run()
        at.button(key="attn_go").click().run()
        no_exception(at)
        assert not messages(at, "warning") and len(at.get("iframe")) == 1
        shown = at.session_state["attn_view"].attentions
        for task in TASKS:  # sts's adapters read the input, not another task's
            same = all(torch.allclose(x, y, atol=1e-6) for x, y in
                       zip(shown, pg.attention(model, tok, TEXT, task=task).attentions))
            assert same == (task == "sts"), task
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()
