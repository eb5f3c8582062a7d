import numpy as np
import pytest

from softarm import arm


def test_schema_has_19_named_features_with_units() -> None:
    assert arm.NUM_NODE_FEATURES == 19
    names = [f.name for f in arm.NODE_FEATURES]
    assert len(set(names)) == 19
    assert names[0:3] == ["pos_x", "pos_y", "pos_z"]
    assert names[16:19] == ["last_action", "actuator_state", "contact_force"]
    assert arm.NODE_FEATURES[13].unit == "1/m"


def test_default_topology_is_the_chain() -> None:
    assert arm.chain_edges(4) == ((0, 1), (1, 2), (2, 3))


def test_hop_distances_on_chain_and_disconnected_graph() -> None:
    chain = arm.hop_distances(4, arm.chain_edges(4))
    np.testing.assert_array_equal(chain, np.abs(np.arange(4)[:, None] - np.arange(4)[None, :]))
    split = arm.hop_distances(4, [(0, 1), (2, 3)])
    assert split[0, 1] == 1
    assert split[0, 2] == 4  # unreachable -> num_nodes
    assert split[3, 3] == 0


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([(0, 10)], r"edge 0 = \(0, 10\) refers to a node outside 0..9"),
        ([(0, 1), (3, 3)], r"edge 1 = \(3, 3\) is a self-loop"),
        ([(0, 1, 2)], r"edge 0 must be a pair of node indices, got \[0, 1, 2\]"),
    ],
)
def test_bad_edges_are_named(edges, message) -> None:
    with pytest.raises(ValueError, match=message):
        arm.validate_edges(10, edges)
