"""`softarm eval`: closed-loop rollouts on the simulated arm, scored the way soft-arm papers report them.

A trained checkpoint runs through `SoftArmPolicy`, the class the server wraps, with receding-horizon control: the
first `replan` actions of each 16-step chunk are executed, then the policy sees the arm again. The scripted expert
(upper bound) and random pressures (floor) run through the same loop. Episodes come from the evaluation seeds,
never from the generated training range.
"""

from __future__ import annotations

from collections import deque
import dataclasses
import json
import math
from pathlib import Path
import time

import numpy as np
import torch
from tqdm import tqdm

from softarm.layout import EVAL_FILE
from softarm.sim.agents import ExpertAgent, RandomAgent
from softarm.sim.arm_model import ARMS, DEFAULT_ARM
from softarm.sim.env import SoftArmEnv
from softarm.sim.generate import EVAL_SEED
from softarm.sim.media import save_eval_plot, save_rollout_gif
from softarm.sim.rollout import Rollout, run_episode
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import MAX_PAYLOAD, TASKS, EpisodeSpec

POLICIES = ("model", "expert", "expert-blind", "random")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate: honest at small n and at 0 % or 100 %."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 % and 100 % one bound equals the rate exactly; rounding must not leave the rate outside its interval
    return min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)


class ModelAgent:
    """A trained policy under receding-horizon control over its action chunks."""

    def __init__(self, policy, replan: int) -> None:
        self.policy, self.replan = policy, replan
        self.queue: deque[np.ndarray] = deque()
        self.infer_ms: list[float] = []

    @property
    def needs_images(self) -> bool:
        return not self.queue

    def reset(self, spec: EpisodeSpec, control_hz: float) -> None:
        self.queue.clear()
        torch.manual_seed(spec.seed)  # the flow-matching noise: an evaluation is repeatable episode by episode

    def act(self, observation: dict) -> np.ndarray:
        if not self.queue:
            result = self.policy.infer(observation)
            self.infer_ms.append(result["policy_timing"]["infer_ms"])
            self.queue.extend(np.asarray(result["actions"])[: self.replan])
        return self.queue.popleft()


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    task: str = "reach"
    episodes: int = 50
    policy: str = "model"
    checkpoint: str | None = None
    seed: int = EVAL_SEED
    replan: int = 8
    videos: int = 3  # episodes rendered into rollouts.gif
    device: str = "auto"
    arm: str = DEFAULT_ARM  # one of softarm.sim.arm_model.ARMS


def _episode_row(task, rollout: Rollout, hz: float) -> dict:
    row = {
        "seed": rollout.spec.seed,
        "payload_g": 1000 * rollout.spec.payload,
        "success": rollout.success,
        "steps": rollout.steps,
        "time_to_success_s": rollout.time_to_success,
        "final_error_mm": 1000 * float(rollout.errors[-1]),
        "min_error_mm": 1000 * float(rollout.errors.min()),
    }
    if hasattr(task, "tracking_rmse"):
        row["tracking_rmse_mm"] = 1000 * task.tracking_rmse(rollout.errors, hz)
    return row


def _summary(rows: list[dict], options: EvalOptions) -> dict:
    n, successes = len(rows), sum(r["success"] for r in rows)
    errors = np.array([r["final_error_mm"] for r in rows])
    times = [r["time_to_success_s"] for r in rows if r["time_to_success_s"] is not None]
    summary = {
        "task": options.task,
        "arm": options.arm,
        "policy": options.policy,
        "checkpoint": options.checkpoint,
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n,
        "success_rate_wilson95": list(wilson_interval(successes, n)),
        "final_error_mm_median": float(np.median(errors)),
        "final_error_mm_mean": float(errors.mean()),
        "time_to_success_s_median": float(np.median(times)) if times else None,
        "time_to_success_s_mean": float(np.mean(times)) if times else None,
    }
    if "tracking_rmse_mm" in rows[0]:
        rmse = np.array([r["tracking_rmse_mm"] for r in rows])
        summary |= {"tracking_rmse_mm_median": float(np.median(rmse)), "tracking_rmse_mm_mean": float(rmse.mean())}
    return summary


def make_agent(options: EvalOptions, static: StaticArm):
    if options.policy == "expert":
        return ExpertAgent(static)
    if options.policy == "expert-blind":  # plans for the mean payload: no shape sensing, open loop
        return ExpertAgent(static, assumed_payload=MAX_PAYLOAD / 2)
    if options.policy == "random":
        return RandomAgent(static.env.spec)
    if options.policy != "model":
        raise ValueError(f"unknown --policy {options.policy!r}; choose one of {POLICIES}")
    if not options.checkpoint:
        raise ValueError("--policy model needs --checkpoint DIR (a directory written by softarm train)")
    from softarm.policy import SoftArmPolicy

    return ModelAgent(SoftArmPolicy.from_checkpoint(options.checkpoint, device=options.device), options.replan)


def evaluate(options: EvalOptions, out_dir: str | Path) -> dict:
    """Run the episodes, write eval.json, summary.png and rollouts.gif into `out_dir`; return the summary."""
    if options.task not in TASKS:
        raise ValueError(f"unknown task {options.task!r}; choose one of {sorted(TASKS)}")
    if options.arm not in ARMS:
        raise ValueError(f"unknown arm {options.arm!r}; choose one of {sorted(ARMS)}")
    if options.episodes < 1 or options.replan < 1:
        raise ValueError("--episodes and --replan must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = TASKS[options.task]
    rows, curves, videos = [], [], []
    start = time.monotonic()
    with SoftArmEnv(ARMS[options.arm]) as env:
        static = StaticArm(env)
        agent = make_agent(options, static)
        label = options.policy if options.policy != "model" else Path(options.checkpoint).name
        for i in tqdm(range(options.episodes), desc=f"eval {options.task} [{label}]", unit="episode"):
            spec = task.sample(options.seed + i, static, env.control_hz)
            rollout = run_episode(env, static, task, spec, agent, record_images=i < options.videos)
            rows.append(_episode_row(task, rollout, env.control_hz))
            curves.append(1000 * rollout.errors)
            if rollout.images:
                videos.append(rollout)
    summary = _summary(rows, options) | {"wall_s": time.monotonic() - start}
    if isinstance(agent, ModelAgent) and agent.infer_ms:
        summary["infer_ms_median"] = float(np.median(agent.infer_ms))
    (out_dir / EVAL_FILE).write_text(json.dumps({"summary": summary, "episodes": rows}, indent=2))
    save_eval_plot(out_dir / "summary.png", summary, curves, env.control_hz)
    if videos:
        save_rollout_gif(out_dir / "rollouts.gif", videos, env.cameras)
    return summary
