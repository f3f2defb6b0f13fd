"""Share checkpoints on the Hugging Face Hub: push a checkpoint folder with a generated model card;
list the Hub checkpoints a deployment (a Space) is told to offer.

Pulling needs nothing here: `mtbert.checkpoint.load_checkpoint("user/name")` downloads a Hub
checkpoint (only the files a checkpoint needs) and loads it.

The token comes from the `token` argument, else HF_TOKEN, else huggingface_hub's stored login
(`hf auth login`). It is only ever handed to huggingface_hub: it is not written into the card or
any file, and it is scrubbed from every message this module raises or prints.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .config import CARD_SETTINGS
from .report import other_lines, seed_table
from .runfolder import STATE_JSON, STATE_TENSORS
from .tasks import TaskError, specs_of_model_config

HUB_CHECKPOINT_ENV = "MTBERT_HUB_CHECKPOINT"
DEFAULT_LICENSE = "apache-2.0"  # the licence of the base encoders (MiniLM, BERT) a checkpoint derives from
EXCLUDED = (STATE_TENSORS, STATE_JSON, "README.md")  # resume state stays local; the card is generated
BASE_HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
# the built-in tasks' datasets: (model-index task type, dataset name, metric type per metric)
BUILTIN_CARD = {
    "sst": ("text-classification", "SST-5 (Stanford Sentiment Treebank, 5 classes)"),
    "para": ("text-classification", "Quora Question Pairs"),
    "sts": ("sentence-similarity", "STS Benchmark (similarity 0-5)"),
}
METRIC_TYPES = {"accuracy": "accuracy", "f1": "f1", "macro_f1": "f1", "pearson": "pearsonr", "spearman": "spearmanr"}


class HubError(Exception):
    """A push or a Hub setting that cannot work; the message says why and never holds the token."""


# ---- the token ------------------------------------------------------------------------------

def resolve_token(token: str | None = None) -> str | None:
    """The argument, else HF_TOKEN, else the stored login; None when there is none."""
    if token:
        return token
    from huggingface_hub import get_token
    return get_token()


def scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


# ---- the model card -------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise HubError(f"{path}: unreadable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def base_model_id(name: str | None) -> str | None:
    """The Hub id of a checkpoint's base model, or None when it is a local folder."""
    if not name:
        return None
    if name in BASE_HUB_IDS:
        return BASE_HUB_IDS[name]
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _encoder_words(folder: Path, meta: dict, has_encoder: bool) -> str:
    if has_encoder:
        return "fine-tuned weights included"
    if (folder / "adapters.safetensors").is_file():
        per_task = ", one set per task" if (meta.get("lora") or {}).get("per_task") else ""
        members = "".join(f"; {k} sets for {task}, an ensemble of {k} members whose mean it predicts"
                          for task, k in ((meta.get("model") or {}).get("members") or {}).items())
        return f"LoRA adapters of the frozen base{per_task}{members} (`adapters.safetensors`)"
    return "not included (frozen base; heads only)"


def _target(s) -> str:
    if s.kind == "regression":
        return f"a score {s.range[0]:g}–{s.range[1]:g}"
    names = f": {', '.join(s.label_names)}" if s.label_names else ""
    return f"{s.classes} classes{names}"


def _fmt(v) -> str:
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "–"
    return "–" if v is None else f"`{v}`"


def model_card(folder: str | Path, repo_id: str, license: str = DEFAULT_LICENSE):
    """The README.md of a pushed checkpoint, as a huggingface_hub ModelCard (metadata + text)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    meta = _read_json(folder / "mtbert.json")
    metrics = _read_json(folder / "metrics.json")
    cfg = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    model_cfg = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    try:
        specs = specs_of_model_config(model_cfg)
    except TaskError as e:
        raise HubError(f"{folder / 'mtbert.json'}: {e}") from None
    base = meta.get("base_model")
    base_id = base_model_id(base)
    has_encoder = (folder / "config.json").is_file()
    dev = metrics.get("dev") if isinstance(metrics.get("dev"), dict) else {}
    train = metrics.get("train") if isinstance(metrics.get("train"), dict) else {}

    def dataset(s):
        kind, name = BUILTIN_CARD.get(s.name, ("sentence-similarity" if s.kind == "regression" and s.is_pair
                                               else "text-classification", s.title))
        return kind, (f"{name}, CS224N dev split" if s.name in BUILTIN_CARD else f"{name}, dev split")

    results = [EvalResult(task_type=dataset(s)[0], task_name=s.title, dataset_type=f"cs224n-{s.name}"
                          if s.name in BUILTIN_CARD else s.name, dataset_name=dataset(s)[1], dataset_split="dev",
                          metric_type=METRIC_TYPES[m], metric_name=s.metric_title(m),
                          metric_value=round(float(dev[s.metric_key(m)]), 4))
               for s in specs for m in (s.main_metric,) if isinstance(dev.get(s.metric_key(m)), (int, float))]
    tags = ["mtbert", "bert", "multitask"] + sorted({dataset(s)[0] for s in specs})
    tags += [t for n, t in (("sst", "sentiment-analysis"), ("para", "paraphrase-identification"),
                            ("sts", "semantic-textual-similarity")) if n in [s.name for s in specs]]
    if cfg.get("gradient_method") == "pcgrad":
        tags.append("pcgrad")
    data = ModelCardData(
        library_name="mtbert", license=license, base_model=base_id, tags=tags,
        datasets=["stanfordnlp/sst", "nyu-mll/glue"], language="en",
        metrics=sorted({METRIC_TYPES[m] for s in specs for m in s.metrics}),
        model_name=repo_id.split("/")[-1] if results else None, eval_results=results or None)

    base_text = (f"[{base_id}](https://huggingface.co/{base_id})" if base_id
                 else f"a local BERT folder ({Path(str(base)).name})" if base else "unknown")
    lines = [f"# {repo_id.split('/')[-1]}", "",
             "A multitask BERT fine-tuned with mtbert (an interactive studio for multitask BERT fine-tuning, "
             f"grown from the CS224N minBERT default project): one shared encoder and {len(specs)} task "
             f"head{'s' if len(specs) > 1 else ''}.", "",
             f"- **Base model:** {base_text}",
             f"- **Tasks trained:** {', '.join(f'{s.title} ({s.name})' for s in specs)}",
             f"- **Encoder:** {_encoder_words(folder, meta, has_encoder)}",
             f"- **Pooling:** {model_cfg.get('pooling', '?')}",
             f"- **Licence:** {license}", ""]
    lines += ["## Tasks", "", "| task | input | target | head | loss | metrics |", "|---|---|---|---|---|---|"]
    lines += [f"| {s.title} (`{s.name}`) | {s.input} | {_target(s)} | {s.head} | {s.loss} | "
              f"{', '.join(s.metrics)} (main: {s.main_metric}) |" for s in specs]
    lines += ["", "The definitions are in `mtbert.json` (`model.tasks`): the checkpoint predicts without the "
                  "task file it was trained from.", ""]
    if meta.get("step") is not None or meta.get("run_id"):
        lines += [f"Saved at step {meta.get('step', '?')} of run `{meta.get('run_id', '?')}`.", ""]
    lines += ["## Data", "",
              "The CS224N minBERT files: `ids-sst-*.csv` (SST-5 from the Stanford Sentiment Treebank), "
              "`quora-*.csv` (Quora Question Pairs, released by Quora for non-commercial use) and "
              "`sts-*.csv` (the STS benchmark). "
              + (f"Training read the folder `{Path(cfg['data_dir']).name}`." if cfg.get("data_dir")
                 else "Training read the small sample shipped with mtbert (`data/sample`): the numbers "
                      "below say the pipeline works, not how good the model can be." if cfg else ""), ""]
    rows = {name: m for name, m in (("Train", train), ("Dev", dev)) if m}
    lines += ["## Results", ""]
    lines += [seed_table(rows, specs), ""] if rows else ["No evaluation was recorded with this checkpoint.", ""]
    more = [line for name, m in rows.items() for line in (f"{name} {x}" for x in other_lines(m, specs))]
    lines += (more + [""]) if more else []
    if cfg:
        # the settings declared card=True in TrainConfig: no paths, which would name the author's disk
        lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(cfg[k])} |" for k in CARD_SETTINGS if k in cfg]
        lines += [""]
    lines += ["## How to use", "", "With mtbert (`pip install` the project, then):", "", "```python",
              "from mtbert.checkpoint import load_checkpoint",
              "from mtbert.studio import playground",
              "",
              f'model, tokenizer, meta = load_checkpoint("{repo_id}")',
              'print(playground.sentiment(model, tokenizer, "A gorgeous, witty, seductive movie."))',
              'print(playground.pair_scores(model, tokenizer, "How do I learn to cook?", '
              '"What is the best way to learn cooking?"))', "```", ""]
    if has_encoder:
        lines += ["The encoder alone, with 🤗 Transformers (the task heads are in `heads.safetensors`):", "",
                  "```python", "from transformers import AutoTokenizer, BertModel", "",
                  f'encoder = BertModel.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", ""]
    lines += ["## Files", "",
              "`config.json`, `model.safetensors`, `tokenizer.json`: the encoder in Hugging Face layout; "
              "`heads.safetensors`: the task heads; `mtbert.json`: the model config and training "
              "settings; `metrics.json`: the evaluation above. Nothing is pickled.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


# ---- push -----------------------------------------------------------------------------------

def checkpoint_files(folder: Path) -> list[Path]:
    """The files a push sends: every file of the folder but the trainer's resume state and README.md."""
    from fnmatch import fnmatch

    files = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or any(fnmatch(f.name, p) for p in EXCLUDED):
            continue
        if f.is_symlink():  # could point at anything on the machine; a checkpoint never holds one
            raise HubError(f"{f}: is a symbolic link; refusing to upload what it points to")
        if f.is_file():
            files.append(f)
    return files


@contextmanager
def _staged(folder: Path, repo_id: str, license: str):
    """A temporary copy of the checkpoint plus its card. Hard links where possible: they cost
    nothing, and the trainer replacing best/ or last/ meanwhile cannot change what is sent."""
    with tempfile.TemporaryDirectory(prefix="mtbert-push-") as tmp:
        for attempt in range(3):
            time.sleep(0.2 * attempt)
            stage = Path(tempfile.mkdtemp(dir=tmp))
            try:
                before = folder.stat().st_ino
                for f in checkpoint_files(folder):
                    try:
                        os.link(f, stage / f.name)
                    except OSError as e:
                        if isinstance(e, FileNotFoundError):
                            raise
                        shutil.copy2(f, stage / f.name)  # another file system: a copy, same snapshot
                if folder.stat().st_ino == before:  # save_checkpoint swaps a whole new folder in
                    break
            except FileNotFoundError:  # caught between the two renames of such a swap
                continue
        else:
            raise HubError(f"{folder}: kept changing while being read (a training run is saving it); try again")
        model_card(stage, repo_id, license).save(stage / "README.md")
        yield stage


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise HubError(f"{folder}: no such checkpoint folder")
    if not (folder / "mtbert.json").is_file():
        raise HubError(f"{folder}: not an mtbert checkpoint (no mtbert.json)")
    if not (folder / "heads.safetensors").is_file():
        raise HubError(f"{folder}: incomplete checkpoint (no heads.safetensors)")


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"--repo-id {repo_id!r}: {e}") from None
    if repo_id.count("/") != 1:
        raise HubError(f"--repo-id {repo_id!r}: give it as USER/NAME (or ORG/NAME)")


def push_checkpoint(checkpoint_dir: str | Path, repo_id: str, token: str | None = None,
                    private: bool = False, commit_message: str | None = None,
                    license: str = DEFAULT_LICENSE) -> str:
    """Upload a checkpoint folder to the Hub model repo `repo_id` (created if needed) with a
    generated model card, in one commit. Returns the repo's URL."""
    from huggingface_hub import HfApi

    folder = Path(checkpoint_dir)
    _check_folder(folder)
    _check_repo_id(repo_id)
    token = resolve_token(token)
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN (a token with write access, from "
                       "https://huggingface.co/settings/tokens) or run `hf auth login`")
    api = HfApi(token=token)
    message = commit_message or f"Upload mtbert checkpoint {folder.name}"
    try:
        with _staged(folder, repo_id, license) as stage:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=stage, commit_message=message, repo_type="model")
        return str(url)
    except Exception as e:
        failure = _explain(e, repo_id, api.endpoint, token)
        if failure is None:
            raise
    # raised here, outside the handler, so that the original error (whose text may quote the
    # token back) is not even attached as __context__
    raise failure


def _explain(e: Exception, repo_id: str, endpoint: str, token: str) -> HubError | None:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(e, HubError):
        return e
    if isinstance(e, OfflineModeIsEnabled):
        return HubError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"{repo_id}: the Hub refused access (is the token allowed to write to "
                        f"{repo_id.split('/')[0]}?): {_first_line(e, token)}")
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = {401: "the token was refused (401): check HF_TOKEN",
               403: f"the token may not write to {repo_id} (403)"}.get(status, "the Hub answered an error")
        return HubError(f"push to {repo_id} failed: {why}: {_first_line(e, token)}")
    if isinstance(e, httpx2.HTTPError):  # no HTTP answer at all: refused, timed out, DNS
        return HubError(f"push to {repo_id} failed: cannot reach the Hub at {endpoint} "
                        f"({_first_line(e, token)})")
    if isinstance(e, OSError):
        return HubError(f"push to {repo_id} failed: {_first_line(e, token)}")
    return None


def _first_line(e: Exception, token: str | None) -> str:
    """What the Hub said (its own message when it gave one), else the error's first line; scrubbed."""
    said = getattr(e, "server_message", None)
    lines = [ln for ln in str(said or e).splitlines() if ln.strip()]
    return scrub(" ".join(lines) if said else lines[0] if lines else type(e).__name__, token)


# ---- Hub checkpoints for a deployment --------------------------------------------------------

def hub_checkpoints() -> list[str]:
    """The Hub repo ids in MTBERT_HUB_CHECKPOINT (comma-separated), in order, without repeats.
    A Space sets it in its settings; the playground offers these besides local checkpoints."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    out = []
    for item in os.environ.get(HUB_CHECKPOINT_ENV, "").split(","):
        item = item.strip()
        if not item or item in out:
            continue
        try:
            validate_repo_id(item)
            if item.count("/") != 1:
                raise HFValidationError("not USER/NAME")
        except HFValidationError:
            raise HubError(f"{HUB_CHECKPOINT_ENV}: {item!r} is not a Hub model repo id "
                           "(USER/NAME, several separated by commas)") from None
        out.append(item)
    return out


# ---- command line ---------------------------------------------------------------------------

def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "push", help="upload a checkpoint to the Hugging Face Hub with a model card",
        description="Upload a checkpoint folder (without the trainer's resume state) to a Hub model repo, "
                    "creating the repo if needed, with a generated README.md model card. The token comes "
                    "from HF_TOKEN or `hf auth login` (never from the command line, where it would end up "
                    "in the shell history).")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder, e.g. runs/<run>/best")
    p.add_argument("--repo-id", required=True, metavar="USER/NAME", help="Hub model repo to push to")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps "
                                                          "its visibility)")
    p.add_argument("--message", help="commit message (default: Upload mtbert checkpoint <folder name>)")
    p.add_argument("--license", default=DEFAULT_LICENSE, help=f"licence in the model card (default: {DEFAULT_LICENSE})")
    p.set_defaults(func=_cmd_push)


def _cmd_push(args) -> int:
    try:
        url = push_checkpoint(args.checkpoint, args.repo_id, private=args.private,
                              commit_message=args.message, license=args.license)
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"pushed {args.checkpoint} to {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mtbert.hub push …`, the same command as `python -m mtbert push …`."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m mtbert.hub")
    add_cli(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
