"""`softarm train`: one readable loop, top to bottom: setup -> data -> model -> optimizer -> loop -> checkpoint.

Run it plainly for one device or under torchrun for many (DDP; ranks share the global batch). The loss is openpi's
per-element flow-matching loss masked to the arm's real action dims; chunk steps past an episode's end are trained as
its last action held (`data.action_padding: hold`) or left out (`mask`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
from pathlib import Path
import random
import time

import numpy as np
from openpi.shared import normalize
import torch
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from softarm.data.loader import Batch, SoftArmDataset, make_loader, prepared_cameras, to_device
from softarm.data.prepared import PreparedDataset
from softarm.data.tokenizer import SentencePieceTokenizer
from softarm.data.transforms import input_transform
from softarm.layout import LOSS_PLOT, METRICS_FILE, TENSORBOARD_DIR, TOKENIZER_FILE
from softarm.model import PI0GraphPytorch, count_parameters
from softarm.train import checkpoint as ckpt
from softarm.train import fsdp
from softarm.train.config import ConfigError, TrainConfig
from softarm.train.lora import apply_lora
from softarm.weights import load_weights


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(timeout_s: int) -> Dist:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous for multi-node); plain runs are one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, dist: Dist) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def learning_rate(step: int, optim) -> float:
    """Linear warmup from lr/(warmup+1) to lr, then cosine to end_lr (openpi's schedule)."""
    if step < optim.warmup_steps:
        start = optim.lr / (optim.warmup_steps + 1)
        return start + (optim.lr - start) * step / optim.warmup_steps
    decay = max(1, (optim.decay_steps or 0) - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay)
    return optim.end_lr + (optim.lr - optim.end_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def masked_loss(model: torch.nn.Module, batch: Batch, action_padding: str) -> torch.Tensor:
    losses = model(batch.observation, batch.actions, graph=batch.graph)
    mask = batch.loss_mask(action_padding).to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def freeze(model: PI0GraphPytorch, parts: tuple[str, ...]) -> None:
    """Freeze backbone parts; the graph encoder and fusion layers always train."""
    for name in model.unused_parameter_names():
        model.get_parameter(name).requires_grad_(False)
    paligemma = model.paligemma_with_expert.paligemma
    if "vision" in parts:
        paligemma.model.vision_tower.requires_grad_(False)
        paligemma.model.multi_modal_projector.requires_grad_(False)
    if "vlm" in parts:
        paligemma.requires_grad_(False)


@torch.no_grad()
def validate(
    model: torch.nn.Module, loader, device: torch.device, max_batches: int, autocast, action_padding: str
) -> float:
    """Mean masked loss over the first `max_batches` val batches, with fixed noise so values compare across steps;
    the training RNG stream is left untouched (resume stays exact)."""
    was_training = model.training
    model.eval()
    losses = []
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(1234)
        for i, raw in enumerate(loader):
            if i >= max_batches:
                break
            with autocast():
                losses.append(float(masked_loss(model, to_device(raw, device), action_padding)))
    model.train(was_training)
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():  # every rank saw its own shard: average over all of them
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else float("nan")


@dataclasses.dataclass
class TrainResult:
    metrics: dict  # the last step's training and validation numbers
    model: PI0GraphPytorch  # this rank's trained model (not the EMA)


def train(config: TrainConfig) -> TrainResult:
    model_config = config.validate()
    dist = setup_distributed(config.train.dist_timeout_s)
    device = pick_device(config.train.device, dist)
    t, o = config.train, config.optim
    if config.data.batch_size % dist.world:
        raise ConfigError(f"data.batch_size {config.data.batch_size} must divide over {dist.world} ranks")
    run_dir = Path(t.out_dir)
    log = tqdm.write if dist.main else (lambda *_: None)

    # Data: the same transforms as inference, minus the resize done at conversion.
    dataset_dir = Path(config.data.path)
    tokenizer_path = Path(config.data.tokenizer or dataset_dir / TOKENIZER_FILE)
    tokenizer = SentencePieceTokenizer(tokenizer_path, max_len=model_config.max_token_len)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ConfigError(
            f"data.tokenizer: {tokenizer.vocab_size} pieces, "
            f"more than the model's {model_config.vocab_size}-token vocabulary"
        )
    norm_stats = normalize.load(dataset_dir)

    def dataset(split: str) -> SoftArmDataset:
        prepared = PreparedDataset(dataset_dir, split)
        transform = input_transform(
            prepared_cameras(prepared), norm_stats, tokenizer, pi05=model_config.pi05, resize=False,
            num_nodes=model_config.num_nodes, node_features=model_config.node_features,
            action_dim=prepared.meta["action_dim"],
        )  # fmt: skip
        return SoftArmDataset(prepared, transform)

    per_rank = config.data.batch_size // dist.world
    train_loader = make_loader(dataset("train"), per_rank, num_workers=config.data.num_workers, seed=t.seed)
    val_set = dataset("val")
    val_loader = make_loader(val_set, per_rank, shuffle=False) if len(val_set) >= per_rank * dist.world else None

    # Model: bf16 stores the backbone in bf16 (openpi's way); fp32 and bf16-mixed keep fp32 weights.
    model_config = dataclasses.replace(model_config, dtype="bfloat16" if t.precision == "bf16" else "float32")
    torch.manual_seed(t.seed)  # the same initial weights (and LoRA init) on every rank: FSDP shards each rank's copy
    model = PI0GraphPytorch(model_config)
    if t.init_from:
        log(load_weights(model, t.init_from).summary())
    lora = config.lora
    if adapted := apply_lora(model, rank=lora.rank, expert_rank=lora.expert_rank, alpha=lora.alpha,
                             dropout=lora.dropout):  # fmt: skip
        log(f"LoRA on {adapted} Gemma projections (rank {lora.rank} VLM, {lora.expert_rank} action expert)")
    freeze(model, t.freeze)
    model.augment_images = t.image_augmentation
    # From here on each rank draws its own stream (openpi's image augmentation, noise and flow-matching time).
    torch.manual_seed(t.seed + dist.rank)
    np.random.seed(t.seed + dist.rank)  # noqa: NPY002 - the global RNG that third-party code draws from
    random.seed(t.seed + dist.rank)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(device).train()

    # Resume from the newest complete checkpoint of this run, exactly where it stopped: weights before sharding.
    checkpoints = ckpt.list_checkpoints(run_dir)
    if checkpoints:
        ckpt.load_weights_for_resume(checkpoints[-1], model=model)
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=False) if t.ema_decay else None
    )
    if checkpoints and ema is not None:
        ckpt.load_weights_for_resume(checkpoints[-1], model=ema.module, ema=True)
    sharded = t.strategy == "fsdp" and dist.world > 1
    if sharded:
        log(f"FSDP: {fsdp.shard(model)} shard units over {dist.world} ranks")
    trainable = [p for p in model.parameters() if p.requires_grad]
    log(f"parameters: {count_parameters(model) / 1e6:.2f} M, trainable {sum(p.numel() for p in trainable) / 1e6:.2f} M")
    optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    o = dataclasses.replace(o, decay_steps=o.decay_steps or t.steps)
    step, epoch, batch_in_epoch = 0, 0, 0
    if checkpoints:
        optimizer_state, state = ckpt.load_trainer_state(checkpoints[-1])
        fsdp.load_optimizer_state(model, optimizer, optimizer_state)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if ema is not None:
            ema.n_averaged.fill_(state["ema_n_averaged"])
        ckpt.set_rng_state(state["rng"])
        log(f"resumed from {checkpoints[-1]} at step {step}")

    net = model
    if dist.world > 1 and not sharded:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def gradient_sync(on: bool):
        """Skip the gradient all-reduce on accumulation micro-batches (DDP's no_sync, FSDP's flag)."""
        if sharded:
            model.set_requires_gradient_sync(on)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if on or dist.world == 1 else net.no_sync()

    use_autocast = t.precision == "bf16-mixed"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()

    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / METRICS_FILE
    writer = None
    if dist.main and t.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir / TENSORBOARD_DIR)

    def record(values: dict) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(values) + "\n")
        if writer is not None:
            for key, value in values.items():
                if key != "step":
                    writer.add_scalar(key, value, values["step"])

    progress = tqdm(total=t.steps, initial=step, desc="training", unit="step", disable=not dist.main)
    sampler = train_loader.sampler
    sampler.set_position(epoch, batch_in_epoch)
    batches = iter(train_loader)
    last: dict = {}
    started, logged_step = time.perf_counter(), step
    while step < t.steps:
        lr = learning_rate(step, o)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=device)  # stays on the device: no host sync per step
        for micro in range(t.grad_accum):
            raw = next(batches, None)
            if raw is None:  # epoch over: reshuffle
                epoch, batch_in_epoch = epoch + 1, 0
                sampler.set_epoch(epoch)
                batches = iter(train_loader)
                raw = next(batches)
            batch_in_epoch += 1
            with gradient_sync(micro == t.grad_accum - 1), autocast():
                loss = masked_loss(net, to_device(raw, device), config.data.action_padding) / t.grad_accum
            loss.backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, o.clip_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        progress.update()
        if step % t.log_every == 0 or step == t.steps:
            last = {"step": step, "loss": float(total), "lr": lr, "grad_norm": float(grad_norm)}
            elapsed = time.perf_counter() - started
            samples = (step - logged_step) * t.grad_accum * config.data.batch_size
            last["samples_per_s"] = samples / max(elapsed, 1e-9)
            started, logged_step = time.perf_counter(), step
            if dist.main:
                progress.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}")
                record(last)
        if val_loader is not None and (step % t.val_every == 0 or step == t.steps):
            padding = config.data.action_padding
            val = {"step": step, "val_loss": validate(net, val_loader, device, t.val_batches, autocast, padding)}
            if ema is not None:
                val["val_loss_ema"] = validate(ema.module, val_loader, device, t.val_batches, autocast, padding)
            last.update(val)
            if dist.main:
                log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in val.items()))
                record(val)
        if step % t.save_every == 0 or step == t.steps:
            # Under FSDP gathering the full state is collective: every rank takes part, rank 0 writes.
            model_state = fsdp.full_model_state(model) if sharded else None
            optimizer_state = fsdp.full_optimizer_state(model, optimizer) if sharded or dist.main else None
            if dist.main:
                ckpt.save_checkpoint(
                    run_dir, step, model=model, ema=ema.module if ema else None, optimizer_state=optimizer_state,
                    trainer_state={"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                   "ema_n_averaged": int(ema.n_averaged) if ema else 0},
                    config=config.to_dict(), dataset_dir=dataset_dir, tokenizer_path=tokenizer_path,
                    keep_last=t.keep_last, model_state=model_state,
                )  # fmt: skip
        if dist.world > 1:
            torch.distributed.barrier()
    progress.close()
    if writer is not None:
        writer.close()
    if dist.main:
        from softarm.train.plots import plot_metrics

        plot_metrics(metrics_path, run_dir / LOSS_PLOT)
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    return TrainResult(metrics=last, model=model)
