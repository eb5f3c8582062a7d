"""How precisely can the simulator's fixed cameras place a reach target in 3-D, even for a perfect ball detector?

Targets of held-out reach episodes are projected into each camera (exact pinhole projection of the ball's centre);
a degree-4 polynomial fitted on 1200 targets maps the pixel coordinates back to 3-D and is scored on 300 others.
With one camera the position along its viewing ray stays ambiguous (the workspace is a 3-D volume, not a surface);
a second view fixes it. The reach task needs the tip within 10 mm.

    .venv/bin/python experiments/camera_depth.py
"""

from __future__ import annotations

import argparse
from itertools import combinations_with_replacement

import mujoco
import numpy as np

from softarm.sim.env import SoftArmEnv
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import TASKS


def project(env: SoftArmEnv, camera: str, points: np.ndarray) -> np.ndarray:
    """Base-frame points [P, 3] -> pixel coordinates [P, 2] in `camera`."""
    cam = env.model.camera(camera).id
    mujoco.mj_forward(env.model, env.data)
    position, rotation = env.data.cam_xpos[cam], env.data.cam_xmat[cam].reshape(3, 3)
    local = (points + env.mount_pos - position) @ rotation  # camera frame: x right, y up, looking along -z
    focal = 0.5 * env.spec.image_size[0] / np.tan(np.radians(env.model.cam_fovy[cam] / 2))  # fovy is vertical
    return focal * local[:, :2] / -local[:, 2:3]


def polynomial(features: np.ndarray, degree: int = 4) -> np.ndarray:
    columns = [np.ones(len(features))]
    for k in range(1, degree + 1):
        columns.extend(
            np.prod(features[:, combo], axis=1) for combo in combinations_with_replacement(range(features.shape[1]), k)
        )
    return np.stack(columns, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=1500, help="reach targets; the last fifth are the test set")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    count = 100 if args.smoke else args.targets
    with SoftArmEnv() as env:
        static = StaticArm(env)
        targets = np.array(
            [TASKS["reach"].sample(1_000_000 + s, static, env.control_hz).targets[0] for s in range(count)]
        )
        pixels = {camera: project(env, camera, targets) for camera in ("base", "side")}
    train, test = slice(0, count * 4 // 5), slice(count * 4 // 5, None)
    print("cameras     | 3-D error from exact pixel coordinates (mm): median / mean / 90th percentile")
    for cameras in (("base",), ("side",), ("base", "side")):
        features = polynomial(np.concatenate([pixels[c] for c in cameras], axis=1) / 100)
        coef, *_ = np.linalg.lstsq(features[train], targets[train], rcond=None)
        error = 1000 * np.linalg.norm(features[test] @ coef - targets[test], axis=1)
        print(
            f"{' + '.join(cameras):<11} | {np.median(error):.2f} / {error.mean():.2f} / {np.percentile(error, 90):.2f}"
        )


if __name__ == "__main__":
    main()
