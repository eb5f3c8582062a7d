"""Normalisation statistics of a prepared dataset, in openpi's `norm_stats.json` format.

Computed on the train split only with openpi's `RunningStats` (mean, std, q01, q99): `state` over the robot's real
state dims (openpi normalises before padding to 32), `actions` over the real action dims, and `graph_nodes` per node
AND feature, stored as [N, F] arrays that openpi's own `Normalize` applies elementwise. Per node, because the nodes
of an arm live on very different scales (the base barely moves, the tip sweeps decimetres): stats pooled over nodes
would squash the tip's variation, the most informative part of the graph, into a fraction of a unit.
pi0 then uses the z-score, pi0.5 the quantiles, as openpi does. Graph features get a minimum scale (`floor_scale`);
features the arm does not measure get the identity (mean 0, std 1, quantiles -1 and 1), so their constant 0 stays 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from openpi.shared import normalize

from softarm.data.prepared import PreparedDataset
from softarm.layout import GRAPH_NODES

CHUNK_FRAMES = 65536
MIN_SCALE = 1e-2  # in the feature's own unit
STAT_FIELDS = ("mean", "std", "q01", "q99")


def compute_norm_stats(directory: str | Path) -> dict[str, normalize.NormStats]:
    data = PreparedDataset(directory, split="train")
    if not len(data):
        raise ValueError(f"{directory}: the train split is empty; nothing to compute statistics from")
    state_dim, layout = data.spec.state_dim, data.spec.layout
    running = {"actions": normalize.RunningStats(), GRAPH_NODES: normalize.RunningStats()}
    if state_dim:
        running["state"] = normalize.RunningStats()
    # Few large updates: RunningStats re-bins its quantile histograms whenever min/max grow, losing accuracy each time.
    frames = np.concatenate([np.arange(ep["start"], ep["start"] + ep["length"]) for ep in data.episodes])
    for chunk in np.array_split(frames, max(1, -(-len(frames) // CHUNK_FRAMES))):
        running["actions"].update(np.asarray(data.arrays["actions"][chunk], np.float64))
        graph_nodes = np.asarray(data.arrays[GRAPH_NODES][chunk], np.float64)
        running[GRAPH_NODES].update(graph_nodes.reshape(len(graph_nodes), -1))
        if state_dim:
            running["state"].update(np.asarray(data.arrays["state"][chunk, :state_dim], np.float64))
    stats = {key: stats.get_statistics() for key, stats in running.items()}
    shape = (data.spec.num_nodes, layout.width)
    graph = floor_scale(normalize.NormStats(**{f: getattr(stats[GRAPH_NODES], f).reshape(shape) for f in STAT_FIELDS}))
    unmeasured = [layout.features.index(name) for name in layout.unmeasured]
    identity = {"mean": 0.0, "std": 1.0, "q01": -1.0, "q99": 1.0}
    for field, value in identity.items():
        getattr(graph, field)[:, unmeasured] = value
    stats[GRAPH_NODES] = graph
    return stats


def floor_scale(stats: normalize.NormStats) -> normalize.NormStats:
    """Keep every feature's scale >= MIN_SCALE. A node feature constant in training (contact force in a task without
    contact, a locked joint) has std 0, and openpi's (x - mean) / (std + 1e-6) would turn any later change into ~1e6."""
    mid = (stats.q01 + stats.q99) / 2
    half = np.maximum((stats.q99 - stats.q01) / 2, MIN_SCALE)
    return normalize.NormStats(mean=stats.mean, std=np.maximum(stats.std, MIN_SCALE), q01=mid - half, q99=mid + half)


def write_norm_stats(directory: str | Path) -> dict[str, normalize.NormStats]:
    """Compute the stats and save them as `<directory>/norm_stats.json`."""
    stats = compute_norm_stats(directory)
    normalize.save(directory, stats)
    return stats
