"""`softarm view PATH`: look at an episode before training on it: a Rerun recording, or a PNG overview.

PATH is anything `softarm convert` reads (a raw HDF5 file or directory, a LeRobot root, ROS bags with a topic map) or
a prepared dataset; the episode is read through the same validating readers, so what is shown is what training
gets. The recording (`rerun-sdk`: an `.rrd` file for the Rerun viewer, or a viewer already running) holds every
camera, the arm's graph in 3-D (its node positions joined by its edges, coloured by a chosen feature) and the
commands and state as time series, all on the episode's `step` and `time` timelines. `png=True` draws a static
overview instead, for a machine without a screen: frames at the start, middle and end, the nodes' paths, the
command and state curves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from softarm import arm, layout
from softarm.data.convert import ConvertOptions, open_episodes
from softarm.data.prepared import PreparedDataset, episode_name
from softarm.data.raw import RawEpisode, read_episode
from softarm.data.rosbag import TopicMap
from softarm.plotting import pyplot, save_figure

POSITIONS = ("pos_x", "pos_y", "pos_z")
COLOR_BY = ("actuator_state", "kappa_x", "contact_force", "pos_z")  # the first of these the episode measures


@dataclasses.dataclass(frozen=True)
class Episode:
    """What is shown: the episode's arrays, the names of its graph's columns and its edges."""

    name: str
    raw: RawEpisode
    features: tuple[str, ...]
    edges: tuple[arm.Edge, ...]

    def column(self, name: str) -> np.ndarray:
        return self.raw.graph_nodes[:, :, self.features.index(name)]

    @property
    def positions(self) -> np.ndarray | None:
        """[T, N, 3] node positions, if the graph has them."""
        if not set(POSITIONS) <= set(self.features):
            return None
        return np.stack([self.column(name) for name in POSITIONS], axis=-1)


def load_episode(path: str | Path, index: int = 0, topics: TopicMap | None = None) -> Episode:
    """Episode `index` (in the order convert reads them) of a raw file or directory, LeRobot root, bags or prepared
    dataset; a ValueError names how many there are."""
    path = Path(path)
    if (path / layout.META_FILE).is_file():
        return _prepared_episode(path, index)
    if path.is_file() and topics is None:
        raw = read_episode(path)
        name = path.name
    else:
        episodes = open_episodes([path], ConvertOptions(topics=topics))
        if not 0 <= index < len(episodes):
            raise ValueError(f"--episode {index}: {path} has {len(episodes)} episodes (0..{len(episodes) - 1})")
        label, read, _ = episodes[index]
        raw, name = read(), episode_name(label)
    features = arm.column_names(raw.graph_nodes.shape[2], raw.node_features)
    nodes = raw.graph_nodes.shape[1]
    edges = arm.chain_edges(nodes) if raw.edges is None else tuple(map(tuple, raw.edges.tolist()))
    return Episode(name=name, raw=raw, features=features, edges=edges)


def _prepared_episode(path: Path, index: int) -> Episode:
    data = PreparedDataset(path, "all")
    if not 0 <= index < len(data.episodes):
        raise ValueError(f"--episode {index}: {path} has {len(data.episodes)} episodes (0..{len(data.episodes) - 1})")
    spec, episode = data.spec, data.episodes[index]
    frames = slice(episode["start"], episode["start"] + episode["length"])
    images = {slot: np.asarray(data.arrays[f"image_{slot}"][frames]) for slot in spec.present_cameras}
    state = np.asarray(data.arrays["state"][frames, : spec.state_dim]) if spec.state_dim else None
    raw = RawEpisode(path=path, images=images, graph_nodes=np.asarray(data.arrays[layout.GRAPH_NODES][frames]),
                     actions=np.asarray(data.arrays["actions"][frames]), prompt=episode["prompt"], fps=episode["fps"],
                     state=state)  # fmt: skip
    return Episode(name=episode_name(episode), raw=raw, features=spec.layout.features, edges=spec.edges)


def _color_feature(episode: Episode, wanted: str | None) -> str | None:
    if wanted is not None:
        if wanted not in episode.features:
            raise ValueError(f"--color-by {wanted!r}: the graph's features are {list(episode.features)}")
        return wanted
    return next((name for name in COLOR_BY if name in episode.features), None)


def _colors(values: np.ndarray) -> np.ndarray:
    """uint8 RGB [.., 3] of `values` on viridis, scaled over their whole range (the episode's)."""
    from matplotlib import colormaps

    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)


def write_rrd(episode: Episode, out: Path | None, color_by: str | None = None) -> Path | None:
    """Log the episode to `out` (.rrd), or to a running viewer when `out` is None. Returns the file written."""
    import rerun as rr

    rec = rr.new_recording("softarm", recording_id=episode.name)
    if out is None:
        rec.connect_grpc()
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        rec.save(str(out))
    raw, positions = episode.raw, episode.positions
    feature = _color_feature(episode, color_by)
    colors = _colors(episode.column(feature)) if feature is not None else None
    rr.log("prompt", rr.TextDocument(f"{raw.prompt}\n\n{episode.name}, {raw.length} steps at {raw.fps:g} Hz"
                                     + (f"; nodes coloured by {feature}" if feature else "")),
           static=True, recording=rec)  # fmt: skip
    if positions is not None:
        rr.log("arm", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True, recording=rec)
    for t in range(raw.length):
        rr.set_time_sequence("step", t, recording=rec)
        rr.set_time_seconds("time", t / raw.fps, recording=rec)
        for camera, frames in raw.images.items():
            rr.log(f"camera/{camera}", rr.Image(frames[t]), recording=rec)
        if positions is not None:
            node_colors = colors[t] if colors is not None else None
            rr.log("arm/nodes", rr.Points3D(positions[t], colors=node_colors, radii=0.006), recording=rec)
            rr.log("arm/edges", rr.LineStrips3D([[positions[t, a], positions[t, b]] for a, b in episode.edges]),
                   recording=rec)  # fmt: skip
        for i, value in enumerate(raw.actions[t]):
            rr.log(f"action/{i}", rr.Scalar(float(value)), recording=rec)
        if raw.state is not None:
            for i, value in enumerate(raw.state[t]):
                rr.log(f"state/{i}", rr.Scalar(float(value)), recording=rec)
    rec.flush(blocking=True)
    rec.disconnect()
    return out


def write_png(episode: Episode, out: Path, color_by: str | None = None) -> list[str]:
    """The overview PNG; returns its panels' titles."""
    raw, positions = episode.raw, episode.positions
    cameras = list(raw.images)
    moments = sorted({0, raw.length // 2, raw.length - 1})
    plt = pyplot()
    columns = max(len(moments), 3)
    fig = plt.figure(figsize=(4 * columns, 3.2 * (len(cameras) + 1)))
    grid = fig.add_gridspec(len(cameras) + 1, columns)
    titles = []
    for row, camera in enumerate(cameras):
        for col, t in enumerate(moments):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(raw.images[camera][t])
            ax.set_axis_off()
            titles.append(f"{camera}, step {t} ({t / raw.fps:.1f} s)")
            ax.set_title(titles[-1], fontsize=9)
    ax = fig.add_subplot(grid[-1, 0])
    if positions is not None:
        feature = _color_feature(episode, color_by)
        for node in range(positions.shape[1]):
            ax.plot(
                positions[:, node, 0], positions[:, node, 2], lw=0.8, color=plt.cm.viridis(node / positions.shape[1])
            )
        for t, style in ((0, "k:"), (raw.length - 1, "k-")):
            for a, b in episode.edges:
                ax.plot(positions[t, [a, b], 0], positions[t, [a, b], 2], style, lw=1.2)
        title = "node paths (x-z); arm at start (dotted) and end"
        if feature is not None:
            end = positions[-1]
            dots = ax.scatter(end[:, 0], end[:, 2], c=episode.column(feature)[-1], cmap="viridis", s=18, zorder=3)
            fig.colorbar(dots, ax=ax, label=f"{feature} at the end")
            title += f", its nodes by {feature}"
        ax.set(xlabel="x (m)", ylabel="z (m)", aspect="equal")
        titles.append(title)
    else:
        ax.imshow(raw.graph_nodes[-1].T, aspect="auto", cmap="viridis")
        ax.set(xlabel="node", ylabel="feature")
        titles.append("graph at the last step (no node positions)")
    ax.set_title(titles[-1], fontsize=9)
    for col, (values, what) in enumerate(((raw.actions, "commands"), (raw.state, "state")), start=1):
        ax = fig.add_subplot(grid[-1, col])
        if values is not None:
            ax.plot(np.arange(raw.length) / raw.fps, values, lw=0.8)
        ax.set(xlabel="time (s)")
        titles.append(what if values is not None else f"{what}: none recorded")
        ax.set_title(titles[-1], fontsize=9)
    fig.suptitle(f'{episode.name}: "{raw.prompt}", {raw.length} steps at {raw.fps:g} Hz', fontsize=11)
    save_figure(fig, out, dpi=90)
    return titles


def view(path: str | Path, *, index: int = 0, out: str | Path | None = None, png: bool = False, live: bool = False,
         topics: TopicMap | None = None, color_by: str | None = None) -> Path | None:  # fmt: skip
    """Episode `index` of `path` as an .rrd, to a running Rerun viewer (`live`), or as an overview PNG; `out`
    defaults to the episode's name (.rrd or .png) in the current directory. Returns the file written."""
    episode = load_episode(path, index, topics)
    stem = Path(episode.name).stem
    target = Path(out) if out is not None else Path(f"{stem}.{'png' if png else 'rrd'}")
    if png:
        write_png(episode, target, color_by)
        return target
    return write_rrd(episode, None if live else target, color_by)
