"""The soft arm's description: the 19 node features with units, which of them an arm measures, edges.

Everything that knows "what a node is" reads it from here. An arm's sizes (node count, features, actuators) and its
edges come from its data: `softarm convert` reads them from the episodes, the model config is derived from the
dataset, and a checkpoint carries them to the policy and the server.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools

import numpy as np

Edge = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class NodeFeature:
    name: str
    unit: str
    description: str


# Node i is the distal end of segment i, expressed in the arm's base frame.
NODE_FEATURES: tuple[NodeFeature, ...] = (
    NodeFeature("pos_x", "m", "node position x"),
    NodeFeature("pos_y", "m", "node position y"),
    NodeFeature("pos_z", "m", "node position z"),
    NodeFeature("quat_w", "-", "orientation quaternion w (sign fixed so w >= 0)"),
    NodeFeature("quat_x", "-", "orientation quaternion x"),
    NodeFeature("quat_y", "-", "orientation quaternion y"),
    NodeFeature("quat_z", "-", "orientation quaternion z"),
    NodeFeature("vel_x", "m/s", "linear velocity x"),
    NodeFeature("vel_y", "m/s", "linear velocity y"),
    NodeFeature("vel_z", "m/s", "linear velocity z"),
    NodeFeature("angvel_x", "rad/s", "angular velocity x (node frame)"),
    NodeFeature("angvel_y", "rad/s", "angular velocity y (node frame)"),
    NodeFeature("angvel_z", "rad/s", "angular velocity z (node frame)"),
    NodeFeature("kappa_x", "1/m", "bending curvature of segment i about x"),
    NodeFeature("kappa_y", "1/m", "bending curvature of segment i about y"),
    NodeFeature("twist", "rad/m", "twist curvature of segment i"),
    NodeFeature("last_action", "-", "last commanded action of segment i, in [-1, 1]"),
    NodeFeature("actuator_state", "kPa or -", "actuator pressure or filtered activation"),
    NodeFeature("contact_force", "N", "contact normal force on segment i"),
)

SCHEMA = tuple(f.name for f in NODE_FEATURES)
NUM_NODE_FEATURES = len(NODE_FEATURES)
# The built-in simulated arm's sizes, the defaults where no dataset says otherwise.
NUM_NODES = 10
ACTION_DIM = 10  # one bending command per segment, normalised to [-1, 1]
UNKNOWN_UNIT = "?"


def feature_unit(name: str) -> str:
    """The unit of a schema feature; an arm's own feature (a name outside the schema) has none known."""
    return NODE_FEATURES[SCHEMA.index(name)].unit if name in SCHEMA else UNKNOWN_UNIT


@dataclasses.dataclass(frozen=True)
class NodeLayout:
    """The columns a model reads for each node (`features`) and which of them the arm measures (`measured`).

    An arm that senses part of the 19-feature schema keeps all 19 columns: the unmeasured ones hold a known
    constant (0, not normalised) and the graph encoder masks them, so models of arms with different sensors share
    one input layout. An arm with features of its own (names outside the schema) reads exactly its own columns."""

    features: tuple[str, ...] = SCHEMA
    measured: tuple[str, ...] = SCHEMA

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "measured", tuple(self.measured))
        _check_names(self.features, "node features")
        _check_names(self.measured, "measured features")
        extra = [name for name in self.measured if name not in self.features]
        if extra:
            raise ValueError(f"measured feature {extra[0]!r} is not one of the node features {list(self.features)}")
        if [name for name in self.features if name in self.measured] != list(self.measured):
            raise ValueError(f"measured features {list(self.measured)} must be in the order of {list(self.features)}")

    @classmethod
    def of(cls, measured: Sequence[str]) -> NodeLayout:
        """The layout for an arm measuring `measured`: the schema's 19 columns if every name is a schema feature,
        else exactly these columns."""
        _check_names(measured, "measured features")
        if all(name in SCHEMA for name in measured):
            return cls(SCHEMA, tuple(name for name in SCHEMA if name in measured))
        return cls(tuple(measured), tuple(measured))

    @property
    def width(self) -> int:
        return len(self.features)

    @property
    def unmeasured(self) -> tuple[str, ...]:
        return tuple(name for name in self.features if name not in self.measured)

    def described(self) -> list[str]:
        """The measured features as 'name [unit]', in column order: what a request's graph_nodes hold."""
        return [f"{name} [{feature_unit(name)}]" for name in self.measured]

    def select(self, values: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Columns named `names` ([..., len(names)]) into this layout ([..., width]): measured features by name,
        unmeasured ones 0; a column this layout does not read is dropped. ValueError names a missing feature."""
        names = tuple(names)
        if names == self.features == self.measured:  # already this layout, nothing to fill: every training sample
            return np.asarray(values, np.float32)
        target, source = _column_map(self, names)
        out = np.zeros((*values.shape[:-1], self.width), np.float32)
        out[..., target] = values[..., source]
        return out


@functools.lru_cache(maxsize=64)
def _column_map(layout: NodeLayout, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(where each measured feature goes in `layout`, where it comes from in `names`), computed once per pair."""
    missing = [name for name in layout.measured if name not in names]
    if missing:
        raise ValueError(f"lacks measured feature {missing[0]!r} (has {list(names)})")
    target = np.array([layout.features.index(name) for name in layout.measured])
    return target, np.array([names.index(name) for name in layout.measured])


def _check_names(names: Sequence[str], what: str) -> None:
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(f"{what} must be a non-empty list of names, got {list(names)!r}")
    duplicates = sorted({name for name in names if list(names).count(name) > 1})
    if duplicates:
        raise ValueError(f"{what} name {duplicates[0]!r} more than once")


FULL_LAYOUT = NodeLayout()  # every schema feature measured: the built-in simulated arm


def column_names(width: int, declared: Sequence[str] | None = None) -> tuple[str, ...]:
    """What the `width` feature columns of an arm's graph are: its declared names; else the 19-feature schema if
    there are 19 columns; else features of its own, named feature_0, feature_1, ..."""
    if declared is not None:
        _check_names(declared, "declared node features")
        if len(declared) != width:
            raise ValueError(f"{len(declared)} feature names declared for {width} feature columns")
        return tuple(declared)
    return SCHEMA if width == NUM_NODE_FEATURES else tuple(f"feature_{i}" for i in range(width))


def feature_index(name: str) -> int:
    """Position of a node feature in the schema, by name."""
    if name not in SCHEMA:
        raise ValueError(f"unknown node feature {name!r}; the schema has {list(SCHEMA)}")
    return SCHEMA.index(name)


def chain_edges(num_nodes: int) -> tuple[Edge, ...]:
    """The kinematic chain 0-1-...-(n-1): the default topology of a continuum arm."""
    return tuple((i, i + 1) for i in range(num_nodes - 1))


def validate_edges(num_nodes: int, edges: Sequence[Sequence[int]]) -> tuple[Edge, ...]:
    """Return edges as a tuple of int pairs, or raise ValueError naming the bad edge. Edges are undirected."""
    out: list[Edge] = []
    for k, edge in enumerate(edges):
        if len(edge) != 2:
            raise ValueError(f"edge {k} must be a pair of node indices, got {list(edge)!r}")
        a, b = (int(v) for v in edge)
        if not (0 <= a < num_nodes and 0 <= b < num_nodes):
            raise ValueError(f"edge {k} = ({a}, {b}) refers to a node outside 0..{num_nodes - 1}")
        if a == b:
            raise ValueError(f"edge {k} = ({a}, {b}) is a self-loop; nodes always attend to themselves")
        out.append((a, b))
    return tuple(out)


def same_graph(a: Sequence[Edge], b: Sequence[Edge]) -> bool:
    """Whether two edge lists describe the same undirected graph (order and direction aside)."""
    return {tuple(sorted(e)) for e in a} == {tuple(sorted(e)) for e in b}


def hop_distances(num_nodes: int, edges: Sequence[Edge]) -> np.ndarray:
    """Shortest-path hop counts [N, N] on the undirected graph; unreachable pairs get `num_nodes`.

    Unreachable pairs share one bucket that no real distance (at most N-1) can take.
    """
    dist = np.full((num_nodes, num_nodes), num_nodes, dtype=np.int64)
    np.fill_diagonal(dist, 0)
    for a, b in edges:
        dist[a, b] = dist[b, a] = 1
    for k in range(num_nodes):  # Floyd-Warshall; a path through an unreachable pair is never shorter than N
        dist = np.minimum(dist, dist[:, k, None] + dist[None, k, :])
    return dist
