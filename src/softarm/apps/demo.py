"""`softarm demo`: the whole system on the built-in simulated arm, on a CPU, in one command.

simulate expert episodes -> convert them into one dataset -> fine-tune the pretrained base models twice (the base
with the graph, and the base without it, pretrained alike: same data, same seed, same steps) -> closed-loop
evaluation of the base and both fine-tuned models next to the expert, a payload-blind expert and random pressures
-> report.md with plots. Every stage writes into OUT and is skipped when its output is already there, so a re-run
only does what is missing (an interrupted training resumes from its last checkpoint).

The tasks ask for different things of a policy: `reach` to find a ball anywhere in the images, `choose` to read
the prompt, `follow` to keep correcting. Every episode carries a random payload on the tip: the same pressures then
bend the arm differently, so a policy that only knows its pressures (the state slot) must guess where its tip is,
while the graph says it. Demonstrations are recorded with DART noise, so the policies see how to recover.

The bases (models/sim_base, `softarm pretrain`, docs/sim_base.md) learnt to see and reach on `reach` (their
recipe can add `follow`; the shipped ones never saw it) and never saw `choose`: fine-tuning teaches it, as a π0 user
fine-tunes pi0_base on a task, with some `reach` episodes in the mixture so that what the base knew stays.
`base=None` trains the small `tiny` model from scratch instead (configs/demo.yaml, choose alone: a model trained from
scratch in minutes does not learn to find a ball in the images, docs/cpu_model_search.md).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import multiprocessing.pool
import os
from pathlib import Path
import shutil

from softarm.apps.demo_report import write_report
from softarm.apps.evaluate import EvalOptions, eval_pool, eval_workers, evaluate, reusable_report
from softarm.apps.pretrain import BASE_FILE, SHIPPED
from softarm.data.convert import ConvertOptions, convert
from softarm.layout import CHECKPOINTS_DIR, CONFIG_FILE, EVAL_FILE, META_FILE
from softarm.model_config import GEMMA_FIELDS
from softarm.sim.agents import DEFAULT_PLAN_FROM
from softarm.sim.arm_model import ARMS, CAMERA_SLOTS, DEFAULT_ARM
from softarm.sim.generate import generate
from softarm.train.config import load_config
from softarm.train.loop import train

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
DEFAULT_CONFIG = CONFIGS / "finetune.yaml"  # from the bases
SCRATCH_CONFIG = CONFIGS / "demo.yaml"  # from scratch
# name -> model.overrides.fusion; "none" is the base PI0Pytorch with the state slot only
MODELS = {"graph": "state", "no_graph": "none"}
BASELINES = ("expert", "expert-blind", "random")
BASE_NUM_STEPS = 3  # the flow's Euler steps for models fine-tuned from the bases


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    # the pretrained bases, one directory per model (graph, no_graph); None trains the models from scratch
    base: Path | None = SHIPPED
    # demonstrations per task; the models train on all of them (a mixture if several tasks). None: choose 150, and
    # from the bases reach 100 too, so that fine-tuning keeps what the base knew
    episodes: Mapping[str, int] | None = None
    noise: float = 0.05  # DART: std of the noise on the executed commands while recording
    plan_from: str = DEFAULT_PLAN_FROM  # where the expert's solver starts (softarm.sim.agents.ExpertAgent)
    val_episodes: int = 20
    # closed-loop episodes per policy and task (0 leaves a task out): 100 on choose, for intervals that can separate
    # the two models; fewer on follow, whose expert re-plans every step (about 1.4 s per episode). The models are
    # scored on the tasks they learned, the baselines on all.
    eval_episodes: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"reach": 100, "choose": 100,
                                                                                  "follow": 30})  # fmt: skip
    seeds: int = 1  # training seeds per model; the report pools their evaluations
    config: Path | None = None  # None: configs/finetune.yaml from the bases, configs/demo.yaml from scratch
    overrides: tuple[str, ...] = ()  # dotted config overrides for both trainings, e.g. ("train.steps=50",)
    arm: str = DEFAULT_ARM  # one of softarm.sim.arm_model.ARMS
    # the flow's starting noise per task for the models (1 = openpi's sampling, also for a task not named). None:
    # from the bases 0 on every task, which holds one pressure pattern per ball, what reach's 10 mm needs
    # (docs/cpu_model_search.md); from scratch openpi's 1, as the figures of that comparison were measured
    noise_scale: Mapping[str, float] | None = None
    # Euler steps integrating the models' flow. None: from the bases 3, measured more precise on choose than openpi's
    # 10 and as precise on reach (docs/sim_base.md); from scratch 10, as that comparison was measured
    num_steps: int | None = None

    def __post_init__(self) -> None:
        if self.episodes is None:
            object.__setattr__(self, "episodes", {"choose": 150, **({"reach": 100} if self.base else {})})
        if self.config is None:
            object.__setattr__(self, "config", DEFAULT_CONFIG if self.base else SCRATCH_CONFIG)
        if self.noise_scale is None:
            object.__setattr__(
                self, "noise_scale", dict.fromkeys(("reach", "choose", "follow"), 0.0) if self.base else {}
            )
        if self.num_steps is None:
            object.__setattr__(self, "num_steps", BASE_NUM_STEPS if self.base else EvalOptions.num_steps)


def _stage(number: int, text: str) -> None:
    print(f"[{number}/5] {text}", flush=True)


def _train(run_dir: Path, name: str, seed: int, prepared: Path, options: DemoOptions) -> Path:
    overrides = [f"data.path={prepared}", f"train.out_dir={run_dir}", f"model.overrides.fusion={MODELS[name]}",
                 f"train.seed={seed}"]  # fmt: skip
    if options.base:  # the same arm as the base's: its normalisation too
        base = options.base / name
        overrides += [f"train.init_from={base}", f"data.norm_stats={base}", *_base_towers(base)]
    config = load_config(options.config, [*overrides, *options.overrides])
    final = run_dir / CHECKPOINTS_DIR / str(config.train.steps)
    if final.is_dir():
        print(f"  {run_dir.name}: {final} exists, reused")
    else:
        train(config)
    return final


def _base_towers(base: Path) -> list[str]:
    """Overrides giving the model the base's Gemma towers, whatever their size (configs/finetune.yaml names a
    preset, and a base may have been pretrained wider than it)."""
    saved = json.loads((base / CONFIG_FILE).read_text())
    return [f"model.overrides.{key}={saved[key]}" for key in GEMMA_FIELDS]


def _evaluate(
    task: str,
    policy: str,
    checkpoint: Path | None,
    eval_dir: Path,
    episodes: int,
    options: DemoOptions,
    pool: multiprocessing.pool.Pool | None,
    videos: int,
) -> Path:
    model = checkpoint is not None
    eval_options = EvalOptions(task=task, episodes=episodes, policy="model" if model else policy, arm=options.arm,
                               checkpoint=checkpoint and str(checkpoint), videos=videos,
                               noise_scale=options.noise_scale.get(task, 1.0) if model else 1.0,
                               num_steps=options.num_steps if model else EvalOptions.num_steps)  # fmt: skip
    if reusable_report(eval_options, eval_dir) is not None:
        print(f"  {task} / {eval_dir.name}: {eval_dir / EVAL_FILE} exists, reused")
    else:
        evaluate(eval_options, eval_dir, pool)
    return eval_dir / EVAL_FILE


def _scored(
    eval_root: Path, policy: str, options: DemoOptions, checkpoints: dict[str, list[Path]], runs: dict[str, list[Path]]
) -> list[tuple[Path | None, Path]]:
    """(checkpoint or None for a scripted policy, its evaluation directory) for every run of `policy` on a task."""
    if policy in BASELINES:
        return [(None, eval_root / policy)]
    if policy == "base":  # the graph base alone, before fine-tuning
        return [(Path(options.base) / "graph", eval_root / "base")]
    pairs = zip(checkpoints[policy], runs[policy], strict=True)
    return [(checkpoint, eval_root / run.name) for checkpoint, run in pairs]


def _base_card(options: DemoOptions) -> dict[str, dict]:
    """The bases' base.json, checked: one directory per model, each a base directory `softarm pretrain` wrote."""
    cards = {}
    for name in MODELS:
        path = Path(options.base) / name / BASE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent} is not a base of `softarm pretrain` ({BASE_FILE} missing); "
                                    "--from-scratch trains without one")  # fmt: skip
        cards[name] = json.loads(path.read_text())
        if cards[name]["arm"] != options.arm:
            raise ValueError(f"{path.parent} was pretrained on the {cards[name]['arm']} arm, not {options.arm!r}; "
                             "--from-scratch trains the other arm without a base")  # fmt: skip
    return cards


def run_demo(out: str | Path, options: DemoOptions = DemoOptions()) -> dict[str, dict[str, dict]]:
    """Run (or finish) the demo in `out`; returns {task: {policy: evaluation summary}} (first seed of a model)."""
    out = Path(out)
    if not Path(options.config).is_file():
        raise FileNotFoundError(f"demo config {options.config} not found; pass --config configs/demo.yaml")
    if options.seeds < 1 or options.num_steps < 1:
        raise ValueError(f"--seeds and --num-steps must be at least 1, got {options.seeds} and {options.num_steps}")
    if options.arm not in ARMS:
        raise ValueError(f"unknown arm {options.arm!r}; choose one of {sorted(ARMS)}")
    arm = ARMS[options.arm]
    cards = _base_card(options) if options.base else {}
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
        cameras = CAMERA_SLOTS.get(options.arm)
        convert(out / "raw", prepared, ConvertOptions(val_episodes=options.val_episodes, cameras=cameras))
    start = f"fine-tuning the pretrained bases ({options.base})" if options.base else "training the small real pi0"
    _stage(3, f"{start} on {' + '.join(trained)}, with the graph and without it ({options.seeds} seed(s))")
    runs = {name: [out / "runs" / (name if seed == 0 else f"{name}_seed{seed}") for seed in range(options.seeds)]
            for name in MODELS}  # fmt: skip
    checkpoints = {
        name: [_train(run_dir, name, seed, prepared, options) for seed, run_dir in enumerate(run_dirs)]
        for name, run_dirs in runs.items()
    }
    counts = ", ".join(f"{task} {options.eval_episodes[task]}" for task in tasks)
    _stage(4, f"closed-loop evaluation on held-out episodes, per policy: {counts}")
    evaluations: dict[str, dict[str, list[Path]]] = {}
    filmed: dict[str, Path] = {}  # per task, the one evaluation filmed: its rollouts go next to the report
    # one set of processes for every evaluation: each pays its imports once
    with eval_pool(eval_workers(max(options.eval_episodes[task] for task in tasks))) as pool:
        for task in tasks:
            evaluations[task] = {}
            # from the bases every model has seen every skill but choose (which fine-tuning teaches): all are scored
            models = MODELS if options.base or task in trained else ()
            # only the rollouts the report shows are filmed (rendering every step of an episode): the graph model's,
            # or the expert's where no model is scored
            shown = filmed[task] = out / "eval" / task / ("graph" if models else "expert")
            films, count = 2 if models else 1, options.eval_episodes[task]
            for policy in ("expert", "expert-blind", *(["base"] if options.base else []), *models, "random"):
                scored = _scored(out / "eval" / task, policy, options, checkpoints, runs)
                evaluations[task][policy] = [
                    _evaluate(task, policy, checkpoint, eval_dir, count, options, pool, films * (eval_dir == shown))
                    for checkpoint, eval_dir in scored  # the one shown: `films` episodes, the others none
                ]
    _stage(5, "writing the report")
    intro = _intro(options, arm, cards, [task for task in tasks if task not in trained])
    for task, directory in filmed.items():
        if (directory / "rollouts.gif").is_file():
            shutil.copyfile(directory / "rollouts.gif", out / f"rollouts_{task}.gif")
    write_report(out, evaluations, runs, intro=intro, cameras=[camera.name for camera in arm.cameras])
    return {
        task: {policy: json.loads(files[0].read_text())["summary"] for policy, files in policies.items()}
        for task, policies in evaluations.items()
    }


def _intro(options: DemoOptions, arm, cards: dict[str, dict], untrained: list[str]) -> str:
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
    )
    if cards:
        graph = cards["graph"]
        tasks = " and ".join(f"`{t}`" for t in graph["data"]["tasks"])
        intro += (
            f"Both models start from a base pretrained once in simulation (`{options.base}`, `softarm pretrain`, "
            f"docs/sim_base.md): the `tiny_vision` PI0Pytorch trained from scratch for {graph['steps']} steps on "
            f"{graph['data']['episodes']} expert episodes whose prompts are {tasks}; it never saw `choose`. The "
            "graph base and the no-graph base were pretrained alike (same data, seed and schedule), so neither "
            f"side starts from weights that saw what it lacks; each is fine-tuned here ({Path(options.config).name}) "
            "on the same episodes with the same seed and steps. 'base' is the graph base alone, before "
            "fine-tuning. "
        )
    else:
        intro += (
            f"Both models are the same small real PI0Pytorch ({Path(options.config).name}), trained from scratch on "
            "the same episodes with the same seed and steps. "
        )
    intro += (
        f"'pi0 + graph' also reads the {arm.num_segments}-node graph (fusion `state`), 'pi0, no graph' has only the "
        f"{arm.num_actuators} actuator states in its state slot. The payload-blind expert plans for 25 g whatever "
        "the tip carries: what a controller without shape sensing achieves. Evaluation episodes are held out (seeds "
        "from 1,000,000)"
    )
    scales = {task: scale for task, scale in options.noise_scale.items() if scale != 1}
    if scales:
        intro += "; models sample " + ", ".join(f"{task} with noise scale {s:g}" for task, s in scales.items())
    if options.num_steps != EvalOptions.num_steps:
        intro += f"; the flow is integrated in {options.num_steps} steps (openpi: {EvalOptions.num_steps})"
    intro += "."
    if untrained:
        intro += (
            f" No model was trained on {' or '.join(untrained)} in this run; `--episodes TASK=COUNT` adds a task to "
            "the training mixture, and docs/cpu_model_search.md says why the default from scratch trains on choose "
            "alone."
        )
    return intro
