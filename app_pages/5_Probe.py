"""Probe: how every task's answer moves when gendered words and names are swapped."""
import json

import streamlit as st

from mtbert.io import finite
from mtbert.probe import ProbeError, probe_text
from mtbert.studio import playground as pg
from mtbert.studio import probe as sp
from mtbert.studio.widgets import pick_checkpoint

st.set_page_config(page_title="Probe · mtbert", layout="wide")


st.title("Probe")
st.caption("How each task's answer moves when gendered words (he/she, his/her, father/mother, Mr/Ms, …) and "
           "first names are swapped. A shift is the answer for the feminine version minus the answer for the "
           "masculine one; a model that ignores gender shifts by nothing. See docs/probe.md.")
refs, problem = pg.checkpoint_choices()
if problem:
    st.error(problem)
picked = pick_checkpoint("Checkpoint", refs, "probe_ckpt")
if picked is None:
    st.stop()
path, model, tok = picked.path, picked.model, picked.tokenizer

templates_tab, text_tab = st.tabs(["Templates", "Your sentence"])

with templates_tab:
    chosen = st.multiselect("Tasks", model.cfg.names, default=model.cfg.names, key="probe_tasks")
    if st.button("Run the probe", type="primary", key="probe_go", disabled=not chosen):
        st.session_state.probe_job = sp.ProbeJob(list(chosen)).start(model, tok)
        st.session_state.probe_of = path
    job = st.session_state.get("probe_job")
    if job is not None and st.session_state.get("probe_of") != path:
        job = None  # a probe of another checkpoint: not shown against this one
    polling = job is not None and not job.finished

    @st.fragment(run_every=1.0 if polling else None)
    def probe_progress() -> None:
        if job is None:
            return
        if polling and job.finished:
            st.rerun()  # done: one full redraw, and the polling stops
        if job.error:
            st.error(f"The probe failed: {job.error}")
        elif job.result is None:
            st.progress(job.fraction, text=f"{job.done:,} of {job.total or '…'} template items")

    probe_progress()
    result = job.result if job is not None else None
    if result is not None:
        st.download_button("Download everything (JSON)", json.dumps(finite(result.to_dict()), indent=1),
                           file_name="probe.json", mime="application/json", key="probe_download")
        for tp in result.tasks:
            with st.container(border=True):
                st.markdown(f"#### {tp.spec.title}")
                if not tp.items:
                    st.info(f"No {'pair' if tp.spec.is_pair else 'sentence'} templates to probe {tp.name} with.")
                    continue
                c1, c2, c3 = st.columns(3)
                main = tp.summaries[tp.main]
                c1.metric(f"Mean shift of {tp.main}", f"{main['mean']:+.4f}",
                          help="feminine minus masculine, averaged over the template items")
                c2.metric("Mean |shift|", f"{main['mean_abs']:.4f}")
                c3.metric("Predicted label flips", "—" if tp.flip_rate is None else f"{100 * tp.flip_rate:.1f}%",
                          help=f"of {len(tp.items):,} items")
                measure = st.selectbox("Measure", list(tp.summaries), index=list(tp.summaries).index(tp.main),
                                       key=f"probe_measure_{tp.name}")
                st.plotly_chart(sp.shift_histogram(tp, measure), key=f"probe_hist_{tp.name}")
                st.dataframe(sp.summary_rows(tp), hide_index=True, key=f"probe_summary_{tp.name}")
                st.markdown(f"**Largest {tp.moved_what}**")
                st.dataframe(sp.top_rows(tp), hide_index=True, key=f"probe_top_{tp.name}")

with text_tab:
    st.caption("Every gendered word and known first name is swapped both ways; a sentence task reads the first "
               "sentence, a pair task both.")
    a = st.text_input("Sentence", key="probe_text_a", placeholder="She is a brilliant engineer and a caring mother.")
    b = st.text_input("Second sentence (for the pair tasks)", key="probe_text_b")
    if st.button("Probe this input", type="primary", key="probe_text_go"):
        try:
            st.session_state.probe_text_result = path, probe_text(model, tok, a, b or None)
        except ProbeError as e:
            st.session_state.pop("probe_text_result", None)
            st.warning(str(e), icon=":material/edit_note:")
    of, r = st.session_state.get("probe_text_result", (None, None))
    if r is not None and of == path:
        for name, t in r["tasks"].items():
            st.markdown(f"#### {t['title']}")
            st.dataframe(sp.text_probe_rows(r, name), hide_index=True, key=f"probe_text_table_{name}")
        for name, why in r["skipped"].items():
            st.caption(f"{model.cfg.task(name).title}: not probed; {why}.")
