"""Where does a policy's tip go on `follow`? Splits the tracking error into its parts around the ball's circle.

A tracking RMSE of 60 mm on a 40 mm circle can mean a tip that runs half a lap behind the ball on the circle, or one
that leaves the circle: the first is a policy too slow for its re-plan period, the second one that does not track at
all. For each policy (a checkpoint, or `expert`), on the same held-out `follow` (or `--task follow_axis`) episodes,
after the 2 s allowed to acquire the ball: the radial error (the tip's distance from the circle's centre in its
plane, minus the radius), the height error, and the lag along the circle (the angle from the tip to the ball, in the
ball's direction of travel: positive when the tip is behind). Writes follow_trace.md, follow_trace.json and
follow_trace.png (the tip's path and the ball's seen from above, a few episodes per policy) into OUT.

    .venv/bin/python experiments/follow_trace.py --policy base=models/sim_base/graph --policy expert --out TRACE
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from softarm import layout
from softarm.apps.evaluate import EvalOptions, make_agent, wilson_interval
from softarm.plotting import pyplot, save_figure
from softarm.sim.env import SoftArmEnv
from softarm.sim.generate import EVAL_SEED
from softarm.sim.rollout import run_episode
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import FOLLOW_TASKS, TASKS


def decompose(tips: np.ndarray, targets: np.ndarray, first: int) -> dict[str, float]:
    """Median radial, height and along-track errors (mm, degrees) of `tips` against the ball's circular path
    `targets` (both [T, 3], aligned), from step `first` on."""
    # the circle through the ball's path (least squares: x² + y² = 2 cx x + 2 cy y + c), not the path's mean, which is
    # off the centre whenever the episode is not a whole number of laps (8 s of a 6 s lap)
    x, y = targets[:, 0], targets[:, 1]
    (cx, cy, c), *_ = np.linalg.lstsq(np.stack([2 * x, 2 * y, np.ones_like(x)], axis=1), x**2 + y**2, rcond=None)
    centre = np.array([cx, cy, targets[:, 2].mean()])
    radius = float(np.sqrt(c + cx**2 + cy**2))
    tip, ball = (tips - centre)[first:], (targets - centre)[first:]
    ball_angle, tip_angle = np.arctan2(ball[:, 1], ball[:, 0]), np.arctan2(tip[:, 1], tip[:, 0])
    travel = np.sign(np.angle(np.exp(1j * np.diff(np.unwrap(ball_angle)))).mean())  # +1 anticlockwise
    lag = np.degrees(np.angle(np.exp(1j * (ball_angle - tip_angle)))) * travel
    return {
        "radial_mm": 1000 * float(np.median(np.abs(np.linalg.norm(tip[:, :2], axis=1) - radius))),
        "height_mm": 1000 * float(np.median(np.abs(tip[:, 2] - ball[:, 2]))),
        "lag_deg": float(np.median(lag)),
        "lag_abs_deg": float(np.median(np.abs(lag))),
    }


def trace(agent, env: SoftArmEnv, static: StaticArm, task, specs: list) -> list[dict]:
    """Run `agent` on every episode of `task`; each row: success, tracking RMSE, the error parts, and the two
    paths."""
    first = round(task.acquire * env.control_hz)
    rows = []
    for spec in specs:
        tips: list[np.ndarray] = []
        record = lambda _observation, _action, tips=tips: tips.append(env.tip_position())  # noqa: E731
        rollout = run_episode(env, static, task, spec, agent, on_step=record)
        tips_array = np.stack([*tips, env.tip_position()])  # the tip at each step, aligned with the targets
        targets = spec.targets[: len(tips_array)]
        rows.append({"seed": spec.seed, "success": bool(rollout.success),
                     "rmse_mm": 1000 * task.tracking_rmse(rollout.errors, env.control_hz),
                     **decompose(tips_array, targets, first),
                     "tip_xy": tips_array[:, :2].tolist(), "ball_xy": targets[:, :2].tolist()})  # fmt: skip
    return rows


def summary(rows: list[dict]) -> dict:
    successes = sum(r["success"] for r in rows)
    low, high = wilson_interval(successes, len(rows))
    medians = {key: float(np.median([r[key] for r in rows])) for key in ("rmse_mm", "radial_mm", "height_mm",
                                                                          "lag_deg", "lag_abs_deg")}  # fmt: skip
    return {"successes": successes, "episodes": len(rows), "wilson95": [low, high], **medians}


def plot(results: dict[str, list[dict]], shown: int, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(results), shown, figsize=(2.6 * shown, 2.6 * len(results)), squeeze=False)
    for row, (name, rows) in zip(axes, results.items(), strict=True):
        for ax, r in zip(row, rows[:shown], strict=False):
            ball, tip = 1000 * np.asarray(r["ball_xy"]), 1000 * np.asarray(r["tip_xy"])
            ax.plot(*ball.T, color="C3", lw=1, label="ball")
            ax.plot(*tip.T, color="C0", lw=1, label="tip")
            ax.plot(*tip[0], "o", color="C0", ms=3)
            ax.set_aspect("equal")
            ax.set_title(f"{name}: RMSE {r['rmse_mm']:.0f} mm", fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("x (mm)", fontsize=8)
    fig.supylabel("y (mm)", fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="NAME=CHECKPOINT | expert",
        help="a policy to trace (repeat); `expert` is the scripted expert",
    )
    parser.add_argument("--task", choices=FOLLOW_TASKS, default="follow",
                        help="a random centre either way round, the arm's axis anticlockwise, or `follow` with a "
                             "green ball 1 s ahead")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=20, help="held-out episodes per policy")
    parser.add_argument("--replan", type=int, default=EvalOptions.replan, help="re-plan period of the models (steps)")
    parser.add_argument("--shown", type=int, default=3, help="episodes drawn per policy")
    parser.add_argument("--out", type=Path, default=Path("follow_trace_out"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.shown = 1, 1
    policies: dict[str, EvalOptions] = {}
    for entry in args.policy:
        name, _, checkpoint = entry.partition("=")
        if name == "expert" and not checkpoint:
            policies[name] = EvalOptions(task=args.task, policy="expert")
        elif not (Path(checkpoint) / layout.CONFIG_FILE).is_file():
            parser.error(f"--policy {entry!r}: expected NAME=CHECKPOINT (a checkpoint directory) or expert")
        else:
            policies[name] = EvalOptions(task=args.task, checkpoint=checkpoint, replan=args.replan, noise_scale=0.0)
    task = TASKS[args.task]
    results: dict[str, list[dict]] = {}
    with SoftArmEnv() as env:
        static = StaticArm(env)
        specs = [task.sample(EVAL_SEED + i, static, env.control_hz) for i in range(args.episodes)]
        for name, options in policies.items():
            results[name] = trace(make_agent(options, static), env, static, task, specs)
    table = {name: summary(rows) for name, rows in results.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "follow_trace.json").write_text(json.dumps({"summary": table, "episodes": results}))
    lines = [f"`{args.task}`, {args.episodes} held-out episodes, models re-planning every {args.replan} steps, medians "
             f"after the first {task.acquire:g} s (lag: degrees the tip is behind the ball along the circle; "
             f"{math.radians(1) * 1000 * task.radius:.2f} mm per degree)", "",
             "| policy | follow | RMSE | off the circle | height | lag (signed) | lag (abs) |",
             "|---" * 7 + "|"]  # fmt: skip
    for name, s in table.items():
        low, high = s["wilson95"]
        lines.append(f"| {name} | {s['successes']}/{s['episodes']} ({100 * low:.0f}-{100 * high:.0f} %) | "
                     f"{s['rmse_mm']:.1f} mm | {s['radial_mm']:.1f} mm | {s['height_mm']:.1f} mm | "
                     f"{s['lag_deg']:.0f}° | {s['lag_abs_deg']:.0f}° |")  # fmt: skip
    (args.out / "follow_trace.md").write_text("\n".join(lines) + "\n")
    plot(results, args.shown, args.out / "follow_trace.png")
    print("\n".join(lines))
    print(f"wrote {args.out}/follow_trace.md, .json and .png")


if __name__ == "__main__":
    main()
