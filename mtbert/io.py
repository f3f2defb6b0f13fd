"""Crash-safe file writes shared by the trainer and the checkpoint code."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    # tempfile makes owner-only files and folders (0600, 0700); what we keep should have the modes
    # any other file of the user gets. Read once, at import: setting it back and forth later could
    # race with another thread's file creation.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()
FILE_MODE, DIR_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_file_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """An open temporary file in `path`'s folder (so renaming it onto `path` is atomic), with the
    user's usual file mode instead of mkstemp's owner-only 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Temporary file, fsync, rename: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_path(path.parent)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(finite(obj), indent=2, sort_keys=True) + "\n").encode())


def finite(obj):
    """NaN/inf become null: strict JSON, readable by any client."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def read_document(path: str | Path, what: str, error=ValueError, always_yaml: bool = False):
    """A YAML (.yaml/.yml, or any file with always_yaml) or JSON file, parsed; a file that cannot be
    read or parsed raises `error` naming `what` and the path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    as_yaml = always_yaml or path.suffix in (".yaml", ".yml")
    try:
        if as_yaml:
            import yaml
            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{what} {path}: not valid {'YAML' if as_yaml else 'JSON'} ({first})") from None
