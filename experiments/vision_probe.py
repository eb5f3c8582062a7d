"""Can a vision tower find the target? The small SigLIP of a `tiny` config, trained from scratch with a probe head to
regress where the episode's target is (its final tip position, within 10 mm of the ball) from the camera images.

A minute or two per configuration instead of a training run and a closed-loop evaluation: a tower that cannot
locate the ball here cannot steer the arm to it either. Median / mean error (mm) on the validation episodes.
`--tower cnn` swaps in a small convolutional net with a spatial soft-argmax (the classic visuomotor encoder, Levine
et al. 2016) as a reference for how well the data itself lets a network locate the ball.

    .venv/bin/python experiments/vision_probe.py PREPARED_DIR --cameras base_0_rgb right_wrist_0_rgb \\
        --vision '{width: 64, depth: 2, mlp_dim: 128, num_heads: 4, patch_size: 28}' --steps 2000 --readout flat
"""

from __future__ import annotations

import argparse
from pathlib import Path
import time

import numpy as np
import torch
from torch import nn
import yaml

from softarm.data.prepared import PreparedDataset
from softarm.layout import GRAPH_NODES
from softarm.model import PI0GraphPytorch
from softarm.model_config import preset
from softarm.vision import VisionSpec


def load(prepared: Path, cameras: list[str]):
    dataset = PreparedDataset(prepared, "all")
    images = [dataset.arrays[f"image_{c}"] for c in cameras]
    nodes = dataset.arrays[GRAPH_NODES]
    targets = np.zeros((len(nodes), 3), np.float32)
    split: dict[str, list[int]] = {"train": [], "val": []}
    for episode in dataset.episodes:
        start, length = episode["start"], episode["length"]
        targets[start : start + length] = nodes[start + length - 1, -1, :3]  # where the tip ended: the target
        split[episode["split"]] += range(start, start + length)
    return images, targets, split


class SpatialSoftArgmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = torch.softmax(x.flatten(2), dim=-1).view(b, c, h, w)
        ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
        return torch.cat([(p.sum(3) * ys).sum(2), (p.sum(2) * xs).sum(2)], dim=1)


class ConvProbe(nn.Module):
    def __init__(self, cameras: int) -> None:
        super().__init__()
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 16, 3, 1, 1), SpatialSoftArgmax())
            for _ in range(cameras)
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(32 * cameras, 128), nn.ReLU(), nn.Linear(128, 3))

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([tower(x) for tower, x in zip(self.towers, images, strict=True)], dim=1))


class Probe(nn.Module):
    """The tower's tokens of every camera -> 3-D target. `flat`: an MLP over all tokens; `attention`: a few learned
    queries attend over the tokens (closer to how the action expert reads them)."""

    def __init__(self, model: PI0GraphPytorch, tokens: int, readout: str) -> None:
        super().__init__()
        self.tower = model.paligemma_with_expert
        width = self.tower.paligemma.config.text_config.hidden_size
        self.readout = readout
        self.queries = nn.Parameter(torch.randn(4, width) * 0.1)
        inputs = tokens * width if readout == "flat" else 4 * width
        self.head = nn.Sequential(nn.Linear(inputs, 256), nn.GELU(), nn.Linear(256, 3))

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        tokens = torch.cat([self.tower.embed_image(x) for x in images], dim=1)
        if self.readout == "flat":
            return self.head(tokens.flatten(1))
        weights = torch.softmax(torch.einsum("qd,btd->bqt", self.queries, tokens) / tokens.shape[-1] ** 0.5, dim=-1)
        return self.head(torch.einsum("bqt,btd->bqd", weights, tokens).flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--cameras", nargs="+", default=["base_0_rgb"])
    parser.add_argument("--vision", default="{width: 64, depth: 2, mlp_dim: 128, num_heads: 4, patch_size: 28}")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--readout", choices=["flat", "attention"], default="flat")
    parser.add_argument("--tower", choices=["siglip", "cnn"], default="siglip")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch = 4, 2

    images, targets, split = load(args.prepared, args.cameras)
    mean, std = targets[split["train"]].mean(0), targets[split["train"]].std(0)
    vision = VisionSpec(**yaml.safe_load(args.vision))
    torch.manual_seed(0)
    if args.tower == "cnn":
        probe = ConvProbe(len(args.cameras))
        params = list(probe.parameters())
    else:
        model = PI0GraphPytorch(preset("tiny", vision=vision, fusion="none"))
        probe = Probe(model, len(args.cameras) * (224 // vision.patch_size) ** 2, args.readout)
        paligemma = model.paligemma_with_expert.paligemma.model
        params = [*paligemma.vision_tower.parameters(), *paligemma.multi_modal_projector.parameters(),
                  probe.queries, *probe.head.parameters()]  # fmt: skip
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    rng = np.random.default_rng(0)

    def batch(ids) -> tuple[list[torch.Tensor], torch.Tensor]:
        ids = sorted(ids)
        x = [torch.from_numpy(np.stack([im[i] for i in ids])).permute(0, 3, 1, 2).float() / 127.5 - 1 for im in images]
        return x, torch.from_numpy((targets[ids] - mean) / std)

    val = split["val"][::3]
    tower = "cnn" if args.tower == "cnn" else f"{args.vision}, readout {args.readout}"
    print(f"{tower}, cameras {args.cameras}: {len(split['train'])} train / "
          f"{len(val)} val frames")  # fmt: skip
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = batch(rng.choice(split["train"], args.batch))
        loss = ((probe(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(args.steps // 4, 1) == 0:
            with torch.no_grad():
                errors = torch.cat([
                    ((probe(x) - y) * torch.from_numpy(std)).norm(dim=1)
                    for x, y in (batch(val[k : k + 64]) for k in range(0, len(val), 64))
                ]) * 1000  # fmt: skip
            print(f"step {step}: train loss {loss.item():.3f}, val error median {errors.median():.1f} mm, "
                  f"mean {errors.mean():.1f} mm ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
