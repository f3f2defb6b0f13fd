"""The Train and Runs pages' charts of a run's metrics.jsonl records (plotly figures, no Streamlit)."""
from __future__ import annotations

import math

from ..report import result_columns
from .runs import _num

MAX_POINTS = 1500  # per chart series
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def ema(values: list[float], alpha: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled to zero."""
    out, s = [], 0.0
    for i, v in enumerate(values, 1):
        s = alpha * s + (1 - alpha) * v
        out.append(s / (1 - alpha ** i))
    return out


def step_series(records: list[dict], key: str) -> dict[str, tuple[list, list]]:
    """name -> (steps, values) for a per-task/per-pair dict field of step records (loss, cos, grad_norm)."""
    out: dict[str, tuple[list, list]] = {}
    for r in records:
        if r.get("type") != "step" or not isinstance(r.get(key), dict):
            continue
        for name, v in r[key].items():
            if _num(v) is not None:
                xs, ys = out.setdefault(name, ([], []))
                xs.append(r.get("step"))
                ys.append(float(v))
    return out


def loss_figure(records: list[dict], alpha: float = 0.9):
    return _layout(_raw_and_smoothed(step_series(records, "loss"), alpha), "Training loss per task", "step", "loss")


def _raw_and_smoothed(series: dict[str, tuple[list, list]], alpha: float):
    """A thin raw line and a thick smoothed one per task, in the task's colour."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (task, (xs, ys)) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        xs, ys, smooth = _thin(xs, ys, ema(ys, alpha))
        fig.add_scatter(x=xs, y=ys, name=f"{task} raw", mode="lines", line=dict(color=color, width=1),
                        opacity=0.35, legendgroup=task)
        fig.add_scatter(x=xs, y=smooth, name=f"{task} smoothed", mode="lines",
                        line=dict(color=color, width=2.5), legendgroup=task)
    return fig


def dev_evaluations(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """The dev evaluation records in two kinds that are never joined into one line: those during
    training (on `eval_subset` when one is set) and those over the whole dev set (`full`: the
    `full_eval_at_s` marks and the final pass); the two can fall on the same step."""
    dev = [r for r in records if r.get("type") == "eval" and r.get("split") == "dev"]
    return [r for r in dev if not r.get("full")], [r for r in dev if r.get("full")]


def _add_dev_traces(fig, records: list[dict], key: str, name: str, color: str, dash: str | None = None) -> None:
    """`key` of the dev evaluations during training as a line, and of the full-dev ones as
    separate stars in the same colour and legend group."""
    for evals, full in zip(dev_evaluations(records), (False, True)):
        pts = [(r.get("step"), _num(r.get(key))) for r in evals if _num(r.get(key)) is not None]
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if full:
            fig.add_scatter(x=xs, y=ys, name=f"{name} (full dev set)", mode="markers", legendgroup=name,
                            marker=dict(symbol="star", size=12, color=color))
        else:
            fig.add_scatter(x=xs, y=ys, name=name, mode="lines+markers", legendgroup=name,
                            line=dict(color=color, dash=dash))


def dev_figure(records: list[dict], specs=None):
    """One line per task's main score and the average (`specs`: the run's task definitions)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (key, title) in enumerate(result_columns(specs)):
        _add_dev_traces(fig, records, key, title, _COLORS[i % len(_COLORS)], "dash" if key == "average" else None)
    return _layout(fig, "Dev metrics per evaluation", "step", "score")


def pcgrad_figure(records: list[dict]):
    """Conflicting task pairs and projections per step (bars), with running totals (lines)."""
    import plotly.graph_objects as go

    steps = [r for r in records if r.get("type") == "step" and "conflicts" in r]
    conflicts = [r.get("conflicts") or 0 for r in steps]
    projections = [r.get("projections") or 0 for r in steps]
    xs, conflicts, projections, total_c, total_p = _thin([r.get("step") for r in steps], conflicts, projections,
                                                         _cumsum(conflicts), _cumsum(projections))
    fig = go.Figure()
    fig.add_bar(x=xs, y=conflicts, name="conflicting pairs", marker_color=_COLORS[3])
    fig.add_bar(x=xs, y=projections, name="projections", marker_color=_COLORS[4])
    fig.add_scatter(x=xs, y=total_c, name="conflicts, running total", yaxis="y2",
                    mode="lines", line=dict(color=_COLORS[3]))
    fig.add_scatter(x=xs, y=total_p, name="projections, running total", yaxis="y2",
                    mode="lines", line=dict(color=_COLORS[4], dash="dot"))
    fig.update_layout(barmode="group", yaxis=dict(rangemode="tozero"),
                      yaxis2=dict(title="running total", overlaying="y", side="right", rangemode="tozero",
                                  tickformat="d", showgrid=False))
    return _layout(fig, "PCGrad: conflicting task pairs per step", "step", "count")


def cosine_figure(records: list[dict]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (pair, (xs, ys)) in enumerate(step_series(records, "cos").items()):
        xs, ys = _thin(xs, ys)
        fig.add_scatter(x=xs, y=ys, name=pair, mode="lines", line=dict(color=_COLORS[i % len(_COLORS)]))
    fig.add_hline(y=0, line=dict(color="grey", width=1, dash="dot"))
    fig.update_yaxes(range=[-1, 1])
    return _layout(fig, "Task-gradient cosine (< 0: conflict)", "step", "cosine")


def weights_figure(records: list[dict], alpha: float = 0.9):
    """Each task's effective weight λ_k per step (update = Σ λ_k ∇L_k on the shared weights: its loss
    weight times what the gradient method made of it), raw and smoothed."""
    return _layout(_raw_and_smoothed(step_series(records, "task_weights"), alpha),
                   "Task weights λ per step (update = Σ λ·task gradient)", "step", "λ")


OVERLAYS = ("loss", "dev", "weights")
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def overlay_figure(runs: dict[str, list[dict]], kind: str = "loss", alpha: float = 0.9):
    """Several runs on one chart: smoothed total loss (kind='loss'), dev average (kind='dev'), or
    each task's smoothed weight λ (kind='weights': a colour per run, a dash per task)."""
    import plotly.graph_objects as go

    if kind not in OVERLAYS:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of {', '.join(OVERLAYS)}")
    fig = go.Figure()
    for i, (name, records) in enumerate(runs.items()):
        color = _COLORS[i % len(_COLORS)]
        if kind == "weights":
            for j, (task, (xs, ys)) in enumerate(step_series(records, "task_weights").items()):
                xs, smooth = _thin(xs, ema(ys, alpha))
                fig.add_scatter(x=xs, y=smooth, name=f"{name} · {task}", mode="lines", legendgroup=name,
                                line=dict(color=color, dash=_DASHES[j % len(_DASHES)]))
            continue
        if kind == "loss":
            pts = [(r.get("step"), _num(r.get("loss_total"))) for r in records if r.get("type") == "step"]
            pts = [p for p in pts if p[1] is not None]
            ys = ema([p[1] for p in pts], alpha)
            pts, ys = _thin(pts, ys)
            fig.add_scatter(x=[p[0] for p in pts], y=ys, name=name, mode="lines", line=dict(color=color))
            continue
        _add_dev_traces(fig, records, "average", name, color)
    title, y = {"loss": ("Total training loss (smoothed)", "loss"), "dev": ("Dev average per evaluation", "dev average"),
                "weights": ("Task weights λ (smoothed)", "λ")}[kind]
    return _layout(fig, title, "step", y)


def _thin(*series: list, max_points: int = MAX_POINTS) -> tuple[list, ...]:
    """Every k-th point of equally long series, so a long run's charts stay light to send each second."""
    k = max(1, math.ceil(len(series[0]) / max_points))
    return tuple(s[::k] for s in series) if k > 1 else series


def _cumsum(xs: list) -> list:
    out, s = [], 0
    for x in xs:
        s += x
        out.append(s)
    return out


def _layout(fig, title: str, x: str, y: str):
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=340,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig
