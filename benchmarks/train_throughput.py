"""Training throughput of the real loop (`softarm.train.loop.train`): graph fusion modes vs the base model.

Generates a small simulated dataset (reach, 2 cameras), converts it, then runs the same config for each fusion mode
(`none` = base PI0Pytorch), interleaved over `--repeats` rounds, and prints samples/s and the ratio to `none`.
The first `--warmup` steps of every run are excluded: the loop logs samples/s every `--warmup` steps, and the
later intervals are averaged.

    .venv/bin/python benchmarks/train_throughput.py                       # tiny preset, CPU
    .venv/bin/python benchmarks/train_throughput.py --preset pi0 --precision bf16-mixed --batch 32   # on a GPU
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import statistics
import tempfile

from softarm.data.convert import ConvertOptions, convert
from softarm.sim.generate import generate
from softarm.train.config import load_config
from softarm.train.loop import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"


def run(prepared: Path, out: Path, fusion: str, args: argparse.Namespace) -> float:
    overrides = [
        f"data.path={prepared}", f"train.out_dir={out}", f"model.preset={args.preset}",
        f"model.overrides.fusion={fusion}", f"data.batch_size={args.batch}", f"train.precision={args.precision}",
        f"train.steps={args.warmup + args.steps}", f"train.log_every={args.warmup}", "train.val_every=1000000",
        "train.save_every=1000000", "train.ema_decay=null", "train.tensorboard=false",
    ]  # fmt: skip
    train(load_config(CONFIG, overrides))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # equal logging intervals after the warm-up: the overall rate is the harmonic mean of the interval rates
    timed = [r["samples_per_s"] for r in records if "samples_per_s" in r and r["step"] > args.warmup]
    return statistics.harmonic_mean(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "pi0", "pi05"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed", "bf16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fusions", nargs="+", default=["none", "state", "suffix", "prefix"])
    parser.add_argument("--episodes", type=int, default=12, help="simulated reach episodes to train on")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.steps, args.warmup, args.repeats, args.fusions = 2, 1, 1, 1, ["none", "state"]
        args.episodes = 2
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (the logging interval)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate("reach", args.episodes, root / "raw")
        convert(root / "raw", root / "prep", ConvertOptions(val_episodes=min(2, args.episodes - 1)))
        rates: dict[str, list[float]] = {f: [] for f in args.fusions}
        for r in range(args.repeats):
            for fusion in args.fusions:
                rates[fusion].append(run(root / "prep", root / f"run_{fusion}_{r}", fusion, args))
    base = statistics.median(rates["none"]) if "none" in rates else None
    print(f"\npreset {args.preset}, {args.precision}, batch {args.batch}, {args.steps} timed steps x {args.repeats}")
    print(f"{'fusion':<8} {'samples/s (median)':>20} {'runs':>24} {'vs none':>8}")
    for fusion, values in rates.items():
        median = statistics.median(values)
        ratio = f"{median / base:.3f}" if base else "-"
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"{fusion:<8} {median:>20.1f} {runs:>24} {ratio:>8}")


if __name__ == "__main__":
    main()
