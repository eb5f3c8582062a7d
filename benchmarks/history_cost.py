"""What history costs: training step time (forward + backward) and inference latency (a 10-step sampled chunk) of
PI0GraphPytorch with the graph over K control steps, or with K camera frames (the current and K-1 past ones of
every camera), against the same model without history, side by side.

Same config, same weights (the history models add a step embedding and lag biases, a wider node projection, or the
visual memory), same batch and seeds; the variants are timed in rotating order so that drift in machine load hits
all alike, and the ratio of medians to no history is printed. Graph history grows only the graph encoder: its K * N
tokens never reach the VLM or the action expert. Visual `memory` runs the tower on the past frames without gradients
and keeps the VLM's prefix as it is (`attend` the same, reading every patch of the past frames; `concat` reads each
patch's frames side by side with a small MLP); `stack` puts every past frame's tokens into the prefix (the naive
way).
"cached": a served model keeps past frames' tokens (`FrameCache`), here all of them, which a robot's window of
frames it sent before reaches in its steady state but for the newest past frame.

    .venv/bin/python benchmarks/history_cost.py                   # tiny + realistic shapes, on CPU
    .venv/bin/python benchmarks/history_cost.py --scenario full   # full-size pi0 (needs a GPU)
    .venv/bin/python benchmarks/history_cost.py --variants "frames K=4 attend"   # one variant, beside no history
    .venv/bin/python benchmarks/history_cost.py --smoke           # seconds: that it runs (the suite calls it)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
import runpy
import statistics
import time

import torch

from softarm.model import PI0GraphPytorch
from softarm.model_config import SoftArmModelConfig, preset
from softarm.visual_memory import FrameCache

# graph_overhead.py's scenarios and random batch (images, prompt, state, actions, the graph shaped by the history)
_OVERHEAD = runpy.run_path(str(Path(__file__).with_name("graph_overhead.py")))
scenario_overrides, make_batch = _OVERHEAD["scenario_overrides"], _OVERHEAD["make_batch"]
VARIANTS = {
    "no history": {},
    **{f"graph K={k} {mode}": {"history_steps": k, "history_mode": mode}
       for k, mode in ((2, "attend"), (4, "attend"), (8, "attend"), (4, "stack"), (8, "stack"))},
    **{f"frames K={k} {mode}": {"image_history_steps": k, "image_history_mode": mode}
       for k, mode in ((2, "memory"), (4, "memory"), (6, "memory"), (4, "attend"), (6, "attend"), (4, "concat"),
                       (6, "concat"), (4, "stack"), (6, "stack"))},
    "frames K=6 memory, cached": {"image_history_steps": 6},
}  # fmt: skip


def past_frames(config: SoftArmModelConfig, batch: int, device: torch.device):
    """Random past frames of the model's history slots and an all-real mask (None without visual history)."""
    past = config.image_history.steps - 1
    if not past:
        return None
    gen = torch.Generator().manual_seed(1)
    frames = {slot: (torch.rand(batch, past, 3, 224, 224, generator=gen) * 2 - 1).to(device)
              for slot in config.history_slots}  # fmt: skip
    return frames, torch.ones(batch, past, dtype=torch.bool, device=device)


def timed(call, *args, device: torch.device) -> float:
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    call(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(
    base_config: SoftArmModelConfig, batch: int, repeats: int, device: torch.device, names: list[str]
) -> dict[str, dict]:
    """Median seconds per training step and per sampled chunk, for each (K, mode) named, with shared weights."""
    torch.manual_seed(0)
    reference = PI0GraphPytorch(base_config).state_dict()
    runs = {}
    for name in names:
        overrides = VARIANTS[name]
        config = dataclasses.replace(base_config, **overrides)
        model = PI0GraphPytorch(config)
        own = model.state_dict()
        same = {k: v for k, v in reference.items() if own[k].shape == v.shape}
        model.load_state_dict(same, strict=False)
        model.to(device).trust_validated_inputs()
        if name.endswith("cached"):
            model.frame_cache = FrameCache()
        runs[name] = (model, (*make_batch(config, batch, device), past_frames(config, batch, device)))

    def train_step(model, data) -> None:  # no mask: every step of the window is real
        obs, actions, graph, frames = data
        model.train().zero_grad(set_to_none=True)
        model(obs, actions, graph_nodes=graph, image_history=frames).mean().backward()

    def infer(model, data) -> None:
        obs, _, graph, frames = data
        with torch.inference_mode():
            model.eval().sample_actions(device, obs, graph_nodes=graph, num_steps=10, image_history=frames)

    times = {name: {"train": [], "infer": []} for name in runs}
    order = list(runs)
    for i in range(1 + repeats):  # the first round warms up
        for name in order[i % len(order) :] + order[: i % len(order)]:
            model, data = runs[name]
            for what, call in (("train", train_step), ("infer", infer)):
                seconds = timed(call, model, data, device=device)
                if i:
                    times[name][what].append(seconds)
    return {name: {what: statistics.median(t) for what, t in kinds.items()} for name, kinds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["tiny", "realistic", "full", "all"], default="all")
    parser.add_argument("--fusion", choices=["state", "suffix", "prefix"], default="state")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which to time (no history always)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    names = ["no history", *(name for name in args.variants if name != "no history")]
    if args.smoke:
        args.scenario, args.repeats, args.batch = "tiny", 1, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scenarios = ["tiny", "realistic"] if args.scenario == "all" else [args.scenario]
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} fusion={args.fusion} "
          f"repeats={args.repeats} (medians; ratios to no history, measured side by side)")  # fmt: skip
    print("| scenario | history | train s/step | ratio | infer s/chunk | ratio |")
    print("|---|---|---|---|---|---|")
    for scenario in scenarios:
        name, overrides = scenario_overrides(scenario)
        config = preset(name, **overrides, fusion=args.fusion)
        result = compare(config, args.batch, args.repeats, device, names)
        none = result["no history"]
        for variant, t in result.items():
            print(f"| {scenario} | {variant} | {t['train']:.4f} | {t['train'] / none['train']:.3f} | "
                  f"{t['infer']:.4f} | {t['infer'] / none['infer']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
