"""One matplotlib set-up for every PNG the project writes: the Agg backend (no display on servers and CI), imported
only when a plot is drawn so that importing softarm stays light."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
