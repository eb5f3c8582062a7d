"""Raw HDF5 episodes: round trip, and every kind of bad episode is named with its file, key and reason."""

from __future__ import annotations

from collections.abc import Callable
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from softarm.data.raw import EpisodeError, read_episode, write_episode
from tests.conftest import make_episode


def test_round_trip(tmp_path: Path) -> None:
    episode = make_episode()
    path = write_episode(tmp_path / "ep.h5", episode)
    back = read_episode(path)
    assert back.length == 5
    assert back.prompt == "reach the red ball"
    assert back.fps == 10.0
    for camera in ("base", "tip"):
        np.testing.assert_array_equal(back.images[camera], episode.images[camera])
    np.testing.assert_array_equal(back.graph_nodes, episode.graph_nodes)
    np.testing.assert_array_equal(back.actions, episode.actions)
    np.testing.assert_array_equal(back.state, episode.state)
    np.testing.assert_array_equal(back.edges, episode.edges)


def test_any_sizes_and_declared_feature_names_round_trip(tmp_path: Path) -> None:
    episode = make_episode(nodes=7, features=4, actions=21)
    episode.node_features = ("pos_x", "pos_y", "pos_z", "contact_force")
    episode.edges = np.array([[0, 1], [0, 2], [0, 3], [3, 4], [4, 5], [5, 6]])
    back = read_episode(write_episode(tmp_path / "ep.h5", episode))
    assert back.graph_nodes.shape == (5, 7, 4)
    assert back.actions.shape == (5, 21)
    assert back.node_features == ("pos_x", "pos_y", "pos_z", "contact_force")
    np.testing.assert_array_equal(back.edges, episode.edges)
    assert read_episode(write_episode(tmp_path / "plain.h5", make_episode())).node_features is None


def test_a_step_as_a_policy_request() -> None:
    episode = make_episode()
    request = episode.observation(3)
    assert sorted(request) == ["graph_nodes", "images", "prompt", "state"]
    assert sorted(request["images"]) == ["base", "tip"]
    np.testing.assert_array_equal(request["images"]["tip"], episode.images["tip"][3])
    np.testing.assert_array_equal(request["graph_nodes"], episode.graph_nodes[3])
    np.testing.assert_array_equal(request["state"], episode.state[3])
    assert request["prompt"] == "reach the red ball"
    # a recording that names its columns says so; one without state sends none
    named = make_episode(state_dim=None, features=4)
    named.node_features = ("pos_x", "pos_y", "pos_z", "contact_force")
    request = named.observation(0)
    assert request["graph_features"] == ["pos_x", "pos_y", "pos_z", "contact_force"]
    assert "state" not in request


def test_state_and_edges_are_optional(tmp_path: Path) -> None:
    episode = make_episode(state_dim=None)
    episode.edges = None
    back = read_episode(write_episode(tmp_path / "ep.h5", episode))
    assert back.state is None
    assert back.edges is None


def _edit(mutate: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with h5py.File(path, "a") as f:
            mutate(f)

    return apply


def _replace(key: str, value) -> Callable[[Path], None]:
    def mutate(f: h5py.File) -> None:
        del f[key]
        f[key] = value

    return _edit(mutate)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_nodes(f: h5py.File) -> None:
    nodes = f["observations/graph/nodes"][()]
    nodes[3, 2, 1] = np.nan
    f["observations/graph/nodes"][...] = nodes


BAD = {
    "truncated": (_truncate, "<file>", "HDF5"),
    "not hdf5": (lambda p: p.write_bytes(b"not an hdf5 file"), "<file>", "not a readable HDF5 file"),
    "missing actions": (_edit(lambda f: f.__delitem__("action")), "action", "missing"),
    "missing nodes": (
        _edit(lambda f: f.__delitem__("observations/graph/nodes")),
        "observations/graph/nodes",
        "missing",
    ),
    "missing cameras": (_edit(lambda f: f.__delitem__("observations/images")), "observations/images", "missing"),
    "no node features": (
        _replace("observations/graph/nodes", np.zeros((5, 10, 0), np.float32)),
        "observations/graph/nodes",
        "expected [T, N, F] (T, nodes, features), got [5, 10, 0]",
    ),
    "flat nodes": (
        _replace("observations/graph/nodes", np.zeros((5, 190), np.float32)),
        "observations/graph/nodes",
        "expected 3 dimensions, got shape [5, 190]",
    ),
    "too many actions": (
        _replace("action", np.zeros((5, 40), np.float32)),
        "action",
        "expected [T, A] with 1 <= A <= 32 (pi0's action slot), got [5, 40]",
    ),
    "edges past the nodes": (
        _replace("observations/graph/nodes", np.zeros((5, 9, 19), np.float32)),
        "graph/edges",
        "edge 8 = (8, 9) refers to a node outside 0..8",
    ),
    "feature names for other columns": (
        _edit(lambda f: f["observations/graph/nodes"].attrs.__setitem__("features", ["pos_x", "pos_y"])),
        "observations/graph/nodes@features",
        "2 feature names declared for 19 feature columns",
    ),
    "repeated feature name": (
        _edit(lambda f: f["observations/graph/nodes"].attrs.__setitem__("features", ["pos_x"] * 19)),
        "observations/graph/nodes@features",
        "declared node features name 'pos_x' more than once",
    ),
    "feature names that are not names": (
        _edit(lambda f: f["observations/graph/nodes"].attrs.__setitem__("features", np.arange(19))),
        "observations/graph/nodes@features",
        "expected a list of feature names, got [0, 1, 2",
    ),
    "float images": (
        _replace("observations/images/base", np.zeros((5, 48, 64, 3), np.float32)),
        "observations/images/base",
        "expected uint8 values, got dtype float32",
    ),
    "grey images": (
        _replace("observations/images/tip", np.zeros((5, 32, 32, 1), np.uint8)),
        "observations/images/tip",
        "expected uint8 [T, H, W, 3], got uint8 [5, 32, 32, 1]",
    ),
    "integer actions": (
        _replace("action", np.zeros((5, 10), np.int32)),
        "action",
        "expected float values, got dtype int32",
    ),
    "nan nodes": (_edit(_nan_nodes), "observations/graph/nodes", "1 NaN/Inf values (first at index [3, 2, 1])"),
    "inf actions": (
        _replace("action", np.full((5, 10), np.inf, np.float32)),
        "action",
        "50 NaN/Inf values (first at index [0, 0])",
    ),
    "length mismatch": (
        _replace("action", np.zeros((4, 10), np.float32)),
        "<lengths>",
        "arrays must share the time length T, got observations/images/base=5, observations/images/tip=5, "
        "observations/graph/nodes=5, action=4",
    ),
    "state too wide": (
        _replace("observations/state", np.zeros((5, 40), np.float32)),
        "observations/state",
        "expected [T, S] with 1 <= S <= 32 (pi0's state slot), got [5, 40]",
    ),
    "missing prompt": (_edit(lambda f: f.attrs.__delitem__("prompt")), "attrs/prompt", "non-empty string, got None"),
    "blank prompt": (_edit(lambda f: f.attrs.__setitem__("prompt", "  ")), "attrs/prompt", "got '  '"),
    "bad fps": (_edit(lambda f: f.attrs.__setitem__("fps", -3.0)), "attrs/fps", "expected a positive number"),
    "bad edges": (
        _replace("graph/edges", np.array([[0, 11]])),
        "graph/edges",
        "edge 0 = (0, 11) refers to a node outside 0..9",
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_episode_is_named(tmp_path: Path, kind: str) -> None:
    corrupt, key, reason = BAD[kind]
    path = write_episode(tmp_path / "episode_007.h5", make_episode())
    corrupt(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(EpisodeError) as exc:
        read_episode(path)
    assert exc.value.key == key
    assert reason in exc.value.reason
    assert str(exc.value).startswith(f"episode_007.h5: {key}: ")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # reading never modifies the input


def test_empty_episode(tmp_path: Path) -> None:
    path = write_episode(tmp_path / "empty.h5", make_episode(length=0))
    with pytest.raises(EpisodeError, match=r"empty\.h5: action: empty episode \(T = 0\)"):
        read_episode(path)
