"""The multitask model: one shared BERT encoder, three task heads and their losses.

Heads, as in the seed report:
  sst  : dropout -> linear -> 5 logits                      (cross-entropy)
  para : encode a and b separately, dropout, [u; v] -> 1 logit (BCE with logits)
  sts  : hidden->hidden linear on u and v, cosine x 5        (MSE)
Options beyond the seed: mean pooling, richer pair features [u; v; |u-v|; u*v], joint
cross-encoding of pairs ([CLS] a [SEP] b [SEP]), and the seed's failed STS variant
(CosineEmbeddingLoss on labels mapped to +-1).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bert import BertModel

from .config import MODEL_CHOICES as CHOICES
from .config import TASKS


@dataclass
class ModelConfig:
    pooling: str = "cls"
    pair_encoding: str = "separate"
    para_encoding: str | None = None  # per-task overrides of pair_encoding
    sts_encoding: str | None = None
    para_features: str = "concat"  # [u; v] (seed) or [u; v; |u-v|; u*v]
    sts_loss: str = "cosine_mse"
    dropout: float = 0.1
    num_sentiment_classes: int = 5
    # added to the duplicate logit at prediction time only (not in the loss): a decision threshold
    # fitted on dev when the training pairs' label mix differs from the data predicted on
    para_logit_offset: float = 0.0

    def __post_init__(self):
        for name in ("para_encoding", "sts_encoding"):
            if getattr(self, name) not in (None, *CHOICES["pair_encoding"]):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; choose one of "
                                 f"{', '.join(CHOICES['pair_encoding'])} or none (= pair_encoding)")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; "
                                 f"choose one of {', '.join(allowed)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} is not allowed; choose a value in [0, 1)")
        if not math.isfinite(self.para_logit_offset):
            raise ValueError(f"para_logit_offset={self.para_logit_offset} is not allowed; choose a finite number")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def encoding(self, task: str) -> str:
        """How `task` encodes its inputs: sst is always a single sentence; pairs are separate or joint."""
        if task == "sst":
            return "separate"
        return getattr(self, f"{task}_encoding") or self.pair_encoding


class MultitaskBert(nn.Module):
    def __init__(self, encoder: BertModel, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        H = encoder.config.hidden_size
        self.dropout = nn.Dropout(cfg.dropout)
        self.sst_head = nn.Linear(H, cfg.num_sentiment_classes)
        k = 2 if cfg.para_features == "concat" else 4
        self.para_head = nn.Linear(H if cfg.encoding("para") == "joint" else k * H, 1)
        self.sts_head = nn.Linear(H, 1 if cfg.encoding("sts") == "joint" else H)
        for head in self.heads().values():
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        if cfg.encoding("sts") == "separate":
            # start the similarity projection at the identity: cosine of the pretrained embeddings
            nn.init.eye_(self.sts_head.weight)

    def heads(self) -> dict[str, nn.Module]:
        return {"sst": self.sst_head, "para": self.para_head, "sts": self.sts_head}

    # ---- embeddings ------------------------------------------------------------------------

    def embed(self, enc: dict) -> torch.Tensor:
        """Pooled sentence embedding, (B, H)."""
        out = self.encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        if self.cfg.pooling == "cls":
            return out.last_hidden_state[:, 0]
        m = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)  # (B, T, 1)
        return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1.0)

    def embed_pair(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """u, v for a separately encoded pair; both sides go through one encoder call."""
        B = batch["a"]["input_ids"].size(0)
        both = _stack_encodings(batch["a"], batch["b"])
        uv = self.embed(both)  # (2B, H)
        return uv[:B], uv[B:]

    # ---- task outputs ----------------------------------------------------------------------

    def sst_logits(self, batch: dict) -> torch.Tensor:  # (B, 5)
        return self.sst_head(self.dropout(self.embed(batch["enc"])))

    def para_logit(self, batch: dict) -> torch.Tensor:  # (B,)
        if self.cfg.encoding("para") == "joint":
            return self.para_head(self.dropout(self.embed(batch["enc"]))).squeeze(-1)
        u, v = self.embed_pair(batch)
        u, v = self.dropout(u), self.dropout(v)
        feats = [u, v] if self.cfg.para_features == "concat" else [u, v, (u - v).abs(), u * v]
        return self.para_head(torch.cat(feats, dim=-1)).squeeze(-1)

    def sts_score(self, batch: dict) -> torch.Tensor:  # (B,) in [-5, 5] (separate) or [0, 5] (joint)
        if self.cfg.encoding("sts") == "joint":
            return 5.0 * torch.sigmoid(self.sts_head(self.dropout(self.embed(batch["enc"]))).squeeze(-1))
        u, v = self.embed_pair(batch)
        return 5.0 * F.cosine_similarity(self.sts_head(u), self.sts_head(v), dim=-1)

    # ---- losses ----------------------------------------------------------------------------

    def loss(self, task: str, batch: dict) -> torch.Tensor:
        y = batch["labels"]
        if task == "sst":
            return F.cross_entropy(self.sst_logits(batch), y)
        if task == "para":
            return F.binary_cross_entropy_with_logits(self.para_logit(batch), y.float())
        if task == "sts":
            if self.cfg.sts_loss == "cosine_embedding" and self.cfg.encoding("sts") == "separate":
                u, v = self.embed_pair(batch)
                target = torch.where(y.float() >= 2.5, 1.0, -1.0)  # the seed's +-1 mapping
                return F.cosine_embedding_loss(self.sts_head(u), self.sts_head(v), target)
            return F.mse_loss(self.sts_score(batch).float(), y.float())
        raise ValueError(f"task={task!r} is not allowed; choose one of {', '.join(TASKS)}")

    # ---- predictions -----------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, task: str, batch: dict) -> torch.Tensor:
        """sst: class probabilities; para: probability of duplicate (offset applied); sts: score clipped to 0..5."""
        if task == "sst":
            return self.sst_logits(batch).softmax(-1)
        if task == "para":
            return torch.sigmoid(self.para_logit(batch) + self.cfg.para_logit_offset)
        if task == "sts":
            return self.sts_score(batch).clamp(0.0, 5.0)
        raise ValueError(f"task={task!r} is not allowed; choose one of {', '.join(TASKS)}")


def _stack_encodings(a: dict, b: dict) -> dict:
    """Concatenate two padded encodings along the batch, padding the shorter one."""
    T = max(a["input_ids"].size(1), b["input_ids"].size(1))
    return {k: torch.cat([F.pad(a[k], (0, T - a[k].size(1))), F.pad(b[k], (0, T - b[k].size(1)))])
            for k in ("input_ids", "attention_mask", "token_type_ids")}
