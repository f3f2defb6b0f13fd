"""The playground's logic, without Streamlit: load a checkpoint, score a sentence or a pair,
look at attention (bertviz views that work offline, and plain heatmaps), predict a whole file.

Every input goes through `check_text` first: empty or whitespace-only input is an InputError with
a message for the user; an input longer than the model reads is cut, and the result says so.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import string
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..checkpoint import download_from_hub, load_base, load_checkpoint
from ..explain import DEFAULT_STEPS as DEFAULT_IG_STEPS
from ..explain import attention_rollout
from ..lora import per_task_adapters, task_adapters
from ..model import ModelConfig, MultitaskBert
from ..quantize import check_precision, for_inference
from ..tasks import specs_of_model_config
from .checkpoints import CheckpointRef, list_checkpoints, safe_checkpoint_path
from .environment import BASE_MODELS
from .jobs import BackgroundJob

SST_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")
MAX_CHARS = 100_000  # beyond this even tokenising is wasted work: the model reads <= 512 tokens


class InputError(ValueError):
    """Input the model cannot take; the message is meant for the user as is."""


# ---- models ---------------------------------------------------------------------------------

# the picker's last entry: a checkpoint folder the user types (checked by safe_checkpoint_path)
TYPED_PATH = CheckpointRef("", "", "path", "another checkpoint folder (type its path)")


def offered_hub_checkpoints() -> list[str]:
    """The Hub repo ids this deployment offers (MTBERT_HUB_CHECKPOINT); none when it is unset or
    malformed (checkpoint_choices reports a malformed one)."""
    from ..hub import HubError, hub_checkpoints

    try:
        return hub_checkpoints()
    except HubError:
        return []


def checkpoint_choices() -> tuple[list[CheckpointRef], str | None]:
    """What the playground offers, and a problem to show (a malformed MTBERT_HUB_CHECKPOINT) or
    None: the Hub checkpoints the deployment names first, then the local ones
    (checkpoints.list_checkpoints), then TYPED_PATH."""
    from ..hub import HubError, hub_checkpoints

    try:
        hub_ids, problem = hub_checkpoints(), None
    except HubError as e:
        hub_ids, problem = [], str(e)
    hub = [CheckpointRef(r, r, "hub", f"{r} (Hugging Face Hub)") for r in hub_ids]
    return hub + list_checkpoints() + [TYPED_PATH], problem


def load_model(ref: str, device: str = "cpu", token: str | None = None,
               precision: str = "fp32") -> tuple[MultitaskBert, object, dict]:
    """(model, tokenizer, meta) for a checkpoint name/path, one of the offered Hub checkpoints,
    or a plain base model name.

    A folder loads only from inside checkpoints/ or the runs folder (safe_checkpoint_path); a Hub
    repo id only when MTBERT_HUB_CHECKPOINT names it (fetched from the Hub even if a local folder
    happens to carry the same name; `token` for a private one, else HF_TOKEN). A plain base
    model gets freshly initialised heads: meta['untrained_heads'] is True and its task outputs
    mean nothing (attention and embeddings are the pretrained ones).
    precision: the encoder's arithmetic (mtbert.quantize): fp32, or int8 / bf16 for faster answers
    that differ slightly; meta['precision'] says which."""
    check_precision(precision)
    model, tok, meta = _load_fp32(ref, device, token)
    meta["precision"] = precision
    return for_inference(model, precision, copy_model=False, tokenizer=tok), tok, meta


def _load_fp32(ref: str, device: str, token: str | None) -> tuple[MultitaskBert, object, dict]:
    if ref in BASE_MODELS:
        encoder, tok = load_base(ref)
        with torch.random.fork_rng():  # the same untrained heads every time, global RNG untouched
            torch.manual_seed(0)
            model = MultitaskBert(encoder, ModelConfig())
        meta = {"base_model": ref, "untrained_heads": True, "metrics": {}, "path": ref}
        return model.to(device).eval(), tok, meta
    if ref in offered_hub_checkpoints():
        model, tok, meta = load_checkpoint(download_from_hub(ref, token=token), device=device)
        meta["hub_id"] = ref
    else:
        model, tok, meta = load_checkpoint(safe_checkpoint_path(ref), device=device)
    meta["untrained_heads"] = False
    return model, tok, meta


# describe_model's words for the dev metrics that mtbert.evaluate and the trainer write
# (docs/run-folder.md): each main score, with the details that go in parentheses after it; a
# template may name another key (shown with it, not again); a key found nowhere here is shown as is
METRIC_WORDS = {
    "para_acc": ("Quora accuracy {:.3f}", {
        "para_acc_heldout": "{:.3f} on the {para_heldout_examples:,} pairs the threshold never saw",
        "para_acc_uncalibrated": "{:.3f} at the plain 0.5 threshold"}),
    "sst_acc": ("SST accuracy {:.3f}", {}),
    "sts_corr": ("STS Pearson {:.3f}", {"sts_spearman": "Spearman {:.3f}"}),
    "average": ("average {:.3f}", {}),
}
UNWORDED_METRICS = ("para_logit_offset",)  # the fitted threshold itself: the model applies it, no score


def _metric_phrase(template: str, key: str, values: dict, shown: set) -> str:
    try:
        text = template.format(values[key], **values)
    except (KeyError, ValueError):  # a detail it names is missing: say the value alone
        text = f"{key.replace('_', ' ')} {_metric_value(values[key])}"
    else:
        shown.update(f for _, f, _, _ in string.Formatter().parse(template) if f)
    shown.add(key)
    return text


def _metric_value(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:.3f}"


def describe_metrics(metrics: dict, specs=()) -> str:
    """A checkpoint's scores in words: "Quora accuracy 0.790 (0.789 on the 19,212 pairs the
    threshold never saw, …), SST accuracy 0.395, …"; counts as integers with thousands separators.
    A metric of another task (`specs`: the checkpoint's definitions) is named by its title."""
    values = {k: v for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    parts, shown = [], set(UNWORDED_METRICS)
    for key, (template, details) in METRIC_WORDS.items():
        if key in values:
            extra = [_metric_phrase(t, k, values, shown) for k, t in details.items() if k in values]
            parts.append(_metric_phrase(template, key, values, shown) + (f" ({', '.join(extra)})" if extra else ""))
    titles = {spec.metric_key(m): spec.metric_title(m) for spec in specs for m in spec.metrics}
    parts += [f"{titles.get(k) or k.replace('_', ' ')} {_metric_value(v)}" for k, v in values.items() if k not in shown]
    return ", ".join(parts)


def base_label(base) -> str:
    """A base model as a caption names it: a registered name as it is; a base given as a local folder
    by the folder's name, since its full path is long and says more about the machine than the model."""
    base = str(base)
    return f"{Path(base).name} (a local folder)" if os.path.isabs(base) or Path(base).is_dir() else base


def describe_model(meta: dict) -> str:
    if meta.get("untrained_heads"):
        return (f"{meta.get('base_model')}: the plain pretrained encoder with UNTRAINED task heads; "
                "its sentiment, paraphrase and similarity outputs are random, not predictions")
    dev = (meta.get("metrics") or {}).get("dev") or {}
    try:
        specs = specs_of_model_config(meta.get("model") or {})
    except ValueError:
        specs = []
    scores = describe_metrics(dev, specs) if isinstance(dev, dict) else ""
    hub = f"{meta['hub_id']} from the Hugging Face Hub: " if meta.get("hub_id") else ""
    return hub + f"base {base_label(meta.get('base_model'))}, {meta.get('model', {}).get('pooling', '?')} pooling" + (
        f"; dev: {scores}" if scores else "")


# ---- input checks ---------------------------------------------------------------------------

def check_text(text, what: str = "sentence") -> str:
    if text is None or not str(text).strip():
        raise InputError(f"The {what} is empty: type some text first." if not text else
                         f"The {what} is only whitespace: type some words.")
    text = str(text).strip()
    if len(text) > MAX_CHARS:
        raise InputError(f"The {what} is {len(text):,} characters long; at most {MAX_CHARS:,} are accepted "
                         "(the model reads only its first few hundred tokens anyway).")
    return text


def token_count(tokenizer, a: str, b: str | None = None) -> int:
    """Tokens of the input before truncation, [CLS]/[SEP] included."""
    return tokenizer.count(a, b)


def truncation_note(tokenizer, texts: dict[str, str], joint: bool = False) -> str | None:
    """A visible note when the model will not read all of the input, else None."""
    limit = tokenizer.max_length
    if joint and len(texts) == 2:
        (na, a), (nb, b) = texts.items()
        n = token_count(tokenizer, a, b)
        return (f"The pair is {n} tokens; the model reads only {limit}, so the longer sentence "
                f"was cut.") if n > limit else None
    long = {name: n for name, t in texts.items() if (n := token_count(tokenizer, t)) > limit}
    if not long:
        return None
    return "; ".join(f"The {name} is {n} tokens" for name, n in long.items()) + (
        f"; the model reads only the first {limit} tokens, the rest was cut.")


# ---- task outputs ---------------------------------------------------------------------------

def sentiment(model, tokenizer, text: str) -> dict:
    """5-class distribution for one sentence."""
    from ..data import Example, make_batch

    _require(model, "sst")
    text = check_text(text)
    batch = make_batch(model.cfg.task("sst"), [Example("0", text, None, None)], tokenizer)
    probs = model.predict("sst", batch)[0].float().tolist()
    best = max(range(len(probs)), key=probs.__getitem__)
    return {"probs": probs, "labels": list(SST_LABELS), "label": best, "label_name": SST_LABELS[best],
            "note": truncation_note(tokenizer, {"sentence": text})}


def pair_scores(model, tokenizer, a: str, b: str) -> dict:
    """Paraphrase probability and similarity 0..5 for a sentence pair."""
    from ..data import Example
    from ..evaluate import predict_raw

    _require(model, "para", "sts")
    a, b = check_text(a, "first sentence"), check_text(b, "second sentence")
    ex = [Example("0", a, b, None)]
    out, notes = {}, []
    for task, key in (("para", "paraphrase"), ("sts", "similarity")):
        out[key] = float(predict_raw(model, tokenizer, task, ex)[0])  # as evaluation answers (both orders, ...)
        note = truncation_note(tokenizer, {"first sentence": a, "second sentence": b}, joint=model.cfg.task(task).reads_jointly)
        if note and note not in notes:
            notes.append(note)
    return {**out, "note": " ".join(notes) or None}


def _require(model, *tasks: str) -> None:
    missing = [t for t in tasks if t not in model.cfg.names]
    if missing:
        raise InputError(f"This checkpoint has no {', '.join(missing)} task; its tasks: {', '.join(model.cfg.names)}")


def task_answer(model, tokenizer, task: str, a: str, b: str | None = None) -> dict:
    """One task's answer for one input (mtbert.evaluate.predict_text), the input checked first and a
    note added when the model cannot read all of it."""
    from ..evaluate import predict_text

    spec = model.cfg.task(task)
    a, b, texts = _task_inputs(spec, a, b)
    r = predict_text(model, tokenizer, task, a, b)
    return {**r, "note": truncation_note(tokenizer, texts, joint=spec.reads_jointly)}


def _task_inputs(spec, a: str, b: str | None) -> tuple[str, str | None, dict[str, str]]:
    """A task's input checked (check_text): (a, b, texts by the names the messages give them)."""
    if spec.is_pair:
        a, b = check_text(a, "first sentence"), check_text(b, "second sentence")
        return a, b, {"first sentence": a, "second sentence": b}
    a = check_text(a)
    return a, None, {"sentence": a}


def describe_task(spec) -> str:
    """What a task reads and predicts, in words, for its panel."""
    reads = "a pair of sentences" if spec.is_pair else "one sentence"
    if spec.kind == "regression":
        gives = f"a score from {spec.range[0]:g} to {spec.range[1]:g}"
    elif spec.binary:
        gives = f"the probability of {spec.label_name(1)!r}"
    else:
        gives = f"one of {spec.classes} classes" + (f" ({', '.join(map(str, spec.label_names))})"
                                                    if spec.label_names else "")
    return f"`{spec.name}` reads {reads} and predicts {gives}."


def shared_tasks(models: list) -> list:
    """The task definitions to show panels for: the first checkpoint's tasks, then any task only a
    compared checkpoint has (each panel answers with the checkpoints that have its task)."""
    seen, out = set(), []
    for model in models:
        for spec in model.cfg.tasks:
            if spec.name not in seen:
                seen.add(spec.name)
                out.append(spec)
    return out


# ---- opened from elsewhere ------------------------------------------------------------------

PREFILL_KEY = "playground_prefill"  # session state: {"checkpoint": path, "task": name, "a": text, "b": text | None}


def prefill(checkpoint: str, task: str, a: str, b: str | None = None) -> dict:
    """What another page stores under PREFILL_KEY before it switches to the Playground."""
    return {"checkpoint": str(checkpoint), "task": task, "a": a, "b": b}


def apply_prefill(state, fill: dict | None, refs: list) -> None:
    """Put a prefill into the Playground's widgets (`state`: st.session_state or any dict): the
    checkpoint picked (a folder not on the list is typed), the task's inputs filled (on the Tasks
    tab and the Why tab), and the task's answer requested once (`<task>_auto`)."""
    if not fill:
        return
    ref = next((r for r in refs if r.path == fill["checkpoint"] and r.kind != "path"), None)
    if ref is None:
        ref = next(r for r in refs if r.kind == "path")
        state["ckpt_a_path"] = fill["checkpoint"]
    state["ckpt_a"] = ref
    state["compare"] = False
    task = fill["task"]
    state["why_task"] = task  # the Why tab: the same example, one click from its token attributions
    state.pop("why_result", None)
    for prefix in (task, "why"):
        if fill.get("b") is None:
            state[f"{prefix}_text"] = fill["a"]
        else:
            state[f"{prefix}_a"], state[f"{prefix}_b"] = fill["a"], fill["b"]
    state.pop(f"{task}_result", None)
    state[f"{task}_auto"] = True


# ---- attention ------------------------------------------------------------------------------

def needs_task(model) -> bool:
    """Whether the encoder reads an input differently for each task (LoRA adapters per task), so
    that a view of the encoder alone (attention) must name the task."""
    return per_task_adapters(model)


@dataclass
class AttentionView:
    tokens: list[str]
    attentions: tuple  # num_layers x (1, heads, L, L)
    sentence_b_start: int | None = None
    note: str | None = None

    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    @property
    def num_heads(self) -> int:
        return self.attentions[0].size(1)


@torch.inference_mode()
def attention(model, tokenizer, a: str, b: str | None = None, task: str | None = None) -> AttentionView:
    """Per-layer attention of the encoder for a sentence, or a pair read jointly as
    [CLS] a [SEP] b [SEP] (sentence_b_start: the index of b's first token). `task`: whose LoRA
    adapters the encoder reads with, for a checkpoint with adapters per task (needs_task)."""
    if needs_task(model) and task not in model.cfg.names:
        raise InputError("This checkpoint has its own LoRA adapters for each task (lora_per_task), so its attention "
                         f"differs by task: pick one of {', '.join(model.cfg.names)}.")
    a = check_text(a, "first sentence" if b is not None else "sentence")
    if b is not None:
        b = check_text(b, "second sentence")
    enc = tokenizer.encode_one(a, b)
    ids = torch.tensor([enc.ids])
    types = torch.tensor([enc.type_ids])
    encoder = getattr(model, "encoder", model)
    with task_adapters(model, task):
        out = encoder(ids, torch.ones_like(ids), types, output_attentions=True)
    b_start = enc.type_ids.index(1) if b is not None and 1 in enc.type_ids else None
    texts = {"first sentence": a, "second sentence": b} if b is not None else {"sentence": a}
    return AttentionView(list(enc.tokens), tuple(x.float().cpu() for x in out.attentions), b_start,
                         truncation_note(tokenizer, texts, joint=b is not None))


def attention_heatmap(view: AttentionView, layer: int, head: int):
    if not (0 <= layer < view.num_layers and 0 <= head < view.num_heads):
        raise InputError(f"layer must be 0..{view.num_layers - 1} and head 0..{view.num_heads - 1}")
    return _token_heatmap(view.attentions[layer][0, head].tolist(), view.tokens,
                          f"Layer {layer}, head {head}: rows attend to columns", zmax=1)


def _token_heatmap(m: list, tokens: list[str], title: str, zmax: float):
    import plotly.graph_objects as go

    idx = list(range(len(tokens)))  # positions, not token strings: repeated tokens stay apart
    fig = go.Figure(go.Heatmap(z=m, x=idx, y=idx, colorscale="Blues", zmin=0, zmax=zmax,
                               hovertemplate="query %{y}: %{customdata[0]}<br>key %{x}: %{customdata[1]}"
                                             "<br>weight %{z:.3f}<extra></extra>",
                               customdata=[[[tokens[i], tokens[j]] for j in idx] for i in idx]))
    ticks = dict(tickmode="array", tickvals=idx, ticktext=tokens)
    fig.update_layout(title=title,
                      xaxis=dict(title="key (attended to)", tickangle=-60, **ticks),
                      yaxis=dict(title="query", autorange="reversed", **ticks),
                      height=max(360, 18 * len(idx) + 160), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def rollout(view: AttentionView):
    """Attention rollout of a view's layers (mtbert.explain.attention_rollout), (T, T)."""
    return attention_rollout(view.attentions)


def rollout_heatmap(view: AttentionView):
    """The rollout as the per-head heatmaps show attention: row i draws on column j through all layers.
    The colour scale ends at the largest weight: rollout spreads out, a 0..1 scale would show little."""
    r = rollout(view)
    return _token_heatmap(r.tolist(), view.tokens, f"Attention rollout over {view.num_layers} layers",
                          zmax=float(r.max()))


def rollout_cls_figure(view: AttentionView):
    """The [CLS] row of the rollout: what the pooled [CLS] output draws on, token by token."""
    import plotly.graph_objects as go

    row = rollout(view)[0]
    idx = list(range(len(view.tokens)))
    fig = go.Figure(go.Bar(x=idx, y=row.tolist(), customdata=view.tokens, marker_color="#1f77b4",
                           hovertemplate="%{x}: %{customdata}<br>share %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"Rollout of {view.tokens[0]}: what position 0 draws on",
                      xaxis=dict(tickmode="array", tickvals=idx, ticktext=view.tokens, tickangle=-60),
                      yaxis=dict(title="share", rangemode="tozero"),
                      height=320, margin=dict(l=10, r=10, t=40, b=10))
    return fig


# ---- attributions (Integrated Gradients) ------------------------------------------------------

COMPLETENESS_TOLERANCE = 0.01  # a larger relative gap gets a hint to raise the steps


def attribution(model, tokenizer, task: str, a: str, b: str | None = None, target=None,
                steps: int = DEFAULT_IG_STEPS):
    """Integrated Gradients of a task's output for one input (mtbert.explain.integrated_gradients),
    the input checked first; `note` says when the model could not read all of it."""
    from ..explain import integrated_gradients

    spec = model.cfg.task(task)
    a, b, texts = _task_inputs(spec, a, b)
    try:
        attr = integrated_gradients(model, tokenizer, task, a, b, target=target, steps=steps)
    except ValueError as e:  # a target or a step count the task does not take
        raise InputError(str(e)) from None
    attr.note = truncation_note(tokenizer, texts, joint=spec.reads_jointly)
    return attr


ATTRIBUTION_RGB = {"negative": (220, 38, 38), "positive": (22, 163, 74)}  # red, green


def attribution_html(attr) -> str:
    """The tokens coloured by attribution: green positive, red negative, opacity |attribution| / the
    largest |attribution| of the input; a pair as two rows. The exact value is each token's tooltip."""
    import html

    scale = max((float(abs(v).max()) for v in attr.attributions if len(v)), default=0.0) or 1.0
    rows = []
    for tokens, values in zip(attr.tokens, attr.attributions):
        spans = []
        for t, v in zip(tokens, values):
            r, g, b = ATTRIBUTION_RGB["positive" if v >= 0 else "negative"]
            text = html.escape(t).replace("$", "&#36;")  # no markdown maths inside the page's HTML
            spans.append(f'<span class="mtbert-token" title="{v:+.6f}" data-attribution="{v:.9g}" '
                         f'style="background: rgba({r}, {g}, {b}, {abs(v) / scale:.3f}); padding: 1px 3px; '
                         f'margin: 1px; border-radius: 3px; display: inline-block">{text}</span>')
        rows.append('<div style="line-height: 1.9">' + "".join(spans) + "</div>")
    return '<div class="mtbert-attribution">' + "".join(rows) + "</div>"


def completeness_caption(attr) -> str:
    return (f"attributions sum to {attr.total:.3f}; f(x) − f(baseline) = {attr.delta:.3f} "
            f"(gap {100 * attr.gap:.1f} %)")


# ---- bertviz, offline ------------------------------------------------------------------------

# d3 and jQuery ship inside the package (copied from npm, see manifest.json), so the views draw
# with no CDN and no extra install step
JS_DIR = Path(__file__).resolve().parents[1] / "static" / "js"
JS_MANIFEST = json.loads((JS_DIR / "manifest.json").read_text(encoding="utf-8"))["files"]
JS_FILES = tuple(f["name"] for f in JS_MANIFEST if "license_file" in f)  # the scripts, in inlining order
JS_ENV = "MTBERT_BERTVIZ_JS"  # optional: a folder with other copies of the same files


def js_dir() -> Path:
    """The folder d3 and jQuery are inlined from: $MTBERT_BERTVIZ_JS when set (it must hold
    JS_FILES), else the copies shipped in mtbert/static/js, checked against their manifest."""
    env = os.environ.get(JS_ENV)
    if env:
        folder = Path(env).expanduser()
        missing = [f for f in JS_FILES if not (folder / f).is_file()]
        if missing:
            raise InputError(f"{JS_ENV}={env}: missing {', '.join(missing)} there; set it to a folder "
                             f"holding {' and '.join(JS_FILES)}, or unset it to use the copies shipped with mtbert")
        return folder
    # keyed on size and mtime: the hashes are computed once, yet a file changed later is caught
    _check_shipped_js(tuple(_stat(JS_DIR / f["name"]) for f in JS_MANIFEST))
    return JS_DIR


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=4)
def _check_shipped_js(_stats: tuple) -> None:
    for f in JS_MANIFEST:
        path = JS_DIR / f["name"]
        if not path.is_file():
            raise InputError(f"{path} is missing from the mtbert package: reinstall mtbert")
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != f["sha256"]:
            raise InputError(f"{path} has sha256 {got}, but manifest.json expects {f['sha256']} "
                             f"({f['source']['npm']}): the file was changed; reinstall mtbert")


_REQUIRE_TAG = re.compile(r'<script src="https?://[^"]*require[^"]*"></script>')
_REQUIRE_CONFIG = re.compile(r"require\.config\(\{.*?\}\);", re.S)
_OUTSIDE_LINK = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//[^>]*""", re.I)
# bertviz's code asks requirejs for its two libraries; with both inlined, hand them over directly
_REQUIRE_SHIM = """<script>
window.requirejs = window.require = function (deps, cb) {
  var libs = {jquery: window.jQuery, d3: window.d3};
  cb.apply(null, deps.map(function (d) { return libs[d]; }));
};
window.require.config = function () {};
</script>"""


def inline_js(html: str, folder: Path) -> str:
    """bertviz's page with d3 and jQuery inlined: no request leaves the page."""
    libs = []
    for name in JS_FILES:
        code = (Path(folder) / name).read_text(encoding="utf-8").replace("</script", "<\\/script")
        libs.append(f"<script>\n{code}\n</script>")
    html = _REQUIRE_TAG.sub("", html)
    html = _REQUIRE_CONFIG.sub("", html)
    if leftover := _OUTSIDE_LINK.search(html):  # a bertviz release loading something new: fail, stay offline
        raise RuntimeError(f"bertviz's page still loads from another host: {leftover[0]}")
    return "\n".join(libs) + "\n" + _REQUIRE_SHIM + "\n" + html


def _script_safe(tokens: list[str]) -> list[str]:
    # bertviz embeds tokens in a <script>; a token holding "</" or "<!--" could end it early
    return [t.replace("<", "\uff1c") if ("</" in t or "<!--" in t) else t for t in tokens]


def bertviz_html(view: AttentionView, kind: str = "head", folder: Path | str | None = None) -> str:
    """bertviz head_view or model_view as a standalone HTML page (for st.iframe) that loads
    nothing from anywhere: d3 and jQuery inlined from `folder` (None: js_dir())."""
    from bertviz import head_view, model_view

    views = {"head": head_view, "model": model_view}
    if kind not in views:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of {', '.join(views)}")
    folder = js_dir() if folder is None else Path(folder)
    # 3 decimals is finer than the eye can tell apart and cuts the page to a fifth of its size
    rounded = [a.double().round(decimals=3) for a in view.attentions]
    html = views[kind](attention=rounded, tokens=_script_safe(view.tokens),
                       sentence_b_start=view.sentence_b_start, html_action="return").data
    return f"<!doctype html><html><head><meta charset='utf-8'></head><body>{inline_js(html, folder)}</body></html>"


def bertviz_height(view: AttentionView, kind: str = "head") -> int:
    """Pixel height bertviz's drawing needs (its own sizing constants), plus the controls."""
    n = len(view.tokens)
    if kind == "head":
        return int(n * 22.5 + 30 + 80)
    thumb = n * 7 * 12 / view.num_heads + 10
    return int(max(view.num_layers * thumb + 38, n * 18 + 55) + 80)


# ---- batch mode -----------------------------------------------------------------------------

def detect_task(data: bytes) -> str | None:
    """sst / para / sts from a CS224N header; None when it cannot tell (unlabelled pair files, other formats)."""
    header = data.split(b"\n", 1)[0].decode("utf-8-sig", "replace").strip().split("\t")
    cols = {h.strip() for h in header}
    if "sentence" in cols:
        return "sst"
    if "is_duplicate" in cols:
        return "para"
    if "similarity" in cols:
        return "sts"
    return None


def read_upload(data: bytes, task: str = "auto", specs: list | None = None) -> tuple[str, list, object]:
    """(task, examples, report) of an uploaded file, read in the chosen task's own format (`specs`: the
    checkpoint's task definitions; default the built-in trio); never unpickles, only parses text."""
    from ..data import DataError, read_task_file
    from ..tasks import builtin_tasks

    by_name = {s.name: s for s in (specs if specs is not None else builtin_tasks())}
    if not data or not data.strip():
        raise InputError("The uploaded file is empty.")
    if task == "auto":
        task = detect_task(data)
        if task is None or task not in by_name:
            raise InputError("Cannot tell the task from this file's header (a CS224N header names it; "
                             "sentence1/sentence2 without a label fits both paraphrase and similarity, and "
                             "a file of another task is read in that task's format): choose the task.")
    elif task not in by_name:
        raise InputError(f"task={task!r} is not allowed; choose one of auto, {', '.join(by_name)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            examples, report = read_task_file(by_name[task], path)
        except DataError as e:
            raise InputError(str(e).replace(str(path), "the uploaded file")) from None
    report.path = "uploaded file"
    if not examples:
        raise InputError(f"No usable rows for task {task}: {report.summary()}")
    return task, examples, report


def predictions_csv(ids: list[str], preds: list) -> bytes:
    from ..evaluate import write_predictions

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.csv"
        write_predictions(path, ids, preds)
        return path.read_bytes()


class BatchJob(BackgroundJob):
    """Predictions for a whole file; `csv` (the predictions file's bytes) once finished."""

    def __init__(self, task: str, examples: list):
        super().__init__(total=len(examples))
        self.task, self.examples = task, examples

    @property
    def csv(self) -> bytes | None:
        return self.result

    def start(self, model, tokenizer, chunk: int = 256) -> "BatchJob":
        self.model, self.tokenizer, self.chunk = model, tokenizer, chunk
        return super().start()

    def work(self) -> bytes:
        from ..evaluate import predict_examples

        preds = []
        for s in range(0, len(self.examples), self.chunk):
            preds += predict_examples(self.model, self.tokenizer, self.task, self.examples[s:s + self.chunk])
            self.progress(min(len(self.examples), s + self.chunk))
        return predictions_csv([e.id for e in self.examples], preds)


# ---- figures ----------------------------------------------------------------------------------

def sentiment_figure(results: dict[str, dict]):
    """Grouped bars: one group per class, one bar per model (name -> sentiment() result)."""
    return class_figure("Sentiment distribution", {n: dict(zip(r["labels"], r["probs"])) for n, r in results.items()})


def class_figure(title: str, results: dict[str, dict]):
    """Grouped bars: one group per class, one bar per model (name -> {label: probability})."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, probs in results.items():
        fig.add_bar(x=list(probs), y=list(probs.values()), name=name, text=[f"{p:.2f}" for p in probs.values()],
                    textposition="outside")
    fig.update_layout(title=title, yaxis=dict(range=[0, 1.1], title="probability"),
                      barmode="group", height=340, margin=dict(l=10, r=10, t=40, b=10),
                      showlegend=len(results) > 1)
    return fig
