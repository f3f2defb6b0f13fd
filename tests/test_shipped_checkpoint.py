"""The checkpoint the repository ships as its default, the one every page offers first: an adapter
checkpoint of at most 5 MB over the packaged MiniLM, whose metrics.json holds the scores of the weights
it ships (its adapters are stored in float16; the scores are those of the float16 weights)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_tables import evaluate_table
from shared_data import CS224N, needs_shared

from mtbert.checkpoint import ADAPTERS_FILE, MINILM, MINILM_SHA256, load_checkpoint
from mtbert.lora import lora_of
from mtbert.studio import checkpoints


def default_checkpoint() -> Path:
    first = checkpoints.list_checkpoints()[0]
    assert first.kind == "shipped", "the pages offer a shipped checkpoint first"
    return Path(first.path)


def test_the_default_is_an_adapter_checkpoint_of_at_most_5_mb():
    ck = default_checkpoint()
    assert sum(f.stat().st_size for f in ck.rglob("*") if f.is_file()) <= 5_000_000
    meta = json.loads((ck / "mtbert.json").read_text())
    assert meta["base_model"] == MINILM and meta["base_model_sha256"] == MINILM_SHA256
    assert (ck / ADAPTERS_FILE).is_file() and not (ck / "model.safetensors").exists()
    model, _, loaded = load_checkpoint(ck)
    lora = lora_of(model)
    assert lora is not None and lora.cfg.rank == meta["lora"]["rank"]
    assert set(loaded["metrics"]["dev"]) >= {"sst_acc", "para_acc", "sts_corr", "average"}
    assert all(p.dtype == torch.float32 for p in lora.parameters())  # read back into float32 to compute


@needs_shared
def test_its_metrics_are_what_evaluate_measures_on_the_whole_sst_and_sts_dev_sets():
    """SST and STS only: the 20,212 Quora dev pairs would take minutes on CI's CPU."""
    ck = default_checkpoint()
    dev = json.loads((ck / "metrics.json").read_text())["dev"]
    scores = evaluate_table(ck, CS224N, "--task", "sst", "--task", "sts")
    assert scores["SST acc"] == pytest.approx(dev["sst_acc"], abs=5e-4)
    assert scores["STS corr"] == pytest.approx(dev["sts_corr"], abs=5e-4)
