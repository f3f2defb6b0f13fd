"""Stanford Sentiment Treebank trees and their labelled phrases, for phrase-level SST training.

The treebank's `train.txt` (Socher et al. 2013) holds one PTB-bracketed tree per line with a
sentiment class on every node: `(3 (2 The) (4 (3 good) (2 film)))`. Each inner node is a labelled
phrase of the sentence. A phrase's text is its words joined by single spaces, with the treebank's
own tokens kept as they are (`-LRB-`, `` `` ``, `''`, `'s`, `co-writer\\/director`): that is how the
CS224N `ids-sst-*.csv` files write their sentences, so a root's text is its row's `sentence`
and a phrase looks like the sentences the task trains on. The bracketing's own escapes `\\(` and
`\\)` (absent from the SST files, present in some PTB exports) stand for a literal parenthesis.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .data import DataError, Example

# "(", ")", or a run of anything else with backslash escapes kept inside (so `\(` is part of a word).
# Only ASCII blanks separate tokens: the treebank's `8\xa01\\/2` is one word with a no-break space.
TOKEN = re.compile(r"[()]|(?:\\.|[^ \t\r\n\f\v()\\])+")
PHRASE_ID = "{sentence_id}#phrase{node}"  # a phrase example's id: where it came from, and not a sentence's


class TreeError(DataError):
    """A tree line that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Tree:
    line: int
    words: tuple[str, ...]
    nodes: tuple[tuple[int, int, int], ...]  # (label, first word, end word), the root first (pre-order)

    @property
    def label(self) -> int:
        return self.nodes[0][0]

    def text(self, node: int = 0) -> str:
        _, start, end = self.nodes[node]
        return " ".join(self.words[start:end])


def parse_tree(text: str, classes: int = 5, where: str = "") -> tuple[list[str], list[tuple[int, int, int]]]:
    """(words, nodes) of one bracketed tree; a malformed one raises TreeError prefixed by `where`."""
    tokens = TOKEN.findall(text)
    words: list[str] = []
    nodes: list[list] = []  # [label, start, end, has words, has sub-trees]
    stack: list[int] = []

    def fail(i: int, why: str):
        at = f" (token {i + 1}: {tokens[i]!r})" if i < len(tokens) else ""
        raise TreeError(f"{where}{why}{at}; expected a tree like (3 (2 a) (4 (3 good) (2 film)))")

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "(":
            if stack:
                nodes[stack[-1]][4] = True
            elif nodes:
                fail(i, "a second tree after the first one closed")
            label = tokens[i + 1] if i + 1 < len(tokens) else ""
            if not (label.isdigit() and int(label) < classes):
                fail(i + 1, f"a node's label must be a class 0..{classes - 1}")
            stack.append(len(nodes))
            nodes.append([int(label), len(words), None, False, False])
            i += 2
            continue
        if not stack:
            fail(i, "an unbalanced ')'" if tok == ")" else "a word outside the brackets")
        node = nodes[stack[-1]]
        if tok == ")":
            stack.pop()
            node[2] = len(words)
            if node[2] == node[1]:
                fail(i, "a node without words")
            if node[3] and node[4]:
                fail(i, "a node with both words and sub-trees")
        else:
            words.append(tok.replace("\\(", "(").replace("\\)", ")"))
            node[3] = True
        i += 1
    if stack:
        fail(len(tokens), f"{len(stack)} unclosed '('")
    if not nodes:
        fail(0, "no tree")
    return words, [(n[0], n[1], n[2]) for n in nodes]


def read_trees(path, classes: int = 5) -> list[Tree]:
    """Every tree of a file, one per non-empty line; the first malformed line raises TreeError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the SST trees ({e.strerror or e})") from None
    trees = []
    for n, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise TreeError(f"{path}, line {n}: undecodable bytes (not UTF-8)") from None
        if text.strip():
            words, nodes = parse_tree(text, classes, where=f"{path}, line {n}: ")
            trees.append(Tree(n, tuple(words), tuple(nodes)))
    if not trees:
        raise TreeError(f"{path}: no trees (expected one bracketed tree per line)")
    return trees


def phrase_examples(path, sentences: list[Example], min_words: int = 2, classes: int = 5
                    ) -> tuple[list[Example], str]:
    """(phrase examples, a one-line summary) from the trees of `path` whose root text is one of
    `sentences` (the run's training sentences: a dev sentence never contributes its phrases).

    A phrase is a node below the root with at least `min_words` words whose text is not itself a
    training sentence. Identical texts (the same phrase in several sentences) become one example
    with their most frequent label, the first seen on a tie; in SST a phrase's label comes from
    the phrase, so its copies agree."""
    trees = read_trees(path, classes)
    by_text = {e.text_a: e for e in sentences}
    labels: dict[str, Counter] = {}
    first: dict[str, str] = {}
    matched = 0
    for tree in trees:
        sentence = by_text.get(tree.text())
        if sentence is None:
            continue
        matched += 1
        for k, (_, start, end) in enumerate(tree.nodes[1:], start=1):
            text = tree.text(k)
            if end - start < min_words or text in by_text:
                continue
            labels.setdefault(text, Counter())[tree.nodes[k][0]] += 1
            first.setdefault(text, PHRASE_ID.format(sentence_id=sentence.id, node=k))
    out = [Example(first[text], text, None, c.most_common(1)[0][0]) for text, c in labels.items()]
    summary = (f"{len(out):,} distinct phrases of >= {min_words} words from {matched:,} of {len(trees):,} "
               f"trees in {Path(path).name} (those whose sentence is among the {len(sentences):,} training "
               "sentences)")
    return out, summary


class PhraseDraw:
    """k phrases per batch, through one seeded permutation of all phrases after another: batch n takes
    places n*k .. n*k+k-1 of that endless sequence, so every phrase comes once before any comes twice,
    and what batch n gets depends on (seed, n) alone (a resumed run draws the same phrases)."""

    def __init__(self, phrases: list[Example], k: int, seed: int):
        self.phrases, self.k, self.seed = phrases, k, seed
        self._cycle: tuple[int, list[int]] | None = None

    def order(self, cycle: int) -> list[int]:
        if self._cycle is None or self._cycle[0] != cycle:
            import torch  # here: reading trees (the CLI, the studio) should not load torch
            g = torch.Generator().manual_seed(self.seed + 7_919 * (cycle + 1))
            self._cycle = (cycle, torch.randperm(len(self.phrases), generator=g).tolist())
        return self._cycle[1]

    def __call__(self, batch_number: int) -> list[Example]:
        out = []
        for place in range(batch_number * self.k, (batch_number + 1) * self.k):
            cycle, at = divmod(place, len(self.phrases))
            out.append(self.phrases[self.order(cycle)[at]])
        return out


def root_agreement(trees: list[Tree], sentences: list[Example]) -> float:
    """The fraction of trees whose root text is the sentence at the same place (the CS224N train
    file lists the sentences in the trees' order)."""
    same = sum(t.text() == e.text_a for t, e in zip(trees, sentences))
    return same / max(1, len(trees))
