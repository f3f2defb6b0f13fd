"""Runs: every run with its settings and final scores, overlaid curves, the CS224N leaderboard files
of a run's best checkpoint, pushing a checkpoint to the Hugging Face Hub, and deleting old runs."""
import streamlit as st

from mtbert import runfolder, submit
from mtbert.hub import HubError
from mtbert.studio import charts, checkpoints, environment, runs

st.set_page_config(page_title="Runs · mtbert", layout="wide")
st.title("Runs")

folders = runs.list_runs()
if not folders:
    st.caption(f"No runs in {runfolder.runs_dir()} yet: start one on the Train page.")
    st.stop()

# the run and its scores stay in view when the settings columns are scrolled sideways
table = runs.runs_table(folders)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"run": st.column_config.TextColumn(pinned=True),
                            **{c: st.column_config.NumberColumn(format="%.3f", pinned=True)
                               for c in runs.score_columns(table)}})
st.caption("Scores: the dev row of each run's results table (the Average of its tasks' main scores, then "
           "one column per task), for its best checkpoint.")

st.subheader("Compare curves")
names = [f.name for f in folders]
chosen = st.multiselect("Runs to overlay", names, default=names[:3], key="overlay")
if chosen:
    records = {n: runfolder.read_metrics(runfolder.runs_dir() / n)[0] for n in chosen}
    left, right = st.columns(2)
    left.plotly_chart(charts.overlay_figure(records, "loss"), key="overlay_loss")
    right.plotly_chart(charts.overlay_figure(records, "dev"), key="overlay_dev")
    if any(r.get("type") == "step" and "task_weights" in r for rs in records.values() for r in rs):
        st.plotly_chart(charts.overlay_figure(records, "weights"), key="overlay_weights")

st.subheader("Push a checkpoint to the Hugging Face Hub")
pushable = [c for c in checkpoints.list_checkpoints() if c.kind in ("run", "shipped")]
if not pushable:
    st.caption("No checkpoint to push yet: a run writes best/ at its first evaluation.")
else:
    token_from = checkpoints.token_source(st.secrets)
    st.caption("Uploads the checkpoint (without the trainer's resume state) with a generated model card. "
               + (f"Token: {token_from}." if token_from else
                  "No token found: set HF_TOKEN in the Streamlit secrets or the environment, or run "
                  "`hf auth login`."))
    left, mid, right = st.columns([3, 3, 1], vertical_alignment="bottom")
    ref = left.selectbox("Checkpoint", pushable, format_func=str, key="push_checkpoint")
    repo_id = mid.text_input("Hub repo", key="push_repo", placeholder="user/name")
    private = right.checkbox("private", key="push_private", help="Create the repo private (an existing repo "
                                                                  "keeps its visibility)")
    if st.button("Push to the Hub", icon=":material/cloud_upload:", key="push_go"):
        try:
            with st.spinner(f"Pushing {ref.name} to {repo_id}…"):
                url = checkpoints.push_checkpoint(ref.path, repo_id, token=checkpoints.secret_token(st.secrets),
                                                  private=private)
        except (runs.RunError, HubError) as e:
            st.error(f"Not pushed: {e}")
        else:
            st.success(f"Pushed {ref.name} to {url}")

st.subheader("Leaderboard files")
submittable = [f.name for f in folders if submit.best_checkpoint(f)]
if not submittable:
    st.caption("No best checkpoint yet: a run writes best/ at its first evaluation.")
else:
    st.caption("The six prediction files the CS224N default project hands in, in the starter code's format, "
               f"from the run's best checkpoint: written to the run's {submit.ZIP_FOLDER}/ folder, and packed "
               "as prepare_submit.py packs them. A split whose file the data folder lacks is skipped.")
    left, right = st.columns(2)
    lb_run = left.selectbox("Run", submittable, key="leaderboard_run")
    lb_folders = environment.run_data_folders(runfolder.runs_dir() / lb_run)
    lb_data = right.selectbox("Data", list(lb_folders), key="leaderboard_data")
    if st.button("Leaderboard files", icon=":material/leaderboard:", key="leaderboard_go"):
        try:
            with st.spinner(f"Predicting with {lb_run}/best…"):
                st.session_state.leaderboard = submit.run_leaderboard_files(runfolder.runs_dir() / lb_run,
                                                                            lb_folders[lb_data])
        except submit.SubmitError as e:
            st.session_state.pop("leaderboard", None)
            st.error(f"No leaderboard files: {e}")
    done = st.session_state.get("leaderboard")
    if done and done.out_dir.parent.name == lb_run and done.zip_path.is_file():
        st.success(f"Wrote {len(done.written)} files to {done.out_dir}: " + ", ".join(p.name for p in done.written))
        for line in done.notes():
            st.warning(line)
        st.markdown(done.table())
        st.download_button("Download the submission zip", done.zip_path.read_bytes(), file_name=done.zip_path.name,
                           mime="application/zip", icon=":material/download:", on_click="ignore",
                           key="leaderboard_zip")

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
            runs.delete_run(runfolder.runs_dir() / name)
            st.session_state.pop("delete_choice", None)
            st.toast(f"Deleted {name}")
            st.rerun()
        except runs.RunError as e:
            st.error(str(e))
    if no.button("Cancel", key="delete_no"):
        del st.session_state.confirm_delete
        st.rerun()
