"""What must a policy know about the moving ball to pass `follow` under each re-plan period? Scripted oracles answer.

A chunked policy sees the arm only when it re-plans, and executes its chunk blind in between; the ball circles on
(42 mm/s), so what the chunk holds must say where the ball will be. Each oracle here is the expert (exact statics,
the true payload) that reads the ball only at its re-plans, knowing there
  - `position`: where the ball is (all one camera frame can say), and aims there for the whole chunk;
  - `velocity`: where it is and how fast it moves (what two frames can say), and aims along a straight line;
  - `path`: the circle itself (the expert's privilege), and aims where the ball will be at each step.
All aim `ExpertAgent.lead` ahead for the actuators' lag and ramp in as the expert does. A learned policy can do
no better than the oracle of what its observation holds, so this separates what the task demands from what
training teaches. Prints the success and median tracking RMSE per re-plan period and oracle; writes
follow_oracle.md, follow_oracle.json and follow_oracle.png into OUT.

    .venv/bin/python experiments/follow_oracle.py --out ORACLE [--episodes 30] [--replans 8 4 2 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from softarm.apps.evaluate import wilson_interval
from softarm.plotting import pyplot, save_figure
from softarm.sim.agents import ExpertAgent, min_jerk
from softarm.sim.env import SoftArmEnv
from softarm.sim.generate import EVAL_SEED
from softarm.sim.rollout import run_episode
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import TASKS, TRACK_RMSE

KNOWS = ("position", "velocity", "path")


class ReplanningOracle(ExpertAgent):
    """The expert, reading the ball only every `replan` steps and knowing of it what `knows` says."""

    def __init__(self, static: StaticArm, knows: str, replan: int) -> None:
        super().__init__(static)
        self.knows, self.replan = knows, replan

    def act(self, observation: dict) -> np.ndarray:
        k, path = self.step, self.spec.targets
        lead = round(self.lead * self.hz)
        if k % self.replan == 0:  # what the policy sees when it re-plans
            self.seen_at, self.seen = k, path[k]
            self.velocity = (path[k] - path[max(k - 1, 0)]) * self.hz
        ahead = k - self.seen_at + lead  # steps from the last look to where this command aims
        if self.knows == "position":
            aim = self.seen
        elif self.knows == "velocity":
            aim = self.seen + self.velocity * ahead / self.hz
        else:
            aim = path[min(self.seen_at + ahead, len(path) - 1)]
        self.step += 1
        self.goal, _ = self.static.solve(aim, self.goal, iterations=10)
        return min_jerk(self.start, self.goal, self.step / self.hz / self.ramp).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=30, help="held-out follow episodes per cell")
    parser.add_argument("--replans", type=int, nargs="+", default=[8, 4, 2, 1], help="re-plan periods (steps)")
    parser.add_argument("--out", type=Path, default=Path("follow_oracle_out"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.replans = 1, [8, 1]
    task = TASKS["follow"]
    results: dict[str, dict[str, dict]] = {}
    with SoftArmEnv() as env:
        static = StaticArm(env)
        specs = [task.sample(EVAL_SEED + i, static, env.control_hz) for i in range(args.episodes)]
        for replan in args.replans:
            for knows in KNOWS:
                agent = ReplanningOracle(static, knows, replan)
                rmse = [1000 * task.tracking_rmse(run_episode(env, static, task, spec, agent).errors, env.control_hz)
                        for spec in specs]  # fmt: skip
                wins = sum(r < 1000 * TRACK_RMSE for r in rmse)
                results.setdefault(str(replan), {})[knows] = {
                    "successes": wins, "episodes": len(specs), "wilson95": list(wilson_interval(wins, len(specs))),
                    "rmse_mm_median": float(np.median(rmse)),
                }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "follow_oracle.json").write_text(json.dumps(results, indent=2))
    lines = [f"`follow`, {args.episodes} held-out episodes per cell (success: tracking RMSE < {1000 * TRACK_RMSE:g} mm "
             "after 2 s); success (95 % interval), median RMSE", "",
             f"| re-plan every | {' | '.join(KNOWS)} |", "|---" * (1 + len(KNOWS)) + "|"]  # fmt: skip
    for replan, cells in results.items():
        row = [f"{c['successes']}/{c['episodes']} ({100 * c['wilson95'][0]:.0f}-{100 * c['wilson95'][1]:.0f} %), "
               f"{c['rmse_mm_median']:.1f} mm" for c in cells.values()]  # fmt: skip
        lines.append(f"| {replan} steps | {' | '.join(row)} |")
    (args.out / "follow_oracle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(KNOWS)
    for i, knows in enumerate(KNOWS):
        rmse = [results[str(r)][knows]["rmse_mm_median"] for r in args.replans]
        ax.bar(np.arange(len(args.replans)) + i * width, rmse, width, label=f"knows the {knows}")
    ax.axhline(1000 * TRACK_RMSE, color="k", linestyle="--", linewidth=1, label="success below")
    ax.set(xticks=np.arange(len(args.replans)) + width * (len(KNOWS) - 1) / 2,
           xticklabels=[f"every {r}" for r in args.replans], xlabel="re-plan (control steps of 0.1 s)",
           ylabel="tracking RMSE, median (mm)", title="what following the ball takes")  # fmt: skip
    ax.legend(fontsize=8)
    save_figure(fig, args.out / "follow_oracle.png")
    print(f"wrote {args.out}/follow_oracle.md, .json and .png")


if __name__ == "__main__":
    main()
