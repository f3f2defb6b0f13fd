"""LoRA (mtbert/lora.py): the adapted layers against a hand computation, adapter checkpoints (save, load,
base verification, Hub), `export --merge` read back by transformers, and `mode: lora` in the trainer
(what trains, what is saved, exact resume)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_base
from mtbert.checkpoint import (CheckpointError, load_base, load_checkpoint, load_encoder, resolve_base,
                               save_checkpoint, sha256_file)
from mtbert.cli import build_parser, given_settings, main
from mtbert.config import TrainConfig
from mtbert.data import Example, make_batch
from mtbert.lora import (ADAPTERS_FILE, TARGETS, LoraConfig, LoraError, _Hook, add_lora, lora_of,
                         merge_lora)
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.quantize import for_inference

REPO = Path(__file__).resolve().parents[1]
PAIRS = [Example("0", "How do I learn to cook?", "What is the best way to learn cooking?", None),
         Example("1", "The cat sat.", "Stocks fell sharply today.", None)]
SINGLES = [Example("0", "A gorgeous, witty, seductive movie.", None, None),
           Example("1", "Dull and overlong.", None, None)]


def predictions(model, tok) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {"sst": model.predict("sst", make_batch("sst", SINGLES, tok)),
                "para": model.predict("para", make_batch("para", PAIRS, tok, model.cfg.encoding("para"))),
                "sts": model.predict("sts", make_batch("sts", PAIRS, tok, model.cfg.encoding("sts")))}


def adapted(base: Path, seed: int = 1, **lora) -> tuple[MultitaskBert, object]:
    """The tiny model with adapters whose B is not zero (as after training), in eval mode."""
    encoder, tok = load_encoder(base)
    torch.manual_seed(seed)
    model = MultitaskBert(encoder, ModelConfig(pooling="mean")).eval()
    for p in add_lora(model, LoraConfig(**lora)).parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model, tok


@pytest.fixture(scope="module")
def adapter_checkpoint(tiny_base, tmp_path_factory) -> Path:
    model, tok = adapted(tiny_base, rank=4, alpha=8.0)
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("lora") / "best", base=str(tiny_base),
                           include_encoder=False, metrics={"dev": {"average": 0.5}},
                           extra={"run_id": "r", "step": 7, "train_config": {"mode": "lora"}})


def assert_close(a: dict, b: dict, atol: float) -> None:
    for task in a:
        torch.testing.assert_close(a[task], b[task], atol=atol, rtol=0, msg=task)


# ---- the adapted layers -------------------------------------------------------------------------

def test_adapted_linear_layers_are_the_hand_computation(tiny_base):
    model, _ = adapted(tiny_base, rank=3, alpha=5.0, targets=("query", "value", "intermediate"), dropout=0.0)
    layer, ad, scale = model.encoder.layers[1], model.lora.layers[1], 5.0 / 3
    x = torch.randn(7, layer.attention.qkv.in_features)
    H = x.size(1)
    with torch.no_grad():
        qkv = layer.attention.qkv(x)
        W, b = layer.attention.qkv.weight, layer.attention.qkv.bias
        for i, part in enumerate(("query", "key", "value")):
            want = x @ W[i * H:(i + 1) * H].T + b[i * H:(i + 1) * H]
            if part in ad:  # x @ W.T + b + scale * x @ A.T @ B.T
                want = want + scale * x @ ad[part].lora_A.T @ ad[part].lora_B.T
            torch.testing.assert_close(qkv[:, i * H:(i + 1) * H], want, atol=1e-5, rtol=1e-5, msg=part)
        lin = layer.intermediate
        want = x @ lin.weight.T + lin.bias + scale * x @ ad["intermediate"].lora_A.T @ ad["intermediate"].lora_B.T
        torch.testing.assert_close(lin(x), want, atol=1e-5, rtol=1e-5)
        out = layer.attention_output  # not a target: untouched
        torch.testing.assert_close(out(x), x @ out.weight.T + out.bias, atol=1e-6, rtol=1e-6)
        # merging folds the same update into W: the plain Linear layers give the same outputs
        merge_lora(model)
        assert lora_of(model) is None and not any(isinstance(h, _Hook) for m in model.encoder.modules()
                                                  for h in m._forward_hooks.values())
        torch.testing.assert_close(layer.attention.qkv(x), qkv, atol=1e-5, rtol=1e-5)


def test_step_zero_is_the_base_model_and_the_adapters_start_as_the_paper_says(tiny_base):
    encoder, tok = load_encoder(tiny_base)
    torch.manual_seed(0)
    model = MultitaskBert(encoder, ModelConfig()).eval()
    before = predictions(model, tok)
    lora = add_lora(model, LoraConfig())
    assert not lora.training  # dropout off like the model's own
    H = encoder.config.hidden_size
    for adapters in lora.layers:
        assert sorted(adapters) == sorted(TARGETS)
        for t, a in adapters.items():
            assert torch.count_nonzero(a.lora_B) == 0, t  # B = 0 ...
            bound = 1 / a.lora_A.size(1) ** 0.5  # ... A Kaiming-uniform, nn.Linear's bound 1/sqrt(in)
            assert a.lora_A.abs().max() <= bound and a.lora_A.std() > bound / 4, t
            assert a.lora_A.shape == (8, H if t != "output" else encoder.config.intermediate_size), t
    after = predictions(model, tok)
    for task in before:
        assert torch.equal(before[task], after[task]), task


def test_copies_of_an_adapted_model_use_their_own_adapters(tiny_base):
    """The weight average and inference copies deep-copy the model: their hooks must follow."""
    model, tok = adapted(tiny_base)
    want = predictions(model, tok)
    twin = copy.deepcopy(model)
    torch.nn.init.zeros_(twin.lora.layers[0]["query"].lora_B)
    assert not torch.allclose(predictions(twin, tok)["sst"], want["sst"])
    assert_close(predictions(model, tok), want, atol=0)


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-5), ("int8", 0.15), ("bf16", 0.05)])
def test_inference_precisions_keep_the_adapters(tiny_base, precision, atol):
    """Every inference precision folds the adapters into the weights of a copy (fp32: no adapter hook
    on every Linear; int8 and bf16: the smoothing and the casts rescale what the Linear layers read);
    the trained model keeps its adapters."""
    model, tok = adapted(tiny_base)
    hooks = lambda m: sum(isinstance(h, _Hook) for mod in m.encoder.modules() for h in mod._forward_hooks.values())
    fast = for_inference(model, precision)
    assert hooks(model) == 4 * len(model.encoder.layers)  # qkv, attention output, intermediate, output
    assert hooks(fast) == 0 and getattr(fast, "lora", None) is None
    assert_close(predictions(fast, tok), predictions(model, tok), atol=atol)
    plain = copy.deepcopy(model)  # the adapters matter: without them the answers move further
    for p in plain.lora.parameters():
        p.data.zero_()
    gap = (predictions(for_inference(plain, precision), tok)["sst"] - predictions(model, tok)["sst"]).abs().max()
    assert gap > (predictions(fast, tok)["sst"] - predictions(model, tok)["sst"]).abs().max()


# ---- settings -----------------------------------------------------------------------------------

def test_lora_settings_are_checked_by_name_with_the_allowed_values():
    cfg = TrainConfig(mode="lora", lora_targets="value, query")
    assert cfg.lora_targets == ["query", "value"] and cfg.lora_rank == 8 and cfg.lora_alpha == 16
    for bad in ("query,bogus", "query,query", "", ["attention"]):
        with pytest.raises(ValueError) as e:
            TrainConfig(mode="lora", lora_targets=bad)
        assert str(e.value).startswith(f"setting lora_targets={bad!r} is not allowed; allowed values:")
        assert all(t in str(e.value) for t in TARGETS)
    with pytest.raises(ValueError, match=r"setting lora_rank=0 is not allowed; allowed values: an integer >= 1"):
        TrainConfig(lora_rank=0)
    with pytest.raises(LoraError, match="lora_dropout=1.0 is not allowed"):
        LoraConfig(dropout=1.0)
    args = build_parser().parse_args(["train", "--mode", "lora", "--lora-targets", "key,output", "--lora-rank", "4",
                                      "--lora-alpha", "2", "--lora-dropout", "0"])
    cfg = TrainConfig.from_dict(given_settings(args))
    assert (cfg.mode, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == \
        ("lora", ["key", "output"], 4, 2.0, 0.0)


# ---- adapter checkpoints ------------------------------------------------------------------------

def test_an_adapter_checkpoint_holds_the_adapters_only_and_predicts_as_the_trained_model(tiny_base,
                                                                                         adapter_checkpoint):
    names = sorted(p.name for p in adapter_checkpoint.iterdir())
    assert names == [ADAPTERS_FILE, "heads.safetensors", "metrics.json", "mtbert.json", "tokenizer.json"]
    meta = json.loads((adapter_checkpoint / "mtbert.json").read_text())
    assert meta["base_model"] == str(tiny_base)
    assert meta["base_model_sha256"] == sha256_file(tiny_base / "model.safetensors")
    assert meta["lora"] == {"rank": 4, "alpha": 8.0, "targets": list(TARGETS), "dropout": 0.1}
    model, tok = adapted(tiny_base, rank=4, alpha=8.0)  # the same seed: the model that was saved
    loaded, ltok, lmeta = load_checkpoint(adapter_checkpoint)
    assert_close(predictions(loaded, ltok), predictions(model, tok), atol=1e-6)
    base, _ = load_base(str(tiny_base))  # the encoder itself is the base, untouched
    for (n, p), q in zip(base.state_dict().items(), loaded.encoder.state_dict().values()):
        assert torch.equal(p, q), n


def test_a_different_base_is_refused_naming_the_expected_one(tiny_base, tmp_path):
    base = shutil.copytree(tiny_base, tmp_path / "base")
    model, tok = adapted(base)
    ck = save_checkpoint(model, tok, tmp_path / "ck", base=str(base), include_encoder=False)
    want = sha256_file(base / "model.safetensors")
    make_tiny_base(base, seed=5)  # the same path, other weights
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    assert str(base) in str(e.value) and want in str(e.value)


def test_broken_adapter_files_are_clear_errors(adapter_checkpoint, tmp_path):
    ck = shutil.copytree(adapter_checkpoint, tmp_path / "ck")
    (ck / ADAPTERS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=f"{ADAPTERS_FILE}: not a readable safetensors file"):
        load_checkpoint(ck)
    meta = json.loads((ck / "mtbert.json").read_text())
    meta["lora"]["rank"] = 2
    shutil.copy(adapter_checkpoint / ADAPTERS_FILE, ck / ADAPTERS_FILE)
    (ck / "mtbert.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="adapters do not fit"):
        load_checkpoint(ck)
    meta["lora"]["targets"] = ["query", "nope"]
    (ck / "mtbert.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unusable lora settings.*allowed values"):
        load_checkpoint(ck)


def test_minilm_adapter_checkpoint_is_small(tmp_path, capsys):
    encoder, tok = load_base("minilm-l6")
    model = MultitaskBert(encoder, ModelConfig())
    add_lora(model, LoraConfig(rank=8, targets=TARGETS))
    ck = save_checkpoint(model, tok, tmp_path / "ck", base="minilm-l6", include_encoder=False)
    adapters = (ck / ADAPTERS_FILE).stat().st_size
    total = sum(p.stat().st_size for p in ck.iterdir())
    encoder_size = (resolve_base("minilm-l6") / "model.safetensors").stat().st_size
    with capsys.disabled():
        print(f"\nMiniLM-L6 LoRA r=8, all targets: {ADAPTERS_FILE} {adapters / 1e6:.2f} MB, whole checkpoint "
              f"{total / 1e6:.2f} MB (the encoder's model.safetensors: {encoder_size / 1e6:.1f} MB)")
    n = sum(p.numel() for p in model.lora.parameters())
    assert n == 6 * (4 * 2 * 8 * 384 + 2 * 8 * (384 + 1536))  # r (in + out) per adapted weight
    assert adapters < 5e6 and total < 5e6


def test_checkpoints_and_their_exports_get_the_users_usual_modes(adapter_checkpoint, tmp_path, user_modes):
    """Written through temporaries (mkdtemp, mkstemp: owner-only), a checkpoint still ends up with the
    modes any file of the user gets, so another account or a container's user can read what is shared."""
    file_mode, dir_mode = user_modes
    out = tmp_path / "half"
    assert main(["export", "--checkpoint", str(adapter_checkpoint), "--out", str(out), "--adapters-dtype",
                 "float16"]) == 0
    for folder in (adapter_checkpoint, out):
        assert folder.stat().st_mode & 0o777 == dir_mode, folder
        modes = {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()}
        assert modes and set(modes.values()) == {file_mode}, modes


# ---- export --merge -----------------------------------------------------------------------------

def test_export_merge_writes_a_plain_bert_folder_transformers_and_mtbert_read(adapter_checkpoint, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", "--checkpoint", str(adapter_checkpoint), "--out", str(out), "--merge"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "heads.safetensors",
            "mtbert.json"} <= {p.name for p in out.iterdir()} and not (out / ADAPTERS_FILE).exists()
    lora_model, tok, _ = load_checkpoint(adapter_checkpoint)
    merged, mtok, meta = load_checkpoint(out)
    assert lora_of(merged) is None and meta["merged_lora"]["rank"] == 4 and meta["step"] == 7
    assert_close(predictions(merged, mtok), predictions(lora_model, tok), atol=1e-5)

    from transformers import AutoTokenizer, BertModel
    hf = BertModel.from_pretrained(str(out), local_files_only=True).eval()
    text = "A gorgeous, witty, seductive movie."
    assert AutoTokenizer.from_pretrained(str(out), local_files_only=True)(text)["input_ids"] == tok._tk.encode(text).ids
    enc = make_batch("sst", SINGLES, tok)["enc"]
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        theirs = hf(**enc).last_hidden_state
        for ours in (merged.encoder(**enc).last_hidden_state, lora_model.encoder(**enc).last_hidden_state):
            torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=1e-5)


def test_export_without_merge_copies_the_checkpoint_less_the_bases_tokenizer(adapter_checkpoint, tmp_path, capsys):
    src = shutil.copytree(adapter_checkpoint, tmp_path / "src")
    (src / "trainer_state.json").write_text("{}")  # resume state stays behind
    out = tmp_path / "copy"
    assert main(["export", "--checkpoint", str(src), "--out", str(out)]) == 0
    # the tokenizer is the base's: the copy leaves it out and loads the base's
    kept = sorted(p.name for p in adapter_checkpoint.iterdir() if p.name != "tokenizer.json")
    assert sorted(p.name for p in out.iterdir()) == kept
    assert all((out / name).read_bytes() == (adapter_checkpoint / name).read_bytes() for name in kept)
    (model, tok, _), (original, otok, _) = load_checkpoint(out), load_checkpoint(adapter_checkpoint)
    assert tok.pipeline() == otok.pipeline() and tok.max_length == otok.max_length
    assert_close(predictions(model, tok), predictions(original, otok), atol=0)
    assert main(["export", "--checkpoint", str(src), "--out", str(out), "--merge"]) == 1
    assert "already exists" in capsys.readouterr().err
    # a tokenizer of its own (here: one that keeps the case) stays with the copy
    spec = json.loads((src / "tokenizer.json").read_text())
    spec["normalizer"]["lowercase"] = False
    (src / "tokenizer.json").write_text(json.dumps(spec))
    assert main(["export", "--checkpoint", str(src), "--out", str(tmp_path / "own")]) == 0
    assert (tmp_path / "own" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    _, own, _ = load_checkpoint(tmp_path / "own")
    assert own.tokenize("Cat") != otok.tokenize("Cat")


# ---- the commands and the Hub, through load_checkpoint ------------------------------------------

def test_cli_evaluate_in_a_subprocess_reads_an_adapter_checkpoint(adapter_checkpoint, capsys):
    args = ["evaluate", "--checkpoint", str(adapter_checkpoint), "--limit", "6"]
    r = subprocess.run([sys.executable, "-m", "mtbert", *args], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert main(args) == 0  # in this process: the same table, from the same adapters
    assert r.stdout == capsys.readouterr().out and "Dev" in r.stdout


def test_hub_push_and_pull_of_an_adapter_checkpoint(adapter_checkpoint, monkeypatch, tmp_path):
    from hub_stub import HubStub, point_huggingface_hub_at
    from mtbert import hub
    token = "hf_TestToken0123456789abcdefSECRET"
    assert [p.name for p in hub.checkpoint_files(adapter_checkpoint)] == sorted(
        [ADAPTERS_FILE, "heads.safetensors", "metrics.json", "mtbert.json", "tokenizer.json"])
    with HubStub(token=token) as server:
        point_huggingface_hub_at(monkeypatch, server.url, tmp_path)
        monkeypatch.setenv("HF_TOKEN", token)
        hub.push_checkpoint(adapter_checkpoint, "tester/lora", token=token)
        repo = server.repo("tester/lora")
        assert set(repo.files) == {p.name for p in adapter_checkpoint.iterdir()} | {"README.md"}
        assert b"LoRA adapters of the frozen base" in repo.files["README.md"]
        pulled, tok, meta = load_checkpoint("tester/lora")
    local, ltok, _ = load_checkpoint(adapter_checkpoint)
    assert (Path(meta["path"]) / ADAPTERS_FILE).is_file()
    assert_close(predictions(pulled, tok), predictions(local, ltok), atol=0)


# ---- the trainer --------------------------------------------------------------------------------

def test_lora_mode_trains_adapters_and_heads_saves_adapter_checkpoints_and_resumes_exactly(tiny_base, tmp_path):
    from test_train import assert_resumes_exactly, tiny_cfg
    from mtbert.train import Trainer, build_model, build_optimizer
    cfg = tiny_cfg(tiny_base, epochs=2, mode="lora", lora_rank=2, lora_targets="query,value,output",
                   lr=5e-3, lr_decay="linear", ema_decay=0.9)
    full = tmp_path / "runs" / "full"
    model, _ = build_model(cfg, cfg.task_specs(), torch.device("cpu"))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("lora.", "task_heads.")) for n in trained)
    assert {n.split(".")[-1] for n in trained if n.startswith("lora.")} == {"lora_A", "lora_B"}
    opt, _ = build_optimizer(cfg, model, torch.device("cpu"), 8, clock=None)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()
                                                                      if p.requires_grad}
    t = Trainer(cfg, full, progress=False)
    assert t.run() == "finished"
    base, _ = load_base(str(tiny_base))
    for name in ("best", "last"):
        assert (full / name / ADAPTERS_FILE).is_file() and not (full / name / "model.safetensors").exists()
        model, tok, meta = load_checkpoint(full / name)
        assert meta["lora"] == {"rank": 2, "alpha": 16.0, "targets": ["query", "value", "output"], "dropout": 0.1}
        for (n, p), q in zip(base.state_dict().items(), model.encoder.state_dict().values()):
            assert torch.equal(p, q), n  # the base encoder never moved
        assert all(torch.count_nonzero(a.lora_B) > 0 for ad in model.lora.layers for a in ad.values())
    # the final model is best/ reloaded: it predicts as that checkpoint
    assert_close(predictions(t.model, t.tok), predictions(*load_checkpoint(full / "best")[:2]), atol=1e-6)

    assert_resumes_exactly(cfg, full, tmp_path / "runs" / "part", stop_at=5)


def test_playground_lists_loads_and_explains_an_adapter_checkpoint(adapter_checkpoint, tmp_path, monkeypatch):
    from mtbert.studio import checkpoints
    from mtbert.studio import playground as pg
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(tmp_path / "runs"))
    from mtbert import runfolder
    run = tmp_path / "runs" / "20260101-000000-lora"
    best = shutil.copytree(adapter_checkpoint, run / "best")
    runfolder.write_config(run, TrainConfig(mode="lora").to_dict())
    assert str(best) in [r.path for r in checkpoints.list_checkpoints()]
    local, ltok, _ = load_checkpoint(adapter_checkpoint)
    text = "A gorgeous, witty, seductive movie."
    for precision, atol in (("fp32", 1e-6), ("int8", 0.1)):
        model, tok, meta = pg.load_model(str(best), precision=precision)
        # the adapters folded into the weights (int8: before quantizing), the answers those of the adapted model
        assert lora_of(model) is None and meta["precision"] == precision
        got, want = pg.sentiment(model, tok, text), pg.sentiment(local, ltok, text)
        assert got.keys() == want.keys()
        torch.testing.assert_close(torch.tensor(got["probs"]), torch.tensor(want["probs"]), atol=atol, rtol=0)
    view = pg.attention(local, ltok, text)  # the padded path with attention probabilities, through the hooks
    assert len(view.attentions) == len(local.encoder.layers)
    attr = pg.attribution(local, ltok, "sst", text)  # gradients through the adapters
    total = sum(float(a.sum()) for a in attr.attributions)  # Integrated Gradients' completeness
    assert abs(total - (attr.f_x - attr.f_baseline)) < 0.05 * abs(attr.f_x - attr.f_baseline) + 1e-4


def test_export_merge_of_a_heads_only_checkpoint_writes_the_base_in(tiny_base, tmp_path):
    encoder, tok = load_encoder(tiny_base)
    torch.manual_seed(2)
    model = MultitaskBert(encoder, ModelConfig()).eval()
    ck = save_checkpoint(model, tok, tmp_path / "heads", base=str(tiny_base), include_encoder=False)
    assert main(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    merged, mtok, _ = load_checkpoint(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert_close(predictions(merged, mtok), predictions(model, tok), atol=1e-6)


def test_export_stores_the_adapters_in_half_precision_and_they_load_back(adapter_checkpoint, tiny_base, tmp_path,
                                                                         capsys):
    """--adapters-dtype float16 halves adapters.safetensors; the loaded adapters are the float16 roundings of the
    originals, and the model predicts as before to float16's precision. Bad uses are refused by name."""
    out = tmp_path / "half"
    assert main(["export", "--checkpoint", str(adapter_checkpoint), "--out", str(out),
                 "--adapters-dtype", "float16"]) == 0
    full, half = (load_file(str(f / "adapters.safetensors")) for f in (adapter_checkpoint, out))
    assert {v.dtype for v in half.values()} == {torch.float16} and half.keys() == full.keys()
    nbytes = lambda tensors: sum(v.numel() * v.element_size() for v in tensors.values())
    assert nbytes(half) * 2 == nbytes(full)
    model, tok, _ = load_checkpoint(out)
    loaded = lora_of(model).state_dict()
    assert {v.dtype for v in loaded.values()} == {torch.float32}
    for k, v in full.items():
        assert torch.equal(loaded[k], v.half().float()), k
        assert not torch.equal(loaded[k], v), k  # the rounding happened
    original, _, _ = load_checkpoint(adapter_checkpoint)
    assert_close(predictions(model, tok), predictions(original, tok), atol=1e-2)
    encoder, tok = load_encoder(tiny_base)
    heads_only = save_checkpoint(MultitaskBert(encoder, ModelConfig(pooling="mean")), tok, tmp_path / "heads",
                                 base=str(tiny_base), include_encoder=False)
    for ck, args, message in ((adapter_checkpoint, ["--merge"], "applies to an adapter checkpoint exported without"),
                              (heads_only, [], "has no LoRA adapters")):
        assert main(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "x"), "--adapters-dtype", "float16",
                     *args]) == 1
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(adapter_checkpoint), "--out", str(tmp_path / "x"), "--adapters-dtype",
              "int4"])
    assert "--adapters-dtype: invalid choice: 'int4' (choose from 'bfloat16', 'float16', 'float32')" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
