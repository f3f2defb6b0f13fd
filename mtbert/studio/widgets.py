"""Streamlit pieces more than one page shows: the checkpoint picker and its model cache. Kept apart
from the studio's logic modules, which never import Streamlit."""
from __future__ import annotations

from typing import NamedTuple

import streamlit as st

from ..checkpoint import CheckpointError
from ..config import PRECISIONS
from . import checkpoints, runs
from . import playground as pg


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def load(path: str, _token: str | None = None, precision: str = "fp32"):
    """(model, tokenizer, meta), one copy per checkpoint and precision for every page and session."""
    return pg.load_model(path, token=_token, precision=precision)


class Picked(NamedTuple):
    name: str   # what the user sees
    path: str   # what was loaded: a folder, a Hub repo id or a base model name
    model: object
    tokenizer: object
    meta: dict


def pick_precision(key: str = "precision") -> str:
    """The encoder's arithmetic for answers (mtbert.quantize): fp32 exact, int8/bf16 faster."""
    return st.selectbox("Arithmetic", PRECISIONS, key=key,
                        help="fp32: exact. int8: the encoder's Linear layers quantized, about 1.5x faster on a "
                             "CPU, answers move slightly (SST accuracy about 0.01 lower on the dev set). bf16: fast "
                             "on CPUs with AMX or AVX-512 BF16, within 0.001 of fp32 there. docs/benchmarks.md "
                             "measures each.")


def pick_checkpoint(label: str, refs: list, key: str, precision: str = "fp32") -> Picked | None:
    """A checkpoint picker; the loaded checkpoint (in `precision`), or None after showing why not."""
    ref = st.selectbox(label, refs, format_func=str, key=key)
    name, path = ref.name, ref.path
    if ref.kind == "path":  # typed by the user: load_model only takes it inside the allowed folders
        name = path = st.text_input("Checkpoint folder", key=f"{key}_path", placeholder="runs/<run-id>/best",
                                    help="A checkpoint folder inside checkpoints/ or the runs folder").strip()
        if not path:
            st.info("Type the path of a checkpoint folder inside checkpoints/ or the runs folder.")
            return None
    try:
        model, tok, meta = load(path, checkpoints.secret_token(st.secrets), precision)
    except (CheckpointError, runs.RunError, OSError) as e:
        st.error(f"{name} cannot be loaded: {e}")
        return None
    if meta.get("untrained_heads"):
        st.warning(pg.describe_model(meta), icon=":material/warning:")
    else:
        st.caption(pg.describe_model(meta))
    return Picked(name, path, model, tok, meta)
