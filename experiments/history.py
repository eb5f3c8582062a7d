"""Does history help a policy that sees? Fine-tune the sim base on `follow` and `reach` demonstrations without
history, with the graph over K past control steps (`attend`, `stack`), with the fixed cameras' past frames (visual
memory) and with both, then score each model on held-out `follow` and `reach` episodes.

A follow episode is four times as long as a reach episode, so one dataset of both draws ~90 % of its samples from
`follow` and the fine-tuned base forgets `reach` (docs/history.md); `--reach-weight W` keeps the tasks in two datasets
instead and draws W of every batch's samples from `reach` (a `data.datasets` mixture, the base's statistics for both).
`--noise S` records DART demonstrations (commands executed with noise, labelled with the expert's corrections), as
the demo does: a policy trained on clean demonstrations never sees how to get back to a ball it has lost.
`--follow-task follow_axis` has the ball circle the arm's axis, always anticlockwise: its position alone then says
where it goes next, which tells what history must supply apart from what tracking itself asks;
`--follow-task follow_lead` keeps `follow`'s circles and shows a green ball 1 s ahead of the red one, so one frame
shows where the ball goes on any circle.

Every variant starts from the same base (a base without history starts a history model: its new tensors start
fresh), with the same data, config (configs/finetune.yaml), seed and steps; only `model.overrides.history_*` and
`image_history_*` differ. The target to beat: `follow` >= 50 % with history where one frame gets 0 %, `reach`
within 3 points of no history. Writes history.json, history.md (the table, 95 % Wilson intervals) and history.png
into OUT; finished runs and evaluations are reused, so `--replan R` scores the same models again under another
re-plan period (history_replanR.*): at 8, even a policy that knows the ball's position and velocity exactly at every
re-plan misses `follow` (docs/history.md).

`--dagger N` adds DAgger rounds (`--dagger-rounds`, default 1): each model drives the arm through N new `follow`
episodes while the expert labels every step (`softarm sim generate --executor`), and the next round's model is
trained from the base on the demonstrations plus every round's recordings (the `follow` share of each batch split
over them by episodes). A policy that reads the way round off its own arm (a tracking expert trails the ball) meets
there the states in which that cue is wrong. `--dagger-steps S` trains the rounds' models longer (their data grows
each round). `--only VARIANT` (named as the table names it) trains and scores only
those variants, e.g. a further round of one of them.

    .venv/bin/python experiments/history.py --out HISTORY                 # follow=300 reach=100, K=4, stride 2
    .venv/bin/python experiments/history.py --out HISTORY --history-steps 8 --stride 1 --image-steps 0
    .venv/bin/python experiments/history.py --out HISTORY --reach-weight 0.5 --modes --image-steps 4
    .venv/bin/python experiments/history.py --out HISTORY --reach-weight 0.5 --modes --image-steps 3 --dagger 150
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from softarm import layout
from softarm.apps.evaluate import EvalOptions, PolicyExecutor, eval_workers, evaluate, reusable_report
from softarm.apps.pretrain import SHIPPED
from softarm.data.convert import ConvertOptions, convert, convert_first
from softarm.data.spec import read_meta
from softarm.model_config import IMAGE_HISTORY_MODES
from softarm.plotting import pyplot, save_figure
from softarm.sim.arm_model import ARMS, CAMERA_SLOTS, DEFAULT_ARM, fixed_camera_slots
from softarm.sim.generate import generate
from softarm.sim.tasks import FOLLOW_TASKS, TRACK_RMSE
from softarm.train.config import load_config
from softarm.train.loop import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml"
DAGGER_SEED = 100_000  # the DAgger rounds' episodes: far from the demonstrations' seeds and the evaluation's


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    """Variant name -> its model overrides."""
    out = {"no history": ["model.overrides.history_steps=1"]}
    window = [f"model.overrides.history_steps={args.history_steps}", f"model.overrides.history_stride={args.stride}"]
    graph = {mode: [*window, f"model.overrides.history_mode={mode}"] for mode in args.modes}
    for mode, overrides in graph.items():
        out[f"K={args.history_steps} {mode}"] = overrides
    if args.image_steps > 1:
        frames = [f"model.overrides.image_history_steps={args.image_steps}",
                  f"model.overrides.image_history_stride={args.image_stride}",
                  f"model.overrides.image_history_slots=[{','.join(args.image_slots)}]"]  # fmt: skip
        for mode in args.image_modes:  # "memory" keeps the name its runs were first made under
            out[f"frames K={args.image_steps}" + ("" if mode == "memory" else f" {mode}")] = [
                *frames, f"model.overrides.image_history_mode={mode}"]  # fmt: skip
        if args.modes:
            both = [*frames, f"model.overrides.image_history_mode={args.image_modes[0]}"]
            out[f"K={args.history_steps} {args.modes[0]} + frames"] = [*graph[args.modes[0]], *both]
    return out


def slug(variant: str) -> str:
    """A variant's name as its run's directory names it."""
    return variant.replace(" ", "_").replace("=", "")


def held_out(count: int, args: argparse.Namespace) -> int:
    """Of `count` episodes, how many are held out: --val in proportion to the demonstrations' count."""
    return round(args.val * count / (args.follow + args.reach))


def task_dataset(out: Path, task: str) -> Path:
    """Where one task's dataset of a mixture is prepared."""
    return out / f"prepared_{task}"


def prepare(tasks: list[str], raw: Path, out: Path, args: argparse.Namespace) -> str | dict[Path, float]:
    """Convert the recordings; returns one dataset of every task (its data override), or with --reach-weight one
    dataset per task and its weight in the mixture, --val held out in proportion to each task's episodes."""
    cameras = CAMERA_SLOTS.get(args.arm)
    if args.reach_weight is None or len(tasks) < 2:
        prepared = out / "prepared"
        if not (prepared / layout.META_FILE).is_file():
            convert(raw, prepared, ConvertOptions(val_episodes=args.val, cameras=cameras))
        return f"data.path={prepared}"
    weights = {args.follow_task: 1.0 - args.reach_weight, "reach": args.reach_weight}
    mixture = {}
    for task in tasks:
        count = counts(args)[task]
        val = held_out(count, args)
        options = ConvertOptions(val_episodes=val, cameras=cameras)
        prepared = convert_first(raw, task_dataset(out, task), count - val, options, prefix=f"{task}_")
        mixture[prepared] = weights[task]
    return mixture


def data_override(data: str | dict[Path, float]) -> str:
    if isinstance(data, str):
        return data
    return f"data.datasets=[{', '.join(f'{{path: {path}, weight: {weight:g}}}' for path, weight in data.items())}]"


def dagger_round(
    data: dict[Path, float], checkpoint: Path, directory: Path, round_: int, args: argparse.Namespace
) -> dict[Path, float]:
    """Record --dagger `follow` episodes driven by `checkpoint`'s policy and labelled by the expert into `directory`;
    returns the mixture with them added, the `follow` share split over its datasets by episodes."""
    raw = directory / "raw"
    executor = PolicyExecutor(str(checkpoint), args.replan, args.noise_scale, args.arm)
    generate(args.follow_task, args.dagger, raw, seed=DAGGER_SEED + (round_ - 1) * args.dagger, arm=args.arm,
             executor=executor)  # fmt: skip
    prepared = directory / f"prepared_{directory.name}"  # named apart: a mixture names its datasets by directory
    if not (prepared / layout.META_FILE).is_file():
        options = ConvertOptions(val_episodes=held_out(args.dagger, args), cameras=CAMERA_SLOTS.get(args.arm))
        convert(raw, prepared, options)
    follow = [path for path in data if path != task_dataset(args.out, "reach")] + [prepared]
    episodes = {path: sum(e["split"] == "train" for e in read_meta(path)[1]["episodes"]) for path in follow}
    share = 1.0 - args.reach_weight
    return {**{path: weight for path, weight in data.items() if path not in follow},
            **{path: share * n / sum(episodes.values()) for path, n in episodes.items()}}  # fmt: skip


def counts(args: argparse.Namespace) -> dict[str, int]:
    """Demonstrations to record per task, the ones left out (0) included."""
    return {args.follow_task: args.follow, "reach": args.reach}


def trained(data: str | dict[Path, float], run: Path, history: list[str], steps: int, args: argparse.Namespace) -> Path:
    final = run / layout.CHECKPOINTS_DIR / str(steps)
    if not final.is_dir():
        overrides = [data_override(data), f"train.out_dir={run}", f"train.steps={steps}",
                     f"train.save_every={steps}", f"train.val_every={steps}", f"train.init_from={args.base}",
                     f"data.norm_stats={args.base}", *history, *args.overrides]  # fmt: skip
        train(load_config(args.config, overrides))
    return final


def score(task: str, checkpoint: Path, out: Path, args: argparse.Namespace) -> dict:
    options = EvalOptions(task=task, episodes=args.eval_episodes, policy="model", checkpoint=str(checkpoint),
                          arm=args.arm, videos=1, noise_scale=args.noise_scale, replan=args.replan,
                          workers=eval_workers(args.eval_episodes))  # fmt: skip
    report = reusable_report(options, out)
    return report["summary"] if report is not None else evaluate(options, out)


def cell(summary: dict) -> str:
    """Success with its interval, and for `follow` the median tracking RMSE: a policy can come closer to the 15 mm
    it must hold long before its first episode succeeds."""
    low, high = summary["success_rate_wilson95"]
    rmse = summary.get("tracking_rmse_mm_median")
    return f"{summary['successes']}/{summary['episodes']} ({100 * low:.0f}-{100 * high:.0f} %)" + (
        f", RMSE {rmse:.0f} mm" if rmse is not None else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(SHIPPED / "graph"), help="the base to start from (a base that sees)")
    parser.add_argument("--arm", default=DEFAULT_ARM, choices=sorted(ARMS), help="the base's arm")
    parser.add_argument("--follow", type=int, default=300, help="follow demonstrations to record")
    parser.add_argument("--reach", type=int, default=100, help="reach demonstrations to record")
    parser.add_argument("--follow-task", choices=FOLLOW_TASKS, default="follow",
                        help="the ball circles a random centre either way round, or the arm's axis anticlockwise "
                             "(its position then says where it goes next), or as `follow` with a green ball 1 s "
                             "ahead (follow_lead: one frame shows where it goes)")  # fmt: skip
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="DART: std of the noise on the executed commands while recording (the demo's 0.05)",
    )
    parser.add_argument("--val", type=int, default=10, help="of them, held out (at random) for the validation loss")
    parser.add_argument("--reach-weight", type=float, help="share of every batch drawn from reach (default: by frames)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--history-steps", type=int, default=4, help="K: control steps the graph is read over")
    parser.add_argument("--stride", type=int, default=2, help="control steps between two of them")
    parser.add_argument("--modes", nargs="*", choices=["attend", "stack"], default=["attend", "stack"],
                        help="graph history variants (none: frames only)")  # fmt: skip
    parser.add_argument("--image-steps", type=int, default=4, help="camera frames read (visual memory); 0: none")
    parser.add_argument("--image-stride", type=int, default=2, help="control steps between two of them")
    parser.add_argument("--image-modes", nargs="+", choices=IMAGE_HISTORY_MODES, default=["memory"],
                        help="how the past frames are read: temporal attention per patch (MEM), over every patch "
                             "(attend), or their tokens in the prefix")  # fmt: skip
    parser.add_argument(
        "--image-slots",
        nargs="+",
        help="the cameras whose past frames are read (openpi slots; default: the arm's fixed cameras)",
    )
    parser.add_argument("--eval-episodes", type=int, default=100, help="closed-loop episodes per task and model")
    parser.add_argument("--noise-scale", type=float, default=0.0, help="of the models' sampling (softarm eval)")
    parser.add_argument("--replan", type=int, default=EvalOptions.replan,
                        help="actions executed from each chunk before the policy sees the arm again")  # fmt: skip
    parser.add_argument("--dagger", type=int, default=0,
                        help="follow episodes each model drives, the expert labelling, per DAgger round")  # fmt: skip
    parser.add_argument("--dagger-rounds", type=int, default=1, help="DAgger rounds after the demonstrations' models")
    parser.add_argument("--dagger-steps", type=int,
                        help="training steps of the DAgger rounds' models (default --steps)")  # fmt: skip
    parser.add_argument("--score-last-round", action="store_true",
                        help="score only each variant's last round (the earlier ones still record)")  # fmt: skip
    parser.add_argument("--only", nargs="+", metavar="VARIANT",
                        help="train and score only these variants, named as the table names them")  # fmt: skip
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, default=Path("history_out"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args()
    args.image_slots = args.image_slots or fixed_camera_slots(args.arm)
    if args.reach_weight is not None and not 0 < args.reach_weight < 1:
        parser.error(f"--reach-weight must be between 0 and 1, got {args.reach_weight}")
    if args.dagger and (args.reach_weight is None or args.dagger_rounds < 1):
        parser.error("--dagger needs --reach-weight (its recordings join the mixture) and --dagger-rounds >= 1")
    if args.smoke:
        args.follow, args.val, args.steps, args.eval_episodes, args.modes = 1, 0, 2, 1, ["attend"]
        args.dagger, args.dagger_rounds, args.dagger_steps = min(args.dagger, 1), 1, 3
        args.reach = 0 if args.reach_weight is None else 1  # a mixture needs both tasks
        args.image_steps = 2
        args.overrides = [*args.overrides, "data.batch_size=4", "data.num_workers=0"]
    args.dagger_steps = args.dagger_steps or args.steps
    chosen = variants(args)
    if args.only is not None:
        unknown = [name for name in args.only if name not in chosen]
        if unknown:
            parser.error(f"--only {unknown}: not among this run's variants {list(chosen)}")
        chosen = {name: chosen[name] for name in args.only}
    # recording processes: each pays ~8 s of imports, worth it only for many episodes
    out, raw, workers = args.out, args.out / "raw", 1 if args.smoke else min(2, os.cpu_count() or 1)
    tasks = [task for task, count in counts(args).items() if count]  # each scored if trained on
    for task in tasks:
        generate(task, counts(args)[task], raw, arm=args.arm, workers=workers, noise=args.noise)
    data = prepare(tasks, raw, out, args)
    results: dict[str, dict] = {}
    # another re-plan period's evaluations and tables beside the default's
    suffix = "" if args.replan == EvalOptions.replan else f"_replan{args.replan}"
    # and a table of some variants beside the table of all
    table = suffix + ("" if args.only is None else "_" + "+".join(slug(name) for name in chosen))
    if args.smoke:  # no history and the variant with every override (with DAgger, that one): each code path once
        names = [list(chosen)[-1]] if args.dagger else [next(iter(chosen)), list(chosen)[-1]]
        chosen = {name: chosen[name] for name in names}
    # a round's recordings and model are named by the steps of the models behind them (round 1's: round 0's)
    longer = "" if args.dagger_steps == args.steps else f"_{args.dagger_steps}steps"
    for name, history in chosen.items():
        run = out / "runs" / slug(name)
        models, mixture = [(name, run, trained(data, run, history, args.steps, args))], data
        for round_ in range(1, (args.dagger_rounds if args.dagger else 0) + 1):
            recorded = out / "dagger" / (f"{run.name}_{round_}" + (longer if round_ > 1 else ""))
            mixture = dagger_round(mixture, models[-1][2], recorded, round_, args)
            following = run.with_name(f"{run.name}_dagger{round_}{longer}")
            label = f"{name}, DAgger {round_}" + (f", {args.dagger_steps} steps" if longer else "")
            models.append((label, following, trained(mixture, following, history, args.dagger_steps, args)))
        for label, model_run, checkpoint in models[-1:] if args.score_last_round else models:
            metrics = [json.loads(line) for line in (model_run / "metrics.jsonl").read_text().splitlines()]
            val = [r["val_loss"] for r in metrics if "val_loss" in r]
            results[label] = {"val_loss": val[-1] if val else None} | {
                task: score(task, checkpoint, out / "eval" / model_run.name / f"{task}{suffix}", args) for task in tasks
            }
    (out / f"history{table}.json").write_text(json.dumps(results, indent=2))
    mix = "" if args.reach_weight is None else f", {100 * args.reach_weight:g} % of samples from reach"
    dart = f", recorded with command noise {args.noise:g}" if args.noise else ""
    if args.dagger:
        dart += f"; DAgger: {args.dagger} {args.follow_task} episodes driven by each round's model"
        dart += f" (the rounds' models {args.dagger_steps} steps)" if args.dagger_steps != args.steps else ""
    lines = [f"From {args.base}: {args.follow} {args.follow_task} + {args.reach} reach demonstrations{dart} "
             f"({args.val} held out{mix}), "
             f"{args.steps} steps, "
             f"{args.eval_episodes} held-out episodes per cell, noise scale {args.noise_scale:g}, "
             f"re-planning every {args.replan} steps", "",
             f"| history | val loss | {' | '.join(tasks)} |", "|---" * (2 + len(tasks)) + "|"]  # fmt: skip
    for name, r in results.items():
        val = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        lines.append(f"| {name} | {val} | {' | '.join(cell(r[task]) for task in tasks)} |")
    (out / f"history{table}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = pyplot()
    fig, (ax, tracking) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(2, 1))
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        for j, task in enumerate(tasks):
            s = r[task]
            low, high = s["success_rate_wilson95"]
            rate = 100 * s["success_rate"]
            ax.bar(j + i * width, rate, width, color=f"C{i}", label=name if j == 0 else None)
            ax.errorbar(j + i * width, rate, yerr=[[rate - 100 * low], [100 * high - rate]], color="k", capsize=3)
    ax.set(xticks=[k + width * (len(results) - 1) / 2 for k in range(len(tasks))], xticklabels=tasks, ylim=(0, 105),
           ylabel="success (%), 95 % interval", title="history, from the sim base")  # fmt: skip
    ax.legend(fontsize=8)
    # how close each model tracks the ball: it can come far closer to the 15 mm follow asks before any episode passes
    rmse = [r.get(args.follow_task, {}).get("tracking_rmse_mm_median") or 0.0 for r in results.values()]
    tracking.bar(range(len(results)), rmse, color=[f"C{i}" for i in range(len(results))])
    tracking.axhline(1000 * TRACK_RMSE, color="k", ls=":", label="success below")
    tracking.set(xticks=[], ylabel="tracking RMSE (mm), median", title=args.follow_task)
    tracking.legend(fontsize=8)
    save_figure(fig, out / f"history{table}.png")
    print(f"wrote {out}/history{table}.json, .md and .png")


if __name__ == "__main__":
    main()
