"""mtbert.runfolder: the run folder's files as the trainer writes them and every reader reads them
(torn lines, a file replaced under a reader, a resume's cut), its names and its lock."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtbert import runfolder


def step(i: int) -> dict:
    return {"type": "step", "step": i, "loss": {"sst": 1.0 / i}}


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(tmp_path / "runs"))
    d = tmp_path / "runs" / "20260101-000000-r1"
    d.mkdir(parents=True)
    return d


def write_records(run, records) -> None:
    (run / runfolder.METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_metrics_leaves_a_torn_last_line_for_the_next_call(run):
    write_records(run, [step(1), step(2)])
    with open(run / runfolder.METRICS, "a") as f:
        f.write('{"type": "step", "step": 3, "lo')  # the trainer is mid-write
    recs, off = runfolder.read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2]
    assert off == len((run / runfolder.METRICS).read_bytes()) - len('{"type": "step", "step": 3, "lo')
    with open(run / runfolder.METRICS, "a") as f:
        f.write('ss": {"sst": 1.0}}\nnot json at all\n' + json.dumps(step(4)) + "\n")
    more, off2 = runfolder.read_metrics(run, off)
    assert [r["step"] for r in more] == [3, 4]  # the completed line parsed; the garbage line skipped
    assert off2 == (run / runfolder.METRICS).stat().st_size
    assert runfolder.read_metrics(run, off2) == ([], off2)
    assert runfolder.read_metrics(run.parent / "no-such-run") == ([], 0)


def test_metrics_tail_reads_only_new_lines_and_starts_over_when_the_file_is_replaced(run):
    write_records(run, [step(1), step(2)])
    tail = runfolder.MetricsTail(run)
    assert len(tail.update()) == 2
    with open(run / runfolder.METRICS, "a") as f:
        f.write(json.dumps(step(3)) + "\n")
    assert [r["step"] for r in tail.update()] == [3]
    assert [r["step"] for r in tail.records] == [1, 2, 3]
    # a resume rewrites the file (atomic replace) with the steps up to its saved state
    new = run / "metrics.new"
    new.write_text("".join(json.dumps(step(i)) + "\n" for i in (1, 2, 3, 4)))
    os.replace(new, run / runfolder.METRICS)
    tail.update()
    assert [r["step"] for r in tail.records] == [1, 2, 3, 4]


def test_the_writer_starts_on_a_fresh_line_after_a_torn_one_and_writes_strict_json(run):
    write_records(run, [step(1)])
    with open(run / runfolder.METRICS, "a") as f:
        f.write('{"type": "step", "st')  # a crash mid-write
    w = runfolder.MetricsWriter(run)
    w.write({**step(2), "cos": {"sst/para": float("nan")}})
    w.close()
    assert [r["step"] for r in runfolder.read_metrics(run)[0]] == [1, 2]
    assert "NaN" not in (run / runfolder.METRICS).read_text()  # NaN is not JSON: written as null


def test_truncate_metrics_keeps_the_records_up_to_the_saved_step_and_drops_torn_lines(run):
    write_records(run, [step(1), {"type": "eval", "step": 2, "average": 0.5}, step(3), step(4)])
    with open(run / runfolder.METRICS, "a") as f:
        f.write('{"type": "step", "st')
    runfolder.truncate_metrics(run, 3)
    assert [(r["type"], r["step"]) for r in runfolder.read_metrics(run)[0]] == [("step", 1), ("eval", 2), ("step", 3)]
    assert (run / runfolder.METRICS).read_text().endswith("\n")
    runfolder.truncate_metrics(run, 0)
    assert (run / runfolder.METRICS).read_bytes() == b""
    runfolder.truncate_metrics(run.parent / "no-such-run", 3)  # nothing written yet: nothing to cut


def test_status_and_config_round_trip_and_unreadable_ones_read_as_absent(run):
    assert runfolder.read_status(run) is None and runfolder.read_config(run) == {}
    assert not runfolder.is_run_dir(run)
    runfolder.write_status(run, {"run_id": run.name, "state": "running", "eta_s": float("inf")})
    assert runfolder.read_status(run) == {"run_id": run.name, "state": "running", "eta_s": None}
    assert runfolder.is_run_dir(run)
    runfolder.write_config(run, {"lr": 1e-5})
    assert runfolder.read_config(run) == {"lr": 1e-5}
    (run / runfolder.STATUS).write_text('{"run_id": "r1", "sta')  # not what the trainer writes, but never fatal
    (run / runfolder.CONFIG).write_text("[1, 2]")
    assert runfolder.read_status(run) is None and runfolder.read_config(run) == {}


def test_new_run_dir_is_named_after_the_time_and_a_safe_form_of_the_name(run):
    root = run.parent
    d = runfolder.new_run_dir("my run/../x", root)
    assert d.parent == root and d.name[:15].replace("-", "").isdigit() and d.name.endswith("-my-run----x")
    d.mkdir()
    again = runfolder.new_run_dir("my run/../x", root)
    assert again != d and again.parent == root  # the same second: numbered, never the same folder
    assert runfolder.new_run_dir("").name.endswith("-run") and runfolder.new_run_dir("x").parent == root


def test_the_lock_lives_beside_the_runs_and_a_dead_owners_lock_is_taken_over(run):
    assert runfolder.lock_path() == run.parent / runfolder.LOCK
    assert runfolder.lock_owner() is None
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runfolder.acquire_lock(run.parent / "other", pid=holder.pid)
        assert runfolder.lock_owner() == {"pid": holder.pid, "run_id": "other"}
        with pytest.raises(runfolder.LockHeld, match="run other"):
            runfolder.acquire_lock(run)
    finally:
        holder.kill()
        holder.wait()
    runfolder.acquire_lock(run)  # its owner is gone: stale
    assert runfolder.lock_owner() == {"pid": os.getpid(), "run_id": run.name}
    runfolder.release_lock(run)
    assert not runfolder.lock_path().exists()
