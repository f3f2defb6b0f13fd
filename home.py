"""Home: what the studio does, what this machine offers, where to go next."""
import streamlit as st

from mtbert.studio import checkpoints, environment, runs

st.set_page_config(page_title="mtbert studio", layout="wide")


@st.cache_data(ttl=300, show_spinner="Looking at this machine…")
def machine() -> dict:
    # hashing the base model's weights takes a moment; once every few minutes is plenty
    return environment.machine()


st.title("mtbert studio")
st.markdown(
    "Fine-tune **one BERT encoder on three tasks at once** — SST-5 sentiment, Quora paraphrase "
    "detection and STS similarity — and watch it learn: per-task losses, dev scores and, with "
    "**PCGrad**, how often the tasks' gradients conflict. Then play with the result: predictions, "
    "side-by-side checkpoints and attention maps. Everything runs on this machine, offline."
)

env = machine()
left, right = st.columns(2)
with left:
    st.subheader("This machine")
    st.markdown(f"**Device:** {env['device']}  \n**PyTorch:** {env['torch']}")
    st.markdown("**Base models**")
    for name, state in env["base_models"].items():
        st.markdown(f"- `{name}`: {state}")
    st.markdown("**Data**")
    for label, folder in env["data"].items():
        st.markdown(f"- {label}: `{environment.display_path(folder)}`")

with right:
    st.subheader("Recent runs")
    recent = runs.list_runs()[:5]
    active = runs.active_run()
    if active is not None:
        st.info(f"Training now: **{active.name}** — watch it on the Train page.", icon=":material/sync:")
    if recent:
        st.dataframe([{k: r[k] for k in ("run", "state", "step", "Average")} for r in map(runs.describe_run, recent)],
                     hide_index=True, width="stretch")
    else:
        st.caption("No runs yet. Start one on the Train page (the quick CPU demo takes a few minutes).")
    st.subheader("Checkpoints")
    st.dataframe([{"checkpoint": c.label, "kind": c.kind} for c in checkpoints.list_checkpoints()],
                 hide_index=True, width="stretch")

st.subheader("Where next")
# each link is titled as its page is in the navigation (app.py)
WHERE_NEXT = [
    ("app_pages/1_Train.py", "Pick settings or the quick CPU demo preset, start a run, watch the live charts."),
    ("app_pages/2_Playground.py", "Sentiment, paraphrase and similarity for your own sentences; attention views; "
                                  "batch files."),
    ("app_pages/4_Evaluate.py", "Where a checkpoint fails: confusion matrices, curves, its most confident mistakes; "
                                "two checkpoints compared."),
    ("app_pages/5_Probe.py", "Swap gendered words and names in template sentences and see how every task's answer "
                             "moves."),
    ("app_pages/6_Sweeps.py", "Several gradient methods or settings, several seeds each: a queue of runs, then "
                              "mean ± sd per variant."),
    ("app_pages/3_Runs.py", "Every run with its settings and scores; overlay curves; delete old runs."),
]
for column, (page, caption) in zip(st.columns(len(WHERE_NEXT)), WHERE_NEXT):
    with column:
        st.page_link(page)
        st.caption(caption)
