"""The Sweeps page's logic: plan a sweep from a preset or a config file, start its runner as its own
process (`python -m mtbert sweep --resume DIR`), stop and resume it, and read its progress, runs and
results from the sweep folder. Everything is in that folder, so a reload re-attaches. No Streamlit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .. import lock, runfolder, sweep
from ..config import preset_settings, read_config_file
from .environment import ROOT
from .runs import LockHeld, RunError, _num

_CHILDREN: dict[int, subprocess.Popen] = {}


def base_settings(preset: str | None = None, config_file: str | None = None) -> dict:
    """The settings every run starts from: a config file's when one is given, else the preset's."""
    if config_file and config_file.strip():
        return read_config_file(Path(config_file.strip()).expanduser())
    return preset_settings(preset) if preset else {}


def parse_vary_text(text: str) -> dict[str, list]:
    """'lr=1e-5,2e-5' lines (blank lines and # comments skipped), as --vary takes them."""
    lines = [ln.split("#")[0].strip() for ln in (text or "").splitlines()]
    return sweep.parse_vary([ln for ln in lines if ln])


def start_sweep(base: dict, vary: dict[str, list], seeds: int, name: str | None = None) -> Path:
    """Plan the sweep (every run validated: ValueError names a bad setting) and start its runner in
    the background. Refused with LockHeld while another training runs."""
    owner = runfolder.lock_owner()
    if owner is not None:
        raise LockHeld(owner)
    d = sweep.create(base, vary, seeds, name=name or None)
    _spawn(d)
    return d


def resume_sweep(sweep_dir) -> Path:
    d = Path(sweep_dir)
    st = sweep.read_sweep_status(d)
    if is_live(st):
        raise RunError(f"sweep {d.name} is still running")
    owner = runfolder.lock_owner()
    if owner is not None:
        raise LockHeld(owner)
    _spawn(d)
    return d


def _spawn(d: Path) -> None:
    env = dict(os.environ)
    env["MTBERT_RUNS_DIR"] = str(runfolder.runs_dir())  # the runner's machine lock and the pages' are one file
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with open(d / sweep.LOG, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mtbert", "sweep", "--resume", str(d)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # a page reload spares it
    _CHILDREN[proc.pid] = proc
    doc = sweep.load(d)
    if doc.get("state") != "running":  # until the runner says running: starting, with its pid to watch
        doc.update(state="starting", pid=proc.pid)
        sweep.save(d, doc)


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def status(sweep_dir) -> dict:
    """sweep.json with the runner's liveness: a runner (or a starting one) whose process is gone
    reads as interrupted."""
    _reap()
    st = sweep.read_sweep_status(sweep_dir)
    pid = st.get("pid")
    if st.get("state") == "starting" and not (isinstance(pid, int) and lock.pid_alive(pid)):
        st["state"] = "interrupted"
    return st


def is_live(st: dict) -> bool:
    return st.get("state") in ("starting", "running")


def stop_sweep(sweep_dir) -> None:
    """SIGTERM the runner: its trainers save last/ and stop, the sweep is marked stopped (resumable)."""
    st = status(sweep_dir)
    pid = st.get("pid")
    if not is_live(st) or not isinstance(pid, int):
        raise RunError(f"sweep {Path(sweep_dir).name} is not running (state: {st.get('state')})")
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"sweep" not in argv:
            raise RunError(f"sweep {Path(sweep_dir).name}: process {pid} is not its runner any more")
    except OSError:
        pass  # no /proc (macOS): trust the pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def progress(st: dict) -> tuple[float, str]:
    """(fraction of runs ended, 'n/N done · which runs are running')."""
    runs = st["runs"]
    ended = sum(r["state"] in ("done", "failed") for r in runs)
    running = [r for r in runs if r["state"] == "running"]
    text = f"{ended}/{len(runs)} runs ended ({st['counts']['done']} done, {st['counts']['failed']} failed)"
    if running and is_live(st):
        text += " · running: " + "; ".join(f"run {r['index'] + 1}/{len(runs)} "
                                            f"({sweep.variant_label(r['variant'])}, seed {r['seed']})"
                                            for r in running)
    return ended / max(1, len(runs)), text


def run_rows(sweep_dir, st: dict) -> list[dict]:
    """One row per run: its variant, seed, state, steps and dev average so far."""
    rows = []
    for r in st["runs"]:
        rs = runfolder.read_status(sweep.run_path(sweep_dir, r)) or {}
        step, total = rs.get("step"), rs.get("total_steps")
        rows.append({"#": r["index"] + 1, "variant": sweep.variant_label(r["variant"]), "seed": r["seed"],
                     "state": r["state"], "step": f"{step or 0}/{total or '?'}" if rs else "",
                     "dev average": _num(rs.get("best_dev_average")), "error": (r.get("error") or "")[:200],
                     "run folder": r["run_dir"]})
    return rows


def results_rows(res: dict) -> list[dict]:
    """The results table as dataframe rows: 'mean ± sd' per score, seeds, step time and its ratio."""
    out = []
    for row in res["rows"]:
        cells = {"variant": row["label"], "seeds": row["seeds"]}
        for c in res["columns"]:
            s = row["metrics"][c["key"]]
            cells[c["title"]] = sweep.mean_sd(s)
        t, x = row["step_time_s"], row["step_time_ratio"]
        cells["step time (ms)"] = round(t * 1000, 1) if t else None
        cells[f"× {res['reference']}"] = round(x, 2) if x else None
        out.append(cells)
    return out


def versus_rows(res: dict) -> list[dict]:
    """Every variant against the reference, as dataframe rows: per score, the difference of the means
    and whether it is beyond the noise of the seeds (sweep.versus)."""
    return [{"variant": row["label"], **{c["title"]: sweep.versus_text(row["vs_reference"][c["key"]])
                                         for c in res["columns"]}}
            for row in res["rows"] if row.get("vs_reference")]


def overlay_records(sweep_dir, st: dict) -> dict[str, list[dict]]:
    """{run name: metrics.jsonl records} of the runs that have started, for charts.overlay_figure."""
    out = {}
    for r in st["runs"]:
        rd = sweep.run_path(sweep_dir, r)
        if r["state"] != "queued" and rd.is_dir():
            out[f"{r['index'] + 1}: {sweep.variant_label(r['variant'])}, seed {r['seed']}"] = \
                runfolder.read_metrics(rd)[0]
    return out


def log_tail(sweep_dir, lines: int = 20) -> str:
    try:
        text = (Path(sweep_dir) / sweep.LOG).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])

