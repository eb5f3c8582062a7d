"""The soft arm's description: nodes, the 19 node features with units, edges, action size.

Everything that knows "what a node is" reads it from here, so a lab with a different arm changes one file
(or passes its own edges / counts through the config).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
import dataclasses

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

NUM_NODES = 10
NUM_NODE_FEATURES = len(NODE_FEATURES)
ACTION_DIM = 10  # one bending command per segment, normalised to [-1, 1]


def feature_index(name: str) -> int:
    """Position of a node feature in the schema, by name."""
    names = [f.name for f in NODE_FEATURES]
    if name not in names:
        raise ValueError(f"unknown node feature {name!r}; the schema has {names}")
    return names.index(name)


def chain_edges(num_nodes: int) -> tuple[Edge, ...]:
    """The kinematic chain 0-1-...-(n-1): the default topology of a continuum arm."""
    return tuple((i, i + 1) for i in range(num_nodes - 1))


def validate_edges(num_nodes: int, edges: Sequence[Sequence[int]]) -> tuple[Edge, ...]:
    """Return edges as a tuple of int pairs, or raise ValueError naming the bad edge."""
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


def hop_distances(num_nodes: int, edges: Sequence[Edge]) -> np.ndarray:
    """Shortest-path hop counts [N, N] on the undirected graph; unreachable pairs get `num_nodes`.

    Unreachable pairs share one bucket that no real distance (at most N-1) can take.
    """
    neighbours: list[list[int]] = [[] for _ in range(num_nodes)]
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    dist = np.full((num_nodes, num_nodes), num_nodes, dtype=np.int64)
    for source in range(num_nodes):
        dist[source, source] = 0
        queue = deque([source])
        while queue:
            node = queue.popleft()
            for nxt in neighbours[node]:
                if dist[source, nxt] == num_nodes:
                    dist[source, nxt] = dist[source, node] + 1
                    queue.append(nxt)
    return dist
