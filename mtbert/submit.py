"""The CS224N leaderboard files: a checkpoint's predictions in the starter code's own format.

Names, header lines and rows follow the default final project's starter code
(gpoesia/minbert-default-final-project, `evaluation.py`, `test_model_multitask`; later releases call
it `test_multitask`), byte for byte: `f"id \\t {header} \\n"`, then `f"{id} , {prediction} \\n"` per
example. The zip follows its `prepare_submit.py`. Predictions come from the code path of
`mtbert predict` (`predict_raw`, `to_predictions`), with the checkpoint's stored Quora threshold.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .data import DataError, data_files, missing_file_message, read_task_file
from .tasks import BUILTIN_NAMES as TASKS
from .report import seed_table
from .runfolder import BEST

# the input split (its CS224N file name) -> the name the starter gives it in the output file
OUTPUT_SPLITS = {"dev": "dev", "test-student": "test"}
# the starter's column titles, "Similiary" misspelt as there: the leaderboard reads these files
HEADERS = {"sst": "Predicted_Sentiment", "para": "Predicted_Is_Paraphrase", "sts": "Predicted_Similiary"}
ZIP_NAME = "cs224n_default_final_project_submission.zip"
ZIP_FOLDER = "predictions"  # prepare_submit.py stores each file as ./predictions/<name>
STALE = "an older leaderboard file this checkpoint did not rewrite"


class SubmitError(Exception):
    """Nothing to write: the message says why."""


def output_name(task: str, split: str) -> str:
    return f"{task}-{OUTPUT_SPLITS[split]}-output.csv"


OUTPUT_NAMES = tuple(output_name(t, s) for t in TASKS for s in OUTPUT_SPLITS)


def header_line(task: str) -> str:
    return f"id \t {HEADERS[task]} \n"


def row_line(task: str, ex_id: str, prediction) -> str:
    """One example as the starter writes it. Its values are numpy scalars formatted by an f-string,
    which numpy hands to the Python int/float: a class `3`, a rounded sigmoid `1.0`/`0.0`, and the
    similarity as the full repr of its float32 value. Its reader lower-cases ids, so this does too."""
    value = int(prediction) if task == "sst" else float(prediction)
    return f"{ex_id.lower()} , {value} \n"


def write_file(path: Path, task: str, ids: list[str], predictions) -> None:
    text = header_line(task) + "".join(row_line(task, i, p) for i, p in zip(ids, predictions))
    path.write_bytes(text.encode("utf-8"))  # bytes: "\n" on every platform, as on the starter's Linux


def checkpoint_tasks(meta: dict | None) -> tuple[str, ...]:
    """The tasks a checkpoint was trained on (its train_config), in the usual order; all three
    for one without a record (the plain base model)."""
    trained = ((meta or {}).get("train_config") or {}).get("tasks") or TASKS
    return tuple(t for t in TASKS if t in trained)


@dataclass
class Target:
    task: str
    split: str
    input: Path

    @property
    def name(self) -> str:
        return output_name(self.task, self.split)


def targets(data_dir, tasks=TASKS) -> tuple[list[Target], list[str]]:
    """The files to write for `tasks` from the CS224N files under `data_dir`, and a message for
    each split whose input file is missing (naming it and the command that fetches it)."""
    if not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: not a folder of CS224N files")
    present, skipped = [], []
    for task in tasks:
        for split in OUTPUT_SPLITS:
            path = data_files(data_dir, split)[task]
            if path.is_file():
                present.append(Target(task, split, path))
            else:
                skipped.append(f"skipped {output_name(task, split)}: {missing_file_message(path, split, task)}")
    return present, skipped


@dataclass
class Submission:
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # one message per split not written
    removed: list[Path] = field(default_factory=list)  # older leaderboard files this run did not rewrite
    reports: list[str] = field(default_factory=list)   # what was read from each input file
    dev: dict = field(default_factory=dict)            # the dev metrics of what was written
    zip_path: Path | None = None

    def table(self) -> str:
        return seed_table({"Dev": self.dev})

    def notes(self) -> list[str]:
        """What the user should know beside the files written: the skipped and the removed."""
        return self.skipped + [f"removed {p}: {STALE}" for p in self.removed]


def write_submission(model, tokenizer, data_dir, out_dir, tasks=TASKS, batch_size: int = 64,
                     device="cpu", zip_path=None, log=lambda line: None) -> Submission:
    """Write the leaderboard file of every task in `tasks` and every split present under
    `data_dir` into `out_dir`; with `zip_path`, also the starter's submission zip of them.
    `log` gets a line per input file read and per split skipped, as they happen."""
    from .evaluate import predict_raw, seed_average, task_metrics, to_predictions

    present, skipped = targets(data_dir, tasks)
    if not present:
        raise SubmitError("no input file for any leaderboard file:\n" + "\n".join(skipped))
    for line in skipped:
        log(line)
    out = Submission(Path(out_dir), skipped=skipped)
    out.out_dir.mkdir(parents=True, exist_ok=True)
    for t in present:
        examples, report = read_task_file(t.task, t.input)
        out.reports.append(report.summary())
        log(f"[data] {report.summary()}")
        raw = predict_raw(model, tokenizer, t.task, examples, batch_size, device)
        # the similarity goes out unrounded, as the starter's does; `mtbert predict` rounds it to 4 decimals
        values = raw.tolist() if t.task == "sts" else to_predictions(t.task, raw)
        write_file(out.out_dir / t.name, t.task, [e.id for e in examples], values)
        out.written.append(out.out_dir / t.name)
        if t.split == "dev" and examples and all(e.label is not None for e in examples):
            out.dev.update(task_metrics(t.task, raw, examples))
    out.dev["average"] = seed_average(out.dev)
    # a leftover file from another checkpoint would slip into a submission beside these
    for name in OUTPUT_NAMES:
        stale = out.out_dir / name
        if stale not in out.written and stale.is_file():
            stale.unlink()
            out.removed.append(stale)
            log(f"removed {stale}: {STALE}")
    if zip_path is not None:
        out.zip_path = zip_files(out.written, zip_path)
    return out


def zip_files(paths: list[Path], zip_path) -> Path:
    """The layout of the starter's prepare_submit.py (ZipFile defaults: stored, not compressed),
    holding the prediction files only."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as zz:
        for p in paths:
            zz.write(p, f"{ZIP_FOLDER}/{p.name}")
    return zip_path


def default_zip_path(out_dir) -> Path:
    """Beside the predictions folder, where prepare_submit.py leaves it."""
    return Path(out_dir).absolute().parent / ZIP_NAME


def submit_checkpoint(checkpoint, data_dir, out_dir, zip_path=None, batch_size: int = 64,
                      device="cpu") -> Submission:
    """Load a checkpoint folder and write its leaderboard files (the studio's button)."""
    from .checkpoint import load_checkpoint
    model, tok, meta = load_checkpoint(checkpoint, device)
    return write_submission(model, tok, data_dir, out_dir, checkpoint_tasks(meta), batch_size, device, zip_path)


# ---- the Runs page ------------------------------------------------------------------------

def best_checkpoint(run_dir) -> Path | None:
    best = Path(run_dir) / BEST
    return best if (best / "mtbert.json").is_file() else None


def run_leaderboard_files(run_dir, data_dir, batch_size: int = 64) -> Submission:
    """A run's best checkpoint's leaderboard files, in <run>/predictions/ with the starter's
    submission zip beside them in the run folder."""
    from .checkpoint import CheckpointError

    run_dir = Path(run_dir)
    best = best_checkpoint(run_dir)
    if best is None:
        raise SubmitError(f"{run_dir.name}: no best checkpoint yet (a run writes best/ at its first evaluation)")
    try:
        return submit_checkpoint(best, data_dir, run_dir / ZIP_FOLDER, run_dir / ZIP_NAME, batch_size)
    except (CheckpointError, DataError) as e:  # one kind of failure for the page to show
        raise SubmitError(str(e)) from e
