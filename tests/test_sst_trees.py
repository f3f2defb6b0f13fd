"""The SST tree reader, phrase extraction and phrase-level SST training (mtbert/sst_trees.py)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mtbert.config import TrainConfig
from mtbert.data import SAMPLE_DIR, Example, read_task_file
from mtbert.sst_trees import (PHRASE_ID, PhraseDraw, TreeError, parse_tree, phrase_examples, read_trees,
                              root_agreement)
from mtbert.train import MixedStream, Trainer, TrainingError
from shared_data import CS224N, DATA
from test_train import StopAt, steps

TREES = DATA / "sst-trees" / "train.txt"


def test_a_tree_gives_its_words_and_every_nodes_label_and_span():
    words, nodes = parse_tree("(3 (2 The) (4 (3 gorgeously) (2 elaborate)))")
    assert words == ["The", "gorgeously", "elaborate"]
    assert nodes == [(3, 0, 3), (2, 0, 1), (4, 1, 3), (3, 1, 2), (2, 2, 3)]  # pre-order: the root first


def test_treebank_tokens_stay_as_the_csv_writes_them_and_bracket_escapes_are_unescaped():
    line = ("(2 (2 (2 -LRB-) (2 ``)) (2 (2 co-writer\\/director) (2 (2 8\u00a01\\/2) "
            "(2 (2 \\(sic\\)) (2 '')))))")
    words, _ = parse_tree(line)
    # -LRB-, `` and '' and \/ are the treebank's and the CS224N file's; a no-break space is inside a word
    assert words == ["-LRB-", "``", "co-writer\\/director", "8\u00a01\\/2", "(sic)", "''"]
    assert parse_tree("(1 (2 \\() (1 bad))")[0] == ["(", "bad"]  # a lone escaped bracket is a word


def write(tmp_path: Path, *lines: str) -> Path:
    p = tmp_path / "train.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("line, why", [
    ("(3 (2 The) (2 Rock)", "1 unclosed '('"),
    ("(3 (2 The) (2 Rock)))", "an unbalanced ')'"),
    ("(x (2 The))", "label must be a class 0..4"),
    ("(7 (2 The))", "label must be a class 0..4"),
    ("(3 (2 The) Rock)", "a node with both words and sub-trees"),
    ("(3 (2 The)) (2 again)", "a second tree"),
    ("(3 ())", "label must be a class"),
    ("(3 (2 ))", "a node without words"),
])
def test_a_malformed_tree_names_the_file_the_line_and_the_fault(tmp_path, line, why):
    p = write(tmp_path, "(2 (2 fine) (2 tree))", "", line)
    with pytest.raises(TreeError) as e:
        read_trees(p)
    assert f"{p}, line 3: " in str(e.value) and why in str(e.value)


def test_undecodable_bytes_and_an_empty_file_are_named(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"(2 (2 ok) (2 fine))\n(2 (2 caf\xe9) (2 bar))\n")
    with pytest.raises(TreeError, match="line 2: undecodable"):
        read_trees(p)
    p.write_text("\n\n")
    with pytest.raises(TreeError, match="no trees"):
        read_trees(p)


def test_phrases_come_from_the_training_sentences_trees_only_with_min_words_and_dedupe(tmp_path):
    p = write(tmp_path,
              "(3 (2 (2 a) (2 film)) (4 (3 very) (4 good)))",
              "(1 (2 (2 a) (2 film)) (1 (2 very) (0 bad)))",       # "a film" again, labelled the same
              "(0 (0 (2 dev) (0 awful)) (2 sentence))")             # not a training sentence
    train = [Example("s1", "a film very good", None, 3), Example("s2", "a film very bad", None, 1)]
    phrases, summary = phrase_examples(p, train, min_words=2)
    assert {(e.text_a, e.label) for e in phrases} == {("a film", 2), ("very good", 4), ("very bad", 1)}
    assert all(e.text_b is None for e in phrases)
    assert {e.id for e in phrases if e.text_a == "a film"} == {PHRASE_ID.format(sentence_id="s1", node=1)}
    assert "from 2 of 3 trees" in summary
    one = {e.text_a for e in phrase_examples(p, train, min_words=1)[0]}
    assert {"a", "film", "very", "good", "bad"} <= one and "awful" not in one
    assert phrase_examples(p, train, min_words=3)[0] == []  # roots never count: they are the sentences


def test_identical_phrases_keep_their_most_frequent_label_the_first_on_a_tie(tmp_path):
    p = write(tmp_path, "(2 (1 (2 so) (2 so)) (2 x))", "(2 (3 (2 so) (2 so)) (2 y))",
              "(2 (3 (2 so) (2 so)) (2 z))", "(2 (4 (2 no) (2 no)) (2 x))", "(2 (0 (2 no) (2 no)) (2 y))")
    train = [Example(str(i), t, None, 2) for i, t in enumerate(["so so x", "so so y", "so so z", "no no x",
                                                                 "no no y"])]
    labels = {e.text_a: e.label for e in phrase_examples(p, train, min_words=2)[0]}
    assert labels == {"so so": 3, "no no": 4}


def test_the_phrase_draw_covers_every_phrase_before_repeating_and_depends_on_seed_and_batch_only():
    phrases = [Example(str(i), f"p {i}", None, i % 5) for i in range(10)]
    draw = PhraseDraw(phrases, k=3, seed=5)
    first = [e.id for n in range(3) for e in draw(n)]  # 9 places of the first permutation
    assert len(set(first)) == 9
    again = PhraseDraw(phrases, k=3, seed=5)
    assert [e.id for e in again(7)] == [e.id for e in draw(7)]  # batch 7 without drawing 0..6 first
    assert [e.id for e in PhraseDraw(phrases, 3, seed=6)(0)] != [e.id for e in draw(0)]


@pytest.mark.skipif(not TREES.is_file() or not CS224N.is_dir(),
                    reason=f"the SST trees or the CS224N files are not at {TREES} / {CS224N} (set MTBERT_TEST_DATA)")
def test_every_root_is_its_csv_sentence_on_the_full_treebank():
    sentences, _ = read_task_file("sst", CS224N / "ids-sst-train.csv")
    trees = read_trees(TREES)
    assert len(trees) == len(sentences) == 8544
    rate = root_agreement(trees, sentences)
    print(f"root text == csv sentence for {rate:.4%} of {len(trees)} trees")
    assert rate == 1.0
    assert all(t.label == e.label for t, e in zip(trees, sentences))
    phrases, _ = phrase_examples(TREES, sentences, min_words=2)
    assert 100_000 < len(phrases) < 150_000 and set(Counter(e.label for e in phrases)) == {0, 1, 2, 3, 4}


# ---- phrase-level training on the tiny model --------------------------------------------------

def sample_trees(tmp_path: Path) -> tuple[Path, list[Example]]:
    """A trees file over the shipped sample's SST train sentences: right-branching, every phrase of
    a sentence labelled by how many words it has, mod 5 (so a phrase's label differs from its root's)."""
    sentences, _ = read_task_file("sst", SAMPLE_DIR / "ids-sst-train.csv")

    def tree(words: list[str], root: int) -> str:
        if len(words) == 1:
            return f"(2 {words[0]})"
        return f"({root} (2 {words[0]}) {tree(words[1:], (len(words) - 1) % 5)})"

    lines = [tree(e.text_a.split(" "), e.label) for e in sentences]
    return write(tmp_path, *lines), sentences


def tiny_cfg(base, trees: Path, **kw) -> TrainConfig:
    d = dict(base_model=str(base), epochs=2, batch_size=4, lr=1e-3, train_subset=12, eval_subset=8,
             train_eval_subset=8, max_length=32, seed=3, tasks=["sst", "sts"], sst_phrases_file=str(trees),
             sst_phrase_ratio=0.5, sst_phrase_min_words=3)
    return TrainConfig(**{**d, **kw})


class Counting(Trainer):
    """Records every SST example the stream hands to a step."""
    seen: list

    def _setup(self):
        super()._setup()
        stream, Counting.seen = self.data.streams["sst"], []
        plain_next = stream.next

        def next_():
            out = plain_next()
            Counting.seen.append([e.id for e in out])
            return out
        stream.next = next_


def test_phrases_reach_the_sst_batches_of_a_real_run(tiny_base, tmp_path):
    trees, sentences = sample_trees(tmp_path)
    logs: list[str] = []
    run = tmp_path / "run"
    assert Counting(tiny_cfg(tiny_base, trees, tasks=["sst"]), run, progress=False, log=logs.append).run() == "finished"
    assert any("[data] train sst phrases:" in m and "from 12 of 3,000 trees" in m for m in logs)
    batches = Counting.seen
    assert batches and all(len(b) == 4 for b in batches)
    phrase_ids = [i for b in batches for i in b if "#phrase" in i]
    assert all(sum("#phrase" in i for i in b) == 2 for b in batches)  # ratio 0.5 of 4 places
    train_ids = {i for b in batches for i in b if "#phrase" not in i}
    assert len(train_ids) == 12  # two sentences a batch, six batches an epoch: every training sentence
    assert {i.split("#")[0] for i in phrase_ids} <= train_ids  # phrases of the run's sentences only
    assert max(steps(run)) == 2 * 12 // 2  # an epoch is a pass of the sentences, two at a time


class StopAt5(StopAt):
    stop_at = 5


def test_a_run_with_phrases_resumes_exactly(tiny_base, tmp_path):
    trees, _ = sample_trees(tmp_path)
    cfg = tiny_cfg(tiny_base, trees, sst_phrase_ratio=0.25, train_subset=10, batch_size=4, epochs=3)
    full = tmp_path / "full"
    Trainer(cfg, full, progress=False, log=lambda m: None).run()
    part = tmp_path / "part"
    assert StopAt5(cfg, part, progress=False, log=lambda m: None).run() == "stopped"
    assert Trainer(cfg, part, resume=True, progress=False, log=lambda m: None).run() == "finished"
    a, b = steps(full), steps(part)
    assert sorted(a) == sorted(b) and max(a) > 5
    assert all(a[s]["loss"] == b[s]["loss"] for s in a), "a resumed run with phrases trains on other batches"


def test_the_mixed_stream_state_is_its_position():
    sentences = [Example(str(i), f"s {i}", None, 0) for i in range(6)]
    phrases = [Example(f"{i}#phrase1", f"p {i}", None, 1) for i in range(5)]
    a = MixedStream("sst", sentences, 3, 1, False, 0, draw=PhraseDraw(phrases, 1, seed=2))
    seen = [[e.id for e in a.next()] for _ in range(5)]
    b = MixedStream("sst", sentences, 3, 1, False, 0, draw=PhraseDraw(phrases, 1, seed=2))
    b.load_state({"pass": 1, "position": 1})  # after 3 batches: two of pass 0 and one of pass 1
    assert [[e.id for e in b.next()] for _ in range(2)] == seen[3:]


@pytest.mark.parametrize("bad, needle", [
    ({"sst_phrases_file": "t.txt"}, "sst_phrases_file='t.txt' is not allowed with sst_phrase_ratio=0"),
    ({"sst_phrases_file": "t.txt", "sst_phrase_ratio": 1.0}, "sst_phrase_ratio=1.0 is not allowed"),
    ({"sst_phrases_file": "t.txt", "sst_phrase_ratio": 0.5, "batch_size": 1}, "batch_size=1"),
    ({"sst_phrases_file": "t.txt", "sst_phrase_ratio": 0.5, "tasks": ["sts"]}, "without the sst task"),
    ({"sst_phrase_min_words": 0}, "sst_phrase_min_words=0 is not allowed; allowed values: an integer >= 1"),
])
def test_bad_phrase_settings_name_the_setting(bad, needle):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(bad)
    assert needle in str(e.value)


def test_a_trees_file_of_other_sentences_is_refused_by_name(tiny_base, tmp_path):
    trees = write(tmp_path, "(2 (2 (2 nothing) (2 here)) (2 matches))")
    with pytest.raises(TrainingError) as e:
        Trainer(tiny_cfg(tiny_base, trees, max_steps=1), tmp_path / "r", progress=False, log=lambda m: None).run()
    assert "gave no phrases" in str(e.value) and "sst_phrases_file" in str(e.value)
