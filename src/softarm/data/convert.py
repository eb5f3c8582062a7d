"""`softarm convert SOURCE OUT_DIR`: validate episodes and write a prepared dataset built for random access.

SOURCE is a directory of raw HDF5 episodes or a LeRobot dataset root (v2.1 or v3.0, `softarm.data.lerobot`). One
pass over the episodes: each is read and validated; a bad one is skipped and listed in `report.json` with its file
(or LeRobot episode index) and reason, a good one is appended frame by frame to flat binary arrays (images already
resized with padding to 224x224 uint8 by openpi-client's `resize_with_pad`, which openpi's ResizeImages uses). The
dataset is built in a hidden temporary directory next to OUT_DIR and renamed into place at the end, so a crash never
leaves a half dataset that looks complete. Inputs are opened read-only.

Prepared layout: `meta.json` (shapes, dtypes, camera slots, episodes with split/start/length), one `<array>.bin`
per array (frames in episode order), `report.json`, openpi's `norm_stats.json` of the train split, and
`tokenizer.model`, an offline prompt tokenizer trained on the dataset's prompts (for models without PaliGemma's).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
from openpi_client import image_tools  # the resize that openpi.transforms.ResizeImages uses at inference
from tqdm import tqdm

from softarm import arm
from softarm.data.atomic import atomic_directory
from softarm.data.lerobot import LeRobotKeys, LeRobotSource, camera_name, is_lerobot
from softarm.data.prepared import episode_name
from softarm.data.raw import MAX_STATE_DIM, EpisodeError, RawEpisode, read_episode
from softarm.layout import FORMAT_VERSION, GRAPH_NODES, IMAGE_SIZE, IMAGE_SLOTS, META_FILE, REPORT_FILE, TOKENIZER_FILE

RAW_SUFFIXES = (".h5", ".hdf5")


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    lerobot: LeRobotKeys = dataclasses.field(default_factory=LeRobotKeys)  # the features of a LeRobot SOURCE
    val_episodes: int = 20
    action_horizon: int = 16
    # openpi image slot -> the lab's camera name; None maps the raw cameras, sorted by name, to the slots in order.
    cameras: dict[str, str] | None = None
    image_size: int = IMAGE_SIZE
    seed: int = 0
    overwrite: bool = False
    num_nodes: int = arm.NUM_NODES
    node_features: int = arm.NUM_NODE_FEATURES
    action_dim: int = arm.ACTION_DIM


@dataclasses.dataclass
class ConvertResult:
    out_dir: Path
    kept: list[str]
    skipped: list[dict]
    samples: dict[str, int]


class _ArrayWriter:
    """Appends fixed-shape frames to `<name>.bin`; records what `meta.json` needs to memory-map it back."""

    def __init__(self, directory: Path, name: str, frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.name, self.frame_shape, self.dtype = name, frame_shape, np.dtype(dtype)
        self.file = open(directory / f"{name}.bin", "wb")  # noqa: SIM115 - closed in close()
        self.frames = 0

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        assert values.shape[1:] == self.frame_shape, (self.name, values.shape)
        self.file.write(values.tobytes())
        self.frames += len(values)

    def close(self) -> dict:
        self.file.close()
        return {"file": f"{self.name}.bin", "dtype": self.dtype.str, "shape": [self.frames, *self.frame_shape]}


def find_episodes(raw_dir: Path) -> list[Path]:
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw episode directory {raw_dir} does not exist")
    files = sorted(p for p in raw_dir.iterdir() if p.is_file() and p.suffix.lower() in RAW_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no episode files ({', '.join(RAW_SUFFIXES)}) in {raw_dir}")
    return files


def _camera_map(episode: RawEpisode, cameras: dict[str, str] | None) -> dict[str, str | None]:
    if cameras is None:
        names = sorted(episode.images)[: len(IMAGE_SLOTS)]
        cameras = dict(zip(IMAGE_SLOTS, names, strict=False))
    cameras = {slot: camera_name(name) for slot, name in cameras.items()}  # a LeRobot feature key names its camera
    unknown = sorted(set(cameras) - set(IMAGE_SLOTS))
    if unknown:
        raise ValueError(f"unknown image slots {unknown}; openpi's slots are {list(IMAGE_SLOTS)}")
    return {slot: cameras.get(slot) for slot in IMAGE_SLOTS}


def _check_consistent(episode: RawEpisode, slots: dict[str, str | None], state_dim: int | None) -> None:
    for slot, camera in slots.items():
        if camera is not None and camera not in episode.images:
            key = f"observations/images/{camera}"
            raise EpisodeError(episode.path, key, f"missing: camera {camera!r} feeds slot {slot}")
    width = None if episode.state is None else episode.state.shape[1]
    if width != state_dim:
        raise EpisodeError(episode.path, "observations/state", f"width {width} differs from the dataset's {state_dim}")


def open_episodes(source: Path, options: ConvertOptions) -> list[tuple[dict, Callable[[], RawEpisode]]]:
    """(what names the episode in the report, a function that reads and validates it) for every episode of SOURCE."""
    sizes = {"num_nodes": options.num_nodes, "node_features": options.node_features, "action_dim": options.action_dim}
    if is_lerobot(source):
        dataset = LeRobotSource(source, options.lerobot)
        return [
            ({"episode_index": ep["episode_index"]}, functools.partial(dataset.read, ep, **sizes)) for ep in dataset
        ]
    return [({"file": path.name}, functools.partial(read_episode, path, **sizes)) for path in find_episodes(source)]


def convert(source: str | Path, out_dir: str | Path, options: ConvertOptions = ConvertOptions()) -> ConvertResult:
    source, out_dir = Path(source), Path(out_dir)
    episodes = open_episodes(source, options)
    with atomic_directory(out_dir, overwrite=options.overwrite) as tmp_dir:
        result = _convert_into(episodes, tmp_dir, options)
    result.out_dir = out_dir
    return result


def _convert_into(
    sources: list[tuple[dict, Callable[[], RawEpisode]]], directory: Path, options: ConvertOptions
) -> ConvertResult:
    size = options.image_size
    writers: dict[str, _ArrayWriter] = {}
    slots: dict[str, str | None] | None = None
    state_dim: int | None = None
    episodes, skipped = [], []
    for label, read in tqdm(sources, desc="converting episodes", unit="episode"):
        try:
            episode = read()
            if slots is None:
                slots = _camera_map(episode, options.cameras)
                state_dim = None if episode.state is None else episode.state.shape[1]
                writers = {
                    **{f"image_{s}": _ArrayWriter(directory, f"image_{s}", (size, size, 3), np.uint8) for s in slots},
                    GRAPH_NODES: _ArrayWriter(
                        directory, GRAPH_NODES, (options.num_nodes, options.node_features), np.float32
                    ),
                    "actions": _ArrayWriter(directory, "actions", (options.action_dim,), np.float32),
                    "state": _ArrayWriter(directory, "state", (MAX_STATE_DIM,), np.float32),
                }
            _check_consistent(episode, slots, state_dim)
        except EpisodeError as e:
            skipped.append({**label, "key": e.key, "reason": e.reason})
            tqdm.write(f"skipped {e}")
            continue
        start = writers["actions"].frames
        for slot, camera in slots.items():
            frames = (
                np.zeros((episode.length, size, size, 3), np.uint8)
                if camera is None
                else np.asarray(image_tools.resize_with_pad(episode.images[camera], size, size))
            )
            writers[f"image_{slot}"].append(frames)
        writers[GRAPH_NODES].append(episode.graph_nodes)
        writers["actions"].append(episode.actions)
        state = np.zeros((episode.length, MAX_STATE_DIM), np.float32)
        if episode.state is not None:
            state[:, : episode.state.shape[1]] = episode.state
        writers["state"].append(state)
        episodes.append({**label, "prompt": episode.prompt, "fps": episode.fps, "start": start,
                         "length": episode.length})  # fmt: skip
    arrays = {name: writer.close() for name, writer in writers.items()}
    if not episodes:
        reasons = "; ".join(f"{episode_name(s)}: {s['key']}: {s['reason']}" for s in skipped[:5])
        raise ValueError(f"no valid episode among {len(sources)} episodes: {reasons}")

    num_val = min(options.val_episodes, len(episodes) - 1)
    val = set(np.random.default_rng(options.seed).permutation(len(episodes))[:num_val].tolist())
    for i, ep in enumerate(episodes):
        ep["split"] = "val" if i in val else "train"
    samples = {s: sum(ep["length"] for ep in episodes if ep["split"] == s) for s in ("train", "val")}
    meta = {
        "format": FORMAT_VERSION,
        "image_size": size,
        "cameras": slots,
        "state_dim": state_dim,
        "action_dim": options.action_dim,
        "action_horizon": options.action_horizon,
        "num_nodes": options.num_nodes,
        "node_features": options.node_features,
        "arrays": arrays,
        "episodes": episodes,
        "samples": samples,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    kept = [episode_name(ep) for ep in episodes]
    result = ConvertResult(out_dir=directory, kept=kept, skipped=skipped, samples=samples)
    report = {"kept": result.kept, "skipped": skipped, "samples": samples}
    (directory / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    # imported here: they bring openpi (and with it torch and jax), which reading and checking episodes do not need
    from softarm.data.stats import write_norm_stats
    from softarm.data.tokenizer import train_prompt_tokenizer

    write_norm_stats(directory)
    train_prompt_tokenizer([ep["prompt"] for ep in episodes], directory / TOKENIZER_FILE)
    return result
