"""The run folder (docs/run-folder.md): the one contract between the trainer, which writes it, and
the studio and scripts, which read it. Its file names and the reading and writing of its files
live here only, so a reader and the writer cannot drift apart.

Readers are tolerant on purpose: the trainer is another process and may be mid-write (a torn last
line of metrics.jsonl) or may have died before writing at all.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import lock
from .io import atomic_write_bytes, atomic_write_json, finite

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
LOG = "train.log"  # the trainer's stdout and stderr when the studio started it
BEST, LAST = "best", "last"  # checkpoint folders
# where a save moves the previous last/ while the new one goes in (mtbert/checkpoint.py): after a
# crash between its two renames, the state to resume from is there
LAST_ASIDE = f".{LAST}.old"
STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"  # in last/
LOCK = ".lock"  # beside the run folders, not in one: one training per machine

LockHeld = lock.LockHeld


def runs_dir() -> Path:
    """Where runs live: $MTBERT_RUNS_DIR, else ./runs."""
    return Path(os.environ.get("MTBERT_RUNS_DIR") or "runs").absolute()


def new_run_dir(name: str, root: Path | None = None) -> Path:
    """A fresh run folder's path (not created): `<root>/<YYYYmmdd-HHMMSS>-<name>`."""
    root = root or runs_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "run"
    d, i = root / f"{stamp}-{safe}", 1
    while d.exists():
        d, i = root / f"{stamp}-{safe}-{i}", i + 1
    return d


def is_run_dir(path) -> bool:
    """A folder a trainer (or the studio, starting one) has written its config or status into."""
    path = Path(path)
    return (path / CONFIG).is_file() or (path / STATUS).is_file()


# ---- the one-training lock --------------------------------------------------------------------

def lock_path(root: Path | None = None) -> Path:
    """The lock of the runs under `root` (default: runs_dir())."""
    return (root or runs_dir()) / LOCK


def lock_owner(root: Path | None = None) -> dict | None:
    """{"pid", "run_id"} of the live training under `root`, or None (a dead owner's lock is stale)."""
    return lock.read_lock(lock_path(root))


def acquire_lock(run_dir, pid: int | None = None) -> None:
    """Take the lock beside `run_dir` for it (for process `pid`, default this one), or raise LockHeld."""
    run_dir = Path(run_dir)
    lock.acquire(lock_path(run_dir.parent), run_dir.name, pid=pid)


def release_lock(run_dir) -> None:
    lock.release(lock_path(Path(run_dir).parent))


# ---- config.json and status.json ----------------------------------------------------------------

def read_json(path, default=None):
    """A JSON file's content, or `default` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return default


def read_config(run_dir) -> dict:
    config = read_json(Path(run_dir) / CONFIG)
    return config if isinstance(config, dict) else {}


def write_config(run_dir, config: dict) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, config)


def read_status(run_dir) -> dict | None:
    """status.json as the trainer last wrote it, or None when there is none (yet) or it is not a status."""
    status = read_json(Path(run_dir) / STATUS)
    return status if isinstance(status, dict) else None


def write_status(run_dir, status: dict) -> None:
    """Atomically: a reader sees the previous status or this one, never half of one."""
    atomic_write_json(Path(run_dir) / STATUS, status)


# ---- metrics.jsonl ------------------------------------------------------------------------------

class MetricsWriter:
    """Appends records to a run's metrics.jsonl, flushed per record so that readers can tail it."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / METRICS
        self._f = open(self.path, "a", encoding="utf-8")
        # a crash can leave a torn last line; start ours on a fresh line so it stays readable
        if self._f.tell() > 0:
            with open(self.path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    self._f.write("\n")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(finite(record)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _records(lines) -> list[tuple[bytes, dict]]:
    """(line, record) for each line that holds a JSON object; any other line is skipped."""
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append((line, rec))
    return out


def read_metrics(run_dir, since_offset: int = 0) -> tuple[list[dict], int]:
    """Records of metrics.jsonl from byte `since_offset` on, and the offset to continue from.

    Only whole lines count: a torn last line (the trainer is mid-write) is left for the next call.
    A complete line that is not JSON is skipped rather than failing the reader."""
    try:
        with open(Path(run_dir) / METRICS, "rb") as f:
            f.seek(since_offset)
            data = f.read()
    except OSError:
        return [], since_offset
    end = data.rfind(b"\n") + 1  # 0 when there is no complete line yet
    return [rec for _, rec in _records(data[:end].splitlines())], since_offset + end


@dataclass
class MetricsTail:
    """All records of one run so far, read incrementally: each update parses only new lines."""
    run_dir: Path
    records: list = field(default_factory=list)
    offset: int = 0
    _file: tuple | None = None  # (inode, device) of the file read so far

    def update(self) -> list[dict]:
        try:
            st = (Path(self.run_dir) / METRICS).stat()
            file, size = (st.st_ino, st.st_dev), st.st_size
        except OSError:
            file, size = None, 0
        if file != self._file or size < self.offset:
            # a resume rewrites the file (dropping steps after the saved state): start over
            self.records, self.offset, self._file = [], 0, file
        new, self.offset = read_metrics(self.run_dir, self.offset)
        self.records.extend(new)
        return new


def truncate_metrics(run_dir, step: int) -> None:
    """Drop records written after the saved state `step` (a kill between a step and its save) and
    torn lines: a resumed run appends to what the state it starts from had seen."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    keep = [line for line, rec in _records(path.read_bytes().splitlines()) if rec.get("step", 0) <= step]
    atomic_write_bytes(path, b"\n".join(keep) + b"\n" if keep else b"")
