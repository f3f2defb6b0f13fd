"""Runs: every run with its settings and final scores, overlaid curves, and deleting old runs."""
import streamlit as st

from mtbert import runs

st.set_page_config(page_title="Runs · mtbert", layout="wide")
st.title("Runs")

folders = runs.list_runs()
if not folders:
    st.caption(f"No runs in {runs.runs_dir()} yet: start one on the Train page.")
    st.stop()

st.dataframe([runs.describe_run(f) for f in folders], hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f")
                            for c in ("Paraphrase acc", "SST acc", "STS corr", "Average")})
st.caption("Scores: the dev row of the seed's table, for each run's best checkpoint.")

st.subheader("Compare curves")
names = [f.name for f in folders]
chosen = st.multiselect("Runs to overlay", names, default=names[:3], key="overlay")
if chosen:
    records = {n: runs.read_metrics(runs.runs_dir() / n)[0] for n in chosen}
    left, right = st.columns(2)
    left.plotly_chart(runs.overlay_figure(records, "loss"), key="overlay_loss")
    right.plotly_chart(runs.overlay_figure(records, "dev"), key="overlay_dev")

st.subheader("Delete a run")
victim = st.selectbox("Run", names, index=None, placeholder="choose a run", key="delete_choice")
if victim and st.button("Delete…", icon=":material/delete:", key="delete_ask"):
    st.session_state.confirm_delete = victim
if st.session_state.get("confirm_delete"):
    name = st.session_state.confirm_delete
    st.warning(f"Delete run **{name}**, its metrics and its checkpoints? This cannot be undone.")
    yes, no = st.columns([1, 8])
    if yes.button("Yes, delete", type="primary", key="delete_yes"):
        del st.session_state.confirm_delete
        try:
            runs.delete_run(runs.runs_dir() / name)
            st.session_state.pop("delete_choice", None)
            st.toast(f"Deleted {name}")
            st.rerun()
        except runs.RunError as e:
            st.error(str(e))
    if no.button("Cancel", key="delete_no"):
        del st.session_state.confirm_delete
        st.rerun()
