"""Our own BERT encoder (the CS224N "minBERT" architecture), Hugging Face parameter names.

One screen per idea: config -> unpadding -> embeddings -> self-attention -> layer -> encoder.
Two departures from `modeling_bert.py`, both for speed, neither changing the numbers:
- the fused query/key/value projection (one GEMM instead of three); `load_hf_state_dict` /
  `hf_state_dict` map it to and from the checkpoint's separate `query`, `key` and `value`
  weights, asserting every name and shape on the way;
- padded batches run unpadded outside attention (see `Unpadding`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of "
                             f"num_attention_heads {cfg.num_attention_heads}")
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {cfg.hidden_act!r} is not supported; "
                             f"allowed: {sorted(ACTIVATIONS)}")
        return cfg

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_hf_dict(self) -> dict:
        return {"architectures": ["BertModel"], "model_type": "bert", **asdict(self)}


ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU, as BERT was trained
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class BertOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor  # (B, H)
    attentions: tuple[torch.Tensor, ...] | None  # num_layers x (B, nh, T, T), only if asked


class Unpadding(NamedTuple):
    """Where the real tokens of a padded (B, T) batch are.

    Dynamic padding still leaves about half of a batch of real sentences as padding, and every
    Linear, LayerNorm and dropout of BERT works token by token: run them on the N real tokens,
    (N, H), and scatter back to (B, T, ...) only where attention needs the batch layout. On CPU
    this is most of the encoder's speed-up over transformers.BertModel (docs/benchmarks.md); the
    gathers and scatters cost little next to the GEMMs they shrink.
    """
    idx: torch.Tensor  # (N,) flat positions b * T + t of the real tokens
    B: int
    T: int

    def unpad(self, x):  # (B, T, *rest) -> (N, *rest)
        return x.reshape(self.B * self.T, *x.shape[2:]).index_select(0, self.idx)

    def pad(self, x):  # (N, C) -> (B, T, C), zeros at padding
        out = x.new_zeros(self.B * self.T, x.size(-1)).index_copy_(0, self.idx, x)  # (B*T, C)
        return out.view(self.B, self.T, -1)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids, inputs_embeds=None):  # ids (B, T) or unpadded (N,)
        # inputs_embeds (..., H) stand in for the word-piece embeddings: attributions (mtbert/explain.py)
        # differentiate with respect to them; positions and token types are added as ever
        w = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        x = w + self.position_embeddings(position_ids)  # (..., H)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with one fused Q/K/V projection."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.head_size = cfg.hidden_size // cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # rows: [query; key; value]
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x, mask, u: Unpadding | None, output_attentions=False):
        qkv = self.qkv(x)  # (B, T, 3H), or (N, 3H) when unpadded
        if u is not None:
            qkv = u.pad(qkv)  # (B, T, 3H), zeros at padding (masked out as keys below)
        B, T, _ = qkv.shape
        q, k, v = qkv.view(B, T, 3, self.n_head, self.head_size).unbind(2)  # 3 x (B, T, nh, hs)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        p = self.dropout_p if self.training else 0.0
        # On CPU, SDPA with dropout falls back to its math kernel anyway; the explicit one is as
        # fast or faster (it skips SDPA's fully-masked-row checks). It also yields the probabilities.
        if output_attentions or (p > 0.0 and x.device.type == "cpu"):
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)  # (B, nh, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            y = F.dropout(probs, p, self.training) @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
            probs = None
        y = y.transpose(1, 2)  # (B, T, nh, hs); SDPA's CPU kernel already lays it out so: no copy below
        if u is not None:
            return u.unpad(y).flatten(1), probs  # (N, H)
        return y.reshape(B, T, self.n_head * self.head_size), probs  # (B, T, H)


class BertLayer(nn.Module):
    """Attention -> add & norm -> feed-forward (intermediate, output) -> add & norm (post-LN).

    Everything but the attention itself is position-wise: x is (B, T, H) or unpadded (N, H)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertSelfAttention(cfg)
        self.attention_output = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x, mask, u: Unpadding | None, output_attentions=False):
        a, probs = self.attention(x, mask, u, output_attentions)
        x = self.attention_norm(x + self.dropout(self.attention_output(a)))
        h = self.output(self.act(self.intermediate(x)))  # (..., 4H) -> (..., H)
        x = self.output_norm(x + self.dropout(h))
        return x, probs


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):  # BERT's initialisation, for models trained from scratch (tests)
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None,
                output_attentions=False, inputs_embeds=None) -> BertOutput:
        """last_hidden_state is (B, T, H); at padding it is zeros (callers mask padding anyway),
        except with output_attentions, which runs everything padded, as Hugging Face does, so
        that bertviz sees the attention of every position. The pooler reads position 0: batches
        are padded on the right, so it is always the real [CLS]. inputs_embeds (B, T, H), if given,
        replace the word-piece embeddings of input_ids (which still give the shape)."""
        B, T = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        ids = (input_ids, token_type_ids, torch.arange(T, device=input_ids.device).expand(B, T))  # 3 x (B, T)
        mask = u = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T), built once for all layers
            if not output_attentions:
                u = Unpadding(attention_mask.flatten().nonzero().squeeze(1), B, T)
                ids = tuple(u.unpad(t) for t in ids)  # 3 x (N,)
                if inputs_embeds is not None:
                    inputs_embeds = u.unpad(inputs_embeds)  # (N, H)
        x = self.embeddings(*ids, inputs_embeds=inputs_embeds)  # (B, T, H), or (N, H) when unpadded
        all_probs = []
        for layer in self.layers:
            x, probs = layer(x, mask, u, output_attentions)
            all_probs.append(probs)
        if u is not None:
            x = u.pad(x)  # (B, T, H)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, H), from the [CLS] token
        return BertOutput(x, pooled, tuple(all_probs) if output_attentions else None)

    # ---- checkpoint key map (Hugging Face BertModel layout) -------------------------------

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under Hugging Face BertModel names (fused qkv split back)."""
        out = {}
        for name, t in self.state_dict().items():
            hf = _to_hf_name(name)
            if name.endswith("attention.qkv.weight") or name.endswith("attention.qkv.bias"):
                for part, chunk in zip(("query", "key", "value"), t.chunk(3, dim=0)):
                    out[hf.replace("self.qkv", f"self.{part}")] = chunk.contiguous()
            else:
                out[hf] = t.contiguous()
        return out

    def load_hf_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load Hugging Face BertModel weights; every name and shape is checked."""
        sd = {_strip_prefix(k): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not _ignorable(k)}
        expected = self.hf_state_dict()
        missing = sorted(set(expected) - set(sd))
        unknown = sorted(set(sd) - set(expected))
        if missing or unknown:
            raise KeyError("checkpoint does not match the BERT layout:\n"
                           f"  missing weights ({len(missing)}): {missing[:20]}\n"
                           f"  unknown weights ({len(unknown)}): {unknown[:20]}")
        bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
               for k, v in expected.items() if sd[k].shape != v.shape]
        if bad:
            raise ValueError("checkpoint shapes do not match the config:\n  " + "\n  ".join(bad[:20]))
        ours = {}
        for name in self.state_dict():
            hf = _to_hf_name(name)
            if ".qkv." in name:
                parts = [sd[hf.replace("self.qkv", f"self.{p}")] for p in ("query", "key", "value")]
                ours[name] = torch.cat(parts, dim=0)
            else:
                ours[name] = sd[hf]
        self.load_state_dict(ours, strict=True)


# our name -> HF name, per layer; everything else (embeddings.*) is identical
_LAYER_MAP = {
    "attention.qkv": "attention.self.qkv",
    "attention_output": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_norm": "output.LayerNorm",
}


def _to_hf_name(name: str) -> str:
    if name.startswith("pooler."):
        return "pooler.dense." + name.split(".", 1)[1]
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        module, kind = rest.rsplit(".", 1)
        return f"encoder.layer.{i}.{_LAYER_MAP[module]}.{kind}"
    return name


def _strip_prefix(k: str) -> str:
    # BertForPreTraining checkpoints prefix the encoder with "bert."; the original Google
    # conversions (bert-base-uncased) still name LayerNorm parameters gamma/beta.
    k = k[len("bert."):] if k.startswith("bert.") else k
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k))


def _ignorable(k: str) -> bool:
    # buffers HF stores that carry no learned information, and pre-training heads we never use
    return k.endswith("position_ids") or k.startswith(("cls.", "lm_head."))
