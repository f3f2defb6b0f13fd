"""The mtbert playground as a Gradio app (a native Gradio Space runs this file): a checkpoint's
sentiment distribution, paraphrase probability and similarity for your own input, and its
attention (a heatmap per layer and head, and bertviz's head or model view).

All the work is done by `mtbert.studio.playground`, the same functions the Streamlit playground calls;
this file only lays out the page. Checkpoints on offer: the local ones (checkpoints/, runs/, the
plain base model) and the Hub repo ids in MTBERT_HUB_CHECKPOINT, each by its name
(`minilm-l6-heads`, `<run>/best`, the repo id): the page and its API never show where a
checkpoint lies on the server. Run: `python gradio_app.py`.
"""
from __future__ import annotations

import html
import os
import threading
from collections import OrderedDict

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: set it first

import gradio as gr  # noqa: E402

from mtbert import hub, runfolder  # noqa: E402
from mtbert.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from mtbert.studio import checkpoints, environment, runs  # noqa: E402
from mtbert.studio import playground as pg  # noqa: E402

MAX_MODELS = 4  # loaded models kept in memory, most recently used first


def checkpoint_choices() -> list[checkpoints.CheckpointRef]:
    """The Hub checkpoints a deployment names first, then the local ones (checkpoints.list_checkpoints)."""
    hub_refs = [checkpoints.CheckpointRef(r, r, "hub", f"{r} (Hub)") for r in hub.hub_checkpoints()]
    return hub_refs + checkpoints.list_checkpoints()


def public(text: str, ref: checkpoints.CheckpointRef) -> str:
    """A message for a visitor: the checkpoint's folder and the server's folders by their short names."""
    for path, name in ((ref.path, ref.name), (str(runfolder.runs_dir()), "runs"),
                       (str(checkpoints.CHECKPOINTS_DIR), "checkpoints"), (str(environment.ROOT), ".")):
        if path and path != name:
            text = text.replace(path, name)
    return text


class Models:
    """Loaded models by checkpoint name, at most MAX_MODELS, loaded once even when requests arrive
    together. Visitors name a checkpoint (`minilm-l6-heads`, `<run>/best`); where it lies on the
    server stays here."""

    def __init__(self, choices: list[checkpoints.CheckpointRef]):
        self.offered = {c.name: c for c in choices}
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str):
        ref = self.offered.get(name)
        if ref is None:
            raise gr.Error(f"{name!r} is not a checkpoint on offer; choose one of: {', '.join(self.offered)}")
        with self._lock:
            if name not in self._cache:
                self._cache[name] = self._load(ref)
                while len(self._cache) > MAX_MODELS:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(name)
            return self._cache[name]

    def _load(self, ref: checkpoints.CheckpointRef):
        try:
            if ref.kind == "hub":  # only the ids the deployment named: a visitor cannot fetch others
                model, tok, meta = load_checkpoint(ref.path)
                return model, tok, {**meta, "untrained_heads": False}
            return pg.load_model(ref.path)  # local: only inside checkpoints/ and the runs folder
        except (CheckpointError, runs.RunError, OSError) as e:
            raise gr.Error(f"{ref.name} cannot be loaded: {public(str(e), ref)}") from None


def _note(*notes) -> str:
    return "\n\n".join(f"✂️ {n}" for n in notes if n)


def build_app(choices: list[checkpoints.CheckpointRef] | None = None) -> gr.Blocks:
    choices = checkpoint_choices() if choices is None else choices
    models = Models(choices)

    def describe(ref):
        if not ref:
            return ""
        _, _, meta = models.get(ref)
        text = pg.describe_model(meta)
        return f"⚠️ {text}" if meta.get("untrained_heads") else text

    def sentiment(ref, text):
        model, tok, _ = models.get(ref)
        try:
            r = pg.sentiment(model, tok, text)
        except pg.InputError as e:
            raise gr.Error(str(e)) from None
        return dict(zip(r["labels"], r["probs"])), _note(r["note"])

    def pair(ref, a, b):
        model, tok, _ = models.get(ref)
        try:
            r = pg.pair_scores(model, tok, a, b)
        except pg.InputError as e:
            raise gr.Error(str(e)) from None
        return r["paraphrase"], r["similarity"], _note(r["note"])

    def tasks(ref):
        """The checkpoint's task definitions, as the Tasks tab offers them."""
        model, _, _ = models.get(ref)
        return [{"name": t.name, "title": t.title, "input": t.input, "kind": t.kind,
                 **({"labels": [t.label_name(k) for k in range(t.classes)]} if t.kind == "classification"
                    else {"range": list(t.range)})} for t in model.cfg.tasks]

    def predict(ref, task, a, b):
        model, tok, _ = models.get(ref)
        if task not in model.cfg.names:
            raise gr.Error(f"task={task!r} is not allowed; this checkpoint's tasks: {', '.join(model.cfg.names)}")
        try:
            r = pg.task_answer(model, tok, task, a, b)
        except pg.InputError as e:
            raise gr.Error(str(e)) from None
        if r["kind"] == "classes":
            return r["value"], None, _note(r["note"])
        if r["kind"] == "probability":
            spec = model.cfg.task(task)
            return {spec.label_name(1): r["value"], spec.label_name(0): 1 - r["value"]}, r["value"], _note(r["note"])
        return None, r["value"], _note(r["note"])

    def task_choices(ref):
        if not ref:
            return gr.update()
        model, _, _ = models.get(ref)
        return gr.update(choices=[(f"{t.title} ({t.name})", t.name) for t in model.cfg.tasks],
                         value=model.cfg.names[0])

    def attention(ref, a, b, layer, head, kind, task=None):
        model, tok, _ = models.get(ref)
        try:
            view = pg.attention(model, tok, a, b if b and b.strip() else None, task or None)
            fig = pg.attention_heatmap(view, int(layer), int(head))
            page = pg.bertviz_html(view, kind)  # d3 and jQuery inlined; a bad MTBERT_BERTVIZ_JS raises
        except pg.InputError as e:
            raise gr.Error(str(e)) from None
        # gradio's HTML does not run scripts; bertviz's page does, inside its own sandboxed frame
        frame = (f'<iframe title="bertviz {kind} view" sandbox="allow-scripts" '
                 f'style="width:100%;height:{pg.bertviz_height(view, kind)}px;border:0" '
                 f'srcdoc="{html.escape(page, quote=True)}"></iframe>')
        return fig, frame, _note(view.note)

    def adapter_choices(ref):
        """The Attention tab's task picker, shown for a checkpoint with LoRA adapters per task only."""
        if not ref:
            return gr.update()
        model, _, _ = models.get(ref)
        per_task = pg.needs_task(model)
        return gr.update(choices=model.cfg.names, value=model.cfg.names[0] if per_task else None, visible=per_task)

    def ranges(ref):
        if not ref:
            return gr.update(), gr.update()
        model, _, _ = models.get(ref)
        cfg = model.encoder.config
        return (gr.update(maximum=cfg.num_hidden_layers - 1, value=0),
                gr.update(maximum=cfg.num_attention_heads - 1, value=0))

    with gr.Blocks(title="mtbert playground", analytics_enabled=False) as app:
        gr.Markdown("# mtbert playground\nOne BERT fine-tuned on several tasks at once (sentiment, paraphrase "
                    "and similarity, and tasks of your own): try your own sentences.")
        # the API offers and takes the checkpoints' names; the dropdown shows their longer labels
        ref = gr.Dropdown([(c.label, c.name) for c in choices], value=choices[0].name if choices else None,
                          label="Checkpoint")
        about = gr.Markdown(label="About the checkpoint")
        with gr.Tab("Tasks"):
            gr.Markdown("Every task of the checkpoint, its own or the built-in ones: a sentence task reads "
                        "the first box, a pair task both.")
            # the choices follow the checkpoint picked; the API takes any name and predict() checks it
            task = gr.Dropdown([], label="Task", allow_custom_value=True)
            a = gr.Textbox(label="Sentence (or first sentence)", placeholder="A gorgeous, witty, seductive movie.")
            b = gr.Textbox(label="Second sentence (pair tasks)")
            go = gr.Button("Predict", variant="primary")
            with gr.Row():
                classes = gr.Label(label="Class probabilities")
                value = gr.Number(label="Probability or score", precision=3)
            note = gr.Markdown(label="Note on the input")
            go.click(predict, [ref, task, a, b], [classes, value, note], api_name="predict")
            listed = gr.JSON(visible=False, label="Task definitions")
            gr.Button("List tasks", visible=False).click(tasks, ref, listed, api_name="tasks")
        with gr.Tab("Sentiment"):
            text = gr.Textbox(label="Sentence", placeholder="A gorgeous, witty, seductive movie.")
            go = gr.Button("Predict sentiment", variant="primary")
            dist = gr.Label(num_top_classes=len(pg.SST_LABELS), label="Sentiment distribution")
            note = gr.Markdown(label="Note on the input")
            go.click(sentiment, [ref, text], [dist, note], api_name="sentiment")
        with gr.Tab("Paraphrase & similarity"):
            a = gr.Textbox(label="First sentence", placeholder="How do I learn to cook?")
            b = gr.Textbox(label="Second sentence", placeholder="What is the best way to learn cooking?")
            go = gr.Button("Compare the sentences", variant="primary")
            with gr.Row():
                para = gr.Number(label="Paraphrase probability", precision=3)
                sim = gr.Number(label="Similarity (0–5)", precision=3)
            note = gr.Markdown(label="Note on the input")
            go.click(pair, [ref, a, b], [para, sim, note], api_name="pair")
        with gr.Tab("Attention"):
            gr.Markdown("A pair is read jointly as [CLS] a [SEP] b [SEP]; leave B empty for one sentence.")
            a = gr.Textbox(label="Sentence A", placeholder="The movie was not bad at all.")
            b = gr.Textbox(label="Sentence B (optional)")
            with gr.Row():
                layer = gr.Slider(0, 11, value=0, step=1, label="Layer")
                head = gr.Slider(0, 11, value=0, step=1, label="Head")
                kind = gr.Radio(["head", "model"], value="head", label="bertviz view")
                adapters = gr.Dropdown([], label="LoRA adapters of task", allow_custom_value=True, visible=False)
            go = gr.Button("Show attention", variant="primary")
            note = gr.Markdown(label="Note on the input")
            heatmap = gr.Plot(label="Attention weights")
            viz = gr.HTML(label="bertviz view")
            inputs, outputs = [ref, a, b, layer, head, kind, adapters], [heatmap, viz, note]
            go.click(attention, inputs, outputs, api_name="attention")

            def redraw(ref, a, b, layer, head, kind, task=None):
                """Moving a slider redraws a view already shown, and is silent otherwise."""
                shown = a and a.strip()
                return attention(ref, a, b, layer, head, kind, task) if shown else (gr.skip(),) * 3

            gr.on([layer.release, head.release, kind.change, adapters.change], redraw, inputs, outputs,
                  api_name="redraw")
        for event in (ref.change, app.load):
            event(describe, ref, about, api_name=False).then(ranges, ref, [layer, head], api_name=False).then(
                task_choices, ref, task, api_name=False).then(adapter_choices, ref, adapters, api_name=False)
    return app


if __name__ == "__main__":
    build_app().launch()  # host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Spaces set them)
