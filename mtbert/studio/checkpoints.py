"""The checkpoints the studio offers (shipped, each run's best/ and last/, the plain base model),
the guard on a checkpoint folder the user types, and pushing one to the Hugging Face Hub."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import runfolder
from ..runfolder import BEST, LAST, runs_dir
from .environment import BASE_MODELS, ROOT
from .runs import RunError, _num, list_runs

# shipped checkpoints; MTBERT_CHECKPOINTS_DIR points elsewhere (a deployment's own, or none for a test)
CHECKPOINTS_DIR = Path(os.environ.get("MTBERT_CHECKPOINTS_DIR") or ROOT / "checkpoints").absolute()


@dataclass
class CheckpointRef:
    name: str  # what the user picks: "minilm-l6", "<shipped name>", "<run id>/best"
    path: str  # what load_checkpoint / the playground loads
    kind: str  # base | shipped | run
    label: str

    def __str__(self) -> str:
        return self.label


def list_checkpoints() -> list[CheckpointRef]:
    """Shipped checkpoints first (they answer sensibly before any training), the best by dev
    average first (a page's default choice), then every run's best/ and last/ (newest run first),
    then the plain base model."""
    out, shipped = [], []
    if CHECKPOINTS_DIR.is_dir():
        for d in sorted(CHECKPOINTS_DIR.iterdir()):
            if (d / "mtbert.json").is_file():
                dev = (runfolder.read_json(d / "metrics.json", {}) or {}).get("dev", {})
                avg = _num(dev.get("average")) if isinstance(dev, dict) else None
                shipped.append((-(avg if avg is not None else float("-inf")), d.name, CheckpointRef(
                    d.name, str(d), "shipped", f"{d.name} (shipped" +
                    (f", dev average {avg:.3f})" if avg is not None else ")"))))
    out += [ref for *_, ref in sorted(shipped, key=lambda x: x[:2])]
    for run in list_runs():
        for which in (BEST, LAST):
            d = run / which
            if (d / "mtbert.json").is_file():
                out.append(CheckpointRef(f"{run.name}/{which}", str(d), "run", f"{run.name}/{which}"))
    for b in BASE_MODELS:
        out.append(CheckpointRef(b, b, "base", f"{b} (plain base model, untrained heads)"))
    return out


def safe_checkpoint_path(user_path: str) -> Path:
    """A checkpoint folder the user named, but only inside checkpoints/ or the runs folder: no
    `..`, no absolute path elsewhere, no symlink (the folder's or a file's) leading out."""
    text = str(user_path).strip()
    if not text:
        raise RunError("checkpoint path is empty")
    p = Path(text).expanduser()
    if ".." in p.parts:
        raise RunError(f"{text}: '..' is not allowed in a checkpoint path")
    roots = [CHECKPOINTS_DIR.resolve(), runs_dir().resolve()]
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, ROOT / p]
    leads_out = None
    for c in candidates:
        if not c.exists():
            continue
        real = c.resolve()
        if not any(real.is_relative_to(r) for r in roots):
            if any(c.absolute().is_relative_to(r) for r in (*roots, CHECKPOINTS_DIR, runs_dir())):
                # inside an allowed place by its name, outside once its links are followed
                leads_out = RunError(f"{text}: a symbolic link leading outside the allowed places: "
                                     + ", ".join(str(r) for r in roots))
            continue
        if not real.is_dir() or not (real / "mtbert.json").is_file():
            raise RunError(f"{text}: not a checkpoint folder (no mtbert.json)")
        for f in real.iterdir():
            if not any(f.resolve().is_relative_to(r) for r in roots):
                raise RunError(f"{text}: {f.name} links outside the allowed folders")
        return real
    raise leads_out or RunError(f"{text}: no checkpoint there; allowed places: "
                                + ", ".join(str(r) for r in roots))


def secret_token(secrets) -> str | None:
    """HF_TOKEN from Streamlit's secrets (`st.secrets`, any mapping), or None when there is no
    secrets file or no such key: the push then falls back to the HF_TOKEN environment variable
    and the stored login (mtbert.hub.resolve_token)."""
    try:
        token = secrets.get("HF_TOKEN") if secrets is not None else None
    except FileNotFoundError:  # Streamlit's "no secrets.toml" error is one
        return None
    return str(token) if token else None


def token_source(secrets) -> str | None:
    """Where a push from the studio takes its token, in words (never the token), or None."""
    if secret_token(secrets):
        return "HF_TOKEN in the Streamlit secrets"
    if os.environ.get("HF_TOKEN"):
        return "the HF_TOKEN environment variable"
    from huggingface_hub import get_token
    return "your stored Hugging Face login (hf auth login)" if get_token() else None


def push_checkpoint(path: str, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """The studio's Push: a checkpoint folder inside checkpoints/ or the runs folder (the same
    check as loading one) to the Hub repo `repo_id`; returns the repo's URL. Raises RunError for
    the path, mtbert.hub.HubError for everything else, never with the token in the message."""
    from .. import hub

    folder = safe_checkpoint_path(path)
    repo_id = str(repo_id or "").strip()
    if not repo_id:
        raise hub.HubError("type the Hub repo to push to, as USER/NAME")
    token = hub.resolve_token(token)
    try:
        return hub.push_checkpoint(folder, repo_id, token=token, private=private)
    except hub.HubError:
        raise
    except Exception as e:  # anything hub.py does not explain: its text may quote the token
        failure = hub.HubError(f"push to {repo_id} failed: " + hub.scrub(f"{type(e).__name__}: {e}", token))
    raise failure  # outside the handler: the original error is not attached as context
