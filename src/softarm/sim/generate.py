"""`softarm sim generate`: expert demonstrations in the raw HDF5 format a lab's own recorder would write.

Episode i of a run with seed s is the task's episode `s + i`, so a run is reproducible and an interrupted one
resumes: finished files are kept, a file is written under a temporary name and renamed when complete.
Evaluation draws its episodes from `EVAL_SEED` upward, far from any generated range.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm import tqdm

from softarm.data.raw import RawEpisode, write_episode
from softarm.sim.agents import ExpertAgent
from softarm.sim.env import SoftArmEnv
from softarm.sim.rollout import run_episode
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import TASKS

MANIFEST = "generate.json"
EVAL_SEED = 1_000_000
HOLD_STEPS = 3  # steps recorded after success (the tip held on the target), so demonstrations show stopping


@dataclasses.dataclass
class GenerateResult:
    out_dir: Path
    written: int
    reused: int
    failed: list[int]  # episode seeds the expert did not solve (not written)


def generate(task_name: str, episodes: int, out_dir: str | Path, *, seed: int = 0) -> GenerateResult:
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of {sorted(TASKS)}")
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    if seed + episodes > EVAL_SEED:
        raise ValueError(f"seeds {seed}..{seed + episodes - 1} would overlap the evaluation seeds (>= {EVAL_SEED})")
    out_dir = Path(out_dir)
    manifest = {"task": task_name, "seed": seed}
    if (out_dir / MANIFEST).is_file():
        previous = json.loads((out_dir / MANIFEST).read_text())
        if {k: previous.get(k) for k in manifest} != manifest:
            raise ValueError(
                f"{out_dir} holds episodes of task {previous.get('task')!r} seed {previous.get('seed')}; "
                f"choose another --out for task {task_name!r} seed {seed}"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    task = TASKS[task_name]
    result = GenerateResult(out_dir, 0, 0, [])
    with SoftArmEnv() as env:
        static = StaticArm(env)
        expert = ExpertAgent(static)
        progress = tqdm(range(seed, seed + episodes), desc=f"generate {task_name}", unit="episode")
        for episode_seed in progress:
            path = out_dir / f"{task_name}_{episode_seed:06d}.hdf5"
            if path.is_file():
                result.reused += 1
                continue
            spec = task.sample(episode_seed, static, env.control_hz)
            rollout = run_episode(env, static, task, spec, expert, record_images=True, hold_steps=HOLD_STEPS)
            if not rollout.success:
                result.failed.append(episode_seed)
                continue
            episode = RawEpisode(
                path=path,
                images=rollout.images,
                nodes=rollout.nodes,
                actions=rollout.actions,
                prompt=spec.prompt,
                fps=env.control_hz,
                state=rollout.state,
            )
            partial = path.with_name(f".{path.name}.partial")
            write_episode(partial, episode)
            partial.rename(path)
            result.written += 1
            progress.set_postfix(failed=len(result.failed))
    summary = {**manifest, "episodes": episodes, "written": result.written, "reused": result.reused,
               "expert_failed_seeds": result.failed}  # fmt: skip
    (out_dir / MANIFEST).write_text(json.dumps(summary, indent=2))
    return result
