"""EpisodeRecorder: a rig's episode written to the raw HDF5 layout step by step, as it happens.

A lab's own Python loop calls `add(...)` once per control step and `close()` at the end. Each frame is checked when
it arrives (shape, dtype, NaN/Inf, named by key and step) and appended at once, so memory stays flat over a long
episode and a crash loses only the episode being recorded: the file carries `complete = False` until `close()`, and
`softarm convert` reports such a file as incomplete instead of taking a truncated episode for a good one. The file
is the layout of docs/data_format.md, readable by `softarm.data.raw.read_episode` like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from softarm.data.raw import ACTION, COMPLETE, EDGES, IMAGES, NODES, STATE

COMPRESSIONS = ("gzip", "lzf", None)


class EpisodeRecorder:
    def __init__(
        self,
        path: str | Path,
        *,
        fps: float,
        prompt: str,
        node_features: Sequence[str] | None = None,
        edges: np.ndarray | Sequence[tuple[int, int]] | None = None,
        compression: str | None = None,
    ) -> None:
        """Open `path` (it must not exist) for one episode at `fps` Hz. `node_features` names the graph's columns
        (None: 19 columns are the schema), `edges` the arm's node pairs (None: the chain). `compression` of the
        images: None (the default: only uncompressed frames keep up with 3 cameras at 480x640 and 30 Hz on one
        core, benchmarks/recorder.py), lzf (h5py's own) or gzip (level 1, what every HDF5 reader decodes)."""
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; an episode is recorded into a new file")
        if not prompt or not prompt.strip():
            raise ValueError(f"{self.path.name}: the prompt must be a non-empty string, got {prompt!r}")
        if not fps > 0:
            raise ValueError(f"{self.path.name}: fps must be positive, got {fps!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"{self.path.name}: compression must be one of {COMPRESSIONS}, got {compression!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.compression, self.steps = compression, 0
        self._node_features = None if node_features is None else [str(n) for n in node_features]
        self._file = h5py.File(self.path, "w")
        self._file.attrs.update(prompt=prompt.strip(), fps=float(fps), complete=False)
        if edges is not None:
            self._file.create_dataset(EDGES, data=np.asarray(edges, np.int64))
        self._shapes: dict[str, tuple[int, ...]] = {}  # key -> its frame shape, fixed by the first step

    def add(
        self,
        *,
        images: Mapping[str, np.ndarray],
        graph_nodes: np.ndarray,
        action: np.ndarray,
        state: np.ndarray | None = None,
    ) -> None:
        """Append one control step: every camera's uint8 [H, W, 3] frame, the graph [N, F], the command sent [A] and,
        if the arm has it, the state [S]. The first step fixes the cameras, shapes and whether there is state."""
        if self._file is None:
            raise ValueError(f"{self.path.name}: the recorder is closed")
        fields = {f"{IMAGES}/{camera}": (np.asarray(frame), "u") for camera, frame in images.items()}
        fields |= {NODES: (np.asarray(graph_nodes), "f"), ACTION: (np.asarray(action), "f")}
        if state is not None:
            fields[STATE] = (np.asarray(state), "f")
        if self.steps == 0:
            self._start(fields)
        elif set(fields) != set(self._shapes):
            raise ValueError(f"{self.path.name}: step {self.steps}: fields {sorted(fields)}, but the first step had "
                             f"{sorted(self._shapes)}")  # fmt: skip
        for key, (value, kind) in fields.items():
            self._check(key, value, kind)
        for key, (value, _) in fields.items():
            dataset = self._file[key]
            dataset.resize(self.steps + 1, axis=0)
            dataset[self.steps] = value
        self.steps += 1
        self._file.flush()

    def _start(self, fields: Mapping[str, tuple[np.ndarray, str]]) -> None:
        if not any(key.startswith(IMAGES) for key in fields):
            raise ValueError(f"{self.path.name}: step 0: no camera image; an episode needs at least one")
        self._shapes = {key: value.shape for key, (value, _) in fields.items()}
        try:
            for key, (value, kind) in fields.items():
                self._check(key, value, kind)
        except ValueError:
            self._shapes = {}  # a rejected first frame fixes nothing
            raise
        for key, (value, kind) in fields.items():
            dtype = np.dtype(np.uint8) if kind == "u" else np.dtype(np.float32)
            image = key.startswith(IMAGES)
            self._file.create_dataset(
                key, shape=(0, *value.shape), maxshape=(None, *value.shape), dtype=dtype, chunks=(1, *value.shape),
                compression=self.compression if image else None,
                compression_opts=1 if image and self.compression == "gzip" else None,
            )  # fmt: skip
        if self._node_features is not None:
            self._file[NODES].attrs["features"] = self._node_features

    def _check(self, key: str, value: np.ndarray, kind: str) -> None:
        shape = self._shapes[key]
        where = f"{self.path.name}: step {self.steps}: {key}"
        if kind == "u" and (value.dtype != np.uint8 or value.ndim != 3 or value.shape[-1] != 3):
            raise ValueError(f"{where}: expected a uint8 [H, W, 3] image, got {value.dtype} {list(value.shape)}")
        if kind == "f" and value.dtype.kind not in "fiu":
            raise ValueError(f"{where}: expected numbers, got dtype {value.dtype}")
        if value.shape != shape:
            raise ValueError(f"{where}: shape {list(value.shape)}, the first step's was {list(shape)}")
        if kind == "f" and not np.isfinite(value).all():
            first = ", ".join(str(int(i)) for i in np.argwhere(~np.isfinite(value))[0])
            raise ValueError(f"{where}: NaN or Inf at index [{first}]")
        if key == NODES and self._node_features is not None and value.shape[-1] != len(self._node_features):
            raise ValueError(f"{where}: {value.shape[-1]} feature columns, but node_features names "
                             f"{len(self._node_features)}")  # fmt: skip

    def close(self) -> Path:
        """Mark the episode complete and close the file; an episode with no step is an error (and no file)."""
        if self._file is None:
            return self.path
        if self.steps == 0:
            self.abort()
            raise ValueError(f"{self.path.name}: no step was recorded; no episode written")
        self._file.attrs[COMPLETE] = True
        self._file.close()
        self._file = None
        return self.path

    def abort(self) -> None:
        """Drop the episode: close and delete the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        elif self._file is not None:  # an error in the rig's loop: the file stays, marked incomplete
            self._file.close()
            self._file = None
