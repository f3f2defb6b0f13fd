"""Evaluate: where and why a checkpoint fails. Pick a checkpoint (and a second one to compare) and a
labelled set, a split of a data folder or a file of one task; the evaluation runs in the background
and is kept per (checkpoint, data). Then, per task: the metrics, the figures of its kind, the most
confident mistakes (each one opens in the Playground) and, for two checkpoints, a significance test."""
from pathlib import Path

import streamlit as st

from mtbert import analysis, evalfigures
from mtbert.studio import environment
from mtbert.studio import evaluation as ev
from mtbert.studio import playground as pg
from mtbert.studio.widgets import pick_checkpoint

st.set_page_config(page_title="Evaluate · mtbert", layout="wide")


@st.cache_resource
def evaluations() -> ev.Evaluations:
    return ev.Evaluations()


st.title("Evaluate")
refs, problem = pg.checkpoint_choices()
if problem:
    st.error(problem)
compare = st.toggle("Compare with a second checkpoint", key="ev_compare")
cols = st.columns(2 if compare else 1)
with cols[0]:
    picked = [pick_checkpoint("Checkpoint", refs, "ev_ckpt_a")]
if compare:
    with cols[1]:
        picked.append(pick_checkpoint("Second checkpoint", refs, "ev_ckpt_b"))
if any(p is None for p in picked):
    st.stop()
if compare and picked[0].path == picked[1].path:
    st.info("Pick two different checkpoints to compare.")
    st.stop()
# the tasks every picked checkpoint has: a comparison needs both answers
specs = [s for s in picked[0].model.cfg.tasks if all(s.name in p.model.cfg.names for p in picked)]
if not specs:
    st.error("The two checkpoints share no task.")
    st.stop()

st.subheader("Data")
kind = st.radio("Evaluate on", ["a split of a data folder", "a labelled file of one task"], horizontal=True,
                key="ev_data_kind")
if kind.startswith("a split"):
    folder = Path(picked[0].path)
    folders = environment.run_data_folders(folder.parent) if folder.is_dir() else environment.data_folders()
    c1, c2, c3 = st.columns([2, 1, 2])
    folder_label = c1.selectbox("Data folder", list(folders), key="ev_folder",
                                help="The built-in tasks' files; a task of your own reads the files its definition names")
    split = c2.selectbox("Split", ev.SPLITS, key="ev_split")
    chosen = c3.multiselect("Tasks", [s.name for s in specs], default=[s.name for s in specs], key="ev_tasks")

    def make_source() -> ev.Source:
        return ev.split_source(folders[folder_label], split, [s for s in specs if s.name in chosen],
                               shown_dir=folder_label)
else:
    c1, c2 = st.columns([3, 1])
    upload = c1.file_uploader("Labelled file", type=["csv", "tsv", "txt", "jsonl", "json"], key="ev_file")
    task = c2.selectbox("Task", ["auto", *[s.name for s in specs]], key="ev_file_task",
                        help="auto: from a CS224N header; a file of your own task is read in that task's format")

    def make_source() -> ev.Source:
        if upload is None:
            raise pg.InputError("Choose a labelled file first.")
        return ev.file_source(upload.name, upload.getvalue(), task, specs)

if st.button("Evaluate", type="primary", key="ev_go"):
    try:
        source = make_source()
    except pg.InputError as e:
        st.warning(str(e), icon=":material/edit_note:")
    else:
        st.session_state.ev_source = source
        st.session_state.ev_jobs = [(p.name, p.path, ev.checkpoint_key(p.path)) for p in picked]
        for p, (_, _, key) in zip(picked, st.session_state.ev_jobs):
            evaluations().start(key, source, p.model, p.tokenizer)

source = st.session_state.get("ev_source")
wanted = st.session_state.get("ev_jobs", [])
if source is None or [path for _, path, _ in wanted] != [p.path for p in picked]:
    st.stop()  # nothing asked yet, or asked for other checkpoints than the ones now picked
jobs = [(name, path, evaluations().get(key, source)) for name, path, key in wanted]
if any(job is None for _, _, job in jobs):  # dropped from the cache, or failed before
    st.stop()
running = not all(job.finished for _, _, job in jobs)


@st.fragment(run_every=1.0 if running else None)
def progress() -> None:
    if running and all(job.finished for _, _, job in jobs):
        st.rerun()  # done: one full redraw with the results, and the polling stops
    for name, _, job in jobs:
        if job.error:
            st.error(f"{name}: the evaluation failed: {job.error}")
        elif not job.finished:
            st.progress(job.fraction, text=f"{name}: {job.done:,} of {source.size:,} examples")


progress()
for note in source.notes:
    st.caption(f"Rows skipped while reading: {note}")
if running or any(job.error for _, _, job in jobs):
    st.stop()

results = [(name, path, job.results) for name, path, job in jobs]
st.subheader("Results")
st.caption(f"On the {source.label}: " + ", ".join(f"{t} {len(x):,} examples" for t, x in source.data.items()))


def show_metrics(task: str) -> None:
    """The task's numbers; with two checkpoints, the second one's with its difference to the first."""
    summaries = [analysis.summary(r[task]) for _, _, r in results]
    keys = [k for k, v in summaries[0].items() if k not in ("n", "threshold") and isinstance(v, (int, float))]
    for i in range(0, len(keys), 6):
        for c, k in zip(st.columns(6), keys[i:i + 6]):
            delta = summaries[1][k] - summaries[0][k] if len(summaries) > 1 else None
            c.metric(k, f"{summaries[-1][k]:.3f}", None if delta is None else f"{delta:+.3f}",
                     delta_color="inverse" if k in ("mae", "rmse", "ece") else "normal",
                     help=results[-1][0] + ("" if delta is None else f", against {results[0][0]}"))


def show_figures(r) -> None:
    figs = evalfigures.task_figures(r)
    for i in range(0, len(figs), 2):
        for c, (title, fig) in zip(st.columns(2), figs[i:i + 2]):
            c.plotly_chart(fig, key=f"ev_fig_{r.spec.name}_{id(r)}_{title}")


def error_browser(name: str, path: str, r) -> None:
    spec = r.spec
    c1, c2 = st.columns([2, 2])
    label = gold_bin = None
    if spec.kind == "classification":
        names = [spec.label_name(k) for k in range(spec.classes)]
        pick = c1.selectbox("Gold class", ["any", *names], key=f"ev_err_class_{spec.name}_{path}")
        label = None if pick == "any" else names.index(pick)
    else:
        bins = analysis.regression_report(r)["bins"]
        pick = c1.selectbox("Gold score", ["any", *bins], key=f"ev_err_bin_{spec.name}_{path}")
        gold_bin = None if pick == "any" else bins.index(pick)
    longest = int(r.words().max(initial=1))
    lo, hi = c2.slider("Length in words", 1, max(2, longest), (1, max(2, longest)), key=f"ev_err_len_{spec.name}_{path}")
    rows = analysis.mistakes(r, label=label, gold_bin=gold_bin, min_words=lo, max_words=hi, limit=100)
    if not rows:
        st.caption("No mistakes with these filters.")
        return
    shown = [{k: v for k, v in row.items() if k != "index" and (k != "text_b" or spec.is_pair)} for row in rows]
    picked_rows = st.dataframe(shown, hide_index=True, on_select="rerun", selection_mode="single-row",
                               key=f"ev_err_table_{spec.name}_{path}", width="stretch")
    chosen = picked_rows.selection.rows if picked_rows is not None else []
    if st.button("Open in the Playground", key=f"ev_open_{spec.name}_{path}", disabled=not chosen,
                 help="Select a row first: the Playground opens with this checkpoint and the example filled in"):
        row = rows[chosen[0]]
        st.session_state[pg.PREFILL_KEY] = pg.prefill(path, spec.name, row["text_a"], row.get("text_b"))
        st.switch_page("app_pages/2_Playground.py")


def show_comparison(task: str) -> None:
    (name_a, _, ra), (name_b, _, rb) = results[0], results[1]
    c = analysis.compare(ra[task], rb[task])
    st.markdown(f"**{name_b}** against **{name_a}**, on the same {c['n']:,} examples")
    st.markdown(ev.comparison_text(c, name_a, name_b))
    figs = evalfigures.compare_figures(ra[task], rb[task], c, name_a, name_b)
    for col, (title, fig) in zip(st.columns(len(figs)), figs):
        col.plotly_chart(fig, key=f"ev_cmp_fig_{task}_{title}")
    if "mcnemar" in c:
        pairs = [("b_right_a_wrong", f"{name_b} right, {name_a} wrong"), ("a_right_b_wrong", f"{name_a} right, {name_b} wrong")]
    else:
        pairs = [("b_better", f"{name_b} closer to gold"), ("a_better", f"{name_a} closer to gold")]
    for col, (key, title) in zip(st.columns(2), pairs):
        col.markdown(f"**{title}** ({len(c[key]):,} shown)")
        col.dataframe(c[key], hide_index=True, width="stretch", key=f"ev_cmp_{task}_{key}")


for tab, spec in zip(st.tabs([s.title for s in specs if s.name in source.data]),
                     [s for s in specs if s.name in source.data]):
    with tab:
        show_metrics(spec.name)
        if len(results) > 1:
            with st.container(border=True):
                show_comparison(spec.name)
        for name, path, r in results:
            if len(results) > 1:
                st.markdown(f"#### {name}")
            show_figures(r[spec.name])
            with st.expander(f"Most confident mistakes · {name}", expanded=len(results) == 1):
                error_browser(name, path, r[spec.name])
