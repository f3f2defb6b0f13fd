"""The seed report's results layout, shared by the CLI, the studio and the model card (no torch here)."""
from __future__ import annotations

SEED_COLUMNS = (("para_acc", "Paraphrase acc"), ("sst_acc", "SST acc"), ("sts_corr", "STS corr"),
                ("average", "Average"))


def seed_table(rows: dict[str, dict]) -> str:
    """One markdown row per split (Train, Dev, ...): Paraphrase acc | SST acc | STS corr | Average."""
    lines = ["|  | " + " | ".join(title for _, title in SEED_COLUMNS) + " |",
             "|---|" + "---|" * len(SEED_COLUMNS)]
    for name, m in rows.items():
        cells = [f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) and m[k] == m[k] else "–"
                 for k, _ in SEED_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
