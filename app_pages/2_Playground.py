"""Playground: a checkpoint's sentiment, paraphrase and similarity answers for your own input,
side by side with a second checkpoint, its attention, and predictions for a whole file."""
import streamlit as st

from mtbert.checkpoint import CheckpointError
from mtbert.studio import checkpoints, runs
from mtbert.studio import playground as pg

st.set_page_config(page_title="Playground · mtbert", layout="wide")


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def load(path: str, _token: str | None = None):
    return pg.load_model(path, token=_token)


def pick(label: str, refs: list, key: str):
    """A checkpoint picker; returns (name, model, tokenizer, meta) or None after showing why not."""
    ref = st.selectbox(label, refs, format_func=str, key=key)
    name, path = ref.name, ref.path
    if ref.kind == "path":  # typed by the user: load_model only takes it inside the allowed folders
        name = path = st.text_input("Checkpoint folder", key=f"{key}_path", placeholder="runs/<run-id>/best",
                                    help="A checkpoint folder inside checkpoints/ or the runs folder").strip()
        if not path:
            st.info("Type the path of a checkpoint folder inside checkpoints/ or the runs folder.")
            return None
    try:
        model, tok, meta = load(path, checkpoints.secret_token(st.secrets))
    except (CheckpointError, runs.RunError, OSError) as e:
        st.error(f"{name} cannot be loaded: {e}")
        return None
    if meta.get("untrained_heads"):
        st.warning(pg.describe_model(meta), icon=":material/warning:")
    else:
        st.caption(pg.describe_model(meta))
    return name, model, tok, meta


def show_input_error(e: pg.InputError) -> None:
    st.warning(str(e), icon=":material/edit_note:")


st.title("Playground")
refs, problem = pg.checkpoint_choices()
if problem:
    st.error(problem)
compare = st.toggle("Compare two checkpoints side by side", key="compare")
cols = st.columns(2 if compare else 1)
models = []
with cols[0]:
    models.append(pick("Checkpoint", refs, "ckpt_a"))
if compare:
    with cols[1]:
        models.append(pick("Second checkpoint", refs, "ckpt_b"))
models = [m for m in models if m is not None]
if not models:
    st.stop()

sentiment_tab, pair_tab, attention_tab, batch_tab = st.tabs(
    ["Sentiment", "Paraphrase & similarity", "Attention", "Batch file"])

with sentiment_tab:
    text = st.text_area("Sentence", key="sst_text", placeholder="A gorgeous, witty, seductive movie.")
    if st.button("Predict sentiment", type="primary", key="sst_go"):
        try:
            st.session_state.sst_result = {name: pg.sentiment(m, tok, text) for name, m, tok, _ in models}
        except pg.InputError as e:
            st.session_state.pop("sst_result", None)
            show_input_error(e)
    results = st.session_state.get("sst_result")
    if results:
        for c, (name, r) in zip(st.columns(len(results)), results.items()):
            c.metric(f"Predicted · {name}", r["label_name"])
            c.caption(f"probability {r['probs'][r['label']]:.2f}")
            if r["note"]:
                c.info(r["note"], icon=":material/content_cut:")
        st.plotly_chart(pg.sentiment_figure(results), key="sst_chart")

with pair_tab:
    a = st.text_input("First sentence", key="pair_a", placeholder="How do I learn to cook?")
    b = st.text_input("Second sentence", key="pair_b", placeholder="What is the best way to learn cooking?")
    if st.button("Compare the sentences", type="primary", key="pair_go"):
        try:
            st.session_state.pair_result = {name: pg.pair_scores(m, tok, a, b) for name, m, tok, _ in models}
        except pg.InputError as e:
            st.session_state.pop("pair_result", None)
            show_input_error(e)
    for c, (name, r) in zip(st.columns(len(models)), (st.session_state.get("pair_result") or {}).items()):
        c.markdown(f"**{name}**")
        c.metric("Paraphrase probability", f"{r['paraphrase']:.2f}")
        c.progress(r["paraphrase"])
        c.metric("Similarity (0–5)", f"{r['similarity']:.2f}")
        c.progress(r["similarity"] / 5)
        if r["note"]:
            c.info(r["note"], icon=":material/content_cut:")

with attention_tab:
    name, model, tok, _ = models[0]
    st.caption(f"Attention of **{name}**'s encoder. A pair is read jointly as [CLS] a [SEP] b [SEP].")
    pair = st.radio("Input", ["one sentence", "a sentence pair"], horizontal=True, key="attn_kind")
    a = st.text_input("Sentence A", key="attn_a", placeholder="The movie was not bad at all.")
    b = st.text_input("Sentence B", key="attn_b") if pair == "a sentence pair" else None
    if st.button("Show attention", type="primary", key="attn_go"):
        try:
            st.session_state.attn_view = pg.attention(model, tok, a, b)
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
        st.plotly_chart(pg.attention_heatmap(view, layer, head), key="attn_heatmap")
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
    st.caption(f"Predictions of **{name}** for every row of a CS224N file: a CSV of id,prediction "
               "(sst: class 0–4; para: 0/1; sts: 0–5).")
    upload = st.file_uploader("CS224N file", type=["csv", "tsv", "txt"], key="batch_file")
    task = st.selectbox("Task", ["auto", "sst", "para", "sts"], key="batch_task",
                        help="auto: from the header (an unlabelled pair file needs the task chosen)")
    if upload is not None and st.button("Predict the file", type="primary", key="batch_go"):
        try:
            task_, examples, report = pg.read_upload(upload.getvalue(), task)
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
