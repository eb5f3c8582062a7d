"""Norm stats of a prepared dataset equal a plain numpy computation over the train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from openpi.shared import normalize
import pytest

from softarm.cli import main
from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import PreparedDataset
from tests.conftest import make_episode, raw_dir


def test_norm_stats_match_numpy_on_the_train_split(tmp_path: Path) -> None:
    convert(raw_dir(tmp_path, lengths=(200, 150, 120, 90)), tmp_path / "prep", ConvertOptions(val_episodes=1))
    stats = normalize.load(tmp_path / "prep")
    assert sorted(stats) == ["actions", "graph_nodes", "state"]

    train_files = {ep["file"] for ep in PreparedDataset(tmp_path / "prep", "train").episodes}
    seeds = {f"ep_{i:03d}.h5": (i, n) for i, n in enumerate((200, 150, 120, 90))}
    episodes = [make_episode(length=seeds[f][1], seed=seeds[f][0]) for f in sorted(train_files)]
    actions = np.concatenate([e.actions for e in episodes]).astype(np.float64)
    state = np.concatenate([e.state for e in episodes]).astype(np.float64)
    nodes = np.concatenate([e.graph_nodes for e in episodes]).astype(np.float64).reshape(-1, 190)  # per node, feature

    for key, values in (("actions", actions), ("state", state), ("graph_nodes", nodes)):
        s = stats[key]
        if key == "graph_nodes":
            assert s.mean.shape == (10, 19)  # [N, F]: openpi's Normalize applies it elementwise to a node array
            s = normalize.NormStats(**{f: getattr(s, f).reshape(-1) for f in ("mean", "std", "q01", "q99")})
        assert s.mean.shape == (values.shape[1],)
        np.testing.assert_allclose(s.mean, values.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.std, values.std(0), rtol=1e-4)
        # RunningStats' quantile: the ceil(q*n)-th smallest value, resolved to its 5000-bin histogram (whose bins are
        # re-spread as min/max grow between updates).
        ordered = np.sort(values, axis=0)
        bin_width = float((values.max(0) - values.min(0)).max()) / 5000
        for q, got in ((0.01, s.q01), (0.99, s.q99)):
            expected = ordered[int(np.ceil(q * len(values))) - 1]
            np.testing.assert_allclose(got, expected, atol=5 * bin_width)
    assert stats["state"].mean.shape == (4,)  # the real state dims, not the 32-D padding


def test_stats_command_and_dataset_without_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from softarm.data.raw import write_episode

    raw = tmp_path / "raw"
    for i in range(3):
        write_episode(raw / f"ep_{i}.h5", make_episode(length=30, seed=i, state_dim=None))
    convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1))
    (tmp_path / "prep" / "norm_stats.json").unlink()
    assert main(["stats", str(tmp_path / "prep")]) == 0
    assert "graph_nodes   10x19 dims" in capsys.readouterr().out
    assert sorted(normalize.load(tmp_path / "prep")) == ["actions", "graph_nodes"]


def test_constant_graph_feature_keeps_a_usable_scale(tmp_path: Path) -> None:
    from softarm.data.raw import write_episode

    raw = tmp_path / "raw"
    for i in range(3):
        episode = make_episode(length=40, seed=i)
        episode.graph_nodes[..., 18] = 0.0  # contact force never seen in training
        write_episode(raw / f"ep_{i}.h5", episode)
    convert(raw, tmp_path / "prep", ConvertOptions(val_episodes=1))
    graph = normalize.load(tmp_path / "prep")["graph_nodes"]
    np.testing.assert_allclose(graph.std[:, 18], 1e-2)  # every node
    np.testing.assert_allclose(graph.q01[:, 18], -1e-2)
    np.testing.assert_allclose(graph.q99[:, 18], 1e-2)
    assert (graph.std[:, 0] > 0.5).all()  # real features keep their own statistics
    # a 5 N contact at run time normalises to 500, not 5e6
    assert (5.0 - graph.mean[3, 18]) / (graph.std[3, 18] + 1e-6) == pytest.approx(500, rel=1e-3)
