"""The studio's side of the run folder: list and read runs, start/stop/resume/delete the trainer
process, and the checkpoints on offer. The charts of a run's metrics are in `mtbert.charts`.

The trainer (`python -m mtbert train`) is its own OS process writing a run folder
(docs/run-folder.md); everything here reads that folder or signals that process, so the UI never
blocks and a reload re-attaches to whatever is running. No Streamlit in here: the pages call it.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import runfolder
from ..lock import pid_alive
from ..report import SEED_COLUMNS
from ..runfolder import BEST, LAST, LOG, STATE_JSON, STATUS, runs_dir

ROOT = Path(__file__).resolve().parents[2]  # the studio's folder: app.py, checkpoints/, data/
# shipped checkpoints; MTBERT_CHECKPOINTS_DIR points elsewhere (a deployment's own, or none for a test)
CHECKPOINTS_DIR = Path(os.environ.get("MTBERT_CHECKPOINTS_DIR") or ROOT / "checkpoints").absolute()
BASE_MODELS = ("minilm-l6",)
LIVE_STATES = ("queued", "running")
LOG_TAIL_LINES = 15


class RunError(Exception):
    """An action on a run that cannot be done; the message says which run and why."""


LockHeld = runfolder.LockHeld


# ---- reading runs ---------------------------------------------------------------------------

def list_runs() -> list[Path]:
    """Run folders, newest first (run ids start with a timestamp)."""
    root = runs_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and runfolder.is_run_dir(p)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def log_tail(run_dir, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(Path(run_dir) / LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def read_status(run_dir) -> dict:
    """status.json, with one correction the trainer cannot make itself: a queued or running run
    whose process is gone (killed, crashed before it could write) is reported as failed."""
    run_dir = Path(run_dir)
    _reap_children()
    st = runfolder.read_status(run_dir)
    if st is None:
        st = {"run_id": run_dir.name, "state": "queued" if (run_dir / runfolder.CONFIG).is_file() else "unknown"}
    st.setdefault("run_id", run_dir.name)
    pid = st.get("pid")
    if st.get("state") in LIVE_STATES and not (isinstance(pid, int) and pid_alive(pid)):
        # a queued run without a pid yet is being started right now, unless that was long ago
        fresh = st.get("state") == "queued" and pid is None and time.time() - _mtime(run_dir / STATUS) < 30
        if not fresh:
            tail = log_tail(run_dir)
            st = {**st, "state": "failed", "error": st.get("error") or (
                f"the training process (pid {pid}) ended without reporting why"
                + (f"; the end of {LOG}:\n{tail}" if tail else ""))}
    return st


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def is_live(status: dict) -> bool:
    return status.get("state") in LIVE_STATES


def active_run() -> Path | None:
    """The run that holds the machine's training lock, or None. A stale lock (dead PID) is no owner."""
    owner = runfolder.lock_owner()
    if owner is None:
        return None
    return runs_dir() / str(owner.get("run_id"))


_TITLES = dict(SEED_COLUMNS)
RUN_SCORES = (_TITLES["average"], *(title for k, title in SEED_COLUMNS if k != "average"))  # the Average first
RUN_SETTINGS = ("tasks", "gradient_method", "schedule", "mode", "pooling", "pair_encoding", "lr", "batch_size",
                "epochs", "max_steps", "train_subset")  # the Runs table's settings columns, after the scores


def describe_run(run_dir) -> dict:
    """One row of the Runs table: the run's id and its best dev scores first (what runs are
    compared by, readable without scrolling sideways), then its state and main settings."""
    run_dir = Path(run_dir)
    cfg, st = runfolder.read_config(run_dir), read_status(run_dir)
    dev = next((r for r in results_table(run_dir, st) if r[""] == "Dev"), {})
    return {"run": run_dir.name, **{title: dev.get(title) for title in RUN_SCORES},
            "state": st.get("state"), "step": st.get("step"),
            **{k: ",".join(cfg.get(k) or []) if k == "tasks" else cfg.get(k) for k in RUN_SETTINGS}}


# ---- the seed's results table ---------------------------------------------------------------

def results_rows(records: list[dict]) -> list[dict]:
    """Seed-style rows (Train, Dev, ...): Paraphrase acc, SST acc, STS corr, Average.

    The rows describe the best checkpoint: the dev evaluation with the highest average, and the
    other splits' evaluation at that step (or their latest one, e.g. a final Train pass)."""
    evals = [r for r in records if r.get("type") == "eval" and r.get("split")]
    if not evals:
        return []
    dev = [r for r in evals if r["split"] == "dev"]
    full = [r for r in dev if r.get("full")]  # the trainer's final pass over the whole dev set
    best = full[-1] if full else max(dev, key=lambda r: _num(r.get("average"), -1.0)) if dev else None
    chosen = {"dev": best} if best else {}
    best_step = best.get("step") if best else None
    for r in evals:
        s = r["split"]
        if s == "dev" or (s in chosen and best is not None and chosen[s].get("step") == best_step):
            continue
        chosen[s] = r  # the latest one, unless one at the best dev step came earlier
    order = sorted(chosen, key=_split_key)
    return [{"": s.capitalize(), **{title: _num(chosen[s].get(k)) for k, title in SEED_COLUMNS}}
            for s in order]


def results_table(run_dir, status: dict | None = None) -> list[dict]:
    """The finished run's table: the trainer's own `results` in status.json (Train and Dev of the
    best checkpoint), else the evaluations found in metrics.jsonl."""
    results = (status if status is not None else read_status(run_dir)).get("results")
    if isinstance(results, dict) and results:
        order = sorted(results, key=_split_key)
        return [{"": s.capitalize(), **{title: _num((results[s] or {}).get(k)) for k, title in SEED_COLUMNS}}
                for s in order if isinstance(results[s], dict)]
    return results_rows(runfolder.read_metrics(run_dir)[0])


def _split_key(split: str):
    return {"train": 0, "dev": 1, "test": 2}.get(split, 3), split


def _num(x, default=None):
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else default


# ---- starting and stopping the trainer process ----------------------------------------------

_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap_children() -> None:
    # the trainer is our child: poll it once it exits so it does not linger as a zombie
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def _spawn(run_dir: Path, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ)
    env["MTBERT_RUNS_DIR"] = str(runs_dir())  # the child's lock and ours are the same file
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # train.log shows progress as it happens
    with open(run_dir / LOG, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mtbert", "train", "--no-progress", *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # a page reload or Ctrl-C in the UI spares it
    _CHILDREN[proc.pid] = proc
    return proc


def _launch(run_dir: Path, args: list[str]) -> Path:
    proc = _spawn(run_dir, args)
    try:
        # hold the lock for the child from this instant: the trainer needs seconds to import torch,
        # and a second Start in that gap must already be refused (the trainer re-takes its own lock)
        runfolder.acquire_lock(run_dir, pid=proc.pid)
    except LockHeld:
        proc.terminate()
        proc.wait(10)
        raise
    st = runfolder.read_status(run_dir) or {}
    if st.get("state") in (None, "queued"):  # do not overwrite a status the trainer already wrote
        runfolder.write_status(run_dir, {**st, "state": "queued", "pid": proc.pid, "updated_at": time.time()})
    return run_dir


def _refuse_if_active() -> None:
    owner = runfolder.lock_owner()
    if owner is not None:
        raise LockHeld(owner)


def start_run(config: dict, name: str | None = None) -> Path:
    """Create a run folder for `config` and start the trainer on it. Raises LockHeld (naming the
    active run) while another training runs, ValueError for a bad setting."""
    from ..config import TrainConfig  # validates every setting; the message names the bad one

    cfg = TrainConfig.from_dict({**config, **({"name": name} if name else {})})
    _refuse_if_active()
    runs_dir().mkdir(parents=True, exist_ok=True)
    run_dir = runfolder.new_run_dir(cfg.name, runs_dir())
    run_dir.mkdir(parents=True)
    runfolder.write_config(run_dir, cfg.to_dict())
    runfolder.write_status(run_dir, {"run_id": run_dir.name, "state": "queued", "pid": None,
                                     "started_at": time.time(), "updated_at": time.time()})
    try:
        return _launch(run_dir, ["--run-dir", str(run_dir)])
    except LockHeld as e:
        runfolder.write_status(run_dir, {"run_id": run_dir.name, "state": "failed", "pid": None,
                                         "error": str(e), "updated_at": time.time()})
        raise


def resume_run(run_dir) -> Path:
    """Continue a stopped (or failed) run from its last/ checkpoint, in the same folder."""
    run_dir = _own_run(run_dir)
    st = read_status(run_dir)
    if is_live(st):
        raise RunError(f"run {run_dir.name} is still {st['state']}; nothing to resume")
    if not (run_dir / LAST / STATE_JSON).is_file():
        raise RunError(f"run {run_dir.name} has no {LAST}/ checkpoint with trainer state to resume from")
    deadline = time.time() + 10
    while (active_run() or Path()).name == run_dir.name and time.time() < deadline:
        time.sleep(0.2)  # the trainer marks itself stopped a moment before it lets go of the lock
    _refuse_if_active()
    # queued from now on, as a start is: the page must not keep offering Resume (a second press
    # would be refused by the lock) while the new trainer imports torch
    before = runfolder.read_status(run_dir) or {}
    runfolder.write_status(run_dir, {**before, "state": "queued", "pid": None, "error": None,
                                     "updated_at": time.time()})
    try:
        return _launch(run_dir, ["--resume", str(run_dir)])
    except LockHeld:
        runfolder.write_status(run_dir, {**before, "updated_at": time.time()})
        raise


def _is_trainer(pid: int) -> bool:
    """Guard against a recycled PID: only signal a process that is our trainer."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc (macOS): trust the PID
    # `python -m mtbert train …` or the `mtbert train …` console script
    return b"train" in argv and any(a == b"mtbert" or a.endswith(b"/mtbert") for a in argv)


def stop_run(run_dir) -> None:
    """Ask the trainer to stop gracefully (SIGTERM): it finishes the step, saves last/ and marks
    the run stopped."""
    run_dir = _own_run(run_dir)
    st = read_status(run_dir)
    pid = st.get("pid")
    if not is_live(st) or not isinstance(pid, int):
        raise RunError(f"run {run_dir.name} is not running (state: {st.get('state')})")
    if not _is_trainer(pid):
        raise RunError(f"run {run_dir.name}: process {pid} is not its trainer any more")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended on its own meanwhile


def delete_run(run_dir) -> None:
    run_dir = _own_run(run_dir)
    active = active_run()
    if is_live(read_status(run_dir)) or (active is not None and active.name == run_dir.name):
        raise RunError(f"run {run_dir.name} is active; stop it before deleting it")
    shutil.rmtree(run_dir)


def _own_run(run_dir) -> Path:
    """A run folder directly under runs_dir(); anything else is refused (no deleting elsewhere)."""
    p = Path(run_dir)
    p = (runs_dir() / p) if not p.is_absolute() else p
    root = runs_dir().resolve()
    if p.is_symlink() or p.resolve().parent != root:
        raise RunError(f"{run_dir}: not a run folder under {root}")
    if not p.is_dir() or not runfolder.is_run_dir(p):
        raise RunError(f"{run_dir}: no such run under {root}")
    return p.resolve()


# ---- checkpoints ----------------------------------------------------------------------------

@dataclass
class CheckpointRef:
    name: str  # what the user picks: "minilm-l6", "<shipped name>", "<run id>/best"
    path: str  # what load_checkpoint / the playground loads
    kind: str  # base | shipped | run
    label: str

    def __str__(self) -> str:
        return self.label


def list_checkpoints() -> list[CheckpointRef]:
    """Shipped checkpoints first (they answer sensibly before any training), then every run's
    best/ and last/ (newest run first), then the plain base model."""
    out = []
    if CHECKPOINTS_DIR.is_dir():
        for d in sorted(CHECKPOINTS_DIR.iterdir()):
            if (d / "mtbert.json").is_file():
                dev = (runfolder.read_json(d / "metrics.json", {}) or {}).get("dev", {})
                avg = _num(dev.get("average")) if isinstance(dev, dict) else None
                out.append(CheckpointRef(d.name, str(d), "shipped", f"{d.name} (shipped" +
                                         (f", dev average {avg:.3f})" if avg is not None else ")")))
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


# ---- the settings form ------------------------------------------------------------------------

SECTIONS = {
    "Model and tasks": ("name", "base_model", "mode", "freeze_word_embeddings", "tasks", "schedule",
                        "gradient_method", "pooling", "pair_encoding", "para_encoding", "sts_encoding",
                        "para_features", "sts_loss", "dropout", "max_length"),
    "Optimisation": ("epochs", "batch_size", "lr", "head_lr", "layer_lr_decay", "optimizer", "weight_decay",
                     "warmup_steps", "lr_decay", "grad_clip", "bucket", "sst_weight", "para_weight", "sts_weight",
                     "ema_decay"),
    "Budget": ("max_steps", "time_budget_s", "train_subset"),
    "Evaluation": ("eval_every", "eval_every_s", "full_eval_at_s", "eval_subset", "train_eval_subset",
                   "final_full_eval", "eval_batch_size", "calibrate_para"),
    "Machine": ("device", "bf16", "seed"),
}
DATA_SETTINGS = ("data_dir", "quora_train")  # set by the data picker, not the form


@dataclass(frozen=True)
class Range:
    """The bounds TrainConfig enforces on a number (None: no bound there); the form's min and max
    and the "Allowed" line of its help come from here (tests/test_runs.py checks they agree)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        lo = f"{self.low:g} {'<' if self.low_open else '≤'} " if self.low is not None else ""
        return f"{lo}value {'<' if self.high_open else '≤'} {self.high:g}"


@dataclass(frozen=True)
class About:
    label: str  # what the form shows; the config key is in the help
    help: str | None = None
    range: Range | None = None


AT_LEAST_1, AT_LEAST_0, ABOVE_0 = Range(1), Range(0), Range(0, low_open=True)
# every form setting's label, description and bounds; a TrainConfig field missing here would be
# labelled with its bare config key, which tests/test_runs.py refuses
ABOUT = {
    "name": About("Run name", "the run folder is named after the start time and this"),
    "base_model": About("Base model", "minilm-l6 (the packaged all-MiniLM-L6-v2), a local BERT folder, or a Hub id"),
    "mode": About("Training mode", "finetune: train the encoder too; frozen: train the heads only (the seed's "
                                   "first mode)"),
    "freeze_word_embeddings": About("Freeze word embeddings", "keep the word-embedding table as it is (12 M of "
                                    "MiniLM's 22.7 M weights): cheaper steps and smaller PCGrad buffers"),
    "tasks": About("Tasks", "sst: SST-5 sentiment; para: Quora paraphrase; sts: STS similarity"),
    "schedule": About("Task schedule", "parallel: one batch of every task per step; round-robin: a pass of one "
                                       "task, then the next"),
    "gradient_method": About("Gradient method", "sum: add the task losses; pcgrad: project away conflicting "
                                                "task gradients"),
    "pooling": About("Sentence pooling", "cls: the [CLS] token's vector; mean: the mean of the token vectors"),
    "pair_encoding": About("Pair encoding", "separate: encode each sentence alone (the seed); joint: "
                                            "[CLS] a [SEP] b [SEP]"),
    "para_encoding": About("Quora pair encoding", "empty: as Pair encoding; else this encoding for Quora only"),
    "sts_encoding": About("STS pair encoding", "empty: as Pair encoding; else this encoding for STS only"),
    "para_features": About("Paraphrase head features", "concat: [u; v] (the seed); concat_diff_prod: "
                                                       "[u; v; |u−v|; u·v]"),
    "sts_loss": About("STS loss", "cosine_mse: squared error of the predicted 0–5 score; cosine_embedding: "
                                  "the seed's cosine embedding loss on ±1 targets (separate pair encoding only)"),
    "dropout": About("Dropout", "the encoder's (hidden and attention) and the task heads'", Range(0, 1, high_open=True)),
    "max_length": About("Max tokens per input", "longer inputs are cut to this many tokens", Range(8, 512)),
    "epochs": About("Epochs", None, AT_LEAST_1),
    "batch_size": About("Batch size per task", "examples of each task in one batch", AT_LEAST_1),
    "lr": About("Learning rate (top layer)", "of the encoder's top layer (the layers below get less with "
                                             "Layer-wise lr decay) and of the heads unless Head learning rate "
                                             "is set", ABOVE_0),
    "head_lr": About("Head learning rate", "empty: the same as Learning rate", ABOVE_0),
    "layer_lr_decay": About("Layer-wise lr decay", "1: one learning rate for the whole encoder; below 1: each "
                                                   "layer down gets this factor of the one above's (the top layer "
                                                   "gets Learning rate)", Range(0, 1, low_open=True)),
    "optimizer": About("Optimizer"),
    "weight_decay": About("Weight decay", None, AT_LEAST_0),
    "warmup_steps": About("Warm-up steps", "steps over which the learning rate rises linearly to its value",
                          AT_LEAST_0),
    "lr_decay": About("Learning-rate decay", "after the warm-up: constant (none), or down to 0 at the last step "
                                             "(or the end of the time budget), linearly or along a cosine"),
    "grad_clip": About("Gradient clipping (max norm)", "empty: no clipping", ABOVE_0),
    "bucket": About("Length bucketing", "batches of similar lengths: less padding, faster steps"),
    "sst_weight": About("SST loss weight", "the SST loss's weight in the sum (the logged loss is unweighted)",
                        ABOVE_0),
    "para_weight": About("Quora loss weight", "the Quora loss's weight in the sum (the logged loss is "
                                              "unweighted)", ABOVE_0),
    "sts_weight": About("STS loss weight", "the STS loss's weight in the sum (the logged loss is unweighted)",
                        ABOVE_0),
    "ema_decay": About("Weight averaging (EMA decay)", "empty: evaluate the weights as trained; else evaluate "
                       "and keep as best a moving average of them (e.g. 0.999; it warms up, averaging about the "
                       "last tenth of the steps so far until that is 1/(1-decay))", Range(0, 1, True, True)),
    "max_steps": About("Max steps", "empty: no limit; stops early when reached", AT_LEAST_1),
    "time_budget_s": About("Time budget (seconds)", "empty: no limit; stops after this many seconds of "
                                                    "training", ABOVE_0),
    "train_subset": About("Training examples per task", "empty: all; else train on this many examples per task",
                          AT_LEAST_1),
    "eval_every": About("Evaluate every (steps)", "empty: evaluate on dev at every epoch end only", AT_LEAST_1),
    "eval_every_s": About("Evaluate every (seconds)", "empty: by steps and epochs only; else also after every "
                                                      "this many seconds of training", ABOVE_0),
    "full_eval_at_s": About("Full-dev evaluations at (seconds)", "comma-separated seconds of training time at "
                                                                 "which to evaluate on the whole dev set",
                            ABOVE_0),
    "eval_subset": About("Dev examples per task", "empty: the whole dev set; else this many examples per task",
                         AT_LEAST_1),
    "train_eval_subset": About("Train-row examples per task", "train examples per task for the results' Train "
                                                              "row; empty: all", AT_LEAST_1),
    "final_full_eval": About("Final full-dev evaluation", "with a dev subset: evaluate the best checkpoint on "
                                                          "the whole dev set at the end"),
    "eval_batch_size": About("Evaluation batch size", None, AT_LEAST_1),
    "calibrate_para": About("Calibrate the Quora threshold", "fit the Quora duplicate threshold on the dev eval "
                            "subset (for train data whose duplicate rate differs from dev's, like the stand-in "
                            "Quora set)"),
    "device": About("Device", "auto: CUDA when there is a GPU, else the CPU"),
    "bf16": About("bfloat16 autocast", "on CUDA only"),
    "seed": About("Random seed"),
}


# optional settings whose values are those of another setting (None: follow that setting)
SAME_CHOICES_AS = {"para_encoding": "pair_encoding", "sts_encoding": "pair_encoding"}


@dataclass
class Setting:
    name: str
    kind: str  # choice | tasks | bool | int | float | list | text
    default: object
    optional: bool = False  # None (an empty field) is allowed
    choices: tuple = ()
    section: str = "Other"
    label: str = ""
    description: str | None = None
    range: Range | None = None

    @property
    def help(self) -> str:
        """The widget's tooltip: what the setting does, its config key and the values allowed."""
        allowed = (("any of " if self.kind == "tasks" else "") + ", ".join(f"`{c}`" for c in self.choices)
                   if self.choices else
                   str(self.range) + (" each" if self.kind == "list" else "") if self.range else None)
        if allowed and self.optional:
            allowed += ", or (none)" if self.kind == "choice" else ", or empty"
        key = f"Config key: `{self.name}`" + (f" · Allowed: {allowed}" if allowed else "")
        return f"{self.description}\n\n{key}" if self.description else key

    def to_widget(self, value):
        """A config value as its form widget holds it (lists and empty text as strings)."""
        if self.kind == "list":
            return ", ".join(str(v) for v in value or [])
        if self.kind == "text" and value is None:
            return ""
        return value

    def from_widget(self, value):
        """The config value for what the form holds: empty optional text is None, a list is split
        on commas (numbers where they parse)."""
        if self.kind == "list":
            return [_number_or_text(v.strip()) for v in str(value or "").split(",") if v.strip()]
        if self.kind == "text":
            value = str(value or "").strip()
            return None if self.optional and not value else value
        return value


def _number_or_text(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def settings_spec() -> list[Setting]:
    """One entry per TrainConfig field, in form order: a new trainer setting appears in the form
    by itself (in the "Other" section until it is given a place)."""
    from dataclasses import MISSING, fields

    from ..config import CHOICES, TASKS, TrainConfig

    where = {name: sec for sec, names in SECTIONS.items() for name in names}
    out = []
    for f in fields(TrainConfig):
        if f.name in DATA_SETTINGS:
            continue
        default = f.default_factory() if f.default is MISSING else f.default
        t = str(f.type)
        choices = TASKS if f.name == "tasks" else CHOICES.get(f.name) or CHOICES.get(SAME_CHOICES_AS.get(f.name), ())
        kind = ("tasks" if f.name == "tasks" else "choice" if choices else
                "bool" if t.startswith("bool") else "int" if t.startswith("int") else
                "float" if t.startswith("float") else "list" if t.startswith("list") else "text")
        about = ABOUT.get(f.name, About(f.name))  # undeclared: the bare key, which the tests refuse
        out.append(Setting(f.name, kind, default, "None" in t, tuple(choices), where.get(f.name, "Other"),
                           about.label, about.help, about.range))
    order = list(SECTIONS) + ["Other"]
    return sorted(out, key=lambda s: order.index(s.section))  # stable: field order within a section


def preset_values(preset: str | None) -> dict:
    """Every form setting's value under a preset (None: the defaults)."""
    from ..config import preset_settings

    values = {s.name: s.default for s in settings_spec()}
    values.update({k: v for k, v in (preset_settings(preset) if preset else {}).items() if k not in DATA_SETTINGS})
    return values


def environment() -> dict:
    """What this machine offers: the device, the base models that load, the data folders."""
    import torch

    from ..checkpoint import CheckpointError, resolve_base

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        device = "CUDA GPU: " + ", ".join(names)
    else:
        device = f"CPU only ({os.cpu_count()} cores); no CUDA GPU found"
    bases = {}
    for b in BASE_MODELS:
        try:
            resolve_base(b)  # the packaged weights, their sha256 checked
            bases[b] = "available (packaged weights, sha256 verified)"
        except CheckpointError as e:
            bases[b] = f"not available: {e}"
    return {"device": device, "torch": torch.__version__, "base_models": bases, "data": data_folders()}


# ---- data folders ---------------------------------------------------------------------------

def display_path(path) -> str:
    """A path as a user of this installation reads it: relative to the studio's folder when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def data_folders() -> dict[str, Path]:
    """The data folders this installation has: the shipped sample, and the official CS224N files
    once `python -m mtbert data fetch` has put them in data/cs224n."""
    from ..data import FULL_DATA_DIR, SAMPLE_DIR

    folders = {"shipped sample": SAMPLE_DIR}
    if FULL_DATA_DIR.is_dir():
        folders[f"CS224N full data ({display_path(FULL_DATA_DIR)})"] = FULL_DATA_DIR
    return folders


def run_data_folders(run_dir) -> dict[str, Path]:
    """Where a run's leaderboard files can be predicted from: the folder the run trained on when
    it is still there, then the installation's data folders (data_folders())."""
    folders = {}
    trained_on = runfolder.read_config(run_dir).get("data_dir")
    if trained_on:
        # a relative data_dir is relative to where the trainer started: the studio's folder or the repository
        found = next((p for p in (Path(trained_on), ROOT / trained_on) if p.is_dir()), None)
        if found is not None:
            folders[f"the run's data ({trained_on})"] = found.resolve()
    for label, path in data_folders().items():
        if path.resolve() not in folders.values():
            folders[label] = path.resolve()
    return folders


def describe_data(data_dir, quora_train: str | None = None) -> list[dict]:
    """The CS224N files a run on `data_dir` would read, per split and task, with row counts."""
    from ..data import SPLITS, DataError, data_files, read_task_file, resolve_files

    overrides = {"para": quora_train} if quora_train else None
    rows = []
    for split in SPLITS:
        named = data_files(data_dir, split)
        for task, path in resolve_files(data_dir, split, overrides if split == "train" else None).items():
            row = {"split": split, "task": task, "file": os.path.relpath(path, data_dir), "rows": None, "usable": None,
                   "note": "" if path == named[task] else f"in place of {named[task].name}"}
            if path.is_file():
                try:
                    _, rep = read_task_file(task, path)
                    row.update(rows=rep.rows, usable=rep.usable)
                    if rep.skipped:
                        row["note"] = "; ".join(filter(None, [row["note"], f"{rep.skipped} malformed rows skipped"]))
                except DataError as e:
                    row["note"] = str(e)
            else:
                row["note"] = "missing"
            rows.append(row)
    return rows


def data_summary(rows: list[dict]) -> str:
    """One line: usable rows per task of the train and dev splits."""
    parts = []
    for split in ("train", "dev"):
        counts = [f"{r['task']} {r['usable']:,}" if r["usable"] is not None else f"{r['task']} missing"
                  for r in rows if r["split"] == split]
        parts.append(f"{split}: " + ", ".join(counts))
    return " · ".join(parts)


def data_problem(rows: list[dict], tasks) -> str | None:
    """Why a run on these files could not start (a train or dev file missing for a chosen task),
    and the command that fetches the official files."""
    from ..data import FETCH_COMMAND

    bad = [r for r in rows if r["task"] in tasks and r["split"] in ("train", "dev") and not r["usable"]]
    if not bad:
        return None
    problem = "no usable data in: " + ", ".join(f"{r['split']} {r['task']} ({r['file']})" for r in bad)
    if any(r["rows"] is None for r in bad):  # a file is missing, not merely empty or malformed
        problem += f"; `{FETCH_COMMAND.format(dest='DIR')}` fetches the official CS224N files"
    return problem


# ---- progress ------------------------------------------------------------------------------

def progress(status: dict) -> tuple[float, str]:
    """(fraction done, one line: step, epoch, ETA, examples/s) for a progress bar."""
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    frac = min(1.0, step / total) if total else 0.0
    parts = [f"step {step}/{total or '?'}"]
    if status.get("epochs"):
        parts.append(f"epoch {(status.get('epoch') or 0) + 1}/{status['epochs']}")
    eta = _num(status.get("eta_s"))
    if eta is not None and status.get("state") == "running":
        parts.append(f"ETA {int(eta // 60)}:{int(eta % 60):02d}")
    eps = _num(status.get("examples_per_s"))
    if eps is not None:
        parts.append(f"{eps:.1f} examples/s")
    return frac, " · ".join(parts)
