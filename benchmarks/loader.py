"""Loader throughput: samples/s at batch 32 with 3 cameras, for 0, 1 and 2 worker processes, for one dataset and
side by side for a mixture (`data.datasets`: the same frames as two datasets, weights 1 and 0.5).

Builds a synthetic raw dataset (3 cameras at 240x320, 10x19 graph, 10-D actions, 4-D state), converts it with
`softarm convert`, then times full passes of the training loader (prepared frames -> SoftArmInputs -> openpi's
Normalize / TokenizePrompt / PadStatesAndActions -> collate), images staying uint8.

    .venv/bin/python benchmarks/loader.py
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
import tempfile
import time

import numpy as np
from openpi.shared import normalize

from softarm.data.convert import ConvertOptions, convert
from softarm.data.loader import MixtureDataset, SoftArmDataset, make_loader, prepared_cameras
from softarm.data.prepared import PreparedDataset
from softarm.data.raw import RawEpisode, write_episode
from softarm.data.tokenizer import SentencePieceTokenizer
from softarm.data.transforms import input_transform


def build_dataset(root: Path, episodes: int, length: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(episodes):
        write_episode(
            root / "raw" / f"ep_{i:03d}.h5",
            RawEpisode(
                path=Path(),
                images={
                    c: rng.integers(0, 256, (length, 240, 320, 3), dtype=np.uint8) for c in ("base", "tip", "side")
                },
                graph_nodes=rng.normal(size=(length, 10, 19)).astype(np.float32),
                actions=rng.uniform(-1, 1, (length, 10)).astype(np.float32),
                prompt=f"reach the red ball {i % 3}",
                fps=10.0,
                state=rng.normal(size=(length, 4)).astype(np.float32),
            ),
        )
    convert(root / "raw", root / "prep", ConvertOptions(val_episodes=0))
    return root / "prep"


def rate(loader, samples: int | None = None) -> float:
    """Samples/s over `samples` (default: an epoch) after the first batch (workers started, caches warm)."""
    batches = iter(loader)
    next(batches)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch["actions"])
        if samples is not None and seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pi05", action="store_true", help="quantile normalisation and the pi0.5 prompt format")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.length, args.batch, args.workers = 2, 8, 4, [0]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = build_dataset(Path(tmp), args.episodes, args.length)
        data = PreparedDataset(prepared, "train")
        tokenizer = SentencePieceTokenizer(prepared / "tokenizer.model")
        transform = input_transform(
            prepared_cameras(data), normalize.load(prepared), tokenizer, pi05=args.pi05, resize=False
        )
        dataset = SoftArmDataset(data, transform)
        mixture = MixtureDataset([dataset, SoftArmDataset(PreparedDataset(prepared, "train"), transform)])
        print(f"{len(dataset)} samples, batch {args.batch}, 3 cameras 224x224 uint8, pi05={args.pi05}")
        print(f"{'workers':>7} {'samples/s':>10} {'mixture':>10} {'ratio':>6}")
        for workers in args.workers:
            one = rate(make_loader(dataset, args.batch, num_workers=workers))
            mixed = rate(make_loader(mixture, args.batch, num_workers=workers, weights=[1.0, 0.5]), len(dataset))
            print(f"{workers:>7} {one:>10.0f} {mixed:>10.0f} {mixed / one:>6.2f}", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
