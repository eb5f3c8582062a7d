"""ROS bags as a source of soft-arm episodes, read with `rosbags` (pure Python, no ROS installation).

A source is a ROS 2 bag (a directory with `metadata.yaml`, sqlite3 or mcap storage), a ROS 1 `.bag` file, or a
directory of bags: one bag is one episode. A topic map (YAML, docs/data_format.md) says which topic is which field.

Time: every message is placed at its header stamp (when the sensor took it) where it has a header, else at the
bag's receive time. The control ticks are the action messages (fps = their median rate); at each tick every other
stream gives its latest message stamped at or before the tick. Ticks before every stream has spoken are dropped; a
stream whose latest message is older than its `max_age_s` at a tick (default: `max_age_periods` of its own median
period) makes the episode invalid, as do stamps that go backwards, a missing topic, an unexpected message type and
an array of another size: `EpisodeError` names the bag, the topic and the time. Bags are opened read-only.

Conversions at the boundary, where mistakes would otherwise enter training data silently: ROS quaternions are x, y,
z, w and become the schema's w, x, y, z with w >= 0; `bgr8` / `bgra8` images are turned to RGB, `mono8` to grey RGB,
rows are cut to `width` when `step` pads them; jpeg and png are decoded to RGB.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
import yaml

from softarm import arm
from softarm.data.raw import EpisodeError, EpisodeKeys, RawEpisode, validate_episode

POSE_FEATURES = ("pos_x", "pos_y", "pos_z", "quat_w", "quat_x", "quat_y", "quat_z")
ARRAYS = ("std_msgs/msg/Float32MultiArray", "std_msgs/msg/Float64MultiArray")
JOINT_STATE = "sensor_msgs/msg/JointState"
POSE_ARRAY = "geometry_msgs/msg/PoseArray"
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
JOINT_FIELDS = ("position", "velocity", "effort")
# encoding -> (channels, the order of R, G, B among them)
ENCODINGS = {"rgb8": (3, [0, 1, 2]), "bgr8": (3, [2, 1, 0]), "rgba8": (4, [0, 1, 2]), "bgra8": (4, [2, 1, 0]),
             "mono8": (1, [0, 0, 0])}  # fmt: skip
MAX_AGE_PERIODS = 3.0


@dataclasses.dataclass(frozen=True)
class Stream:
    """One topic and how to read it."""

    topic: str
    field: str | None = None  # JointState: which of position, velocity, effort (default position)
    features: tuple[str, ...] | None = None  # graph from a float array: its column names
    max_age_s: float | None = None  # None: the map's max_age_periods of this stream's median period


@dataclasses.dataclass(frozen=True)
class TopicMap:
    """Which topic is which field of an episode (docs/data_format.md has a commented example)."""

    cameras: Mapping[str, Stream]  # camera name -> its image topic
    graph: Stream
    action: Stream
    state: Stream | None = None
    prompt: str | None = None
    prompt_topic: str | None = None  # std_msgs/String: the last one before the first sample
    edges: tuple[arm.Edge, ...] | None = None  # default: the chain over the graph's nodes
    max_age_periods: float = MAX_AGE_PERIODS

    @classmethod
    def load(cls, path: str | Path) -> TopicMap:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"--topics {path}: not a readable YAML file ({e})") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Any, where: str = "the topic map") -> TopicMap:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {data!r}")
        known = {"prompt", "prompt_topic", "cameras", "graph", "action", "state", "edges", "max_age_periods"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; the keys are {sorted(known)}")
        for key in ("cameras", "graph", "action"):
            if key not in data:
                raise ValueError(f"{where}: {key!r} is missing")
        if (data.get("prompt") is None) == (data.get("prompt_topic") is None):
            raise ValueError(f"{where}: give exactly one of 'prompt' (the task in words) and 'prompt_topic'")
        cameras = data["cameras"]
        if not isinstance(cameras, dict) or not cameras:
            raise ValueError(f"{where}: 'cameras' must map camera names to image topics, got {cameras!r}")
        edges = data.get("edges")
        periods = data.get("max_age_periods", MAX_AGE_PERIODS)
        if not isinstance(periods, int | float) or periods <= 0:
            raise ValueError(f"{where}: max_age_periods must be a positive number, got {periods!r}")
        return cls(
            cameras={str(name): _stream(value, f"{where}: cameras.{name}") for name, value in cameras.items()},
            graph=_stream(data["graph"], f"{where}: graph"),
            action=_stream(data["action"], f"{where}: action"),
            state=_stream(data["state"], f"{where}: state") if data.get("state") is not None else None,
            prompt=data.get("prompt"),
            prompt_topic=data.get("prompt_topic"),
            edges=None if edges is None else tuple((int(a), int(b)) for a, b in edges),
            max_age_periods=float(periods),
        )

    def keys(self) -> EpisodeKeys:
        """Error messages name a field by its topic."""
        return EpisodeKeys(images="", graph_nodes=self.graph.topic, actions=self.action.topic,
                           state=self.state.topic if self.state else "state", edges="edges",
                           node_features=f"{self.graph.topic} features",
                           cameras={name: s.topic for name, s in self.cameras.items()})  # fmt: skip


def _stream(value: Any, where: str) -> Stream:
    if isinstance(value, str):
        return Stream(topic=value)
    if not isinstance(value, dict) or not isinstance(value.get("topic"), str):
        raise ValueError(f"{where}: expected a topic name or a mapping with 'topic', got {value!r}")
    unknown = sorted(set(value) - {"topic", "field", "features", "max_age_s"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; a stream has topic, field, features, max_age_s")
    field = value.get("field")
    if field is not None and field not in JOINT_FIELDS:
        raise ValueError(f"{where}: field must be one of {list(JOINT_FIELDS)}, got {field!r}")
    age = value.get("max_age_s")
    if age is not None and (not isinstance(age, int | float) or age <= 0):
        raise ValueError(f"{where}: max_age_s must be a positive number of seconds, got {age!r}")
    features = value.get("features")
    return Stream(topic=value["topic"], field=field, features=None if features is None else tuple(features),
                  max_age_s=None if age is None else float(age))  # fmt: skip


def is_bag(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".bag") or (path.is_dir() and (path / "metadata.yaml").is_file())


def find_bags(source: Path) -> list[Path]:
    """The bags of SOURCE: itself if it is one, else the bags directly inside it, in name order."""
    if is_bag(source):
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a ROS bag (a .bag file, or a directory with metadata.yaml) nor a "
                                "directory of bags")  # fmt: skip
    bags = sorted(p for p in source.iterdir() if is_bag(p))
    if not bags:
        raise FileNotFoundError(f"no ROS bags (.bag files, or directories with metadata.yaml) in {source}")
    return bags


@dataclasses.dataclass
class _Messages:
    """One topic's messages in bag order: their times (ns) and decoded values."""

    topic: str
    times: np.ndarray
    values: list

    def period_s(self) -> float:
        return float(np.median(np.diff(self.times))) / 1e9 if len(self.times) > 1 else float("inf")


def read_bag(path: str | Path, topics: TopicMap) -> RawEpisode:
    """One bag -> a validated RawEpisode at the action ticks; EpisodeError naming the bag, the topic and the time."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    try:
        with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
            cameras = {s.topic for s in topics.cameras.values()}
            streams = _read_streams(reader, path, topics, keep=lambda topic: topic not in cameras)

            def fetch(topic: str, indices: np.ndarray) -> list:
                """The topic's messages at these positions, read again: a camera's frames are kept only for the
                ticks (a bag's whole image stream need not fit in memory)."""
                wanted, found = set(indices.tolist()), {}
                connection = next(c for c in reader.connections if c.topic == topic)
                for k, (_, _, raw) in enumerate(reader.messages(connections=[connection])):
                    if k in wanted:
                        found[k] = reader.deserialize(raw, connection.msgtype)
                return [found[int(i)] for i in indices]

            return _sample(path, topics, streams, fetch)
    except EpisodeError:
        raise
    except Exception as e:  # any failure of the bag reader: a truncated or corrupt bag
        raise EpisodeError(path, "<bag>", f"unreadable bag ({type(e).__name__}: {e})") from None


def _read_streams(reader, path: Path, topics: TopicMap, keep) -> dict[str, _Messages]:
    """Every mapped topic's message times, checked, and the messages of the topics `keep` says."""
    wanted = {topics.graph.topic: "graph", topics.action.topic: "action"}
    wanted |= {s.topic: f"camera {name}" for name, s in topics.cameras.items()}
    if topics.state:
        wanted[topics.state.topic] = "state"
    if topics.prompt_topic:
        wanted[topics.prompt_topic] = "prompt"
    connections = {c.topic: c for c in reader.connections}
    for topic in wanted:
        if topic not in connections:
            raise EpisodeError(path, topic, f"missing: the bag has topics {sorted(connections)}")
    expected = {"graph": (POSE_ARRAY, *ARRAYS), "action": (*ARRAYS, JOINT_STATE), "state": (*ARRAYS, JOINT_STATE),
                "prompt": (STRING,)}  # fmt: skip
    for topic, role in wanted.items():
        types = (IMAGE, COMPRESSED) if role.startswith("camera") else expected[role]
        msgtype = connections[topic].msgtype
        if msgtype not in types:
            raise EpisodeError(path, topic, f"message type {msgtype}; the {role} takes {' or '.join(types)}")
    times: dict[str, list[int]] = {topic: [] for topic in wanted}
    values: dict[str, list] = {topic: [] for topic in wanted}
    for connection, received, raw in reader.messages(connections=[connections[t] for t in wanted]):
        message = reader.deserialize(raw, connection.msgtype)
        times[connection.topic].append(message_time(message, received))
        values[connection.topic].append(message if keep(connection.topic) else None)
    streams = {}
    for topic, stamps in times.items():
        stamps_ns = np.asarray(stamps, np.int64)
        if not len(stamps_ns):
            raise EpisodeError(path, topic, "no messages")
        if (back := np.flatnonzero(np.diff(stamps_ns) < 0)).size:
            k = int(back[0]) + 1
            raise EpisodeError(path, topic, f"stamps go backwards at message {k}: {_clock(stamps_ns[k])} after "
                                            f"{_clock(stamps_ns[k - 1])}")  # fmt: skip
        streams[topic] = _Messages(topic, stamps_ns, values[topic])
    return streams


def message_time(message, received_ns: int) -> int:
    """When a message's data was taken: its header stamp where it has one that is set, else when it was received."""
    header = getattr(message, "header", None)
    stamp = header.stamp.sec * 10**9 + header.stamp.nanosec if header is not None else 0
    return stamp or received_ns


def _clock(ns: int) -> str:
    return f"{ns / 1e9:.3f} s"


def _latest(path: Path, stream: _Messages, ticks: np.ndarray, max_age_s: float, start: int) -> np.ndarray:
    """Index of each tick's latest message of `stream`, checked for age."""
    index = np.searchsorted(stream.times, ticks, side="right") - 1
    age = (ticks - stream.times[np.maximum(index, 0)]) / 1e9
    if (stale := np.flatnonzero(age > max_age_s)).size:
        k = int(stale[0])
        raise EpisodeError(path, stream.topic, f"a gap: at t = {(ticks[k] - start) / 1e9:.3f} s (stamp "
                                               f"{_clock(ticks[k])}) its latest message is {age[k]:.3f} s old, "
                                               f"more than max_age_s {max_age_s:.3f}")  # fmt: skip
    return index


def _sample(path: Path, topics: TopicMap, streams: dict[str, _Messages], fetch) -> RawEpisode:
    action = streams[topics.action.topic]
    ticks = action.times
    fps = 1.0 / action.period_s() if len(ticks) > 1 else None
    if fps is None or not np.isfinite(fps):
        raise EpisodeError(path, topics.action.topic, f"{len(ticks)} action message(s): too few to be control ticks")
    others = [topics.graph, *([topics.state] if topics.state else []), *topics.cameras.values()]
    spoken = max(int(streams[s.topic].times[0]) for s in others)
    keep = np.flatnonzero(ticks >= spoken)
    if not keep.size:
        raise EpisodeError(path, topics.action.topic, "no action message after every stream has spoken once")
    ticks = ticks[keep]
    index = {}
    for stream in others:
        messages = streams[stream.topic]
        age = stream.max_age_s if stream.max_age_s is not None else topics.max_age_periods * messages.period_s()
        index[stream.topic] = _latest(path, messages, ticks, age, int(ticks[0]))
    pick = lambda s: [streams[s.topic].values[i] for i in index[s.topic]]  # noqa: E731
    actions = _vectors(path, topics.action, [action.values[i] for i in keep], ticks)
    state = _vectors(path, topics.state, pick(topics.state), ticks) if topics.state else None
    graph_nodes, names = _graph(path, topics.graph, pick(topics.graph), ticks)
    images = {name: _frames(path, stream, fetch(stream.topic, index[stream.topic]), ticks)
              for name, stream in topics.cameras.items()}  # fmt: skip
    prompt = topics.prompt
    if topics.prompt_topic:
        messages = streams[topics.prompt_topic]
        before = np.flatnonzero(messages.times <= ticks[0])
        if not before.size:
            raise EpisodeError(path, topics.prompt_topic, f"no prompt before the first sample ({_clock(ticks[0])})")
        prompt = messages.values[int(before[-1])].data
    episode = RawEpisode(path=path, images=images, graph_nodes=graph_nodes, actions=actions, prompt=str(prompt).strip(),
                         fps=float(fps), state=state, node_features=names,
                         edges=None if topics.edges is None else np.asarray(topics.edges))  # fmt: skip
    if not episode.prompt:
        raise EpisodeError(path, topics.prompt_topic or "prompt", "empty prompt")
    return validate_episode(episode, topics.keys())


def message_type(message) -> str:
    """The ROS type name of a message, e.g. sensor_msgs/msg/Image: rosbags' messages carry it, rclpy's are classes
    of their package's `msg` module."""
    name = getattr(message, "__msgtype__", None)
    return name or f"{type(message).__module__.split('.')[0]}/msg/{type(message).__name__}"


def decode_vector(message, stream: Stream) -> np.ndarray:
    """A command or state vector from a float array or a JointState (its `field`, default position)."""
    if message_type(message) == JOINT_STATE:
        return np.asarray(getattr(message, stream.field or "position"), np.float64)
    return np.asarray(message.data, np.float64)


def decode_graph(message, stream: Stream) -> tuple[np.ndarray, tuple[str, ...]]:
    """[N, F] node features and their names: positions and w-first quaternions (w >= 0) from a PoseArray, or a float
    array of N x len(stream.features) values. ValueError says what does not fit."""
    if message_type(message) == POSE_ARRAY:
        p = message.poses
        nodes = np.array([(q.position.x, q.position.y, q.position.z, q.orientation.w, q.orientation.x, q.orientation.y,
                           q.orientation.z) for q in p], np.float64).reshape(len(p), len(POSE_FEATURES))  # fmt: skip
        nodes[:, 3:] *= np.where(nodes[:, 3:4] < 0, -1.0, 1.0)  # q and -q are one rotation: the schema's w >= 0
        return nodes, POSE_FEATURES
    if not stream.features:
        raise ValueError("a float array as the graph needs `features: [names]` in the topic map")
    data, width = np.asarray(message.data, np.float64), len(stream.features)
    dims = [d.size for d in message.layout.dim]
    if (len(dims) == 2 and dims[1] != width) or data.size % width:
        raise ValueError(f"{data.size} values (layout {dims}); expected N x {width} (the features "
                         f"{list(stream.features)})")  # fmt: skip
    return data.reshape(-1, width), stream.features


def decode_image(message) -> np.ndarray:
    """uint8 [H, W, 3] RGB from an Image (rgb8, bgr8, rgba8, bgra8, mono8; padded rows) or a jpeg / png
    CompressedImage. ValueError says what cannot be decoded."""
    if message_type(message) == COMPRESSED:
        try:
            return np.asarray(Image.open(io.BytesIO(bytes(message.data))).convert("RGB"))
        except OSError as e:
            raise ValueError(f"undecodable {message.format!r} image ({e})") from None
    encoding = message.encoding.lower()
    if encoding not in ENCODINGS:
        raise ValueError(f"image encoding {message.encoding!r}; supported: {', '.join(ENCODINGS)}")
    channels, order = ENCODINGS[encoding]
    height, width, step = int(message.height), int(message.width), int(message.step)
    data = np.asarray(message.data, np.uint8)
    if step < width * channels or data.size < height * step:
        raise ValueError(f"image data of {data.size} bytes does not hold {height} rows of {width} x {channels} bytes "
                         f"(step {step})")  # fmt: skip
    rows = data[: height * step].reshape(height, step)[:, : width * channels]
    return np.ascontiguousarray(rows.reshape(height, width, channels)[:, :, order])


def _decoded(path: Path, topic: str, decode, messages: list, ticks: np.ndarray, what: str) -> list[np.ndarray]:
    """Each tick's message decoded; a failure or a size that changes names the bag, the topic and the time."""
    values = []
    for message, tick in zip(messages, ticks, strict=True):
        try:
            values.append(decode(message))
        except ValueError as e:
            raise EpisodeError(path, topic, f"{e} at {_clock(tick)}") from None
        if values[-1].shape != values[0].shape:
            raise EpisodeError(path, topic, f"{what} {list(values[-1].shape)} at {_clock(tick)}; the first sample's "
                                            f"was {list(values[0].shape)}")  # fmt: skip
    return values


def _vectors(path: Path, stream: Stream, messages: list, ticks: np.ndarray) -> np.ndarray:
    rows = _decoded(path, stream.topic, lambda m: decode_vector(m, stream), messages, ticks, "an array of shape")
    return np.stack(rows).astype(np.float32)


def _graph(path: Path, stream: Stream, messages: list, ticks: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    rows = _decoded(path, stream.topic, lambda m: decode_graph(m, stream)[0], messages, ticks, "nodes x features")
    return np.stack(rows).astype(np.float32), decode_graph(messages[0], stream)[1]


def _frames(path: Path, stream: Stream, messages: list, ticks: np.ndarray) -> np.ndarray:
    cache: dict[int, np.ndarray] = {}

    def decode(message) -> np.ndarray:  # a frame that serves several ticks is decoded once
        if id(message) not in cache:
            cache[id(message)] = decode_image(message)
        return cache[id(message)]

    return np.stack(_decoded(path, stream.topic, decode, messages, ticks, "an image of shape"))
