"""Random access to a prepared dataset written by `softarm convert`: memory-mapped frames and action chunks."""

from __future__ import annotations

import dataclasses
import mmap
from pathlib import Path

import numpy as np

from softarm.data.spec import read_meta
from softarm.history import HistorySpec
from softarm.layout import GRAPH_NODES, IMAGE_SLOTS


@dataclasses.dataclass
class Sample:
    images: dict[str, np.ndarray]  # slot -> uint8 [224, 224, 3] (zeros where the slot has no camera)
    graph_nodes: np.ndarray  # float32 [N, F]
    state: np.ndarray  # float32 [32], zero-padded
    actions: np.ndarray  # float32 [H, A]: the chunk starting at this frame; past the episode end, its last action
    action_is_pad: np.ndarray  # bool [H]: True for steps past the episode end
    prompt: str
    episode: int


def episode_name(episode: dict) -> str:
    """How an episode of meta.json is named to people: its raw file, or its LeRobot episode index (after its source
    when a dataset was converted from several)."""
    name = episode["file"] if "file" in episode else f"episode {episode['episode_index']}"
    return f"{episode['source']}: {name}" if "source" in episode else name


def map_array(path: Path, spec: dict) -> tuple[np.ndarray, mmap.mmap | None]:
    """A read-only view of a prepared array file, its pages read on demand, and its mapping. Training reads frames in
    random order, so the kernel is told not to read ahead: with readahead a 150 KB frame pulled ~3 MB off the disk,
    and a dataset larger than memory trained at the disk's pace (seen: 1.2 instead of 0.55 s per step)."""
    dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype), None
    with open(path, "rb") as f:
        pages = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pages.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(pages, dtype=dtype, count=int(np.prod(shape))).reshape(shape), pages


class PreparedDataset:
    """Frames of one split (`train`, `val` or `all`); index i is a frame, whose sample carries the chunk from it."""

    def __init__(self, directory: str | Path, split: str = "train") -> None:
        self.directory = Path(directory)
        self.spec, self.meta = read_meta(self.directory)  # meta: the spec, then arrays, episodes, sample counts
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        mapped = {name: map_array(self.directory / a["file"], a) for name, a in self.meta["arrays"].items()}
        self.arrays = {name: array for name, (array, _) in mapped.items()}
        self._pages = {name: pages for name, (_, pages) in mapped.items() if pages is not None}
        self.horizon = self.spec.action_horizon
        self.episodes = [ep for ep in self.meta["episodes"] if split in ("all", ep["split"])]
        self._episode_of_frame = np.concatenate(
            [np.full(ep["length"], i, dtype=np.int64) for i, ep in enumerate(self.episodes)] or [np.zeros(0, np.int64)]
        )
        self._frame = np.concatenate(
            [ep["start"] + np.arange(ep["length"]) for ep in self.episodes] or [np.zeros(0, np.int64)]
        )

    def __len__(self) -> int:
        return len(self._frame)

    def will_need(self, indices) -> None:
        """Ask the kernel to start reading these samples' frames (their action chunks too) all at once: a disk
        serves random reads in parallel several times faster than one by one (seen: 10 against 4 batches of 16 per
        second on a cloud volume). Only a hint: the values read afterwards are the same."""
        frames = self._frame[np.asarray(indices, np.int64)]
        for name, pages in self._pages.items():
            array = self.arrays[name]
            size = array.strides[0]
            span = self.horizon if name == "actions" else 1
            for frame in frames.tolist():
                start = frame * size // mmap.PAGESIZE * mmap.PAGESIZE
                end = min((frame + span) * size, len(pages))
                pages.madvise(mmap.MADV_WILLNEED, start, end - start)

    def episode_of(self, index: int) -> int:
        """Which of the split's episodes sample `index` belongs to."""
        return int(self._episode_of_frame[index])

    def graph_window(self, index: int, history: HistorySpec) -> tuple[np.ndarray, np.ndarray]:
        """Sample `index`'s graph over its history window: nodes [K, N, F] oldest first and mask [K], the episode's
        first step repeated (mask False) where the window reaches before it (`HistorySpec.offsets`)."""
        return self.window(index, GRAPH_NODES, history)

    def window(self, index: int, array: str, history: HistorySpec) -> tuple[np.ndarray, np.ndarray]:
        """Any per-frame array (the graph, a camera's images) over sample `index`'s history window, as graph_window."""
        frame = int(self._frame[index])
        back, mask = history.offsets(frame - self.episodes[self.episode_of(index)]["start"] + 1)
        return np.asarray(self.arrays[array][frame - back]), mask  # fancy indexing: a copy

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        frame = int(self._frame[index])
        episode = self.episodes[int(self._episode_of_frame[index])]
        end = episode["start"] + episode["length"]
        steps = min(self.horizon, end - frame)
        # past the episode end the arm holds its last command (LeRobot's clamped indices, which openpi trains on)
        actions = np.empty((self.horizon, self.spec.action_dim), np.float32)
        actions[:steps] = self.arrays["actions"][frame : frame + steps]
        actions[steps:] = actions[steps - 1]
        return Sample(
            images={slot: np.array(self.arrays[f"image_{slot}"][frame]) for slot in IMAGE_SLOTS},  # copies
            graph_nodes=np.array(self.arrays[GRAPH_NODES][frame]),
            state=np.array(self.arrays["state"][frame]),
            actions=actions,
            action_is_pad=np.arange(self.horizon) >= steps,
            prompt=episode["prompt"],
            episode=int(self._episode_of_frame[index]),
        )
