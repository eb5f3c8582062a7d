"""Scripted agents on the simulated arm: the expert (upper bound and demonstrator), a random floor, and an arm held
at rest (a scene in which only the target moves).

The expert plans the pressures that put the tip on the target (`StaticArm.solve`), then ramps the command there
along a minimum-jerk profile, the way a careful operator drives a pneumatic arm; to follow a moving ball it re-plans
every step for where the ball will be a little later.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib

import numpy as np

from softarm.sim.arm_model import ArmSpec
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import EpisodeSpec

PLAN_FROM = ("current", "rest")
DEFAULT_PLAN_FROM = "rest"


def min_jerk(start: np.ndarray, goal: np.ndarray, fraction: float) -> np.ndarray:
    s = float(np.clip(fraction, 0.0, 1.0))
    return start + (goal - start) * (10 * s**3 - 15 * s**4 + 6 * s**5)


class ExpertAgent:
    """Privileged scripted controller: it reads the target (and the payload) from the simulator, not from cameras.

    With `assumed_payload` set it plans as if the tip carried that load whatever it really carries: the best an
    open-loop controller without shape sensing can do, a baseline for what the graph is worth.

    The arm is redundant (more actuators than the tip's 3 coordinates), so many pressure patterns put the tip on a
    target and the solver returns the one nearest where it starts. `plan_from="rest"` (the default) starts from the
    middle of the actuators' range, so the goal depends only on the target and the payload: one answer per target for
    a policy to learn, not one per start it cannot see; `"current"` from the pressures the arm rests under (the
    shortest move)."""

    needs_images = False

    def __init__(
        self,
        static: StaticArm,
        *,
        speed: float = 0.12,
        lead: float = 0.25,
        assumed_payload: float | None = None,
        plan_from: str = DEFAULT_PLAN_FROM,
    ) -> None:
        if plan_from not in PLAN_FROM:
            raise ValueError(f"plan_from must be one of {PLAN_FROM}, got {plan_from!r}")
        self.static, self.speed, self.lead, self.assumed_payload = static, speed, lead, assumed_payload
        self.plan_from = plan_from

    def reset(self, spec: EpisodeSpec, control_hz: float) -> None:
        self.spec, self.hz = spec, control_hz
        self.start = spec.initial_command.astype(np.float64)
        self.step = 0
        self.moving = not np.allclose(spec.targets[0], spec.targets[-1])
        with self._planning_payload():
            start_tip, _ = self.static.tip(self.start)
            if not self.moving:
                self.goal = self._plan(spec.targets[0])
                distance = float(np.linalg.norm(spec.targets[0] - start_tip))
                self.ramp = max(1.2, distance / self.speed)  # s
            else:
                self.goal, self.ramp = self.start, 1.5

    @contextlib.contextmanager
    def _planning_payload(self) -> Iterator[None]:
        """Plan under the assumed payload (if any); the simulated arm keeps carrying the real one."""
        if self.assumed_payload is None:
            yield
            return
        self.static.env.set_payload(self.assumed_payload)
        try:
            yield
        finally:
            self.static.env.set_payload(self.spec.payload)

    def _plan(self, target: np.ndarray) -> np.ndarray:
        """Pressures for `target`: from `plan_from`'s start first, from other starts if that lands in a local minimum
        (with "rest", the arm's current pressures come last, so the answer stays independent of them if it can)."""
        rng = np.random.default_rng(0)
        low, high = self.static.env.spec.command_range
        centre, half = (low + high) / 2, (high - low) / 2
        others = centre + half * rng.uniform(-0.5, 0.5, (6, len(self.start)))  # the middle half of the range
        if self.plan_from == "current":
            starts = (self.start, np.zeros_like(self.start), *others)
        else:
            starts = (np.full_like(self.start, centre), *others, self.start)
        best, best_residual = self.start, np.inf
        for start in starts:
            u, residual = self.static.solve(target, start)
            if residual < best_residual:
                best, best_residual = u, residual
            if residual < 2e-3:
                break
        return best

    def act(self, observation: dict) -> np.ndarray:
        t = self.step / self.hz
        self.step += 1
        if self.moving:
            # aim where the ball will be a little later: the actuators lag and the arm swings
            ahead = min(self.step + round(self.lead * self.hz), len(self.spec.targets) - 1)
            with self._planning_payload():
                self.goal, _ = self.static.solve(self.spec.targets[ahead], self.goal, iterations=10)
        return min_jerk(self.start, self.goal, (t + 1 / self.hz) / self.ramp).astype(np.float32)


class RandomAgent:
    """Uniform random commands, a floor for any learned policy."""

    needs_images = False

    def __init__(self, arm: ArmSpec, seed: int = 0) -> None:
        self.arm, self.rng = arm, np.random.default_rng(seed)

    def reset(self, spec: EpisodeSpec, control_hz: float) -> None:
        self.rng = np.random.default_rng([spec.seed, 2])

    def act(self, observation: dict) -> np.ndarray:
        return self.rng.uniform(*self.arm.command_range, self.arm.num_actuators).astype(np.float32)


class HoldAgent:
    """Holds the episode's initial command: the arm stays where it starts while the target moves, so its images show
    the target's motion and nothing of the arm's (a tracking arm trails the ball and gives its way round away)."""

    needs_images = False

    def reset(self, spec: EpisodeSpec, control_hz: float) -> None:
        self.command = np.asarray(spec.initial_command, np.float32)

    def act(self, observation: dict) -> np.ndarray:
        return self.command


class Hold:
    """`HoldAgent` as a recording's executor (`softarm.sim.generate.ExecutorFactory`): episodes of the arm at rest,
    the expert's labels beside them."""

    name = "hold (the arm kept at its initial command)"

    def __call__(self, static: StaticArm) -> HoldAgent:
        return HoldAgent()
