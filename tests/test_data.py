"""Data readers, split resolution, the shipped sample, batching."""
from __future__ import annotations

import csv
import filecmp
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtbert import data as D
from mtbert.data import DataError, Example
from mtbert.tokenizer import Tokenizer
from shared_data import CS224N, DATA, QQP, needs_shared

REPO = Path(__file__).resolve().parents[1]
SHARED = CS224N

# (task, file, rows, usable): rows from the full data's cs224n/SOURCES.md and quora-full/SOURCES.md
SHARED_FILES = [
    ("sst", "ids-sst-train.csv", 8544, 8544),
    ("sst", "ids-sst-dev.csv", 1101, 1101),
    ("sst", "ids-sst-test-student.csv", 2210, 2210),
    ("para", "quora-dev.csv", 20214, 20212),
    ("sts", "sts-train.csv", 6040, 6040),
    ("sts", "sts-dev.csv", 863, 863),
    ("sts", "sts-test-student.csv", 1725, 1725),
    ("para", "../quora-full/qqp-extra-labelled.csv", 28036, 28036),
]


def official_loader(task: str, path: Path) -> list[tuple[str, object]]:
    """What the CS224N starter code keeps: csv.DictReader, and a row whose label fails to parse is dropped."""
    col = D.LABEL_COLUMN[task]
    out = []
    with open(path, encoding="utf-8", newline="") as fp:
        for rec in csv.DictReader(fp, delimiter="\t"):
            if col not in rec:
                out.append((rec["id"].strip(), None))
                continue
            try:
                y = float(rec[col].strip())
            except ValueError:
                continue
            out.append((rec["id"].strip(), y if task == "sts" else int(y)))
    return out


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


# ---- the shared files -----------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("task,name,rows,usable", SHARED_FILES)
def test_shared_file_counts_match_the_official_loader(task, name, rows, usable):
    path = SHARED / name
    examples, report = D.read_task_file(task, path)
    assert (report.rows, report.usable, report.skipped) == (rows, usable, rows - usable)
    assert len(examples) == usable
    got = [(e.id, e.label) for e in examples]
    assert got == official_loader(task, path)
    assert all(e.text_a and (e.text_b is None) == (task == "sst") for e in examples)


@needs_shared
def test_label_distributions_match_sources_md():
    sst, _ = D.read_task_file("sst", SHARED / "ids-sst-train.csv")
    assert [c for _, c in sorted(Counter(e.label for e in sst).items())] == [1092, 2218, 1624, 2322, 1288]
    para, _ = D.read_task_file("para", SHARED / "quora-dev.csv")
    assert Counter(e.label for e in para) == {0: 12627, 1: 7585}
    for split, mean in (("train", 2.61), ("dev", 2.72)):
        sts, _ = D.read_task_file("sts", SHARED / f"sts-{split}.csv")
        assert all(isinstance(e.label, float) for e in sts)
        assert sum(e.label for e in sts) / len(sts) == pytest.approx(mean, abs=0.005)


@needs_shared
def test_quora_dev_names_its_two_malformed_rows():
    path = SHARED / "quora-dev.csv"
    _, report = D.read_task_file("para", path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert [n for n, _ in report.bad_lines] == [2577, 14222]
    assert [lines[n - 1].split("\t")[0] for n, _ in report.bad_lines] == ["65479", "264614"]
    assert all("unbalanced quote" in why and "is_duplicate" in why for _, why in report.bad_lines)
    s = report.summary()
    assert s.startswith("quora-dev.csv: 20,212 usable of 20,214 rows; 2 skipped (line 2577: unbalanced quote")
    assert "line 14222" in s


@needs_shared
def test_unlabelled_files_are_detected_from_the_header():
    ex, _ = D.read_task_file("sst", SHARED / "ids-sst-test-student.csv")  # header `0`, ``, id, sentence
    assert ex[0] == Example("b7573736a6ddf7be102b7fee0", "Effective but too-tepid biopic", None, None)
    with pytest.raises(DataError, match=r"sts-test-student\.csv.*'similarity'"):
        D.read_task_file("sts", SHARED / "sts-test-student.csv", labelled=True)
    ex, _ = D.read_task_file("sts", SHARED / "sts-dev.csv", labelled=False)
    assert len(ex) == 863 and all(e.label is None for e in ex)


# ---- malformed input ------------------------------------------------------------------------

HEADER = "\tid\tsentence1\tsentence2\tis_duplicate\n"


def test_each_kind_of_malformed_row_is_skipped_with_its_line(tmp_path):
    body = [
        '1\ta\tgood one\tgood two\t1.0\n',                      # line 2
        '2\tb\t"a quoted\nsentence"\tsecond\t0.0\n',            # lines 3-4: legal newline in quotes
        '3\tc\t"stray quote\tx\t0.0\n',                         # line 5: swallows line 6
        '4\td\ty"\tz\t1.0\n',                                   # line 6: the quote closes
        '5\te\tonly three\n',                                   # line 7 (the quote above closed on 6)
        '6\tf\tx\ty\t\n',                                       # line 8: empty label
        '7\tg\tx\ty\tmaybe\n',                                  # line 9
        '8\th\tx\ty\t2.0\n',                                    # line 10
        '9\ti\t   \ty\t1.0\n',                                  # line 11: empty sentence
        '10\tj\tx\ty\tnan\n',                                   # line 12
        '11\tk\tx\ty\t0.5\n',                                   # line 13
        '12\t\tx\ty\t0.0\n',                                    # line 14: empty id
        '13\tm\tlast good\tpair\t0\n',                          # line 15
    ]
    path = write(tmp_path, "q.csv", HEADER + "".join(body))
    ex, rep = D.read_task_file("para", path)
    assert [e.id for e in ex] == ["a", "b", "m"]
    assert ex[1].text_a == "a quoted\nsentence" and ex[2].label == 0
    assert rep.rows == 12 and rep.usable == 3 and rep.skipped == 9
    bad = dict(rep.bad_lines)
    assert list(bad) == [5, 7, 8, 9, 10, 11, 12, 13, 14]
    assert "unbalanced quote" in bad[5] and "runs to line 6" in bad[5]
    assert "expected 5 fields, found 3" in bad[7]
    assert bad[8] == "empty is_duplicate"
    assert "non-numeric is_duplicate 'maybe'" in bad[9]
    assert "outside 0..1" in bad[10]
    assert bad[11] == "empty sentence1"
    assert "whole number" in bad[12] and "whole number" in bad[13]
    assert bad[14] == "empty id"


@pytest.mark.parametrize("task,label,ok", [
    ("sst", "4", True), ("sst", "5", False), ("sst", "-1", False), ("sst", "2.0", True), ("sst", "2.5", False),
    ("sts", "0.0", True), ("sts", "5.0", True), ("sts", "5.2", False), ("sts", "-0.1", False),
    ("sts", "inf", False),
    ("para", "1", True), ("para", "0.0", True), ("para", "1e0", True), ("para", "-0.0", True),
])
def test_label_ranges(tmp_path, task, label, ok):
    cols = "sentence" if task == "sst" else "sentence1\tsentence2"
    texts = "s" if task == "sst" else "s\tt"
    path = write(tmp_path, "f.csv", f"\tid\t{cols}\t{D.LABEL_COLUMN[task]}\n0\tx\t{texts}\t{label}\n")
    ex, rep = D.read_task_file(task, path)
    assert rep.usable == int(ok)
    if ok:
        assert ex[0].label == float(label) and type(ex[0].label) is (float if task == "sts" else int)


def test_undecodable_bytes_and_huge_fields(tmp_path):
    huge = "w " * 200_000  # far over csv's default 131,072-character field limit
    raw = (HEADER.encode() + b"1\ta\tbad \xff\xfe bytes\tx\t1.0\n"
           + f'2\tb\t"{huge}"\tx\t0.0\n'.encode() + "3\tc\tcafé\tx\t0.0\n".encode())
    ex, rep = D.read_task_file("para", write(tmp_path, "q.csv", raw))
    assert [e.id for e in ex] == ["b", "c"] and ex[1].text_a == "café"
    assert rep.bad_lines == [(2, "undecodable bytes (not UTF-8)")]


def test_a_quote_left_open_to_the_end_of_the_file(tmp_path):
    ex, rep = D.read_task_file("para", write(tmp_path, "q.csv", HEADER + '1\ta\t"open\tb\t1.0\n2\tb\tc\td\t0.0\n'))
    assert ex == [] and rep.rows == 1 and rep.bad_lines[0][0] == 2


def test_missing_file_column_and_bad_settings(tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        D.read_task_file("sst", tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"c\.csv: no column 'sentence2'"):
        D.read_task_file("sts", write(tmp_path, "c.csv", "\tid\tsentence1\tsimilarity\n0\ta\tb\t1.0\n"))
    with pytest.raises(DataError, match=r"comma\.csv: no column 'id'"):  # the wrong delimiter
        D.read_task_file("sst", write(tmp_path, "comma.csv", ",id,sentence,sentiment\n0,a,b,1\n"))
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        D.read_task_file("sst", write(tmp_path, "empty.csv", ""))
    with pytest.raises(DataError, match="is a directory|cannot read"):
        D.read_task_file("sst", tmp_path)
    with pytest.raises(DataError, match=r"task='nli'.*built-in tasks: sst, para, sts"):
        D.read_task_file("nli", tmp_path / "x.csv")
    with pytest.raises(DataError, match=r"split='testing'.*train, dev, test-student"):
        D.data_files(tmp_path, "testing")
    with pytest.raises(DataError, match=r"data override task='qqp'"):
        D.resolve_files(tmp_path, "train", {"qqp": "x.csv"})


# hypothesis: the readers raise nothing but DataError, and their report adds up
FIELD = st.text(alphabet='ab "\t\n\r,01.5\x00é', max_size=12)


def check_report(task, path, nlines):
    try:
        ex, rep = D.read_task_file(task, path)
    except DataError:
        return
    assert rep.rows == rep.usable + rep.skipped and len(ex) == rep.usable
    assert len(rep.bad_lines) == min(rep.skipped, D.MAX_BAD_LINES)
    assert all(2 <= n <= nlines + 1 for n, _ in rep.bad_lines)
    for e in ex:
        assert e.id and e.text_a and "\t" not in e.text_a and "\t" not in (e.text_b or "")
    rep.summary()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(D.TASKS), rows=st.lists(st.lists(FIELD, min_size=3, max_size=6), max_size=8))
def test_fuzz_tab_separated_rows(tmp_path, task, rows):
    header = ["", "id", *D.TEXT_COLUMNS[task], D.LABEL_COLUMN[task]]
    text = "\n".join("\t".join(r) for r in [header, *rows]) + "\n"
    path = write(tmp_path, "fuzz.csv", text)
    check_report(task, path, text.count("\n") + text.count("\r"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(D.TASKS), raw=st.binary(max_size=300))
def test_fuzz_random_bytes(tmp_path, task, raw):
    header = ("\tid\t" + "\t".join(D.TEXT_COLUMNS[task]) + "\t" + D.LABEL_COLUMN[task] + "\n").encode()
    for blob in (raw, header + raw):
        check_report(task, write(tmp_path, "fuzz.csv", blob), blob.count(b"\n") + blob.count(b"\r"))


# ---- split resolution -----------------------------------------------------------------------

def test_data_files_uses_cs224n_names(tmp_path):
    files = D.data_files(tmp_path, "test-student")
    assert {t: p.name for t, p in files.items()} == {
        "sst": "ids-sst-test-student.csv", "para": "quora-test-student.csv", "sts": "sts-test-student.csv"}


@needs_shared
def test_the_full_data_with_the_quora_stand_in_passed_explicitly(caplog):
    caplog.set_level("INFO", logger="mtbert.data")
    files = D.resolve_files(SHARED, "train", overrides={"para": str(QQP)})
    assert files == {"sst": SHARED / "ids-sst-train.csv", "para": QQP, "sts": SHARED / "sts-train.csv"}
    assert "qqp-extra-labelled.csv" in caplog.text
    loaded = D.load_split(SHARED, "train", tasks=("para",), overrides={"para": str(QQP)})
    ex, rep = loaded["para"]
    assert len(ex) == 28036 and "override" in rep.note and rep.note in rep.summary()


def test_a_missing_file_names_itself_and_the_command_that_fetches_it(tmp_path):
    """No file is looked for outside the data folder; the message says how to get the missing one."""
    (tmp_path / "cs").mkdir()
    (tmp_path / "quora-full").mkdir()  # a stand-in beside the folder is not picked up behind the user's back
    write(tmp_path / "quora-full", "qqp-extra-labelled.csv", HEADER + "0\ts\ta\tb\t1.0\n")
    with pytest.raises(DataError) as e:
        D.load_split(tmp_path / "cs", "train", tasks=("para",))
    msg = str(e.value)
    assert f"{tmp_path / 'cs' / 'quora-train.csv'}: no such file (train data for task para)" in msg
    assert f"python -m mtbert data fetch --dest {tmp_path / 'cs'}" in msg and "--quora-train FILE" in msg
    write(tmp_path / "cs", "quora-train.csv", HEADER + "0\to\ta\tb\t0.0\n")
    assert D.resolve_files(tmp_path / "cs", "train")["para"] == tmp_path / "cs" / "quora-train.csv"
    other = write(tmp_path, "mine.csv", HEADER + "0\tm\ta\tb\t1.0\n1\tn\tc\td\t0.0\n")
    loaded = D.load_split(tmp_path / "cs", "train", tasks=("para",), overrides={"para": str(other)})
    assert [e.id for e in loaded["para"][0]] == ["m", "n"] and "override" in loaded["para"][1].note
    with pytest.raises(DataError, match=r"ids-sst-train\.csv: no such file .*data fetch"):
        D.load_split(tmp_path / "cs", "train")
    with pytest.raises(DataError) as e:  # a file the user named: the fetch command would not help
        D.load_split(tmp_path / "cs", "train", tasks=("para",), overrides={"para": str(tmp_path / "nope.csv")})
    assert "nope.csv: no such file" in str(e.value) and "fetch" not in str(e.value)


# ---- the shipped sample ---------------------------------------------------------------------

@pytest.mark.parametrize("split,n", [("train", 3000), ("dev", 200), ("test-student", 100)])
def test_sample_is_complete_clean_and_in_cs224n_format(split, n):
    loaded = D.load_split(D.SAMPLE_DIR, split)
    for task, (ex, rep) in loaded.items():
        assert (rep.rows, rep.usable, rep.note) == (n, n, ""), rep.summary()
        assert len({e.id for e in ex}) == n
        assert all((e.label is None) == (split == "test-student") for e in ex)
    if split == "train":
        labels = {t: Counter(e.label for e in ex) for t, (ex, _) in loaded.items()}
        assert set(labels["sst"]) == {0, 1, 2, 3, 4} and set(labels["para"]) == {0, 1}


def test_sample_train_and_test_student_quora_rows_are_disjoint():
    train = {e.id for e in D.read_task_file("para", D.SAMPLE_DIR / "quora-train.csv")[0]}
    test = {e.id for e in D.read_task_file("para", D.SAMPLE_DIR / "quora-test-student.csv")[0]}
    assert train and test and not train & test


@needs_shared
def test_make_sample_reproduces_the_shipped_files(tmp_path):
    out = tmp_path / "sample"
    subprocess.run([sys.executable, str(REPO / "data" / "sample" / "make_sample.py"), "--src", str(DATA),
                    "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=120)
    names = sorted(p.name for p in D.SAMPLE_DIR.glob("*.csv"))
    assert names == sorted(p.name for p in out.glob("*.csv")) and len(names) == 9
    match, mismatch, errors = filecmp.cmpfiles(D.SAMPLE_DIR, out, names, shallow=False)
    assert (mismatch, errors) == ([], [])


# ---- batching -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    """A character-level WordPiece vocab: real tokenizer machinery, no model files."""
    folder = tmp_path_factory.mktemp("vocab")
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *chars, *("##" + c for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return Tokenizer.from_folder(folder)


def pairs(labels):
    return [Example(f"id{i}", "first " * (i + 1), "second " * (2 * i + 1), y) for i, y in enumerate(labels)]


def test_make_batch_sst(tok):
    ex = [Example("a", "good film", None, 4), Example("b", "bad", None, 0)]
    b = D.make_batch("sst", ex, tok)
    assert b["ids"] == ["a", "b"] and set(b) == {"ids", "enc", "labels"}
    assert b["labels"].dtype == torch.long and b["labels"].tolist() == [4, 0]
    for k, v in tok.encode(["good film", "bad"]).items():
        assert torch.equal(b["enc"][k], v)
    assert b["enc"]["attention_mask"].sum(1).tolist() == [len("goodfilm") + 2, len("bad") + 2]


@pytest.mark.parametrize("task,labels", [("para", [1, 0, 1]), ("sts", [4.2, 0.0, 5.0])])
def test_make_batch_pairs_separate_and_joint(tok, task, labels):
    ex = pairs(labels)
    sep = D.make_batch(task, ex, tok)
    assert set(sep) == {"ids", "a", "b", "labels"}
    assert torch.equal(sep["a"]["input_ids"], tok.encode([e.text_a for e in ex])["input_ids"])
    assert torch.equal(sep["b"]["input_ids"], tok.encode([e.text_b for e in ex])["input_ids"])
    assert sep["labels"].dtype == torch.float and sep["labels"].tolist() == pytest.approx(labels)
    joint = D.make_batch(task, ex, tok, pair_encoding="joint")
    assert set(joint) == {"ids", "enc", "labels"}
    ref = tok.encode([e.text_a for e in ex], pairs=[e.text_b for e in ex])
    assert all(torch.equal(joint["enc"][k], ref[k]) for k in ref)
    # segment b is marked: as many type-1 tokens as b's characters plus its [SEP]
    assert joint["enc"]["token_type_ids"].sum(1).tolist() == [len(e.text_b.replace(" ", "")) + 1 for e in ex]


def test_make_batch_unlabelled_and_bad_setting(tok):
    ex = pairs([1, None])
    assert D.make_batch("para", ex, tok)["labels"] is None
    with pytest.raises(DataError, match=r"pair_encoding='cross'.*separate, joint"):
        D.make_batch("para", ex, tok, pair_encoding="cross")


def test_batches_cover_every_example_once_and_are_deterministic(tok):
    ex = [Example(str(i), "w" * (1 + (i * 7) % 23), None, i % 5) for i in range(53)]
    plain = list(D.batches("sst", ex, 8, tok))
    assert [len(b["ids"]) for b in plain] == [8] * 6 + [5]
    assert [i for b in plain for i in b["ids"]] == [e.id for e in ex]

    def order(seed, bucket):
        g = torch.Generator().manual_seed(seed)
        return [b["ids"] for b in D.batches("sst", ex, 8, tok, shuffle=True, generator=g, bucket=bucket)]

    for bucket in (False, True):
        a = order(0, bucket)
        assert sorted(i for b in a for i in b) == sorted(e.id for e in ex)
        assert a == order(0, bucket) and a != order(1, bucket)
    with pytest.raises(DataError, match="batch_size=0"):
        next(D.batches("sst", ex, 0, tok))


def test_bucketing_cuts_padding_on_the_sample(tok):
    ex, _ = D.read_task_file("sst", D.SAMPLE_DIR / "ids-sst-train.csv")

    def padding(bucket):
        g = torch.Generator().manual_seed(0)
        bs = list(D.batches("sst", ex, 16, tok, shuffle=True, generator=g, bucket=bucket))
        return sum(int((1 - b["enc"]["attention_mask"]).sum()) for b in bs)

    plain, bucketed = padding(False), padding(True)
    assert bucketed < 0.2 * plain, (plain, bucketed)
