"""Does a second arm's data help? A target arm with K demonstrations, trained alone and jointly with a source arm's
full data in one model of two arms, with the graph and without it, scored closed loop on the target arm.

Every run has the same config, steps and tokenizer, so that "alone" and "joint" spell prompts alike. From scratch (the
default: configs/demo.yaml, a tokenizer of both arms' prompts and names) the models learn everything from the two
datasets; with `--base DIR` (one base per model, `graph/` and `no_graph/`, as models/sim_base) each run fine-tunes the
base of its model (configs/finetune.yaml with the vision tower trained, the base's tokenizer, every dataset normalised
by its own statistics), so that a task that needs vision, `reach`, can be measured in CPU minutes. Joint runs draw half
their samples from each arm (`data.datasets` weights 1 : 1) and name the arm in the prompt (`--embedding` adds joint
graph runs that name it by a learned arm embedding instead; `--matched` joint runs of twice the steps, which see as
many of the target's samples as a run alone). With `--seeds N` every cell trains N seeds and pools their
evaluations (N x the episodes, one Wilson interval over the pooled count). The expert on the same evaluation episodes is
the reference. Writes arm_transfer.json, arm_transfer.md (the table) and arm_transfer.png into OUT; finished runs and
evaluations are reused.

    .venv/bin/python experiments/arm_transfer.py --source pneumatic --target tendon --counts 5 20 --out ARMS
    .venv/bin/python experiments/arm_transfer.py --base models/sim_base --task reach --target compact \\
        --source-episodes 100 --counts 5 10 20 50 --seeds 2 --out ARMS_REACH
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from softarm import layout
from softarm.apps.evaluate import EvalOptions, evaluate, reusable_report, wilson_interval
from softarm.data.convert import ConvertOptions, convert_first
from softarm.data.tokenizer import train_prompt_tokenizer
from softarm.plotting import pyplot, save_figure
from softarm.sim.arm_model import ARMS, CAMERA_SLOTS
from softarm.sim.generate import generate
from softarm.sim.tasks import task_prompts
from softarm.train.config import load_config
from softarm.train.loop import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FUSIONS = {"graph": "state", "no graph": "none"}  # cell name -> model.overrides.fusion


def dataset(out: Path, raw: Path, name: str, count: int, val: int, arm: str) -> Path:
    """The first `count` episodes of `raw` (and `val` more, held out) as the dataset OUT/name."""
    return convert_first(raw, out / name, count, ConvertOptions(val_episodes=val, cameras=CAMERA_SLOTS.get(arm)))


def trained(
    run: Path, data: list[str], name: str, seed: int, steps: int, args: argparse.Namespace, *extra: str
) -> Path:
    """Train one cell's model (`name`: a key of FUSIONS) with one seed; its final checkpoint."""
    final = run / layout.CHECKPOINTS_DIR / str(steps)
    if not final.is_dir():
        overrides = [*data, f"train.out_dir={run}", f"train.steps={steps}", f"train.save_every={steps}",
                     f"train.val_every={steps}", f"model.overrides.fusion={FUSIONS[name]}",
                     f"train.seed={seed}", f"data.tokenizer={tokenizer(args)}"]  # fmt: skip
        if args.base is not None:  # the arms are not (all) the base's: each dataset its own statistics, and the
            # vision tower trains too (other cameras), as experiments/base_transfer.py measured it
            overrides += [f"train.init_from={args.base / name.replace(' ', '_')}", "data.norm_stats=null",
                          "train.freeze=[]"]  # fmt: skip
        train(load_config(args.config, [*overrides, *extra, *args.overrides]))
    return final


def tokenizer(args: argparse.Namespace) -> Path:
    """The base's tokenizer (its token embeddings were trained with it), or one of both arms' prompts."""
    return args.base / "graph" / layout.TOKENIZER_FILE if args.base is not None else args.out / layout.TOKENIZER_FILE


def pooled(summaries: list[dict]) -> dict:
    """One cell's evaluations over its seeds as one count, with its Wilson interval."""
    successes, episodes = sum(s["successes"] for s in summaries), sum(s["episodes"] for s in summaries)
    return {"successes": successes, "episodes": episodes, "success_rate": successes / episodes,
            "success_rate_wilson95": list(wilson_interval(successes, episodes)), "seeds": summaries}  # fmt: skip


def score(policy: str, checkpoint: Path | None, out: Path, args: argparse.Namespace) -> dict:
    options = EvalOptions(task=args.task, episodes=args.episodes, policy=policy, arm=args.target, videos=1,
                          checkpoint=None if checkpoint is None else str(checkpoint),
                          noise_scale=args.noise_scale if checkpoint is not None else 1.0)  # fmt: skip
    report = reusable_report(options, out)
    return report["summary"] if report is not None else evaluate(options, out)


def runs(args: argparse.Namespace, source: Path, target: dict[int, Path]) -> dict[str, dict]:
    """Every cell: (alone | joint) x (graph | no graph) per count, the joint runs of twice the steps (half of each
    joint batch is the target's) and the embedding-named joint graph runs."""
    results = {}
    for count in args.counts:
        both = f"data.datasets=[{{path: {source}, arm: {args.source}}}, {{path: {target[count]}, arm: {args.target}}}]"
        cells = []
        for name in args.fusions:
            cells += [(f"alone {name}", name, [f"data.path={target[count]}"], args.steps, []),
                      (f"joint {name}", name, [both], args.steps, [])]  # fmt: skip
            if args.matched:
                cells.append((f"joint {name}, 2x steps", name, [both], 2 * args.steps, []))
        if args.embedding:
            embedding = ["model.overrides.arm_conditioning=embedding"]
            cells.append(("joint graph, arm embedding", "graph", [both], args.steps, embedding))
        for cell, name, data, steps, extra in cells:
            key = f"{cell} {count}"
            summaries = []
            for seed in range(args.seeds):
                run = args.out / "runs" / (key.replace(" ", "_").replace(",", "") + (f"_seed{seed}" if seed else ""))
                checkpoint = trained(run, data, name, seed, steps, args, *extra)
                summaries.append(score("model", checkpoint, args.out / "eval" / run.name, args))
            results[key] = pooled(summaries) | {"cell": cell, "k": count}
    return results


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    (args.out / "arm_transfer.json").write_text(json.dumps(results, indent=2))
    cells = list(dict.fromkeys(r["cell"] for k, r in results.items() if k != "expert"))
    expert = results["expert"]
    start = f"fine-tuned from {args.base}" if args.base is not None else "from scratch"
    lines = [f"`{args.task}` on the {args.target} arm with K of its demonstrations, alone or with "
             f"{args.source_episodes} of the {args.source} arm's; {args.episodes} held-out episodes per cell, "
             f"{args.steps} steps each{' (2x: twice as many)' if args.matched else ''}, {start}, "
             f"{args.seeds} seed(s) pooled, noise scale {args.noise_scale:g}; "
             f"expert {expert['successes']}/{expert['episodes']}", "",
             "| K | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]  # fmt: skip
    for count in args.counts:
        row = []
        for cell in cells:
            s = results[f"{cell} {count}"]
            low, high = s["success_rate_wilson95"]
            row.append(f"{s['successes']}/{s['episodes']} ({100 * low:.0f}-{100 * high:.0f} %)")
        lines.append(f"| {count} | " + " | ".join(row) + " |")
    (args.out / "arm_transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, cell in enumerate(cells):
        summaries = [results[f"{cell} {c}"] for c in args.counts]
        rates = [100 * s["success_rate"] for s in summaries]
        errors = [[100 * (s["success_rate"] - s["success_rate_wilson95"][0]) for s in summaries],
                  [100 * (s["success_rate_wilson95"][1] - s["success_rate"]) for s in summaries]]  # fmt: skip
        shifted = [c * (1 + 0.04 * (i - len(cells) / 2)) for c in args.counts]  # side by side, not on top
        ax.errorbar(shifted, rates, yerr=errors, marker="o", capsize=3, ls="-" if "joint" in cell else "--", label=cell)
    ax.axhline(100 * expert["success_rate"], color="k", ls=":", label="expert")
    ax.set(xscale="log", xlabel=f"demonstrations on the {args.target} arm", ylim=(0, 105),
           ylabel=f"{args.task} success (%), 95 % interval",
           title=f"{args.target} alone vs with the {args.source} arm's data")  # fmt: skip
    ax.set_xticks(args.counts, [str(c) for c in args.counts])
    ax.set_xticks([], minor=True)  # the log axis' own minor labels crowd a table of one or two counts
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, args.out / "arm_transfer.png")
    print(f"wrote {args.out}/arm_transfer.json, arm_transfer.md and arm_transfer.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="pneumatic", help="the arm whose full data joins")
    parser.add_argument("--target", default="tendon", help="the arm with few demonstrations, scored")
    parser.add_argument("--task", default="choose")
    parser.add_argument("--source-episodes", type=int, default=150)
    parser.add_argument("--counts", type=int, nargs="+", default=[5, 20], help="demonstrations of the target arm")
    parser.add_argument("--val", type=int, default=5, help="episodes of each arm held out for the validation loss")
    parser.add_argument("--noise", type=float, default=0.05, help="DART noise of the recorded demonstrations")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--episodes", type=int, default=100, help="closed-loop evaluation episodes per cell")
    parser.add_argument("--fusions", nargs="+", choices=list(FUSIONS), default=list(FUSIONS))
    parser.add_argument("--embedding", action="store_true", help="also joint graph runs naming the arm by embedding")
    parser.add_argument("--matched", action="store_true",
                        help="also joint runs of twice the steps: as many target samples as alone")  # fmt: skip
    parser.add_argument("--base", type=Path, help="bases to fine-tune (DIR/graph, DIR/no_graph); default: scratch")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per cell, their evaluations pooled")
    parser.add_argument("--noise-scale", type=float, help="of the models' sampling; default 0 from a base, else 1")
    parser.add_argument("--config", type=Path, help="default configs/finetune.yaml from a base, else demo.yaml")
    parser.add_argument("--out", type=Path, default=Path("arm_transfer_out"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args()
    if args.smoke:
        args.source_episodes, args.counts, args.val, args.episodes, args.steps = 2, [1], 1, 1, 2
        args.fusions = ["graph"]  # the no-graph runs differ by one override
        args.overrides = [*args.overrides, "data.batch_size=4", "data.num_workers=0"]
    if args.config is None:
        args.config = CONFIGS / ("finetune.yaml" if args.base is not None else "demo.yaml")
    if args.noise_scale is None:
        args.noise_scale = 0.0 if args.base is not None else 1.0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.base is None and not (args.out / layout.TOKENIZER_FILE).is_file():
        words = [*task_prompts([ARMS[args.source], ARMS[args.target]]), f"{args.source}: {args.target}:"]
        train_prompt_tokenizer(words, args.out / layout.TOKENIZER_FILE)
    workers = 1 if args.smoke else min(2, os.cpu_count() or 1)  # a recording process pays ~8 s of imports
    raw = {arm: args.out / f"raw_{arm}" for arm in (args.source, args.target)}
    generate(args.task, args.source_episodes + args.val, raw[args.source], arm=args.source, noise=args.noise,
             workers=workers)  # fmt: skip
    generate(args.task, max(args.counts) + args.val, raw[args.target], arm=args.target, noise=args.noise,
             workers=workers)  # fmt: skip
    source = dataset(args.out, raw[args.source], args.source, args.source_episodes, args.val, args.source)
    target = {
        k: dataset(args.out, raw[args.target], f"{args.target}_{k}", k, args.val, args.target) for k in args.counts
    }
    results = {"expert": score("expert", None, args.out / "eval" / "expert", args)}
    report(results | runs(args, source, target), args)


if __name__ == "__main__":
    main()
