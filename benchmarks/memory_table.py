"""How much GPU memory fine-tuning π0 / π0.5 with the graph takes: the static part computed from the model's own
parameter counts (built on the meta device, frozen and LoRA-adapted exactly as `softarm train` does), per precision
and strategy, over 1/2/4/8 GPUs.

- weights: every parameter, in the master dtype (fp32 for bf16-mixed, bf16 for bf16);
- gradients and AdamW's two moments: the trainable parameters, in the master dtype;
- EMA (train.ema_decay): a copy of the trainable parameters, in the master dtype (the frozen ones are shared with
  the model, softarm.train.ema); under FSDP the copy is sharded whole, frozen parameters included;
- FSDP (train.strategy=fsdp) shards all four over the GPUs; DDP keeps them whole on each.

Activations come on top, per sample: with gradient checkpointing (configs/soft_arm.yaml) they are what one
layer's recomputation and the saved layer inputs take. `--activations-gb` adds a figure per sample measured
elsewhere (benchmarks/full_size_cpu.py gives a CPU process's peak at batch 1, which bounds it).

    .venv/bin/python benchmarks/memory_table.py
    .venv/bin/python benchmarks/memory_table.py --preset pi05 --batch 32 --activations-gb 1.0
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from softarm.model import PI0GraphPytorch
from softarm.model_config import preset
from softarm.train.loop import freeze
from softarm.train.lora import apply_lora

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    master_bytes: int  # bytes per parameter of the stored weights, gradients and optimizer moments
    lora: tuple[int, int] = (0, 0)  # ranks on the VLM and the action expert
    frozen: tuple[str, ...] = ()


SETUPS = (
    Setup("full, bf16-mixed", 4),
    Setup("full, bf16", 2),
    Setup("LoRA 16/32, bf16", 2, lora=(16, 32)),
    Setup("frozen vision + VLM, bf16-mixed", 4, frozen=("vision", "vlm")),
)


def counts(name: str, setup: Setup) -> tuple[int, int]:
    """(all parameters, trainable parameters) of the graph model as `softarm train` would set it up."""
    with torch.device("meta"):
        model = PI0GraphPytorch(preset(name))
        apply_lora(model, rank=setup.lora[0], expert_rank=setup.lora[1], alpha=None, dropout=0.0)
    freeze(model, setup.frozen)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pi0", choices=["pi0", "pi05", "tiny"])
    parser.add_argument("--batch", type=int, default=32, help="global batch, split over the GPUs")
    parser.add_argument("--activations-gb", type=float, default=None, help="activation memory per sample, if known")
    parser.add_argument("--no-ema", action="store_true", help="without train.ema_decay")
    parser.add_argument("--smoke", action="store_true", help="the tiny preset: checks that the script runs")
    args = parser.parse_args()
    name = "tiny" if args.smoke else args.preset
    gpus = (1, 2, 4, 8)
    print(f"{name}, EMA {'off' if args.no_ema else 'on'}, global batch {args.batch}: GB per GPU")
    print("| setup | parameters (trainable) | weights | gradients | AdamW | EMA | "
          + " | ".join(f"DDP x{n}" if n == 1 else f"FSDP x{n}" for n in gpus) + " |")  # fmt: skip
    print("|---" * (6 + len(gpus)) + "|")
    for setup in SETUPS:
        total, trainable = counts(name, setup)
        b = setup.master_bytes
        weights, grads, adam = total * b, trainable * b, 2 * trainable * b
        ema, sharded_ema = (0, 0) if args.no_ema else (trainable * b, total * b)
        cells = []
        for n in gpus:  # n = 1: DDP, whose EMA shares the frozen weights; FSDP shards a whole copy
            per_gpu = weights + grads + adam + ema if n == 1 else (weights + grads + adam + sharded_ema) / n
            if args.activations_gb is not None:
                per_gpu += args.activations_gb * GB * args.batch / n
            cells.append(f"{per_gpu / GB:.1f}")
        print(f"| {setup.name} | {total / 1e9:.3f} B ({trainable / 1e9:.3f} B) | {weights / GB:.1f} | {grads / GB:.1f} "
              f"| {adam / GB:.1f} | {ema / GB:.1f} | {' | '.join(cells)} |")  # fmt: skip
    extra = "" if args.activations_gb is None else f", plus {args.activations_gb} GB of activations per sample"
    print(
        f"static memory only{extra}; FSDP shards everything static (the EMA copy whole), DDP (x1) keeps it "
        "whole on each GPU"
    )


if __name__ == "__main__":
    main()
