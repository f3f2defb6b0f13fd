"""The CS224N leaderboard files (`python -m mtbert submit` and the Runs page's button): the starter
code's exact bytes, the ids in input order, `mtbert predict`'s predictions, `mtbert evaluate`'s dev
scores, the zip of prepare_submit.py, and a missing split skipped with the fetch command."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from streamlit.testing.v1 import AppTest

from mtbert import cli
from mtbert.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from mtbert.config import TrainConfig
from mtbert.data import DataError, read_task_file
from mtbert.evaluate import evaluate
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.submit import SubmitError, checkpoint_tasks, submit_checkpoint, targets, write_submission
from shared_data import CS224N, needs_shared

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHIPPED = REPO / "checkpoints" / "minilm-l6-heads"

# the starter code's names (multitask_classifier.py get_args) and header lines (evaluation.py
# test_model_multitask), written out here as the specification the files must meet
STARTER = {  # (task, split): (input file, output file)
    ("sst", "dev"): ("ids-sst-dev.csv", "sst-dev-output.csv"),
    ("sst", "test"): ("ids-sst-test-student.csv", "sst-test-output.csv"),
    ("para", "dev"): ("quora-dev.csv", "para-dev-output.csv"),
    ("para", "test"): ("quora-test-student.csv", "para-test-output.csv"),
    ("sts", "dev"): ("sts-dev.csv", "sts-dev-output.csv"),
    ("sts", "test"): ("sts-test-student.csv", "sts-test-output.csv"),
}
HEADERS = {"sst": b"id \t Predicted_Sentiment \n", "para": b"id \t Predicted_Is_Paraphrase \n",
           "sts": b"id \t Predicted_Similiary \n"}
LABEL = {"sst": "sentiment", "para": "is_duplicate", "sts": "similarity"}


def starter_row(p, s) -> str:
    """The starter's row, verbatim: `s` is the numpy scalar its model outputs."""
    return f"{p} , {s} \n"


def starter_value(task: str, prediction: float):
    """The numpy scalar the starter would hold for this prediction: argmax (int64), a rounded
    sigmoid (float32), a similarity (float32)."""
    return np.int64(prediction) if task == "sst" else np.float32(prediction)


def read_back(path: Path) -> tuple[bytes, list[tuple[str, str]]]:
    """(header line, [(id, prediction)]) read the way the format implies: split on ',', strip."""
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    lines = body.decode("utf-8").split("\n")
    assert lines[-1] == "", f"{path.name} does not end in a newline"
    return header + b"\n", [tuple(x.strip() for x in line.split(",")) for line in lines[:-1]]


def input_rows(path: Path) -> list[dict]:
    """The input file through the csv module alone (the sample has no malformed rows)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def mtbert(*args, cwd=REPO) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "mtbert", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def scores_from_files(out_dir: Path, data_dir: Path) -> dict:
    """The dev scores recomputed from the written files and the labels of the input files."""
    m = {}
    for task in ("sst", "para", "sts"):
        source, written = STARTER[(task, "dev")]
        _, rows = read_back(out_dir / written)
        labels = {r["id"].strip().lower(): float(r[LABEL[task]]) for r in input_rows(data_dir / source)}
        pred = np.array([float(v) for _, v in rows])
        gold = np.array([labels[i] for i, _ in rows])
        if task == "sts":
            m["sts_corr"], m["sts_spearman"] = float(pearsonr(pred, gold)[0]), float(spearmanr(pred, gold)[0])
        else:
            m[f"{task}_acc"] = float((pred == gold).mean())
    m["average"] = float(np.mean([m["para_acc"], m["sst_acc"], m["sts_corr"]]))
    return m


# ---- the CLI on the shipped checkpoint and the shipped sample ---------------------------------

@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> dict:
    """`mtbert submit --zip`, `mtbert predict` on each of the six inputs, `mtbert evaluate`: real processes."""
    tmp = tmp_path_factory.mktemp("submit")
    out = tmp / "predictions"
    run = mtbert("submit", "--checkpoint", SHIPPED, "--data-dir", SAMPLE, "--out", out, "--zip")
    predicted = {}
    for (task, split), (source, _) in STARTER.items():
        csv_out = tmp / f"predict-{task}-{split}.csv"
        mtbert("predict", "--checkpoint", SHIPPED, "--task", task, "--input", SAMPLE / source, "--output", csv_out)
        with open(csv_out, newline="") as f:
            predicted[(task, split)] = [(r["id"], r["prediction"]) for r in csv.DictReader(f)]
    ev = mtbert("evaluate", "--checkpoint", SHIPPED, "--data-dir", SAMPLE, "--split", "dev")
    return {"tmp": tmp, "out": out, "run": run, "predicted": predicted, "evaluate": ev.stdout}


slow = pytest.mark.slow


@slow
def test_six_files_with_the_starters_header_and_row_bytes(submitted):
    out = submitted["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(name for _, name in STARTER.values())
    for (task, split), (_, name) in STARTER.items():
        data = (out / name).read_bytes()
        assert data.startswith(HEADERS[task]), (name, data[:40])
        ids, preds = zip(*submitted["predicted"][(task, split)])
        first_row = data[len(HEADERS[task]):].split(b"\n", 1)[0] + b"\n"
        if task == "sts":  # the starter writes the float32 score in full; `predict` rounds it to 4 decimals
            _, rows = read_back(out / name)
            value = np.float32(rows[0][1])
            assert first_row == starter_row(ids[0], value).encode()
            assert round(float(rows[0][1]), 4) == float(preds[0])
        else:
            assert first_row == starter_row(ids[0], starter_value(task, float(preds[0]))).encode()
    assert (out / "para-dev-output.csv").read_bytes().split(b"\n")[1].endswith((b" , 0.0 ", b" , 1.0 "))


@slow
def test_ids_in_the_order_of_each_input_file(submitted):
    for (task, split), (source, name) in STARTER.items():
        _, rows = read_back(submitted["out"] / name)
        expected = [r["id"].strip().lower() for r in input_rows(SAMPLE / source)]
        assert [i for i, _ in rows] == expected, name
        assert len(expected) > 50


@slow
def test_read_back_they_are_mtbert_predicts_predictions(submitted):
    for (task, split), (_, name) in STARTER.items():
        header, rows = read_back(submitted["out"] / name)
        predicted = submitted["predicted"][(task, split)]
        assert [i for i, _ in rows] == [i for i, _ in predicted]
        if task == "sts":  # `predict` rounds to 4 decimals; the two processes batch the pairs differently,
            # which moves a float32 score in its 8th digit and can flip a rounding right at a half
            assert all(abs(float(v) - float(p)) <= 0.5e-4 + 1e-6 for (_, v), (_, p) in zip(rows, predicted))
        else:
            assert [float(v) for _, v in rows] == [float(p) for _, p in predicted]
        # and every line is what the starter's own f-string makes of that prediction
        lines = (submitted["out"] / name).read_bytes()[len(header):].decode().splitlines(keepends=True)
        assert lines == [starter_row(i, starter_value(task, float(v))) for i, v in rows]
    para = [float(v) for _, v in read_back(submitted["out"] / "para-dev-output.csv")[1]]
    assert set(para) == {0.0, 1.0}  # the shipped checkpoint says both


@slow
def test_dev_scores_from_the_files_are_mtbert_evaluates(submitted):
    from mtbert.report import seed_table
    recomputed = scores_from_files(submitted["out"], SAMPLE)
    table = seed_table({"Dev": recomputed}) + f"\n\nSTS Spearman: {recomputed['sts_spearman']:.3f}"
    assert table in submitted["evaluate"]
    assert table in submitted["run"].stdout  # what submit prints is the same table


@slow
def test_dev_scores_from_the_files_equal_evaluate_exactly(tmp_path):
    """In one process, on one model: not merely equal to three decimals."""
    model, tok, meta = load_checkpoint(SHIPPED)
    sub = write_submission(model, tok, SAMPLE, tmp_path, checkpoint_tasks(meta))
    data = {t: read_task_file(t, SAMPLE / STARTER[(t, "dev")][0])[0] for t in ("sst", "para", "sts")}
    expected = evaluate(model, tok, data)
    assert scores_from_files(tmp_path, SAMPLE) == expected
    assert sub.dev == expected


@slow
def test_zip_has_the_layout_of_prepare_submit(submitted):
    archive = submitted["tmp"] / "cs224n_default_final_project_submission.zip"  # beside predictions/
    assert f"submission zip: {archive}" in submitted["run"].stderr
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        assert sorted(i.filename for i in infos) == sorted(f"predictions/{n}" for _, n in STARTER.values())
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}  # prepare_submit.py's ZipFile default
        for i in infos:
            assert z.read(i) == (submitted["out"] / Path(i.filename).name).read_bytes()


# ---- skipped splits, a checkpoint's own tasks, errors (a tiny model) ----------------------------

@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_base) -> Path:
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(0)
    return save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, tmp_path / "tiny", base=str(tiny_base))


def sample_without(tmp_path: Path, missing: str) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for source, _ in STARTER.values():
        if source != missing:
            (d / source).write_bytes((SAMPLE / source).read_bytes())
    return d


def test_a_missing_split_is_skipped_naming_the_file_and_the_fetch_command(tmp_path, tiny_checkpoint, capsys):
    data = sample_without(tmp_path, "quora-test-student.csv")
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "para-test-output.csv").write_text("from another checkpoint\n")
    assert cli.main(["submit", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(data),
                     "--out", str(out), "--zip"]) == 0
    err = capsys.readouterr().err
    assert (f"skipped para-test-output.csv: {data / 'quora-test-student.csv'}: no such file "
            f"(test-student data for task para); fetch the official CS224N files with "
            f"`python -m mtbert data fetch --dest {data}`") in err
    written = sorted(n for (t, s), (_, n) in STARTER.items() if (t, s) != ("para", "test"))
    assert sorted(p.name for p in out.iterdir()) == written  # the stale file went too, and said so
    assert f"removed {out / 'para-test-output.csv'}" in err
    with zipfile.ZipFile(tmp_path / "cs224n_default_final_project_submission.zip") as z:
        assert sorted(z.namelist()) == [f"predictions/{n}" for n in written]


@needs_shared
def test_the_full_data_lacks_the_quora_test_file_and_says_so():
    present, skipped = targets(CS224N)
    assert [(t.task, t.split) for t in present] == [("sst", "dev"), ("sst", "test-student"), ("para", "dev"),
                                                    ("sts", "dev"), ("sts", "test-student")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped para-test-output.csv: ")
    assert "quora-test-student.csv: no such file" in skipped[0] and "python -m mtbert data fetch" in skipped[0]


def test_only_the_tasks_the_checkpoint_was_trained_on(tmp_path, tiny_base):
    encoder, tok = load_encoder(tiny_base, max_length=32)
    folder = save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, tmp_path / "sst-sts", base=str(tiny_base),
                             extra={"train_config": TrainConfig(tasks=["sts", "sst"]).to_dict()})
    sub = submit_checkpoint(folder, SAMPLE, tmp_path / "predictions")
    assert [p.name for p in sub.written] == ["sst-dev-output.csv", "sst-test-output.csv",
                                             "sts-dev-output.csv", "sts-test-output.csv"]
    assert "para_acc" not in sub.dev and sub.table().splitlines()[2].startswith("| Dev | – | ")
    assert sub.dev["average"] == pytest.approx((sub.dev["sst_acc"] + sub.dev["sts_corr"]) / 2)


def test_no_data_at_all_is_refused_with_the_reason(tmp_path, tiny_checkpoint, capsys):
    assert cli.main(["submit", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(tmp_path / "nowhere")]) == 1
    assert f"error: {tmp_path / 'nowhere'}: not a folder of CS224N files" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["submit", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(empty),
                     "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "error: no input file for any leaderboard file" in err and err.count("python -m mtbert data fetch") == 6
    assert not (tmp_path / "p").exists()
    with pytest.raises(DataError):
        targets(tmp_path / "nowhere")
    with pytest.raises(SubmitError):
        submit_checkpoint(tiny_checkpoint, empty, tmp_path / "p")


# ---- the Runs page ----------------------------------------------------------------------------

@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)  # nothing the page writes may land in the repository
    return tmp_path / "runs"


def run_with_best(runs_dir: Path, name: str, tiny_base: Path | None) -> Path:
    d = runs_dir / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(TrainConfig(name=name).to_dict()))
    (d / "status.json").write_text(json.dumps({"run_id": name, "state": "finished", "pid": None}))
    (d / "metrics.jsonl").write_text("")
    if tiny_base is not None:
        encoder, tok = load_encoder(tiny_base, max_length=32)
        save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, d / "best", base=str(tiny_base))
    return d


@pytest.fixture
def downloads(monkeypatch) -> list[dict]:
    """What the page hands Streamlit's media store for download (AppTest keeps no bytes of it)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    offered, store = [], MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        offered.append({"data": path_or_data, "mimetype": mimetype, "filename": filename})
        return store(self, path_or_data, mimetype, kind, filename)
    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return offered


def test_runs_page_button_writes_the_files_and_offers_the_zip(runs_dir, tiny_base, downloads):
    run = run_with_best(runs_dir, "20260102-000000-tiny", tiny_base)
    run_with_best(runs_dir, "20260103-000000-early", None)  # no best/ yet: not offered
    at = AppTest.from_file(str(REPO / "app_pages" / "3_Runs.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="leaderboard_run").options == ["20260102-000000-tiny"]
    assert at.selectbox(key="leaderboard_data").value == "shipped sample"
    assert not at.get("download_button")
    next(b for b in at.button if b.label == "Leaderboard files").click().run()
    assert not at.exception, [e.value for e in at.exception]
    written = sorted(p.name for p in (run / "predictions").iterdir())
    assert written == sorted(n for _, n in STARTER.values())
    for (task, _), (_, name) in STARTER.items():
        assert (run / "predictions" / name).read_bytes().startswith(HEADERS[task])
    assert any("6 files" in s.value for s in at.success)
    assert any("| Dev |" in m.value for m in at.markdown)  # the dev table of what was written
    (download,) = at.get("download_button")
    assert download.proto.label == "Download the submission zip" and download.proto.url
    archive = run / "cs224n_default_final_project_submission.zip"
    assert downloads[-1] == {"data": archive.read_bytes(), "mimetype": "application/zip",
                             "filename": archive.name}
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == [f"predictions/{n}" for n in written]
        assert z.read("predictions/sst-dev-output.csv") == (run / "predictions" / "sst-dev-output.csv").read_bytes()


def test_runs_page_button_reports_a_missing_split(runs_dir, tiny_base, monkeypatch, tmp_path):
    from mtbert.studio import environment
    data = sample_without(tmp_path, "sts-test-student.csv")
    monkeypatch.setattr(environment, "data_folders", lambda: {"the test data": data})
    run = run_with_best(runs_dir, "20260102-000000-tiny", tiny_base)
    at = AppTest.from_file(str(REPO / "app_pages" / "3_Runs.py"), default_timeout=120).run()
    next(b for b in at.button if b.label == "Leaderboard files").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("sts-test-student.csv: no such file" in w.value and "python -m mtbert data fetch" in w.value
               for w in at.warning)
    assert not (run / "predictions" / "sts-test-output.csv").exists()
    assert len(at.get("download_button")) == 1
