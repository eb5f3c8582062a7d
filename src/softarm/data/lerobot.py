"""LeRobot datasets (codebase v2.1 and v3.0) as a source of soft-arm episodes, read with pyarrow and PyAV.

A LeRobot root is recognised by `meta/info.json`. Each episode becomes a `RawEpisode`, checked exactly as an HDF5
episode is (`validate_episode`), so `softarm convert` treats both sources alike. v3.0 keeps many episodes in one
parquet file and one mp4 per camera; an episode's rows are found by `episode_index`, its frames at
`from_timestamp + timestamp` of its video file. Files are read one at a time and videos decoded front to back.
Layout facts: docs/data_format.md.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from softarm import arm
from softarm.data.raw import EpisodeError, EpisodeKeys, RawEpisode, validate_episode
from softarm.data.video import TOLERANCE_S, VideoError, VideoReader

INFO_PATH = "meta/info.json"
VERSIONS = ("v2.1", "v3.0")
EPISODES_GLOB = "meta/episodes/chunk-*/file-*.parquet"  # v3.0
TASKS_PARQUET = "meta/tasks.parquet"  # v3.0
EPISODES_JSONL = "meta/episodes.jsonl"  # v2.1
TASKS_JSONL = "meta/tasks.jsonl"  # v2.1
CAMERA_PREFIX = "observation.images."


@dataclasses.dataclass(frozen=True)
class LeRobotKeys:
    """Which LeRobot features hold what softarm needs."""

    graph: str = "observation.graph"  # float [N, F], or flat [N * F]
    state: str | None = "observation.state"  # used when the dataset has it; None: never
    action: str = "action"
    cameras: dict[str, str] | None = None  # camera name -> feature; None: every image/video feature
    num_nodes: int | None = None  # for a flat graph; default: its size / the declared feature count (else 19)


def is_lerobot(root: Path) -> bool:
    return (root / INFO_PATH).is_file()


def camera_name(feature: str) -> str:
    return feature.removeprefix(CAMERA_PREFIX)


class LeRobotSource:
    """The episodes of one LeRobot dataset root, read in order (each data and video file is opened once)."""

    def __init__(self, root: Path, keys: LeRobotKeys = LeRobotKeys()) -> None:
        self.root, self.keys = root, keys
        info_path = root / INFO_PATH
        try:
            self.info = json.loads(info_path.read_text())
            self.version, self.fps, self.features = (self.info[k] for k in ("codebase_version", "fps", "features"))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{info_path}: not a LeRobot info.json ({e!r})") from None
        if self.version not in VERSIONS:
            raise ValueError(f"{info_path}: codebase_version {self.version!r}; softarm reads {' and '.join(VERSIONS)}")
        for role, key in (("--graph-key", keys.graph), ("--action-key", keys.action)):
            if key not in self.features:
                raise ValueError(f"{info_path}: no feature {key!r} ({role}); the dataset has {sorted(self.features)}")
        visual = {k for k, f in self.features.items() if f.get("dtype") in ("video", "image")}
        self.cameras = keys.cameras or {camera_name(k): k for k in sorted(visual)}
        unknown = sorted(set(self.cameras.values()) - visual)
        if unknown:
            raise ValueError(
                f"{info_path}: {unknown[0]!r} is not an image or video feature; those are {sorted(visual)}"
            )
        self.state_key = keys.state if keys.state in self.features else None
        graph_info = self.features[keys.graph].get("info") or {}  # as softarm's export writes it
        self.edges = graph_info.get("edges")
        # names as "pos_x [m]": the export writes each with its unit
        names = graph_info.get("node_features")
        self.node_features = None if names is None else tuple(str(n).split(" [")[0] for n in names)
        self.episode_keys = EpisodeKeys(
            images="", graph_nodes=keys.graph, actions=keys.action, state=self.state_key or "",
            edges=f"{keys.graph}.info.edges", node_features=f"{keys.graph}.info.node_features",
        )  # fmt: skip
        self.episodes = self._read_episodes()
        self._table: tuple[Path, pa.Table] | None = None
        self._videos: dict[str, VideoReader] = {}

    def _read_episodes(self) -> list[dict]:
        """The episode index (what and where each episode is) and the task texts."""
        try:
            if self.version == "v2.1":
                rows = _jsonl(self.root / EPISODES_JSONL)
                self.tasks = {t["task_index"]: t["task"] for t in _jsonl(self.root / TASKS_JSONL)}
            else:
                files = sorted(self.root.glob(EPISODES_GLOB))
                if not files:
                    raise FileNotFoundError(f"no {EPISODES_GLOB}")
                rows = [row for f in files for row in pq.read_table(f).to_pylist()]
                tasks = pq.read_table(self.root / TASKS_PARQUET)
                text = next(name for name in tasks.column_names if name != "task_index")  # the index pandas stored
                self.tasks = dict(zip(tasks["task_index"].to_pylist(), tasks[text].to_pylist(), strict=True))
            return sorted(rows, key=lambda r: r["episode_index"])
        except (OSError, ValueError, KeyError, StopIteration, pa.ArrowException) as e:
            raise ValueError(f"{self.root}: cannot read LeRobot {self.version} episode metadata ({e!r})") from None

    def __iter__(self) -> Iterator[dict]:
        return iter(self.episodes)

    def read(self, episode: dict) -> RawEpisode:
        """The episode, validated; EpisodeError names the episode index, the feature and what was expected."""
        path = Path(f"episode {episode['episode_index']}")
        try:
            return self._read(episode, path)
        except KeyError as e:  # a location the episode metadata should hold
            raise EpisodeError(path, str(e.args[0]), "missing from the episode metadata") from None

    def _read(self, episode: dict, path: Path) -> RawEpisode:
        rows = self._rows(episode, path)
        timestamps = _column(rows, "timestamp", path).reshape(-1).astype(np.float64)
        frame_index = _column(rows, "frame_index", path).reshape(-1)
        if not np.array_equal(frame_index, np.arange(len(rows))):
            raise EpisodeError(path, "frame_index", f"expected 0..{len(rows) - 1} in order, got {frame_index[:8]}...")
        gaps = np.flatnonzero(np.abs(np.diff(timestamps) - 1 / self.fps) > TOLERANCE_S)
        if gaps.size:
            i = int(gaps[0])
            raise EpisodeError(path, "timestamp", f"gap between frames {i} and {i + 1}: {timestamps[i]:.4f} s -> "
                                                  f"{timestamps[i + 1]:.4f} s at {self.fps} fps")  # fmt: skip
        graph = self._feature(rows, self.keys.graph, path)
        if graph.ndim == 2:  # flat [T, N * F]
            width = len(self.node_features) if self.node_features else arm.NUM_NODE_FEATURES
            nodes = self.keys.num_nodes or graph.shape[1] // width
            if nodes < 1 or graph.shape[1] % nodes:
                raise EpisodeError(path, self.keys.graph, f"a flat graph of {graph.shape[1]} values is not N x F")
            graph = graph.reshape(len(graph), nodes, -1)
        task = int(_column(rows, "task_index", path)[0]) if "task_index" in rows.column_names else None
        prompt = self.tasks.get(task) or next(iter(episode.get("tasks") or []), None)
        if not prompt or not str(prompt).strip():
            raise EpisodeError(path, "task_index", f"no task text for task_index {task}")
        images = {
            name: self._images(episode, feature, rows, timestamps, path) for name, feature in self.cameras.items()
        }
        raw = RawEpisode(
            path=path, images=images, graph_nodes=graph, actions=self._feature(rows, self.keys.action, path),
            prompt=str(prompt).strip(), fps=float(self.fps),
            state=None if self.state_key is None else self._feature(rows, self.state_key, path),
            edges=None if self.edges is None else np.asarray(self.edges), node_features=self.node_features,
        )  # fmt: skip
        return validate_episode(raw, self.episode_keys)

    def _rows(self, episode: dict, path: Path) -> pa.Table:
        index, file = episode["episode_index"], self._file("data", episode, "data")
        name = str(file.relative_to(self.root))
        if self._table is None or self._table[0] != file:
            if not file.is_file():
                raise EpisodeError(path, name, "data file missing")
            try:
                self._table = (file, pq.read_table(file))
            except (OSError, pa.ArrowException) as e:
                raise EpisodeError(path, name, f"unreadable parquet ({e})") from None
        table = self._table[1]
        if "episode_index" not in table.column_names:
            raise EpisodeError(path, "episode_index", f"missing in {name}")
        rows = table.filter(pa.array(np.asarray(table["episode_index"].to_numpy()) == index))
        if len(rows) == 0:
            raise EpisodeError(path, "episode_index", f"no rows for episode {index} in {name}")
        if "frame_index" in rows.column_names:
            rows = rows.sort_by("frame_index")
        return rows

    def _file(self, kind: str, episode: dict, where: str, **keys) -> Path:
        """The episode's data or video file: v2.1 names it by episode index (and chunk), v3.0 by the chunk and file
        indices the episode metadata gives under `where`."""
        index, template = episode["episode_index"], self.info[f"{kind}_path"]
        if self.version == "v2.1":
            return self.root / template.format(episode_chunk=index // self.info.get("chunks_size", 1000),
                                               episode_index=index, **keys)  # fmt: skip
        indices = {k: episode[f"{where}/{k}"] for k in ("chunk_index", "file_index")}
        return self.root / template.format(**indices, **keys)

    def _feature(self, rows: pa.Table, key: str, path: Path) -> np.ndarray:
        values = _column(rows, key, path)
        shape = tuple(self.features[key].get("shape") or ())
        if shape not in ((), (1,)) and values.shape[1:] != shape:
            raise EpisodeError(path, key, f"info.json says shape {list(shape)}, the data has {list(values.shape[1:])}")
        return values

    def _images(self, episode: dict, feature: str, rows: pa.Table, timestamps: np.ndarray, path: Path) -> np.ndarray:
        if self.features[feature]["dtype"] == "image":  # stored inline: {"bytes": PNG/JPEG, "path": ...}
            from PIL import Image

            cells = _require(rows, feature, path).to_pylist()
            return np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"])).convert("RGB")) for c in cells])
        file = self._file("video", episode, f"videos/{feature}", video_key=feature)
        start = 0.0 if self.version == "v2.1" else float(episode[f"videos/{feature}/from_timestamp"])
        try:
            reader = self._videos.get(feature)
            if reader is None or reader.path != file:
                if reader is not None:
                    reader.close()
                reader = self._videos[feature] = VideoReader(file)
            return reader.read(start + timestamps)
        except VideoError as e:
            self._videos.pop(feature, None)
            raise EpisodeError(path, feature, str(e).replace(str(self.root) + "/", "")) from None


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _require(rows: pa.Table, key: str, path: Path) -> pa.ChunkedArray:
    if key not in rows.column_names:
        raise EpisodeError(path, key, "missing from the data file")
    return rows[key]


def _column(rows: pa.Table, key: str, path: Path) -> np.ndarray:
    """A fixed-shape numeric column as [T, ...]: scalars, fixed-size lists and nested lists (LeRobot's Array2D)."""
    array = _require(rows, key, path).combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    shape = [len(array)]
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) or pa.types.is_large_list(array.type):
        if array.null_count:
            raise EpisodeError(path, key, "null values")
        sizes = np.diff(np.asarray(array.offsets)) if not pa.types.is_fixed_size_list(array.type) else None
        width = array.type.list_size if sizes is None else (int(sizes[0]) if len(sizes) else 0)
        if sizes is not None and (sizes != width).any():
            raise EpisodeError(path, key, "rows of different lengths")
        shape.append(width)
        array = array.flatten()
    if array.null_count:
        raise EpisodeError(path, key, "null values")
    return np.asarray(array.to_numpy(zero_copy_only=False)).reshape(shape)
