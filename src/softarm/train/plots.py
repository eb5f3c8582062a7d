"""Loss curves from a run's metrics.jsonl, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from softarm.plotting import pyplot


def read_metrics(metrics_path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (one JSON object per line); none if the file is not there."""
    if not metrics_path.is_file():
        return []
    return [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, out_path: Path) -> Path | None:
    if not metrics_path.is_file():
        return None
    records = read_metrics(metrics_path)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation"), ("val_loss_ema", "validation (EMA)")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), label=label, marker="o" if key != "loss" else None, markersize=3)
    ax.set(xlabel="step", ylabel="masked flow-matching loss", yscale="log", title=metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
