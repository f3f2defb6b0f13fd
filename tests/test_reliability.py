"""Reliability promises of the trainer and the loaders: full disks, untrusted files, numerics, secrets."""
from __future__ import annotations

import errno
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtbert import checkpoint
from mtbert.checkpoint import CheckpointError, load_checkpoint, load_encoder, save_checkpoint
from mtbert.config import TrainConfig
from mtbert.train import Trainer, TrainingError


def tiny_cfg(base, **kw) -> TrainConfig:
    d = dict(base_model=str(base), epochs=3, batch_size=4, lr=1e-3, train_subset=8, eval_subset=4,
             train_eval_subset=4, max_length=24, seed=1)
    return TrainConfig(**{**d, **kw})


# ---- disk full ------------------------------------------------------------------------------

def test_disk_full_fails_the_run_naming_the_path_and_keeps_the_last_checkpoint(tiny_base, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "full-disk"
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] > 6:  # the first epoch's best/ and last/ saves succeed, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    with pytest.raises(TrainingError) as e:
        Trainer(tiny_cfg(tiny_base), run, progress=False).run()
    assert "No space left on device" in str(e.value) and str(run) in str(e.value)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "No space left on device" in status["error"]
    assert str(run) in status["error"]
    # the previous checkpoint is intact: it loads, and its state says where it was taken
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    model, _, meta = load_checkpoint(run / "last")
    assert meta["step"] == 2
    assert not [d for d in run.iterdir() if d.name.startswith(".last.") and d.name != ".last.old"]
    # and the run resumes from it once there is space again
    assert Trainer(tiny_cfg(tiny_base), run, resume=True, progress=False).run() == "finished"


def test_unwritable_run_folder_is_reported(tiny_base, tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")
    with pytest.raises(OSError) as e:
        Trainer(tiny_cfg(tiny_base), blocker / "r", progress=False).run()
    assert str(blocker) in str(e.value)


# ---- untrusted checkpoint files ---------------------------------------------------------------

def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_safetensors_is_refused(tiny_base, tmp_path):
    bad = _copy(tiny_base, tmp_path / "trunc")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder(bad)


def test_config_with_wrong_shapes_is_refused(tiny_base, tmp_path):
    bad = _copy(tiny_base, tmp_path / "shapes")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="intermediate.dense.weight"):
        load_encoder(bad)


def test_tokenizer_larger_than_the_vocabulary_is_refused(tiny_base, tmp_path):
    bad = _copy(tiny_base, tmp_path / "vocab")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "vocab_size": 1000}))
    from safetensors.torch import load_file, save_file
    sd = load_file(str(bad / "model.safetensors"))
    sd["embeddings.word_embeddings.weight"] = sd["embeddings.word_embeddings.weight"][:1000].clone()
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="tokenizer has 30522 tokens but the model's vocab_size is 1000"):
        load_encoder(bad)


FUZZED = {"n": 0}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["model.safetensors", "heads.safetensors", "config.json", "mtbert.json",
                               "tokenizer.json"]),
       mode=st.sampled_from(["random", "flip", "truncate", "header"]),
       payload=st.binary(min_size=0, max_size=512), pos=st.floats(0, 1))
def test_fuzzed_checkpoint_files_raise_only_checkpoint_error(ck, tmp_path_factory, target, mode, payload, pos):
    FUZZED["n"] += 1
    folder = _copy(ck, tmp_path_factory.mktemp("fuzz"))
    data = (folder / target).read_bytes()
    i = int(pos * max(0, len(data) - 1))
    if mode == "random":
        data = payload
    elif mode == "flip":
        data = data[:i] + bytes(b ^ 0xFF for b in payload[:8]) + data[i + len(payload[:8]):]
    elif mode == "truncate":
        data = data[:i]
    else:  # a safetensors-style header length claiming more than the file holds, then junk
        data = struct.pack("<Q", 10 ** 12) + payload
    (folder / target).write_bytes(data)
    try:
        load_checkpoint(folder)
    except CheckpointError:
        pass  # the one error type a caller has to handle


@pytest.fixture(scope="module")
def ck(tiny_base, tmp_path_factory):
    from mtbert.checkpoint import load_base
    from mtbert.model import ModelConfig, MultitaskBert
    enc, tok = load_base(str(tiny_base))
    return save_checkpoint(MultitaskBert(enc, ModelConfig()), tok, tmp_path_factory.mktemp("ck") / "c")


# ---- numerics -------------------------------------------------------------------------------

def test_ten_times_too_large_lr_is_caught_or_kept_finite_by_clipping(tiny_base, tmp_path):
    """With grad_clip on, a 10x learning rate must either train with finite losses or stop the run
    with a message — never write NaN into a checkpoint silently."""
    run = tmp_path / "runs" / "hot"
    try:
        Trainer(tiny_cfg(tiny_base, lr=1e-2, grad_clip=1.0, optimizer="adamw"), run, progress=False).run()
    except TrainingError as e:
        assert "loss became" in str(e)
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    for r in steps:
        if r["type"] == "step":
            assert all(v is not None and v == v for v in r["loss"].values())
            assert r["grad_norm_total"] is not None
    if (run / "last").exists():
        model, _, _ = load_checkpoint(run / "last")
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_loss_is_finite_and_close_to_float32(tiny_base):
    """The CUDA path runs under bf16 autocast; CPU autocast exercises the same code here."""
    from mtbert.checkpoint import load_base
    from mtbert.data import Example, make_batch
    from mtbert.model import ModelConfig, MultitaskBert
    enc, tok = load_base(str(tiny_base))
    model = MultitaskBert(enc, ModelConfig(dropout=0.0)).eval()
    batch = make_batch("sts", [Example("1", "a dog runs", "a dog is running", 4.0),
                               Example("2", "markets fell", "a cat sleeps", 0.5)], tok)
    ref = model.loss("sts", batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.loss("sts", batch)
    assert torch.isfinite(low) and abs(low.item() - ref.item()) < 0.05 * max(1.0, ref.item())


# ---- secrets --------------------------------------------------------------------------------

def test_hf_token_never_lands_in_run_files(tiny_base, tmp_path, monkeypatch, capsys):
    secret = "hf_TESTSECRETTOKEN1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    run = tmp_path / "runs" / "secret"
    Trainer(tiny_cfg(tiny_base, epochs=1), run, progress=False).run()
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    for f in run.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


@pytest.mark.parametrize("bf16_cpu", [False, True])
def test_bf16_cpu_runs_the_training_steps_under_autocast_and_evaluates_in_float32(tiny_base, tmp_path, monkeypatch,
                                                                                    bf16_cpu):
    """bf16_cpu: each training step's loss is computed under CPU bfloat16 autocast (the encoder's matmuls
    in bf16), the weights, their gradients and every evaluation stay float32; off, nothing is autocast."""
    from mtbert import train as train_mod
    from mtbert.model import MultitaskBert
    seen = {"loss": [], "eval": []}
    plain_loss, plain_measure = MultitaskBert.loss, train_mod.measure

    def loss(self, task, batch, *rest):
        out = plain_loss(self, task, batch, *rest)
        seen["loss"].append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return out

    def measure(*a, **kw):
        seen["eval"].append(kw.get("amp"))
        return plain_measure(*a, **kw)
    monkeypatch.setattr(MultitaskBert, "loss", loss)
    monkeypatch.setattr(train_mod, "measure", measure)
    tr = Trainer(tiny_cfg(tiny_base, epochs=1, max_steps=3, bf16_cpu=bf16_cpu), tmp_path / "run", progress=False)
    tr.run()
    assert len(seen["loss"]) >= 3 and seen["eval"] and all(a is None for a in seen["eval"])
    for on, dtype in seen["loss"]:
        assert on is bf16_cpu
        if bf16_cpu:
            assert dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in tr.model.parameters())
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for r in rows if r["type"] == "step" for v in r["loss"].values())


def test_bf16_cpu_changes_the_step_losses_only_by_bf16_rounding(tiny_base, tmp_path):
    """The same run with and without bf16_cpu: the first step's loss (same weights, same batch) differs
    only within bf16's rounding, and does differ, so the setting reaches the arithmetic."""
    firsts = []
    for on in (False, True):
        run = tmp_path / f"run-{on}"
        Trainer(tiny_cfg(tiny_base, epochs=1, max_steps=1, bf16_cpu=on, dropout=0.0), run, progress=False).run()
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        firsts.append(next(r for r in rows if r["type"] == "step")["loss_total"])
    assert firsts[0] != firsts[1] and abs(firsts[0] - firsts[1]) < 0.03 * max(1.0, abs(firsts[0]))
