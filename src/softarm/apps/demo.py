"""`softarm demo`: the whole system on the built-in simulated arm, on a CPU, in one command.

simulate expert episodes -> convert them into one dataset -> train the small real PI0Pytorch twice (with the graph,
and without it: same data, same seed, same steps) -> closed-loop evaluation of both next to the expert, a
payload-blind expert and random pressures -> report.md with plots. Every stage writes into OUT and is skipped when
its output is already there, so a re-run only does what is missing (an interrupted training resumes from its last
checkpoint).

The tasks ask for different things of a policy: `reach` to find a ball anywhere in the images, `choose` to read
the prompt, `follow` to keep correcting. Every episode carries a random payload on the tip: the same pressures then
bend the arm differently, so a policy that only knows its pressures (the state slot) must guess where its tip is,
while the graph says it. Demonstrations are recorded with DART noise, so the policies see how to recover. By
default the models learn `choose` and the baselines show all three tasks: on 2 CPU cores the small model does not
learn to find a ball in the images (docs/cpu_model_search.md), and training on a mixture with `reach` and `follow`
costs `choose` most of its success; `--episodes reach=100` adds a task to the training mixture.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import os
from pathlib import Path
import shutil

from softarm.apps.demo_report import write_report
from softarm.apps.evaluate import EvalOptions, evaluate, reusable_report
from softarm.data.convert import ConvertOptions, convert
from softarm.layout import CHECKPOINTS_DIR, EVAL_FILE, META_FILE
from softarm.sim.agents import DEFAULT_PLAN_FROM
from softarm.sim.arm_model import ARMS, DEFAULT_ARM
from softarm.sim.generate import generate
from softarm.train.config import load_config
from softarm.train.loop import train

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"
# name -> model.overrides.fusion; "none" is the base PI0Pytorch with the state slot only
MODELS = {"graph": "state", "no_graph": "none"}
BASELINES = ("expert", "expert-blind", "random")
# openpi's image slots <- the pneumatic arm's cameras: two fixed views that together give depth, and the wrist camera.
# Another arm's cameras go to the slots in the order of their names, as `softarm convert` maps them by default.
CAMERAS = {DEFAULT_ARM: {"base_0_rgb": "base", "left_wrist_0_rgb": "tip", "right_wrist_0_rgb": "side"}}


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    # demonstrations per task; the models train on all of them (a mixture if several tasks)
    episodes: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"choose": 150})
    noise: float = 0.05  # DART: std of the noise on the executed commands while recording
    plan_from: str = DEFAULT_PLAN_FROM  # where the expert's solver starts (softarm.sim.agents.ExpertAgent)
    val_episodes: int = 20
    # closed-loop episodes per policy and task (0 leaves a task out): 100 on choose, for intervals that can separate
    # the two models; fewer on follow, whose expert re-plans every step (about 1.4 s per episode). The models are
    # scored on the tasks they learned, the baselines on all.
    eval_episodes: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"reach": 50, "choose": 100,
                                                                                  "follow": 30})  # fmt: skip
    seeds: int = 1  # training seeds per model; the report pools their evaluations
    config: Path = DEFAULT_CONFIG
    overrides: tuple[str, ...] = ()  # dotted config overrides for both trainings, e.g. ("train.steps=50",)
    arm: str = DEFAULT_ARM  # one of softarm.sim.arm_model.ARMS


def _stage(number: int, text: str) -> None:
    print(f"[{number}/5] {text}", flush=True)


def _train(run_dir: Path, fusion: str, seed: int, prepared: Path, options: DemoOptions) -> Path:
    overrides = [f"data.path={prepared}", f"train.out_dir={run_dir}", f"model.overrides.fusion={fusion}",
                 f"train.seed={seed}"]  # fmt: skip
    config = load_config(options.config, [*overrides, *options.overrides])
    final = run_dir / CHECKPOINTS_DIR / str(config.train.steps)
    if final.is_dir():
        print(f"  {run_dir.name}: {final} exists, reused")
    else:
        train(config)
    return final


def _evaluate(task: str, policy: str, checkpoint: Path | None, eval_dir: Path, episodes: int, arm: str) -> Path:
    eval_options = EvalOptions(task=task, episodes=episodes, policy="model" if checkpoint else policy, arm=arm,
                               checkpoint=checkpoint and str(checkpoint), videos=2 if checkpoint else 1)  # fmt: skip
    if reusable_report(eval_options, eval_dir) is not None:
        print(f"  {task} / {eval_dir.name}: {eval_dir / EVAL_FILE} exists, reused")
    else:
        evaluate(eval_options, eval_dir)
    return eval_dir / EVAL_FILE


def run_demo(out: str | Path, options: DemoOptions = DemoOptions()) -> dict[str, dict[str, dict]]:
    """Run (or finish) the demo in `out`; returns {task: {policy: evaluation summary}} (first seed of a model)."""
    out = Path(out)
    if not Path(options.config).is_file():
        raise FileNotFoundError(f"demo config {options.config} not found; pass --config configs/demo.yaml")
    if options.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {options.seeds}")
    if options.arm not in ARMS:
        raise ValueError(f"unknown arm {options.arm!r}; choose one of {sorted(ARMS)}")
    arm = ARMS[options.arm]
    trained = list(options.episodes)
    missing = [task for task in trained if options.eval_episodes.get(task, 0) < 1]
    if missing:
        raise ValueError(f"no evaluation episodes for {', '.join(missing)}: give --eval-episodes TASK=COUNT >= 1")
    tasks = [task for task, count in options.eval_episodes.items() if count > 0]
    noise = f", commands executed with noise {options.noise}" if options.noise else ""
    _stage(1, f"simulating expert episodes ({', '.join(f'{t} {n}' for t, n in options.episodes.items())}){noise} "
              "(MuJoCo)")  # fmt: skip
    for task, count in options.episodes.items():
        generated = generate(task, count, out / "raw", seed=0, noise=options.noise, workers=min(4, os.cpu_count() or 1),
                             arm=options.arm, plan_from=options.plan_from)  # fmt: skip
        print(f"  {task}: {generated.written} episodes written, {generated.reused} reused")
    prepared = out / "prepared"
    _stage(2, "converting them into one training dataset")
    if (prepared / META_FILE).is_file():
        print(f"  {prepared} exists, reused")
    else:
        cameras = CAMERAS.get(options.arm)
        convert(out / "raw", prepared, ConvertOptions(val_episodes=options.val_episodes, cameras=cameras))
    _stage(3, f"training the small real pi0 on {' + '.join(trained)}, with the graph and without it "
              f"({options.seeds} seed(s))")  # fmt: skip
    runs = {name: [out / "runs" / (name if seed == 0 else f"{name}_seed{seed}") for seed in range(options.seeds)]
            for name in MODELS}  # fmt: skip
    checkpoints = {
        name: [_train(run_dir, MODELS[name], seed, prepared, options) for seed, run_dir in enumerate(run_dirs)]
        for name, run_dirs in runs.items()
    }
    counts = ", ".join(f"{task} {options.eval_episodes[task]}" for task in tasks)
    _stage(4, f"closed-loop evaluation on held-out episodes, per policy: {counts}")
    evaluations: dict[str, dict[str, list[Path]]] = {}
    for task in tasks:
        evaluations[task] = {}
        for policy in ("expert", "expert-blind", *(MODELS if task in trained else ()), "random"):
            targets = [(None, out / "eval" / task / policy)] if policy in BASELINES else [
                (checkpoint, out / "eval" / task / run.name) for checkpoint, run in
                zip(checkpoints[policy], runs[policy], strict=True)
            ]  # fmt: skip
            count = options.eval_episodes[task]
            evaluations[task][policy] = [_evaluate(task, policy, ck, d, count, options.arm) for ck, d in targets]
    _stage(5, "writing the report")
    untrained = [task for task in tasks if task not in trained]
    dart = (f", its commands executed with Gaussian noise of std {options.noise} while the expert's own commands "
            "are the labels (DART)") if options.noise else ""  # fmt: skip
    sensed = f"{len(arm.measured)} of the 19" if len(arm.measured) < 19 else "all 19"
    sensed += " node features sensed"
    cameras = ", ".join(f"{c.name} ({'wrist' if c.wrist else 'fixed'})" for c in arm.cameras)
    intro = (
        f"Arm: `{options.arm}`, {arm.num_segments} segments, {arm.num_actuators} {arm.actuation}, {sensed}; "
        f"cameras {cameras}, {arm.image_size[0]}x{arm.image_size[1]}. "
        f"Demonstrations: {', '.join(f'{n} {t}' for t, n in options.episodes.items())} episodes of the scripted "
        f"expert{dart}. Every episode carries a random 0-50 g payload on the tip, unknown to the policies. "
        "Both models are the same small real PI0Pytorch (configs/demo.yaml), trained from scratch on the same "
        f"episodes with the same seed and steps; 'pi0 + graph' also reads the {arm.num_segments}-node graph (fusion "
        f"`state`), 'pi0, no graph' has only the {arm.num_actuators} actuator states in its state slot. The "
        "payload-blind expert plans for 25 g whatever the tip carries: what a controller without shape sensing "
        "achieves. Evaluation episodes are held out (seeds from 1,000,000)."
    )
    if untrained:
        intro += (
            f" No model was trained on {' or '.join(untrained)} in this run; `--episodes TASK=COUNT` adds a task to "
            "the training mixture, and docs/cpu_model_search.md says why the default trains on choose alone."
        )
    for task in tasks:  # the graph model's rollouts next to the report (the expert's where no model was trained)
        gif = out / "eval" / task / ("graph" if task in trained else "expert") / "rollouts.gif"
        if gif.is_file():
            shutil.copyfile(gif, out / f"rollouts_{task}.gif")
    write_report(out, evaluations, runs, intro=intro, cameras=[camera.name for camera in arm.cameras])
    return {
        task: {policy: json.loads(files[0].read_text())["summary"] for policy, files in policies.items()}
        for task, policies in evaluations.items()
    }
