"""The robot side of a ROS rig, without ROS: the latest message of each topic of a topic map -> a policy request.

A ROS 2 node (examples/ros2_node.py) subscribes to the topics of the same topic map `softarm convert --topics`
reads bags with, hands every message to `LiveTopics.update`, and at each control tick asks `request()` for the
observation to send to `softarm serve` (openpi-client's WebsocketClientPolicy). Messages are decoded exactly as the
bag reader decodes them (`softarm.data.rosbag`: quaternions w first with w >= 0, RGB images), so what the policy sees
live is what it was trained on. A stream that has not spoken yet, or whose latest message is older than its
max_age_s (default: the map's max_age_periods of its recent median period), makes `request()` raise `NotReady`: the
node holds the arm instead of acting on a stale view. No rclpy import here: this module is tested without ROS.
"""

from __future__ import annotations

from collections import deque
import dataclasses

import numpy as np

from softarm.data.rosbag import Stream, TopicMap, decode_graph, decode_image, decode_vector, message_time

RECENT = 20  # messages per topic whose spacing gives its period


class NotReady(RuntimeError):
    """A stream has not spoken yet, or its latest message is too old to act on."""


@dataclasses.dataclass
class _Latest:
    message: object
    times: deque  # ns of the recent messages


class LiveTopics:
    def __init__(self, topics: TopicMap) -> None:
        self.topics = topics
        self.streams: list[Stream] = [topics.graph, *([topics.state] if topics.state else []),
                                      *topics.cameras.values()]  # fmt: skip
        self.latest: dict[str, _Latest] = {}
        self.prompt = topics.prompt

    @property
    def subscriptions(self) -> list[str]:
        """Every topic the node listens to."""
        return [s.topic for s in self.streams] + ([self.topics.prompt_topic] if self.topics.prompt_topic else [])

    def update(self, topic: str, message, received_ns: int) -> None:
        if topic == self.topics.prompt_topic:
            self.prompt = str(message.data).strip() or self.prompt
            return
        latest = self.latest.get(topic)
        if latest is None:
            latest = self.latest[topic] = _Latest(message, deque(maxlen=RECENT))
        latest.message = message
        latest.times.append(message_time(message, received_ns))

    def _fresh(self, stream: Stream, now_ns: int):
        latest = self.latest.get(stream.topic)
        if latest is None:
            raise NotReady(f"{stream.topic}: no message yet")
        times = np.asarray(latest.times)
        period = float(np.median(np.diff(times))) / 1e9 if len(times) > 1 else float("inf")
        limit = stream.max_age_s if stream.max_age_s is not None else self.topics.max_age_periods * period
        age = (now_ns - times[-1]) / 1e9
        if age > limit:
            raise NotReady(f"{stream.topic}: its latest message is {age:.3f} s old, more than {limit:.3f} s")
        return latest.message

    def request(self, now_ns: int) -> dict:
        """The observation for the policy at `now_ns` (the clock the stamps are on); NotReady if a stream is missing
        or stale, or there is no prompt yet."""
        messages = {stream.topic: self._fresh(stream, now_ns) for stream in self.streams}
        if not self.prompt:
            raise NotReady(f"{self.topics.prompt_topic}: no prompt yet")
        nodes, features = decode_graph(messages[self.topics.graph.topic], self.topics.graph)
        request = {
            "images": {name: decode_image(messages[s.topic]) for name, s in self.topics.cameras.items()},
            "graph_nodes": nodes.astype(np.float32),
            "graph_features": list(features),
            "prompt": self.prompt,
        }
        if self.topics.state:
            request["state"] = decode_vector(messages[self.topics.state.topic], self.topics.state).astype(np.float32)
        return request
