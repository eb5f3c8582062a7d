"""ROS bag import speed next to raw HDF5 conversion of the same episodes, in one run.

Builds episodes with two 240x320 cameras (a moving disc on a gradient, with sensor noise) and writes each twice: as
raw HDF5 and as a ROS 2 bag the way a rig records it (tests/rosbag_rig.py: poses at 4x the control rate, pressures
at 2x, a bgr8 camera and a JPEG camera, each stamped by its sensor), then converts both sources with the same
options and prints frames/s of each and their ratio (target: bags >= 0.5 of HDF5). Conversions alternate,
`--repeats` times each after one round of warm-up; the median counts.

    .venv/bin/python benchmarks/rosbag_import.py --episodes 10 --length 50
    .venv/bin/python benchmarks/rosbag_import.py --storage mcap
"""

from __future__ import annotations

import argparse
from pathlib import Path
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rig's bag writer lives with the tests

from tests.rosbag_rig import topic_map, write_rig_bag  # noqa: E402

from softarm.data.convert import ConvertOptions, convert  # noqa: E402
from softarm.data.raw import RawEpisode, write_episode  # noqa: E402
from softarm.data.rosbag import POSE_FEATURES, TopicMap  # noqa: E402

CAMERAS = {"base_0_rgb": "base", "left_wrist_0_rgb": "tip"}


def frames(length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320]
    background = np.stack([xx * 255 // 320, yy * 255 // 240, np.full_like(xx, 90)], axis=-1)
    out = np.empty((length, 240, 320, 3), np.uint8)
    for t in range(length):
        cx, cy = 160 + 100 * np.cos(0.1 * t + seed), 120 + 60 * np.sin(0.13 * t + seed)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < 30**2
        image = np.where(disc[..., None], np.array([220, 40, 40]), background) + rng.normal(0, 3, (240, 320, 3))
        out[t] = np.clip(image, 0, 255)
    return out


def episode(length: int, seed: int) -> RawEpisode:
    rng = np.random.default_rng(seed)
    quat = rng.normal(size=(length, 10, 4))
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True) * np.where(quat[..., :1] < 0, -1, 1)
    nodes = np.concatenate([rng.normal(0, 0.1, (length, 10, 3)), quat], axis=-1).astype(np.float32)
    return RawEpisode(path=Path(), images={"base": frames(length, seed), "tip": frames(length, 100 + seed)},
                      graph_nodes=nodes, actions=rng.uniform(-1, 1, (length, 10)).astype(np.float32),
                      prompt="reach the red ball", fps=10.0, state=rng.uniform(0, 50, (length, 10)).astype(np.float32),
                      node_features=POSE_FEATURES)  # fmt: skip


def timed_convert(source: Path, out: Path, topics: TopicMap | None) -> float:
    start = time.perf_counter()
    convert(source, out, ConvertOptions(val_episodes=1, cameras=CAMERAS, overwrite=True, topics=topics))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--storage", choices=["sqlite3", "mcap", "ros1"], default="sqlite3")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.length, args.repeats = 2, 4, 1
    total = args.episodes * args.length
    topics = TopicMap.parse(topic_map("reach the red ball"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.episodes):
            truth = episode(args.length, i)
            write_episode(root / "raw" / f"ep_{i:03d}.h5", truth)
            write_rig_bag(root / "bags" / (f"ep_{i:03d}.bag" if args.storage == "ros1" else f"ep_{i:03d}"), truth,
                          args.storage)  # fmt: skip
        raw_mb = sum(p.stat().st_size for p in (root / "raw").iterdir()) / 2**20
        bag_mb = sum(p.stat().st_size for p in (root / "bags").rglob("*") if p.is_file()) / 2**20
        hdf5, bags = [], []
        for repeat in range(args.repeats + 1):  # the first round warms up (convert's lazy imports of openpi)
            seconds = (
                timed_convert(root / "raw", root / "prep_hdf5", None),
                timed_convert(root / "bags", root / "prep_bags", topics),
            )
            if repeat:
                hdf5.append(seconds[0])
                bags.append(seconds[1])
    hdf5_rate, bag_rate = total / statistics.median(hdf5), total / statistics.median(bags)
    print(f"{args.episodes} episodes x {args.length} ticks, 2 cameras 240x320 (bgr8 and JPEG in the bags), "
          f"{args.storage} bags")  # fmt: skip
    print(f"raw HDF5 (gzip) {raw_mb:.1f} MB, bags {bag_mb:.1f} MB")
    print(f"convert raw HDF5  {hdf5_rate:8.0f} frames/s")
    print(f"convert ROS bags  {bag_rate:8.0f} frames/s")
    print(f"bags / HDF5: {bag_rate / hdf5_rate:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
