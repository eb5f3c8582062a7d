"""Random access to a prepared dataset written by `softarm convert`: memory-mapped frames and action chunks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from softarm.layout import FORMAT_VERSION, GRAPH_NODES, IMAGE_SLOTS, META_FILE


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
    """How an episode of meta.json is named to people: its raw file, or its LeRobot episode index."""
    return episode["file"] if "file" in episode else f"episode {episode['episode_index']}"


def read_meta(directory: str | Path) -> dict:
    """A prepared dataset's meta.json, if it is of the format this softarm reads."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a dataset written by `softarm convert`")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {meta.get('format')!r}, this softarm reads {FORMAT_VERSION} (convert the raw "
                         "episodes again)")  # fmt: skip
    return meta


class PreparedDataset:
    """Frames of one split (`train`, `val` or `all`); index i is a frame, whose sample carries the chunk from it."""

    def __init__(self, directory: str | Path, split: str = "train") -> None:
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.arrays = {
            name: np.memmap(self.directory / a["file"], dtype=np.dtype(a["dtype"]), mode="r", shape=tuple(a["shape"]))
            for name, a in self.meta["arrays"].items()
        }
        self.horizon: int = self.meta["action_horizon"]
        self.episodes = [ep for ep in self.meta["episodes"] if split in ("all", ep["split"])]
        self._episode_of_frame = np.concatenate(
            [np.full(ep["length"], i, dtype=np.int64) for i, ep in enumerate(self.episodes)] or [np.zeros(0, np.int64)]
        )
        self._frame = np.concatenate(
            [ep["start"] + np.arange(ep["length"]) for ep in self.episodes] or [np.zeros(0, np.int64)]
        )

    def __len__(self) -> int:
        return len(self._frame)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        frame = int(self._frame[index])
        episode = self.episodes[int(self._episode_of_frame[index])]
        end = episode["start"] + episode["length"]
        steps = min(self.horizon, end - frame)
        # past the episode end the arm holds its last command (LeRobot's clamped indices, which openpi trains on)
        actions = np.empty((self.horizon, self.meta["action_dim"]), np.float32)
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
