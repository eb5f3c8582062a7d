"""One episode on the simulated arm with any agent (expert, random, a trained policy): the loop that both the
dataset generator and the closed-loop evaluation run, so demonstrations and scores see the same world."""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Protocol

import numpy as np

from softarm.sim.env import SoftArmEnv
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import EpisodeSpec


class Agent(Protocol):
    needs_images: bool

    def reset(self, spec: EpisodeSpec, control_hz: float) -> None: ...

    def act(self, observation: dict) -> np.ndarray: ...


@dataclasses.dataclass
class Rollout:
    spec: EpisodeSpec
    graph_nodes: np.ndarray  # [T, N, 19] what the agent saw at each step
    state: np.ndarray  # [T, A]
    actions: np.ndarray  # [T, A] what it commanded (before any execution noise; the labels when an executor drove)
    errors: np.ndarray  # [T] tip-target distance (m) after each action
    images: dict[str, np.ndarray]  # camera -> uint8 [T, H, W, 3] (empty unless recorded)
    success: bool
    time_to_success: float | None

    @property
    def steps(self) -> int:
        return len(self.actions)


def run_episode(
    env: SoftArmEnv,
    static: StaticArm,
    task,
    spec: EpisodeSpec,
    agent: Agent,
    *,
    record_images: bool = False,
    stop_on_success: bool = True,
    hold_steps: int = 0,
    action_noise: float = 0.0,
    on_step: Callable[[dict, np.ndarray], None] | None = None,
    executor: Agent | None = None,
) -> Rollout:
    """Run `agent` from the spec's rest pose until the time limit, or `hold_steps` after success.

    `action_noise` > 0 executes the agent's command plus Gaussian noise of that standard deviation in half command
    ranges (1 for chambers in [-1, 1], 0.5 for tendons in [0, 1]; seeded by the episode) while `actions` records the
    command itself: DART-style demonstrations, whose states stray from the agent's own path and whose labels say how
    to get back. `executor`, when given, drives the arm instead while `agent` still labels every step (DAgger, Ross
    et al. 2011: a learned policy visits the states its own mistakes lead to, the expert says what to do there);
    `errors` and success are then the executor's. `on_step(observation, action)` sees every step as it happens,
    images included (a recorder writing the episode as it goes); its images are not kept in the rollout."""
    if action_noise < 0:
        raise ValueError(f"action noise must be >= 0, got {action_noise}")
    noise = np.random.default_rng([spec.seed, 4])
    scale = (env.command_high - env.command_low) / 2
    hz = env.control_hz
    env.set_payload(spec.payload)
    env.reset(static.equilibrium(spec.initial_command), spec.initial_command)
    env.place_balls(spec.balls(0))
    agent.reset(spec, hz)
    if executor is not None:
        executor.reset(spec, hz)
    graph_nodes, state, actions, errors = [], [], [], []
    images: dict[str, list[np.ndarray]] = {camera: [] for camera in env.cameras} if record_images else {}
    stop_at = len(spec.targets) - 1
    for k in range(len(spec.targets) - 1):
        observation = {"graph_nodes": env.node_features(), "state": env.state(), "prompt": spec.prompt}
        if record_images or agent.needs_images or on_step is not None or (executor and executor.needs_images):
            observation["images"] = env.render()
            for camera, frames in images.items():
                frames.append(observation["images"][camera])
        action = np.clip(np.asarray(agent.act(observation), np.float32), env.command_low, env.command_high)
        if on_step is not None:
            on_step(observation, action)
        graph_nodes.append(observation["graph_nodes"])
        state.append(observation["state"])
        actions.append(action)
        executed = action if executor is None else np.asarray(executor.act(observation), np.float32)  # env.step clips
        env.step(executed + noise.normal(0.0, action_noise * scale, action.shape) if action_noise else executed)
        env.place_balls(spec.balls(k + 1))
        errors.append(float(np.linalg.norm(env.tip_position() - spec.targets[k + 1])))
        if stop_on_success and stop_at == len(spec.targets) - 1 and task.done(np.asarray(errors)):
            stop_at = k + 1 + hold_steps
        if k + 1 >= stop_at:
            break
    errors_array = np.asarray(errors)
    return Rollout(
        spec=spec,
        graph_nodes=np.stack(graph_nodes),
        state=np.stack(state),
        actions=np.stack(actions),
        errors=errors_array,
        images={camera: np.stack(frames) for camera, frames in images.items()},
        success=task.success(errors_array, hz),
        time_to_success=task.time_to_success(errors_array, hz),
    )
