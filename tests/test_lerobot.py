"""LeRobot datasets: export v3.0, import v3.0 and v2.1, the round trip, and bad input reported per episode."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from softarm.data.convert import ConvertOptions, convert
from softarm.data.lerobot import LeRobotKeys, LeRobotSource
from softarm.data.lerobot_export import ExportOptions, export_lerobot
from softarm.data.prepared import PreparedDataset
from softarm.data.raw import RawEpisode, read_episode, write_episode
from softarm.data.video import encode
from tests.conftest import POLICY_CAMERAS, make_episode

LENGTHS = (20, 7, 12, 9)
OPTIONS = ConvertOptions(val_episodes=1, cameras=POLICY_CAMERAS)
ONE_FILE_EACH = ExportOptions(data_file_size_mb=1e-6, video_file_size_mb=1e-6)  # every episode starts new files


def smooth(length: int, height: int, width: int, seed: int) -> np.ndarray:
    """Moving colour gradients: what a camera sees, unlike noise, survives a video codec nearly intact."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = [np.stack([(2 * xx + 7 * t + 30 * seed) % 256, (3 * yy + 5 * t) % 256, np.full_like(xx, 60 + 20 * seed)],
                       axis=-1) for t in range(length)]  # fmt: skip
    return np.stack(frames).astype(np.uint8)


def episode(length: int, seed: int) -> RawEpisode:
    ep = make_episode(length=length, seed=seed)
    ep.images = {"base": smooth(length, 48, 64, seed), "tip": smooth(length, 32, 32, seed + 1)}
    ep.prompt = "push the blue cube" if seed == 2 else ep.prompt
    return ep


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("lerobot") / "raw"
    for i, length in enumerate(LENGTHS):
        write_episode(directory / f"ep_{i:03d}.h5", episode(length, i))
    return directory


@pytest.fixture(scope="module")
def direct(raw: Path) -> PreparedDataset:
    convert(raw, raw.parent / "direct", OPTIONS)
    return PreparedDataset(raw.parent / "direct", "all")


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def assert_same_dataset(got: PreparedDataset, expected: PreparedDataset) -> float:
    """Graph, state, actions and prompts exactly; returns the images' mean absolute difference (codec loss)."""
    assert [e["prompt"] for e in got.episodes] == [e["prompt"] for e in expected.episodes]
    assert [e["length"] for e in got.episodes] == [e["length"] for e in expected.episodes]
    for name in ("graph_nodes", "state", "actions"):
        np.testing.assert_array_equal(got.arrays[name], expected.arrays[name])
    errors = [np.abs(got.arrays[n].astype(np.int16) - expected.arrays[n]).mean() for n in got.arrays if "image" in n]
    return float(max(errors))


@pytest.mark.parametrize(("options", "codec"), [(ExportOptions(), "libsvtav1"), (ONE_FILE_EACH, "hevc")])
def test_export_then_convert_gives_the_direct_dataset(
    raw: Path, direct: PreparedDataset, tmp_path: Path, options: ExportOptions, codec: str
) -> None:
    before = tree_digest(raw)
    export = tmp_path / "lerobot"
    result = export_lerobot(raw, export, ExportOptions(**{**options.__dict__, "codec": codec}))
    assert (result.episodes, result.frames, result.skipped) == (4, sum(LENGTHS), [])
    converted = convert(export, tmp_path / "prep", OPTIONS)
    assert converted.kept == ["episode 0", "episode 1", "episode 2", "episode 3"]
    source = LeRobotSource(export, LeRobotKeys())
    edges = source.read(source.episodes[1]).edges
    np.testing.assert_array_equal(edges, read_episode(raw / "ep_001.h5").edges)
    assert assert_same_dataset(PreparedDataset(tmp_path / "prep", "all"), direct) < 3.0  # codec loss, 0-255 scale
    assert tree_digest(raw) == before
    files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*.*"))
    video_files = [f for f in files if f.startswith("videos/observation.images.base/")]
    assert len(video_files) == (1 if options is not ONE_FILE_EACH else 4)  # one file holds all four, or one each


def test_export_layout_is_lerobots(raw: Path, tmp_path: Path) -> None:
    export_lerobot(raw, tmp_path / "lr", ExportOptions())
    root = tmp_path / "lr"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"], info["fps"]) == (4, 48, 2, 10)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert list(info["features"]) == ["observation.graph", "action", "observation.state", "observation.images.base",
                                      "observation.images.tip", "timestamp", "frame_index", "episode_index", "index",
                                      "task_index"]  # fmt: skip
    assert info["features"]["observation.graph"]["shape"] == [10, 19]
    assert info["features"]["observation.images.base"]["info"]["video.codec"] == "av1"

    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert pq.ParquetFile(root / "data/chunk-000/file-000.parquet").num_row_groups == 4  # one per episode
    graph_field = data.schema.field("observation.graph")
    assert graph_field.metadata[b"ARROW:extension:name"] == b"datasets.features.features.Array2DExtensionType"
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.graph"] == {"shape": [10, 19], "dtype": "float32", "_type": "Array2D"}
    assert hf["action"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 10, "_type": "List"}
    assert data["index"].to_pylist() == list(range(48))
    np.testing.assert_allclose(data["timestamp"].to_numpy()[20:27], np.arange(7) / 10, atol=1e-6)

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert dict(zip(tasks["task"].to_pylist(), tasks["task_index"].to_pylist(), strict=True)) == {
        "reach the red ball": 0, "push the blue cube": 1}  # fmt: skip
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    second = episodes[1]
    assert (second["episode_index"], second["length"], second["tasks"]) == (1, 7, ["reach the red ball"])
    assert (second["dataset_from_index"], second["dataset_to_index"]) == (20, 27)
    assert second["videos/observation.images.tip/from_timestamp"] == pytest.approx(2.0)
    assert second["videos/observation.images.tip/to_timestamp"] == pytest.approx(2.7)

    stats = json.loads((root / "meta/stats.json").read_text())
    graphs = np.concatenate([read_episode(p).graph_nodes for p in sorted(raw.glob("*.h5"))]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.graph"]["mean"], graphs.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats["observation.graph"]["std"], graphs.std(0), atol=1e-6)
    np.testing.assert_allclose(stats["observation.graph"]["max"], graphs.max(0), atol=1e-6)
    assert stats["observation.graph"]["count"] == [48]
    assert set(stats["observation.images.base"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50",
                                                     "q90", "q99"}  # fmt: skip
    assert np.shape(stats["observation.images.base"]["mean"]) == (3, 1, 1)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def write_v21(raw: Path, root: Path, *, inline_images: bool, flat_graph: bool) -> None:
    """The LeRobot v2.1 layout: one parquet (and one h264 mp4 per camera) per episode, jsonl metadata; or images
    stored inline as PNG, and the graph as one flat [N * F] vector."""
    episodes = [read_episode(p) for p in sorted(raw.glob("*.h5"))]
    tasks = {p: i for i, p in enumerate(dict.fromkeys(e.prompt for e in episodes))}
    features = {"observation.graph": {"dtype": "float32", "shape": [190] if flat_graph else [10, 19], "names": None},
                "observation.state": {"dtype": "float32", "shape": [4], "names": None},
                "action": {"dtype": "float32", "shape": [10], "names": None},
                **{f"observation.images.{c}": {"dtype": "image" if inline_images else "video",
                                               "shape": [*f.shape[1:3], 3], "names": None}
                   for c, f in episodes[0].images.items()}}  # fmt: skip
    info = {"codebase_version": "v2.1", "fps": 10, "chunks_size": 1000, "features": features,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                   for t, i in tasks.items()))  # fmt: skip
    lines = [json.dumps({"episode_index": i, "tasks": [e.prompt], "length": e.length}) for i, e in enumerate(episodes)]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    for i, ep in enumerate(episodes):
        graph = ep.graph_nodes.reshape(ep.length, -1) if flat_graph else ep.graph_nodes
        columns = {
            "observation.graph": [g.tolist() for g in graph], "observation.state": ep.state.tolist(),
            "action": ep.actions.tolist(), "timestamp": np.arange(ep.length, dtype=np.float32) / 10,
            "frame_index": np.arange(ep.length), "episode_index": np.full(ep.length, i),
            "task_index": np.full(ep.length, tasks[ep.prompt]),
        }  # fmt: skip
        for camera, frames in ep.images.items():
            key = f"observation.images.{camera}"
            if inline_images:
                columns[key] = [{"bytes": png(f), "path": f"frame_{t:06d}.png"} for t, f in enumerate(frames)]
            else:
                video = root / info["video_path"].format(episode_chunk=0, video_key=key, episode_index=i)
                encode(video, frames, 10, "h264")
        path = root / info["data_path"].format(episode_chunk=0, episode_index=i)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("inline", [False, True])
def test_v21_dataset_converts(raw: Path, direct: PreparedDataset, tmp_path: Path, inline: bool) -> None:
    write_v21(raw, tmp_path / "v21", inline_images=inline, flat_graph=inline)
    options = ConvertOptions(val_episodes=1, cameras={"base_0_rgb": "observation.images.base",
                                                      "left_wrist_0_rgb": "observation.images.tip"})  # fmt: skip
    convert(tmp_path / "v21", tmp_path / "prep", options)
    error = assert_same_dataset(PreparedDataset(tmp_path / "prep", "all"), direct)
    if inline:  # PNG is lossless
        assert error == 0.0
    else:
        assert 0.0 < error < 3.0


def edit_data(root: Path, episode: int, change) -> None:
    """Rewrite the data file of `episode` (one episode per file) with `change(table) -> table`."""
    path = root / f"data/chunk-000/file-{episode:03d}.parquet"
    pq.write_table(change(pq.read_table(path)), path)


def replace_column(name: str, values) -> callable:
    return lambda t: t.set_column(t.column_names.index(name), name, pa.array(values, t.schema.field(name).type))


def test_bad_episodes_are_reported_and_the_good_ones_convert(raw: Path, tmp_path: Path) -> None:
    for i, length in enumerate((6, 6, 6, 6, 6), start=4):
        write_episode(tmp_path / "raw" / f"ep_{i:03d}.h5", episode(length, i))
    for path in raw.glob("*.h5"):
        (tmp_path / "raw" / path.name).write_bytes(path.read_bytes())
    root = tmp_path / "lr"
    export_lerobot(tmp_path / "raw", root, ONE_FILE_EACH)
    (root / "videos/observation.images.tip/chunk-000/file-001.mp4").unlink()  # episode 1: a missing mp4
    encode(root / "videos/observation.images.base/chunk-000/file-002.mp4", smooth(5, 48, 64, 2), 10)  # 5 of 12 frames
    edit_data(root, 3, replace_column("timestamp", [0.0, 0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]))  # a gap
    edit_data(root, 4, lambda t: t.drop_columns(["observation.graph"]))  # a missing feature
    nan_graph = pq.read_table(root / "data/chunk-000/file-005.parquet")["observation.graph"].to_pylist()
    nan_graph[3][2][5] = float("nan")
    edit_data(root, 5, replace_column("observation.graph", nan_graph))
    edit_data(root, 6, lambda t: t.filter(pc.not_equal(t["frame_index"], 2)))  # a dropped frame
    before = tree_digest(root)

    result = convert(root, tmp_path / "prep", OPTIONS)

    reasons = {s["episode_index"]: (s["key"], s["reason"]) for s in result.skipped}
    assert reasons[1] == ("observation.images.tip", "videos/observation.images.tip/chunk-000/file-001.mp4 is missing")
    assert reasons[2] == ("observation.images.base",
                          "videos/observation.images.base/chunk-000/file-002.mp4 ends before 0.5000 s")  # fmt: skip
    assert reasons[3] == ("timestamp", "gap between frames 2 and 3: 0.2000 s -> 0.5000 s at 10 fps")
    assert reasons[4] == ("observation.graph", "missing from the data file")
    assert reasons[5] == ("observation.graph", "1 NaN/Inf values (first at index [3, 2, 5])")
    assert reasons[6][0] == "frame_index"
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert result.kept == ["episode 0", "episode 7", "episode 8"]
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    assert report["skipped"][0] == {"episode_index": 1, "key": reasons[1][0], "reason": reasons[1][1]}
    assert tree_digest(root) == before  # inputs never modified


def test_dataset_level_problems_are_clear_errors(raw: Path, tmp_path: Path) -> None:
    root = tmp_path / "lr"
    export_lerobot(raw, root, ExportOptions())
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(ValueError, match=r"codebase_version 'v1.6'; softarm reads v2.1 and v3.0"):
        convert(root, tmp_path / "prep", OPTIONS)
    info["features"]["observation.graph"]["shape"] = [10, 18]
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"episode 0: observation.graph: info.json says shape \[10, 18\], the data"):
        convert(root, tmp_path / "prep", OPTIONS)
    with pytest.raises(ValueError, match=r"no feature 'observation.nodes' \(--graph-key\); the dataset has"):
        convert(root, tmp_path / "prep", ConvertOptions(lerobot=LeRobotKeys(graph="observation.nodes")))
    assert not (tmp_path / "prep").exists()


def test_another_arm_round_trips_with_its_sizes_features_and_edges(tmp_path: Path) -> None:
    """A 6-node tree sensing 4 named features with 9 actuators: export and import keep all of it."""
    for seed in range(2):
        ep = make_episode(length=8, seed=seed, nodes=6, features=4, actions=9, state_dim=None)
        ep.node_features, ep.edges = (
            ("kappa_x", "pos_x", "pos_y", "pos_z"),
            np.array([[0, 1], [0, 2], [2, 3], [0, 4], [4, 5]]),
        )
        ep.images = {"cam": smooth(8, 32, 48, seed)}
        write_episode(tmp_path / "raw" / f"ep_{seed}.h5", ep)
    export_lerobot(tmp_path / "raw", tmp_path / "lerobot")
    graph = json.loads((tmp_path / "lerobot/meta/info.json").read_text())["features"]["observation.graph"]
    assert graph["shape"] == [6, 4]
    assert graph["info"]["node_features"] == ["kappa_x [1/m]", "pos_x [m]", "pos_y [m]", "pos_z [m]"]
    for source, name in ((tmp_path / "raw", "direct"), (tmp_path / "lerobot", "imported")):
        assert convert(source, tmp_path / name, ConvertOptions(val_episodes=1)).skipped == []
    metas = [json.loads((tmp_path / name / "meta.json").read_text()) for name in ("direct", "imported")]
    for key in ("num_nodes", "node_features", "features", "measured", "edges", "action_dim", "state_dim"):
        assert metas[0][key] == metas[1][key], key
    assert metas[1]["measured"] == ["pos_x", "pos_y", "pos_z", "kappa_x"]
    assert (
        assert_same_dataset(PreparedDataset(tmp_path / "imported", "all"), PreparedDataset(tmp_path / "direct", "all"))
        < 3.0
    )


def test_encoding_av1_leaves_the_process_scheduling_alone(tmp_path: Path) -> None:
    """SVT-AV1 run as root turns the calling thread real-time (SCHED_FIFO 99); everything the process starts after
    would inherit it, and a busy-waiting thread then starves the machine."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    encode(tmp_path / "a.mp4", smooth(4, 32, 32, 0), 10)
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
