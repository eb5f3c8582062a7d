"""`softarm sim generate`: expert demonstrations in the raw HDF5 format a lab's own recorder would write.

Episode i of a run with seed s is the task's episode `s + i`, so a run is reproducible and an interrupted one
resumes: finished files are kept, a file is written under a temporary name and renamed when complete. Several
tasks may share a directory (file names and `generate_<task>.json` carry the task), which converts into one
multi-task dataset.
Evaluation draws its episodes from `EVAL_SEED` upward, far from any generated range. `arm` picks one of the built-in
arms (`softarm.sim.arm_model.ARMS`); an episode records the node features that arm senses (naming them in the file
when it senses fewer than the 19), its edges, its actuators' commands and its cameras.

`noise` > 0 records demonstrations with corrections (DART, Laskey et al. 2017): the expert's commands are executed
with Gaussian noise, so the arm strays from the expert's own path, and each step is labelled with the command the
expert gives for the state it is really in. A policy trained on them has seen how to get back onto the path.
`executor` goes further (DAgger, Ross et al. 2011): a learned policy drives the arm and the expert labels every
step, so the states recorded are those the policy's own mistakes lead to; a policy that leans on a cue its
demonstrations share (a tracking arm trails the ball it follows) meets the states where that cue is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import dataclasses
import functools
import json
import multiprocessing
from pathlib import Path
import re
from typing import Protocol

import numpy as np
from tqdm import tqdm

from softarm import arm as arm_schema
from softarm.data.recorder import EpisodeRecorder
from softarm.sim.agents import DEFAULT_PLAN_FROM, PLAN_FROM, ExpertAgent
from softarm.sim.arm_model import ARMS, DEFAULT_ARM
from softarm.sim.env import SoftArmEnv
from softarm.sim.rollout import Agent, run_episode
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import TASKS, is_hard

MANIFEST = "generate_{task}.json"
EVAL_SEED = 1_000_000
HOLD_STEPS = 3  # steps recorded after success (the tip held on the target), so demonstrations show stopping


class ExecutorFactory(Protocol):
    """Makes, once per recording process, the agent that drives the arm while the expert labels; picklable (it
    travels to the recording processes), `name` is what the manifest records."""

    name: str

    def __call__(self, static: StaticArm) -> Agent: ...


@dataclasses.dataclass
class GenerateResult:
    out_dir: Path
    written: int
    reused: int
    failed: list[int]  # episode seeds the expert did not solve (not written)
    # written: the noise (or the executor) made them miss, the labels are still the expert's
    missed_under_noise: list[int] = dataclasses.field(default_factory=list)
    passed_over: int = 0  # seeds left out by `hard_only` (never simulated)


def _episode_path(out_dir: Path, task_name: str, episode_seed: int) -> Path:
    return out_dir / f"{task_name}_{episode_seed:06d}.hdf5"


def recorded_targets(
    files: Sequence[str | Path], task_name: str, arm: str = DEFAULT_ARM
) -> tuple[list[np.ndarray], float]:
    """The target paths [steps + 1, 3] of recorded episodes of `task_name`, drawn again from the seeds their file
    names carry (as `generate` names them): what the simulator knew and a recording does not hold; and the control
    rate."""
    seeds = []
    for file in map(Path, files):
        found = re.fullmatch(rf"{re.escape(task_name)}_(\d+)\.hdf5", file.name)
        if found is None:
            raise ValueError(f"{file}: not a {task_name} recording named by its seed ({task_name}_<seed>.hdf5): its "
                             "targets cannot be drawn again")  # fmt: skip
        seeds.append(int(found.group(1)))
    env = SoftArmEnv(ARMS[arm])
    try:
        static = StaticArm(env)
        return [TASKS[task_name].sample(seed, static, env.control_hz).targets for seed in seeds], env.control_hz
    finally:
        env.close()


def missed_under_noise(out_dir: str | Path) -> list[str]:
    """The files of the episodes recorded into `out_dir` that missed their goal under DART noise (kept for their
    labels, the expert's, but where they end is not the goal), from its manifests."""
    names = []
    for manifest in sorted(Path(out_dir).glob(MANIFEST.format(task="*"))):
        summary = json.loads(manifest.read_text())
        names += [_episode_path(Path(out_dir), summary["task"], seed).name
                  for seed in summary.get("missed_under_noise_seeds", [])]  # fmt: skip
    return names


def _kept_on_miss(noise: float, executor: ExecutorFactory | None) -> bool:
    """Under DART noise or an executor a miss is theirs and the labels are still the expert's: the episode is kept."""
    return bool(noise) or executor is not None


_WORKER: dict = {}  # per process: the simulator, its static model and the expert, opened once


def _close_worker() -> None:
    """Close this process's simulator (and its renderer); a pool's processes end with theirs."""
    if _WORKER:
        _WORKER.pop("env").close()
        _WORKER.clear()


def _record(
    arm: str,
    task_name: str,
    out_dir: Path,
    noise: float,
    plan_from: str,
    hold_steps: int,
    hard_only: bool,
    executor: ExecutorFactory | None,
    episode_seed: int,
) -> tuple[int, bool | None]:
    """Run the expert on one episode (or the executor, the expert labelling) and write it (unless the expert alone
    failed); returns (seed, success), or (seed, None) for an episode `hard_only` passes over
    (`softarm.sim.tasks.is_hard`)."""
    if not _WORKER:
        env = SoftArmEnv(ARMS[arm])
        static = StaticArm(env)
        _WORKER.update(env=env, static=static, expert=ExpertAgent(static, plan_from=plan_from),
                       executor=executor(static) if executor is not None else None)  # fmt: skip
    env, static, expert = _WORKER["env"], _WORKER["static"], _WORKER["expert"]
    task = TASKS[task_name]
    spec = task.sample(episode_seed, static, env.control_hz)
    if hard_only and not is_hard(spec, env.spec):
        return episode_seed, None
    path = _episode_path(out_dir, task_name, episode_seed)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)  # left by a run that was killed
    columns = [arm_schema.feature_index(name) for name in env.spec.measured]
    recorder = EpisodeRecorder(
        partial, fps=env.control_hz, prompt=spec.prompt, edges=arm_schema.chain_edges(env.spec.num_segments),
        compression="gzip",  # small rendered frames: a third of the disk, and the simulator is no real-time rig
        node_features=env.spec.measured if env.spec.measured != arm_schema.SCHEMA else None,  # named when < 19
    )  # fmt: skip

    def record(observation: dict, action: np.ndarray) -> None:
        recorder.add(images=observation["images"], graph_nodes=observation["graph_nodes"][:, columns], action=action,
                     state=observation["state"])  # fmt: skip

    try:
        rollout = run_episode(env, static, task, spec, expert, hold_steps=hold_steps, action_noise=noise,
                              on_step=record, executor=_WORKER["executor"])  # fmt: skip
    except BaseException:
        recorder.abort()
        raise
    if rollout.success or _kept_on_miss(noise, executor):
        recorder.close()
        partial.rename(path)
    else:
        recorder.abort()
    return episode_seed, rollout.success


def generate(
    task_name: str,
    episodes: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    noise: float = 0.0,
    workers: int = 1,
    arm: str = DEFAULT_ARM,
    plan_from: str = DEFAULT_PLAN_FROM,
    hold_steps: int = HOLD_STEPS,
    hard_only: bool = False,
    executor: ExecutorFactory | None = None,
) -> GenerateResult:
    """Record `episodes` expert episodes of `task_name` on `arm` (seeds `seed`...) into `out_dir`, in `workers`
    processes; `plan_from` is the expert's (`ExpertAgent`); each episode ends `hold_steps` after success. With
    `hard_only`, only the seeds whose episode is hard (`softarm.sim.tasks.is_hard`: a far ball or a light payload)
    are recorded: fewer than `episodes` files, the rest passed over. `executor` drives the arm instead of the expert,
    which still labels every step (DAgger); every episode is then kept, whether the executor succeeded or not."""
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of {sorted(TASKS)}")
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {sorted(ARMS)}")
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    if noise < 0:
        raise ValueError(f"--noise must be >= 0 (standard deviation of the executed command), got {noise}")
    if plan_from not in PLAN_FROM:
        raise ValueError(f"--plan-from must be one of {PLAN_FROM}, got {plan_from!r}")
    if hold_steps < 0:
        raise ValueError(f"--hold-steps must be >= 0, got {hold_steps}")
    if seed + episodes > EVAL_SEED:
        raise ValueError(f"seeds {seed}..{seed + episodes - 1} would overlap the evaluation seeds (>= {EVAL_SEED})")
    out_dir = Path(out_dir)
    manifest = {"task": task_name, "seed": seed, "noise": noise, "arm": arm, "plan_from": plan_from,
                "hold_steps": hold_steps, "hard_only": hard_only,
                "executor": executor.name if executor is not None else None}  # fmt: skip
    manifest_path = out_dir / MANIFEST.format(task=task_name)  # one per task: a directory may hold a mixture
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if previous:  # written before there were other arms, plans from rest, other hold times
        previous = {"arm": DEFAULT_ARM, "plan_from": "current", "hold_steps": HOLD_STEPS, "hard_only": False,
                    "executor": None, **previous}  # fmt: skip
    if previous and {k: previous.get(k) for k in manifest} != manifest:
        # an executor is named only where one drove
        named = [k for k in manifest if k != "task" and (k != "executor" or previous.get(k) or manifest[k])]
        was, now = (" ".join(f"{k} {m.get(k)!r}" for k in named) for m in (previous, manifest))
        raise ValueError(f"{out_dir} holds episodes of task {task_name!r} {was}; choose another --out for {now}")
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [s for s in range(seed, seed + episodes) if not _episode_path(out_dir, task_name, s).is_file()]
    result = GenerateResult(out_dir, 0, episodes - len(todo), [])
    # misses under noise among the episodes kept from an earlier run stay listed
    result.missed_under_noise = [
        s for s in previous.get("missed_under_noise_seeds", []) if seed <= s < seed + episodes and s not in todo
    ]
    progress = tqdm(total=episodes, initial=result.reused, desc=f"generate {task_name}", unit="episode")
    job = functools.partial(_record, arm, task_name, out_dir, noise, plan_from, hold_steps, hard_only, executor)
    kept_on_miss = _kept_on_miss(noise, executor)
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(todo) > 1:
            # spawn: each worker opens its own simulator and renderer (EGL contexts do not survive a fork)
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(min(workers, len(todo))))
            outcomes = pool.imap(job, todo)
        else:
            stack.callback(_close_worker)  # in this process: do not keep a renderer open after generating
            outcomes = map(job, todo)
        for episode_seed, success in outcomes:
            progress.update()
            if success is None:
                result.passed_over += 1
                continue
            if not success:
                (result.missed_under_noise if kept_on_miss else result.failed).append(episode_seed)
            result.written += success or kept_on_miss
            progress.set_postfix(failed=len(result.failed), missed_under_noise=len(result.missed_under_noise))
    progress.close()
    summary = {**manifest, "episodes": episodes, "written": result.written, "reused": result.reused,
               "expert_failed_seeds": result.failed, "missed_under_noise_seeds": result.missed_under_noise,
               **({"passed_over": result.passed_over} if hard_only else {})}  # fmt: skip
    manifest_path.write_text(json.dumps(summary, indent=2))
    return result
