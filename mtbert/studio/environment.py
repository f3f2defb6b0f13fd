"""What this installation offers: the device, the base models that load, the data folders, and
the CS224N files a run on one of them would read."""
from __future__ import annotations

import os
from pathlib import Path

from .. import runfolder

ROOT = Path(__file__).resolve().parents[2]  # the studio's folder: app.py, checkpoints/, data/
BASE_MODELS = ("minilm-l6",)  # offered by name: their weights are packaged, so they load offline


def machine() -> dict:
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
