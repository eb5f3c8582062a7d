"""Full-size π0 on a GPU: the training step per precision and with LoRA, and inference latency eager vs compiled.

1. Training: the `pi0` preset (3.5 B parameters) with the graph (fusion `state`), random weights and a random batch
   of the served shapes (3 cameras at 224x224, 48 prompt tokens, 16 x 32 actions), gradient checkpointing on, AdamW:
   seconds per step, peak memory, and an estimated MFU (model FLOPs per step / step time / the GPU's dense bf16 peak;
   6 FLOPs per parameter and token for a full update, 4 with LoRA, recomputation not counted).
2. Inference: `sample_actions` (10 denoising steps, batch 1) eager and under torch.compile, with 1, 2 and 3 cameras:
   median milliseconds per chunk after warm-up, and the compile time; and eager with real-time chunking guidance
   (a previous chunk of 8 actions, delay 2: one extra backward pass through the action expert per step).

Without CUDA it prints why it skips and exits 0. `--preset tiny --device cpu` runs the same code on the tiny preset,
to check the script itself anywhere.

    .venv/bin/python benchmarks/gpu.py
    .venv/bin/python benchmarks/gpu.py --preset tiny --device cpu --steps 2 --repeats 2 --compile-mode default
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from softarm.layout import IMAGE_SIZE, IMAGE_SLOTS
from softarm.model import PI0GraphPytorch
from softarm.model_config import preset
from softarm.openpi_compat import unchecked_observation
from softarm.rtc import ActionPrefix
from softarm.train.lora import apply_lora

# dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets); another GPU gets no MFU figure
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
               "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}  # fmt: skip
PROMPT_TOKENS = 48


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(model: PI0GraphPytorch, size: int, cameras: int, device: torch.device):
    config, gen = model.config, torch.Generator().manual_seed(0)
    images = {slot: torch.rand(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2 - 1 for slot in IMAGE_SLOTS}
    masks = {slot: torch.full((size,), i < cameras) for i, slot in enumerate(IMAGE_SLOTS)}
    tokens = torch.randint(0, config.vocab_size, (size, config.max_token_len), generator=gen)
    observation = unchecked_observation(
        images={k: v.to(device) for k, v in images.items()}, image_masks={k: v.to(device) for k, v in masks.items()},
        state=torch.randn(size, 32, generator=gen).to(device), tokenized_prompt=tokens.to(device),
        tokenized_prompt_mask=(torch.arange(config.max_token_len) < PROMPT_TOKENS).expand(size, -1).to(device),
    )  # fmt: skip
    graph = torch.randn(size, config.num_nodes, config.node_features, generator=gen).to(device)
    actions = torch.randn(size, config.action_horizon, 32, generator=gen).to(device)
    return observation, graph, actions


def flops_per_sample(model: PI0GraphPytorch, cameras: int, per_token: int) -> float:
    """`per_token` FLOPs per parameter and token, summed over the towers each token passes through."""
    paligemma = model.paligemma_with_expert.paligemma
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    vision, language = count(paligemma.model.vision_tower), count(paligemma.model.language_model)
    expert = count(model.paligemma_with_expert.gemma_expert)
    image_tokens = paligemma.config.text_config.num_image_tokens
    prefix = cameras * image_tokens + PROMPT_TOKENS
    return per_token * (
        vision * image_tokens * cameras + language * prefix + expert * (model.config.action_horizon + 1)
    )


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def train_step_figures(args, precision: str, lora: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = preset(args.preset, fusion="state", dtype="bfloat16" if precision == "bf16" else "float32")
    model = PI0GraphPytorch(config)
    if lora:
        apply_lora(model, rank=16, expert_rank=32, alpha=None, dropout=0.0)
    model.gradient_checkpointing_enable()
    model = model.to(device).train().trust_validated_inputs()
    model.augment_images = False
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    observation, graph, actions = batch(model, args.batch, 3, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        with autocast or contextlib.nullcontext():
            loss = model(observation, actions, graph_nodes=graph).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    flops = flops_per_sample(model, 3, 4 if lora else 6) * args.batch
    peak = peak_tflops(device)
    return {
        "s/step": seconds,
        "peak GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "MFU": flops / seconds / (peak * 1e12) if peak else None,
        "trainable M": sum(p.numel() for p in trainable) / 1e6,
    }


def latency_figures(args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    model = PI0GraphPytorch(preset(args.preset, fusion="state", dtype=dtype)).to(device).eval().trust_validated_inputs()
    rows = []
    previous = torch.randn(1, model.config.action_horizon, 32, device=device)
    for mode in ("eager", args.compile_mode, "guided"):
        model.drop_prefix_padding = mode != args.compile_mode  # as SoftArmPolicy serves: compiled keeps static shapes
        if mode != args.compile_mode:
            sample = model.sample_actions
        elif args.compile_backend == "inductor":
            sample = torch.compile(model.sample_actions, mode=mode)
        else:  # the graph capture without code generation: checks the path, times nothing worth reading
            sample = torch.compile(model.sample_actions, backend=args.compile_backend)
        prefix = ActionPrefix(previous, overlap=8, delay=2) if mode == "guided" else None
        for cameras in (1, 2, 3):
            observation, graph, _ = batch(model, 1, cameras, device)
            start = time.perf_counter()
            with torch.inference_mode(mode != "guided"):  # guidance differentiates through the action expert
                sample(device, observation, graph_nodes=graph, prefix=prefix)
                sync(device)
                first = time.perf_counter() - start
                for _ in range(2):  # compiled: CUDA graphs are recorded on a later call
                    sample(device, observation, graph_nodes=graph, prefix=prefix)
                times = []
                for _ in range(args.repeats):
                    sync(device)
                    start = time.perf_counter()
                    sample(device, observation, graph_nodes=graph, prefix=prefix)
                    sync(device)
                    times.append(time.perf_counter() - start)
            rows.append({"mode": mode, "cameras": cameras, "first call s": first,
                         "ms/chunk": 1000 * statistics.median(times)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pi0", choices=["pi0", "tiny"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8, help="training batch")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20, help="timed inference calls per cell")
    parser.add_argument("--compile-mode", default="max-autotune")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor, or eager)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.device, args.batch, args.steps, args.warmup, args.repeats = "tiny", "cpu", 1, 1, 0, 1
        args.compile_mode, args.compile_backend = "default", "eager"  # inductor's compile is tested elsewhere
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; skipped (run it on a GPU machine, or with --device cpu "
              "--preset tiny to check the script)")  # fmt: skip
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.preset} on {where}, torch {torch.__version__}")
    if not args.skip_training:
        print(f"\ntraining step, batch {args.batch}, 3 cameras, gradient checkpointing, AdamW")
        print("| precision | LoRA | s/step | peak memory (GiB) | est. MFU | trainable (M) |\n|---|---|---|---|---|---|")
        for precision, lora in (("bf16", False), ("bf16-mixed", False), ("bf16", True)):
            try:
                f = train_step_figures(args, precision, lora, device)
            except torch.OutOfMemoryError:
                print(f"| {precision} | {'16/32' if lora else '-'} | out of memory | | | |")
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            mfu = f"{100 * f['MFU']:.0f} %" if f["MFU"] is not None else "-"
            peak = f"{f['peak GiB']:.1f}" if f["peak GiB"] is not None else "-"
            print(f"| {precision} | {'16/32' if lora else '-'} | {f['s/step']:.3f} | {peak} | {mfu} | "
                  f"{f['trainable M']:.4g} |")  # fmt: skip
    print(f"\ninference, batch 1, 10 denoising steps; compiled = torch.compile(mode={args.compile_mode!r})")
    rows = latency_figures(args, device)
    print("| cameras | eager ms/chunk | compiled ms/chunk | speed-up | compile (first call) s | eager + RTC guidance "
          "ms/chunk | guidance cost |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for cameras in (1, 2, 3):
        eager, compiled, guided = (next(r for r in rows if r["cameras"] == cameras and r["mode"] == m)
                                   for m in ("eager", args.compile_mode, "guided"))  # fmt: skip
        print(f"| {cameras} | {eager['ms/chunk']:.1f} | {compiled['ms/chunk']:.1f} | "
              f"{eager['ms/chunk'] / compiled['ms/chunk']:.2f}x | {compiled['first call s']:.1f} | "
              f"{guided['ms/chunk']:.1f} | {guided['ms/chunk'] / eager['ms/chunk']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
