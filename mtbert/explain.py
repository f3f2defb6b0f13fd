"""Why the model answers as it does: Integrated Gradients over the word-piece embeddings, and
attention rollout.

Integrated Gradients (Sundararajan et al. 2017): for an output f, an input x and a baseline x',

    IG_i(x) = (x_i - x'_i) * integral_0^1 df/dx_i (x' + a (x - x')) da

and the attributions add up to f(x) - f(x') (completeness), up to the error of the quadrature.
x are the word-piece embeddings of the input (T, H); x' the same with every non-special token's
embedding replaced by the [PAD] token's ([CLS] and [SEP] stay, positions and token types are
added by the encoder as ever). A token's attribution is its row of IG summed over H. The
integral is a Gauss-Legendre rule by default (captum's default too): f is a probability, a
sigmoid or a softmax of logits that is flat in places and steep in others, and a Gauss rule of n
nodes integrates polynomials of degree 2n - 1 exactly where a Riemann sum of n steps has an
error of order 1/n (docs/attributions.md has the measurements).

Attention rollout (Abnar & Zuidema 2020): with A_l a layer's attention averaged over its heads,
A~_l = 0.5 A_l + 0.5 I (the residual connection), rows renormalised, rollout = A~_L ... A~_1:
how much each output position draws on each input position through all layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import Example, make_batch

DEFAULT_STEPS = 64  # Gauss-Legendre nodes: docs/attributions.md has the completeness measured
DEFAULT_BATCH = 32  # path points per forward pass
METHODS = ("gausslegendre", "riemann_middle")


@dataclass
class Attribution:
    """Integrated Gradients of one task output for one input.

    tokens/attributions: one row per sentence shown: one for a sentence, two for a pair (a
    separately encoded pair: each side's own encoding, [CLS] and [SEP] included; a jointly
    encoded one: [CLS] a [SEP] and b [SEP]; a pair read both ways (cross_concat, cosine_cross): each
    side's own encoding, each word piece's attribution in the joint read added to it). Special tokens
    keep their embeddings in the baseline, so their attribution is 0."""
    task: str
    output: str  # what f is, in words
    target: int | None  # the class whose probability is explained (classification), else None
    tokens: list[list[str]]
    attributions: list[np.ndarray]  # float64, the same lengths as tokens
    f_x: float
    f_baseline: float
    encoding: str  # sentence | joint | separate | both
    steps: int
    method: str
    note: str | None = None  # set by the studio: the input was cut

    @property
    def total(self) -> float:
        return float(sum(a.sum() for a in self.attributions))

    @property
    def delta(self) -> float:
        return self.f_x - self.f_baseline

    @property
    def gap(self) -> float:
        """|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)|: completeness."""
        err = abs(self.total - self.delta)
        if self.delta == 0.0:
            return 0.0 if err == 0.0 else float("inf")
        return err / abs(self.delta)


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes a_k in [0, 1] and weights w_k of the rule: integral_0^1 g(a) da ~ sum_k w_k g(a_k)
    (captum's definitions of the same names)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"steps={steps!r} is not allowed; choose an integer >= 2")
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]
        return 0.5 * (x + 1.0), 0.5 * w
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    raise ValueError(f"method={method!r} is not allowed; choose one of {', '.join(METHODS)}")


def integrate_gradients(f, x: list[torch.Tensor], x0: list[torch.Tensor], steps: int = DEFAULT_STEPS,
                        batch: int = DEFAULT_BATCH, method: str = "gausslegendre") -> list[torch.Tensor]:
    """IG of f (n inputs of shape (n, T_i, H) -> (n,) outputs) at x (T_i, H each) from baseline x0."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} is not allowed; choose a positive integer")
    alphas, weights = (torch.tensor(v, dtype=x[0].dtype, device=x[0].device) for v in quadrature(method, steps))
    avg_grad = [torch.zeros_like(xi) for xi in x]  # sum_k w_k df/dx(x' + a_k (x - x'))
    for s in range(0, steps, batch):
        a = alphas[s:s + batch].view(-1, 1, 1)  # (n, 1, 1)
        path = [(x0i + a * (xi - x0i)).requires_grad_() for xi, x0i in zip(x, x0)]  # (n, T_i, H)
        grads = torch.autograd.grad(f(*path).sum(), path)  # each example's output depends on its row only
        w = weights[s:s + batch].view(-1, 1, 1)
        avg_grad = [acc + (w * g).sum(0) for acc, g in zip(avg_grad, grads)]
    return [(xi - x0i) * g for xi, x0i, g in zip(x, x0, avg_grad)]  # (T_i, H)


def output_function(model, task: str, batch: dict, target: int | None = None):
    """f(*inputs_embeds) -> (n,) the explained output for n copies of `batch`'s one input with its
    word-piece embeddings replaced, through the same MultitaskBert.output as predictions:
    classification: softmax probability of `target`; binary: P(class 1), the decision offset added
    to the logit as MultitaskBert.predict does; regression: the score (not clipped to the range:
    clipping would zero the gradient outside it)."""
    spec = model.cfg.task(task)
    sides = [k for k in ("enc", "a", "b") if k in batch]  # the encoder inputs of the task's pair encoding
    offset = model.cfg.logit_offset(task)

    def f(*embeds: torch.Tensor) -> torch.Tensor:
        n = embeds[0].size(0)
        b = {k: {**{name: t.expand(n, -1) for name, t in batch[k].items()}, "inputs_embeds": e}
             for k, e in zip(sides, embeds)}
        out = model.output(task, b).float()
        if spec.loss == "ce":
            return out.softmax(-1)[:, target]
        if spec.binary:
            return torch.sigmoid(out + offset)
        return out

    return f


def check_target(spec, target) -> int | None:
    """The class to explain as an index (a label name or an index is accepted); None: the predicted
    class (classification) or the only output (binary, regression)."""
    if target is None:
        return None
    if spec.kind == "classification" and spec.loss == "ce":
        names = [spec.label_name(k) for k in range(spec.classes)]
        if target in names:
            return names.index(target)
        if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < spec.classes:
            return target
        raise ValueError(f"target={target!r} is not allowed for task {spec.name}; choose a class: "
                         f"0..{spec.classes - 1} or one of {', '.join(map(repr, names))}")
    if spec.binary and target in (1, spec.label_name(1)):
        return None
    what = f"the probability of {spec.label_name(1)!r}" if spec.binary else "its score"
    raise ValueError(f"target={target!r} is not allowed for task {spec.name}: it explains {what} only; "
                     "leave target unset")


def _added(own: np.ndarray, joint: np.ndarray, skip: int) -> np.ndarray:
    """A sentence's own-read attributions ([CLS] w1 .. wn [SEP]) plus its joint-read ones from position
    `skip` on ([CLS] w1 .. wk [SEP] for the first sentence, w1 .. wk [SEP] for the second, k <= n when the
    pair was cut): position by position over the word pieces both reads saw. The joint read's last
    position is its [SEP], whose attribution is 0 (special tokens keep their embeddings), so no
    attribution is lost and the sum is unchanged."""
    out, k = own.copy(), len(joint) - 1  # the word pieces of the joint read, without its [SEP]
    out[skip:skip + k] += joint[:k]
    return out


def describe_output(model, spec, target: int | None) -> str:
    # an order-free task answers with the mean over both orders; what is explained is one of them
    order = " for the pair in the order given" if model.cfg.both_orders(spec.name) else ""
    return _output_words(model, spec, target) + order


def _output_words(model, spec, target: int | None) -> str:
    if spec.kind == "regression":
        lo, hi = spec.range
        return f"the {spec.title} score ({lo:g}–{hi:g}; not clipped)"
    if spec.binary:
        off = model.cfg.logit_offset(spec.name)
        return f"the probability of {spec.label_name(1)!r}" + (
            f" (decision offset {off:+.3f} added to the logit)" if off else "")
    return f"the probability of {spec.label_name(target)!r}"


def integrated_gradients(model, tokenizer, task: str, text_a: str, text_b: str | None = None, target=None,
                         steps: int = DEFAULT_STEPS, batch: int = DEFAULT_BATCH,
                         method: str = "gausslegendre") -> Attribution:
    """Token attributions of `task`'s output for one input (see the module's docstring)."""
    spec = model.cfg.task(task)
    if spec.is_pair and text_b is None:
        raise ValueError(f"task {task} reads a pair of sentences; give the second one too")
    target = check_target(spec, target)
    quadrature(method, steps)  # a bad method or step count fails before any model work
    text_b = text_b if spec.is_pair else None
    enc_batch = make_batch(spec, [Example("0", text_a, text_b, None)], tokenizer)
    device = next(model.parameters()).device
    enc_batch = {k: {n: t.to(device) for n, t in enc_batch[k].items()} for k in ("enc", "a", "b") if k in enc_batch}
    encoding = spec.pair_encoding if spec.is_pair else "sentence"
    # one encoding per encoder input of the batch, in its order
    one = {"enc": (text_a, text_b), "a": (text_a, None), "b": (text_b, None)}
    encodings = [tokenizer.encode_one(*one[k]) for k in enc_batch]
    E = model.encoder.embeddings.word_embeddings
    pad = E.weight[tokenizer.pad_id].detach()
    x, x0 = [], []
    for side, e in zip(enc_batch.values(), encodings):
        xi = E(side["input_ids"][0]).detach()  # (T, H)
        special = torch.tensor(e.special_tokens_mask, dtype=torch.bool, device=device)[:, None]  # (T, 1)
        x.append(xi)
        x0.append(torch.where(special, xi, pad))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if spec.loss == "ce" and target is None:  # the predicted class
                with torch.no_grad():
                    target = int(model.output(task, enc_batch).argmax(-1)[0])
            f = output_function(model, task, enc_batch, target)
            with torch.no_grad():
                fb, fx = f(*[torch.stack([x0i, xi]) for xi, x0i in zip(x, x0)]).tolist()  # at a = 0 and a = 1
            ig = integrate_gradients(f, x, x0, steps, batch, method)
    finally:
        model.train(was_training)
    per_token = [g.sum(-1).double().cpu().numpy() for g in ig]  # (T_i,)
    tokens = [list(e.tokens) for e in encodings]
    if spec.reads_jointly:  # the joint read as two rows: [CLS] a [SEP] | b [SEP]
        b0 = encodings[0].type_ids.index(1) if 1 in encodings[0].type_ids else len(tokens[0])
        tokens = [tokens[0][:b0], tokens[0][b0:]] + tokens[1:]
        per_token = [per_token[0][:b0], per_token[0][b0:]] + per_token[1:]
    if encoding == "both":  # each sentence's row: its word pieces' attributions in the joint read plus its own
        tokens, per_token = tokens[2:], [_added(per_token[2], per_token[0], 0), _added(per_token[3], per_token[1], 1)]
    return Attribution(task, describe_output(model, spec, target), target, tokens, per_token, fx, fb, encoding,
                       steps, method)


def attention_rollout(attentions) -> np.ndarray:
    """Rollout (T, T) of per-layer attentions, each (heads, T, T) or a batch of one (1, heads, T, T):
    row i says how much position i's output draws on each input position; rows sum to 1."""
    rollout = None
    for A in attentions:
        A = A.detach().float().cpu().numpy() if torch.is_tensor(A) else np.asarray(A)
        A = A.astype(np.float64)
        A = A[0] if A.ndim == 4 else A
        if A.ndim != 3 or A.shape[1] != A.shape[2]:
            raise ValueError(f"an attention of shape {A.shape} is not allowed; expected (heads, T, T)")
        A = 0.5 * A.mean(0) + 0.5 * np.eye(A.shape[-1])  # the residual stream carries the token itself
        A = A / A.sum(-1, keepdims=True)
        rollout = A if rollout is None else A @ rollout
    if rollout is None:
        raise ValueError("attention_rollout needs the attention of at least one layer")
    return rollout
