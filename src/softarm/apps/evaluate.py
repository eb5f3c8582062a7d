"""`softarm eval`: closed-loop rollouts on the simulated arm, scored the way soft-arm papers report them.

A trained checkpoint runs through `SoftArmPolicy`, the class the server wraps, with receding-horizon control: the
first `replan` actions of each 16-step chunk are executed, then the policy sees the arm again. With `latency_ms`
the inference takes that long in simulated time, and `execution` says what the arm does meanwhile (`softarm.execution`).
The scripted expert (upper bound) and random pressures (floor) run through the same loop. Episodes come from the
evaluation seeds, never from the generated training range.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
import functools
import json
import math
import multiprocessing
import multiprocessing.pool
import os
from pathlib import Path
import time

import numpy as np
import torch
from tqdm import tqdm

from softarm.execution import ENSEMBLE_DECAY, EXECUTIONS, ChunkExecutor, delay_steps
from softarm.history import NO_HISTORY, GraphHistory, ImageHistory
from softarm.layout import CHECKPOINTS_DIR, EVAL_FILE, GRAPH_NODES
from softarm.sim.agents import ExpertAgent, RandomAgent
from softarm.sim.arm_model import ARMS, DEFAULT_ARM
from softarm.sim.env import CONTROL_HZ, SoftArmEnv
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
    """A trained policy under receding-horizon control over its action chunks (`softarm.execution`), with an
    inference latency of `delay` control steps in simulated time: a request sent at step k is answered at step
    k + delay. With delay 0, sync and async are the plain loop; rtc still sends the overlap, which guidance pulls the
    new chunk towards."""

    def __init__(
        self, policy, replan: int, delay: int = 0, execution: str = "sync", decay: float = ENSEMBLE_DECAY
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.policy, self.delay = policy, delay
        self.executor = ChunkExecutor(replan, execution, decay)
        self.infer_ms: list[float] = []
        self.pending: tuple[int, np.ndarray] | None = None  # (arrival step, chunk)
        # a policy reading past graph steps gets every control step's graph, as a robot would feed it
        history = getattr(policy, "history", NO_HISTORY)  # any object with `infer` is a policy; most read one step
        self.history = GraphHistory(history) if history.steps > 1 else None
        # and one reading past camera frames every control step's images (rendered every step, not only on requests)
        frames = getattr(policy, "image_history", NO_HISTORY)
        self.frames = ImageHistory(frames, policy.history_cameras) if frames.steps > 1 else None

    def reset(self, spec: EpisodeSpec, control_hz: float) -> None:
        torch.manual_seed(spec.seed)  # the flow-matching noise: an evaluation is repeatable episode by episode
        self.executor.reset(spec.initial_command)
        self.pending = None
        for history in (self.history, self.frames):
            if history is not None:
                history.reset()

    @property
    def switches(self) -> list[int]:
        return self.executor.switches

    @property
    def gaps(self) -> list[np.ndarray]:
        return self.executor.gaps

    @property
    def needs_images(self) -> bool:
        """Whether this step needs the cameras: it sends a request, or the policy reads past frames."""
        return self.frames is not None or self.executor.wants_request(self.delay)

    def act(self, observation: dict) -> np.ndarray:
        executor = self.executor
        if self.history is not None:
            self.history.push(observation[GRAPH_NODES])
        if self.frames is not None:
            self.frames.push(observation["images"])
        if executor.wants_request(self.delay):
            if self.history is not None:
                observation = {**observation, **self.history.request_fields()}
            if self.frames is not None:
                observation = {**observation, **self.frames.request_fields()}
            result = self.policy.infer(observation, **executor.request(self.delay))
            self.infer_ms.append(result["policy_timing"]["infer_ms"])
            self.pending = (executor.step + self.delay, np.asarray(result["actions"]))
        if self.pending is not None and self.pending[0] == executor.step:
            executor.receive(self.pending[1])
            self.pending = None
        return executor.command()


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
    # a checkpoint of several arms: the one of its arms that drives the simulated arm (None: the one named `arm`)
    model_arm: str | None = None
    latency_ms: float = 0.0  # simulated inference latency (model policy)
    execution: str = "sync"  # what the arm does during inference: one of EXECUTIONS
    ensemble_decay: float = ENSEMBLE_DECAY  # execution "ensemble": how much less each newer chunk weighs
    noise_scale: float = 1.0  # of the flow's starting noise (model policy): 0 samples deterministically
    num_steps: int = 10  # Euler steps integrating the flow (model policy; openpi's 10)
    # processes running episodes side by side, each with its own simulator and copy of the policy (and an equal share
    # of the CPU's threads); episodes are independent and seeded, so the results are a serial run's
    workers: int = 1


def smoothness(actions: np.ndarray, switches: list[int], gaps: list[np.ndarray], command_range: np.ndarray) -> dict:
    """How the executed commands move, in fractions of the command range: the largest step at a chunk switch
    (max |a_t - a_t-1| over actuators, the worst switch of the episode; it includes the arm's own motion), the
    largest gap between the new chunk and what the old one planned for that step (the discontinuity itself), and
    the RMS jerk (third difference per step^3); all 0 for a constant command."""
    scaled = actions / command_range
    steps = np.abs(np.diff(scaled, axis=0, prepend=scaled[:1])).max(axis=1)
    jumps = [float(steps[k]) for k in switches if 0 < k < len(steps)]
    jerk = np.diff(scaled, n=3, axis=0)
    return {
        "switch_jump": max(jumps, default=0.0),
        "chunk_gap": max((float((gap / command_range).max()) for gap in gaps), default=0.0),
        "jerk_rms": float(np.sqrt((jerk**2).mean())) if len(jerk) else 0.0,
    }


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


def _median_mean(name: str, values: list[float]) -> dict:
    return {f"{name}_median": float(np.median(values)) if values else None,
            f"{name}_mean": float(np.mean(values)) if values else None}  # fmt: skip


def _summary(rows: list[dict], options: EvalOptions) -> dict:
    n, successes = len(rows), sum(r["success"] for r in rows)
    summary = {key: getattr(options, key) for key in ("task", "arm", "policy", "checkpoint")}
    summary |= {"episodes": n, "successes": successes, "success_rate": successes / n,
                "success_rate_wilson95": list(wilson_interval(successes, n))}  # fmt: skip
    summary |= _median_mean("final_error_mm", [r["final_error_mm"] for r in rows])
    summary |= _median_mean("time_to_success_s", [t for r in rows if (t := r["time_to_success_s"]) is not None])
    if "switch_jump" in rows[0]:
        summary |= {"latency_ms": options.latency_ms, "execution": options.execution, "replan": options.replan,
                    "noise_scale": options.noise_scale, "num_steps": options.num_steps,
                    **({"ensemble_decay": options.ensemble_decay} if options.execution == "ensemble" else {}),
                    **{f"{k}_mean": float(np.mean([r[k] for r in rows]))
                       for k in ("switch_jump", "chunk_gap", "jerk_rms")}}  # fmt: skip
    if "tracking_rmse_mm" in rows[0]:
        summary |= _median_mean("tracking_rmse_mm", [r["tracking_rmse_mm"] for r in rows])
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
    from softarm.policy import SoftArmPolicy, checkpoint_arms

    model_arm = options.model_arm
    if model_arm is None and checkpoint_arms(options.checkpoint):  # a model of several arms: the simulated one's
        model_arm = options.arm
    policy = SoftArmPolicy.from_checkpoint(options.checkpoint, device=options.device, noise_scale=options.noise_scale,
                                           num_steps=options.num_steps, arm=model_arm)  # fmt: skip
    delay = delay_steps(options.latency_ms, static.env.control_hz)
    return ModelAgent(policy, options.replan, delay, options.execution, options.ensemble_decay)


@dataclasses.dataclass(frozen=True)
class PolicyExecutor:
    """A checkpoint's policy driving the arm while the expert labels every step (`softarm sim generate --executor`,
    DAgger), run as `softarm eval` runs it; made in each recording process (`softarm.sim.generate.ExecutorFactory`)."""

    checkpoint: str
    replan: int = EvalOptions.replan
    noise_scale: float = EvalOptions.noise_scale
    arm: str = DEFAULT_ARM

    @property
    def name(self) -> str:
        return f"{self.checkpoint} (re-plan {self.replan}, noise scale {self.noise_scale:g})"

    def __call__(self, static: StaticArm) -> ModelAgent:
        options = EvalOptions(policy="model", checkpoint=self.checkpoint, replan=self.replan,
                              noise_scale=self.noise_scale, arm=self.arm)  # fmt: skip
        return make_agent(options, static)


def reusable_report(options: EvalOptions, out_dir: str | Path) -> dict | None:
    """The eval.json in `out_dir` if it was written for these options, else None: re-runs of the demo and the
    benchmarks skip finished evaluations. Files from before a setting was recorded count as its default."""
    path = Path(out_dir) / EVAL_FILE
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    summary, defaults = report["summary"], EvalOptions()
    recorded = ["task", "policy", "arm", "checkpoint", "episodes"]
    if options.policy == "model":
        recorded += ["latency_ms", "execution", "replan", "noise_scale", "num_steps"]
        recorded += ["ensemble_decay"] if options.execution == "ensemble" else []
    same = all(summary.get(key, getattr(defaults, key)) == getattr(options, key) for key in recorded)
    return report if same and report["episodes"][0]["seed"] == options.seed else None


EPISODES_PER_WORKER = 10  # a spawned worker spends ~8 s importing and loading; an episode takes ~0.7 s


def eval_workers(episodes: int, most: int = 4) -> int:
    """How many processes an evaluation of `episodes` is worth: up to `most` and the CPU count, each with at least
    EPISODES_PER_WORKER episodes so that its start-up pays off."""
    return max(1, min(most, os.cpu_count() or 1, episodes // EPISODES_PER_WORKER))


_WORKER: dict = {}  # per process: the simulator, its static model and the agent of one evaluation, made once


def _close_worker() -> None:
    if _WORKER:
        _WORKER.pop("env").close()
        _WORKER.clear()


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _run(options: EvalOptions, index: int) -> tuple[dict, np.ndarray, Rollout | None, list[float]]:
    """Episode `index` of the evaluation: its row, its error curve, the rollout if it is filmed, the inference times."""
    if _WORKER.get("options") != options:
        _close_worker()
        env = SoftArmEnv(ARMS[options.arm])
        static = StaticArm(env)
        _WORKER.update(options=options, env=env, static=static, agent=make_agent(options, static))
    env, static, agent = _WORKER["env"], _WORKER["static"], _WORKER["agent"]
    task = TASKS[options.task]
    spec = task.sample(options.seed + index, static, env.control_hz)
    timed = len(agent.infer_ms) if isinstance(agent, ModelAgent) else 0
    rollout = run_episode(env, static, task, spec, agent, record_images=index < options.videos)
    row = _episode_row(task, rollout, env.control_hz)
    if isinstance(agent, ModelAgent):
        row |= smoothness(rollout.actions, agent.switches, agent.gaps, env.command_high - env.command_low)
    infer_ms = agent.infer_ms[timed:] if isinstance(agent, ModelAgent) else []
    return row, 1000 * rollout.errors, rollout if rollout.images else None, infer_ms


@contextlib.contextmanager
def eval_pool(workers: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """Worker processes that several evaluations share (None for one worker: episodes run in this process). A fresh
    pool per evaluation pays its imports each time, seconds for a model, more than a short evaluation's episodes;
    a shared one pays them once. Spawned, not forked: a simulator's renderer (EGL) does not survive a fork."""
    if workers <= 1:
        yield None
        return
    threads = max(1, torch.get_num_threads() // workers)
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_limit_threads, initargs=(threads,)) as pool:
        yield pool


def model_label(checkpoint: Path) -> str:
    """How progress names a model: its run and step for a training checkpoint (RUN/checkpoints/400 -> "RUN step
    400"), else its directory (a base, a converted openpi checkpoint)."""
    if checkpoint.parent.name == CHECKPOINTS_DIR and checkpoint.name.isdigit():
        return f"{checkpoint.parent.parent.name} step {checkpoint.name}"
    return checkpoint.name


def evaluate(options: EvalOptions, out_dir: str | Path, pool: multiprocessing.pool.Pool | None = None) -> dict:
    """Run the episodes, write eval.json, summary.png and rollouts.gif into `out_dir`; return the summary. `pool`
    (from `eval_pool`) runs them in its processes instead of `options.workers` fresh ones."""
    if options.task not in TASKS:
        raise ValueError(f"unknown task {options.task!r}; choose one of {sorted(TASKS)}")
    if options.arm not in ARMS:
        raise ValueError(f"unknown arm {options.arm!r}; choose one of {sorted(ARMS)}")
    if options.episodes < 1 or options.replan < 1 or options.workers < 1 or options.num_steps < 1:
        raise ValueError("--episodes, --replan, --workers and --num-steps must be at least 1")
    if options.execution not in EXECUTIONS:
        raise ValueError(f"unknown --execution {options.execution!r}; choose one of {EXECUTIONS}")
    if options.latency_ms < 0:
        raise ValueError(f"--latency-ms must be >= 0, got {options.latency_ms}")
    model_settings = options.latency_ms or options.execution != "sync" or options.noise_scale != 1
    if options.policy != "model" and (model_settings or options.num_steps != EvalOptions.num_steps):
        raise ValueError("--latency-ms, --execution, --noise-scale and --num-steps concern a model's inference; use "
                         "them with --policy model")  # fmt: skip
    if options.policy == "model":
        if not options.checkpoint:
            raise ValueError("--policy model needs --checkpoint DIR (a directory written by softarm train)")
        from softarm.policy import check_checkpoint

        check_checkpoint(options.checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, curves, videos, infer_ms = [], [], [], []
    start = time.monotonic()
    label = options.policy if options.policy != "model" else model_label(Path(options.checkpoint))
    with contextlib.ExitStack() as stack:
        job = functools.partial(_run, options)
        if pool is None:
            pool = stack.enter_context(eval_pool(min(options.workers, options.episodes)))
        if pool is not None:
            outcomes = pool.imap(job, range(options.episodes))
        else:
            stack.callback(_close_worker)
            outcomes = map(job, range(options.episodes))
        for row, curve, rollout, times in tqdm(outcomes, total=options.episodes, unit="episode",
                                                desc=f"eval {options.task} [{label}]"):  # fmt: skip
            rows.append(row)
            curves.append(curve)
            infer_ms += times
            if rollout is not None:
                videos.append(rollout)
    summary = _summary(rows, options) | {"wall_s": time.monotonic() - start}
    if infer_ms:
        summary["infer_ms_median"] = float(np.median(infer_ms))
    (out_dir / EVAL_FILE).write_text(json.dumps({"summary": summary, "episodes": rows}, indent=2))
    save_eval_plot(out_dir / "summary.png", summary, curves, CONTROL_HZ)
    if videos:
        save_rollout_gif(out_dir / "rollouts.gif", videos, [camera.name for camera in ARMS[options.arm].cameras])
    return summary
