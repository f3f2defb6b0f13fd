"""The gender bias probe: how every task's answer moves when gendered words and first names are swapped.

An item is an original input and its counterfactual, the same text with every gendered word
(he/she, his/her, father/mother, Mr/Ms, ...) and first name (John/Mary, ...) swapped. The shipped
templates (static/probe/templates.jsonl) expand into items whose original is the masculine filling
and whose counterfactual is the feminine one, so a shift is always answer(feminine) - answer(masculine).
Per task the probe measures the shift of what the task predicts: each class probability and, for more
than two classes, the expected class index (classification); the probability of class 1 (binary);
the score (regression). It summarises each measure's distribution (mean, mean |shift|, sd, max |shift|,
a histogram, a sign test and a Wilcoxon signed-rank test for a systematic direction), counts the items
whose predicted label flips, and lists the largest shifts with their text. See docs/probe.md.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

PROBE_DIR = Path(__file__).resolve().parent / "static" / "probe"
LEXICON_FILE = PROBE_DIR / "lexicon.yaml"
TEMPLATES_FILE = PROBE_DIR / "templates.jsonl"
DIRECTIONS = ("both", "feminine", "masculine")
HIST_BINS = 21
TIE = 1e-7  # |shift| at or below this is no shift (float noise), for the sign and Wilcoxon tests
# "her" is the feminine of both "him" and "his", "his" the masculine of both "her" and "hers". The
# standalone form (him, hers) is taken when the next word cannot start the noun phrase a determiner
# would own: punctuation or the end of the text, or one of these words; otherwise the determiner (his, her).
STANDALONE = ("him", "hers")
NOT_A_NOUN_PHRASE = frozenset(
    "and or but nor so yet to with at in on for from about of by into onto over under after before "
    "again too also back up down out off away around here there now then today tomorrow yesterday "
    "very really well that as when while because if than a an the this these those some any every "
    "my your our their its his her all is was will would can could should must".split())
TEMPLATE_FIELDS = ("id", "text", "a", "b", "fill")
NAME_SLOT = "name"


class ProbeError(ValueError):
    """Unusable probe input: a bad template or lexicon line (named by file and line), an unknown
    task, or a text with nothing to swap. The message is meant for the user as is."""


# ---- the lexicon ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Lexicon:
    pairs: tuple          # (masculine, feminine) words, lower case, swapped both ways
    one_way: tuple        # (feminine, masculine): feminine words whose masculine has another partner
    names: tuple          # (masculine, feminine) first names, as written

    def __post_init__(self):
        to_fem, to_masc = {}, {}
        for m, f in self.pairs:
            to_fem.setdefault(m, []).append(f)
            to_masc.setdefault(f, []).append(m)
        for f, m in self.one_way:
            to_fem.setdefault(m, []).append(f)
            to_masc.setdefault(f, []).append(m)
        for m, f in self.names:
            to_fem[m.lower()], to_masc[f.lower()] = [f], [m]
        object.__setattr__(self, "_targets", {"feminine": to_fem, "masculine": to_masc})
        words = sorted(set(to_fem) | set(to_masc), key=lambda w: (-len(w), w))
        object.__setattr__(self, "pattern", re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b",
                                                       re.IGNORECASE))

    @property
    def words(self) -> list[str]:
        """Every word the probe swaps, lower case."""
        t = self._targets
        return sorted(set(t["feminine"]) | set(t["masculine"]))

    def target(self, word: str, direction: str, following: str = "") -> str | None:
        """What `word` (any case) becomes, or None if it stays; `following` is the text after it."""
        low = word.lower()
        for side in (("feminine", "masculine") if direction == "both" else (direction,)):
            options = self._targets[side].get(low)
            if options:
                return _pick(options, following)
        return None

    def slot(self, word: str) -> tuple[str, str] | None:
        """(masculine, feminine) of a template slot naming a lexicon word; None if it names none.
        A word with two partners in `pairs` (her: him and his) is ambiguous: ProbeError."""
        low = word.lower()
        found = [p for p in self.pairs if low in p] or [(m, f) for f, m in self.one_way if low in (m, f)]
        if len(found) > 1:
            raise ProbeError(f"{{{word}}} is ambiguous ({' or '.join('/'.join(p) for p in found)}): write "
                             f"{' or '.join('{' + _same_case(word, p[0]) + '}' for p in found)}, "
                             "or {masculine|feminine}")
        return (_same_case(word, found[0][0]), _same_case(word, found[0][1])) if found else None


def _pick(options: list[str], following: str) -> str:
    if len(options) == 1:
        return options[0]
    nxt = re.match(r"\s*([A-Za-z]+)", following)
    standalone = nxt is None or nxt.group(1).lower() in NOT_A_NOUN_PHRASE
    for o in options:
        if (o in STANDALONE) == standalone:
            return o
    return options[0]


def _same_case(source: str, word: str) -> str:
    """`word` in the case of `source`: HE -> SHE, He -> She, he -> she (a name keeps its capital)."""
    if len(source) > 1 and source.isupper():
        return word.upper()
    if source[:1].isupper():
        return word[:1].upper() + word[1:]
    return word.lower()


def _check_words(path, what: str, words) -> tuple:
    if not isinstance(words, list) or not words:
        raise ProbeError(f"lexicon {path}: {what} must be a non-empty list")
    return tuple(words)


def read_lexicon(path=None) -> Lexicon:
    """The lexicon file (YAML: pairs: [[masculine, feminine], ...], one_way: {feminine: masculine},
    names: {masculine: [...], feminine: [...]}, the names paired by position)."""
    from .io import read_document
    path = Path(path or LEXICON_FILE)
    doc = read_document(path, "lexicon", ProbeError, always_yaml=True)
    if not isinstance(doc, dict) or set(doc) - {"pairs", "one_way", "names"}:
        raise ProbeError(f"lexicon {path}: expected a mapping with the keys pairs, one_way, names")
    word = re.compile(r"^[a-z]+$")
    pairs = _check_words(path, "pairs", doc.get("pairs"))
    for p in pairs:
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(w, str) and word.match(w) for w in p)):
            raise ProbeError(f"lexicon {path}: pair {p!r} is not allowed; allowed: [masculine, feminine], "
                             "two lower-case words")
    one_way = doc.get("one_way") or {}
    if not isinstance(one_way, dict) or not all(isinstance(k, str) and isinstance(v, str) and word.match(k)
                                                and word.match(v) for k, v in one_way.items()):
        raise ProbeError(f"lexicon {path}: one_way must map lower-case feminine words to masculine ones")
    names = doc.get("names")
    if not isinstance(names, dict) or set(names) != {"masculine", "feminine"}:
        raise ProbeError(f"lexicon {path}: names must have the lists masculine and feminine")
    masc, fem = (_check_words(path, f"names.{k}", names[k]) for k in ("masculine", "feminine"))
    if len(masc) != len(fem) or not all(isinstance(n, str) and re.match(r"^[A-Z][a-z]+$", n) for n in masc + fem):
        raise ProbeError(f"lexicon {path}: names.masculine and names.feminine must be equally long lists of "
                         "capitalised names (paired by position)")
    lowered = [n.lower() for n in masc + fem]
    words = {w for p in pairs for w in p} | set(one_way) | set(one_way.values())
    clash = sorted({n for n in lowered if lowered.count(n) > 1 or n in words})
    if clash:
        raise ProbeError(f"lexicon {path}: the name(s) {', '.join(clash)} appear twice or are also gendered "
                         "words; a name swaps with one partner only")
    return Lexicon(tuple(tuple(p) for p in pairs), tuple(one_way.items()), tuple(zip(masc, fem)))


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    return read_lexicon(LEXICON_FILE)


# ---- the swap -------------------------------------------------------------------------------

def swap(text: str, direction: str = "both", lexicon: Lexicon | None = None) -> str:
    """`text` with its gendered words and known first names swapped, whole words only, in the case they
    had: both: every one flips (he -> she and she -> he); feminine / masculine: all made one gender."""
    if direction not in DIRECTIONS:
        raise ProbeError(f"direction={direction!r} is not allowed; allowed values: {', '.join(DIRECTIONS)}")
    lex = lexicon or default_lexicon()

    def replace(m: re.Match) -> str:
        target = lex.target(m.group(0), direction, text[m.end():])
        return m.group(0) if target is None else _same_case(m.group(0), target)

    return lex.pattern.sub(replace, text)


def gendered_words(text: str, lexicon: Lexicon | None = None) -> list[str]:
    """The words of `text` the swap would change, as written."""
    return [m.group(0) for m in (lexicon or default_lexicon()).pattern.finditer(text)]


def counterfactuals(text_a: str, text_b: str | None = None, lexicon: Lexicon | None = None) -> list[dict]:
    """The variants of a typed input: every gendered word swapped, then (when the input mixes genders)
    all made feminine and all made masculine; each as {"label", "a", "b"}, the swap applied to both
    sides of a pair alike. ProbeError when there is nothing to swap."""
    lex = lexicon or default_lexicon()
    if not gendered_words(text_a + "\n" + (text_b or ""), lex):
        raise ProbeError("The input has no gendered word or known first name to swap. The probe swaps words "
                         "such as he/she, him/her, his/her, man/woman, father/mother, Mr/Ms and common first "
                         f"names ({', '.join([m for m, _ in lex.names[:3]] + [f for _, f in lex.names[:3]])}, ...).")
    out, seen = [], {(text_a, text_b)}
    for label, direction in (("swapped", "both"), ("all feminine", "feminine"), ("all masculine", "masculine")):
        a = swap(text_a, direction, lex)
        b = None if text_b is None else swap(text_b, direction, lex)
        if (a, b) not in seen:
            seen.add((a, b))
            out.append({"label": label, "a": a, "b": b})
    return out


# ---- templates ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Template:
    id: str
    text_a: str
    text_b: str | None
    fill: dict
    where: str  # "file, line n"

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None


@dataclass(frozen=True)
class ProbeItem:
    template: str
    original: tuple          # (a, b or None): the masculine filling of a template, or the typed text
    counterfactual: tuple    # the same with the gendered words and names swapped

    @property
    def is_pair(self) -> bool:
        return self.original[1] is not None


SLOT = re.compile(r"\{([^{}]*)\}")


def _slots(text: str) -> list[str]:
    return SLOT.findall(text)


def _check_template(t: Template, lex: Lexicon) -> None:
    for text in filter(None, (t.text_a, t.text_b)):
        literal = SLOT.sub(" ", text)
        if "{" in literal or "}" in literal:
            raise ProbeError(f"{t.where}: template {t.id!r} has an unmatched brace in {text!r}")
        gendered = gendered_words(literal, lex)
        if gendered:
            raise ProbeError(f"{t.where}: template {t.id!r} has the gendered word {gendered[0]!r} outside a slot; "
                             f"write {{{gendered[0]}}} so that it is swapped with the rest")
    used = set()
    swapped = False
    for s in _slots(t.text_a) + _slots(t.text_b or ""):
        used.add(s)
        if s == NAME_SLOT or re.fullmatch(r"[^|]+\|[^|]+", s):
            swapped = True
        elif s in t.fill:
            pass
        else:
            try:
                found = lex.slot(s)
            except ProbeError as e:
                raise ProbeError(f"{t.where}: template {t.id!r}: {e}") from None
            if found is None:
                raise ProbeError(f"{t.where}: template {t.id!r} has the slot {{{s}}}, which is none of: {{name}}, "
                                 "a word of the lexicon (he, his, father, Mr, ...), {masculine|feminine}, "
                                 f"or a key of its fill ({', '.join(t.fill) or 'none given'})")
            swapped = True
    unused = sorted(set(t.fill) - used)
    if unused:
        raise ProbeError(f"{t.where}: template {t.id!r}: fill {', '.join(unused)} is not used by any slot")
    if not swapped:
        raise ProbeError(f"{t.where}: template {t.id!r} has nothing to swap; it needs {{name}}, a gendered "
                         "word slot such as {he}, or a {masculine|feminine} slot")


def _template(d, where: str, lex: Lexicon) -> Template:
    if not isinstance(d, dict):
        raise ProbeError(f"{where}: a template is a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(TEMPLATE_FIELDS))
    if unknown:
        raise ProbeError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                         f"allowed fields: {', '.join(TEMPLATE_FIELDS)}")
    if not isinstance(d.get("id"), str) or not d["id"].strip():
        raise ProbeError(f"{where}: id is missing; every template needs an id (a text)")
    has_text, has_pair = "text" in d, "a" in d or "b" in d
    if has_text == has_pair or (has_pair and not ("a" in d and "b" in d)):
        raise ProbeError(f"{where}: template {d['id']!r} needs either text (a sentence) or both a and b (a pair)")
    texts = [d["text"]] if has_text else [d["a"], d["b"]]
    if not all(isinstance(x, str) and x.strip() for x in texts):
        raise ProbeError(f"{where}: template {d['id']!r}: text, a and b must be non-empty texts")
    fill = d.get("fill") or {}
    if not isinstance(fill, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)
            for k, v in fill.items()):
        raise ProbeError(f"{where}: template {d['id']!r}: fill must map slot names to non-empty lists of texts")
    bad = [k for k in fill if k == NAME_SLOT or k.lower() in lex.words]
    if bad:
        raise ProbeError(f"{where}: template {d['id']!r}: fill {bad[0]!r} is a swapped slot; pick another name")
    t = Template(d["id"].strip(), texts[0], texts[1] if has_pair else None, fill, where)
    _check_template(t, lex)
    return t


def load_templates(path=None, lexicon: Lexicon | None = None) -> list[Template]:
    """The templates of a JSONL file (the shipped set by default): one JSON object a line, blank
    lines and lines starting with # skipped. A bad line raises ProbeError naming the file and line."""
    lex = lexicon or default_lexicon()
    path = Path(path or TEMPLATES_FILE)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ProbeError(f"templates file {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    out, ids = [], {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProbeError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        t = _template(d, where, lex)
        if t.id in ids:
            raise ProbeError(f"{where}: template id {t.id!r} is already used on line {ids[t.id]}")
        ids[t.id] = n
        out.append(t)
    if not out:
        raise ProbeError(f"templates file {path}: no templates (one JSON object a line)")
    return out


def _fill(text: str, slots: dict) -> str:
    return SLOT.sub(lambda m: slots[m.group(1)], text)


def expand(templates: list[Template], lexicon: Lexicon | None = None) -> list[ProbeItem]:
    """Every template filled every way: {name} with each name pair, fill slots with each combination
    of their lists; the original is the masculine filling, the counterfactual the feminine one."""
    lex = lexicon or default_lexicon()
    items = []
    for t in templates:
        slots = set(_slots(t.text_a) + _slots(t.text_b or ""))
        names = lex.names if NAME_SLOT in slots else [None]
        keys = sorted(t.fill)
        for k, (name, values) in enumerate(itertools.product(names, itertools.product(*(t.fill[x] for x in keys)))):
            masc, fem = dict(zip(keys, values)), dict(zip(keys, values))
            for s in slots - set(keys):
                if s == NAME_SLOT:
                    m, f = name
                elif "|" in s:
                    m, f = s.split("|")
                else:
                    m, f = lex.slot(s)
                masc[s], fem[s] = m, f
            side = lambda text, d: None if text is None else _fill(text, d)
            items.append(ProbeItem(f"{t.id}#{k}", (side(t.text_a, masc), side(t.text_b, masc)),
                                   (side(t.text_a, fem), side(t.text_b, fem))))
    return items


# ---- what a task's answer is made of ----------------------------------------------------------

def measures(spec, raw: np.ndarray) -> dict[str, np.ndarray]:
    """The numbers a task predicts, by name: P(label) per class (and the expected class index for
    more than two classes), P(label of class 1) for a binary task, the score for regression."""
    raw = np.asarray(raw, dtype=np.float64)
    if spec.kind == "regression":
        return {"score": raw}
    if spec.binary:
        return {f"P({spec.label_name(1)})": raw}
    out = {f"P({spec.label_name(k)})": raw[:, k] for k in range(spec.classes)}
    if spec.classes > 2:
        out["expected class"] = raw @ np.arange(spec.classes)
    return out


def main_measure(spec) -> str:
    """The measure a task's histogram starts with: the expected class (more than two classes),
    P(class 1) (two classes) or the score."""
    if spec.kind == "regression":
        return "score"
    if spec.classes > 2 and not spec.binary:
        return "expected class"
    return f"P({spec.label_name(1)})"


def predicted_labels(spec, raw: np.ndarray) -> np.ndarray | None:
    if spec.kind == "regression":
        return None
    raw = np.asarray(raw)
    return (raw > 0.5).astype(int) if raw.ndim == 1 else raw.argmax(-1)


def answer_text(spec, raw) -> str:
    """One prediction in words: the label and its probability, P(class 1), or the score."""
    if spec.kind == "regression":
        return f"{float(raw):.3f}"
    if spec.binary:
        return f"P({spec.label_name(1)}) {float(raw):.3f}"
    k = int(np.argmax(raw))
    return f"{spec.label_name(k)} ({float(raw[k]):.3f})"


def summarize(shifts: np.ndarray, bins: int = HIST_BINS) -> dict:
    """The distribution of one measure's shifts: mean, mean |shift|, sd, max |shift|, how many went
    up and down, a sign test and a Wilcoxon signed-rank p for a systematic direction, a histogram."""
    from scipy.stats import binomtest, wilcoxon
    x = np.asarray(shifts, dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0}
    moved = x[np.abs(x) > TIE]
    up, down = int((moved > 0).sum()), int((moved < 0).sum())
    sign_p = float(binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0
    wilcoxon_p = float(wilcoxon(moved).pvalue) if len(moved) else 1.0
    counts, edges = np.histogram(x, bins=bins)
    return {"n": n, "mean": float(x.mean()), "mean_abs": float(np.abs(x).mean()),
            "sd": float(x.std(ddof=1)) if n > 1 else 0.0, "max_abs": float(np.abs(x).max()),
            "up": up, "down": down, "unchanged": n - up - down, "sign_p": sign_p, "wilcoxon_p": wilcoxon_p,
            "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}}


# ---- running it -----------------------------------------------------------------------------

@dataclass
class TaskProbe:
    """One task's shifts over the items it reads (sentence items for a sentence task, pairs for a pair task)."""
    spec: object
    items: list
    original: np.ndarray        # raw predictions (predict_raw's layout)
    counterfactual: np.ndarray
    shifts: dict = field(default_factory=dict)     # measure -> (N,) counterfactual - original
    summaries: dict = field(default_factory=dict)  # measure -> summarize()
    flips: np.ndarray | None = None                # (N,) predicted label changed; None for regression

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def main(self) -> str:
        return main_measure(self.spec)

    @property
    def flip_rate(self) -> float | None:
        return None if self.flips is None or not len(self.flips) else float(self.flips.mean())

    def ranking(self) -> np.ndarray:
        """How much each item's answer moved: the total variation of the class distribution
        (classification with K logits), else |shift| of the main measure."""
        if not len(self.items):
            return np.zeros(0)
        if self.spec.kind == "classification" and not self.spec.binary:
            return 0.5 * np.abs(np.asarray(self.counterfactual) - np.asarray(self.original)).sum(-1)
        return np.abs(self.shifts[self.main])

    @property
    def moved_what(self) -> str:
        """What ranking() measures, in words."""
        if self.spec.kind == "classification" and not self.spec.binary:
            return "changes of the class distribution (total variation)"
        return f"|shifts| of {self.main}"

    def top(self, k: int = 10) -> list[dict]:
        """The k items whose answer moved most, largest first."""
        moved = self.ranking()
        order = np.argsort(-moved, kind="stable")[:max(0, k)]
        return [self.item_dict(int(i), float(moved[i])) for i in order]

    def item_dict(self, i: int, moved: float) -> dict:
        item = self.items[i]
        return {"template": item.template, "original": list(item.original)[:2 if item.is_pair else 1],
                "counterfactual": list(item.counterfactual)[:2 if item.is_pair else 1],
                "answer_original": answer_text(self.spec, self.original[i]),
                "answer_counterfactual": answer_text(self.spec, self.counterfactual[i]),
                "shift": float(self.shifts[self.main][i]), "moved": moved,
                "flipped": None if self.flips is None else bool(self.flips[i])}

    def to_dict(self, top: int = 10, with_items: bool = True) -> dict:
        d = {"task": self.name, "title": self.spec.title, "input": self.spec.input, "n": len(self.items),
             "main_measure": self.main, "flip_rate": self.flip_rate, "measures": self.summaries,
             "largest_shifts": self.top(top)}
        if with_items:
            d["items"] = [{"template": it.template, "original": list(it.original),
                           "counterfactual": list(it.counterfactual),
                           "shifts": {m: float(v[i]) for m, v in self.shifts.items()},
                           "flipped": None if self.flips is None else bool(self.flips[i])}
                          for i, it in enumerate(self.items)]
        return d


@dataclass
class ProbeResult:
    tasks: list  # TaskProbe, in the model's task order
    templates: str

    def task(self, name: str) -> TaskProbe:
        return next(t for t in self.tasks if t.name == name)

    def to_dict(self, top: int = 10, with_items: bool = True) -> dict:
        return {"templates": self.templates, "tasks": {t.name: t.to_dict(top, with_items) for t in self.tasks}}


def _predict_items(model, tokenizer, spec, items: list[ProbeItem], batch_size: int, device, tick) -> tuple:
    """Raw predictions of the originals and the counterfactuals. An item's two versions share a
    batch: an input the model cannot tell apart gets the very same answer, not one off by padding."""
    import torch
    from .data import Example
    from .evaluate import predict_one_batch
    half = max(1, batch_size // 2)
    orig, cf = [], []
    for s in range(0, len(items), half):
        chunk = items[s:s + half]
        ex = [Example(str(i), *it.original, None) for i, it in enumerate(chunk)] + \
             [Example(str(i), *it.counterfactual, None) for i, it in enumerate(chunk)]
        with torch.inference_mode():
            out = predict_one_batch(model, tokenizer, spec.name, ex, device).float().cpu().numpy()
        orig.append(out[:len(chunk)])
        cf.append(out[len(chunk):])
        tick(len(chunk))
    return np.concatenate(orig), np.concatenate(cf)


def probe_task(spec, items: list[ProbeItem], original: np.ndarray, counterfactual: np.ndarray) -> TaskProbe:
    tp = TaskProbe(spec, items, original, counterfactual)
    before, after = measures(spec, original), measures(spec, counterfactual)
    tp.shifts = {m: after[m] - before[m] for m in before}
    tp.summaries = {m: summarize(v) for m, v in tp.shifts.items()}
    labels = predicted_labels(spec, original)
    if labels is not None:
        tp.flips = labels != predicted_labels(spec, counterfactual)
    return tp


def run_probe(model, tokenizer, items: list[ProbeItem] | None = None, tasks=None, batch_size: int = 64,
              device="cpu", progress=None, templates: str | None = None) -> ProbeResult:
    """Every chosen task (names or definitions; default all of the model's) on every item of its
    input kind (default: the shipped templates, expanded). progress(done, total) after each batch."""
    if items is None:
        items = expand(load_templates(templates))
    specs = [model.cfg.task(t) if isinstance(t, str) else t for t in (tasks or model.cfg.tasks)]
    per_task = [[it for it in items if it.is_pair == spec.is_pair] for spec in specs]
    total, done = sum(map(len, per_task)), 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    was_training = model.training
    model.eval()
    try:
        out = []
        for spec, its in zip(specs, per_task):
            if its:
                o, c = _predict_items(model, tokenizer, spec, its, batch_size, device, tick)
            else:
                o = c = np.zeros((0, spec.num_outputs) if spec.num_outputs > 1 else (0,))
            out.append(probe_task(spec, its, o, c))
    finally:
        model.train(was_training)
    return ProbeResult(out, str(templates or TEMPLATES_FILE))


def probe_text(model, tokenizer, text_a: str, text_b: str | None = None, tasks=None) -> dict:
    """Every chosen task's answer for a typed sentence (or pair) and each of its counterfactuals:
    {"variants": [{"label", "a", "b"}, ...] (the original first), "tasks": {name: {"answers": [one per
    variant], "shifts": {measure: [variant - original, ...]}}}, "skipped": {name: why}}. A sentence task
    reads the first sentence; a pair task needs both."""
    from .evaluate import predict_raw
    from .data import Example
    text_a = (text_a or "").strip()
    text_b = (text_b or "").strip() or None
    if not text_a:
        raise ProbeError("The sentence is empty: type a sentence with a gendered word or a first name.")
    specs = [model.cfg.task(t) if isinstance(t, str) else t for t in (tasks or model.cfg.tasks)]
    variants = [{"label": "original", "a": text_a, "b": text_b}] + counterfactuals(text_a, text_b)
    out, skipped = {}, {}
    for spec in specs:
        if spec.is_pair and text_b is None:
            skipped[spec.name] = "it reads a pair of sentences; give a second sentence to probe it"
            continue
        if not spec.is_pair and len({v["a"] for v in variants}) == 1:
            skipped[spec.name] = "the first sentence has nothing to swap (only the second one has)"
            continue
        ex = [Example(str(i), v["a"], v["b"] if spec.is_pair else None, None) for i, v in enumerate(variants)]
        raw = predict_raw(model, tokenizer, spec.name, ex)
        m = measures(spec, raw)
        out[spec.name] = {"title": spec.title, "answers": [answer_text(spec, r) for r in raw],
                          "values": {k: v.tolist() for k, v in m.items()},
                          "shifts": {k: (v - v[0]).tolist() for k, v in m.items()}, "main_measure": main_measure(spec)}
    return {"variants": variants, "tasks": out, "skipped": skipped}


# ---- text for the terminal ------------------------------------------------------------------

def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def format_summary(result: ProbeResult) -> str:
    """The per-task summary table: one row per measure."""
    head = f"{'task':<10} {'measure':<24} {'n':>5} {'mean':>8} {'mean|d|':>8} {'sd':>7} {'max|d|':>7} " \
           f"{'up/down':>9} {'flips':>6} {'sign p':>7} {'Wilcoxon':>8}"
    rows = [head, "-" * len(head)]
    for t in result.tasks:
        if not t.items:
            rows.append(f"{t.name:<10} (no {'pair' if t.spec.is_pair else 'sentence'} templates)")
            continue
        flips = "-" if t.flip_rate is None else f"{100 * t.flip_rate:.1f}%"
        for m, s in t.summaries.items():
            rows.append(f"{t.name:<10} {m[:24]:<24} {s['n']:>5} {s['mean']:>+8.4f} {s['mean_abs']:>8.4f} "
                        f"{s['sd']:>7.4f} {s['max_abs']:>7.4f} {str(s['up']) + '/' + str(s['down']):>9} "
                        f"{flips:>6} {_p(s['sign_p']):>7} {_p(s['wilcoxon_p']):>8}")
            flips = ""
    return "\n".join(rows)


def format_top(result: ProbeResult, k: int = 10) -> str:
    out = []
    for t in result.tasks:
        if not t.items or k <= 0:
            continue
        out.append(f"\n{t.spec.title} ({t.name}): the {min(k, len(t.items))} largest {t.moved_what}; shift of {t.main}")
        for r in t.top(k):
            flip = "  [label flipped]" if r["flipped"] else ""
            out.append(f"  {r['shift']:+.4f}  {r['template']}{flip}")
            out.append(f"      {' || '.join(r['original'])}  ->  {r['answer_original']}")
            out.append(f"      {' || '.join(r['counterfactual'])}  ->  {r['answer_counterfactual']}")
    return "\n".join(out)


def format_text_probe(r: dict) -> str:
    lines = []
    for v in r["variants"]:
        lines.append(f"{v['label']:>14}: {v['a']}" + (f" || {v['b']}" if v["b"] is not None else ""))
    for name, t in r["tasks"].items():
        lines.append(f"\n{t['title']} ({name}), {t['main_measure']}:")
        for v, ans, d in zip(r["variants"], t["answers"], t["shifts"][t["main_measure"]]):
            lines.append(f"  {v['label']:>14}: {ans}" + ("" if v["label"] == "original" else f"  (shift {d:+.4f})"))
    for name, why in r["skipped"].items():
        lines.append(f"\n{name}: not probed; {why}")
    return "\n".join(lines)
