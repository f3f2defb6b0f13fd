"""WordPiece tokenisation through the `tokenizers` library, with dynamic padding."""
from __future__ import annotations

import json
from itertools import chain
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

DEFAULT_MAX_LENGTH = 128


class Tokenizer:
    """Encodes sentences or sentence pairs into padded `input_ids`/`attention_mask`/`token_type_ids`.

    Truncation happens at `max_length` (longest-first for pairs); padding is to the longest item of
    each batch, never to `max_length`, so short batches stay cheap.
    """

    def __init__(self, tk: _HFTokenizer, max_length: int = DEFAULT_MAX_LENGTH):
        self._tk = tk
        self._counter: _HFTokenizer | None = None
        self.max_length = max_length
        self.pad_id = tk.token_to_id("[PAD]") if tk.token_to_id("[PAD]") is not None else 0
        self.vocab_size = tk.get_vocab_size()
        tk.no_padding()
        tk.enable_truncation(max_length)

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int = DEFAULT_MAX_LENGTH,
                    lowercase: bool = True) -> "Tokenizer":
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            return cls(_HFTokenizer.from_file(str(folder / "tokenizer.json")), max_length)
        if (folder / "vocab.txt").is_file():
            return cls(_wordpiece_from_vocab(folder / "vocab.txt", lowercase), max_length)
        raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt")

    def set_max_length(self, max_length: int) -> None:
        self.max_length = max_length
        self._tk.enable_truncation(max_length)

    def tokenize(self, text: str) -> list[str]:
        return self._tk.encode(text).tokens

    def encode_one(self, a: str, b: str | None = None):
        """One sentence, or a pair as [CLS] a [SEP] b [SEP], truncated: a `tokenizers.Encoding`
        (tokens, ids, type_ids) for views that show the tokens themselves."""
        return self._tk.encode(a, b) if b is not None else self._tk.encode(a)

    def count(self, a: str, b: str | None = None) -> int:
        """Tokens of the input before truncation, [CLS]/[SEP] included."""
        if self._counter is None:  # a copy that never truncates, made once
            self._counter = _HFTokenizer.from_str(self._tk.to_str())
            self._counter.no_truncation()
        return len((self._counter.encode(a, b) if b is not None else self._counter.encode(a)).ids)

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Encode a batch: `texts` alone, or `(texts[i], pairs[i])` as `[CLS] a [SEP] b [SEP]`."""
        if pairs is None:
            encs = self._tk.encode_batch(list(texts))
        else:
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} first sentences but {len(pairs)} second sentences")
            encs = self._tk.encode_batch(list(zip(texts, pairs)))
        # one flat copy of all ids scattered under the mask: no tensor per sentence (evaluation
        # encodes tens of thousands at once)
        lengths = torch.tensor([len(e.ids) for e in encs], dtype=torch.long)
        T = int(lengths.max()) if len(encs) else 0
        mask = (torch.arange(T) < lengths[:, None]).long()  # (B, T), right padding
        ids = torch.full((len(encs), T), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(encs), T), dtype=torch.long)
        real = mask.bool()
        ids[real] = torch.tensor(list(chain.from_iterable(e.ids for e in encs)), dtype=torch.long)
        types[real] = torch.tensor(list(chain.from_iterable(e.type_ids for e in encs)), dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def pipeline(self) -> dict:
        """The tokenizer as tokenizer.json holds it, less truncation and padding: those follow max_length,
        which a checkpoint stores apart (two tokenizers with equal pipelines encode every text alike)."""
        spec = json.loads(self._tk.to_str())
        spec.pop("truncation", None), spec.pop("padding", None)
        return spec

    def save(self, folder: str | Path) -> None:
        self._tk.save(str(Path(folder) / "tokenizer.json"))


def _wordpiece_from_vocab(vocab_file: Path, lowercase: bool) -> _HFTokenizer:
    """The BERT uncased pipeline, as `BertTokenizerFast` builds it from a bare vocab.txt."""
    vocab = {}
    for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines()):
        vocab.setdefault(line.rstrip("\n"), i)
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if special not in vocab:
            raise ValueError(f"{vocab_file}: vocabulary has no {special} token")
    tk = _HFTokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True,
                                               handle_chinese_chars=True, strip_accents=None)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tk.decoder = decoders.WordPiece()
    return tk
