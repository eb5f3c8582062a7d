"""How many answers does the expert give for one target? The redundant arm's pressures per target, by solver start.

The pneumatic arm has 10 chambers for a 3-D tip position, so many pressure patterns put the tip on a ball and the
expert's solver returns the one nearest where it starts. For held-out reach targets this plans each target from
several rest poses (the episode's own and random ones) with `plan_from="current"` (the arm's pressures) and
`"rest"` (the middle of the range), and prints how far the goals of one target lie apart, in fractions of the
command range, and how close to the target they put the tip. Labels that depend on a start the policy no longer
sees after the arm has moved give it several answers per target to average.

    .venv/bin/python experiments/expert_redundancy.py [--targets 50] [--starts 6]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from softarm.sim.agents import PLAN_FROM, ExpertAgent
from softarm.sim.env import SoftArmEnv
from softarm.sim.generate import EVAL_SEED
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--starts", type=int, default=6, help="rest poses per target: the episode's and random ones")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.targets, args.starts = 2, 2
    with SoftArmEnv() as env:
        static, task = StaticArm(env), TASKS["reach"]
        low, high = env.spec.command_range
        experts = {mode: ExpertAgent(static, plan_from=mode) for mode in PLAN_FROM}
        spread = {mode: [] for mode in PLAN_FROM}
        residual = {mode: [] for mode in PLAN_FROM}
        for k in range(args.targets):
            spec = task.sample(EVAL_SEED + k, static, env.control_hz)
            rng = np.random.default_rng(k)
            starts = [spec.initial_command] + [
                rng.uniform(0.6 * low, 0.6 * high, spec.initial_command.shape).astype(np.float32)
                for _ in range(args.starts - 1)
            ]
            for mode, expert in experts.items():
                goals = []
                for start in starts:
                    expert.reset(dataclasses.replace(spec, initial_command=start), env.control_hz)
                    goals.append(expert.goal)
                    residual[mode].append(np.linalg.norm(static.tip(expert.goal)[0] - spec.targets[0]))
                goals = np.array(goals)
                spread[mode].append(np.abs(goals - goals.mean(0)).max() / (high - low))
    print(f"{args.targets} reach targets x {args.starts} starts")
    print("plan_from | goal spread per target, fraction of range: median / p90 / max | tip residual mm: median / max")
    for mode in PLAN_FROM:
        s, r = np.array(spread[mode]), 1000 * np.array(residual[mode])
        print(f"{mode:>9} | {np.median(s):.3f} / {np.percentile(s, 90):.3f} / {s.max():.3f}"
              f" | {np.median(r):.2f} / {r.max():.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
