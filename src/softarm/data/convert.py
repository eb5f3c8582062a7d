"""`softarm convert SOURCE OUT_DIR`: validate episodes and write a prepared dataset built for random access.

SOURCE is a directory of raw HDF5 episodes, a LeRobot dataset root (v2.1 or v3.0, `softarm.data.lerobot`), or ROS
bags with a topic map (`softarm.data.rosbag`); several sources of one arm convert into one dataset. One pass over the
episodes: each is read and validated; a bad one is skipped and listed in `report.json` with its file
(or LeRobot episode index) and reason, a good one is appended frame by frame to flat binary arrays (images already
resized with padding to 224x224 uint8 by openpi-client's `resize_with_pad`, which openpi's ResizeImages uses). The
dataset is built in a hidden temporary directory next to OUT_DIR and renamed into place at the end, so a crash never
leaves a half dataset that looks complete. Inputs are opened read-only.

Prepared layout: `meta.json` (shapes, dtypes, camera slots, episodes with split/start/length), one `<array>.bin`
per array (frames in episode order), `report.json`, openpi's `norm_stats.json` of the train split, and
`tokenizer.model`, an offline prompt tokenizer trained on the dataset's prompts (for models without PaliGemma's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import json
from pathlib import Path
import shutil

import numpy as np
from openpi_client import image_tools  # the resize that openpi.transforms.ResizeImages uses at inference
from tqdm import tqdm

from softarm import arm
from softarm.data.atomic import atomic_directory
from softarm.data.lerobot import LeRobotKeys, LeRobotSource, camera_name, is_lerobot
from softarm.data.prepared import episode_name
from softarm.data.raw import HDF5_KEYS, MAX_STATE_DIM, EpisodeError, EpisodeKeys, RawEpisode, read_episode
from softarm.data.rosbag import TopicMap, find_bags, is_bag, read_bag
from softarm.data.spec import DatasetSpec
from softarm.layout import (
    GRAPH_NODES,
    IMAGE_SIZE,
    IMAGE_SLOTS,
    META_FILE,
    REPORT_FILE,
    TOKENIZER_FILE,
    default_camera_slots,
)

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
    # The node features the dataset measures: names for columns the episodes do not name, or a subset of what they
    # carry. None: what the episodes declare (all 19 of the schema for 19 undeclared columns).
    features: tuple[str, ...] | None = None
    state: bool = True  # False drops the episodes' state (`--state none`)
    # the sources are ROS bags read through this topic map (`softarm.data.rosbag.TopicMap`, `--topics MAP.yaml`)
    topics: TopicMap | None = None
    # episodes of several arms: one dataset per arm in OUT_DIR/arm_<k>_... (False: the arm most episodes share)
    split_arms: bool = False


@dataclasses.dataclass
class ConvertResult:
    out_dir: Path
    kept: list[str]
    skipped: list[dict]
    samples: dict[str, int]
    datasets: list[Path] = dataclasses.field(default_factory=list)  # one, or one per arm with split_arms


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


def convert_first(
    raw_dir: str | Path, out_dir: str | Path, count: int, options: ConvertOptions, prefix: str = ""
) -> Path:
    """The first `count` + `options.val_episodes` episodes of a raw directory (by file name; only those whose name
    starts with `prefix`, e.g. one task's) as the dataset `out_dir`, reused when it is there: what experiments over a
    growing number of demonstrations or a mixture of tasks train on. The chosen files are linked, not copied, into
    `raw_<name>` beside it."""
    out_dir = Path(out_dir)
    if not (out_dir / META_FILE).is_file():
        chosen = out_dir.with_name(f"raw_{out_dir.name}")
        chosen.mkdir(parents=True, exist_ok=True)
        episodes = [path for path in find_episodes(Path(raw_dir)) if path.name.startswith(prefix)]
        for path in episodes[: count + options.val_episodes]:
            if not (chosen / path.name).exists():
                (chosen / path.name).symlink_to(path.resolve())
        convert(chosen, out_dir, options)
    return out_dir


def _camera_map(episode: RawEpisode, cameras: dict[str, str] | None) -> dict[str, str | None]:
    if cameras is None:
        cameras = default_camera_slots(list(episode.images))
    cameras = {slot: camera_name(name) for slot, name in cameras.items()}  # a LeRobot feature key names its camera
    unknown = sorted(set(cameras) - set(IMAGE_SLOTS))
    if unknown:
        raise ValueError(f"unknown image slots {unknown}; openpi's slots are {list(IMAGE_SLOTS)}")
    return {slot: cameras.get(slot) for slot in IMAGE_SLOTS}


@dataclasses.dataclass
class _Arm:
    """What an episode's arm is: its cameras in the image slots, node count, node features, actuators and state. A
    dataset is the episodes of one arm; the edges come from the first of them that declares any."""

    first: str  # the first episode of this arm, named in the reasons
    slots: dict[str, str | None]
    num_nodes: int
    layout: arm.NodeLayout
    action_dim: int
    state_dim: int | None
    keys: EpisodeKeys  # where its first episode's fields live, for the reasons
    edges: tuple[arm.Edge, ...] | None = None

    @property
    def signature(self) -> tuple:
        return tuple(self.slots.items()), self.num_nodes, self.layout, self.action_dim, self.state_dim

    def describe(self) -> str:
        cameras = "/".join(c for c in self.slots.values() if c is not None)
        state = f"{self.state_dim}-D state" if self.state_dim else "no state"
        return (f"{self.num_nodes} nodes x {len(self.layout.measured)} measured features, {self.action_dim} actuators, "
                f"{state}, cameras {cameras}")  # fmt: skip

    def difference(self, other: _Arm) -> tuple[str, str]:
        """(key, reason): the first way this arm differs from `other`."""
        keys = self.keys
        if self.slots != other.slots:
            return (
                keys.images or "<cameras>",
                f"cameras {self.slots} in the image slots; the dataset's are {other.slots}",
            )
        if self.num_nodes != other.num_nodes:
            return keys.graph_nodes, f"{self.num_nodes} nodes; the dataset's have {other.num_nodes}"
        if self.layout != other.layout:
            return keys.node_features, (f"measures {list(self.layout.measured)}; the dataset's measure "
                                        f"{list(other.layout.measured)}")  # fmt: skip
        if self.action_dim != other.action_dim:
            return keys.actions, f"{self.action_dim}-D actions; the dataset's have {other.action_dim}-D"
        width, wanted = self.state_dim, other.state_dim
        reason = (f"missing; the dataset's have {wanted}-D state" if width is None
                  else f"{width}-D state, but the dataset's have none" if wanted is None
                  else f"{width}-D state; the dataset's have {wanted}-D")  # fmt: skip
        return keys.state, f"{reason}; --state none drops state from every episode"

    def spec(self, image_size: int, action_horizon: int) -> DatasetSpec:
        edges = self.edges if self.edges is not None else arm.chain_edges(self.num_nodes)
        return DatasetSpec(cameras=self.slots, num_nodes=self.num_nodes, layout=self.layout, edges=edges,
                           action_dim=self.action_dim, state_dim=self.state_dim, action_horizon=action_horizon,
                           image_size=image_size)  # fmt: skip


def _columns(
    episode: RawEpisode, features: tuple[str, ...] | None, keys: EpisodeKeys
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the names of the episode's feature columns, the features the dataset takes from them)."""
    width = episode.graph_nodes.shape[2]
    names = arm.column_names(
        width, episode.node_features or (features if features and len(features) == width else None)
    )
    missing = [name for name in features or () if name not in names]
    if missing:
        raise EpisodeError(episode.path, keys.node_features, f"lacks feature {missing[0]!r} (--features asks for "
                                                             f"it); its {width} columns are {list(names)}")  # fmt: skip
    return names, features or names


def _episode_arm(episode: RawEpisode, label: dict, wanted: tuple[str, ...], keys: EpisodeKeys,
                 cameras: dict[str, str] | None) -> _Arm:  # fmt: skip
    """The arm an episode records (EpisodeError if it lacks a camera the options map to a slot)."""
    slots = _camera_map(episode, cameras)
    for slot, camera in slots.items():
        if camera is not None and camera not in episode.images:
            raise EpisodeError(episode.path, keys.image(camera), f"missing: camera {camera!r} feeds slot {slot}")
    return _Arm(first=episode_name(label), slots=slots, num_nodes=episode.graph_nodes.shape[1],
                layout=arm.NodeLayout.of(wanted), action_dim=episode.actions.shape[1],
                state_dim=None if episode.state is None else episode.state.shape[1], keys=keys)  # fmt: skip


def _join_edges(episode: RawEpisode, group: _Arm, keys: EpisodeKeys) -> None:
    """The first episode of an arm that declares edges gives them; a later one that declares others is skipped."""
    if episode.edges is None:
        return
    edges = arm.validate_edges(group.num_nodes, episode.edges.tolist())
    if group.edges is None:
        group.edges = edges
    elif not arm.same_graph(edges, group.edges):
        theirs = [list(e) for e in group.edges]
        raise EpisodeError(episode.path, keys.edges, f"edges {[list(e) for e in edges]} differ from the dataset's "
                                                     f"{theirs} (first: {group.first})")  # fmt: skip


def open_episodes(
    sources: Sequence[Path], options: ConvertOptions
) -> list[tuple[dict, Callable[[], RawEpisode], EpisodeKeys]]:
    """(what names the episode in the report, a function that reads and validates it, where its fields live) for
    every episode of the sources, in order; with several sources each name carries its source."""
    episodes = []
    for source in sources:
        where = {"source": str(source)} if len(sources) > 1 else {}
        if options.topics is not None:
            keys, read = options.topics.keys(), functools.partial(read_bag, topics=options.topics)
            episodes += [({**where, "file": bag.name}, functools.partial(read, bag), keys) for bag in find_bags(source)]
        elif is_bag(source) or (source.is_dir() and any(is_bag(p) for p in source.iterdir())):
            raise ValueError(f"{source} holds ROS bags: give --topics MAP.yaml, which topic is which field "
                             "(docs/data_format.md)")  # fmt: skip
        elif is_lerobot(source):
            dataset = LeRobotSource(source, options.lerobot)
            episodes += [({**where, "episode_index": ep["episode_index"]}, functools.partial(dataset.read, ep),
                          dataset.episode_keys) for ep in dataset]  # fmt: skip
        else:
            episodes += [({**where, "file": path.name}, functools.partial(read_episode, path), HDF5_KEYS)
                         for path in find_episodes(source)]  # fmt: skip
    return episodes


def convert(
    source: str | Path | Sequence[str | Path], out_dir: str | Path, options: ConvertOptions = ConvertOptions()
) -> ConvertResult:
    """Convert one source (a raw directory or a LeRobot root), or several into one dataset, into `out_dir`."""
    sources = [Path(source)] if isinstance(source, str | Path) else [Path(s) for s in source]
    if not sources:
        raise ValueError("no source to convert")
    out_dir = Path(out_dir)
    if options.features is not None:
        try:
            arm.NodeLayout.of(options.features)
        except ValueError as e:
            raise ValueError(f"--features: {e}") from None
    episodes = open_episodes(sources, options)
    with atomic_directory(out_dir, overwrite=options.overwrite) as tmp_dir:
        result = _convert_into(episodes, tmp_dir, options)
    result.datasets = [out_dir / d.relative_to(tmp_dir) for d in result.datasets]
    result.out_dir = out_dir
    return result


@dataclasses.dataclass
class _Group:
    """The episodes of one arm, converted into a directory of their own (the dataset, or one of several)."""

    arm: _Arm
    directory: Path
    writers: dict[str, _ArrayWriter]
    episodes: list[dict] = dataclasses.field(default_factory=list)

    @classmethod
    def open(cls, episode_arm: _Arm, directory: Path, size: int) -> _Group:
        directory.mkdir()
        graph_shape = (episode_arm.num_nodes, episode_arm.layout.width)
        writers = {
            **{
                f"image_{s}": _ArrayWriter(directory, f"image_{s}", (size, size, 3), np.uint8)
                for s in episode_arm.slots
            },
            GRAPH_NODES: _ArrayWriter(directory, GRAPH_NODES, graph_shape, np.float32),
            "actions": _ArrayWriter(directory, "actions", (episode_arm.action_dim,), np.float32),
            "state": _ArrayWriter(directory, "state", (MAX_STATE_DIM,), np.float32),
        }
        return cls(episode_arm, directory, writers)

    def append(self, episode: RawEpisode, names: tuple[str, ...], label: dict, size: int) -> None:
        start = self.writers["actions"].frames
        for slot, camera in self.arm.slots.items():
            frames = (
                np.zeros((episode.length, size, size, 3), np.uint8)
                if camera is None
                else np.asarray(image_tools.resize_with_pad(episode.images[camera], size, size))
            )
            self.writers[f"image_{slot}"].append(frames)
        self.writers[GRAPH_NODES].append(self.arm.layout.select(episode.graph_nodes, names))
        self.writers["actions"].append(episode.actions)
        state = np.zeros((episode.length, MAX_STATE_DIM), np.float32)
        if episode.state is not None:
            state[:, : episode.state.shape[1]] = episode.state
        self.writers["state"].append(state)
        self.episodes.append({**label, "prompt": episode.prompt, "fps": episode.fps, "start": start,
                              "length": episode.length})  # fmt: skip

    def name(self, k: int) -> str:
        return f"arm_{k}_{self.arm.num_nodes}nodes_{self.arm.action_dim}actuators"


def _convert_into(
    sources: list[tuple[dict, Callable[[], RawEpisode], EpisodeKeys]], directory: Path, options: ConvertOptions
) -> ConvertResult:
    """Read every episode once, each arm's episodes into arrays of their own; keep the arm most episodes share (or,
    with `split_arms`, write each arm as a dataset of its own)."""
    size = options.image_size
    groups: list[_Group] = []
    skipped: list[dict] = []
    for label, read, keys in tqdm(sources, desc="converting episodes", unit="episode"):
        try:
            episode = read()
            if not options.state:
                episode = dataclasses.replace(episode, state=None)
            names, wanted = _columns(episode, options.features, keys)
            episode_arm = _episode_arm(episode, label, wanted, keys, options.cameras)
            group = next((g for g in groups if g.arm.signature == episode_arm.signature), None)
            if group is None:
                group = _Group.open(episode_arm, directory / f".arm_{len(groups)}", size)
                groups.append(group)
            _join_edges(episode, group.arm, keys)
        except EpisodeError as e:
            skipped.append({**label, "key": e.key, "reason": e.reason})
            tqdm.write(f"skipped {e}")
            continue
        group.append(episode, names, label, size)
    arrays = [{name: writer.close() for name, writer in group.writers.items()} for group in groups]
    if not groups:
        reasons = "; ".join(f"{episode_name(s)}: {s['key']}: {s['reason']}" for s in skipped[:5])
        raise ValueError(f"no valid episode among {len(sources)} episodes: {reasons}")
    order = sorted(range(len(groups)), key=lambda k: -len(groups[k].episodes))  # ties keep the order of reading
    if options.split_arms:
        results = [_finish(groups[k], arrays[k], directory / groups[k].name(i), skipped, options)
                   for i, k in enumerate(order)]  # fmt: skip
        arms = [{"dataset": groups[k].name(i), "episodes": len(groups[k].episodes), "arm": groups[k].arm.describe(),
                 "first": groups[k].arm.first} for i, k in enumerate(order)]  # fmt: skip
        (directory / REPORT_FILE).write_text(json.dumps({"arms": arms, "skipped": skipped}, indent=2) + "\n")
        return ConvertResult(out_dir=directory, kept=[n for r in results for n in r.kept], skipped=skipped,
                             samples={s: sum(r.samples[s] for r in results) for s in ("train", "val")},
                             datasets=[r.out_dir for r in results])  # fmt: skip
    chosen = groups[order[0]]
    if len(order) > 1 and len(groups[order[1]].episodes) == len(chosen.episodes):
        listing = "; ".join(f"{len(g.episodes)} episodes (first: {g.arm.first}): {g.arm.describe()}"
                            for g in (groups[k] for k in order))  # fmt: skip
        raise ValueError(f"no arm is shared by most episodes: {listing}; keep the episodes of one arm, or convert with "
                         "--split-arms (one dataset per arm)")  # fmt: skip
    for k in order[1:]:
        key, reason = groups[k].arm.difference(chosen.arm)
        count = len(groups[k].episodes)
        note = (f"another arm: {reason} ({count} episode{'s' if count > 1 else ''} of this arm; the dataset keeps the "
                f"arm of {len(chosen.episodes)} episodes, first: {chosen.arm.first})")  # fmt: skip
        skipped += [{**{f: ep[f] for f in ("source", "file", "episode_index") if f in ep}, "key": key, "reason": note}
                    for ep in groups[k].episodes]  # fmt: skip
    return _finish(chosen, arrays[order[0]], directory, skipped, options)


def _finish(
    group: _Group, arrays: dict, directory: Path, skipped: list[dict], options: ConvertOptions
) -> ConvertResult:
    """The dataset of one arm in `directory`: its arrays, meta.json, report.json, norm stats and tokenizer."""
    directory.mkdir(exist_ok=True)
    for writer in group.writers.values():
        (group.directory / f"{writer.name}.bin").rename(directory / f"{writer.name}.bin")
    group.directory.rmdir()
    for other in directory.glob(".arm_*"):  # the episodes of the arms not kept
        shutil.rmtree(other)
    episodes = group.episodes
    num_val = min(options.val_episodes, len(episodes) - 1)
    val = set(np.random.default_rng(options.seed).permutation(len(episodes))[:num_val].tolist())
    for i, ep in enumerate(episodes):
        ep["split"] = "val" if i in val else "train"
    samples = {s: sum(ep["length"] for ep in episodes if ep["split"] == s) for s in ("train", "val")}
    meta = {
        **group.arm.spec(options.image_size, options.action_horizon).to_json(),
        "arrays": arrays,
        "episodes": episodes,
        "samples": samples,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    kept = [episode_name(ep) for ep in episodes]
    report = {"kept": kept, "skipped": skipped, "samples": samples}
    (directory / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    # imported here: they bring openpi (and with it torch and jax), which reading and checking episodes do not need
    from softarm.data.stats import write_norm_stats
    from softarm.data.tokenizer import train_prompt_tokenizer

    write_norm_stats(directory)
    train_prompt_tokenizer([ep["prompt"] for ep in episodes], directory / TOKENIZER_FILE)
    return ConvertResult(out_dir=directory, kept=kept, skipped=skipped, samples=samples, datasets=[directory])
