"""Does EpisodeRecorder keep up with a rig? Steps/s recording 3 cameras at 480x640 with the graph, commands and state,
on one core, per image compression, and the ratio to the rig's 30 Hz; the recorder's memory after the episode next
to before (flat: frames go to disk as they come).

Frames are camera-like (a moving disc on a gradient, with sensor noise), generated before timing; each step is one
`add` with 3 frames, a [10, 19] graph, 10 commands and 10 pressures, flushed to disk.

    .venv/bin/python benchmarks/recorder.py --steps 150
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import tempfile
import time

import numpy as np
import psutil

from softarm.data.recorder import COMPRESSIONS, EpisodeRecorder


def camera_frames(count: int, seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], axis=-1)
    out = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        cx, cy = width / 2 + width / 3 * np.cos(0.1 * t + seed), height / 2 + height / 4 * np.sin(0.13 * t + seed)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (height / 8) ** 2
        out[t] = np.clip(np.where(disc[..., None], [220, 40, 40], background) + rng.normal(0, 3, (height, width, 3)),
                         0, 255)  # fmt: skip
    return out


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """One core, as a rig's recording process gets. The cores are given back after: the scripts' smoke test runs this
    in the test process, whose later tests and their children would otherwise all share one core."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="recorded steps per compression (5 s at 30 Hz)")
    parser.add_argument("--rate", type=float, default=30.0, help="the rig's control rate, Hz")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps = 3
    distinct = min(args.steps, 30)
    cameras = {name: camera_frames(distinct, seed) for seed, name in enumerate(("base", "side", "tip"))}
    rng = np.random.default_rng(0)
    graph, commands = rng.normal(size=(distinct, 10, 19)).astype(np.float32), rng.uniform(-1, 1, (distinct, 10))
    process = psutil.Process()
    print(f"{args.steps} steps of 3 cameras 480x640 + graph [10, 19] + 10 commands + 10 pressures, one core")
    print("| compression | steps/s | vs the rig's rate | MB per step on disk | memory after / before (MB) |")
    print("|---|---|---|---|---|")
    with one_core(), tempfile.TemporaryDirectory() as tmp:
        for compression in COMPRESSIONS:
            path = Path(tmp) / f"{compression}.h5"
            before = process.memory_info().rss / 2**20
            start = time.perf_counter()
            with EpisodeRecorder(path, fps=args.rate, prompt="reach the ball", compression=compression) as recorder:
                for t in range(args.steps):
                    k = t % distinct
                    recorder.add(images={name: frames[k] for name, frames in cameras.items()}, graph_nodes=graph[k],
                                 action=commands[k], state=commands[k])  # fmt: skip
            rate = args.steps / (time.perf_counter() - start)
            after = process.memory_info().rss / 2**20
            size = path.stat().st_size / 2**20 / args.steps
            print(f"| {compression or 'none'} | {rate:.1f} | {rate / args.rate:.2f}x | {size:.2f} | "
                  f"{after:.0f} / {before:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
