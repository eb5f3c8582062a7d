"""Where a reach policy's misses come from: how far its commands are from the expert's answer, and how still it holds.

First, success by how far the ball sits from the arm's axis (thirds of the evaluated episodes). Then re-runs the
failed episodes of a `softarm eval --task reach` (and as many successful ones, for comparison) to the time limit,
without stopping at success, and prints per episode: the tip error's range over the last 20 steps (a policy that
holds still has a narrow one) and the largest difference between the policy's final command and the pressures the
expert planning from rest (one answer per target and payload) gives for that ball.

    .venv/bin/python experiments/reach_misses.py CHECKPOINT EVAL_DIR/eval.json [--replan 8] [--episodes 30]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from softarm.apps.evaluate import ModelAgent
from softarm.policy import SoftArmPolicy
from softarm.sim.agents import ExpertAgent
from softarm.sim.env import SoftArmEnv
from softarm.sim.rollout import run_episode
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import TASKS


def print_success_by_reach(episodes: list[dict], specs: list) -> None:
    """The arm hangs along z: a ball far from that axis needs the largest bend."""
    radius = np.array([1000 * np.hypot(*spec.targets[0][:2]) for spec in specs])
    success = np.array([e["success"] for e in episodes])
    for third in np.array_split(np.argsort(radius), min(3, len(radius))):
        low, high = radius[third].min(), radius[third].max()
        print(f"ball {low:3.0f}-{high:3.0f} mm from the axis: {success[third].sum()}/{len(third)} succeeded")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("eval_json", help="eval.json of a reach evaluation of CHECKPOINT")
    parser.add_argument("--replan", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=30, help="at most this many failed and successful ones")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.episodes = 1
    episodes = json.loads(Path(args.eval_json).read_text())["episodes"]
    groups = {
        outcome: [e["seed"] for e in episodes if e["success"] == (outcome == "succeeded")][: args.episodes]
        for outcome in ("failed", "succeeded")
    }
    task = TASKS["reach"]
    with SoftArmEnv() as env:
        static = StaticArm(env)
        print_success_by_reach(episodes, [task.sample(e["seed"], static, env.control_hz) for e in episodes])
        agent = ModelAgent(SoftArmPolicy.from_checkpoint(args.checkpoint, device="cpu"), args.replan)
        expert = ExpertAgent(static, plan_from="rest")
        for outcome, seeds in groups.items():
            swings, gaps = [], []
            for seed in seeds:
                spec = task.sample(seed, static, env.control_hz)
                rollout = run_episode(env, static, task, spec, agent, stop_on_success=False)
                expert.reset(spec, env.control_hz)
                last = 1000 * rollout.errors[-20:]
                swings.append(last.max() - last.min())
                gaps.append(np.abs(rollout.actions[-1] - expert.goal).max())
                print(f"{outcome} {seed} payload {1000 * spec.payload:4.1f} g | last 20 steps' error "
                      f"{last.min():5.1f}-{last.max():5.1f} mm | final command - expert's: {gaps[-1]:.2f}")  # fmt: skip
            print(f"{outcome} ({len(seeds)}): median error range over the last 20 steps {np.median(swings):.1f} mm, "
                  f"median largest command difference {np.median(gaps):.2f}\n")  # fmt: skip


if __name__ == "__main__":
    main()
