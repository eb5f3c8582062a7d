"""What the graph costs: forward+backward step time of PI0GraphPytorch vs openpi's PI0Pytorch, side by side.

Same config, same base weights, same batch and seeds; the models are timed in rotating order so that drift in
machine load hits all alike, and the ratio of medians is printed per fusion mode. For token fusion (prefix, suffix)
a third run times the base model with N = num_nodes more prompt tokens: what a sequence N tokens longer costs by
itself, to separate the encoder's cost from the attention's.

    .venv/bin/python benchmarks/graph_overhead.py                  # tiny + realistic shapes, on CPU
    .venv/bin/python benchmarks/graph_overhead.py --scenario full  # full-size pi0/pi0.5 in bf16 (needs a GPU)
    .venv/bin/python benchmarks/graph_overhead.py --smoke          # seconds: that it runs (the suite calls it)

Scenarios:
  tiny       the tiny preset as tests use it (16 image tokens per camera)
  realistic  tiny widths, real token counts: 3 cameras 224x224 with patch 14 (256 tokens each), horizon 16,
             48 prompt tokens
  full       the real pi0 / pi0.5 (gemma_2b + gemma_300m, SigLIP So400m/14), random weights
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from openpi.models.model import Observation
import torch

from softarm.layout import IMAGE_SLOTS
from softarm.model import PI0GraphPytorch, build_base_model
from softarm.model_config import preset
from softarm.vision import VisionSpec

MODES = {"pi0": ("state", "prefix", "suffix"), "pi05": ("prefix", "suffix")}


def scenario_overrides(name: str) -> tuple[str, dict]:
    if name == "tiny":
        return "tiny", {}
    if name == "realistic":
        return "tiny", {"vision": VisionSpec(patch_size=14), "max_token_len": 48}
    if name == "full":
        return "pi0", {}  # gemma_2b + gemma_300m, SigLIP So400m/14, bf16
    raise ValueError(name)


def make_batch(config, batch: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    obs = Observation(
        images={k: (torch.rand(batch, 3, 224, 224, generator=gen) * 2 - 1).to(device) for k in IMAGE_SLOTS},
        image_masks={k: torch.ones(batch, dtype=torch.bool, device=device) for k in IMAGE_SLOTS},
        state=torch.randn(batch, 32, generator=gen).to(device),
        tokenized_prompt=torch.randint(0, config.vocab_size, (batch, config.max_token_len), generator=gen).to(device),
        tokenized_prompt_mask=torch.ones(batch, config.max_token_len, dtype=torch.bool, device=device),
    )
    actions = torch.randn(batch, config.action_horizon, 32, generator=gen).to(device)
    steps = (config.history.steps,) if config.history.steps > 1 else ()  # a graph history window (history_cost.py)
    graph = torch.randn(batch, *steps, config.num_nodes, config.node_features, generator=gen).to(device)
    return obs, actions, graph


def step_seconds(model, obs, actions, graph, device: torch.device) -> float:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    kwargs = {} if graph is None else {"graph_nodes": graph}
    model(obs, actions, **kwargs).mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(config, batch: int, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median step seconds of the base model, the graph model and, for token fusion, the base model with as many
    extra prompt tokens as the graph adds (the cost of a longer sequence alone)."""
    torch.manual_seed(0)
    base = build_base_model(config).to(device).train()
    graph_model = PI0GraphPytorch(config)
    graph_model.load_state_dict(base.state_dict(), strict=False)
    obs, actions, graph = make_batch(config, batch, device)
    runs = {"base": (base, obs, actions, None), "graph": (graph_model.to(device).train(), obs, actions, graph)}
    if config.fusion != "state":
        longer = dataclasses.replace(config, max_token_len=config.max_token_len + config.num_nodes)
        long_obs, _, _ = make_batch(longer, batch, device)
        runs["base+tokens"] = (base, long_obs, actions, None)
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for i in range(warmup + repeats):
        # Rotate who goes first, so no model always inherits another's cache and allocator state.
        for name in order[i % len(order) :] + order[: i % len(order)]:
            seconds = step_seconds(*runs[name], device)
            if i >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["tiny", "realistic", "full", "all"], default="all")
    parser.add_argument("--variant", choices=["pi0", "pi05", "both"], default="both")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.scenario, args.variant, args.repeats, args.warmup = "tiny", "pi0", 1, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scenarios = ["tiny", "realistic"] if args.scenario == "all" else [args.scenario]
    variants = ["pi0", "pi05"] if args.variant == "both" else [args.variant]
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} repeats={args.repeats}")
    print(
        f"{'scenario':<10} {'variant':<7} {'fusion':<7} {'base s/step':>11} {'graph s/step':>12} {'ratio':>6} "
        f"{'base+N tokens ratio':>19}"
    )
    for scenario in scenarios:
        name, overrides = scenario_overrides(scenario)
        for variant in variants:
            for fusion in MODES[variant]:
                config = preset(name, **overrides, pi05=variant == "pi05", fusion=fusion)
                t = compare(config, args.batch, args.repeats, args.warmup, device)
                longer = f"{t['base+tokens'] / t['base']:.3f}" if "base+tokens" in t else "-"
                print(
                    f"{scenario:<10} {variant:<7} {fusion:<7} {t['base']:>11.4f} {t['graph']:>12.4f} "
                    f"{t['graph'] / t['base']:>6.3f} {longer:>19}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
