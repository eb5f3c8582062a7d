"""Proprioceptive and visual history: the graph (or camera frames) over the last K control steps, `stride` steps
apart, oldest first.

One rule for every place a window is cut — the loader (from a prepared episode), the robot side (`GraphHistory`, fed
every control step) — so a model sees at inference exactly what it trained on: before the episode's first step the
window repeats that first step and its mask says so. numpy only: the robot side never imports torch.
"""

from __future__ import annotations

from collections import deque
import dataclasses

import numpy as np

from softarm.layout import GRAPH_HISTORY_MASK, GRAPH_NODES, IMAGE_HISTORY, IMAGE_HISTORY_MASK


@dataclasses.dataclass(frozen=True)
class HistorySpec:
    steps: int = 1  # K: the current step and K-1 past ones; 1 = no history
    stride: int = 1  # control steps between two steps of the window

    def __post_init__(self) -> None:
        if self.steps < 1 or self.stride < 1:
            raise ValueError(f"history steps and stride must be >= 1, got {self.steps} and {self.stride}")

    @property
    def span(self) -> int:
        """Control steps from the window's oldest step to the current one, both included."""
        return (self.steps - 1) * self.stride + 1

    def offsets(self, available: int) -> tuple[np.ndarray, np.ndarray]:
        """For a current step with `available` steps of its episode up to and including it: each window step's index
        back from the current one (0 = current), clipped to the episode's first step, and whether it is real."""
        back = self.stride * np.arange(self.steps - 1, -1, -1)
        return np.minimum(back, available - 1), back < available


NO_HISTORY = HistorySpec()


class GraphHistory:
    """The robot side's window: `push` the graph nodes of every control step (not only when a chunk is asked for),
    `window()` gives what a request's `graph_nodes` and `graph_history_mask` carry; `reset()` at a new episode."""

    def __init__(self, spec: HistorySpec) -> None:
        self.spec = spec
        self._steps: deque[np.ndarray] = deque(maxlen=spec.span)

    def reset(self) -> None:
        self._steps.clear()

    def push(self, graph_nodes: np.ndarray) -> None:
        nodes = np.asarray(graph_nodes, np.float32)
        if self._steps and nodes.shape != self._steps[-1].shape:
            raise ValueError(
                f"graph_nodes changed shape within an episode ({list(self._steps[-1].shape)} -> {list(nodes.shape)}); "
                "reset() the history at a new episode"
            )
        self._steps.append(nodes)

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """(graph nodes [K, N, F] oldest first, mask [K] True where the step is real)."""
        if not self._steps:
            raise ValueError("no graph nodes pushed yet: push the current step's before asking for the window")
        back, mask = self.spec.offsets(len(self._steps))
        return np.stack([self._steps[-1 - b] for b in back]), mask

    def request_fields(self) -> dict[str, np.ndarray]:
        """The window as a request carries it: {"graph_nodes": [K, N, F], "graph_history_mask": [K]}."""
        nodes, mask = self.window()
        return {GRAPH_NODES: nodes, GRAPH_HISTORY_MASK: mask}


class ImageHistory:
    """The robot side's window of camera frames: `push` every control step's images ({camera: uint8 [H, W, 3]}),
    `request_fields()` gives the past K-1 frames of the model's cameras and their mask, which a request carries
    beside the current images; `reset()` at a new episode."""

    def __init__(self, spec: HistorySpec, cameras: list[str]) -> None:
        self.spec, self.cameras = spec, list(cameras)
        self._steps: deque[dict[str, np.ndarray]] = deque(maxlen=spec.span)

    def reset(self) -> None:
        self._steps.clear()

    def push(self, images: dict[str, np.ndarray]) -> None:
        missing = [camera for camera in self.cameras if camera not in images]
        if missing:
            raise ValueError(f"images lack camera {missing[0]!r}, whose past frames the model reads")
        self._steps.append({camera: np.asarray(images[camera]) for camera in self.cameras})

    def request_fields(self) -> dict:
        """{"image_history": {camera: [K-1, H, W, 3]}, "image_history_mask": [K-1]}: the window without its current
        step (the request's "images" hold that)."""
        if not self._steps:
            raise ValueError("no images pushed yet: push the current step's before asking for the window")
        back, mask = self.spec.offsets(len(self._steps))
        frames = {camera: np.stack([self._steps[-1 - b][camera] for b in back[:-1]]) for camera in self.cameras}
        return {IMAGE_HISTORY: frames, IMAGE_HISTORY_MASK: mask[:-1]}
