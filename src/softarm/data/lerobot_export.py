"""`softarm export-lerobot RAW_DIR OUT_DIR`: raw HDF5 episodes as a LeRobot v3.0 dataset, laid out as LeRobot's own
writer lays it out, so LeRobot, openpi's data pipeline and `softarm convert` read it.

Several episodes share one `data/chunk-XXX/file-YYY.parquet` (one row group per episode) and one AV1 mp4 per camera;
a new file starts when the current one passes its size limit. `meta/episodes/...parquet` says where each episode
lives (file indices, frame range, video timestamps) with its per-episode stats; `meta/stats.json` aggregates them;
`meta/tasks.parquet` maps task_index to the prompt. The graph is a float32 [N, F] feature (datasets' Array2D).
The output is written next to OUT_DIR and renamed into place when complete; inputs are opened read-only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from softarm import arm
from softarm.data.atomic import atomic_directory
from softarm.data.convert import find_episodes
from softarm.data.lerobot import CAMERA_PREFIX, INFO_PATH, TASKS_PARQUET
from softarm.data.raw import EpisodeError, RawEpisode, read_episode
from softarm.data.video import VideoConcatenation, encode

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
STATS_PATH = "meta/stats.json"
GRAPH, STATE, ACTION = "observation.graph", "observation.state", "action"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    chunks_size: int = 1000  # files per chunk directory
    data_file_size_mb: float = 100.0  # LeRobot's defaults
    video_file_size_mb: float = 200.0
    codec: str = "libsvtav1"
    robot_type: str = "soft_continuum_arm"
    overwrite: bool = False


@dataclasses.dataclass
class ExportResult:
    out_dir: Path
    episodes: int
    frames: int
    skipped: list[dict]


class _Array2D(pa.ExtensionType):
    """The arrow type Hugging Face `datasets` gives an Array2D feature (what LeRobot writes for a 2-D feature)."""

    def __init__(self, shape: tuple[int, int], dtype: str = "float32") -> None:
        self.shape, self.dtype_name = tuple(shape), dtype
        storage = pa.list_(pa.list_(pa.from_numpy_dtype(np.dtype(dtype))))
        super().__init__(storage, "datasets.features.features.Array2DExtensionType")

    def __arrow_ext_serialize__(self) -> bytes:
        return json.dumps((list(self.shape), self.dtype_name)).encode()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        shape, dtype = json.loads(serialized)
        return cls(tuple(shape), dtype)


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)


def _stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension stats over the first axis (frames), LeRobot's keys."""
    values = values.astype(np.float64)
    stats = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0),
             "count": np.array([len(values)])}  # fmt: skip
    quantiles = np.quantile(values, list(QUANTILES.values()), axis=0)
    return stats | dict(zip(QUANTILES, quantiles, strict=True))


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of up to 100 frames in [0, 1], shaped [3, 1, 1] as LeRobot stores them."""
    sample = frames[:: max(1, len(frames) // 100)]
    stats = _stats(sample[:, ::4, ::4].reshape(-1, 3) / 255.0)  # every 4th pixel
    return {k: v.reshape(3, 1, 1) for k, v in stats.items() if k != "count"} | {"count": np.array([len(sample)])}


def _aggregate(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset stats from per-episode stats: exact mean, std, min, max and count; count-weighted quantiles."""
    counts = np.array([float(s["count"][0]) for s in episodes])
    weights = counts.reshape(-1, *[1] * np.ndim(episodes[0]["mean"])) / counts.sum()
    mean = sum(w * s["mean"] for w, s in zip(weights, episodes, strict=True))
    second = sum(w * (s["std"] ** 2 + s["mean"] ** 2) for w, s in zip(weights, episodes, strict=True))
    out = {"min": np.min([s["min"] for s in episodes], 0), "max": np.max([s["max"] for s in episodes], 0),
           "mean": mean, "std": np.sqrt(np.maximum(second - mean**2, 0)),
           "count": np.array([int(counts.sum())])}  # fmt: skip
    return out | {q: sum(w * s[q] for w, s in zip(weights, episodes, strict=True)) for q in QUANTILES}


def _features(episode: RawEpisode, fps: int, codec: str) -> dict[str, dict]:
    nodes, node_features = episode.graph_nodes.shape[1:]
    features: dict[str, dict] = {
        GRAPH: {"dtype": "float32", "shape": [nodes, node_features], "names": ["nodes", "node_features"],
                "info": {"node_features": [f"{name} [{arm.feature_unit(name)}]"
                                           for name in arm.column_names(node_features, episode.node_features)]}},
        ACTION: {"dtype": "float32", "shape": [episode.actions.shape[1]],
                 "names": [f"actuator_{i}" for i in range(episode.actions.shape[1])]},
    }  # fmt: skip
    if episode.edges is not None:
        features[GRAPH]["info"]["edges"] = episode.edges.tolist()
    if episode.state is not None:
        width = episode.state.shape[1]
        features[STATE] = {"dtype": "float32", "shape": [width], "names": [f"state_{i}" for i in range(width)]}
    for camera, frames in sorted(episode.images.items()):
        height, width = frames.shape[1:3]
        features[CAMERA_PREFIX + camera] = {
            "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": height, "video.width": width,
                     "video.codec": "av1" if codec == "libsvtav1" else codec,
                     "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
                     "has_audio": False},
        }  # fmt: skip
    for key, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")):  # fmt: skip
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _arrow_column(values: np.ndarray, feature: dict) -> pa.Array:
    shape, flat = feature["shape"], pa.array(values.reshape(-1).astype(feature["dtype"]))
    if shape == [1]:
        return flat
    if len(shape) == 1:
        return pa.FixedSizeListArray.from_arrays(flat, shape[0])
    inner = pa.ListArray.from_arrays(np.arange(0, len(flat) + 1, shape[1], dtype=np.int32), flat)
    outer = pa.ListArray.from_arrays(np.arange(0, len(inner) + 1, shape[0], dtype=np.int32), inner)
    return pa.ExtensionArray.from_storage(_Array2D(tuple(shape), feature["dtype"]), outer)


def _hf_features(features: dict[str, dict]) -> dict:
    """The `datasets.Features` JSON that Hugging Face datasets stores in a parquet file's metadata."""
    out = {}
    for key, f in features.items():
        if f["dtype"] == "video":
            continue
        value = {"dtype": f["dtype"], "_type": "Value"}
        if f["shape"] == [1]:
            out[key] = value
        elif len(f["shape"]) == 1:
            out[key] = {"feature": value, "length": f["shape"][0], "_type": "List"}  # datasets >= 4, as LeRobot v3.0
        else:
            out[key] = {"shape": f["shape"], "dtype": f["dtype"], "_type": "Array2D"}
    return {"info": {"features": out}}


def export_lerobot(raw_dir: str | Path, out_dir: str | Path, options: ExportOptions = ExportOptions()) -> ExportResult:
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    files = find_episodes(raw_dir)
    with atomic_directory(out_dir, overwrite=options.overwrite) as tmp:
        result = _Exporter(tmp, options).run(files)
    result.out_dir = out_dir
    return result


class _Exporter:
    def __init__(self, root: Path, options: ExportOptions) -> None:
        self.root, self.options = root, options
        self.features: dict[str, dict] | None = None
        self.fps = 0
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.stats: list[dict[str, dict]] = []
        self.data_file = [0, 0]  # chunk, file
        self.data_writer: pq.ParquetWriter | None = None
        self.videos: dict[str, tuple[list[int], VideoConcatenation]] = {}
        self.frames = 0

    def run(self, files: list[Path]) -> ExportResult:
        skipped = []
        for path in tqdm(files, desc="exporting episodes", unit="episode"):
            try:
                self.add(read_episode(path))
            except EpisodeError as e:
                skipped.append({"file": path.name, "key": e.key, "reason": e.reason})
                tqdm.write(f"skipped {e}")
        if not self.episodes:
            reasons = "; ".join(f"{s['file']}: {s['key']}: {s['reason']}" for s in skipped[:5])
            raise ValueError(f"no valid episode among {len(files)} episodes: {reasons}")
        self.finish()
        return ExportResult(self.root, len(self.episodes), self.frames, skipped)

    def add(self, episode: RawEpisode) -> None:
        fps = round(episode.fps)
        features = _features(episode, fps, self.options.codec)
        if self.features is None:
            if abs(episode.fps - fps) > 1e-6:
                raise EpisodeError(episode.path, "attrs/fps", f"LeRobot needs a whole frame rate, got {episode.fps}")
            self.features, self.fps = features, fps
        elif features != self.features or fps != self.fps or abs(episode.fps - fps) > 1e-6:
            differs = sorted(k for k in set(features) | set(self.features) if features.get(k) != self.features.get(k))
            raise EpisodeError(episode.path, differs[0] if differs else "attrs/fps",
                               "differs from the first episode (one layout and fps per LeRobot dataset)")  # fmt: skip
        index, length = len(self.episodes), episode.length
        task = self.tasks.setdefault(episode.prompt, len(self.tasks))
        columns = {GRAPH: episode.graph_nodes, ACTION: episode.actions, STATE: episode.state,
                   "timestamp": np.arange(length) / fps, "frame_index": np.arange(length),
                   "episode_index": np.full(length, index), "index": self.frames + np.arange(length),
                   "task_index": np.full(length, task)}  # fmt: skip
        row = {"episode_index": index, "tasks": [episode.prompt], "length": length}
        row |= self._write_data({k: _arrow_column(columns[k], f) for k, f in self.features.items() if k in columns})
        for camera, frames in sorted(episode.images.items()):
            row |= self._write_video(CAMERA_PREFIX + camera, frames)
        stats = {k: _stats(columns[k].reshape(length, -1)) for k in (GRAPH, ACTION, STATE) if columns[k] is not None}
        stats = {k: {s: v.reshape(self.features[k]["shape"]) if s != "count" else v for s, v in st.items()}
                 for k, st in stats.items()}  # fmt: skip
        stats |= {k: _stats(columns[k][:, None]) for k in ("timestamp", "frame_index", "episode_index", "index",
                                                             "task_index")}  # fmt: skip
        stats |= {CAMERA_PREFIX + c: _image_stats(f) for c, f in episode.images.items()}
        self.stats.append(stats)
        row |= {f"stats/{k}/{s}": v.tolist() for k, st in stats.items() for s, v in st.items()}
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        self.episodes.append(row)
        self.frames += length

    def _write_data(self, columns: dict[str, pa.Array]) -> dict:
        table = pa.table(columns).replace_schema_metadata({"huggingface": json.dumps(_hf_features(self.features))})
        length = len(table)
        if self.data_writer is not None:
            size = Path(self.data_writer.where).stat().st_size / 2**20
            if size >= self.options.data_file_size_mb:
                self.data_writer.close()
                self.data_writer = None
                self.data_file = list(_next_file(*self.data_file, self.options.chunks_size))
        if self.data_writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self.data_file[0], file_index=self.data_file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data_writer = pq.ParquetWriter(path, table.schema, compression="snappy", use_dictionary=True)
        self.data_writer.write_table(table)  # one row group per episode
        return {"data/chunk_index": self.data_file[0], "data/file_index": self.data_file[1],
                "dataset_from_index": self.frames, "dataset_to_index": self.frames + length}  # fmt: skip

    def _write_video(self, key: str, frames: np.ndarray) -> dict:
        """Encode the episode, then append it to the camera's current file or, if it would pass the size limit,
        start the next file with it (LeRobot's rule)."""
        episode = encode(self.root / f"{key}.episode.mp4", frames, self.fps, self.options.codec)
        where, video = self.videos.get(key, ([0, 0], None))
        if video is not None and (video.bytes + episode.stat().st_size) / 2**20 >= self.options.video_file_size_mb:
            video.close()
            where, video = list(_next_file(*where, self.options.chunks_size)), None
        if video is None:
            video = VideoConcatenation(self.root / VIDEO_PATH.format(video_key=key, chunk_index=where[0],
                                                                     file_index=where[1]))  # fmt: skip
        self.videos[key] = (where, video)
        start, end = video.append(episode, len(frames), self.fps)
        episode.unlink()
        return {f"videos/{key}/chunk_index": where[0], f"videos/{key}/file_index": where[1],
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": end}  # fmt: skip

    def finish(self) -> None:
        self.data_writer.close()
        for _, video in self.videos.values():
            video.close()
        path = self.root / EPISODES_PATH
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), path, compression="snappy")
        _write_tasks(self.root / TASKS_PARQUET, self.tasks)
        stats = {k: {s: v.tolist() for s, v in _aggregate([st[k] for st in self.stats]).items()} for k in self.stats[0]}
        (self.root / STATS_PATH).write_text(json.dumps(stats, indent=4))
        info = {
            "codebase_version": "v3.0", "robot_type": self.options.robot_type, "total_episodes": len(self.episodes),
            "total_frames": self.frames, "total_tasks": len(self.tasks), "chunks_size": self.options.chunks_size,
            "data_files_size_in_mb": self.options.data_file_size_mb,
            "video_files_size_in_mb": self.options.video_file_size_mb, "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
            "features": self.features,
        }  # fmt: skip
        (self.root / INFO_PATH).write_text(json.dumps(info, indent=4))


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """task_index with the task text as the pandas index named "task", as LeRobot's DataFrame.to_parquet writes it."""
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()), "task": list(tasks)})
    columns = [
        {"name": name, "field_name": name, "pandas_type": kind, "numpy_type": numpy, "metadata": None}
        for name, kind, numpy in (("task_index", "int64", "int64"), ("task", "unicode", "object"))
    ]
    pandas = {"index_columns": ["task"], "column_indexes": [], "columns": columns,
              "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}  # fmt: skip
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas)}), path)
