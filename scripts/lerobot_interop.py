"""Interoperability with LeRobot's own code, both ways. Run it with a Python that has `lerobot` (>= 0.4) and h5py,
e.g. a separate venv (lerobot pins its own torch, so it never goes into softarm's):

    python3 -m venv /tmp/lerobot && /tmp/lerobot/bin/pip install lerobot h5py
    .venv/bin/softarm export-lerobot RAW_DIR OURS
    /tmp/lerobot/bin/python scripts/lerobot_interop.py RAW_DIR OURS THEIRS
    .venv/bin/softarm convert THEIRS PREPARED --camera base_0_rgb=base ...

It loads OURS (softarm's export) with LeRobotDataset and checks every frame's graph, state and action against the
raw episodes exactly and the images within codec loss; then writes the raw episodes with LeRobot's own writer to
THEIRS, for `softarm convert` to read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
from lerobot.datasets.lerobot_dataset import LeRobotDataset
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("ours", type=Path, help="a dataset written by softarm export-lerobot from RAW_DIR")
    parser.add_argument("theirs", type=Path, help="where LeRobot writes RAW_DIR (must not exist)")
    args = parser.parse_args()
    files = sorted(args.raw_dir.glob("*.h5"))

    ours = LeRobotDataset("local/ours", root=args.ours, video_backend="pyav")
    index, worst = 0, 0.0
    for path in files:
        with h5py.File(path, "r") as f:
            cameras = sorted(f["observations/images"])
            for t in range(len(f["action"])):
                item = ours[index]
                assert np.array_equal(item["observation.graph"].numpy(), f["observations/graph/nodes"][t]), (path, t)
                assert np.array_equal(item["action"].numpy(), f["action"][t]), (path, t)
                if "observations/state" in f:
                    assert np.array_equal(item["observation.state"].numpy(), f["observations/state"][t]), (path, t)
                assert item["task"] == f.attrs["prompt"], (path, item["task"])
                for camera in cameras:
                    image = item[f"observation.images.{camera}"].numpy().transpose(1, 2, 0) * 255
                    worst = max(worst, float(np.abs(image - f[f"observations/images/{camera}"][t]).mean()))
                index += 1
    print(
        f"LeRobot read softarm's export: {ours.num_episodes} episodes, {index} frames; graph, state, actions and "
        f"tasks equal; images within {worst:.2f} of 255 (mean absolute difference, worst frame)"
    )

    with h5py.File(files[0], "r") as f:
        features = {
            "observation.graph": {"dtype": "float32", "shape": f["observations/graph/nodes"].shape[1:],
                                  "names": ["nodes", "node_features"]},
            "action": {"dtype": "float32", "shape": f["action"].shape[1:], "names": None},
            **{f"observation.images.{c}": {"dtype": "video", "shape": f[f"observations/images/{c}"].shape[1:],
                                           "names": ["height", "width", "channels"]} for c in f["observations/images"]},
        }  # fmt: skip
        if "observations/state" in f:
            width = f["observations/state"].shape[1:]
            features["observation.state"] = {"dtype": "float32", "shape": width, "names": None}
        fps = round(float(f.attrs["fps"]))
    theirs = LeRobotDataset.create("local/theirs", fps=fps, root=args.theirs, features=features, use_videos=True,
                                   video_backend="pyav")  # fmt: skip
    for path in files:
        with h5py.File(path, "r") as f:
            for t in range(len(f["action"])):
                frame = {"observation.graph": f["observations/graph/nodes"][t], "action": f["action"][t],
                         "task": str(f.attrs["prompt"])}  # fmt: skip
                frame |= {k: f[f"observations/images/{k.rsplit('.', 1)[1]}"][t] for k in features if "images" in k}
                if "observations/state" in f:
                    frame["observation.state"] = f["observations/state"][t]
                theirs.add_frame(frame)
        theirs.save_episode()
    theirs.finalize()
    print(f"LeRobot wrote {len(files)} episodes to {args.theirs}")


if __name__ == "__main__":
    main()
