"""The error analysis's figures (plotly graph_objects), drawn from mtbert.analysis's dicts.

Each function returns a go.Figure; `task_figures` lists the ones that apply to a task's kind in
reading order, `compare_figures` those of a comparison. No Streamlit here: the Evaluate page shows
them with st.plotly_chart and `python -m mtbert report` writes them into one HTML file.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from . import analysis as an

MAX_SCATTER = 3000  # beyond this many points the regression scatter becomes a 2-D histogram
HEIGHT = 420
A_COLOR, B_COLOR, GOOD, BAD = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


def _layout(fig: go.Figure, title: str, x: str, y: str, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title), xaxis_title=x, yaxis_title=y, height=HEIGHT,
                      margin=dict(l=60, r=20, t=60, b=55), template="plotly_white", **kw)
    return fig


def plain(text) -> str:
    """Text shown as typed: plotly reads <b>, <a href=...> and the like in titles and tick labels."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def confusion_figure(rep: dict, task_title: str = "", normalised: bool = False) -> go.Figure:
    """Gold class down, predicted class across; counts, or each row's share of its gold class."""
    z = np.asarray(rep["confusion_normalised"] if normalised else rep["confusion"])
    labels = [plain(x) for x in rep["labels"]]
    counts = np.asarray(rep["confusion"])
    text = [[f"{z[i, j]:.2f}<br>({counts[i, j]})" if normalised else str(int(counts[i, j]))
             for j in range(z.shape[1])] for i in range(z.shape[0])]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, text=text, texttemplate="%{text}",
                               colorscale="Blues", zmin=0, zmax=1 if normalised else None,
                               colorbar=dict(title="share of row" if normalised else "examples"),
                               hovertemplate="gold %{y}<br>predicted %{x}<br>%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    what = "row-normalised (recall on the diagonal)" if normalised else "counts"
    return _layout(fig, f"{task_title} confusion matrix, {what}".strip(), "predicted class", "gold class")


def per_class_figure(rep: dict, task_title: str = "") -> go.Figure:
    fig = go.Figure()
    for key, name in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
        fig.add_bar(x=[plain(x) for x in rep["labels"]], y=np.asarray(rep[key]), name=name,
                    hovertemplate="%{x}<br>" + name + " %{y:.3f}<extra></extra>")
    fig.update_yaxes(range=[0, 1])
    fig.update_xaxes(type="category")
    return _layout(fig, f"{task_title} per-class precision, recall and F1 (macro-F1 {_fmt(rep['macro_f1'])})".strip(),
                   "gold class", "score", barmode="group")


def threshold_figure(curve: dict, task_title: str = "", positive: str = "class 1") -> go.Figure:
    """Accuracy and F1 against the decision threshold on P(positive), the stored threshold marked."""
    fig = go.Figure()
    fig.add_scatter(x=curve["thresholds"], y=curve["accuracy"], name="accuracy", mode="lines")
    fig.add_scatter(x=curve["thresholds"], y=curve["f1"], name=f"F1 of {positive}", mode="lines")
    t = curve["threshold"]
    fig.add_vline(x=t, line=dict(color="black", dash="dash"),
                  annotation_text=f"stored {t:.3f}: accuracy {curve['stored_accuracy']:.3f}",
                  annotation_position="top right" if t < 0.5 else "top left")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, f"{task_title} accuracy and F1 against the decision threshold".strip(),
                   f"threshold on P({positive}) without the stored offset", "score",
                   legend=dict(x=0.02, y=0.02, bgcolor="rgba(255,255,255,0.8)"))


def _curve_figure(x, y, name: str, chance: tuple, chance_name: str, shape: str, title: str, xlab: str,
                  ylab: str) -> go.Figure:
    """A curve in the unit square beside the line a random ranking would give."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=list(chance), mode="lines", name=chance_name, line=dict(color="grey", dash="dot"))
    fig.add_scatter(x=x, y=y, mode="lines", name=name, line=dict(shape=shape))
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, title, xlab, ylab)


def roc_figure(roc: dict, task_title: str = "") -> go.Figure:
    auc = _fmt(roc["auc"])
    return _curve_figure(roc["fpr"], roc["tpr"], f"ROC (AUC {auc})", (0, 1), "chance", "linear",
                         f"{task_title} ROC curve, AUC {auc}".strip(), "false positive rate", "true positive rate")


def pr_figure(pr: dict, task_title: str = "", positive: str = "class 1") -> go.Figure:
    ap = _fmt(pr["ap"])
    return _curve_figure(pr["recall"], pr["precision"], f"PR (AP {ap})", (pr["prevalence"],) * 2,
                         "chance (prevalence)", "hv", f"{task_title} precision-recall curve, average precision {ap}".strip(),
                         f"recall of {positive}", f"precision of {positive}")


def reliability_figure(rel: dict, task_title: str = "") -> go.Figure:
    """Accuracy against mean confidence per confidence bin; the diagonal is perfect calibration."""
    edges = np.asarray(rel["edges"])
    mids = (edges[:-1] + edges[1:]) / 2
    has = np.asarray(rel["count"]) > 0
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line=dict(color="grey", dash="dot"))
    fig.add_bar(x=mids[has], y=np.asarray(rel["accuracy"])[has], width=(edges[1] - edges[0]) * 0.9,
                name="accuracy in bin", customdata=np.stack([np.asarray(rel["count"])[has],
                                                             np.asarray(rel["confidence"])[has]], axis=1),
                hovertemplate="accuracy %{y:.3f}<br>mean confidence %{customdata[1]:.3f}"
                              "<br>%{customdata[0]} examples<extra></extra>", opacity=0.7)
    fig.add_scatter(x=np.asarray(rel["confidence"])[has], y=np.asarray(rel["accuracy"])[has],
                    mode="markers+lines", name="accuracy at mean confidence")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, f"{task_title} reliability diagram, ECE {_fmt(rel['ece'])}".strip(),
                   "confidence (probability of the predicted class)", "accuracy")


def scatter_figure(gold: np.ndarray, pred: np.ndarray, value_range: tuple, task_title: str = "",
                   max_points: int = MAX_SCATTER) -> go.Figure:
    """Predicted against gold; a 2-D histogram beyond `max_points` points."""
    lo, hi = value_range
    fig = go.Figure()
    if len(gold) > max_points:
        fig.add_histogram2d(x=gold, y=pred, xbins=dict(start=lo, end=hi, size=(hi - lo) / 40),
                            ybins=dict(start=lo, end=hi, size=(hi - lo) / 40), colorscale="Blues",
                            colorbar=dict(title="examples"))
    else:
        fig.add_scatter(x=gold, y=pred, mode="markers", name="example", marker=dict(size=5, opacity=0.5),
                        hovertemplate="gold %{x:.2f}<br>predicted %{y:.2f}<extra></extra>")
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = gold", line=dict(color="grey", dash="dot"))
    fig.update_xaxes(range=[lo, hi])
    fig.update_yaxes(range=[lo, hi])
    return _layout(fig, f"{task_title} predicted against gold score".strip(), "gold score", "predicted score")


def error_by_bin_figure(reg: dict, task_title: str = "") -> go.Figure:
    fig = go.Figure()
    text = [f"n={c}" for c in reg["count"]]
    fig.add_bar(x=reg["bins"], y=reg["mean_abs_error"], name="mean absolute error", text=text)
    fig.add_bar(x=reg["bins"], y=reg["mean_signed_error"], name="mean signed error (predicted - gold)")
    fig.update_xaxes(type="category")
    return _layout(fig, f"{task_title} error by gold-score bin (Pearson {_fmt(reg['pearson'])}, "
                        f"Spearman {_fmt(reg['spearman'])})".strip(), "gold score bin", "error", barmode="group")


def task_figures(r: an.TaskResult) -> list[tuple[str, go.Figure]]:
    """(name, figure) for every figure that applies to the task's kind, in reading order."""
    title = plain(r.spec.title)
    if not r.is_classification:
        reg = an.regression_report(r)
        return [("scatter", scatter_figure(r.gold, r.raw, r.spec.range, title)),
                ("error_by_bin", error_by_bin_figure(reg, title))]
    rep = an.classification_report(r)
    figs = [("confusion", confusion_figure(rep, title)),
            ("confusion_normalised", confusion_figure(rep, title, normalised=True)),
            ("per_class", per_class_figure(rep, title))]
    if r.spec.binary:
        figs += [("threshold", threshold_figure(an.threshold_curve(r), title, plain(r.spec.label_name(1)))),
                 ("roc", roc_figure(an.roc_curve(r), title)),
                 ("pr", pr_figure(an.pr_curve(r), title, plain(r.spec.label_name(1))))]
    return figs + [("reliability", reliability_figure(an.reliability(r), title))]


def delta_figure(cmp: dict, task_title: str = "", a_name: str = "A", b_name: str = "B") -> go.Figure:
    """Each metric of checkpoint B minus A (above 0: B scores higher; for mae, rmse and ece lower is better)."""
    keys = [k for k, v in cmp["metrics"].items() if k != "threshold" and np.isfinite(v["delta"])]
    deltas = [cmp["metrics"][k]["delta"] for k in keys]
    better = [(d < 0) if k in ("mae", "rmse", "ece") else (d > 0) for k, d in zip(keys, deltas)]
    fig = go.Figure(go.Bar(x=keys, y=deltas, marker_color=[GOOD if g else BAD for g in better],
                           hovertemplate="%{x}: %{y:+.4f}<extra></extra>"))
    fig.update_xaxes(type="category")
    return _layout(fig, f"{task_title}: {b_name} minus {a_name} (green: {b_name} better)".strip(),
                   "metric", "difference")


def compare_figures(a: an.TaskResult, b: an.TaskResult, cmp: dict | None = None,
                    a_name: str = "A", b_name: str = "B") -> list[tuple[str, go.Figure]]:
    """The metric deltas, and the two checkpoints' curves on one figure where the task has them."""
    cmp = cmp or an.compare(a, b)
    title, a_name, b_name = plain(a.spec.title), plain(a_name), plain(b_name)
    figs = [("deltas", delta_figure(cmp, title, a_name, b_name))]
    if a.spec.binary:
        fig = go.Figure()
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(color="grey", dash="dot"))
        for r, name, color in ((a, a_name, A_COLOR), (b, b_name, B_COLOR)):
            roc = an.roc_curve(r)
            fig.add_scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"{name} (AUC {_fmt(roc['auc'])})",
                            line=dict(color=color))
        figs.append(("roc_both", _layout(fig, f"{title} ROC curves of both checkpoints", "false positive rate",
                                         "true positive rate")))
    elif not a.is_classification:
        fig = go.Figure()
        for r, name, color in ((a, a_name, A_COLOR), (b, b_name, B_COLOR)):
            reg = an.regression_report(r)
            fig.add_bar(x=reg["bins"], y=reg["mean_abs_error"], name=name, marker_color=color)
        fig.update_xaxes(type="category")
        figs.append(("error_by_bin_both", _layout(fig, f"{title} mean absolute error by gold-score bin, both "
                                                       "checkpoints", "gold score bin", "mean absolute error",
                                                  barmode="group")))
    return figs
