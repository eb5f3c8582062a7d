"""The robot side of a ROS rig without ROS: messages of the mapped topics, as a node receives them, become the request
a policy trained on the rig's bags answers; a missing or stale stream holds the arm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
import yaml

from softarm.data.convert import ConvertOptions, convert
from softarm.data.rosbag import TopicMap, decode_image, read_bag
from softarm.policy import SoftArmPolicy
from softarm.ros import LiveTopics, NotReady
from softarm.train.config import load_config
from softarm.train.loop import train
from tests.conftest import DEBUG_CONFIG
from tests.rosbag_rig import START_NS, topic_map, write_rig_bag
from tests.test_rosbag import PROMPT, truth


def replay(bag: Path, live: LiveTopics, until_ns: int) -> dict:
    """Hand the bag's messages to `live` in the order a node receives them, up to `until_ns`; the last of each."""
    last = {}
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for connection, received, raw in reader.messages():
            if received > until_ns:
                break
            if connection.topic in live.subscriptions:
                last[connection.topic] = reader.deserialize(raw, connection.msgtype)
                live.update(connection.topic, last[connection.topic], received)
    return last


def test_live_topics_become_a_request_the_rigs_policy_answers(tmp_path: Path) -> None:
    for i in range(3):
        write_rig_bag(tmp_path / "bags" / f"ep{i}", truth(i))
    topics = TopicMap.parse(topic_map(PROMPT))
    convert(tmp_path / "bags", tmp_path / "prep", ConvertOptions(val_episodes=1, topics=topics))
    train(load_config(DEBUG_CONFIG, [f"data.path={tmp_path / 'prep'}", f"train.out_dir={tmp_path / 'run'}",
                                     "train.steps=1", "train.val_every=100", "data.batch_size=4"]))  # fmt: skip
    policy = SoftArmPolicy.from_checkpoint(tmp_path / "run" / "checkpoints" / "1")

    live = LiveTopics(topics)
    assert sorted(live.subscriptions) == sorted(["/shape/poses", "/chambers/pressure", "/overhead/image_raw",
                                                 "/tip_cam/image_raw/compressed"])  # fmt: skip
    with pytest.raises(NotReady, match=r"/shape/poses: no message yet"):
        live.request(START_NS)
    now = START_NS + 500_000_000
    last = replay(tmp_path / "bags" / "ep1", live, now)
    request = live.request(now)
    np.testing.assert_array_equal(request["images"]["tip"], decode_image(last["/tip_cam/image_raw/compressed"]))
    assert request["graph_features"] == ["pos_x", "pos_y", "pos_z", "quat_w", "quat_x", "quat_y", "quat_z"]
    nodes = np.array([[p.position.x, p.position.y, p.position.z] for p in last["/shape/poses"].poses])
    np.testing.assert_allclose(request["graph_nodes"][:, :3], nodes, rtol=1e-6)
    assert (request["graph_nodes"][:, 3] >= 0).all()  # w first, w >= 0, as in training
    np.testing.assert_array_equal(request["state"], last["/chambers/pressure"].position.astype(np.float32))
    # the bag reader decodes the same messages the same way: what was trained on is what is served
    episode = read_bag(tmp_path / "bags" / "ep1", topics)
    assert request["images"]["base"].shape == episode.images["base"].shape[1:]
    actions = policy.infer(request)["actions"]
    assert actions.shape == (16, 8)
    assert np.isfinite(actions).all()
    with pytest.raises(NotReady, match=r"/shape/poses: its latest message is 0\.\d+ s old, more than 0\.075 s"):
        live.request(now + 100_000_000)  # poses arrive every 25 ms: 100 ms without one is a gap


def test_a_prompt_topic_feeds_the_request(tmp_path: Path) -> None:
    raw = {k: v for k, v in topic_map(PROMPT).items() if k != "prompt"}
    topics, now = TopicMap.parse({**raw, "prompt_topic": "/task"}), START_NS + 300_000_000
    live = LiveTopics(topics)
    replay(write_rig_bag(tmp_path / "silent", truth(0)), live, now)  # the task was never published
    with pytest.raises(NotReady, match=r"/task: no prompt yet"):
        live.request(now)
    live = LiveTopics(topics)
    replay(write_rig_bag(tmp_path / "bag", truth(0), task="reach the green ball"), live, now)
    assert live.request(now)["prompt"] == "reach the green ball"
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({**raw, "prompt_topic": "/task"}))
    assert TopicMap.load(tmp_path / "map.yaml").prompt_topic == "/task"
