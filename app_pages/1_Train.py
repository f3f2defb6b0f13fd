"""Train: choose the data and settings, start a run, watch it live, stop or resume it, see its results.

The run is its own OS process (`python -m mtbert train`); this page only reads its run folder, so
a reload or a second tab re-attaches to it and the page never blocks on training.
"""
from pathlib import Path

import streamlit as st

from mtbert import runfolder
from mtbert.config import PRESETS
from mtbert.data import SAMPLE_DIR, DataError
from mtbert.studio import charts, environment, runs, settings
from mtbert.tasks import BUILTIN_NAMES

st.set_page_config(page_title="Train · mtbert", layout="wide")

DEFAULTS = "defaults (every setting at its default)"
SPEC = settings.settings_spec()
# widget details the settings' types and bounds do not say; everything else comes from TrainConfig
# and settings.ABOUT (label, help, bounds)
NUMBER = {
    "lr": dict(step=1e-6, format="%.1e"),
    "head_lr": dict(step=1e-5, format="%.1e"),
    "dropout": dict(step=0.05),
    "weight_decay": dict(step=0.01),
    "grad_clip": dict(step=0.5),
    "time_budget_s": dict(step=60.0),
    "max_length": dict(step=8),
}


def key(name: str) -> str:
    return f"setting.{name}"


def preset_widgets() -> dict:
    """Every setting's widget value under the chosen preset."""
    choice = st.session_state.preset
    values = settings.preset_values(None if choice == DEFAULTS else choice)
    return {key(s.name): s.to_widget(values[s.name]) for s in SPEC}


def apply_preset() -> None:
    st.session_state.update(preset_widgets())


@st.cache_data(ttl=30, show_spinner="Counting rows…")
def describe_data(folder: str, quora_train: str | None) -> list[dict]:
    return environment.describe_data(folder, quora_train)


def bounds(s: settings.Setting) -> dict:
    """number_input's min and max from the bounds TrainConfig enforces (an open bound is left to
    TrainConfig, whose message names the setting)."""
    cast = int if s.kind == "int" else float
    r = s.range or settings.Range()
    return {**({"min_value": cast(r.low)} if r.low is not None else {}),
            **({"max_value": cast(r.high)} if r.high is not None and not r.high_open else {})}


def setting_widget(s: settings.Setting) -> None:
    label, k = s.label, key(s.name)
    if s.kind == "choice":
        st.selectbox(label, ((None,) if s.optional else ()) + s.choices, key=k, help=s.help,
                     format_func=lambda v: "(none)" if v is None else v)
    elif s.kind == "tasks":
        st.multiselect(label, s.choices, key=k, help=s.help)
    elif s.kind == "bool":
        st.checkbox(label, key=k, help=s.help)
    elif s.kind == "int":
        st.number_input(label, key=k, help=s.help, **{"step": 1, **bounds(s), **NUMBER.get(s.name, {})})
    elif s.kind == "float":
        st.number_input(label, key=k, help=s.help, **{"step": 0.1, **bounds(s), **NUMBER.get(s.name, {})})
    else:
        st.text_input(label, key=k, help=s.help)


st.title("Train")

# Streamlit forgets a widget's value when another page is shown; keep a copy to restore on return
FORM_KEYS = ["preset", "data_source", "data_folder", "quora_train", *(key(s.name) for s in SPEC)]
saved = st.session_state.setdefault("train_form", {})
if "preset" not in st.session_state:
    st.session_state.preset = saved.get("preset", PRESETS[0])  # the quick CPU demo: a newcomer's first run
# a setting without a value (first visit, or a run interrupted before its widgets were drawn)
# gets the one it had, else the preset's
missing = [k for k in FORM_KEYS if k not in st.session_state]
if missing:
    fallback = {**preset_widgets(), **saved}
    st.session_state.update({k: fallback[k] for k in missing if k in fallback})
if st.session_state.get(key("tasks")) is None:  # a preset's "every task": all of them, chosen
    st.session_state[key("tasks")] = list(BUILTIN_NAMES)

# ---- 1. data ---------------------------------------------------------------------------------
st.subheader("1 · Data")
sources = environment.data_folders()
source = st.radio("Training data", [*sources, "another folder"], horizontal=True, key="data_source",
                  help="CS224N-format files: ids-sst-*.csv, quora-*.csv, sts-*.csv (TAB-separated, with a header)")
if source == "another folder":
    folder = st.text_input("Folder of CS224N files", key="data_folder", placeholder="/path/to/data")
else:
    folder = str(sources[source])
quora_train = st.text_input("Quora train file (optional)", key="quora_train",
                            help="Use this file instead of the folder's quora-train.csv (setting "
                                 "`quora_train`, flag --quora-train)").strip() or None
data_ok = False
if not folder:
    st.info("Type the folder that holds your CS224N files.")
elif not Path(folder).is_dir():
    st.error(f"{folder}: not a folder.")
else:
    try:
        rows = describe_data(folder, quora_train)
    except DataError as e:
        st.error(str(e))
    else:
        st.markdown(f"Usable rows — {environment.data_summary(rows)}")
        st.dataframe(rows, hide_index=True, width="stretch",
                     column_config={"file": st.column_config.TextColumn(f"file (in {folder})", width="large")})
        problem = environment.data_problem(rows, st.session_state[key("tasks")])
        if problem:
            st.warning(f"A run would fail: {problem}.")
        data_ok = True

# ---- 2. settings -----------------------------------------------------------------------------
st.subheader("2 · Settings")
st.selectbox("Preset", [*PRESETS, DEFAULTS], key="preset", on_change=apply_preset,
             help="Fills the form below from a file in configs/ (the file `mtbert train --config` "
                  "takes); the quick CPU demo trains for about 2.5 minutes on 2 CPU cores.")
with st.form("settings"):
    for section in dict.fromkeys(s.section for s in SPEC):
        with st.expander(section, expanded=section in ("Model and tasks", "Budget")):
            cols = st.columns(4)
            for i, s in enumerate(x for x in SPEC if x.section == section):
                with cols[i % 4]:
                    setting_widget(s)
    start = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")

saved.update({k: st.session_state[k] for k in FORM_KEYS if k in st.session_state})

if start:
    config = {s.name: s.from_widget(st.session_state[key(s.name)]) for s in SPEC}
    config.update(data_dir=None if folder == str(SAMPLE_DIR) else folder, quora_train=quora_train)
    config.pop("task_definitions", None)  # the trainer writes the definitions of the tasks it trains
    try:
        if not data_ok:
            raise ValueError("choose a data folder that exists first")
        st.session_state.watch = str(runs.start_run(config))
    except runs.LockHeld as e:
        st.error(f"Not started: {e}. Stop it, or wait for it to finish.", icon=":material/block:")
    except (ValueError, runs.RunError) as e:
        st.error(f"Not started: {e}", icon=":material/block:")

# ---- 3. the run --------------------------------------------------------------------------------
active = runs.active_run()
recent = runs.list_runs()
watch = active or (Path(st.session_state["watch"]) if "watch" in st.session_state else None) or \
    (recent[0] if recent else None)
if watch is None or not watch.is_dir():
    st.caption("No run yet: start one above.")
    st.stop()

st.subheader(f"3 · Run {watch.name}")
if active is not None:
    st.caption("Training in progress. This page re-attaches to it after a reload or in another tab.")
tails = st.session_state.setdefault("tails", {})
started_live = runs.is_live(runs.read_status(watch))


@st.fragment(run_every=1.0 if started_live else None)
def monitor(run_dir: Path) -> None:
    status = runs.read_status(run_dir)
    live = runs.is_live(status)
    if started_live and not live:
        st.rerun()  # the run just ended: redraw the whole page, with the results and no more polling
    tail = tails.setdefault(str(run_dir), runfolder.MetricsTail(run_dir))
    tail.update()
    frac, text = runs.progress(status)
    st.progress(frac, text=f"{status.get('state')} · {text}")
    if live:
        if st.button("Stop", icon=":material/stop:", help="Finishes the current step, saves last/, marks the run stopped"):
            try:
                runs.stop_run(run_dir)
                st.toast("Stopping: the run saves its state first.")
            except runs.RunError as e:
                st.error(str(e))
    records = tail.records
    left, right = st.columns(2)
    left.plotly_chart(charts.loss_figure(records), key="loss_chart")
    right.plotly_chart(charts.dev_figure(records), key="dev_chart")
    if any(r.get("type") == "step" and "conflicts" in r for r in records):
        left, right = st.columns(2)
        left.plotly_chart(charts.pcgrad_figure(records), key="pcgrad_chart")
        right.plotly_chart(charts.cosine_figure(records), key="cosine_chart")


monitor(watch)

status = runs.read_status(watch)
state = status.get("state")
if state == "finished":
    best = watch / (status.get("best_checkpoint") or runfolder.BEST)
    st.success(f"Finished. Checkpoint: **{watch.name}/{best.name}** — try it in the Playground.",
               icon=":material/check_circle:")
elif state == "stopped":
    st.warning(f"Stopped at step {status.get('step')}. Resume continues exactly where it stopped.",
               icon=":material/pause_circle:")
elif state == "failed":
    st.error(f"The run failed: {status.get('error') or 'no error recorded'}", icon=":material/error:")
if not started_live:
    rows = runs.results_table(watch, status)
    if rows:
        st.markdown("**Results** (the seed report's table, for the best checkpoint)")
        st.dataframe(rows, hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="%.3f") for c in ("Paraphrase acc", "SST acc", "STS corr", "Average")})
    if state in ("stopped", "failed") and runs.resumable(watch):
        if st.button("Resume", icon=":material/play_arrow:"):
            try:
                runs.resume_run(watch)
                st.rerun()
            except (runs.LockHeld, runs.RunError) as e:
                st.error(f"Not resumed: {e}")
    with st.expander("train.log (last lines)"):
        st.code(runs.log_tail(watch, 40) or "(empty)", language=None)
