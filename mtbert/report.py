"""The results layout, shared by the CLI, the studio and the model card (no torch here).

One column per task, its main score, then the Average of those scores. The CS224N trio keep the
seed report's titles and order (Paraphrase acc, SST acc, STS corr); other tasks follow in the order
they are defined. A task's other metrics (STS Spearman, MRPC F1, ...) are listed under the table.
"""
from __future__ import annotations

from .tasks import TaskSpec, builtin_tasks

SEED_COLUMNS = (("para_acc", "Paraphrase acc"), ("sst_acc", "SST acc"), ("sts_corr", "STS corr"),
                ("average", "Average"))
_SEED_TITLES = dict(SEED_COLUMNS)
_SEED_ORDER = [k for k, _ in SEED_COLUMNS]


def result_columns(specs: list[TaskSpec] | None = None) -> list[tuple[str, str]]:
    """(metric key, title) of each column: each task's main score, then the average."""
    specs = builtin_tasks() if specs is None else specs
    cols = [(s.main_key, _SEED_TITLES.get(s.main_key) or s.metric_title(s.main_metric)) for s in specs]
    cols.sort(key=lambda c: _SEED_ORDER.index(c[0]) if c[0] in _SEED_ORDER else len(_SEED_ORDER))
    return cols + [("average", "Average")]


def other_metrics(specs: list[TaskSpec] | None = None) -> list[tuple[str, str]]:
    """(metric key, title) of the metrics that are not a task's main score."""
    specs = builtin_tasks() if specs is None else specs
    return [(s.metric_key(m), s.metric_title(m)) for s in specs for m in s.metrics if m != s.main_metric]


def _cell(m: dict, k: str) -> str:
    return f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) and m[k] == m[k] else "–"


def seed_table(rows: dict[str, dict], specs: list[TaskSpec] | None = None) -> str:
    """One markdown row per split (Train, Dev, ...): a column per task's main score, then the Average."""
    cols = result_columns(specs)
    lines = ["|  | " + " | ".join(title for _, title in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(m, k) for k, _ in cols) + " |")
    return "\n".join(lines)


def other_lines(m: dict, specs: list[TaskSpec] | None = None) -> list[str]:
    """'STS Spearman: 0.871' for each further metric present in `m`."""
    return [f"{title}: {m[k]:.3f}" for k, title in other_metrics(specs) if isinstance(m.get(k), (int, float))]
