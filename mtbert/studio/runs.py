"""The studio's side of the run folder: list runs and tell their state, start, stop, resume and
delete the trainer process, and the seed's results table of a run.

The trainer (`python -m mtbert train`) is its own OS process writing a run folder
(docs/run-folder.md, mtbert.runfolder); everything here reads that folder or signals that process,
so the UI never blocks and a reload re-attaches to whatever is running. No Streamlit in here: the
pages call it.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

from .. import runfolder
from ..lock import pid_alive
from ..report import result_columns
from ..tasks import TaskSpec, builtin_tasks
from ..runfolder import CONFIG, LAST, LOG, STATE_JSON, STATUS, runs_dir
from .environment import ROOT

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
        st = {"run_id": run_dir.name, "state": "queued" if (run_dir / CONFIG).is_file() else "unknown"}
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


RUN_SETTINGS = ("tasks", "gradient_method", "schedule", "mode", "pooling", "pair_encoding", "lr", "batch_size",
                "epochs", "max_steps", "train_subset")  # the Runs table's settings columns, after the scores


def run_tasks(run_dir) -> list[TaskSpec]:
    """The task definitions a run trains (its config.json's); the built-in trio for a config that
    cannot be read. Read once per version of config.json: the Train page asks every second."""
    path = Path(run_dir) / CONFIG
    try:
        version = path.stat().st_mtime_ns
    except OSError:
        version = None
    return list(_run_tasks(str(run_dir), version))


@lru_cache(maxsize=64)
def _run_tasks(run_dir: str, version) -> tuple:
    from ..config import TrainConfig
    try:
        return tuple(TrainConfig.from_dict(runfolder.read_config(Path(run_dir))).task_specs())
    except (ValueError, TypeError):
        return tuple(builtin_tasks())


def score_columns(rows: list[dict]) -> list[str]:
    """The score columns of Runs table rows (Average first): every key but the run, its state and settings."""
    other = {"run", "state", "step", *RUN_SETTINGS}
    return list(dict.fromkeys(k for r in rows for k in r if k not in other))


def runs_table(folders) -> list[dict]:
    """The Runs table: one row per run, every row with the same columns in the same order (runs of
    other task sets leave the columns of tasks they did not train empty)."""
    rows = [describe_run(f) for f in folders]
    keys = ["run", *score_columns(rows), "state", "step", *RUN_SETTINGS]
    return [{k: r.get(k) for k in keys} for r in rows]


def describe_run(run_dir) -> dict:
    """One row of the Runs table: the run's id and its best dev scores first (what runs are
    compared by, readable without scrolling sideways), then its state and main settings."""
    run_dir = Path(run_dir)
    cfg, st = runfolder.read_config(run_dir), read_status(run_dir)
    cols = result_columns(run_tasks(run_dir))
    titles = [cols[-1][1], *(t for _, t in cols[:-1])]  # the Average first
    dev = next((r for r in results_table(run_dir, st) if r[""] == "Dev"), {})
    return {"run": run_dir.name, **{title: dev.get(title) for title in titles},
            "state": st.get("state"), "step": st.get("step"),
            **{k: ",".join(cfg.get(k) or []) if k == "tasks" else cfg.get(k) for k in RUN_SETTINGS}}


# ---- the seed's results table ---------------------------------------------------------------

def results_rows(records: list[dict], specs: list[TaskSpec] | None = None) -> list[dict]:
    """Rows (Train, Dev, ...) with a column per task's main score and the Average (for the trio the
    seed's Paraphrase acc, SST acc, STS corr, Average).

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
    return [{"": s.capitalize(), **{title: _num(chosen[s].get(k)) for k, title in result_columns(specs)}}
            for s in order]


def results_table(run_dir, status: dict | None = None) -> list[dict]:
    """The finished run's table: the trainer's own `results` in status.json (Train and Dev of the
    best checkpoint), else the evaluations found in metrics.jsonl."""
    results = (status if status is not None else read_status(run_dir)).get("results")
    specs = run_tasks(run_dir)
    if isinstance(results, dict) and results:
        order = sorted(results, key=_split_key)
        return [{"": s.capitalize(), **{title: _num((results[s] or {}).get(k)) for k, title in result_columns(specs)}}
                for s in order if isinstance(results[s], dict)]
    return results_rows(runfolder.read_metrics(run_dir)[0], specs)


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


def resumable(run_dir) -> bool:
    """The run saved a trainer state (at an epoch's end, a stop, its budget's end) to resume from."""
    return (Path(run_dir) / LAST / STATE_JSON).is_file()


def resume_run(run_dir) -> Path:
    """Continue a stopped (or failed) run from its last/ checkpoint, in the same folder."""
    run_dir = _own_run(run_dir)
    st = read_status(run_dir)
    if is_live(st):
        raise RunError(f"run {run_dir.name} is still {st['state']}; nothing to resume")
    if not resumable(run_dir):
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
