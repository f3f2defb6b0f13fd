"""The one-training-per-machine lock: a file holding the owner's PID, taken over when stale."""
from __future__ import annotations

import json
import os
from pathlib import Path


class LockHeld(Exception):
    def __init__(self, owner: dict):
        self.owner = owner
        super().__init__(f"another training is running: run {owner.get('run_id')} (pid {owner.get('pid')})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) holds nothing any more
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_lock(path: str | Path) -> dict | None:
    """The live owner of the lock, or None when it is free or stale."""
    try:
        owner = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    pid = owner.get("pid") if isinstance(owner, dict) else None
    return owner if isinstance(pid, int) and pid_alive(pid) else None


def acquire(path: str | Path, run_id: str, pid: int | None = None) -> None:
    """Take the lock for `run_id`, or raise LockHeld naming the live owner."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": pid or os.getpid(), "run_id": run_id}
    for _ in range(3):
        try:  # O_EXCL: of two starters racing, exactly one creates the file
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = read_lock(path)
            if owner is not None and owner.get("pid") != me["pid"]:
                raise LockHeld(owner)
            # stale (dead owner) or torn: remove and retry the exclusive create
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        return
    raise LockHeld(read_lock(path) or {"pid": None, "run_id": "unknown"})


def release(path: str | Path, pid: int | None = None) -> None:
    path = Path(path)
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if owner.get("pid") == (pid or os.getpid()):
        path.unlink(missing_ok=True)
