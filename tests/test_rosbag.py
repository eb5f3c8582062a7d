"""ROS bags in: a rig's multi-rate, stamped streams convert to the dataset the same episodes give as raw HDF5 at the
control ticks; bad bags are skipped with the bag, the topic and the time named; nothing is written into SOURCE."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from softarm.cli import main
from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import PreparedDataset
from softarm.data.raw import RawEpisode, write_episode
from softarm.data.rosbag import POSE_FEATURES, TopicMap, read_bag
from tests.rosbag_rig import topic_map, write_rig_bag

PROMPT = "reach the red ball"


def truth(seed: int, length: int = 12) -> RawEpisode:
    """What the rig holds at its control ticks: 6 nodes of positions and unit quaternions (w >= 0), 8 commands, 8
    pressures, a 40x48 base and a 32x32 tip camera."""
    rng = np.random.default_rng(seed)
    quat = rng.normal(size=(length, 6, 4))
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
    quat *= np.where(quat[..., :1] < 0, -1, 1)
    nodes = np.concatenate([rng.normal(0, 0.1, (length, 6, 3)), quat], axis=-1).astype(np.float32)
    rows, cols = np.mgrid[:32, :32]
    phase = rng.uniform(0, 6, (length, 1, 1, 3))
    tip = 128 + 80 * np.sin(rows[None, :, :, None] / 7 + cols[None, :, :, None] / 11 + phase)  # smooth: JPEG-able
    images = {"base": rng.integers(0, 256, (length, 40, 48, 3), dtype=np.uint8), "tip": tip.astype(np.uint8)}
    actions = rng.uniform(-1, 1, (length, 8)).astype(np.float32)
    state = rng.uniform(0, 50, (length, 8)).astype(np.float32)
    return RawEpisode(
        path=Path("unused"),
        images=images,
        graph_nodes=nodes,
        actions=actions,
        prompt=PROMPT,
        fps=10.0,
        state=state,
        node_features=POSE_FEATURES,
    )


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a directory of three bags, one per storage, with their topic map; the same episodes as raw HDF5)."""
    tmp = tmp_path_factory.mktemp("bags")
    for i, storage in enumerate(("sqlite3", "mcap", "ros1")):
        write_rig_bag(tmp / "bags" / (f"ep{i}.bag" if storage == "ros1" else f"ep{i}"), truth(i), storage)
        write_episode(tmp / "raw" / f"ep{i}.h5", truth(i))
    (tmp / "topics.yaml").write_text(yaml.safe_dump(topic_map(PROMPT)))
    return tmp, tmp / "bags"


def test_bags_of_every_storage_convert_to_the_raw_episodes_at_the_ticks(recorded: tuple[Path, Path]) -> None:
    tmp, bags = recorded
    before = digests(bags)
    assert main(["convert", str(bags), str(tmp / "from_bags"), "--topics", str(tmp / "topics.yaml"),
                 "--val-episodes", "0"]) == 0  # fmt: skip
    assert digests(bags) == before  # read-only: nothing written into SOURCE
    convert(tmp / "raw", tmp / "from_raw", ConvertOptions(val_episodes=0))
    got, want = PreparedDataset(tmp / "from_bags", "all"), PreparedDataset(tmp / "from_raw", "all")
    assert [ep["file"] for ep in got.episodes] == ["ep0", "ep1", "ep2.bag"]
    assert [ep["length"] for ep in got.episodes] == [12, 12, 12]  # the two commands before the sensors: dropped
    assert all(ep["fps"] == pytest.approx(10.0) for ep in got.episodes)
    assert got.meta["measured"] == list(POSE_FEATURES)
    for name in ("graph_nodes", "state", "actions"):
        np.testing.assert_array_equal(got.arrays[name], want.arrays[name], err_msg=name)
    np.testing.assert_array_equal(got.arrays["image_base_0_rgb"], want.arrays["image_base_0_rgb"])  # raw bgr8
    jpeg = np.abs(got.arrays["image_left_wrist_0_rgb"].astype(int) - want.arrays["image_left_wrist_0_rgb"])
    assert jpeg.mean() < 2.0  # within codec loss


def test_one_bag_reads_stamps_quaternions_colours_and_receive_times(recorded: tuple[Path, Path]) -> None:
    tmp, bags = recorded
    topics = TopicMap.load(tmp / "topics.yaml")
    episode, expected = read_bag(bags / "ep1", topics), truth(1)
    np.testing.assert_allclose(episode.graph_nodes, expected.graph_nodes, atol=1e-6)  # w >= 0, w first
    assert (episode.graph_nodes[..., 3] >= 0).all()
    np.testing.assert_array_equal(episode.images["base"], expected.images["base"])
    assert episode.node_features == POSE_FEATURES
    # the same bag aligned by receive time would pick other messages: the stamps are what the rig measured
    lagging = read_bag(write_rig_bag(tmp / "late", truth(1), lag_ms=300.0), topics)
    np.testing.assert_allclose(lagging.graph_nodes, expected.graph_nodes, atol=1e-6)


def test_a_prompt_topic_and_a_graph_as_a_float_array(tmp_path: Path) -> None:
    features = {"topic": "/shape/poses", "features": list(POSE_FEATURES)}
    topics = TopicMap.parse({**{k: v for k, v in topic_map(PROMPT).items() if k != "prompt"}, "graph": features,
                             "prompt_topic": "/task"})  # fmt: skip
    bag = write_rig_bag(tmp_path / "ep.bag", truth(3), "ros1", task="reach the blue ball", graph_array=True)
    episode = read_bag(bag, topics)
    assert episode.prompt == "reach the blue ball"
    np.testing.assert_array_equal(episode.graph_nodes, truth(3).graph_nodes)
    with pytest.raises(ValueError, match=r"/shape/poses: a float array as the graph needs `features: \[names\]`"):
        read_bag(bag, dataclasses.replace(topics, graph=dataclasses.replace(topics.graph, features=None)))


def _skip_reason(tmp: Path, name: str, topics: dict, episode: RawEpisode | None = None, **rig) -> str:
    """Convert two good bags and a bad one; the bad one is skipped and its reason returned."""
    source = tmp / name
    for seed in (5, 7):
        write_rig_bag(source / f"a_good{seed}", truth(seed))
    bad = write_rig_bag(source / "b_bad", episode or truth(6), **rig)
    result = convert(source, tmp / f"{name}_prep", ConvertOptions(val_episodes=0, topics=TopicMap.parse(topics)))
    assert result.kept == ["a_good5", "a_good7"]
    assert [s["file"] for s in result.skipped] == [bad.name]
    return f"{result.skipped[0]['key']}: {result.skipped[0]['reason']}"


def test_bad_bags_are_skipped_with_bag_topic_and_time(tmp_path: Path) -> None:
    topics = topic_map(PROMPT)
    gap = _skip_reason(tmp_path, "gap", topics, drop=("/shape/poses", 0.45, 0.85))
    assert gap.startswith("/shape/poses: a gap: at t = 0.600 s (stamp 1700000000.600 s) its latest message is 0.154 s")
    assert "more than max_age_s 0.075" in gap  # 3 of its 25 ms periods
    nine = truth(6)
    nine.actions = np.concatenate([nine.actions, nine.actions[:, :1]], axis=1)
    wider = _skip_reason(tmp_path, "size", topics, nine)
    assert wider.startswith("/chambers/cmd: another arm: 9-D actions; the dataset's have 8-D (1 episode of this arm")
    missing = _skip_reason(tmp_path, "missing", topics, drop=("/tip_cam/image_raw/compressed", -1.0, 100.0))
    assert missing == (
        "/tip_cam/image_raw/compressed: missing: the bag has topics ['/chambers/cmd', "
        "'/chambers/pressure', '/overhead/image_raw', '/shape/poses']"
    )
    backwards = _skip_reason(tmp_path, "backwards", topics, backwards="/shape/poses")
    assert backwards == "/shape/poses: stamps go backwards at message 5: 1699999999.821 s after 1700000000.096 s"


def test_truncated_bags_and_wrong_types_are_named(tmp_path: Path) -> None:
    topics = TopicMap.parse(topic_map(PROMPT))
    bag = write_rig_bag(tmp_path / "cut", truth(2), "mcap")
    data = next(bag.glob("*.mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"^cut: <bag>: unreadable bag \("):
        read_bag(bag, topics)
    typed = dataclasses.replace(topics, action=dataclasses.replace(topics.action, topic="/shape/poses"))
    with pytest.raises(ValueError, match=r"^typed: /shape/poses: message type geometry_msgs/msg/PoseArray; the action "
                                         r"takes std_msgs/msg/Float32MultiArray or std_msgs/msg/Float64MultiArray or "
                                         r"sensor_msgs/msg/JointState$"):  # fmt: skip
        read_bag(write_rig_bag(tmp_path / "typed", truth(2)), typed)


def test_topic_map_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"the topic map: give exactly one of 'prompt'"):
        TopicMap.parse({k: v for k, v in topic_map(PROMPT).items() if k != "prompt"})
    with pytest.raises(ValueError, match=r"unknown key 'camera'; the keys are"):
        TopicMap.parse({**topic_map(PROMPT), "camera": {}})
    with pytest.raises(ValueError, match=r"state: field must be one of \['position', 'velocity', 'effort'\]"):
        TopicMap.parse({**topic_map(PROMPT), "state": {"topic": "/p", "field": "pressure"}})
    write_rig_bag(tmp_path / "bags" / "one", truth(0))
    assert main(["convert", str(tmp_path / "bags"), str(tmp_path / "out")]) == 2
    assert "holds ROS bags: give --topics MAP.yaml" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
