"""Tasks on the simulated arm: what to do (prompt, target motion), where it starts, and how it is scored.

Every episode draws, from one seeded generator: a payload on the tip collar (0-50 g, unknown to the policy: the
same pressures then give a different shape, which only shape sensing reveals), a random rest pose, and targets from
the arm's own quasi-static workspace under that payload (the tip position of a random pressure pattern), so every
target is reachable.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from softarm.sim.arm_model import ArmSpec
from softarm.sim.statics import StaticArm

SUCCESS_RADIUS = 0.010  # m: reach succeeds when the tip stays within 10 mm of the target for `dwell` steps
TRACK_RMSE = 0.015  # m: follow succeeds when the tracking RMSE after acquisition is below 15 mm
MAX_PAYLOAD = 0.05  # kg
GUIDE_COLOR = "green"  # the ball that shows where a followed one goes (FollowTask.lead)


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    task: str
    seed: int
    prompt: str
    initial_command: np.ndarray  # [A] the commands the arm rests under at t = 0
    targets: np.ndarray  # [steps + 1, 3] target position (base frame, m) at t = k / control_hz
    time_limit: float  # s
    payload: float = 0.0  # kg on the tip collar
    target_color: str = "red"
    other_balls: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # colour -> fixed position
    guide: np.ndarray | None = None  # [steps + 1, 3] where a green ball shows the target ahead (follow_lead)

    def balls(self, step: int) -> dict[str, np.ndarray]:
        guide = {} if self.guide is None else {GUIDE_COLOR: self.guide[step]}
        return {**self.other_balls, **guide, self.target_color: self.targets[step]}


def _start(seed: int, stream: int, static: StaticArm, scale: float) -> tuple[np.random.Generator, float, np.ndarray]:
    """The episode's generator (one stream per task), its payload, loaded into the (shared) model so that targets are
    planned under it, and the command pattern the arm rests under at t = 0."""
    rng = np.random.default_rng([seed, stream])
    payload = float(rng.uniform(0.0, MAX_PAYLOAD))
    static.env.set_payload(payload)
    return rng, payload, _random_shape(rng, scale, static.env.spec)


def _random_shape(rng: np.random.Generator, scale: float, spec: ArmSpec) -> np.ndarray:
    """A command pattern that bends the arm into a smooth 3-D curve. Chambers: per-axis ramps along the arm plus a
    little noise; tendons: each section pulled towards a random side by a random amount."""
    n = spec.num_actuators
    if spec.actuation == "tendons":
        magnitude = rng.uniform(0, scale, spec.sections)
        side = rng.uniform(0, 2 * math.pi, spec.sections)
        angles = np.array([spec.tendon_angle(k) for k in range(spec.tendons_per_section)])
        pattern = magnitude[:, None] * np.maximum(0.0, np.cos(side[:, None] - angles[None, :]))
        return np.clip(pattern.reshape(n) + rng.normal(0, 0.05 * scale, n), 0.0, 0.9)
    x = np.linspace(0.0, 1.0, n // 2)
    pattern = np.empty(n)
    for axis in (0, 1):
        a, b = rng.uniform(-1, 1, size=2) * scale
        pattern[axis::2] = a + (b - a) * x
    return np.clip(pattern + rng.normal(0, 0.1 * scale, n), -0.9, 0.9)


@dataclasses.dataclass(frozen=True)
class ReachTask:
    name: str = "reach"
    prompt: str = "reach the ball"  # one ball: no colour to name (choose names one of three)
    time_limit: float = 5.0
    min_distance: float = 0.06  # m between the initial tip and the target
    dwell: int = 3  # control steps the tip must stay within SUCCESS_RADIUS

    def sample(self, seed: int, static: StaticArm, control_hz: float) -> EpisodeSpec:
        rng, payload, initial = _start(seed, 0, static, 0.4)
        start, _ = static.tip(initial)
        while True:
            target, _ = static.tip(_random_shape(rng, 0.9, static.env.spec))
            if np.linalg.norm(target - start) >= self.min_distance:
                break
        steps = round(self.time_limit * control_hz)
        targets = np.tile(target, (steps + 1, 1))
        return EpisodeSpec(self.name, seed, self.prompt, initial, targets, self.time_limit, payload)

    def _arrival(self, errors: np.ndarray) -> int | None:
        """Index of the first step of `dwell` consecutive steps within SUCCESS_RADIUS: reached and held, not
        swept through."""
        if len(errors) < self.dwell:
            return None
        held = np.lib.stride_tricks.sliding_window_view(errors < SUCCESS_RADIUS, self.dwell).all(axis=1)
        return int(np.argmax(held)) if held.any() else None

    def success(self, errors: np.ndarray, control_hz: float) -> bool:
        return self._arrival(errors) is not None

    def time_to_success(self, errors: np.ndarray, control_hz: float) -> float | None:
        arrival = self._arrival(errors)
        return None if arrival is None else float((arrival + 1) / control_hz)

    def done(self, errors: np.ndarray) -> bool:
        return self._arrival(errors) is not None


@dataclasses.dataclass(frozen=True)
class FollowTask:
    """Track a ball circling in a horizontal plane (one lap every `period` s) around a random centre, either way round
    at random: one frame then does not say where the ball goes next. `around_axis` centres every circle on the arm's
    axis and `direction` +1 (anticlockwise seen from above) or -1 fixes the way round, so that the ball's position
    alone says where it goes next: what one frame cannot tell is told apart from what tracking itself asks
    (docs/history.md). `lead` > 0 shows a green ball `lead` s ahead of the red one on the same circle: one frame then
    shows where the ball goes, on circles anywhere (an oracle of what the ball's history could tell)."""

    name: str = "follow"
    prompt: str = "follow the red ball"
    time_limit: float = 8.0
    acquire: float = 2.0  # s allowed to catch the ball before tracking is scored
    radius: float = 0.04  # m
    period: float = 6.0  # s
    direction: float = 0.0  # 0: either way round at random; +1 / -1: always anticlockwise / clockwise
    around_axis: bool = False  # centre on the arm's axis (at a random height) instead of anywhere
    lead: float = 0.0  # s: a green ball this far ahead of the red one (0: none)

    def sample(self, seed: int, static: StaticArm, control_hz: float) -> EpisodeSpec:
        rng, payload, initial = _start(seed, 1, static, 0.3)
        spec = static.env.spec
        steps = round(self.time_limit * control_hz)
        t = np.arange(steps + 1) / control_hz
        rest = np.zeros(spec.num_actuators)
        while True:
            centre, _ = static.tip(_random_shape(rng, 0.6, spec))
            if self.around_axis:
                centre = np.array([0.0, 0.0, centre[2]])
            phase, direction = rng.uniform(0, 2 * math.pi), rng.choice([-1.0, 1.0])
            direction = self.direction or direction
            path = self._circle(centre, phase, direction, t)
            # keep circles whose every quarter is reachable at rest
            if all(static.solve(p, rest, iterations=25)[1] < 2e-3 for p in path[:: max(steps // 4, 1)]):
                guide = self._circle(centre, phase, direction, t + self.lead) if self.lead else None
                return EpisodeSpec(self.name, seed, self.prompt, initial, path, self.time_limit, payload, guide=guide)

    def _circle(self, centre: np.ndarray, phase: float, direction: float, t: np.ndarray) -> np.ndarray:
        """The ball's positions [len(t), 3] at times `t` (s)."""
        angle = phase + direction * 2 * math.pi * t / self.period
        return centre + self.radius * np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], axis=1)

    def tracking_rmse(self, errors: np.ndarray, control_hz: float) -> float:
        scored = errors[round(self.acquire * control_hz) :]
        return float(np.sqrt(np.mean(scored**2))) if scored.size else float("inf")

    def success(self, errors: np.ndarray, control_hz: float) -> bool:
        complete = len(errors) >= round(self.time_limit * control_hz)
        return complete and self.tracking_rmse(errors, control_hz) < TRACK_RMSE

    def time_to_success(self, errors: np.ndarray, control_hz: float) -> float | None:
        return None

    def done(self, errors: np.ndarray) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class ChooseTask(ReachTask):
    """Reach the ball the prompt names, among three at the arm's fixed places (`ArmSpec.choices`): the policy must
    read the instruction, and, under an unknown payload, know where its own tip is."""

    name: str = "choose"

    def sample(self, seed: int, static: StaticArm, control_hz: float) -> EpisodeSpec:
        rng, payload, initial = _start(seed, 3, static, 0.4)
        choices = {color: np.array(position) for color, position in static.env.spec.choices.items()}
        color = str(rng.choice(sorted(choices)))
        steps = round(self.time_limit * control_hz)
        others = {c: p for c, p in choices.items() if c != color}
        targets = np.tile(choices[color], (steps + 1, 1))
        prompt = f"reach the {color} ball"
        return EpisodeSpec(self.name, seed, prompt, initial, targets, self.time_limit, payload, color, others)


TASKS = {
    "reach": ReachTask(),
    "follow": FollowTask(),
    "follow_axis": FollowTask(name="follow_axis", direction=1.0, around_axis=True),
    "follow_lead": FollowTask(name="follow_lead", lead=1.0),
    "choose": ChooseTask(),
}
FOLLOW_TASKS = tuple(name for name, task in TASKS.items() if isinstance(task, FollowTask))  # a ball that circles


def ball_motion(path: np.ndarray, step: int, ahead: int) -> tuple[np.ndarray, np.ndarray]:
    """A circling ball at `step` of its path [steps + 1, 3]: where it is and how far it moves over the next `ahead`
    steps ([6], m), and the circle's tangent there pointing anticlockwise ([3]): the sign of the motion along it is
    the ball's way round, which one frame cannot tell."""
    centre = (path.max(0) + path.min(0)) / 2  # an episode covers more than a lap
    radial = path[step] - centre
    return np.concatenate([path[step], path[step + ahead] - path[step]]), np.array([-radial[1], radial[0], 0.0])


def motion_errors(
    predicted: np.ndarray, truth: np.ndarray, tangents: np.ndarray, mean: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
    """Predictions of `ball_motion`'s place and motion [S, 6] against the truth (m), with its tangents [S, 3]: the
    place's median error, the motion's RMSE and that of always guessing `mean`'s motion (mm), how often the way round
    is right; and, per sample, whether it is."""
    moved, guessed = truth[:, 3:], predicted[:, 3:]
    way = np.sign((moved * tangents).sum(1)) == np.sign((guessed * tangents).sum(1))
    placed = np.linalg.norm(predicted[:, :3] - truth[:, :3], axis=1)
    return {"position_error_mm_median": float(1000 * np.median(placed)),
            "motion_rmse_mm": float(1000 * np.sqrt(((guessed - moved) ** 2).sum(1).mean())),
            "motion_rmse_mm_mean_guess": float(1000 * np.sqrt(((moved - mean[3:]) ** 2).sum(1).mean())),
            "way_round_accuracy": float(way.mean())}, way  # fmt: skip


# Where a policy that sees misses `reach` most (docs/cpu_model_search.md: C6 by distance and payload): balls far from
# the arm's axis, which the arm reaches only bent far, and light payloads, under which the tip drifts off the ball.
FAR_FROM_AXIS = 0.34  # of the arm's length: 170 mm for the 0.5 m pneumatic arm
LIGHT_PAYLOAD = 0.24 * MAX_PAYLOAD  # 12 g


def is_hard(spec: EpisodeSpec, arm_spec: ArmSpec) -> bool:
    """Whether an episode's target lies far from the arm's axis (at its end) or its payload is light."""
    length = arm_spec.num_segments * arm_spec.segment_length
    return bool(np.hypot(*spec.targets[-1][:2]) > FAR_FROM_AXIS * length or spec.payload < LIGHT_PAYLOAD)


def task_prompts(arms: list[ArmSpec]) -> list[str]:
    """Every prompt the tasks give on these arms: the words a tokenizer for the simulator must know."""
    prompts = {TASKS["reach"].prompt, TASKS["follow"].prompt}
    prompts |= {f"reach the {color} ball" for spec in arms for color in spec.choices}
    return sorted(prompts)
