"""The arm side for a ROS 2 rig: a node that subscribes to the topics of a topic map, asks `softarm serve` for
action chunks through openpi-client, and publishes one command per control tick.

The topic map is the one `softarm convert --topics` reads the rig's bags with (docs/data_format.md), so the policy
sees live what it was trained on; `softarm.ros.LiveTopics` does the decoding and the staleness checks (tested without
ROS), this file only wires it to rclpy. The command goes out on the map's action topic as std_msgs/Float32MultiArray
(or sensor_msgs/JointState when the map names a `field`). A stream that is missing or stale holds the last command.

    source /opt/ros/humble/setup.bash
    .venv/bin/python examples/ros2_node.py --topics topics.yaml --host POLICY_HOST --port 8000 --replan 8
"""

from __future__ import annotations

import argparse

from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy
import rclpy
from rclpy.node import Node
from rosidl_runtime_py.utilities import get_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray

from softarm.data.rosbag import TopicMap
from softarm.ros import LiveTopics, NotReady


class SoftArmNode(Node):
    def __init__(self, topics: TopicMap, policy: WebsocketClientPolicy, rate: float, replan: int) -> None:
        super().__init__("softarm_policy")
        self.live, self.topics = LiveTopics(topics), topics
        self.broker = ActionChunkBroker(policy, action_horizon=replan)
        types: dict = {}
        for _ in range(100):  # discovery takes a moment: wait up to 10 s for every topic to be seen
            types = dict(self.get_topic_names_and_types())
            if all(topic in types for topic in self.live.subscriptions):
                break
            rclpy.spin_once(self, timeout_sec=0.1)
        for topic in self.live.subscriptions:
            if topic not in types:
                raise SystemExit(f"{topic}: not published; the rig publishes {sorted(types)}")
            self.create_subscription(get_message(types[topic][0]), topic, self._listener(topic), 10)
        joint = topics.action.field is not None
        self.publisher = self.create_publisher(JointState if joint else Float32MultiArray, topics.action.topic, 10)
        self.create_timer(1.0 / rate, self.tick)

    def _listener(self, topic: str):
        return lambda message: self.live.update(topic, message, self.get_clock().now().nanoseconds)

    def tick(self) -> None:
        try:
            request = self.live.request(self.get_clock().now().nanoseconds)
        except NotReady as reason:
            self.get_logger().warning(f"holding: {reason}", throttle_duration_sec=1.0)
            return
        command = [float(v) for v in self.broker.infer(request)["actions"]]
        if self.topics.action.field is not None:
            message = JointState(**{self.topics.action.field: command})
            message.header.stamp = self.get_clock().now().to_msg()
        else:
            message = Float32MultiArray(data=command)
        self.publisher.publish(message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topics", required=True, help="the topic map (YAML) the rig's bags were converted with")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="the server's key, if it has one")
    parser.add_argument("--rate", type=float, default=10.0, help="control rate, Hz (the rate the policy learnt)")
    parser.add_argument("--replan", type=int, default=8, help="actions executed from each chunk")
    args = parser.parse_args()
    rclpy.init()
    node = SoftArmNode(TopicMap.load(args.topics), WebsocketClientPolicy(args.host, args.port, api_key=args.api_key),
                       args.rate, args.replan)  # fmt: skip
    try:
        rclpy.spin(node)
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
