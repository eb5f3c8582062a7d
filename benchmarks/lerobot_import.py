"""LeRobot v3.0 import speed next to raw HDF5 conversion of the same episodes, in one run.

Builds raw episodes with two 240x320 cameras (a moving disc on a gradient, with sensor noise), writes them as a
LeRobot v3.0 dataset (`softarm export-lerobot`: AV1, several episodes per mp4), then converts both sources with the
same options and prints frames/s of each and their ratio (target: LeRobot >= 0.5 of HDF5). The export's own speed is
printed too. Conversions alternate, `--repeats` times each; the median counts.

    .venv/bin/python benchmarks/lerobot_import.py --episodes 20 --length 50
"""

from __future__ import annotations

import argparse
from pathlib import Path
import statistics
import tempfile
import time

import numpy as np

from softarm.data.convert import ConvertOptions, convert
from softarm.data.lerobot_export import export_lerobot
from softarm.data.raw import RawEpisode, write_episode

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


def build(raw: Path, episodes: int, length: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(episodes):
        write_episode(raw / f"ep_{i:03d}.h5", RawEpisode(
            path=Path(), images={"base": frames(length, i), "tip": frames(length, 100 + i)},
            graph_nodes=rng.normal(size=(length, 10, 19)).astype(np.float32),
            actions=rng.uniform(-1, 1, (length, 10)).astype(np.float32), prompt="reach the red ball", fps=10.0,
            state=rng.normal(size=(length, 4)).astype(np.float32),
        ))  # fmt: skip


def timed_convert(source: Path, out: Path) -> float:
    start = time.perf_counter()
    convert(source, out, ConvertOptions(val_episodes=2, cameras=CAMERAS, overwrite=True))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.length, args.repeats = 3, 4, 1
    total = args.episodes * args.length
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root / "raw", args.episodes, args.length)
        start = time.perf_counter()
        export_lerobot(root / "raw", root / "lerobot")
        export_s = time.perf_counter() - start
        raw_mb = sum(p.stat().st_size for p in (root / "raw").iterdir()) / 2**20
        lerobot_mb = sum(p.stat().st_size for p in (root / "lerobot").rglob("*") if p.is_file()) / 2**20
        hdf5, lerobot = [], []
        for _ in range(args.repeats):
            hdf5.append(timed_convert(root / "raw", root / "prep_hdf5"))
            lerobot.append(timed_convert(root / "lerobot", root / "prep_lerobot"))
    hdf5_rate, lerobot_rate = total / statistics.median(hdf5), total / statistics.median(lerobot)
    print(f"{args.episodes} episodes x {args.length} frames, 2 cameras 240x320")
    print(f"raw HDF5 (gzip) {raw_mb:.1f} MB, LeRobot v3.0 (AV1) {lerobot_mb:.1f} MB")
    print(f"export to LeRobot     {total / export_s:8.0f} frames/s")
    print(f"convert raw HDF5      {hdf5_rate:8.0f} frames/s")
    print(f"convert LeRobot v3.0  {lerobot_rate:8.0f} frames/s")
    print(f"LeRobot / HDF5: {lerobot_rate / hdf5_rate:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
