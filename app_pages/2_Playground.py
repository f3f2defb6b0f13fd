"""Playground: one panel per task of the checkpoint (its own definitions: the built-in sentiment,
paraphrase and similarity, and any task of the user's), side by side with a second checkpoint, its
attention, and predictions for a whole file in a task's own format."""
import streamlit as st

from mtbert.studio import playground as pg
from mtbert.studio.widgets import pick_checkpoint, pick_precision

st.set_page_config(page_title="Playground · mtbert", layout="wide")


def show_input_error(e: pg.InputError) -> None:
    st.warning(str(e), icon=":material/edit_note:")


st.title("Playground")
refs, problem = pg.checkpoint_choices()
if problem:
    st.error(problem)
# an example opened from the Evaluate page's error browser: its checkpoint, task and text, answered at once
pg.apply_prefill(st.session_state, st.session_state.pop(pg.PREFILL_KEY, None), refs)
top_left, top_right = st.columns([3, 1], vertical_alignment="bottom")
compare = top_left.toggle("Compare two checkpoints side by side", key="compare")
with top_right:
    precision = pick_precision()
cols = st.columns(2 if compare else 1)
models = []
with cols[0]:
    models.append(pick_checkpoint("Checkpoint", refs, "ckpt_a", precision))
if compare:
    with cols[1]:
        models.append(pick_checkpoint("Second checkpoint", refs, "ckpt_b", precision))
models = [(m.name, m.model, m.tokenizer, m.meta) for m in models if m is not None]
if not models:
    st.stop()

tasks_tab, why_tab, attention_tab, batch_tab = st.tabs(["Tasks", "Why", "Attention", "Batch file"])


def show_answers(spec, answers: dict) -> None:
    """Each checkpoint's answer in its own column: a label, a probability or a score."""
    for c, (name, r) in zip(st.columns(len(answers)), answers.items()):
        if r["kind"] == "classes":
            c.metric(f"Predicted · {name}", r["top"])
            c.caption(f"probability {r['value'][r['top']]:.2f}")
        elif r["kind"] == "probability":
            c.markdown(f"**{name}**")
            c.metric(f"{spec.title} probability", f"{r['value']:.2f}", help=f"the probability of {r['positive']!r}")
            c.progress(r["value"], text=r["label"])
        else:
            lo, hi = r["range"]
            c.markdown(f"**{name}**")
            c.metric(f"{spec.title} ({lo:g}–{hi:g})", f"{r['value']:.2f}")
            c.progress((r["value"] - lo) / (hi - lo))
        if r["note"]:
            c.info(r["note"], icon=":material/content_cut:")
    if next(iter(answers.values()))["kind"] == "classes":
        st.plotly_chart(pg.class_figure(f"{spec.title}: class probabilities",
                                        {n: r["value"] for n, r in answers.items()}), key=f"{spec.name}_chart")


with tasks_tab:
    for spec in pg.shared_tasks([m for _, m, _, _ in models]):
        with st.container(border=True):
            st.markdown(f"#### {spec.title}")
            st.caption(pg.describe_task(spec))
            if spec.is_pair:
                a = st.text_input("First sentence", key=f"{spec.name}_a",
                                  placeholder="How do I learn to cook?")
                b = st.text_input("Second sentence", key=f"{spec.name}_b",
                                  placeholder="What is the best way to learn cooking?")
            else:
                a, b = st.text_area("Sentence", key=f"{spec.name}_text",
                                    placeholder="A gorgeous, witty, seductive movie."), None
            having = [(name, m, tok) for name, m, tok, _ in models if spec.name in m.cfg.names]
            if (st.button(f"Predict {spec.title}", type="primary", key=f"{spec.name}_go")
                    or st.session_state.pop(f"{spec.name}_auto", False)):
                try:
                    st.session_state[f"{spec.name}_result"] = {
                        name: pg.task_answer(m, tok, spec.name, a, b) for name, m, tok in having}
                except pg.InputError as e:
                    st.session_state.pop(f"{spec.name}_result", None)
                    show_input_error(e)
            if len(having) < len(models):
                st.caption("Only " + ", ".join(n for n, _, _ in having) + f" has the task {spec.name}.")
            answers = st.session_state.get(f"{spec.name}_result")
            if answers:
                show_answers(spec, answers)

with why_tab:
    name, model, tok, _ = models[0]
    st.caption(f"Which word pieces moved **{name}**'s answer, by Integrated Gradients: each token's share of "
               "the change from a baseline (the input with every word replaced by [PAD]) to the input. "
               "Green pushed the output up, red down; docs/attributions.md explains the view.")
    spec = model.cfg.task(st.selectbox("Task", model.cfg.names, key="why_task",
                                       format_func=lambda t: f"{model.cfg.task(t).title} ({t})"))
    st.caption(pg.describe_task(spec))
    if spec.is_pair:
        a = st.text_input("First sentence to explain", key="why_a", placeholder="How do I learn to cook?")
        b = st.text_input("Second sentence to explain", key="why_b",
                          placeholder="What is the best way to learn cooking?")
    else:
        a, b = st.text_area("Sentence to explain", key="why_text", placeholder="The movie was not bad at all."), None
    c1, c2 = st.columns(2)
    target = None
    if spec.kind == "classification" and not spec.binary:
        names = [spec.label_name(k) for k in range(spec.classes)]
        picked = c1.selectbox("Explain the probability of", ["the predicted class", *names], key="why_target")
        target = None if picked == "the predicted class" else names.index(picked)
    steps = c2.number_input("Steps", 2, 1024, pg.DEFAULT_IG_STEPS, step=16, key="why_steps",
                            help="Nodes of the Gauss–Legendre rule along the path from the baseline to the input; "
                                 "more steps close the completeness gap at the cost of time")
    if st.button("Explain", type="primary", key="why_go"):
        try:
            with st.spinner("Integrating gradients…"):
                st.session_state.why_result = name, pg.attribution(model, tok, spec.name, a, b, target, int(steps))
        except pg.InputError as e:
            st.session_state.pop("why_result", None)
            show_input_error(e)
    for_model, attr = st.session_state.get("why_result", (None, None))
    if attr is not None and (for_model, attr.task) == (name, spec.name):  # not another checkpoint's or task's
        if attr.note:
            st.info(attr.note, icon=":material/content_cut:")
        st.markdown(f"Explained output: **{attr.output}** = {attr.f_x:.3f} (baseline {attr.f_baseline:.3f})")
        st.markdown(pg.attribution_html(attr), unsafe_allow_html=True)
        st.caption(pg.completeness_caption(attr))
        if attr.gap > pg.COMPLETENESS_TOLERANCE:
            st.info("The attributions do not add up to the change of the output within "
                    f"{100 * pg.COMPLETENESS_TOLERANCE:g} %: raise the steps for a closer integral.",
                    icon=":material/functions:")

with attention_tab:
    name, model, tok, _ = models[0]
    st.caption(f"Attention of **{name}**'s encoder. A pair is read jointly as [CLS] a [SEP] b [SEP].")
    pair = st.radio("Input", ["one sentence", "a sentence pair"], horizontal=True, key="attn_kind")
    a = st.text_input("Sentence A", key="attn_a", placeholder="The movie was not bad at all.")
    b = st.text_input("Sentence B", key="attn_b") if pair == "a sentence pair" else None
    attn_task = None
    if pg.needs_task(model):  # each task reads the input through its own adapters
        attn_task = st.selectbox("Read with the LoRA adapters of", model.cfg.names, key="attn_task",
                                 format_func=lambda t: f"{model.cfg.task(t).title} ({t})")
    if st.button("Show attention", type="primary", key="attn_go"):
        try:
            st.session_state.attn_view = pg.attention(model, tok, a, b, attn_task)
        except pg.InputError as e:
            st.session_state.pop("attn_view", None)
            show_input_error(e)
    view = st.session_state.get("attn_view")
    if view is not None:
        if view.note:
            st.info(view.note, icon=":material/content_cut:")
        c1, c2 = st.columns(2)
        layer = c1.slider("Layer", 0, view.num_layers - 1, 0, key="attn_layer")
        head = c2.slider("Head", 0, view.num_heads - 1, 0, key="attn_head")
        heads_col, rollout_col = st.columns(2)
        heads_col.plotly_chart(pg.attention_heatmap(view, layer, head), key="attn_heatmap")
        rollout_col.plotly_chart(pg.rollout_heatmap(view), key="attn_rollout")
        rollout_col.caption("Attention rollout: each layer's attention averaged over its heads, half of it kept "
                            "for the token itself (the residual connection), multiplied through the layers.")
        st.plotly_chart(pg.rollout_cls_figure(view), key="attn_rollout_cls")
        kind = st.radio("bertviz", ["head view", "model view"], horizontal=True, key="bertviz_kind")
        kind = kind.split()[0]
        try:
            page = pg.bertviz_html(view, kind)
        except pg.InputError as e:  # a bad MTBERT_BERTVIZ_JS, or shipped scripts that fail their check
            st.error(str(e))
        else:
            st.iframe(page, height=pg.bertviz_height(view, kind), alt=f"bertviz {kind} view of the attention")

with batch_tab:
    name, model, tok, _ = models[0]
    st.caption(f"Predictions of **{name}** for every row of a file in a task's own format (a CS224N file "
               "for the built-in tasks): a CSV of id,prediction, the class index or the score.")
    upload = st.file_uploader("Task file", type=["csv", "tsv", "txt", "jsonl", "json"], key="batch_file")
    task = st.selectbox("Task", ["auto", *model.cfg.names], key="batch_task",
                        help="auto: from a CS224N header (an unlabelled pair file needs the task chosen)")
    if upload is not None and st.button("Predict the file", type="primary", key="batch_go"):
        try:
            task_, examples, report = pg.read_upload(upload.getvalue(), task, model.cfg.tasks)
        except pg.InputError as e:
            show_input_error(e)
        else:
            st.session_state.batch_job = pg.BatchJob(task_, examples).start(model, tok)
            st.session_state.batch_report = report.summary()
            st.session_state.batch_name = upload.name
    job = st.session_state.get("batch_job")
    polling = job is not None and not job.finished

    @st.fragment(run_every=1.0 if polling else None)
    def batch_progress() -> None:
        job = st.session_state.get("batch_job")
        if job is None:
            return
        if polling and job.finished:
            st.rerun()  # done: one full redraw, and the polling stops
        st.caption(st.session_state.batch_report)
        if job.error:
            st.error(f"Prediction failed: {job.error}")
        elif job.csv is None:
            st.progress(job.fraction, text=f"{job.done:,} of {len(job.examples):,} rows")
        else:
            st.success(f"{len(job.examples):,} {job.task} predictions ready.")
            stem = st.session_state.batch_name.rsplit(".", 1)[0]
            st.download_button("Download predictions CSV", job.csv, file_name=f"{stem}-predictions.csv",
                               mime="text/csv", icon=":material/download:", key="batch_download")

    batch_progress()
