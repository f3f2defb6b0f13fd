"""The Train page's "Add a task" logic (mtbert/studio/taskform.py), without Streamlit: detecting a
file's format, guessing a definition from its columns, checking it as the trainer reads it, and the
task file it is written to."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mtbert.data import read_task_file
from mtbert.studio import taskform as tf
from mtbert.tasks import TaskSpec, read_tasks_file

MOODS = ("negative", "neutral", "positive")


def write_table(path: Path, rows: list[list], delimiter: str = ",", bom: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        csv.writer(f, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return path


def moods(path: Path, n: int = 30, delimiter: str = ",", bom: bool = False) -> Path:
    """A 3-class sentence task: id, a sentence holding the delimiter's neighbours, a label by name."""
    rows = [["id", "text", "mood"]] + [[f"r{i}", f"Sentence {i}, rather {MOODS[i % 3]}; said \"she\".", MOODS[i % 3]]
                                       for i in range(n)]
    return write_table(path, rows, delimiter, bom)


def scores(path: Path, n: int = 30) -> Path:
    """A JSONL pair regression task with scores between 0.5 and 4.25."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"premise": f"A man plays guitar number {i}.", "hypothesis": f"Someone plays {i}.",
                                "score": 0.5 + (3.75 * i) / (n - 1)}) + "\n")
    return path


def choices(g: dict, train: Path, dev: Path | None, **change) -> dict:
    """build_spec's arguments from a guess, as the page passes them."""
    fields = {k: g[k] for k in ("name", "title", "input", "kind", "format", "delimiter", "quoting", "encoding",
                                "text_columns", "label_column", "id_column", "classes", "label_names", "range",
                                "head", "loss", "metrics", "main_metric", "weight")}
    return tf.build_spec(**{**fields, "train_file": str(train), "dev_file": str(dev) if dev else None, **change})


# ---- detecting the format ------------------------------------------------------------------------

def test_detects_a_tab_file_with_a_byte_order_mark(tmp_path):
    path = moods(tmp_path / "moods.tsv", delimiter="\t", bom=True)
    info = tf.scan(path)
    assert info.reading == tf.Reading("delimited", "\t", "minimal", "utf-8-sig")
    assert info.columns == ["id", "text", "mood"]  # no byte-order mark in front of the first name
    assert info.rows == 30 and len(info.preview) == tf.PREVIEW_ROWS
    assert info.preview[1] == {"id": "r1", "text": 'Sentence 1, rather neutral; said "she".', "mood": "neutral"}
    assert "TAB-separated" in info.reading.describe()


@pytest.mark.parametrize("delimiter, name", [(",", "comma"), (";", "semicolon")])
def test_detects_comma_and_semicolon_files_whose_sentences_hold_the_others(tmp_path, delimiter, name):
    info = tf.scan(moods(tmp_path / "moods.csv", delimiter=delimiter))
    assert info.reading == tf.Reading("delimited", delimiter, "minimal", "utf-8-sig")
    assert info.columns == ["id", "text", "mood"] and info.rows == 30
    assert f"{name}-separated" in info.reading.describe()


def test_detects_jsonl_and_plain_quotes_and_latin1(tmp_path):
    info = tf.scan(scores(tmp_path / "scores.jsonl"))
    assert info.reading.format == "jsonl" and info.columns == ["premise", "hypothesis", "score"]
    # MRPC's kind of file: a sentence that starts with a quote it never closes is text
    rows = [["Quality", "#1 String", "#2 String"]] + [["1", f'"Hello {i}, he said.' if i % 4 == 1 else f"Hi {i}.",
                                                       f"He greeted {i}."] for i in range(10)]
    path = tmp_path / "mrpc.tsv"
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    assert tf.detect(path) == tf.Reading("delimited", "\t", "none", "utf-8-sig")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,text,label\n1,café crème,0\n2,naïve,1\n".encode("latin-1"))
    assert tf.detect(latin).encoding == "latin-1" and tf.scan(latin).preview[0]["text"] == "café crème"


def test_a_file_that_is_no_table_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just one column\nof words\n")
    with pytest.raises(tf.DataError, match="notes.txt: neither JSONL nor a header row"):
        tf.detect(path)


# ---- guessing the definition -----------------------------------------------------------------

def test_guesses_a_three_class_sentence_task_with_label_names(tmp_path):
    g = tf.guess(tf.scan(moods(tmp_path / "moods-train.csv")), taken=("sst", "para", "sts"))
    assert (g["name"], g["input"], g["text_columns"], g["label_column"], g["id_column"]) == \
        ("moods", "sentence", ["text"], "mood", "id")
    assert (g["kind"], g["classes"], g["label_names"]) == ("classification", 3, list(MOODS))
    assert (g["head"], g["loss"], g["metrics"], g["main_metric"]) == ("linear", "ce", ["accuracy", "macro_f1"],
                                                                     "accuracy")


def test_guesses_a_regression_pair_with_its_range(tmp_path):
    g = tf.guess(tf.scan(scores(tmp_path / "scores.jsonl")))
    assert (g["input"], g["text_columns"], g["label_column"], g["id_column"]) == \
        ("pair", ["premise", "hypothesis"], "score", None)
    assert g["kind"] == "regression" and g["range"] == (0.0, 5.0)  # 0.5 … 4.25, to whole numbers
    assert (g["head"], g["loss"], g["metrics"]) == ("cosine", "mse", ["pearson", "spearman"])


def test_label_guesses_classes_by_number_and_two_classes_train_one_logit():
    col = tf.Column("label")
    for v in "0 1 2 1 0".split():
        col.add(v)
    assert tf.guess_label(col) == {"kind": "classification", "classes": 3, "label_names": None, "range": (0.0, 2.0)}
    stars = tf.Column("stars")
    for v in "5 1 3 2 4".split():
        stars.add(v)
    assert tf.guess_label(stars)["label_names"] == ["1", "2", "3", "4", "5"]  # a star is a class by its name
    assert tf.model_defaults("pair", "classification", 2) == {
        "head": "concat_diff_prod", "loss": "bce", "metrics": ["accuracy", "f1"], "main_metric": "accuracy"}
    assert tf.loss_choices("classification", 3, "linear") == ["ce"]
    assert tf.head_choices("pair", "classification") == ["concat", "concat_diff_prod", "cross", "cross_concat"]
    assert tf.suggest_name("2024 Reviews-train", taken=("t_2024_reviews",)) == "t_2024_reviews_2"


# ---- the definition, checked and written --------------------------------------------------------

def test_a_guessed_definition_reads_its_files_and_counts_their_rows(tmp_path):
    train, dev = moods(tmp_path / "moods-train.csv", 40), moods(tmp_path / "moods-dev.csv", 20)
    with open(dev, "a") as f:
        f.write("r99,,neutral\nr100,A sentence,cheerful\n")
    d = choices(tf.guess(tf.scan(train)), train, dev)
    result = tf.check(d, taken=("sst", "para", "sts"))
    assert result.ok, result.problems
    assert result.counts() == [{"file": "train", "rows": 40, "usable": 40, "skipped": 0},
                               {"file": "dev", "rows": 22, "usable": 20, "skipped": 2}]
    assert result.bad_lines() == [
        {"file": "dev", "line": 22, "why": "empty text"},
        {"file": "dev", "line": 23, "why": "non-numeric mood 'cheerful' (or one of 'negative', 'neutral', 'positive')"}]


def test_a_bad_mapping_gives_the_definitions_message(tmp_path):
    train = moods(tmp_path / "moods.csv")
    g = tf.guess(tf.scan(train))
    result = tf.check(choices(g, train, train, loss="bce"))
    assert not result.ok and result.spec is None
    assert result.problems == ["task 'moods': field loss='bce' is not allowed; allowed values: ce for more than "
                               "two classes (bce predicts one probability)"]
    result = tf.check(choices(g, train, train, name="Moods!"))
    assert result.problems[0].startswith("task name 'Moods!' is not allowed; allowed values: a lower-case letter")
    result = tf.check(choices(g, train, train, text_columns=["sentence"]))
    assert not result.ok and "no column 'sentence' for task moods (its text_columns)" in result.problems[0]
    assert tf.check(choices(g, train, train, name="sst"), taken=("sst",)).problems == [
        "task name 'sst' is taken (a built-in task); choose another name"]
    assert "needs a dev file" in tf.check(choices(g, train, None)).problems[0]


def test_the_written_task_file_reads_back_into_equal_definitions(tmp_path):
    train, dev = moods(tmp_path / "moods-train.csv"), moods(tmp_path / "moods-dev.csv")
    pair = scores(tmp_path / "scores.jsonl")
    a = tf.check(choices(tf.guess(tf.scan(train)), train, dev)).spec
    b = tf.check(choices(tf.guess(tf.scan(pair)), pair, pair, title="Entailment score")).spec
    runs = tmp_path / "runs"
    path = tf.write_tasks_file([a.to_dict(), b.to_dict()], runs)
    assert path.parent == runs / tf.TASK_FILES and path.suffix == ".yaml"
    specs, keep = read_tasks_file(path)
    assert keep is True and specs == [a, b]
    assert specs[0].files == {"train": str(train.resolve()), "dev": str(dev.resolve())}  # absolute: read elsewhere
    text = path.read_text()
    assert "label_names: [negative, neutral, positive]" in text and "range" not in text.split("- name: scores")[0]
    # a second file in the same second does not overwrite the first
    assert tf.write_tasks_file([a.to_dict()], runs) != path


def test_the_task_file_refuses_a_name_twice_or_a_built_in_one(tmp_path):
    train = moods(tmp_path / "moods.csv")
    mine = tf.check(choices(tf.guess(tf.scan(train)), train, train)).spec
    with pytest.raises(tf.TaskError, match="task name 'moods' is defined twice"):
        tf.write_tasks_file([mine.to_dict(), mine.to_dict()], tmp_path / "runs")
    with pytest.raises(tf.TaskError, match="task name 'sst' is defined twice"):
        tf.write_tasks_file([{**mine.to_dict(), "name": "sst"}], tmp_path / "runs")
    assert not (tmp_path / "runs" / tf.TASK_FILES).exists()  # refused before anything is written


def test_split_off_a_dev_part_keeps_every_record_once(tmp_path):
    path = tmp_path / "quoted.csv"
    rows = [["id", "text", "mood"]] + [[f"r{i}", f"line one\nline two, {i}", MOODS[i % 3]] for i in range(50)]
    write_table(path, rows, bom=True)
    reading = tf.detect(path)
    train, dev = tf.split_file(path, reading, tmp_path / "runs", share=0.2)
    assert train.parent == dev.parent == tmp_path / "runs" / tf.TASK_DATA
    spec = TaskSpec("moods", classes=3, label_names=MOODS, text_columns=("text",), label_column="mood",
                    id_column="id", delimiter=",", metrics=("accuracy",))
    ids = {part: [e.id for e in read_task_file(spec, part)[0]] for part in (train, dev)}
    assert len(ids[dev]) == 10 and len(ids[train]) == 40
    assert sorted(ids[train] + ids[dev], key=lambda s: int(s[1:])) == [f"r{i}" for i in range(50)]
    assert ids[train] == sorted(ids[train], key=lambda s: int(s[1:]))  # the file's order kept
    assert tf.split_file(path, reading, tmp_path / "runs", share=0.2) == (train, dev)  # the same parts
    lines = tf.split_file(scores(tmp_path / "s.jsonl", 10), tf.Reading("jsonl"), tmp_path / "runs", share=0.3)
    assert [len(p.read_text().splitlines()) for p in lines] == [7, 3]


def test_a_split_definition_reports_the_whole_files_bad_lines_by_their_line(tmp_path):
    train = moods(tmp_path / "moods.csv", 30)
    with open(train, "a") as f:
        f.write("r30,,neutral\n")
    g = tf.guess(tf.scan(train))
    part_train, part_dev = tf.split_file(train, tf.detect(train), tmp_path / "runs", share=0.5)
    result = tf.check(choices(g, part_train, part_dev), whole_train=str(train))
    assert result.ok, result.problems
    assert [c["file"] for c in result.counts()] == ["train (whole file)", "train part", "dev part"]
    assert result.counts()[0] == {"file": "train (whole file)", "rows": 31, "usable": 30, "skipped": 1}
    assert {"file": "train (whole file)", "line": 32, "why": "empty text"} in result.bad_lines()


def test_uploads_are_saved_once_under_the_runs_folder_with_a_safe_name(tmp_path):
    runs = tmp_path / "runs"
    a = tf.save_upload("../../etc/My data (1).csv", b"id,text\n", runs)
    assert a.parent == runs / tf.TASK_DATA and a.name.startswith("My_data_1_-") and a.suffix == ".csv"
    assert tf.save_upload("../../etc/My data (1).csv", b"id,text\n", runs) == a
    assert tf.save_upload("My data (1).csv", b"other,content\n", runs) != a
    assert tf.save_upload(".hidden", b"x", runs).name.startswith("hidden-")
