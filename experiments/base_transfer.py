"""A new arm from the sim base: fine-tune the base on K demonstrations of a task on an arm it was never pretrained on,
next to the same training from scratch, and score both closed loop on held-out episodes.

For each K the first K of the recorded episodes (plus a few held out for validation) form the dataset; the base run
starts from the base (`train.init_from`: its arm-shaped graph tensors re-initialised for the new arm, the
dataset's own norm stats and the base's tokenizer), the scratch run from random weights with the same config, data,
seed and steps. Steps grow with K (`--steps-per-episode`, at least `--min-steps`), so that the small datasets are not
trained for hundreds of epochs. The expert on the same evaluation episodes is the reference. Writes transfer.json,
transfer.md (the table) and transfer.png into OUT; finished runs and evaluations are reused.

    .venv/bin/python experiments/base_transfer.py --arm compact --counts 20 50 100 --out TRANSFER
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from softarm import layout
from softarm.apps.evaluate import EvalOptions, evaluate, reusable_report
from softarm.apps.pretrain import SHIPPED
from softarm.data.convert import ConvertOptions, convert_first
from softarm.plotting import pyplot, save_figure
from softarm.sim.arm_model import CAMERA_SLOTS
from softarm.sim.generate import generate
from softarm.train.config import load_config
from softarm.train.loop import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml"


def dataset(out: Path, raw: Path, count: int, val: int, arm: str) -> Path:
    """The first `count` episodes (and `val` more, held out) as a dataset."""
    return convert_first(
        raw, out / f"prep_{count}", count, ConvertOptions(val_episodes=val, cameras=CAMERA_SLOTS.get(arm))
    )


def trained(prepared: Path, run: Path, start: str, steps: int, args: argparse.Namespace) -> Path:
    final = run / layout.CHECKPOINTS_DIR / str(steps)
    if final.is_dir():
        return final
    overrides = [f"data.path={prepared}", f"train.out_dir={run}", f"train.steps={steps}", f"train.save_every={steps}",
                 f"train.val_every={steps}", "train.freeze=[]", "data.norm_stats=null",
                 f"train.init_from={args.base if start == 'base' else 'null'}",
                 f"data.tokenizer={Path(args.base) / layout.TOKENIZER_FILE}", *args.overrides]  # fmt: skip
    if start == "scratch":  # from random weights the base's learning rate and warm-up, as it was pretrained
        overrides += ["optim.lr=1e-3", "optim.warmup_steps=100"]
    train(load_config(args.config, overrides))
    return final


def score(policy: str, checkpoint: Path | None, out: Path, args: argparse.Namespace) -> dict:
    options = EvalOptions(task=args.task, episodes=args.episodes, policy=policy, arm=args.arm, videos=1,
                          checkpoint=None if checkpoint is None else str(checkpoint),
                          noise_scale=args.noise_scale if checkpoint is not None else 1.0)  # fmt: skip
    report = reusable_report(options, out)
    return report["summary"] if report is not None else evaluate(options, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", default="compact", help="an arm the base was not pretrained on")
    parser.add_argument("--task", default="reach")
    parser.add_argument("--counts", type=int, nargs="+", default=[20, 50, 100], help="demonstrations per run")
    parser.add_argument("--val", type=int, default=5, help="episodes held out for the validation loss")
    parser.add_argument("--steps-per-episode", type=int, default=30)
    parser.add_argument("--min-steps", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=100, help="closed-loop evaluation episodes per run")
    parser.add_argument("--noise-scale", type=float, default=0.0, help="of the models' sampling (softarm eval)")
    parser.add_argument("--base", default=str(SHIPPED / "graph"), help="the base to start from")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, default=Path("transfer_out"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args()
    if args.smoke:
        args.counts, args.val, args.episodes, args.min_steps, args.steps_per_episode = [2], 1, 1, 2, 1
        args.overrides = [*args.overrides, "data.batch_size=4", "data.num_workers=0"]
    out, raw = args.out, args.out / "raw"
    generate(args.task, max(args.counts) + args.val, raw, arm=args.arm, workers=min(2, os.cpu_count() or 1))
    results = {"expert": score("expert", None, out / "eval" / "expert", args)}
    for count in args.counts:  # in the order given (the most telling first); the table and plot sort them
        prepared = dataset(out, raw, count, args.val, args.arm)
        steps = max(args.min_steps, args.steps_per_episode * count)
        for start in ("base", "scratch"):
            checkpoint = trained(prepared, out / "runs" / f"{start}_{count}", start, steps, args)
            results[f"{start}_{count}"] = score("model", checkpoint, out / "eval" / f"{start}_{count}", args) | {
                "steps": steps,
                "demonstrations": count,
            }
    (out / "transfer.json").write_text(json.dumps(results, indent=2))
    args.counts = sorted(args.counts)
    expert = results["expert"]["success_rate"]
    header = (f"{args.task} on the {args.arm} arm, {args.episodes} held-out episodes per row, noise scale "
              f"{args.noise_scale:g}; expert {results['expert']['successes']}/{args.episodes}")  # fmt: skip
    lines = [header, "", "| demonstrations | steps | from the base | from scratch | base / expert |", "|---" * 5 + "|"]
    for count in args.counts:
        cells = []
        for start in ("base", "scratch"):
            s = results[f"{start}_{count}"]
            low, high = s["success_rate_wilson95"]
            cells.append(f"{s['successes']}/{s['episodes']} ({100 * low:.0f}-{100 * high:.0f} %)")
        ratio = results[f"base_{count}"]["success_rate"] / expert if expert else float("nan")
        lines.append(f"| {count} | {results[f'base_{count}']['steps']} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
    (out / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for start, color in (("base", "tab:green"), ("scratch", "tab:gray")):
        summaries = [results[f"{start}_{c}"] for c in args.counts]
        errors = [[100 * (s["success_rate"] - s["success_rate_wilson95"][0]) for s in summaries],
                  [100 * (s["success_rate_wilson95"][1] - s["success_rate"]) for s in summaries]]  # fmt: skip
        rates = [100 * s["success_rate"] for s in summaries]
        ax.errorbar(args.counts, rates, yerr=errors, marker="o", capsize=3, color=color, label=f"from {start}")
    ax.axhline(100 * expert, color="k", ls=":", label="expert")
    ax.set(xlabel="demonstrations on the new arm", ylabel=f"{args.task} success (%), 95 % interval", ylim=(0, 105),
           title=f"{args.arm} arm: fine-tuning the sim base vs training from scratch")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / "transfer.png")
    print(f"wrote {out}/transfer.json, transfer.md and transfer.png")


if __name__ == "__main__":
    main()
