"""One matplotlib set-up for every PNG the project writes: the Agg backend (no display on servers and CI), imported
only when a plot is drawn so that importing softarm stays light."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Lay out, write and close a figure (pyplot keeps every figure alive until it is closed)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
