"""Sweeps: one base config, the settings to vary and a number of seeds become a queue of runs; watch
them go, then compare the variants (mean ± sd over seeds) and overlay the runs' curves.

The sweep runs in its own process (`python -m mtbert sweep`) and keeps its state in its sweep
folder, so a reload or a second tab re-attaches to it."""
from pathlib import Path

import streamlit as st

from mtbert import sweep
from mtbert.config import PRESETS
from mtbert.methods import METHODS
from mtbert.studio import charts, runs
from mtbert.studio import sweeps as sw

st.set_page_config(page_title="Sweeps · mtbert", layout="wide")
st.title("Sweeps")
st.caption("A grid of settings times seeds, trained one run after another (docs/sweeps.md). On the command "
           "line: `python -m mtbert sweep --config FILE --vary gradient_method=sum,pcgrad --seeds 3`.")

# ---- 1. a new sweep ------------------------------------------------------------------------------
st.subheader("1 · New sweep")
with st.form("new_sweep"):
    left, right = st.columns(2)
    preset = left.selectbox("Preset", PRESETS, key="sweep_preset",
                            help="the base config every run starts from (the Train page's presets)")
    config_file = right.text_input("…or a config file", key="sweep_config_file", placeholder="configs/my.yaml",
                                   help="a YAML or JSON file of settings; when given, it replaces the preset")
    methods = st.multiselect("Gradient methods", list(METHODS), default=["sum", "pcgrad"], key="sweep_methods",
                             help="one variant per method (docs/methods.md)")
    left, right = st.columns(2)
    seeds = left.number_input("Seeds per variant", min_value=1, max_value=20, value=3, step=1, key="sweep_seeds",
                              help="the base seed, +1, +2, …; the table shows mean ± sd over them")
    name = right.text_input("Sweep name", key="sweep_name", placeholder="(the config's name)")
    more = st.text_area("Other settings to vary", key="sweep_vary", height=80, placeholder="lr=1e-5,2e-5",
                        help="one SETTING=VALUE,VALUE,… per line, as `--vary` takes them; the runs are the "
                             "product of all the lists")
    start = st.form_submit_button("Start sweep", type="primary", icon=":material/play_arrow:")

if start:
    try:
        vary = {"gradient_method": methods} if methods else {}
        vary.update(sw.parse_vary_text(more))
        base = sw.base_settings(preset, config_file)
        started = sw.start_sweep(base, vary, int(seeds), name.strip() or None)
        st.session_state.sweep_watch = st.session_state.sweep_choice = started.name
    except runs.LockHeld as e:
        st.error(f"Not started: {e}. Wait for it to finish.", icon=":material/block:")
    except (ValueError, OSError) as e:
        st.error(f"Not started: {e}", icon=":material/block:")

# ---- 2. a sweep ----------------------------------------------------------------------------------
folders = sweep.list_sweeps()
if not folders:
    st.caption(f"No sweeps in {sweep.sweeps_dir()} yet: start one above.")
    st.stop()
live = [f for f in folders if sw.is_live(sw.status(f))]
names = [f.name for f in folders]
watched = st.session_state.get("sweep_watch") or (live or folders)[0].name
chosen = st.selectbox("Sweep", names, index=names.index(watched) if watched in names else 0, key="sweep_choice")
folder = sweep.sweeps_dir() / chosen
started_live = sw.is_live(sw.status(folder))
st.subheader(f"2 · Sweep {chosen}")


@st.fragment(run_every=1.0 if started_live else None)
def monitor(folder: Path) -> None:
    st_ = sw.status(folder)
    if started_live and not sw.is_live(st_):
        st.rerun()  # it just ended: redraw with the results, and stop polling
    frac, text = sw.progress(st_)
    st.progress(frac, text=f"{st_['state']} · {text}")
    if sw.is_live(st_) and st.button("Stop sweep", icon=":material/stop:", key="sweep_stop",
                                     help="The running trainers save last/ and stop; Resume continues"):
        try:
            sw.stop_sweep(folder)
            st.toast("Stopping: the running runs save their state first.")
        except runs.RunError as e:
            st.error(str(e))
    st.dataframe(sw.run_rows(folder, st_), hide_index=True, width="stretch",
                 column_config={"dev average": st.column_config.NumberColumn(format="%.3f")})


monitor(folder)

status = sw.status(folder)
resumable = status["state"] in ("stopped", "interrupted") or (status["state"] == "failed" and status["counts"]["queued"])
if resumable:
    unfinished = status["counts"]["queued"] + status["counts"]["running"]
    st.warning(f"The sweep is {status['state']}: {unfinished} of {len(status['runs'])} runs unfinished. Resume continues them (a run with a saved last/ state resumes from it).",
               icon=":material/pause_circle:")
    if st.button("Resume sweep", icon=":material/play_arrow:", key="sweep_resume"):
        try:
            sw.resume_sweep(folder)
            st.rerun()
        except (runs.LockHeld, runs.RunError) as e:
            st.error(f"Not resumed: {e}")

if not started_live and status["counts"]["done"]:
    res = sweep.results(folder)
    st.markdown(f"**Results**: each run's best checkpoint's dev scores, mean ± sd over seeds; the step time "
                f"relative to {res['reference']}.")
    st.dataframe(sw.results_rows(res), hide_index=True, width="stretch",
                 column_config={f"× {res['reference']}": st.column_config.NumberColumn(format="%.2f")})
    versus = sw.versus_rows(res)
    if versus:
        st.markdown(f"**Against {res['reference']}**: the difference of the means; \"beyond noise\" where it is "
                    "larger than twice its standard error over the seeds.")
        st.dataframe(versus, hide_index=True, width="stretch")
    st.plotly_chart(sweep.bar_figure(res), key="sweep_bars")

records = sw.overlay_records(folder, status)
if records:
    st.markdown("**The runs' curves**")
    left, right = st.columns(2)
    left.plotly_chart(charts.overlay_figure(records, "dev"), key="sweep_overlay_dev")
    right.plotly_chart(charts.overlay_figure(records, "loss"), key="sweep_overlay_loss")
    if any(r.get("type") == "step" and "task_weights" in r for rs in records.values() for r in rs):
        st.plotly_chart(charts.overlay_figure(records, "weights"), key="sweep_overlay_weights")

with st.expander("sweep.log (last lines)"):
    st.code(sw.log_tail(folder) or "(empty)", language=None)
