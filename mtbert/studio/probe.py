"""The Probe page's logic, without Streamlit: the probe run in a background thread, its figures and tables."""
from __future__ import annotations

from ..probe import ProbeResult, TaskProbe, run_probe
from .jobs import BackgroundJob


class ProbeJob(BackgroundJob):
    """mtbert.probe.run_probe in a background thread; `result` is its ProbeResult."""

    def __init__(self, tasks: list, templates: str | None = None):
        super().__init__()
        self.tasks, self.templates = tasks, templates

    def start(self, model, tokenizer) -> "ProbeJob":
        self.model, self.tokenizer = model, tokenizer
        return super().start()

    def work(self) -> ProbeResult:
        return run_probe(self.model, self.tokenizer, tasks=self.tasks, templates=self.templates,
                         progress=self.progress)


def summary_rows(tp: TaskProbe) -> list[dict]:
    """One row per measure of a task: the table under its histogram."""
    rows = []
    for m, s in tp.summaries.items():
        rows.append({"measure": m, "n": s["n"], "mean shift": s["mean"], "mean |shift|": s["mean_abs"],
                     "sd": s["sd"], "max |shift|": s["max_abs"], "up": s["up"], "down": s["down"],
                     "sign test p": s["sign_p"], "Wilcoxon p": s["wilcoxon_p"]})
    return rows


def top_rows(tp: TaskProbe, k: int = 10) -> list[dict]:
    rows = []
    for r in tp.top(k):
        rows.append({"shift": r["shift"], "original": " || ".join(r["original"]), "answer": r["answer_original"],
                     "counterfactual": " || ".join(r["counterfactual"]),
                     "answer after swap": r["answer_counterfactual"],
                     "label flipped": r["flipped"], "template": r["template"]})
    return rows


def shift_histogram(tp: TaskProbe, measure: str | None = None):
    """The histogram of one measure's shifts (counterfactual minus original), a line at zero."""
    import plotly.graph_objects as go

    measure = measure or tp.main
    h = tp.summaries[measure]["histogram"]
    edges, counts = h["edges"], h["counts"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    fig = go.Figure(go.Bar(x=centers, y=counts, width=widths, marker_color="#4c78a8",
                           hovertemplate="shift %{x:.4f}<br>%{y} items<extra></extra>"))
    fig.add_vline(x=0, line_dash="dash", line_color="#888")
    fig.update_layout(title=f"{tp.spec.title}: shift of {measure} (feminine minus masculine)",
                      xaxis_title=f"shift of {measure}", yaxis_title="items", bargap=0.05, height=320,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def text_probe_rows(r: dict, task: str) -> list[dict]:
    """A typed input's variants and one task's answer to each, for a table."""
    t = r["tasks"][task]
    main = t["main_measure"]
    return [{"input": v["label"], "text": v["a"] + (f" || {v['b']}" if v["b"] is not None else ""),
             "answer": ans, main: value, "shift": shift}
            for v, ans, value, shift in zip(r["variants"], t["answers"], t["values"][main], t["shifts"][main])]
