"""What dropping shared prefix padding saves: PI0GraphPytorch's training step with and without it, side by side.

A batch as an arm with two cameras and a short prompt produces it: the third image slot is masked in every sample
and the prompt fills a few of its `max_token_len` positions. The two variants are the same model and batch; the
padding drop is switched off by the model's own switch, `drop_prefix_padding` (what a compiled model turns off).
They are timed in rotating order, and the losses are compared (the drop is exact up to float rounding).

    .venv/bin/python benchmarks/prefix_padding.py                       # the demo's tiny tower (56-px patches)
    .venv/bin/python benchmarks/prefix_padding.py --patch 28 --width 64 --depth 2
    .venv/bin/python benchmarks/prefix_padding.py --smoke               # seconds: that it runs (the suite calls it)
"""

from __future__ import annotations

import argparse
import statistics
import time

from openpi.models.model import Observation
import torch

from softarm.layout import IMAGE_SLOTS
from softarm.model import PI0GraphPytorch
from softarm.model_config import preset
from softarm.vision import VisionSpec


def make_batch(config, batch: int, cameras: int, prompt_tokens: int):
    gen = torch.Generator().manual_seed(0)
    prompt_mask = torch.zeros(batch, config.max_token_len, dtype=torch.bool)
    prompt_mask[:, :prompt_tokens] = True
    obs = Observation(
        images={k: torch.rand(batch, 3, 224, 224, generator=gen) * 2 - 1 for k in IMAGE_SLOTS},
        image_masks={k: torch.full((batch,), i < cameras) for i, k in enumerate(IMAGE_SLOTS)},
        state=torch.randn(batch, 32, generator=gen),
        tokenized_prompt=torch.randint(0, config.vocab_size, (batch, config.max_token_len), generator=gen),
        tokenized_prompt_mask=prompt_mask,
    )
    actions = torch.randn(batch, config.action_horizon, 32, generator=gen)
    graph = torch.randn(batch, config.num_nodes, config.node_features, generator=gen)
    return obs, actions, graph


def step(model, obs, actions, graph, drop: bool) -> tuple[float, float]:
    """Seconds for forward + backward, and the loss."""
    model.drop_prefix_padding = drop
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    loss = model(obs, actions, graph_nodes=graph).mean()
    loss.backward()
    return time.perf_counter() - start, float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, default=56)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cameras", type=int, default=2, help="image slots in use (of 3)")
    parser.add_argument("--prompt-tokens", type=int, default=6, help="prompt positions in use")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.repeats, args.warmup = 2, 1, 0
    vision = VisionSpec(width=args.width, depth=args.depth, mlp_dim=2 * args.width, num_heads=max(args.width // 16, 1),
                        patch_size=args.patch)  # fmt: skip
    config = preset("tiny", vision=vision, fusion="state")
    torch.manual_seed(0)
    model = PI0GraphPytorch(config).train()
    model.augment_images = False
    batch = make_batch(config, args.batch, args.cameras, args.prompt_tokens)
    tokens = (224 // args.patch) ** 2
    print(f"threads={torch.get_num_threads()} batch={args.batch} patch={args.patch} ({tokens} tokens per image), "
          f"{args.cameras} of 3 cameras, {args.prompt_tokens} of {config.max_token_len} prompt tokens")  # fmt: skip
    times: dict[bool, list[float]] = {True: [], False: []}
    losses: dict[bool, float] = {}
    for i in range(args.warmup + args.repeats):
        for drop in (True, False) if i % 2 else (False, True):
            seconds, losses[drop] = step(model, *batch, drop)
            if i >= args.warmup:
                times[drop].append(seconds)
    full, dropped = statistics.median(times[False]), statistics.median(times[True])
    print(f"prefix as openpi builds it: {full:.4f} s/step; shared padding dropped: {dropped:.4f} s/step; "
          f"speed-up {full / dropped:.2f}x; loss difference {abs(losses[True] - losses[False]):.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
