"""A soft-arm rig as ROS records it, for tests and benchmarks: an episode written as a bag of streams at their own
rates, stamped by their sensors and received later, with the values the episode holds at each control tick placed
so that only stamp-based alignment finds them (the messages in between carry other values)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from softarm.data.raw import RawEpisode

START_NS = 1_700_000_000 * 10**9
TOPICS = {
    "cameras": {"base": "/overhead/image_raw", "tip": "/tip_cam/image_raw/compressed"},
    "graph": {"topic": "/shape/poses"},
    "action": {"topic": "/chambers/cmd"},
    "state": {"topic": "/chambers/pressure", "field": "position"},
}


def topic_map(prompt: str) -> dict:
    return {**TOPICS, "prompt": prompt}


def _time(typestore, ns: int):
    return typestore.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def write_rig_bag(path: Path, truth: RawEpisode, storage: str = "sqlite3", *, lag_ms: float = 30.0,
                  drop: tuple[str, float, float] | None = None, backwards: str | None = None,
                  task: str | None = None, graph_array: bool = False) -> Path:  # fmt: skip
    """Write `truth` (7 pose features per node, a base and a tip camera, state) as a bag at `path`: storage
    "sqlite3" or "mcap" (a ROS 2 directory) or "ros1" (a .bag file). Ticks at truth.fps from START_NS; the commands
    (no header) at the ticks, two of them before any sensor has spoken; poses at 4x the rate with every other
    quaternion negated, pressures at 2x (JointState), the base camera in bgr8 with padded rows and the tip camera as
    JPEG, each stamped a few ms before its tick and received `lag_ms` after its stamp. `drop` = (topic, from_s, to_s)
    leaves a stream's messages out over that span of episode time (a gap); `backwards` stamps that topic's sixth
    message 300 ms early, before the fifth (a sensor clock that jumped back). `task` is published on /task (a
    std_msgs/String) before the episode; `graph_array` sends the graph as a Float64MultiArray [N, 7] instead of
    poses (received at its tick: an array has no header)."""
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS1_NOETIC if storage == "ros1" else Stores.ROS2_HUMBLE)
    types = typestore.types
    period = round(1e9 / truth.fps)
    lag = round(lag_ms * 1e6)
    rng = np.random.default_rng(0)
    messages: list[tuple[int, str, str, object]] = []  # (receive time, topic, type, message)

    def header(stamp: int):
        fields = {"stamp": _time(typestore, stamp), "frame_id": "base"}
        return types["std_msgs/msg/Header"](**({"seq": 0} if storage == "ros1" else {}), **fields)

    def add(topic: str, msgtype: str, stamp: int, message) -> None:
        if drop and topic == drop[0] and drop[1] <= (stamp - START_NS) / 1e9 < drop[2]:
            return
        received = stamp + lag if hasattr(message, "header") else stamp
        if topic == backwards and sum(m[1] == topic for m in messages) == 5:
            message.header.stamp = _time(typestore, stamp - 300_000_000)
        messages.append((received, topic, msgtype, message))

    def poses(nodes: np.ndarray, flip: bool):
        geometry = {name: types[f"geometry_msgs/msg/{name}"] for name in ("Pose", "Point", "Quaternion")}
        sign = -1.0 if flip else 1.0
        return [geometry["Pose"](position=geometry["Point"](x=float(n[0]), y=float(n[1]), z=float(n[2])),
                                 orientation=geometry["Quaternion"](x=sign * float(n[4]), y=sign * float(n[5]),
                                                                    z=sign * float(n[6]), w=sign * float(n[3])))
                for n in nodes]  # fmt: skip

    floats = "std_msgs/msg/Float32MultiArray"
    layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    if task is not None:
        add("/task", "std_msgs/msg/String", START_NS - 500_000_000, types["std_msgs/msg/String"](data=task))
    for k in range(-2, truth.length):
        tick = START_NS + k * period
        command = truth.actions[max(k, 0)] if k >= 0 else rng.uniform(-1, 1, truth.actions.shape[1])
        add(TOPICS["action"]["topic"], floats, tick,
            types[floats](layout=layout, data=np.asarray(command, np.float32)))  # fmt: skip
        if k < 0:
            continue
        if graph_array:
            dim = types["std_msgs/msg/MultiArrayDimension"]
            shape = types["std_msgs/msg/MultiArrayLayout"](dim=[dim(label="nodes", size=truth.graph_nodes.shape[1],
                                                                    stride=0), dim(label="features", size=7, stride=7)],
                                                           data_offset=0)  # fmt: skip
            add(TOPICS["graph"]["topic"], "std_msgs/msg/Float64MultiArray", tick - 1_000_000,
                types["std_msgs/msg/Float64MultiArray"](layout=shape, data=truth.graph_nodes[k].astype(np.float64)
                                                        .reshape(-1)))  # fmt: skip
        for j in range(0 if graph_array else 4):  # the truth 4 ms before the tick, other shapes after it
            nodes = truth.graph_nodes[k] if j == 0 else truth.graph_nodes[k] + rng.normal(0, 0.01, (1, 7))
            stamp = tick - 4_000_000 + j * period // 4
            add(
                TOPICS["graph"]["topic"],
                "geometry_msgs/msg/PoseArray",
                stamp,
                types["geometry_msgs/msg/PoseArray"](header=header(stamp), poses=poses(nodes, flip=(k + j) % 2 == 1)),
            )
        for j in range(2):
            pressures = truth.state[k] if j == 0 else truth.state[k] + 0.5
            stamp = tick - 10_000_000 + j * period // 2
            add(TOPICS["state"]["topic"], "sensor_msgs/msg/JointState", stamp, types["sensor_msgs/msg/JointState"](
                header=header(stamp), name=[], position=np.asarray(pressures, np.float64),
                velocity=np.zeros(0), effort=np.zeros(0)))  # fmt: skip
        frame = truth.images["base"][k]
        height, width, _ = frame.shape
        padded = np.zeros((height, width * 3 + 8), np.uint8)
        padded[:, : width * 3] = frame[:, :, ::-1].reshape(height, -1)  # bgr8, rows padded by 8 bytes
        stamp = tick - 20_000_000
        add(TOPICS["cameras"]["base"], "sensor_msgs/msg/Image", stamp, types["sensor_msgs/msg/Image"](
            header=header(stamp), height=height, width=width, encoding="bgr8", is_bigendian=0, step=width * 3 + 8,
            data=padded.reshape(-1)))  # fmt: skip
        jpeg = io.BytesIO()
        Image.fromarray(truth.images["tip"][k]).save(jpeg, format="JPEG", quality=95)
        stamp = tick - 30_000_000
        add(TOPICS["cameras"]["tip"], "sensor_msgs/msg/CompressedImage", stamp,
            types["sensor_msgs/msg/CompressedImage"](header=header(stamp), format="jpeg",
                                                     data=np.frombuffer(jpeg.getvalue(), np.uint8)))  # fmt: skip
    messages.sort(key=lambda m: m[0])
    if storage == "ros1":
        from rosbags.rosbag1 import Writer

        writer, serialize = Writer(path), typestore.serialize_ros1
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer, serialize = Writer(path, version=9, storage_plugin=plugin), typestore.serialize_cdr
    with writer:
        connections = {}
        for received, topic, msgtype, message in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(connections[topic], received, serialize(message, msgtype))
    return path
