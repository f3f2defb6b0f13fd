"""Tasks as data: definitions and their checks, files in other formats, a fourth and fifth task through
train -> checkpoint -> reload -> predict CLI -> model card, and the built-in trio unchanged (the losses
of short recipe runs and the predictions of old-layout checkpoints equal references kept from the code
with three fixed heads)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from mtbert.checkpoint import load_checkpoint
from mtbert.config import TrainConfig
from mtbert.data import DataError, Example, load_split, make_batch, read_task_file
from mtbert.evaluate import predict_raw, task_metrics
from mtbert.tasks import TaskError, TaskSpec, available_tasks, builtin_tasks, read_tasks_file
from mtbert.train import Trainer
from shared_data import DATA, needs_shared

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFS = json.loads((FIXTURES / "references.json").read_text())

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "a", "film", "plot", "story", "actors", "very"]


# ---- a fourth and a fifth task, in formats unlike CS224N's ----------------------------------

def write_own_tasks(folder: Path, n: int = 48) -> Path:
    """A JSONL single-sentence regression (`rating`, 1..10) and a comma-separated 3-class pair
    classification with label names and other column names (`nli`); returns the task file."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        with open(folder / f"rating-{split}.jsonl", "w") as f:
            for i in range(n):
                text = " ".join(rng.choice(WORDS, size=5))
                score = 1 + 9 * sum(w in ("good", "great", "fine") for w in text.split()) / 5
                f.write(json.dumps({"review": text, "stars": round(score, 2), "uid": f"r{i}"}) + "\n")
        with open(folder / f"nli-{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["premise", "hypothesis", "gold"])
            for i in range(n):
                a, b = " ".join(rng.choice(WORDS, size=4)), " ".join(rng.choice(WORDS, size=4))
                w.writerow([a, b, ["entailment", "neutral", "contradiction"][i % 3]])
    spec = folder / "tasks.yaml"
    spec.write_text(f"""
builtin: true
tasks:
  - name: rating
    title: Review rating
    input: sentence
    kind: regression
    range: [1, 10]
    data_dir: {folder}
    files: {{train: rating-train.jsonl, dev: rating-dev.jsonl}}
    format: jsonl
    text_columns: [review]
    label_column: stars
    id_column: uid
    head: linear
    loss: mse
    metrics: [pearson, spearman]
    main_metric: spearman
  - name: nli
    title: Entailment
    input: pair
    kind: classification
    classes: 3
    label_names: [entailment, neutral, contradiction]
    data_dir: {folder}
    files: {{train: nli-train.csv, dev: nli-dev.csv, test: nli-dev.csv}}
    delimiter: ","
    text_columns: [premise, hypothesis]
    label_column: gold
    head: concat_diff_prod
    loss: ce
    metrics: [accuracy, macro_f1]
    main_metric: macro_f1
""")
    return spec


def test_own_tasks_read_in_their_formats(tmp_path):
    specs, keep = read_tasks_file(write_own_tasks(tmp_path))
    assert keep and [s.name for s in specs] == ["rating", "nli"]
    rating, nli = specs
    ex, rep = read_task_file(rating, rating.file("train", None))
    assert rep.usable == rep.rows == 48 and ex[0].id == "r0" and ex[0].text_b is None
    assert all(1.0 <= e.label <= 10.0 for e in ex)
    ex, rep = read_task_file(nli, nli.file("dev", None))
    assert rep.usable == 48 and [e.label for e in ex[:3]] == [0, 1, 2]  # label names read as their index
    assert ex[0].id == "2"  # no id column: the line number
    b = make_batch(nli, ex[:4], _tok())
    assert set(b) >= {"a", "b"} and b["labels"].dtype == torch.long


def _tok():
    from mtbert.checkpoint import resolve_base
    from mtbert.tokenizer import Tokenizer
    return Tokenizer.from_folder(resolve_base("minilm-l6"), 32)


@pytest.fixture(scope="module")
def five(tiny_base, tmp_path_factory) -> dict:
    """A finished run on the trio plus the two tasks above (tiny model), in a runs folder of its own."""
    tmp = tmp_path_factory.mktemp("five")
    tasks_file = write_own_tasks(tmp / "own")
    cfg = TrainConfig(base_model=str(tiny_base), tasks_file=str(tasks_file), epochs=1, batch_size=8,
                      lr=1e-3, train_subset=16, eval_subset=16, train_eval_subset=8, max_length=32,
                      gradient_method="pcgrad", seed=3)
    run = tmp / "runs" / "20261201-000000-five"
    assert Trainer(cfg, run, progress=False, log=lambda m: None).run() == "finished"
    return {"cfg": cfg, "run": run, "own": tmp / "own", "tasks_file": tasks_file}


def test_fourth_and_fifth_task_train_save_reload_predict_and_card(five, tmp_path):
    cfg, run, tasks_file = five["cfg"], five["run"], five["tasks_file"]
    assert cfg.tasks == ["sst", "para", "sts", "rating", "nli"]
    saved = json.loads((run / "config.json").read_text())
    assert [d["name"] for d in saved["task_definitions"]] == cfg.tasks  # the run keeps the definitions
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in recs if r["type"] == "step")
    assert set(step["loss"]) == set(cfg.tasks)
    assert len(step["cos"]) == 10  # every pair of five tasks
    ev = next(r for r in recs if r["type"] == "eval")
    assert {"rating_corr", "rating_spearman", "nli_acc", "nli_macro_f1"} <= set(ev)
    assert ev["average"] == pytest.approx(np.mean([ev[k] for k in ("sst_acc", "para_acc", "sts_corr",
                                                                    "rating_spearman", "nli_macro_f1")]))

    # the checkpoint loads without the task file
    moved = tasks_file.rename(tmp_path / "gone.yaml")
    try:
        model, tok, meta = load_checkpoint(run / "best")
    finally:
        moved.rename(tasks_file)
    assert model.cfg.names == cfg.tasks and model.cfg.task("nli").label_names == ("entailment", "neutral",
                                                                                     "contradiction")
    own = five["own"]
    ex, _ = read_task_file(model.cfg.task("rating"), own / "rating-dev.jsonl")
    raw = predict_raw(model, tok, "rating", ex)
    assert raw.shape == (48,) and ((raw >= 1) & (raw <= 10)).all()
    m = task_metrics(model.cfg.task("rating"), raw, ex)
    assert m["rating_spearman"] == pytest.approx(spearmanr(raw, [e.label for e in ex])[0])
    assert m["rating_corr"] == pytest.approx(pearsonr(raw, [e.label for e in ex])[0])

    out = tmp_path / "nli.csv"
    r = subprocess.run([sys.executable, "-m", "mtbert", "predict", "--checkpoint", str(run / "best"), "--task",
                        "nli", "--input", str(own / "nli-dev.csv"), "--output", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    nli_raw = predict_raw(model, tok, "nli", read_task_file(model.cfg.task("nli"), own / "nli-dev.csv")[0])
    assert [int(x["prediction"]) for x in rows] == nli_raw.argmax(-1).tolist()
    r = subprocess.run([sys.executable, "-m", "mtbert", "evaluate", "--checkpoint", str(run / "best"),
                        "--task", "rating", "--task", "nli"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "Review rating Spearman" in r.stdout and "Entailment macro-F1" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mtbert", "predict", "--checkpoint", str(run / "best"), "--task",
                        "qqp", "--input", str(own / "nli-dev.csv"), "--output", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "this checkpoint's tasks: sst, para, sts, rating, nli" in r.stderr

    from mtbert.hub import model_card
    card = str(model_card(run / "best", "me/five"))
    assert "| Entailment (`nli`) | pair | 3 classes: entailment, neutral, contradiction | concat_diff_prod | ce |" in card
    assert "Review rating Spearman" in card and "Entailment macro-F1" in card


def test_playground_shows_a_panel_per_task_and_each_answers(five, monkeypatch):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(five["run"].parent))
    at = AppTest.from_file(str(REPO / "app_pages" / "2_Playground.py"), default_timeout=60).run()
    box = at.selectbox(key="ckpt_a")
    box.select_index(next(i for i, o in enumerate(box.options) if o.startswith(five["run"].name))).run()
    assert not at.exception, [e.value for e in at.exception]
    headings = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert headings == ["#### SST", "#### Paraphrase", "#### STS", "#### Review rating", "#### Entailment"]
    at.text_area(key="rating_text").set_value("a great film, very good")
    at.button(key="rating_go").click().run()
    at.text_input(key="nli_a").set_value("a good film")
    at.text_input(key="nli_b").set_value("a dull plot")
    at.button(key="nli_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    score = float(metrics["Review rating (1–10)"])
    model, tok, _ = load_checkpoint(five["run"] / "best")
    from mtbert.evaluate import predict_text
    assert score == pytest.approx(predict_text(model, tok, "rating", "a great film, very good")["value"], abs=0.005)
    want = predict_text(model, tok, "nli", "a good film", "a dull plot")["top"]
    assert metrics[f"Predicted · {five['run'].name}/best"] == want
    assert want in ("entailment", "neutral", "contradiction")


def test_gradio_app_answers_every_task_of_the_checkpoint(five, monkeypatch):
    import socket
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(five["run"].parent))
    import gradio_app
    from gradio_client import Client
    ref = f"{five['run'].name}/best"
    app = gradio_app.build_app([c for c in gradio_app.checkpoint_choices() if c.name == ref])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        listed = client.predict(ref, api_name="/tasks")
        assert [t["name"] for t in listed] == ["sst", "para", "sts", "rating", "nli"]
        assert listed[4]["labels"] == ["entailment", "neutral", "contradiction"] and listed[3]["range"] == [1, 10]
        classes, value, _ = client.predict(ref, "nli", "a good film", "a dull plot", api_name="/predict")
        model, tok, _ = load_checkpoint(five["run"] / "best")
        from mtbert.evaluate import predict_text
        want = predict_text(model, tok, "nli", "a good film", "a dull plot")
        assert classes["label"] == want["top"] and value is None
        _, value, _ = client.predict(ref, "rating", "a great film", "", api_name="/predict")
        assert value == pytest.approx(predict_text(model, tok, "rating", "a great film")["value"], abs=1e-3)
        with pytest.raises(Exception, match="this checkpoint's tasks: sst, para, sts, rating, nli"):
            client.predict(ref, "qqp", "a", "b", api_name="/predict")
    finally:
        app.close()


# ---- definitions: every field checked, with the field and its allowed values ------------------

@pytest.mark.parametrize("change, message", [
    ({"input": "triple"}, "field input='triple' is not allowed; allowed values: sentence, pair"),
    ({"kind": "classification", "classes": 1}, "field classes=1 is not allowed; allowed values: an integer >= 2"),
    ({"label_names": ["a", "b"]}, "field label_names=('a', 'b') is not allowed; allowed values: 3 distinct names"),
    ({"head": "cosine"}, "field head='cosine' is not allowed; allowed values: concat, concat_diff_prod, cross"),
    ({"head": "linear"}, "field head='linear' is not allowed; allowed values: concat, concat_diff_prod, cosine, cross"),
    ({"loss": "bce"}, "field loss='bce' is not allowed; allowed values: ce for more than two classes"),
    ({"loss": "mse"}, "field loss='mse' is not allowed; allowed values: ce, bce"),
    ({"metrics": ["accuracy", "pearson"]}, "field metrics=('accuracy', 'pearson') is not allowed; allowed values: "
                                           "a list of accuracy, macro_f1"),
    ({"main_metric": "f1"}, "field main_metric='f1' is not allowed; allowed values: one of the task's metrics"),
    ({"format": "xlsx"}, "field format='xlsx' is not allowed; allowed values: delimited, jsonl"),
    ({"quoting": "all"}, "field quoting='all' is not allowed; allowed values: minimal, none"),
    ({"delimiter": ";;"}, "field delimiter=';;' is not allowed; allowed values: one character"),
    ({"weight": 0}, "field weight=0 is not allowed; allowed values: a number > 0"),
    ({"files": {"validation": "x.csv"}}, "allowed values: a mapping of train, dev, test to file paths"),
    ({"name": "My Task"}, "task name 'My Task' is not allowed; allowed values: a lower-case letter"),
    ({"kind": "regression", "classes": None, "label_names": None, "loss": "mse", "metrics": ["pearson"],
      "main_metric": "pearson", "range": [5, 1]}, "field range=(5, 1) is not allowed; allowed values: [low, high]"),
])
def test_each_field_is_checked_with_its_name_and_allowed_values(change, message):
    base = dict(name="nli", input="pair", kind="classification", classes=3, label_names=["e", "n", "c"],
                text_columns=["a", "b"], label_column="y", head="concat", loss="ce", metrics=["accuracy"],
                main_metric="accuracy")
    with pytest.raises(TaskError) as e:
        TaskSpec.from_dict({**base, **change})
    assert message in str(e.value)


def test_task_file_errors_name_the_file_and_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [name: x\n  - : :")
    with pytest.raises(TaskError, match=r"bad\.yaml: not valid YAML"):
        read_tasks_file(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("tasks:\n  - {name: sst, classes: 2, label_column: y}\n")
    with pytest.raises(TaskError, match="task name 'sst' is defined twice.*builtin: false"):
        available_tasks(dup)
    dup.write_text("builtin: false\ntasks:\n  - {name: sst, classes: 2, label_column: y}\n"
                   "  - {name: sst, classes: 3, label_column: y}\n")
    with pytest.raises(TaskError, match="task name 'sst' is defined twice"):
        available_tasks(dup)
    dup.write_text("builtin: false\ntasks:\n  - {name: binary, classes: 2, label_column: y}\n")
    assert [s.name for s in available_tasks(dup)] == ["binary"]  # the trio replaced
    odd = tmp_path / "odd.yaml"
    odd.write_text("tasks:\n  - {name: x, classes: 2, colour: red}\n")
    with pytest.raises(TaskError, match=r"odd\.yaml, task 1: task 'x': unknown field\(s\) colour; known fields: name"):
        read_tasks_file(odd)
    with pytest.raises(ValueError, match="setting tasks=\\['sst', 'binary2'\\] is not allowed; choose a non-empty "
                                         "subset of binary"):
        TrainConfig(tasks_file=str(dup), tasks="sst,binary2")


def test_file_errors_name_the_file_line_and_field(tmp_path):
    specs, _ = read_tasks_file(write_own_tasks(tmp_path))
    rating, nli = specs
    missing = tmp_path / "m.csv"
    missing.write_text("premise,gold\nx,neutral\n")
    with pytest.raises(DataError, match=r"m\.csv: no column 'hypothesis' for task nli \(its text_columns\)"):
        read_task_file(nli, missing)  # a pair task whose file has one text column
    nolabel = tmp_path / "n.csv"
    nolabel.write_text("premise,hypothesis\nx,y\n")
    with pytest.raises(DataError, match=r"n\.csv: no column 'gold' for labelled nli data \(its label_column\)"):
        read_task_file(nli, nolabel, labelled=True)
    outside = tmp_path / "o.csv"
    outside.write_text("premise,hypothesis,gold\nx,y,neutral\nx,y,maybe\nx,y,5\nx,y,2\n")
    ex, rep = read_task_file(nli, outside)
    assert [e.label for e in ex] == [1, 2] and rep.skipped == 2
    assert rep.bad_lines == [(3, "non-numeric gold 'maybe' (or one of 'entailment', 'neutral', 'contradiction')"),
                             (4, "gold 5 outside 0..2")]
    jl = tmp_path / "r.jsonl"
    jl.write_text('{"review": "good", "stars": 3, "uid": "a"}\nnot json\n{"review": 4, "stars": 3}\n'
                  '{"review": "bad", "stars": 11, "uid": "b"}\n')
    ex, rep = read_task_file(rating, jl)
    assert len(ex) == 1 and [n for n, _ in rep.bad_lines] == [2, 3, 4]
    assert "stars 11 outside 1..10" in rep.bad_lines[2][1]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        read_task_file(nli, empty)
    # an empty train file stops a run before its first step, naming the file
    (tmp_path / "nli-train.csv").write_text("premise,hypothesis,gold\n")
    cfg = TrainConfig(tasks_file=str(tmp_path / "tasks.yaml"), tasks="nli", max_steps=1)
    run = tmp_path / "runs" / "empty"
    with pytest.raises(Exception, match=r"no usable nli train examples in .*nli-train\.csv"):
        Trainer(cfg, run, progress=False, log=lambda m: None).run()


def test_data_check_reports_every_file_of_every_task(tmp_path):
    tasks_file = write_own_tasks(tmp_path)
    with open(tmp_path / "nli-dev.csv", "a") as f:
        f.write("only,two\n")
    r = subprocess.run([sys.executable, "-m", "mtbert", "data", "check", "--tasks-file", str(tasks_file)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "rating train: rating-train.jsonl: 48 usable of 48 rows" in lines
    assert "nli dev: nli-dev.csv: 48 usable of 49 rows; 1 skipped (line 50: expected 3 fields, found 2 " \
           "(unbalanced quote?))" in lines
    assert any(x.startswith("sst train: ids-sst-train.csv") for x in lines)  # the built-in tasks too
    (tmp_path / "rating-dev.jsonl").unlink()
    r = subprocess.run([sys.executable, "-m", "mtbert", "data", "check", "--tasks-file", str(tasks_file)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "rating-dev.jsonl: no such file (dev data for task rating)" in r.stderr


# ---- the built-in trio, unchanged ------------------------------------------------------------

def test_builtin_definitions_are_the_cs224n_tasks():
    sst, para, sts = builtin_tasks()
    assert (sst.classes, sst.loss, sst.head, sst.main_key) == (5, "ce", "linear", "sst_acc")
    assert (para.loss, para.head, para.main_key, para.binary) == ("bce", "concat", "para_acc", True)
    assert (sts.range, sts.loss, sts.head, sts.main_key) == ((0.0, 5.0), "mse", "cosine", "sts_corr")
    assert sst.files["test"] == "ids-sst-test-student.csv" and para.text_columns == ("sentence1", "sentence2")
    joint = builtin_tasks(pair_encoding="joint", sts_loss="cosine_embedding")
    assert [s.head for s in joint] == ["linear", "cross", "cross"] and joint[2].loss == "mse"


def assert_close(actual, expected, path="") -> None:
    """Equal structure, equal strings and ints, floats equal to float32 rounding: the same arithmetic
    on another CPU (its vector width, its thread count) may round the last bits differently, and
    four training steps carry that on; a real change of behaviour moves the numbers far more."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{path}: {actual} != {expected}"
        for k in expected:
            assert_close(actual[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual} != {expected}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6), f"{path}: {actual} != {expected}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("config", sorted(REFS["losses"]))
def test_short_recipe_runs_give_the_reference_losses(tmp_path, config):
    """The reference is the three-fixed-heads code's (tests/fixtures/make_references.py)."""
    sys.path.insert(0, str(FIXTURES))
    import make_references
    assert_close(make_references.run_losses(config, tmp_path), REFS["losses"][config])


@pytest.mark.parametrize("name", sorted(REFS["predictions"]))
def test_old_layout_checkpoints_load_and_predict_as_before(name):
    folder = REPO / "checkpoints" / "minilm-l6-heads" if name == "shipped" else FIXTURES / "old-checkpoints" / name
    meta = json.loads((folder / "mtbert.json").read_text())
    assert "tasks" not in meta["model"]  # saved before tasks were data
    sys.path.insert(0, str(FIXTURES))
    import make_references
    model, tok, _ = load_checkpoint(folder)
    assert model.cfg.names == ["sst", "para", "sts"]
    assert_close(make_references.predictions(model, tok), REFS["predictions"][name])


@needs_shared
def test_mrpc_example_task_file_reads_the_glue_files(tmp_path):
    specs, keep = read_tasks_file(REPO / "configs" / "tasks" / "cs224n+mrpc.yaml")
    (mrpc,) = specs
    from dataclasses import replace
    mrpc = replace(mrpc, data_dir=str(DATA / "mrpc"))
    loaded = load_split(None, "dev", [mrpc])
    ex, rep = loaded["mrpc"]
    assert keep and rep.rows == rep.usable == 408 and rep.skipped == 0
    assert abs(np.mean([e.label for e in ex]) - 0.68) < 0.01  # 68 % paraphrases
    train, rep = read_task_file(mrpc, mrpc.file("train", None))
    assert rep.usable == 3668 and '"' in "".join(e.text_a for e in train)  # quotes are plain characters
    cfg = TrainConfig.from_file(REPO / "configs" / "minilm-cpu-4tasks.yaml")
    assert cfg.tasks == ["sst", "para", "sts", "mrpc"] and cfg.data_dir == "data/cs224n"


def test_batch_upload_reads_a_file_in_its_tasks_own_format(tmp_path):
    from mtbert.studio import playground as pg
    specs, _ = read_tasks_file(write_own_tasks(tmp_path))
    data = (tmp_path / "rating-dev.jsonl").read_bytes()
    task, examples, report = pg.read_upload(data, "rating", builtin_tasks() + specs)
    assert task == "rating" and len(examples) == 48 and report.path == "uploaded file"
    with pytest.raises(pg.InputError, match="choose the task"):  # no CS224N header to tell it by
        pg.read_upload(data, "auto", builtin_tasks() + specs)
    with pytest.raises(pg.InputError, match="choose one of auto, sst, para, sts, rating, nli"):
        pg.read_upload(data, "qqp", builtin_tasks() + specs)
    with pytest.raises(pg.InputError, match="no column 'premise' for task nli"):
        pg.read_upload(data, "nli", builtin_tasks() + specs)
