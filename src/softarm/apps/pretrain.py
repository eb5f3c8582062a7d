"""`softarm pretrain`: the simulator's base model, pretrained once from scratch so that fine-tuning starts from a model
that sees, as a π0 user starts from pi0_base.

record demonstrations (reach; optionally follow and the hard reach seeds; never choose, the task the demo fine-tunes
on) -> one dataset, with a tokenizer that knows every task's words -> warm up the vision tower on where each reach
episode's tip ends (softarm.train.vision_warmup: the policy then starts from a tower that sees) -> train tiny_vision
with the graph and without it from that tower, frozen, same data, seed and schedule (configs/pretrain.yaml) ->
finish each with the tower trained too, from its EMA weights -> score each closed loop on the three tasks -> export
each as a base directory: model config, EMA weights, norm stats, tokenizer, data spec and `base.json` (recipe,
training figures, scores), loadable by `train.init_from`, `softarm eval` and `softarm serve`. Every stage is skipped
when its output is there, and an interrupted training resumes, so the same command finishes what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import os
from pathlib import Path
import shutil

import numpy as np
import torch

from softarm import layout
from softarm.apps.evaluate import EvalOptions, eval_workers, evaluate, reusable_report
from softarm.data.convert import ConvertOptions, convert
from softarm.data.prepared import episode_name
from softarm.model import PI0GraphPytorch
from softarm.model_config import plain
from softarm.sim.arm_model import ARMS, CAMERA_SLOTS, DEFAULT_ARM
from softarm.sim.generate import generate, missed_under_noise
from softarm.sim.tasks import TASKS, task_prompts
from softarm.train.config import TrainConfig, load_config
from softarm.train.loop import train
from softarm.train.metrics import read_metrics
from softarm.train.vision_warmup import WarmupOptions, vision_state, warm_up_vision
from softarm.weights import save_model

PROJECT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = PROJECT / "configs" / "pretrain.yaml"
SHIPPED = PROJECT / "models" / "sim_base"  # the bases that come with the project
BASE_FILE = "base.json"
MODELS = {"graph": "state", "no_graph": "none"}  # name -> model.overrides.fusion
HARD_SEED = 100_000  # the far-ball / light-payload reach episodes are drawn from here (the others from 0)


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
    # expert demonstrations per task, seeds from 0
    episodes: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"reach": 1200})
    # further reach seeds (from HARD_SEED) of which only the hard ones are recorded (`sim.tasks.is_hard`): the far
    # balls and light payloads a policy misses most
    hard_reach: int = 800
    # DART: std of the noise on the executed commands while recording, labels still the expert's (what `softarm
    # demo` records for fine-tuning), for every task or per task ({task: std}, the hard reach seeds reach's, a task not
    # named clean); 0: clean demonstrations, as the shipped bases were pretrained on
    noise: float | Mapping[str, float] = 0.0
    val_episodes: int = 100
    # steps of the vision warm-up before the policy trains (0: none, the tower learns inside the policy), its
    # readout ("flat" or "attend", thrown away afterwards) and whether it also learns the goal seen from the tip
    # (softarm.train.vision_warmup; docs/sim_base.md measures both)
    vision_steps: int = 2000
    vision_readout: str = "flat"
    vision_relative: bool = True
    # a last phase with everything trained (the tower too) from the frozen phase's EMA weights, at a lower peak
    # rate: the tower then learns what the policy needs to see (docs/sim_base.md: +2 points on reach); 0: none
    finish_steps: int = 1500
    finish_lr: float = 3e-4
    # closed-loop episodes per base and task, on held-out seeds, sampled with `noise_scale`
    eval_episodes: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"reach": 100, "follow": 30,
                                                                                  "choose": 30})  # fmt: skip
    noise_scale: float = 0.0  # deterministic sampling: what reach needs (docs/cpu_model_search.md)
    models: tuple[str, ...] = tuple(MODELS)
    config: Path = DEFAULT_CONFIG
    overrides: tuple[str, ...] = ()  # dotted config overrides for every training
    export: Path | None = None  # where the bases go, one directory per model (default: OUT/base)
    arm: str = DEFAULT_ARM
    workers: int = 2  # simulator processes recording demonstrations


def missing_bases(directory: str | Path) -> list[str]:
    """The models that have no base in `directory` (a base is a directory with base.json, one per model)."""
    return [name for name in MODELS if not (Path(directory) / name / BASE_FILE).is_file()]


def _shown(path: str | Path, out: Path) -> str:
    """A path as a card records it: relative to the project, or to the pretraining's output as OUT/..., so a shipped
    card names no machine."""
    path = Path(path).resolve()
    if path.is_relative_to(PROJECT):
        return str(path.relative_to(PROJECT))
    return str("OUT" / path.relative_to(out.resolve())) if path.is_relative_to(out.resolve()) else str(path)


def _card_config(config: TrainConfig, out: Path) -> dict:
    """The training config as the card records it: its paths as `_shown` writes them."""
    values = config.to_dict()
    for section, key in (("data", "path"), ("data", "tokenizer"), ("train", "out_dir"), ("train", "init_from")):
        if values[section][key]:
            values[section][key] = _shown(values[section][key], out)
    return values


def task_noise(options: PretrainOptions, task: str) -> float:
    """The DART noise `task`'s demonstrations are recorded with."""
    return float(options.noise.get(task, 0.0) if isinstance(options.noise, Mapping) else options.noise)


def _stage(number: int, text: str) -> None:
    print(f"[{number}/6] {text}", flush=True)


def _record(out: Path, options: PretrainOptions) -> list[Path]:
    """The raw directories: one for the plain episodes of every task, one for the hard reach episodes (a directory
    holds one seed range per task)."""
    workers = min(options.workers, os.cpu_count() or 1)
    raw, hard = out / "raw", out / "raw_hard"
    for task, count in options.episodes.items():
        result = generate(task, count, raw, seed=0, workers=workers, arm=options.arm, noise=task_noise(options, task))
        print(f"  {task}: {result.written} episodes written, {result.reused} reused")
    if options.hard_reach:
        result = generate("reach", options.hard_reach, hard, seed=HARD_SEED, workers=workers, arm=options.arm,
                          noise=task_noise(options, "reach"), hard_only=True)  # fmt: skip
        print(f"  hard reach: {result.written} written, {result.reused} reused, {result.passed_over} passed over")
    return [raw, hard] if options.hard_reach else [raw]


def _prepare(out: Path, sources: list[Path], options: PretrainOptions) -> tuple[Path, Path]:
    """The dataset, and a tokenizer for the words of every task on every built-in arm: a model fine-tuned from the
    base keeps its token ids, so the base must be able to spell the prompts it has not seen yet."""
    from softarm.data.tokenizer import train_prompt_tokenizer

    prepared, tokenizer = out / "prepared", out / layout.TOKENIZER_FILE
    if not tokenizer.is_file():
        train_prompt_tokenizer(task_prompts(list(ARMS.values())), tokenizer)
    if (prepared / layout.META_FILE).is_file():
        print(f"  {prepared} exists, reused")
    else:
        options_ = ConvertOptions(val_episodes=options.val_episodes, cameras=CAMERA_SLOTS.get(options.arm))
        result = convert(sources, prepared, options_)
        print(f"  kept {len(result.kept)} episodes, skipped {len(result.skipped)}; samples {result.samples}")
    return prepared, tokenizer


def _config(name: str, prepared: Path, tokenizer: Path, out: Path, options: PretrainOptions,
            init: Path | None = None, finish: bool = False) -> TrainConfig:  # fmt: skip
    run = out / "runs" / (f"{name}_finish" if finish else name)
    overrides = [f"data.path={prepared}", f"data.tokenizer={tokenizer}", f"train.out_dir={run}",
                 f"model.overrides.fusion={MODELS[name]}", *([f"train.init_from={init}"] if init else [])]  # fmt: skip
    if not options.vision_steps:  # no warm-up: the tower must learn inside the policy
        overrides.append("train.freeze=[]")
    finishing = [f"train.steps={options.finish_steps}", "train.freeze=[]", f"optim.lr={options.finish_lr}"]
    return load_config(options.config, [*overrides, *options.overrides, *(finishing if finish else [])])


def missed_episodes(sources: list[Path]) -> tuple[str, ...]:
    """The episodes of `sources` that missed under noise, named as the dataset converted from them names them
    (`episode_name`: the file, after its source when there are several)."""
    several = len(sources) > 1
    return tuple(episode_name({"source": str(source), "file": file} if several else {"file": file})
                 for source in sources for file in missed_under_noise(source))  # fmt: skip


def _warm_up(prepared: Path, tokenizer: Path, out: Path, sources: list[Path],
             options: PretrainOptions) -> tuple[dict[str, Path], dict]:  # fmt: skip
    """One vision warm-up shared by the models: each model's start (its fresh weights, drawn from its training seed
    as its training would, with the warmed-up tower) in OUT/vision/<model>, and the warm-up's figures. The episodes
    of `sources` that missed under noise are left out of it: they do not end at the ball."""
    directory = out / "vision"
    starts, report = {name: directory / name for name in options.models}, directory / "warmup.json"
    if report.is_file() and all((start / layout.WEIGHTS_FILE).is_file() for start in starts.values()):
        print(f"  {directory} exists, reused")
        return starts, json.loads(report.read_text())
    tower, result = None, None
    for name, start in starts.items():
        config = _config(name, prepared, tokenizer, out, options)
        torch.manual_seed(config.train.seed)
        model = PI0GraphPytorch(config.validate())
        if tower is None:
            warmup = WarmupOptions(steps=options.vision_steps, prompts=(TASKS["reach"].prompt,), seed=config.train.seed,
                                   readout=options.vision_readout, relative=options.vision_relative,
                                   exclude=missed_episodes(sources))  # fmt: skip
            result = dataclasses.asdict(warm_up_vision(model, str(prepared), warmup))
            if result["excluded_episodes"]:
                print(f"  {result['excluded_episodes']} reach episodes that missed under the noise left out: they do "
                      "not end at the ball")  # fmt: skip
            if result["val_error_mm_median"] is not None:
                print(f"  the tower places the tip's goal within {result['val_error_mm_median']:.1f} mm (median, "
                      f"held-out episodes) after {options.vision_steps} steps")  # fmt: skip
            tower = vision_state(model)
        else:
            model.load_state_dict(tower, strict=False)
        save_model(model, start)
    report.write_text(json.dumps(result, indent=2) + "\n")
    return starts, result


def _train(config: TrainConfig) -> Path:
    final = Path(config.train.out_dir) / layout.CHECKPOINTS_DIR / str(config.train.steps)
    if final.is_dir():
        print(f"  {final} exists, reused")
    else:
        train(config)
    return final


def training_figures(checkpoint: Path, config: TrainConfig) -> dict:
    """s/step (median over the logged intervals) and the last validation losses of the run `checkpoint` is of, from
    its metrics.jsonl."""
    records = read_metrics(checkpoint.parents[1] / layout.METRICS_FILE)
    rates = [r["samples_per_s"] for r in records if r.get("samples_per_s")]
    val = [r for r in records if "val_loss" in r]
    samples_per_step = config.data.batch_size * config.train.grad_accum
    figures = {"s_per_step_median": samples_per_step / float(np.median(rates)) if rates else None}
    if val:
        figures |= {k: val[-1][k] for k in ("val_loss", "val_loss_ema") if k in val[-1]}
    return figures


def export_base(checkpoint: Path, directory: Path, card: dict) -> Path:
    """A base directory from a checkpoint: its EMA weights (what is scored and served) as the model's weights, the
    model config, norm stats, tokenizer and data spec, and `card` as base.json. No optimizer or trainer state: a base
    starts new trainings, it does not resume one."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / layout.ASSETS_DIR / layout.ASSET_ID).mkdir(parents=True)
    ema = checkpoint / layout.EMA_FILE
    shutil.copy2(ema if ema.is_file() else checkpoint / layout.WEIGHTS_FILE, tmp / layout.WEIGHTS_FILE)
    stats = Path(layout.ASSETS_DIR, layout.ASSET_ID, layout.NORM_STATS_FILE)
    for name in (layout.CONFIG_FILE, layout.TOKENIZER_FILE, layout.DATA_SPEC_FILE, stats):
        shutil.copy2(checkpoint / name, tmp / name)
    (tmp / BASE_FILE).write_text(json.dumps(plain(card), indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(directory)
    return directory


def _score(base: Path, name: str, out: Path, options: PretrainOptions) -> dict[str, dict]:
    scores = {}
    for task, episodes in options.eval_episodes.items():
        if episodes < 1:
            continue
        eval_options = EvalOptions(
            task=task,
            episodes=episodes,
            checkpoint=str(base),
            arm=options.arm,
            videos=1,
            noise_scale=options.noise_scale,
            workers=eval_workers(episodes, options.workers),
        )
        eval_dir = out / "eval" / task / name
        report = reusable_report(eval_options, eval_dir)
        summary = report["summary"] if report is not None else evaluate(eval_options, eval_dir)
        scores[task] = {key: summary[key] for key in ("episodes", "successes", "success_rate", "success_rate_wilson95",
                                                      "final_error_mm_median")}  # fmt: skip
        if "tracking_rmse_mm_median" in summary:
            scores[task]["tracking_rmse_mm_median"] = summary["tracking_rmse_mm_median"]
    return scores


def pretrain(out: str | Path, options: PretrainOptions = PretrainOptions()) -> dict[str, Path]:
    """Run (or finish) the pretraining in `out`; returns {model name: exported base directory}."""
    out = Path(out)
    if not Path(options.config).is_file():
        raise FileNotFoundError(f"pretraining config {options.config} not found")
    unknown = sorted(set(options.models) - set(MODELS))
    if unknown or not options.models:
        raise ValueError(f"--models: unknown {unknown or 'none given'}; choose from {sorted(MODELS)}")
    if "choose" in options.episodes:
        raise ValueError("the base must not see choose, the task the demo fine-tunes it on: leave it out of --episodes")
    if options.arm not in ARMS:
        raise ValueError(f"unknown arm {options.arm!r}; choose one of {sorted(ARMS)}")
    recorded = {*options.episodes, *(["reach"] if options.hard_reach else [])}
    if isinstance(options.noise, Mapping) and set(options.noise) - recorded:
        raise ValueError(f"--noise names {sorted(set(options.noise) - recorded)}, which are not recorded; the tasks "
                         f"recorded are {sorted(recorded)}")  # fmt: skip
    export = Path(options.export) if options.export is not None else out / "base"
    noisy = {task: task_noise(options, task) for task in options.episodes}
    noise = ", ".join(f"{task} {std:g}" for task, std in noisy.items() if std)
    noise = f", commands executed with noise ({noise})" if noise else ""
    _stage(1, f"recording expert demonstrations ({', '.join(f'{t} {n}' for t, n in options.episodes.items())}, "
              f"and the hard ones of {options.hard_reach} more reach seeds){noise}")  # fmt: skip
    sources = _record(out, options)
    _stage(2, "converting them into one dataset")
    prepared, tokenizer = _prepare(out, sources, options)
    starts, warmup = {}, None
    if options.vision_steps:
        _stage(3, f"warming up the vision tower: where each reach episode's tip ends ({options.vision_steps} steps)")
        starts, warmup = _warm_up(prepared, tokenizer, out, sources, options)
    bases = {}
    for name in options.models:
        _stage(4, f"pretraining the {name} base ({options.config.name}, "
                  f"{'from the warmed-up tower' if warmup else 'from scratch'})")  # fmt: skip
        config = _config(name, prepared, tokenizer, out, options, starts.get(name))
        checkpoint = _train(config)
        phase = "frozen" if options.vision_steps else "policy"
        steps, figures = {phase: int(checkpoint.name)}, {phase: training_figures(checkpoint, config)}
        if options.finish_steps:
            _stage(4, f"finishing the {name} base: {options.finish_steps} steps with the tower trained too")
            start = export_base(checkpoint, out / "runs" / f"{name}_frozen", {"from": _shown(checkpoint, out)})
            config = _config(name, prepared, tokenizer, out, options, start, finish=True)
            checkpoint = _train(config)
            steps["finish"], figures["finish"] = int(checkpoint.name), training_figures(checkpoint, config)
        meta = json.loads((prepared / layout.META_FILE).read_text())
        card = {
            "name": f"sim_base/{name}",
            "arm": options.arm,
            "fusion": MODELS[name],
            "recipe": {
                **dataclasses.asdict(options),
                "config": _shown(options.config, out),
                "export": _shown(export, out),
                "hard_seed": HARD_SEED,
            },
            "data": {
                "episodes": len(meta["episodes"]),
                "samples": meta["samples"],
                "tasks": sorted({ep["prompt"] for ep in meta["episodes"]}),
            },
            "vision_warmup": warmup,
            "train_config": _card_config(config, out),
            "steps": sum(steps.values()),
            "phases": steps,
            "training": figures,
            "license": "Apache-2.0 (the project's)",
        }
        counts = ", ".join(f"{t} {n}" for t, n in options.eval_episodes.items())
        _stage(5, f"scoring the {name} base closed loop ({counts})")
        base = export_base(checkpoint, export / name, card)
        card["scores"] = _score(base, name, out, options)
        (base / BASE_FILE).write_text(json.dumps(plain(card), indent=2) + "\n")
        bases[name] = base
    _stage(6, f"bases written to {export}")
    return bases
