"""Closed-loop success against the scale of the flow's starting noise (`softarm eval --noise-scale`).

A flow-matching policy samples a chunk by integrating from Gaussian noise; openpi draws it with unit variance. A
smaller scale pulls every chunk towards the one the flow gives from the noise's mean (0: deterministic). For each
checkpoint and task the same held-out episodes run at every scale; the table gives success (95 % Wilson interval),
final error, and per scale the episodes won and lost against scale 1 (paired: same episodes, same seeds). Writes
noise_scale.json and noise_scale.png.

    .venv/bin/python experiments/noise_scale.py --run reach=C6/checkpoints/3000 \\
        --run choose=demo_out/runs/graph/checkpoints/1500 --episodes 300 --seed 2000000 --out noise_out

Each cell is an `softarm eval` run in OUT/<task>-<run name>/<scale>, reused when it is already there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from softarm.apps.evaluate import EvalOptions, evaluate, reusable_report
from softarm.layout import EVAL_FILE
from softarm.plotting import pyplot, save_figure


def run_name(checkpoint: str) -> str:
    """The training run's directory name (RUN/checkpoints/STEP -> RUN), else the checkpoint's own."""
    path = Path(checkpoint)
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


def cell(args, task: str, checkpoint: str, scale: float) -> dict:
    """eval.json of one (checkpoint, task, scale), run or reused."""
    out = Path(args.out) / f"{task}-{run_name(checkpoint)}" / f"{scale:g}"
    options = EvalOptions(task=task, episodes=args.episodes, checkpoint=checkpoint, seed=args.seed,
                          replan=args.replan, videos=0, noise_scale=scale)  # fmt: skip
    if (report := reusable_report(options, out)) is None:
        evaluate(options, out)
        report = json.loads((out / EVAL_FILE).read_text())
    return report


def plot(results: dict, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    for label, cells in results.items():
        scales = sorted(cells, key=float)
        rate = np.array([cells[s]["summary"]["success_rate"] for s in scales])
        low, high = np.array([cells[s]["summary"]["success_rate_wilson95"] for s in scales]).T
        ax.errorbar([float(s) for s in scales], 100 * rate, yerr=100 * np.array([rate - low, high - rate]),
                    marker="o", capsize=3, label=label)  # fmt: skip
    ax.set(xlabel="scale of the flow's starting noise (1: openpi's sampling)",
           ylabel="success (%), 95 % Wilson interval", ylim=(-5, 105))  # fmt: skip
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="TASK=CHECKPOINT",
                        help="a task and the checkpoint to evaluate on it (repeatable)")  # fmt: skip
    parser.add_argument("--scales", default="0,0.25,0.5,1", help="noise scales, comma-separated; 1 is the reference")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1_000_000, help="first evaluation episode seed")
    parser.add_argument("--replan", type=int, default=8)
    parser.add_argument("--out", default="noise_out")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.scales, args.episodes = "0", 1
    scales = sorted({float(x) for x in args.scales.split(",")} | {1.0})
    results: dict = {}
    for run in args.run:
        task, sep, checkpoint = run.partition("=")
        if not sep or not checkpoint:
            parser.error(f"--run expects TASK=CHECKPOINT, got {run!r}")
        results[f"{task}, {run_name(checkpoint)}"] = {f"{s:g}": cell(args, task, checkpoint, s) for s in scales}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "noise_scale.json").write_text(
        json.dumps({label: {s: r["summary"] for s, r in cells.items()} for label, cells in results.items()}, indent=2)
    )
    plot(results, Path(args.out) / "noise_scale.png")
    print(f"{args.episodes} episodes per cell from seed {args.seed}, re-plan every {args.replan} steps")
    print("| task, run | noise scale | success | 95 % interval | final error, median (mm) | won / lost vs scale 1 |")
    print("|---|---|---|---|---|---|")
    for label, cells in results.items():
        reference = [e["success"] for e in cells["1"]["episodes"]]
        for scale, report in cells.items():
            s, won = report["summary"], [e["success"] for e in report["episodes"]]
            low, high = s["success_rate_wilson95"]
            gained = sum(w and not r for w, r in zip(won, reference, strict=True))
            lost = sum(r and not w for w, r in zip(won, reference, strict=True))
            print(f"| {label} | {scale} | {s['successes']}/{s['episodes']} | {100 * low:.0f}-{100 * high:.0f} % | "
                  f"{s['final_error_mm_median']:.1f} | {gained} / {lost} |")  # fmt: skip
    print(f"wrote {args.out}/noise_scale.json and noise_scale.png")


if __name__ == "__main__":
    main()
