"""`softarm demo`: the whole system on the built-in simulated arm, on a CPU, in one command.

simulate expert episodes -> convert -> train the tiny real PI0Pytorch twice (with the graph, and without it: same
data, same seed, same steps) -> closed-loop evaluation of both, of the expert, of a payload-blind expert and of
random pressures -> report.md with plots. Every stage writes into OUT and is skipped when its output is already
there, so a re-run only does what is missing (an interrupted training resumes from its last checkpoint).

The task is `choose` ("reach the <colour> ball"), under a random payload on the tip: the same pressures then bend
the arm differently, so a policy that only knows its pressures (the state slot) must guess where its tip is, while
the graph says it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import shutil

from softarm.data.convert import ConvertOptions, convert
from softarm.demo_report import write_report
from softarm.evaluate import EvalOptions, evaluate
from softarm.sim.generate import generate
from softarm.train.config import load_config
from softarm.train.loop import train

TASK = "choose"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
# name -> model.overrides.fusion; "none" is the base PI0Pytorch with the state slot only
MODELS = {"graph": "state", "no_graph": "none"}


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    episodes: int = 100  # generated demonstrations
    val_episodes: int = 6
    eval_episodes: int = 100  # per policy: enough for intervals that can separate the two models
    config: Path = DEFAULT_CONFIG
    overrides: tuple[str, ...] = ()  # dotted config overrides for both trainings, e.g. ("train.steps=50",)


def _stage(number: int, text: str) -> None:
    print(f"[{number}/5] {text}", flush=True)


def _train(name: str, fusion: str, prepared: Path, out: Path, options: DemoOptions) -> Path:
    run_dir = out / "runs" / name
    overrides = [f"data.path={prepared}", f"train.out_dir={run_dir}", f"model.overrides.fusion={fusion}"]
    config = load_config(options.config, [*overrides, *options.overrides])
    final = run_dir / "checkpoints" / str(config.train.steps)
    if final.is_dir():
        print(f"  {name}: {final} exists, reused")
    else:
        train(config)
    return final


def _evaluate(name: str, checkpoint: Path | None, out: Path, options: DemoOptions) -> dict:
    eval_dir = out / "eval" / name
    report = eval_dir / "eval.json"
    if report.is_file():
        summary = json.loads(report.read_text())["summary"]
        if summary["episodes"] == options.eval_episodes and summary["checkpoint"] == (checkpoint and str(checkpoint)):
            print(f"  {name}: {report} exists, reused")
            return summary
    policy = "model" if checkpoint else name
    videos = 2 if checkpoint else 1
    eval_options = EvalOptions(task=TASK, episodes=options.eval_episodes, policy=policy,
                               checkpoint=checkpoint and str(checkpoint), videos=videos)  # fmt: skip
    return evaluate(eval_options, eval_dir)


def run_demo(out: str | Path, options: DemoOptions = DemoOptions()) -> dict:
    """Run (or finish) the demo in `out`; returns {policy name: evaluation summary}."""
    out = Path(out)
    if not Path(options.config).is_file():
        raise FileNotFoundError(f"demo config {options.config} not found; pass --config configs/demo.yaml")
    _stage(1, f"simulating {options.episodes} expert episodes of '{TASK}' (MuJoCo)")
    generated = generate(TASK, options.episodes, out / "raw", seed=0)
    print(f"  {generated.written} episodes written, {generated.reused} reused, expert failed on {generated.failed}")
    prepared = out / "prepared"
    _stage(2, "converting them to the training format")
    if (prepared / "meta.json").is_file():
        print(f"  {prepared} exists, reused")
    else:
        convert(out / "raw", prepared, ConvertOptions(val_episodes=options.val_episodes))
    _stage(3, "training the tiny real pi0 with the graph and without it")
    checkpoints = {name: _train(name, fusion, prepared, out, options) for name, fusion in MODELS.items()}
    _stage(4, f"closed-loop evaluation on {options.eval_episodes} held-out episodes")
    policies = ("expert", "expert-blind", *MODELS, "random")
    summaries = {name: _evaluate(name, checkpoints.get(name), out, options) for name in policies}
    _stage(5, "writing the report")
    write_report(out, summaries, {name: out / "runs" / name for name in MODELS})
    for name in MODELS:  # the graph model's rollouts next to the report
        gif = out / "eval" / name / "rollouts.gif"
        if gif.is_file():
            shutil.copyfile(gif, out / f"rollouts_{name}.gif")
    return summaries
