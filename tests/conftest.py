"""Shared fixtures: a tiny randomly initialised BERT in Hugging Face layout, with the real vocabulary."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mtbert.bert import BertConfig, BertModel
from mtbert.checkpoint import resolve_base

REPO = Path(__file__).resolve().parents[1]

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=128)


def make_tiny_base(folder: Path, seed: int = 0, **overrides) -> Path:
    """A BERT folder (config.json, model.safetensors, tokenizer files) small enough to train in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = BertConfig(**{**TINY, **overrides})
    model = BertModel(cfg)
    (folder / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    save_file(model.hf_state_dict(), str(folder / "model.safetensors"))
    minilm = resolve_base("minilm-l6")
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def user_modes() -> tuple[int, int]:
    """(file mode, folder mode) that files and folders of this user get under the current umask."""
    import os
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask, 0o777 & ~umask
