"""Our Tokenizer against transformers.BertTokenizerFast on the MiniLM vocabulary (bert-base-uncased's)."""
from __future__ import annotations

import csv
import shutil

import pytest
import torch
import transformers

from mtbert.checkpoint import resolve_base
from mtbert.tokenizer import DEFAULT_MAX_LENGTH, Tokenizer

from shared_data import CS224N as SHARED
from shared_data import needs_shared

LONG = " ".join(["the movie is a loud , witless mess of a sequel ."] * 30)  # ~400 tokens
TRICKY = [
    "Fine.",
    "A CAFÉ naïve Résumé – “quoted” … and ½ of Ångström",  # case, accents, unicode punctuation
    "中文字符 mixed with English and 日本語",  # CJK characters are split one by one
    "emoji 🙂 and a control\x07char and\ttabs\nnewlines",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",  # WordPiece splits, [UNK]
    "co-writer\\/director Peter Jackson 's `` Lord of the Rings ''",  # SST's PTB tokenisation
    "   ",
    "",
    LONG,
]


def _rows(name, column):
    with open(SHARED / name, newline="", encoding="utf-8") as f:
        return [r[column] for r in csv.DictReader(f, delimiter="\t") if r.get(column)]


@pytest.fixture(scope="module")
def folder():
    return resolve_base("minilm-l6")


@pytest.fixture(scope="module")
def reference(folder):
    return transformers.BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab.txt"])
def ours(request, folder, tmp_path_factory):
    """Ours built from tokenizer.json, and from a folder holding vocab.txt alone."""
    if request.param == "tokenizer.json":
        return Tokenizer.from_folder(folder)
    bare = tmp_path_factory.mktemp("vocab-only")
    shutil.copy(folder / "vocab.txt", bare / "vocab.txt")
    return Tokenizer.from_folder(bare)


@pytest.fixture(scope="module")
def sentences():
    if not SHARED.is_dir():
        pytest.skip(needs_shared.kwargs["reason"])
    sst = _rows("ids-sst-dev.csv", "sentence")[:200]
    q1, q2 = _rows("quora-dev.csv", "sentence1")[:200], _rows("quora-dev.csv", "sentence2")[:200]
    return sst + TRICKY, (q1 + TRICKY, q2 + TRICKY[::-1])


def ref_encode(reference, texts, pairs=None, max_length=DEFAULT_MAX_LENGTH):
    enc = reference(texts, pairs, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == torch.long, k
        assert torch.equal(a[k], b[k]), k


def test_singles_match_reference(ours, reference, sentences):
    texts = sentences[0]
    for i in range(0, len(texts), 32):  # batches as the trainer makes them
        assert_same(ours.encode(texts[i:i + 32]), ref_encode(reference, texts[i:i + 32]))


def test_pairs_match_reference(ours, reference, sentences):
    a, b = sentences[1]
    for i in range(0, len(a), 32):
        got = ours.encode(a[i:i + 32], b[i:i + 32])
        assert_same(got, ref_encode(reference, a[i:i + 32], b[i:i + 32]))
        assert got["token_type_ids"].any()  # the second segment is typed 1


def test_truncation_default_and_configurable(ours, reference, folder):
    assert ours.max_length == DEFAULT_MAX_LENGTH == 128
    assert ours.encode([LONG])["input_ids"].shape == (1, 128)
    short = Tokenizer.from_folder(folder, max_length=16)
    got = short.encode([LONG, "Fine."])
    assert got["input_ids"].shape == (2, 16)
    assert got["input_ids"][0, -1].item() == reference.sep_token_id  # truncated inside, [SEP] kept
    assert_same(got, ref_encode(reference, [LONG, "Fine."], max_length=16))
    short.set_max_length(40)
    assert_same(short.encode([LONG]), ref_encode(reference, [LONG], max_length=40))


def test_pair_truncation_is_longest_first(ours, reference):
    long_b = "why " * 200
    a = ["How old are you?", LONG, LONG]
    b = [long_b, "Fine.", long_b]
    got = ours.encode(a, b)
    assert got["input_ids"].shape == (3, 128)
    assert_same(got, ref_encode(reference, a, b))
    # longest-first: the short side survives whole, the long one is cut
    first = got["input_ids"][0][got["token_type_ids"][0] == 0]
    assert first.tolist() == reference("How old are you?")["input_ids"]
    # both long: the budget is split evenly, 128 - 3 special tokens
    types = got["token_type_ids"][2]
    assert abs(int((types == 0).sum()) - 2 - (int((types == 1).sum()) - 1)) <= 1


def test_dynamic_padding_and_attention_mask(ours, reference):
    texts = ["Fine.", "A somewhat longer sentence than the first one.", "Why?"]
    got = ours.encode(texts)
    lengths = [len(reference(t)["input_ids"]) for t in texts]
    B, T = got["input_ids"].shape
    assert (B, T) == (3, max(lengths)) and T < ours.max_length  # to the longest item, not max_length
    assert got["attention_mask"].sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert got["attention_mask"][i, :n].all() and not got["attention_mask"][i, n:].any()
        assert (got["input_ids"][i, n:] == reference.pad_token_id).all()
        assert (got["token_type_ids"][i, n:] == 0).all()
    # a batch is padded on its own: the same sentence alone has no padding
    alone = ours.encode(texts[:1])
    assert alone["input_ids"].shape == (1, lengths[0]) and alone["attention_mask"].all()


def test_mismatched_pair_lengths_fail(ours):
    with pytest.raises(ValueError, match="2 first sentences but 1 second"):
        ours.encode(["a", "b"], ["c"])


def test_encode_one_and_untruncated_count(ours, reference):
    long_b = "why " * 200
    one = ours.encode_one("How old are you?", long_b)
    batch = ours.encode(["How old are you?"], [long_b])
    assert one.ids == batch["input_ids"][0].tolist() and one.type_ids == batch["token_type_ids"][0].tolist()
    assert one.tokens[0] == "[CLS]" and len(one.ids) == 128  # truncated like training
    # count sees the whole input, as the reference tokenizer does without truncation
    assert ours.count("How old are you?", long_b) == len(reference("How old are you?", long_b)["input_ids"]) > 128
    assert ours.count(LONG) == len(reference(LONG)["input_ids"])
    assert ours.encode_one(LONG).ids == ours.encode([LONG])["input_ids"][0].tolist()  # counting left truncation on
