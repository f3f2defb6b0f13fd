"""Train: choose the data and settings, start a run, watch it live, stop or resume it, see its results.

The run is its own OS process (`python -m mtbert train`); this page only reads its run folder, so
a reload or a second tab re-attaches to it and the page never blocks on training.
"""
import json
from pathlib import Path

import streamlit as st

from mtbert import runfolder
from mtbert.config import PRESETS
from mtbert.data import SAMPLE_DIR, DataError
from mtbert.studio import charts, environment, runs, settings
from mtbert.studio import taskform as tf
from mtbert.tasks import BUILTIN_NAMES, KINDS

st.set_page_config(page_title="Train · mtbert", layout="wide")

DEFAULTS = "defaults (every setting at its default)"
SPEC = settings.settings_spec()
# widget details the settings' types and bounds do not say; everything else comes from each
# setting's declaration in TrainConfig (label, help, bounds)
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


@st.cache_data(max_entries=32, show_spinner="Reading the task's file…")
def cached_report(fields: str, path: str, stamp: tuple, _spec) -> tf.ReadReport:
    return tf.read_report(_spec, path)


def file_report(spec, path) -> tf.ReadReport:
    """A file read with a task's definition, read again only when the file or a field that says
    how it reads changes (not for a new title, head or loss)."""
    p = Path(path)
    fields = json.dumps({k: v for k, v in spec.to_dict().items() if k in tf.READ_FIELDS}, sort_keys=True)
    return cached_report(fields, str(p), (p.stat().st_size, p.stat().st_mtime_ns), spec)


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
    elif s.kind == "tasks":  # the built-in tasks and the ones added above
        st.multiselect(label, [*s.choices, *(d["name"] for d in own_tasks())], key=k, help=s.help)
    elif s.kind == "bool":
        st.checkbox(label, key=k, help=s.help)
    elif s.kind == "int":
        st.number_input(label, key=k, help=s.help, **{"step": 1, **bounds(s), **NUMBER.get(s.name, {})})
    elif s.kind == "float":
        st.number_input(label, key=k, help=s.help, **{"step": 0.1, **bounds(s), **NUMBER.get(s.name, {})})
    else:
        st.text_input(label, key=k, help=s.help)


# ---- adding a task of your own: the draft's widgets, filled from what the file looks like ----------

def own_tasks() -> list[dict]:
    """The tasks added on this page (their definitions), in the order added."""
    return st.session_state.setdefault("own_tasks", [])


def taken_names() -> list[str]:
    return [*BUILTIN_NAMES, *(d["name"] for d in own_tasks())]


# a guessed definition (taskform.guess) as the draft's widget values
def draft_values(g: dict, reading: bool = True) -> dict:
    cols = g["text_columns"]
    values = {"task_input": g["input"], "task_text_a": cols[0] if cols else None,
              "task_text_b": cols[1] if len(cols) > 1 else None, "task_label": g["label_column"],
              "task_id": g["id_column"], **label_values(g), **model_values(g),
              "task_name": g["name"], "task_title": g["title"], "task_weight": g["weight"]}
    if reading:
        values.update(task_format=g["format"], task_delimiter=g["delimiter"], task_quoting=g["quoting"],
                      task_encoding=g["encoding"])
    return values


def label_values(lab: dict) -> dict:
    return {"task_kind": lab["kind"], "task_classes": lab["classes"],
            "task_label_names": ", ".join(lab["label_names"] or []),
            "task_low": lab["range"][0], "task_high": lab["range"][1]}


def model_values(m: dict) -> dict:
    return {"task_head": m["head"], "task_loss": m["loss"], "task_metrics": m["metrics"],
            "task_main_metric": m["main_metric"]}


def fill(values: dict, overwrite: bool = True) -> None:
    st.session_state.update({k: v for k, v in values.items() if overwrite or k not in st.session_state})


def new_file(path: str, sig) -> None:
    """A train file chosen: detect how to read it and guess the whole definition from it."""
    info = tf.scan(path)
    g = tf.guess(info, taken_names())
    st.session_state.update(task_for=sig, task_info=info, task_guess=g, task_detected=info.reading)
    fill(draft_values(g))


def draft_reading() -> tf.Reading:
    """How the draft reads its files, as chosen (a JSONL file has no delimiter or quoting)."""
    ss = st.session_state
    return tf.Reading(ss.task_format, ss.get("task_delimiter", "\t"), ss.get("task_quoting", "minimal"),
                      ss.task_encoding)


def reading_changed() -> None:
    """Another format, delimiter, quoting or encoding: other columns, so the mapping is guessed again."""
    ss = st.session_state
    try:
        info = tf.scan(ss.task_info.path, draft_reading())
    except DataError as e:
        ss.task_scan_error = str(e)
        return
    ss.pop("task_scan_error", None)
    g = {**tf.guess(info, taken_names()), **{k: ss[f"task_{k}"] for k in ("name", "title", "weight")}}
    ss.update(task_info=info, task_guess=g)
    fill(draft_values(g, reading=False))


def label_changed() -> None:
    """Another label column: its values say the kind, the classes or the range."""
    ss = st.session_state
    lab = tf.guess_label(ss.task_info.stats.get(ss.task_label))
    ss.task_guess.update(lab)
    fill(label_values(lab))
    shape_changed()


def shape_changed() -> None:
    """Another input, kind or number of classes: the head, loss and metrics of that shape."""
    ss = st.session_state
    fill(model_values(tf.model_defaults(ss.task_input, ss.task_kind, ss.get("task_classes"))))


def add_task(d: dict) -> None:
    own_tasks().append(d)
    k = key("tasks")
    st.session_state[k] = [*(st.session_state.get(k) or []), d["name"]]  # trained with the others
    st.session_state.task_round = st.session_state.get("task_round", 0) + 1  # a fresh, empty draft
    for k in ("task_train_path", "task_dev_path"):
        st.session_state[k] = ""
    st.session_state.pop("task_for", None)
    st.session_state.task_added = d["name"]


def remove_task(name: str) -> None:
    st.session_state.own_tasks = [d for d in own_tasks() if d["name"] != name]
    k = key("tasks")
    st.session_state[k] = [t for t in st.session_state.get(k) or [] if t != name]


def train_file_info(path: str) -> tf.FileInfo | None:
    """The chosen train file as scanned (a new one: its definition guessed), or None after saying why not."""
    if not path:
        st.info("Choose a labelled file: JSONL (one object per line), or a table with a header row, separated "
                "by TAB, comma or semicolon.")
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        st.error(f"{path}: no such file.")
        return None
    sig = (str(p.resolve()), p.stat().st_mtime_ns)
    if st.session_state.get("task_for") != sig or "task_info" not in st.session_state:
        try:
            new_file(str(p.resolve()), sig)
        except DataError as e:
            st.error(str(e))
            return None
    fill(draft_values(st.session_state.task_guess), overwrite=False)  # the widgets hidden in the last run
    return st.session_state.task_info


def chosen_file(label: str, source: str, path_key: str, placeholder: str) -> str:
    """A file's path: typed, or uploaded and saved under the runs folder (the trainer reads paths)."""
    if source == "a file on this machine":
        return st.text_input(label, key=path_key, placeholder=placeholder).strip()
    up = st.file_uploader(label, key=f"{path_key}_upload_{st.session_state.get('task_round', 0)}",
                          type=["csv", "tsv", "txt", "jsonl", "json"])
    return str(tf.save_upload(up.name, up.getvalue(), runfolder.runs_dir())) if up else ""


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
    st.session_state[key("tasks")] = [*BUILTIN_NAMES, *(d["name"] for d in own_tasks())]

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

# ---- tasks of your own ----------------------------------------------------------------------------
st.markdown("#### Tasks of your own")
st.caption("Beside SST, Quora and STS: a task of yours, from a labelled file of sentences or sentence pairs. "
           "It is trained with the tasks chosen under Settings (the run's task file is written for you).")
for d in own_tasks():
    left, right = st.columns([8, 1], vertical_alignment="center")
    left.markdown(tf.describe(d))
    right.button("Remove", key=f"remove_{d['name']}", on_click=remove_task, args=(d["name"],))
if st.session_state.get("task_added"):
    st.success(f"Added task {st.session_state.pop('task_added')}: it is chosen under Settings → Tasks.",
               icon=":material/add_task:")
with st.expander("Add a task", expanded=bool(st.session_state.get("task_for"))):
    files_from = st.radio("Files", ["a file on this machine", "an upload"], key="task_source", horizontal=True)
    train_path = chosen_file("Train file", files_from, "task_train_path", "/path/to/train.csv")
    info = train_file_info(train_path)
    if info is not None:
        train_path = info.path
        # 1. the file as read
        st.markdown(f"**Preview** — the first {len(info.preview)} of {info.rows:,} rows. "
                    f"Detected: {st.session_state.task_detected.describe()}.")
        if st.session_state.get("task_scan_error"):
            st.error(st.session_state.task_scan_error)
        st.dataframe(info.preview, hide_index=True, width="stretch")
        c = st.columns(4)
        c[0].selectbox("Format", ["delimited", "jsonl"], key="task_format", on_change=reading_changed)
        if st.session_state.task_format == "delimited":
            c[1].selectbox("Delimiter", list(tf.DELIMITERS), key="task_delimiter", on_change=reading_changed,
                           format_func=tf.DELIMITERS.get)
            c[2].selectbox("Quotes", ["minimal", "none"], key="task_quoting", on_change=reading_changed,
                           format_func={"minimal": "csv quoting", "none": "plain characters"}.get)
        c[3].selectbox("Encoding", list(tf.ENCODING_NAMES), key="task_encoding", on_change=reading_changed,
                       format_func=tf.ENCODING_NAMES.get)

        # 2. its columns, and what the task predicts
        columns = [col for col in info.columns if col]
        c = st.columns(4)
        pair = c[0].radio("Input", ["sentence", "pair"], key="task_input", on_change=shape_changed,
                          horizontal=True) == "pair"
        c[1].selectbox("First text column" if pair else "Text column", columns, key="task_text_a")
        if pair:
            c[2].selectbox("Second text column", columns, key="task_text_b")
        c[3].selectbox("Label column", columns, key="task_label", on_change=label_changed)
        c = st.columns(4)
        c[0].selectbox("Id column (optional)", [None, *columns], key="task_id",
                       format_func=lambda v: "(none: the line number)" if v is None else v)
        kind = c[1].radio("Kind", KINDS, key="task_kind", on_change=shape_changed, horizontal=True)
        if kind == "classification":
            c[2].number_input("Classes", min_value=2, step=1, key="task_classes", on_change=shape_changed)
            c[3].text_input("Label names (optional)", key="task_label_names",
                            help="Comma-separated, class 0 first; a file may give a label by its name or its "
                                 "number 0 … K−1. Empty: the labels are numbers.")
        else:
            c[2].number_input("Lowest score", key="task_low", step=0.5)
            c[3].number_input("Highest score", key="task_high", step=0.5)
        ss = st.session_state
        heads = tf.head_choices(ss.task_input, kind)
        fill({"task_head": heads[0]}, overwrite=ss.get("task_head") not in heads)
        losses = tf.loss_choices(kind, ss.get("task_classes"), ss.task_head)
        fill({"task_loss": losses[0]}, overwrite=ss.get("task_loss") not in losses)
        metrics = tf.metric_choices(kind, ss.get("task_classes"))
        fill({"task_metrics": [m for m in ss.get("task_metrics") or [] if m in metrics] or metrics[:1]})
        c = st.columns(4)
        c[0].selectbox("Head", heads, key="task_head", help="docs/tasks.md describes each head")
        c[1].selectbox("Loss", tf.loss_choices(kind, ss.get("task_classes"), ss.task_head), key="task_loss")
        chosen = c[2].multiselect("Metrics", metrics, key="task_metrics")
        fill({"task_main_metric": chosen[0] if chosen else None}, overwrite=ss.get("task_main_metric") not in chosen)
        c[3].selectbox("Main metric", chosen, key="task_main_metric",
                       help="the task's score in the results and its share of the Average")
        c = st.columns(4)
        c[0].text_input("Name", key="task_name", help="lower-case letters, digits, _: names its metrics (<name>_acc)")
        c[1].text_input("Title", key="task_title", help="what the results, the Playground and the model card call it")
        c[2].number_input("Loss weight", min_value=0.01, step=0.1, key="task_weight")

        # 3. its dev file
        dev_source = c[3].radio("Dev rows from", ["another file", "a part of the train file"], key="task_dev_source",
                                help="The trainer scores every task on its dev file (and keeps the best "
                                     "checkpoint by it).")
        whole = None
        if dev_source == "another file":
            dev_path = chosen_file("Dev file", files_from, "task_dev_path", "/path/to/dev.csv")
            dev_path = str(Path(dev_path).expanduser().resolve()) if dev_path else None
            train_file = train_path
        else:
            share = st.slider("Part of the train file for dev (%)", 5, 50, 20, step=5, key="task_dev_share",
                              help="Rows chosen at random, the same ones every time; both parts are written "
                                   "under the runs folder, and the run trains on the rest only.")
            try:
                train_file, dev_path = map(str, tf.split_file(train_path, draft_reading(), runfolder.runs_dir(),
                                                              share / 100))
                whole = train_path
            except (DataError, ValueError, OSError) as e:
                st.error(f"Cannot split the train file: {e}")
                train_file, dev_path = train_path, None

        # 4. the definition, read as the trainer will read it
        names = tf.parse_names(ss.get("task_label_names", ""))
        reading = draft_reading()
        draft = tf.build_spec(
            name=ss.task_name, title=ss.task_title, input=ss.task_input, kind=kind, train_file=train_file,
            dev_file=dev_path, format=reading.format, delimiter=reading.delimiter, quoting=reading.quoting,
            encoding=reading.encoding,
            text_columns=[ss.task_text_a, ss.get("task_text_b")] if pair else [ss.task_text_a],
            label_column=ss.task_label, id_column=ss.task_id, classes=ss.get("task_classes"), label_names=names,
            range=(ss.get("task_low"), ss.get("task_high")), head=ss.task_head, loss=ss.task_loss,
            metrics=chosen, main_metric=ss.get("task_main_metric"), weight=ss.task_weight)
        result = tf.check(draft, taken_names(), whole_train=whole, report=file_report)
        if result.reports:
            st.markdown("**Rows** (read with this definition)")
            st.dataframe(result.counts(), hide_index=True)
        if result.bad_lines():
            st.markdown("**First bad lines** (skipped when training)")
            st.dataframe(result.bad_lines(), hide_index=True, width="stretch")
        for problem in result.problems:
            st.error(problem, icon=":material/block:")
        st.button("Add task", type="primary", icon=":material/add:", disabled=not result.ok, on_click=add_task,
                  args=(result.spec.to_dict() if result.ok else None,))

# ---- 2. settings -----------------------------------------------------------------------------
st.subheader("2 · Settings")
st.selectbox("Preset", [*PRESETS, DEFAULTS], key="preset", on_change=apply_preset,
             help="Fills the form below from a file in configs/ (the file `mtbert train --config` "
                  "takes); the quick CPU demo trains for about 2.5 minutes on 2 CPU cores.")
with st.form("settings"):
    for section in dict.fromkeys(s.section for s in SPEC):
        with st.expander(section, expanded=section in ("Model and tasks", "Multitask method", "Budget")):
            cols = st.columns(4)
            for i, s in enumerate(x for x in SPEC if x.section == section):
                with cols[i % 4]:
                    setting_widget(s)
    start = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")

saved.update({k: st.session_state[k] for k in FORM_KEYS if k in st.session_state})

if start:
    config = {s.name: s.from_widget(st.session_state[key(s.name)]) for s in SPEC}
    config.update(data_dir=None if folder == str(SAMPLE_DIR) else folder, quora_train=quora_train)
    try:
        if not data_ok:
            raise ValueError("choose a data folder that exists first")
        if own_tasks():  # the added tasks as the run's task file; the trainer copies their definitions
            config["tasks_file"] = str(tf.write_tasks_file(own_tasks(), runfolder.runs_dir()))
        st.session_state.watch = str(runs.start_run(config))
    except runs.LockHeld as e:
        st.error(f"Not started: {e}. Stop it, or wait for it to finish.", icon=":material/block:")
    except (ValueError, OSError, runs.RunError) as e:
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
    right.plotly_chart(charts.dev_figure(records, runs.run_tasks(run_dir)), key="dev_chart")
    if any(r.get("type") == "step" and "conflicts" in r for r in records):
        left, right = st.columns(2)
        left.plotly_chart(charts.pcgrad_figure(records), key="pcgrad_chart")
        right.plotly_chart(charts.cosine_figure(records), key="cosine_chart")
    if any(r.get("type") == "step" and "task_weights" in r for r in records):
        st.plotly_chart(charts.weights_figure(records), key="weights_chart")


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
