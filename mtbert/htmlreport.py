"""`python -m mtbert report`: the error analysis of one checkpoint, or a comparison of two, as one
self-contained HTML file that reads offline.

plotly.js is inlined once from the installed plotly package. Its bundle holds URL string literals
(the topojson CDN, map tile and font servers, the Chart Studio endpoint, links in messages and
license comments); every one of them is rewritten to an inert `offline:` text when inlined, except
the XML namespace identifiers SVG drawing needs (they name a namespace and are never fetched), and
the plot config turns off the plotly logo link and MathJax, so the file neither fetches nor links
anything outside itself.
"""
from __future__ import annotations

import datetime as dt
import html
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from . import analysis as an
from . import evalfigures as ef

# namespace names, compared as strings by the DOM; a browser never requests them
XML_NAMESPACES = ("http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink", "http://www.w3.org/1999/xhtml",
                  "http://www.w3.org/2000/xmlns/", "http://www.w3.org/XML/1998/namespace")
_FETCHABLE = re.compile(r"https?://(?!" + "|".join(re.escape(u.split("://", 1)[1]) for u in XML_NAMESPACES) + ")")
OFFLINE_SCHEME = "offline:"
PLOT_CONFIG = {"displaylogo": False, "typesetMath": False, "showSendToCloud": False, "plotlyServerURL": "",
               "responsive": True}
MISTAKES = 20


def offline_plotlyjs() -> str:
    """The installed plotly.js with every fetchable or linkable URL made inert."""
    from plotly.offline import get_plotlyjs
    return _FETCHABLE.sub(OFFLINE_SCHEME, get_plotlyjs())


def figure_html(fig, div_id: str) -> str:
    return fig.to_html(include_plotlyjs=False, full_html=False, config=PLOT_CONFIG, div_id=div_id,
                       default_width="100%", default_height=f"{ef.HEIGHT}px")


def source_version() -> str:
    """mtbert's version, and the git commit of the source tree when it is a checkout."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"mtbert {__version__}" + (f", commit {commit}" if re.fullmatch(r"[0-9a-f]{7,40}", commit) else "")


@dataclass
class Checkpoint:
    """One evaluated checkpoint: its name as shown and its results per task."""
    name: str
    results: dict[str, an.TaskResult]
    meta: dict = field(default_factory=dict)


# ---- HTML pieces --------------------------------------------------------------------------------

def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, digits: int = 4) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"
    return _e(x)


def table(header: list[str], rows: list[list], cls: str = "") -> str:
    """An HTML table; every cell is escaped (numbers formatted)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Figures:
    """Numbers the figure divs so that their ids are unique in the file."""

    def __init__(self):
        self.count = 0

    def __call__(self, figs: list[tuple[str, object]], prefix: str) -> str:
        out = []
        for name, fig in figs:
            self.count += 1
            out.append(f'<div class="figure" data-figure="{_e(prefix)}-{_e(name)}">'
                       f'{figure_html(fig, f"fig-{self.count}")}</div>')
        return '<div class="figures">' + "".join(out) + "</div>"


def _texts(row: dict) -> str:
    return row["text_a"] if row.get("text_b") is None else f"{row['text_a']}  ||  {row['text_b']}"


def _metrics_table(r: an.TaskResult) -> str:
    s = an.summary(r)
    return table(["metric", "value"], [[k, v] for k, v in s.items()], "metrics")


def _task_tables(r: an.TaskResult) -> str:
    if r.is_classification:
        rep = an.classification_report(r)
        out = "<h4>Per class</h4>" + table(
            ["gold class", "precision", "recall", "F1", "support"],
            [[lab, p, rc, f, int(n)] for lab, p, rc, f, n in zip(rep["labels"], rep["precision"], rep["recall"],
                                                                  rep["f1"], rep["support"])])
        if r.spec.binary:
            c = an.threshold_curve(r)
            out += (f"<p>Decision threshold on P({_e(r.spec.label_name(1))}) stored in the checkpoint: "
                    f"<b>{c['threshold']:.3f}</b> (logit offset {r.offset:+.3f}), accuracy {c['stored_accuracy']:.4f}; "
                    f"the best threshold on this set would be {c['best_threshold']:.3f} "
                    f"(accuracy {c['best_accuracy']:.4f}).</p>")
        return out
    rep = an.regression_report(r)
    return "<h4>Error by gold-score bin</h4>" + table(
        ["gold score", "examples", "mean |error|", "mean error (predicted - gold)", "mean predicted"],
        [[b, int(n), m, s, p] for b, n, m, s, p in zip(rep["bins"], rep["count"], rep["mean_abs_error"],
                                                       rep["mean_signed_error"], rep["mean_predicted"])])


def _mistakes_table(r: an.TaskResult, limit: int) -> str:
    rows = an.mistakes(r, limit=limit)
    if r.is_classification:
        what = f"The {len(rows)} most confident mistakes"
        body = table(["id", "text", "gold", "predicted", "confidence", "words"],
                     [[x["id"], _texts(x), x["gold"], x["predicted"], x["confidence"], x["words"]] for x in rows],
                     "examples")
    else:
        what = f"The {len(rows)} largest errors"
        body = table(["id", "text", "gold", "predicted", "|error|", "words"],
                     [[x["id"], _texts(x), x["gold"], x["predicted"], x["abs_error"], x["words"]] for x in rows],
                     "examples")
    return f"<h4>{_e(what)}</h4>" + (body if rows else "<p>No mistakes on this set.</p>")


def _task_section(ck: Checkpoint, r: an.TaskResult, figures: _Figures, limit: int, key: str) -> str:
    return (f'<section class="task" id="{_e(key)}-{_e(r.spec.name)}"><h3>{_e(r.spec.title)} '
            f'<span class="muted">({_e(r.spec.name)}, {r.spec.kind}, {r.n:,} examples)</span></h3>'
            f"{_metrics_table(r)}{_task_tables(r)}{figures(ef.task_figures(r), f'{key}-{r.spec.name}')}"
            f"{_mistakes_table(r, limit)}</section>")


def _pair_table(rows: list[dict], a: str, b: str, classification: bool) -> str:
    if not rows:
        return "<p>None.</p>"
    if classification:
        return table(["id", "text", "gold", f"{a} predicted", f"{a} confidence", f"{b} predicted",
                      f"{b} confidence"],
                     [[x["id"], _texts(x), x["gold"], x["a_predicted"], x["a_confidence"], x["b_predicted"],
                       x["b_confidence"]] for x in rows], "examples")
    return table(["id", "text", "gold", f"{a} predicted", f"{b} predicted", f"{a} |error|", f"{b} |error|"],
                 [[x["id"], _texts(x), x["gold"], x["a_predicted"], x["b_predicted"], x["a_abs_error"],
                   x["b_abs_error"]] for x in rows], "examples")


def _compare_section(a: Checkpoint, b: Checkpoint, task: str, figures: _Figures, limit: int, seed: int) -> str:
    ra, rb = a.results[task], b.results[task]
    c = an.compare(ra, rb, seed=seed, limit=limit)
    out = [f'<section class="compare" id="compare-{_e(task)}"><h3>{_e(ra.spec.title)}: B against A '
           f'<span class="muted">({c["n"]:,} examples)</span></h3>',
           table(["metric", "A", "B", "B - A"], [[k, v["a"], v["b"], v["delta"]] for k, v in c["metrics"].items()],
                 "metrics")]
    if ra.is_classification:
        m = c["mcnemar"]
        out.append('<div class="mcnemar"><h4>McNemar test</h4>' + table(
            ["A wrong, B right (b01)", "A right, B wrong (b10)", "discordant", "exact binomial p"],
            [[m["b01"], m["b10"], m["n"], f"{m['p']:.3g}"]]) +
            "<p>p is the two-sided exact binomial test of b01 among the discordant examples (chance 1/2): "
            "small p means the two checkpoints' error rates differ by more than chance.</p></div>")
        pairs = [("A right, B wrong", c["a_right_b_wrong"]), ("B right, A wrong", c["b_right_a_wrong"])]
    else:
        bs = c["bootstrap"]
        out.append(f'<div class="bootstrap"><h4>Paired bootstrap of the {_e(bs["metric"])} difference</h4>' + table(
            [f"A {bs['metric']}", f"B {bs['metric']}", "B - A", f"{bs['level']:.0%} interval low", "high",
             "resamples", "seed"],
            [[bs["a"], bs["b"], bs["delta"], bs["low"], bs["high"], bs["resamples"], bs["seed"]]]) +
            "<p>The same resampled examples score both checkpoints; an interval that excludes 0 means the "
            "difference is larger than resampling noise.</p></div>")
        pairs = [("A closer to gold", c["a_better"]), ("B closer to gold", c["b_better"])]
    out.append(figures(ef.compare_figures(ra, rb, c, "A", "B"), f"compare-{task}"))
    for title, rows in pairs:
        out.append(f"<h4>{_e(title)} ({len(rows)} shown)</h4>" + _pair_table(rows, "A", "B", ra.is_classification))
    return "".join(out) + "</section>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.6em; } .muted { color: #777; font-weight: normal; font-size: .85em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } table.examples td:nth-child(2) { max-width: 44em; white-space: pre-wrap; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: .8em; }
.figure { border: 1px solid #eee; }
"""


def _trained(meta: dict) -> str:
    """Which run and step a checkpoint comes from, as its mtbert.json says (empty for a plain base model)."""
    run, step = meta.get("run_id"), meta.get("step")
    return ", ".join(x for x in (f"run {run}" if run else "", f"step {step}" if step is not None else "") if x)


def build_report(checkpoints: list[Checkpoint], data: str, mistakes: int = MISTAKES, seed: int = 0,
                 created: dt.datetime | None = None) -> str:
    """The whole HTML page: a header of what was evaluated, a section per checkpoint and task, and,
    with two checkpoints, the comparison of B against A per task."""
    if not 1 <= len(checkpoints) <= 2:
        raise ValueError(f"{len(checkpoints)} checkpoints given; a report covers one checkpoint or compares two")
    created = created or dt.datetime.now().astimezone()
    tasks = list(checkpoints[0].results)
    figures = _Figures()
    keys = ["A", "B"][:len(checkpoints)] if len(checkpoints) == 2 else [""]
    header = table(["", "checkpoint", "base model", "trained"],
                   [[k or "checkpoint", ck.name, ck.meta.get("base_model", ""), _trained(ck.meta)]
                    for k, ck in zip(keys, checkpoints)])
    header += table(["task", "kind", "examples"],
                    [[checkpoints[0].results[t].spec.title + f" ({t})", checkpoints[0].results[t].spec.kind,
                      checkpoints[0].results[t].n] for t in tasks])
    header += table(["data", "date", "version"],
                    [[data, created.strftime("%Y-%m-%d %H:%M %Z").strip(), source_version()]])
    body = []
    if len(checkpoints) == 2:
        body.append("<h2>Comparison: B against A</h2>")
        body += [_compare_section(checkpoints[0], checkpoints[1], t, figures, mistakes, seed) for t in tasks]
    for key, ck in zip(keys, checkpoints):
        label = f"{key}: {ck.name}" if key else ck.name
        body.append(f'<h2 id="checkpoint-{_e(key or "main")}">{_e(label)}</h2>')
        body += [_task_section(ck, ck.results[t], figures, mistakes, key or "main") for t in tasks]
    title = "mtbert error analysis: " + " vs ".join(ck.name for ck in checkpoints)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style><script>{offline_plotlyjs()}</script></head><body>"
            f"<h1>{_e(title)}</h1>{header}{''.join(body)}</body></html>\n")


def write_report(path: str | Path, checkpoints: list[Checkpoint], data: str, **kw) -> Path:
    path = Path(path)
    text = build_report(checkpoints, data, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
