"""Sweeps (docs/sweeps.md): a grid of settings times seeds as a queue of real `python -m mtbert train`
runs, recorded in a sweep folder, resumable after a kill, exportable as a Slurm job array, and summed
up as mean ± sd over seeds per variant.

The sweep folder is the one contract between the runner (this module, usually its own process),
the studio's Sweeps page and a cluster's array jobs:

    <sweep>/sweep.json          the plan and each run's state (queued, running, done, failed)
    <sweep>/configs/NNN.json    run NNN's full config, what `train --config` gets
    <sweep>/runs/NNN/<label>/   run NNN's run folder (docs/run-folder.md)
    <sweep>/results.{md,json,html}
    <sweep>/sweep.sbatch        with --emit-slurm

Each run folder has a parent of its own (runs/NNN/), so the trainer's lock beside it is private to
that run: runs of one sweep never refuse each other, be they in parallel here or array tasks on a
cluster. The machine's one-training lock (runs/.lock) is held by the runner for the whole sweep
instead, naming the run it started last, so the Train page and `train` refuse to start beside it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from difflib import get_close_matches
from itertools import product
from pathlib import Path

from . import lock, runfolder
from .io import atomic_write_bytes, atomic_write_json

SWEEP_JSON = "sweep.json"
RESULTS_MD, RESULTS_JSON, RESULTS_HTML = "results.md", "results.json", "results.html"
SLURM_SCRIPT = "sweep.sbatch"
LOG = "sweep.log"  # the runner's output when the studio started it
LOCK = ".lock"  # in the sweep folder: one runner per sweep
STATES = ("queued", "running", "done", "failed")
NOT_VARIED = ("seed", "name", "task_definitions")
# settings that may name a file or folder: made absolute when planned, since a run may start elsewhere
# (a Slurm array task starts in the sweep folder)
PATH_SETTINGS = ("base_model", "data_dir", "quora_train", "tasks_file")  # --seeds sets the seed; the sweep names its runs
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # so that a child runs this very mtbert


class SweepError(ValueError):
    """A sweep that cannot be planned, run or read; the message names the setting, file or run."""


def sweeps_dir() -> Path:
    """Where sweep folders go: $MTBERT_SWEEPS_DIR, else ./sweeps."""
    return Path(os.environ.get("MTBERT_SWEEPS_DIR") or "sweeps").absolute()


# ---- planning ------------------------------------------------------------------------------------

def _field(name: str, where: str):
    from .config import TrainConfig
    known = {f.name: f for f in fields(TrainConfig)}
    if name in NOT_VARIED:
        why = "use --seeds to run several seeds" if name == "seed" else "the sweep sets it for each run"
        raise SweepError(f"{where}: setting {name} cannot be varied ({why})")
    if name not in known:
        close = get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SweepError(f"{where}: unknown setting {name!r}{hint}; known settings: {', '.join(sorted(known))}")
    return known[name]


def convert(name: str, text: str, where: str = "--vary"):
    """One value typed for a setting, as its declaration types it (as `train`'s flag would read it);
    a list setting's items are joined with '+' (tasks=sst+sts) since ',' separates the values."""
    from .config import allowed_values, kind, number_or_text, optional
    f = _field(name, where)
    k, text = kind(f), text.strip()
    if optional(f) and text.lower() in ("none", "null"):
        return None
    if k == "list":
        return [number_or_text(x) if name != "tasks" else x for x in (t.strip() for t in text.split("+")) if x]
    if k == "bool":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
    else:
        try:
            return {"int": int, "float": float}.get(k, str)(text)
        except ValueError:
            pass
    raise SweepError(f"{where}: setting {name}={text!r} is not allowed; allowed values: "
                     f"{allowed_values(f) or 'a ' + k}")


def parse_vary(items: list[str]) -> dict[str, list]:
    """['gradient_method=sum,pcgrad', 'lr=1e-5,2e-5'] -> {'gradient_method': ['sum', 'pcgrad'], 'lr': [...]}."""
    out: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not values.strip():
            raise SweepError(f"--vary {item!r}: expected SETTING=VALUE,VALUE,... (e.g. gradient_method=sum,pcgrad)")
        if name in out:
            raise SweepError(f"--vary {name} is given twice; list all its values in one --vary")
        out[name] = [convert(name, v, f"--vary {name}") for v in values.split(",") if v.strip()]
    return out


def _short(value) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def variant_label(variant: dict) -> str:
    """'gradient_method=pcgrad, lr=2e-05' ('base' when nothing varies): how the table names a variant."""
    return ", ".join(f"{k}={_short(v)}" for k, v in variant.items()) or "base"


def _folder_label(variant: dict, seed: int) -> str:
    text = "-".join(_short(v) for v in variant.values()) + f"-seed{seed}"
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in text).strip("-")[:80]


def _absolute(value):
    """A relative path that exists here, made absolute; anything else (minilm-l6, a Hub id) as it is."""
    if isinstance(value, str) and value and not Path(value).is_absolute() and Path(value).exists():
        return str(Path(value).absolute())
    return value


def plan(base: dict, vary: dict[str, list], seeds: int = 1) -> list[dict]:
    """Every run of the grid (the product of the varied values, in the order given) times the seeds
    (base seed + i), each with its full config, validated: a bad value raises before anything runs."""
    from .config import TrainConfig
    if not isinstance(seeds, int) or seeds < 1:
        raise SweepError(f"--seeds {seeds!r} is not allowed; allowed values: an integer >= 1")
    for name in vary:
        _field(name, f"--vary {name}")
        if not vary[name]:
            raise SweepError(f"--vary {name}: no values given")
    base = {k: _absolute(v) if k in PATH_SETTINGS else v for k, v in base.items()}
    vary = {k: [_absolute(v) for v in vs] if k in PATH_SETTINGS else vs for k, vs in vary.items()}
    try:
        base_cfg = TrainConfig.from_dict(base)
    except (ValueError, TypeError) as e:
        raise SweepError(f"base config: {e}") from None
    runs = []
    for values in product(*vary.values()):
        variant = dict(zip(vary, values))
        for i in range(seeds):
            seed = base_cfg.seed + i
            label = _folder_label(variant, seed)
            try:
                cfg = TrainConfig.from_dict({**base, **variant, "seed": seed, "name": label})
            except (ValueError, TypeError) as e:
                raise SweepError(f"--vary {variant_label(variant)}: {e}") from None
            runs.append({"index": len(runs), "variant": variant, "seed": seed, "label": label,
                         "config": cfg.to_dict()})
    return runs


# ---- the sweep folder ----------------------------------------------------------------------------

def load(sweep_dir) -> dict:
    doc = runfolder.read_json(Path(sweep_dir) / SWEEP_JSON)
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise SweepError(f"{sweep_dir} is not a sweep folder (no readable {SWEEP_JSON})")
    return doc


def save(sweep_dir, doc: dict) -> None:
    doc["updated_at"] = time.time()
    atomic_write_json(Path(sweep_dir) / SWEEP_JSON, doc)


def run_path(sweep_dir, run: dict) -> Path:
    return Path(sweep_dir) / run["run_dir"]


def create(base: dict, vary: dict[str, list], seeds: int = 1, sweep_dir=None, name: str | None = None,
           executor: str = "local") -> Path:
    """Plan the sweep (validating every run) and write its folder: sweep.json and configs/. Nothing runs."""
    runs = plan(base, vary, seeds)
    name = name or str(base.get("name") or "sweep")
    if sweep_dir is None:
        sweep_dir = runfolder.new_run_dir(name, sweeps_dir())
    sweep_dir = Path(sweep_dir).absolute()
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise SweepError(f"sweep folder {sweep_dir} already exists and is not empty; give another, or "
                         f"continue it with --resume {sweep_dir}")
    (sweep_dir / "configs").mkdir(parents=True, exist_ok=True)
    for r in runs:
        n = f"{r['index']:03d}"
        atomic_write_json(sweep_dir / "configs" / f"{n}.json", r.pop("config"))
        r.update(config=f"configs/{n}.json", run_dir=f"runs/{n}/{r.pop('label')}", state="queued",
                 attempts=0, error=None, started_at=None, ended_at=None)
    save(sweep_dir, {"name": name, "created_at": time.time(), "base": base, "vary": vary, "seeds": seeds,
                     "executor": executor, "state": "queued", "pid": None, "runs": runs})
    return sweep_dir


def read_sweep_status(sweep_dir) -> dict:
    """sweep.json with what a reader needs: a runner marked running whose process is gone reads as
    'interrupted' (resume it); `counts` per state."""
    doc = load(sweep_dir)
    pid = doc.get("pid")
    if doc.get("state") == "running" and not (isinstance(pid, int) and lock.pid_alive(pid)):
        doc["state"] = "interrupted"
    doc["counts"] = {s: sum(r["state"] == s for r in doc["runs"]) for s in STATES}
    return doc


def list_sweeps(root: Path | None = None) -> list[Path]:
    """Sweep folders under `root` (default sweeps_dir()), newest first."""
    root = root or sweeps_dir()
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / SWEEP_JSON).is_file()), key=lambda p: p.name, reverse=True)


# ---- running -------------------------------------------------------------------------------------

def _child_env(parallel: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if parallel > 1 and "OMP_NUM_THREADS" not in env:  # N runs on one CPU: share its cores, do not fight
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def check_parallel(parallel) -> None:
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise SweepError(f"--parallel {parallel!r} is not allowed; allowed values: an integer >= 1")


class _Adopted:
    """A trainer a killed runner left behind (its own session survives the runner): waited for, not
    started twice."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None and not lock.pid_alive(self.pid):
            self.returncode = 0  # unknown: its status.json tells how it ended
        return self.returncode


class Runner:
    """Runs a sweep folder's unfinished runs, `parallel` at once, updating sweep.json as they go."""

    def __init__(self, sweep_dir, parallel: int = 1, wait: bool = False, retry_failed: bool = False, out=print):
        check_parallel(parallel)
        self.dir, self.parallel, self.wait, self.out = Path(sweep_dir).absolute(), parallel, wait, out
        self.doc = load(self.dir)
        self.retry_failed = retry_failed
        self.active: dict[int, object] = {}
        self.stopping = False
        self.total = len(self.doc["runs"])

    # -- locks --

    def _machine_lock(self, naming: Path) -> None:
        """Hold runs/.lock for this runner (naming `naming`), waiting while another training has it."""
        said = False
        while True:
            try:
                lock.acquire(runfolder.lock_path(), str(naming))
                return
            except lock.LockHeld as e:
                if not self.wait:
                    raise SweepError(f"{e}; the sweep waits for none (give --wait to queue behind it)") from None
                if not said:
                    self.out(f"waiting: {e}")
                    said = True
                if self.stopping:
                    raise SweepError("stopped while waiting for the lock") from None
                time.sleep(1.0)

    # -- one run --

    def _start(self, run: dict) -> None:
        rd = run_path(self.dir, run)
        self._machine_lock(rd)
        owner = lock.read_lock(rd.parent / runfolder.LOCK)
        if owner is None and (runfolder.read_status(rd) or {}).get("state") == "finished":
            # a trainer a killed runner left behind finished meanwhile: nothing to run again
            proc, how = _Adopted(-1), "already finished"
            proc.returncode = 0
        elif owner is not None:  # a trainer a killed runner left behind: wait for it
            proc, how = _Adopted(owner["pid"]), f"waiting for its trainer (pid {owner['pid']}), left running"
        else:
            if (rd / runfolder.LAST / runfolder.STATE_JSON).is_file():
                args, how = ["--resume", str(rd)], "resuming from last/"
            else:  # nothing to resume from: start clean, without a killed attempt's metrics
                if rd.exists():
                    shutil.rmtree(rd)
                args, how = ["--config", str(self.dir / run["config"]), "--run-dir", str(rd)], "starting"
            rd.mkdir(parents=True, exist_ok=True)
            with open(rd / runfolder.LOG, "ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "mtbert", "train", "--no-progress", *args],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=_child_env(self.parallel), start_new_session=True)
            run["attempts"] = run.get("attempts", 0) + 1
        self.active[run["index"]] = proc
        run.update(state="running", pid=proc.pid, started_at=run.get("started_at") or time.time(), error=None)
        save(self.dir, self.doc)
        self.out(f"[{run['index'] + 1}/{self.total}] {how}: {variant_label(run['variant'])}, seed {run['seed']} "
                 f"-> {rd}")

    def _ended(self, run: dict, rc: int) -> None:
        del self.active[run["index"]]
        st = runfolder.read_status(run_path(self.dir, run)) or {}
        state = st.get("state")
        if state == "finished" and rc == 0:
            run.update(state="done", error=None)
            avg = (run_dev_metrics(run_path(self.dir, run)) or {}).get("average")
            tail = f"dev average {avg:.4f}" if isinstance(avg, (int, float)) else "finished"
        elif state == "stopped" or (self.stopping and state != "failed"):
            run.update(state="queued")  # interrupted on purpose: --resume continues it from last/
            tail = "stopped; --resume continues it"
        else:
            why = f"the trainer exited with code {rc}" if rc else "the trainer ended without reporting why"
            err = st.get("error") or f"{why} ({runfolder.LOG} has its output)"
            run.update(state="failed", error=err)
            tail = f"failed: {err.splitlines()[0]}"
        run.update(pid=None, ended_at=time.time())
        save(self.dir, self.doc)
        self.out(f"[{run['index'] + 1}/{self.total}] {run['state']}: {variant_label(run['variant'])}, "
                 f"seed {run['seed']}: {tail}")

    # -- the queue --

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            self.stopping = True
            self.out(f"[stop] signal {signum}: asking the running trainers to save and stop")
            for proc in self.active.values():
                if proc.poll() is None and proc.pid > 0:
                    try:  # once: a second signal would make a trainer skip its save
                        os.kill(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass

    def run(self) -> int:
        """Run the unfinished runs; 0 when all are done, 1 when some failed, 130 when stopped."""
        sweep_lock = self.dir / LOCK
        try:
            lock.acquire(sweep_lock, self.dir.name)
        except lock.LockHeld as e:
            raise SweepError(f"sweep {self.dir.name} is already being run (pid {e.owner.get('pid')})") from None
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._machine_lock(self.dir)  # refused (or waited for) before anything is marked running
            return self._loop()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            lock.release(runfolder.lock_path())
            lock.release(sweep_lock)

    def _loop(self) -> int:
        wanted = ("queued", "running", "failed") if self.retry_failed else ("queued", "running")
        pending = [r for r in self.doc["runs"] if r["state"] in wanted]
        self.doc.update(state="running", pid=os.getpid(), parallel=self.parallel)
        save(self.dir, self.doc)
        done = self.total - len(pending)
        self.out(f"sweep {self.dir}: {len(pending)} of {self.total} runs to go"
                 + (f", {done} already done" if done else "") + f", {self.parallel} at a time")
        try:
            while (pending or self.active) and not (self.stopping and not self.active):
                while pending and len(self.active) < self.parallel and not self.stopping:
                    self._start(pending.pop(0))
                for index, proc in list(self.active.items()):
                    rc = proc.poll()
                    if rc is not None:
                        self._ended(self.doc["runs"][index], rc)
                time.sleep(0.3)
        except BaseException:
            self.doc.update(state="failed", pid=None)
            save(self.dir, self.doc)
            raise
        failed = sum(r["state"] == "failed" for r in self.doc["runs"])
        left = sum(r["state"] == "queued" for r in self.doc["runs"])
        self.doc.update(state="stopped" if left else "failed" if failed else "done", pid=None)
        save(self.dir, self.doc)
        if not left:
            write_results(self.dir)
            self.out(f"results: {self.dir / RESULTS_MD}")
        return 130 if left else 1 if failed else 0


# ---- Slurm ---------------------------------------------------------------------------------------

def emit_slurm(sweep_dir, options: list[str] = ()) -> Path:
    """Write sweep.sbatch: a job array, index i running run i (its config, its run folder, resuming
    from last/ when a requeued task finds one). Paths are relative to the sweep folder, which is
    where it is submitted from."""
    sweep_dir = Path(sweep_dir)
    doc = load(sweep_dir)
    n = len(doc["runs"])
    lines = ["#!/bin/bash", f"#SBATCH --job-name=mtbert-{doc['name']}", f"#SBATCH --array=0-{n - 1}",
             "#SBATCH --output=logs/%A_%a.out", *(f"#SBATCH {o}" for o in options), "",
             f"# {n} runs of the sweep {doc['name']}: submit from this folder (cd into it; sbatch {SLURM_SCRIPT}),",
             "# then gather them: python -m mtbert sweep --collect .",
             'cd "${SLURM_SUBMIT_DIR:-.}" || exit 1',
             'PYTHON="${MTBERT_PYTHON:-python3}"', "",
             "run() {  # CONFIG RUN_DIR: a requeued task continues from its last/ state",
             '  if [ -f "$2/last/trainer_state.json" ]; then',
             '    exec "$PYTHON" -m mtbert train --no-progress --resume "$2"',
             "  fi",
             '  mkdir -p "$2"',
             '  exec "$PYTHON" -m mtbert train --no-progress --config "$1" --run-dir "$2"',
             "}", "",
             'case "$SLURM_ARRAY_TASK_ID" in']
    for r in doc["runs"]:
        lines.append(f"  {r['index']}) run {r['config']} {r['run_dir']} ;;  # {variant_label(r['variant'])}, "
                     f"seed {r['seed']}")
    lines += ['  *) echo "no run for array index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac", ""]
    (sweep_dir / "logs").mkdir(exist_ok=True)
    path = sweep_dir / SLURM_SCRIPT
    atomic_write_bytes(path, "\n".join(lines).encode())
    path.chmod(0o755)
    return path


def refresh_states(sweep_dir) -> dict:
    """Each run's state from its run folder (for runs another machine ran): finished -> done; a
    trainer's failed or stopped -> failed or queued; no folder yet -> queued."""
    sweep_dir = Path(sweep_dir)
    doc = load(sweep_dir)
    for r in doc["runs"]:
        st = runfolder.read_status(run_path(sweep_dir, r)) or {}
        state = st.get("state")
        pid = st.get("pid")
        alive = state == "running" and isinstance(pid, int) and lock.pid_alive(pid)
        r["state"] = ("done" if state == "finished" else "failed" if state == "failed"
                      else "running" if alive else "queued")
        r["error"] = st.get("error") if state == "failed" else None
    save(sweep_dir, doc)
    return doc


# ---- results -------------------------------------------------------------------------------------

def run_dev_metrics(run_dir) -> dict | None:
    """The dev metrics a finished run reports for its best checkpoint: best/metrics.json's (the
    final full-dev evaluation when the run chose on a dev subset), else status.json's results."""
    run_dir = Path(run_dir)
    m = runfolder.read_json(run_dir / runfolder.BEST / "metrics.json")
    if not (isinstance(m, dict) and isinstance(m.get("dev"), dict)):
        m = (runfolder.read_status(run_dir) or {}).get("results")
    dev = m.get("dev") if isinstance(m, dict) else None
    return dev if isinstance(dev, dict) and dev else None


def median_step_time(run_dir) -> float | None:
    times = [r["step_time"] for r in runfolder.read_metrics(run_dir)[0]
             if r.get("type") == "step" and isinstance(r.get("step_time"), (int, float))]
    return statistics.median(times) if times else None


def _columns(sweep_dir, doc) -> list[tuple[str, str]]:
    """(metric key, title) of the table: the main score of every task some run trains (a sweep may
    vary `tasks`), then the average."""
    from .config import TrainConfig
    from .report import result_columns
    specs, seen = {}, set()
    for r in doc["runs"]:
        for path in (run_path(sweep_dir, r) / runfolder.CONFIG, Path(sweep_dir) / r["config"]):
            cfg = runfolder.read_json(path)
            if not isinstance(cfg, dict):
                continue
            which = json.dumps([cfg.get(k) for k in ("tasks", "tasks_file", "task_definitions")], default=str)
            if which not in seen:  # read each task set once, not once per run
                seen.add(which)
                try:
                    specs.update({s.name: s for s in TrainConfig.from_dict(cfg).task_specs() if s.name not in specs})
                except (ValueError, TypeError):
                    continue
            break
    return result_columns(list(specs.values()) or None)


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.mean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None, "values": values}


def results(sweep_dir) -> dict:
    """Per variant: mean and sd over its done seeds of each task's dev score and the average, the
    number of seeds, and the step time (the mean over seeds of each run's median step_time) relative
    to the variant with gradient_method=sum, else the first."""
    sweep_dir = Path(sweep_dir)
    doc = load(sweep_dir)
    cols = _columns(sweep_dir, doc)
    groups: dict[str, list[dict]] = {}
    for r in doc["runs"]:
        groups.setdefault(json.dumps(r["variant"], sort_keys=True), []).append(r)
    rows = []
    for runs in groups.values():
        done = [(r, run_dev_metrics(run_path(sweep_dir, r))) for r in runs if r["state"] == "done"]
        done = [(r, m) for r, m in done if m]
        times = [t for t in (median_step_time(run_path(sweep_dir, r)) for r, _ in done) if t is not None]
        cfg = runfolder.read_json(sweep_dir / runs[0]["config"]) or {}
        rows.append({"variant": runs[0]["variant"], "label": variant_label(runs[0]["variant"]),
                     "gradient_method": cfg.get("gradient_method"), "seeds": len(done), "runs": len(runs),
                     "seed_values": [r["seed"] for r, _ in done],
                     "metrics": {k: _stat([float(m[k]) for _, m in done
                                           if isinstance(m.get(k), (int, float)) and math.isfinite(m[k])])
                                 for k, _ in cols},
                     "step_time_s": statistics.mean(times) if times else None})
    ref = next((row for row in rows if row["gradient_method"] == "sum"), None) or (rows[0] if rows else None)
    for row in rows:
        row["step_time_ratio"] = row["step_time_s"] / ref["step_time_s"] \
            if ref and ref["step_time_s"] and row["step_time_s"] else None
        row["vs_reference"] = {k: versus(row["metrics"][k], ref["metrics"][k]) for k, _ in cols} \
            if ref and row is not ref else {}
    return {"sweep": doc["name"], "columns": [{"key": k, "title": t} for k, t in cols],
            "reference": ref["label"] if ref else None, "rows": rows}


def versus(a: dict, b: dict) -> dict | None:
    """A variant's score against the reference's: the difference of the means, its standard error
    sqrt(sd_a^2/n_a + sd_b^2/n_b) from the seeds' spread, and whether the difference is beyond the
    noise: larger than 2 standard errors (about a 95 % interval). None without 2 seeds on each side:
    one seed says nothing about the noise."""
    if a["mean"] is None or b["mean"] is None or a["sd"] is None or b["sd"] is None:
        return None
    delta = a["mean"] - b["mean"]
    se = math.sqrt(a["sd"] ** 2 / len(a["values"]) + b["sd"] ** 2 / len(b["values"]))
    return {"delta": delta, "se": se, "beyond_noise": abs(delta) > 2 * se}


def versus_text(v: dict | None) -> str:
    if v is None:
        return "–"
    return f"{v['delta']:+.3f}{' (beyond noise)' if v['beyond_noise'] else ''}"


def mean_sd(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] is not None else f"{s['mean']:.3f}"


def results_markdown(res: dict) -> str:
    cols = res["columns"]
    head = ["variant", "seeds", *(c["title"] for c in cols), "step time (ms)", f"× {res['reference'] or '–'}"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in res["rows"]:
        t, x = row["step_time_s"], row["step_time_ratio"]
        cells = [row["label"], f"{row['seeds']}/{row['runs']}", *(mean_sd(row["metrics"][c["key"]]) for c in cols),
                 f"{t * 1000:.1f}" if t else "–", f"{x:.2f}" if x else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"Sweep {res['sweep']}: dev scores of each run's best checkpoint, mean ± sd over seeds; step time: "
            f"the median training step, relative to {res['reference'] or '–'}.\n\n" + "\n".join(lines) + "\n")
    others = [row for row in res["rows"] if row.get("vs_reference")]
    if others:
        head = ["variant", *(c["title"] for c in cols)]
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        lines += ["| " + " | ".join([row["label"], *(versus_text(row["vs_reference"][c["key"]]) for c in cols)]) + " |"
                  for row in others]
        text += (f"\nAgainst {res['reference']}: the difference of the means; \"beyond noise\" where it is larger "
                 "than twice its standard error sqrt(sd₁²/n₁ + sd₂²/n₂) over the seeds.\n\n" + "\n".join(lines) + "\n")
    return text


def bar_figure(res: dict):
    """Grouped bars: one group per score (each task's and the average), one bar per variant, the
    error bar its sd over seeds."""
    import plotly.graph_objects as go
    fig = go.Figure()
    titles = [c["title"] for c in res["columns"]]
    for row in res["rows"]:
        stats = [row["metrics"][c["key"]] for c in res["columns"]]
        fig.add_bar(x=titles, y=[s["mean"] for s in stats], name=f"{row['label']} (n={row['seeds']})",
                    error_y=dict(type="data", array=[s["sd"] or 0.0 for s in stats], visible=True))
    fig.update_layout(barmode="group", title=f"Sweep {res['sweep']}: dev scores, mean ± sd over seeds",
                      yaxis_title="dev score", legend_title="variant", margin=dict(t=60, b=40, l=40, r=20))
    return fig


def write_results(sweep_dir) -> dict:
    """results.json, results.md and results.html (the bar chart, plotly.js inlined: no CDN)."""
    sweep_dir = Path(sweep_dir)
    res = results(sweep_dir)
    atomic_write_json(sweep_dir / RESULTS_JSON, res)
    atomic_write_bytes(sweep_dir / RESULTS_MD, results_markdown(res).encode())
    html = bar_figure(res).to_html(include_plotlyjs=True, full_html=True)
    atomic_write_bytes(sweep_dir / RESULTS_HTML, html.encode())
    return res
