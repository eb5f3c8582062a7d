"""Raw soft-arm episodes: one HDF5 file per episode, as a lab records them (layout in docs/data_format.md).

`read_episode` validates everything it returns and raises `EpisodeError` naming the file, the key and what was
expected; files are only ever opened read-only. `write_episode` is the one writer (simulator, tests, user tools).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from pathlib import Path

import h5py
import numpy as np

from softarm import arm
from softarm.layout import MODEL_DIM

IMAGES = "observations/images"
NODES = "observations/graph/nodes"
STATE = "observations/state"
ACTION = "action"
EDGES = "graph/edges"
FEATURES = f"{NODES}@features"  # attribute `features` of the nodes dataset: the names of its columns
COMPLETE = "complete"  # attribute: False while softarm.data.recorder.EpisodeRecorder is still writing the file
MAX_STATE_DIM = MODEL_DIM  # openpi's state slot
MAX_ACTION_DIM = MODEL_DIM  # openpi's action slot


class EpisodeError(ValueError):
    """A raw episode that cannot be used; `reason` says what is wrong and what was expected."""

    def __init__(self, path: Path, key: str, reason: str) -> None:
        self.path, self.key, self.reason = Path(path), key, reason
        super().__init__(f"{self.path.name}: {key}: {reason}")


@dataclasses.dataclass
class RawEpisode:
    path: Path
    images: dict[str, np.ndarray]  # camera name -> uint8 [T, H, W, 3]
    graph_nodes: np.ndarray  # float32 [T, N, F]
    actions: np.ndarray  # float32 [T, A]
    prompt: str
    fps: float
    state: np.ndarray | None = None  # float32 [T, S], S <= 32
    edges: np.ndarray | None = None  # int64 [E, 2]
    node_features: tuple[str, ...] | None = None  # names of the F columns, if the recording declares them

    @property
    def length(self) -> int:
        return len(self.actions)

    def observation(self, t: int) -> dict:
        """Step `t` as a policy request (the server's, `SoftArmPolicy.prepare`'s): a recording that names its columns
        says so, and the policy picks the features its model reads."""
        observation = {"images": {camera: frames[t] for camera, frames in self.images.items()},
                       "graph_nodes": self.graph_nodes[t], "prompt": self.prompt}  # fmt: skip
        if self.node_features is not None:
            observation["graph_features"] = list(self.node_features)
        if self.state is not None:
            observation["state"] = self.state[t]
        return observation


def write_episode(path: str | Path, episode: RawEpisode) -> Path:
    """Write `episode` in the raw layout (images chunked per frame and gzip-compressed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["prompt"] = episode.prompt
        f.attrs["fps"] = float(episode.fps)
        for camera, frames in episode.images.items():
            chunks = (1, *frames.shape[1:]) if len(frames) else None
            f.create_dataset(f"{IMAGES}/{camera}", data=frames, chunks=chunks, compression="gzip", compression_opts=1)
        nodes = f.create_dataset(NODES, data=episode.graph_nodes)
        if episode.node_features is not None:
            nodes.attrs["features"] = list(episode.node_features)
        f.create_dataset(ACTION, data=episode.actions)
        if episode.state is not None:
            f.create_dataset(STATE, data=episode.state)
        if episode.edges is not None:
            f.create_dataset(EDGES, data=episode.edges)
    return path


def _array(f: h5py.File, path: Path, key: str, *, ndim: int, kind: str, optional: bool = False) -> np.ndarray | None:
    if key not in f:
        if optional:
            return None
        raise EpisodeError(path, key, "missing")
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise EpisodeError(path, key, f"expected a dataset, found a {type(node).__name__}")
    if node.dtype.kind not in kind:
        wanted = {"u": "uint8", "f": "float", "iu": "integer"}[kind]
        raise EpisodeError(path, key, f"expected {wanted} values, got dtype {node.dtype}")
    if node.ndim != ndim:
        raise EpisodeError(path, key, f"expected {ndim} dimensions, got shape {list(node.shape)}")
    return node[()]


def read_episode(path: str | Path) -> RawEpisode:
    """Read and validate one raw episode; raise EpisodeError on the first problem found. Sizes are the episode's
    own; whether they fit a dataset is the dataset's question (softarm.data.convert)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise EpisodeError(path, "<file>", f"not a readable HDF5 file ({e})") from None
    try:
        with f:
            return _read_open(f, path)
    except EpisodeError:
        raise
    except (OSError, KeyError, RuntimeError) as e:  # truncated or corrupt datasets surface on read
        raise EpisodeError(path, "<file>", f"corrupt or truncated HDF5 data ({e})") from None


def _read_open(f: h5py.File, path: Path) -> RawEpisode:
    if not f.attrs.get(COMPLETE, True):
        raise EpisodeError(path, f"attrs/{COMPLETE}", "incomplete: the recording was never closed (the recorder was "
                                                      "stopped mid-episode); its steps are not used")  # fmt: skip
    prompt = f.attrs.get("prompt")
    if isinstance(prompt, bytes):
        prompt = prompt.decode("utf-8", errors="replace")
    if not isinstance(prompt, str) or not prompt.strip():
        raise EpisodeError(path, "attrs/prompt", f"expected a non-empty string, got {prompt!r}")
    fps = f.attrs.get("fps")
    if not isinstance(fps, int | float | np.number) or not np.isfinite(fps) or fps <= 0:
        raise EpisodeError(path, "attrs/fps", f"expected a positive number, got {fps!r}")

    if IMAGES not in f or not isinstance(f[IMAGES], h5py.Group) or not len(f[IMAGES]):
        raise EpisodeError(path, IMAGES, "missing: expected one dataset per camera")
    images = {camera: _array(f, path, f"{IMAGES}/{camera}", ndim=4, kind="u") for camera in f[IMAGES]}
    nodes = _array(f, path, NODES, ndim=3, kind="f")
    actions = _array(f, path, ACTION, ndim=2, kind="f")
    state = _array(f, path, STATE, ndim=2, kind="f", optional=True)
    edges = _array(f, path, EDGES, ndim=2, kind="iu", optional=True)
    names = f[NODES].attrs.get("features")
    if names is not None:
        names = np.atleast_1d(names)
        if names.dtype.kind not in "OSU":
            raise EpisodeError(path, FEATURES, f"expected a list of feature names, got {names.tolist()!r}")
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    episode = RawEpisode(path, images, nodes, actions, prompt.strip(), float(fps), state, edges, names)
    return validate_episode(episode, HDF5_KEYS)


@dataclasses.dataclass(frozen=True)
class EpisodeKeys:
    """Where each field of an episode lives in its source, for error messages."""

    images: str  # prefix of the camera keys
    graph_nodes: str
    actions: str
    state: str
    edges: str
    node_features: str
    cameras: Mapping[str, str] = dataclasses.field(default_factory=dict)  # a camera's own key, where it has one

    def image(self, camera: str) -> str:
        if camera in self.cameras:
            return self.cameras[camera]
        return f"{self.images}/{camera}" if self.images else camera


HDF5_KEYS = EpisodeKeys(images=IMAGES, graph_nodes=NODES, actions=ACTION, state=STATE, edges=EDGES,
                        node_features=FEATURES)  # fmt: skip


def validate_episode(episode: RawEpisode, keys: EpisodeKeys) -> RawEpisode:
    """Check shapes, lengths and values of an episode from any source; float32 arrays, int64 edges on return.
    Any node count, feature count and action size is an episode; a dataset asks that its episodes agree."""
    path = episode.path
    for camera, frames in episode.images.items():
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            key = keys.image(camera)
            raise EpisodeError(path, key, f"expected uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    nodes, actions, state, edges = episode.graph_nodes, episode.actions, episode.state, episode.edges
    if nodes.ndim != 3 or min(nodes.shape[1:]) < 1:
        raise EpisodeError(path, keys.graph_nodes, f"expected [T, N, F] (T, nodes, features), got {list(nodes.shape)}")
    if actions.ndim != 2 or not 1 <= actions.shape[1] <= MAX_ACTION_DIM:
        raise EpisodeError(path, keys.actions, f"expected [T, A] with 1 <= A <= {MAX_ACTION_DIM} (pi0's action "
                                               f"slot), got {list(actions.shape)}")  # fmt: skip
    if state is not None and (state.ndim != 2 or not 1 <= state.shape[1] <= MAX_STATE_DIM):
        raise EpisodeError(path, keys.state, f"expected [T, S] with 1 <= S <= {MAX_STATE_DIM} (pi0's state slot), "
                                             f"got {list(state.shape)}")  # fmt: skip
    if edges is not None:
        try:
            arm.validate_edges(nodes.shape[1], edges.tolist())
        except ValueError as e:
            raise EpisodeError(path, keys.edges, str(e)) from None
    if episode.node_features is not None:
        try:
            arm.column_names(nodes.shape[2], episode.node_features)
        except ValueError as e:
            raise EpisodeError(path, keys.node_features, str(e)) from None

    lengths: Mapping[str, int] = {
        **{keys.image(c): len(v) for c, v in episode.images.items()},
        keys.graph_nodes: len(nodes),
        keys.actions: len(actions),
        **({keys.state: len(state)} if state is not None else {}),
    }
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise EpisodeError(path, "<lengths>", f"arrays must share the time length T, got {listing}")
    if len(actions) == 0:
        raise EpisodeError(path, keys.actions, "empty episode (T = 0)")
    for key, values in ((keys.graph_nodes, nodes), (keys.actions, actions), (keys.state, state)):
        if values is not None and (bad := ~np.isfinite(values)).any():
            where = ", ".join(str(int(i)) for i in np.argwhere(bad)[0])
            raise EpisodeError(path, key, f"{int(bad.sum())} NaN/Inf values (first at index [{where}])")

    return dataclasses.replace(
        episode,
        graph_nodes=nodes.astype(np.float32),
        actions=actions.astype(np.float32),
        state=None if state is None else state.astype(np.float32),
        edges=None if edges is None else edges.astype(np.int64),
    )
