"""`softarm train` in phases: start -> loaders -> model, EMA and optimizer (resumed) -> steps -> periodic work.

Run it plainly for one device or under torchrun for many (DDP; ranks share the global batch). The loss is openpi's
per-element flow-matching loss masked to the arm's real action dims; chunk steps past an episode's end are trained as
its last action held (`data.action_padding: hold`) or left out (`mask`).
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
import datetime
import gc
import math
import os
from pathlib import Path
import random
import signal
import sys
import threading
import time

import numpy as np
from openpi.shared import normalize
import torch
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from softarm import rtc
from softarm.data.loader import Batch, MixtureDataset, SoftArmDataset, make_loader, prepared_cameras, spread, to_device
from softarm.data.prepared import PreparedDataset
from softarm.data.spec import DatasetSpec
from softarm.data.tokenizer import SentencePieceTokenizer
from softarm.data.transforms import ArmTag, input_transform
from softarm.layout import CONFIG_FILE, LOSS_PLOT
from softarm.model import GRAPH_FUSION_PREFIXES, PI0GraphPytorch, count_parameters
from softarm.model_config import SoftArmModelConfig
from softarm.train import checkpoint as ckpt
from softarm.train import fsdp
from softarm.train.config import ArmGroup, ConfigError, TrainConfig, check_same_arm
from softarm.train.ema import make_ema, pull_towards, trainable_copy, update_ema
from softarm.train.lora import apply_lora
from softarm.train.metrics import MetricsLog
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
    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world = next(torch.distributed.rendezvous("env://", timeout=timeout))
    # After `torchrun --max-restarts` restarts the group, the rendezvous store is the agent's, still holding the last
    # attempt's keys: read back, they send gloo to the dead ranks' ports (connection refused) or NCCL to a stale id.
    # Each attempt keeps its keys apart.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = torch.distributed.PrefixStore(f"softarm/attempt_{attempt}/", store)
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return Dist(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def close_distributed(state: ckpt.TrainState) -> None:
    """Destroy the process group without gloo's exit deadlock: ~ProcessGroupGloo joins its worker threads holding
    the GIL, while a worker still releasing the last collective's tensors waits for the GIL (seen as a rank hanging
    after its last step). So all work ends first (barrier), the DDP wrapper, whose Reducer would otherwise hold the
    last reference to the group, goes while the group is still registered, and the workers get the GIL (sleep)."""
    torch.distributed.barrier()
    state.net = state.model
    gc.collect()
    time.sleep(0.1)
    torch.distributed.destroy_process_group()


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


def masked_loss(model: torch.nn.Module, batch: Batch, config: TrainConfig) -> torch.Tensor:
    """The mean flow-matching loss over the trained elements; with train.rtc_max_delay, a random prefix of each
    sample's action tokens is given clean (training-time RTC) and left out."""
    delay, max_delay = None, config.train.rtc_max_delay
    if max_delay:
        delay = rtc.sample_delays(len(batch.actions), max_delay, config.train.rtc_delays, batch.actions.device)
    losses = model(
        batch.observation,
        batch.actions,
        graph_nodes=batch.graph_nodes,
        delay=delay,
        graph_mask=batch.graph_mask,
        arm=batch.arm,
        image_history=batch.image_history,
    )
    mask = batch.loss_mask(config.data.action_padding)
    if delay is not None:
        mask = mask & (torch.arange(mask.shape[1], device=mask.device) >= delay[:, None])[:, :, None]
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


# the action expert's own layers: how a chunk is drawn from what the prefix holds (state_proj: the arm's way in, below)
EXPERT_PROJECTIONS = ("action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out", "time_mlp_in",
                      "time_mlp_out")  # fmt: skip


# the arm's way into the model: the graph encoder, its fusion layers and π0's state projection
STATE_PATH = (*GRAPH_FUSION_PREFIXES, "state_proj.")


def freeze(model: PI0GraphPytorch, parts: tuple[str, ...]) -> None:
    """Freeze parts of the model: the backbone's, the action expert's, or the arm's way in (`state`: a base
    fine-tuned on the arm it was pretrained on already reads it)."""
    for name in model.unused_parameter_names():
        model.get_parameter(name).requires_grad_(False)
    paligemma = model.paligemma_with_expert.paligemma
    if "vision" in parts:
        paligemma.model.vision_tower.requires_grad_(False)
        paligemma.model.multi_modal_projector.requires_grad_(False)
    if "vlm" in parts:
        paligemma.requires_grad_(False)
    if "expert" in parts:
        model.paligemma_with_expert.gemma_expert.requires_grad_(False)
        for name in EXPERT_PROJECTIONS:
            if hasattr(model, name):  # π0 and π0.5 differ in their time layers
                getattr(model, name).requires_grad_(False)
    if "state" in parts:
        for name, parameter in model.named_parameters():
            if name.startswith(STATE_PATH):
                parameter.requires_grad_(False)


@torch.no_grad()
def validate(run: Run, model: torch.nn.Module, loader: DataLoader) -> float:
    """Mean masked loss over `train.val_batches` batches of val frames spread over the split, with fixed noise so
    values compare across steps; the training RNG stream is left untouched (resume stays exact)."""
    was_training = model.training
    model.eval()
    losses = []
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(1234)
        for i, raw in enumerate(loader):
            if i >= run.config.train.val_batches:
                break
            with run.autocast():
                losses.append(float(masked_loss(model, to_device(raw, run.device), run.config)))
    model.train(was_training)
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=run.device)
    if torch.distributed.is_initialized():  # every rank saw its own shard: average over all of them
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else float("nan")


def validation(run: Run, model: torch.nn.Module, loaders: dict[str, DataLoader], key: str) -> dict[str, float]:
    """`key`: the validation loss; for a mixture also `key/NAME` per dataset, and `key` their mean weighted as the
    training draws them."""
    if list(loaders) == [""]:
        return {key: validate(run, model, loaders[""])}
    losses = {f"{key}/{name}": validate(run, model, loader) for name, loader in loaders.items()}
    weights = {source.name: source.weight for source in run.config.sources()}
    total = sum(weights[name] for name in loaders)
    return {key: sum(weights[name] * losses[f"{key}/{name}"] for name in loaders) / total} | losses


class NonFiniteTraining(RuntimeError):
    """Training stopped: too many steps in a row without a finite loss or gradient norm."""


@dataclasses.dataclass
class TrainResult:
    metrics: dict  # the last step's training and validation numbers
    model: PI0GraphPytorch  # this rank's trained model (not the EMA)
    preempted: bool = False  # stopped early by SIGTERM / SIGINT, after writing a checkpoint


@dataclasses.dataclass
class Run:
    """What stays fixed while training: the config, where this rank runs, where inputs and outputs live."""

    config: TrainConfig
    model_config: SoftArmModelConfig
    dist: Dist
    device: torch.device
    dir: Path
    spec: DatasetSpec  # the (first) arm's
    tokenizer_path: Path
    norm_stats_path: Path  # what a checkpoint keeps: the (first) dataset's norm_stats.json, or data.norm_stats
    sharded: bool  # FSDP over several ranks
    arms: tuple[ArmGroup, ...] = ()  # a model of several arms: each arm and its datasets

    def log(self, text: str) -> None:
        if self.dist.main:
            tqdm.write(text)

    def autocast(self):
        if self.config.train.precision != "bf16-mixed":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def train(config: TrainConfig) -> TrainResult:
    """start -> loaders -> model, EMA and optimizer (resumed) -> steps, each followed by the periodic work (log,
    validate, save), until `train.steps` or a stop request (SIGTERM / SIGINT: the step ends, a checkpoint is saved)."""
    run = start(config)
    train_loader, val_loaders = build_loaders(run)
    state = build_state(run)
    t = config.train
    metrics = MetricsLog(run.dir, main=run.dist.main, tensorboard=t.tensorboard, step=state.step)
    progress = tqdm(total=t.steps, initial=state.step, desc="training", unit="step", disable=not run.dist.main)
    batches, preempted = epochs(train_loader, state), False
    try:
        with stop_requests() as received:
            while state.step < t.steps and not preempted:
                values = train_step(run, state, batches)
                progress.update()
                finite, episodes = values.pop("finite"), values.pop("episodes")
                if not finite:
                    names = train_loader.dataset.episode_names
                    skipped(run, state, values, sorted({names[i] for i in episodes}))
                if state.step % t.log_every == 0 or state.step == t.steps:
                    metrics.record_step(state.step, values, samples_per_step=t.grad_accum * config.data.batch_size)
                    progress.set_postfix(loss=f"{metrics.last['loss']:.4f}", lr=f"{values['lr']:.2e}")
                if val_loaders and (state.step % t.val_every == 0 or state.step == t.steps):
                    val = {"step": state.step} | validation(run, state.net, val_loaders, "val_loss")
                    if state.ema is not None:
                        val |= validation(run, state.ema.module, val_loaders, "val_loss_ema")
                    run.log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in val.items()))
                    metrics.record(val)
                preempted = save_or_stop(run, state, received)
    finally:
        # The loader's workers ignore SIGTERM (a preemption notice reaches the whole process group; this process
        # saves first), so they end here: left to interpreter exit they would hang multiprocessing's join.
        batches.close()
        del batches, train_loader
        gc.collect()
    progress.close()
    metrics.close(plot=run.dir / LOSS_PLOT)
    if run.dist.world > 1:
        close_distributed(state)
    return TrainResult(metrics=metrics.last, model=state.model, preempted=preempted)


def save_or_stop(run: Run, state: ckpt.TrainState, received: list[int]) -> bool:
    """Save when due; if a stop was requested on any rank, save now (unless just saved) and return True. Under
    torchrun the ranks agree on the stop step through an all-reduce that is also the step's barrier."""
    t = run.config.train
    due = state.step % t.save_every == 0 or state.step == t.steps
    if due:
        save(run, state)
    stop = bool(received)
    if run.dist.world > 1:
        flag = torch.tensor(int(stop), device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag)
    if stop:
        if not due:
            save(run, state)
        run.log(f"stop requested: checkpoint of step {state.step} written; the same command resumes from it")
    return stop


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """SIGTERM (a cluster's preemption notice) or SIGINT (Ctrl-C) asks training to stop after the current step; a
    second SIGINT stops at once. The list collects the signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame) -> None:
        if signum == signal.SIGINT and received:
            raise KeyboardInterrupt
        received.append(signum)
        tqdm.write(
            f"{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def start(config: TrainConfig) -> Run:
    model_config = config.validate()
    t = config.train
    dist = setup_distributed(t.dist_timeout_s)
    if config.data.batch_size % dist.world:
        raise ConfigError(f"data.batch_size {config.data.batch_size} must divide over {dist.world} ranks")
    # bf16 stores the backbone in bf16 (openpi's way); fp32 and bf16-mixed keep fp32 weights.
    model_config = dataclasses.replace(model_config, dtype="bfloat16" if t.precision == "bf16" else "float32")
    if checkpoints := ckpt.list_checkpoints(t.out_dir):  # resuming: the same model, or a clear error now
        fields = [name for name in model_config.to_dict() if name != "dtype"]
        check_same_arm(
            model_config,
            checkpoints[-1],
            f"train.out_dir {t.out_dir} (resuming)",
            "the same command with the same dataset resumes it; choose another train.out_dir",
            fields,
        )
    groups = config.arm_groups()
    return Run(
        config=config, model_config=model_config, dist=dist, device=pick_device(t.device, dist), dir=Path(t.out_dir),
        spec=groups[0].spec, tokenizer_path=config.tokenizer_path(), norm_stats_path=config.norm_stats_path(),
        sharded=t.strategy == "fsdp" and dist.world > 1, arms=tuple(groups) if len(groups) > 1 else (),
    )  # fmt: skip


def build_loaders(run: Run) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The same transforms as inference, minus the resize done at conversion; each rank loads its share. A mixture
    (data.datasets) draws training batches by weight, each dataset normalised with its own statistics, and is
    validated dataset by dataset: the val loaders are keyed by dataset name ("" for a single dataset)."""
    config, model_config = run.config, run.model_config
    tokenizer = SentencePieceTokenizer(run.tokenizer_path, max_len=model_config.max_token_len)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ConfigError(
            f"data.tokenizer: {tokenizer.vocab_size} pieces, "
            f"more than the model's {model_config.vocab_size}-token vocabulary"
        )

    arm_of = {source.path: k for k, group in enumerate(run.arms) for source in group.sources}

    def dataset(path: str, split: str) -> SoftArmDataset:
        prepared = PreparedDataset(path, split)
        norm_stats = normalize.deserialize_json(config.norm_stats_path(path).read_text())
        tag = None
        if run.arms:  # the arm's own graph, normalised by its statistics, then padded and named
            k = arm_of[path]
            tag = ArmTag(k, run.arms[k].name, model_config.num_nodes, model_config.arm_conditioning == "prompt")
        transform = input_transform(
            prepared_cameras(prepared), norm_stats, tokenizer, pi05=model_config.pi05, resize=False,
            num_nodes=prepared.spec.num_nodes, layout=prepared.spec.layout, action_dim=prepared.spec.action_dim,
            history=model_config.history, arm=tag, image_history=model_config.image_history,
            image_slots=model_config.history_slots,
        )  # fmt: skip
        return SoftArmDataset(prepared, transform, model_config.history, model_config.image_history,
                              model_config.history_slots)  # fmt: skip

    per_rank, sources = config.data.batch_size // run.dist.world, config.sources()
    parts = [dataset(source.path, "train") for source in sources]
    mixed = MixtureDataset(parts) if config.data.datasets else parts[0]
    weights = [source.weight for source in sources] if config.data.datasets else None
    train_loader = make_loader(mixed, per_rank, num_workers=config.data.num_workers, seed=config.train.seed,
                               weights=weights)  # fmt: skip
    val_loaders = {}
    for source in sources:
        val_set = spread(dataset(source.path, "val"), config.train.val_batches * config.data.batch_size)
        if len(val_set) >= config.data.batch_size:
            val_loaders[source.name if config.data.datasets else ""] = make_loader(val_set, per_rank, shuffle=False)
    return train_loader, val_loaders


def build_model(run: Run) -> PI0GraphPytorch:
    """Base weights, LoRA, frozen parts, on the device. Every rank builds the same initial weights (FSDP shards each
    rank's copy); from here on each rank draws its own random stream (augmentation, noise, flow-matching time)."""
    t, lora = run.config.train, run.config.lora
    torch.manual_seed(t.seed)
    model = PI0GraphPytorch(run.model_config)
    if t.init_from:  # a softarm base (model_config.json) may be of another arm: its arm-shaped graph tensors re-init
        other_arm = (Path(t.init_from) / CONFIG_FILE).is_file()
        run.log(load_weights(model, t.init_from, other_arm=other_arm).summary())
    if adapted := apply_lora(model, rank=lora.rank, expert_rank=lora.expert_rank, alpha=lora.alpha,
                             dropout=lora.dropout):  # fmt: skip
        run.log(f"LoRA on {adapted} Gemma projections (rank {lora.rank} VLM, {lora.expert_rank} action expert)")
    freeze(model, t.freeze)
    model.trust_validated_inputs()  # batches come from a converted dataset through SoftArmInputs
    model.augment_images = t.image_augmentation
    torch.manual_seed(t.seed + run.dist.rank)
    np.random.seed(t.seed + run.dist.rank)  # noqa: NPY002 - the global RNG that third-party code draws from
    random.seed(t.seed + run.dist.rank)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.to(run.device).train()


def build_state(run: Run) -> ckpt.TrainState:
    """The model, its EMA copy and the optimizer, resumed exactly from the newest complete checkpoint of this run:
    weights before sharding, optimizer state after, the position in the data and the RNG streams last."""
    t, o = run.config.train, run.config.optim
    model = build_model(run)
    anchor = trainable_copy(model) if o.anchor_decay else None  # the start, before resume loads a checkpoint
    checkpoints = ckpt.list_checkpoints(run.dir)
    if checkpoints:
        ckpt.load_weights_for_resume(checkpoints[-1], model=model)
    ema = make_ema(model) if t.ema_decay else None
    if checkpoints and ema is not None:
        ckpt.load_weights_for_resume(checkpoints[-1], model=ema.module, ema=True)
    if run.sharded:  # the EMA copy is sharded the same way: its update is elementwise, shard by shard
        run.log(f"FSDP: {fsdp.shard(model)} shard units over {run.dist.world} ranks")
        for twin in (ema.module if ema is not None else None, anchor):  # sharded as the model is
            if twin is not None:
                fsdp.shard(twin)
    trainable = [p for p in model.parameters() if p.requires_grad]
    run.log(
        f"parameters: {count_parameters(model) / 1e6:.2f} M, trainable {sum(p.numel() for p in trainable) / 1e6:.2f} M"
    )
    optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    net = model
    if run.dist.world > 1 and not run.sharded:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    if t.compile:  # the step calls the compiled wrapper; checkpoints read the plain model's parameter names
        model.drop_prefix_padding = False  # one shape for every batch: compiled once, not per prompt length
        net = torch.compile(net)
    state = ckpt.TrainState(model=model, net=net, optimizer=optimizer, trainable=trainable, ema=ema, anchor=anchor)
    if checkpoints:
        saved = ckpt.load_trainer_state(checkpoints[-1], state, run.dist.rank, run.dist.world)
        fsdp.load_optimizer_state(model, optimizer, saved)
        run.log(f"resumed from {checkpoints[-1]} at step {state.step}")
    return state


def epochs(loader: DataLoader, state: ckpt.TrainState) -> Iterator[dict]:
    """Training batches, epoch after epoch, from the state's position in the data, which it keeps up to date."""
    loader.sampler.set_position(state.epoch, state.batch_in_epoch)
    while True:
        for raw in loader:
            state.batch_in_epoch += 1
            yield raw
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        loader.sampler.set_epoch(state.epoch)


def train_step(run: Run, state: ckpt.TrainState, batches: Iterator[dict]) -> dict:
    """One optimizer step over `grad_accum` micro-batches. A non-finite loss or gradient norm (on any rank) skips the
    update: weights, optimizer state and EMA stay as they were; `state.bad_steps` counts such steps in a row. The
    finite check is the step's one host sync."""
    t, o = run.config.train, run.config.optim
    lr = learning_rate(state.step, dataclasses.replace(o, decay_steps=o.decay_steps or t.steps))
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    total, episodes = torch.zeros((), device=run.device), []
    for micro in range(t.grad_accum):
        raw = next(batches)
        episodes += raw["episode"].tolist()
        with gradient_sync(run, state, on=micro == t.grad_accum - 1), run.autocast():
            loss = masked_loss(state.net, to_device(raw, run.device), run.config) / t.grad_accum
        loss.backward()
        total += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.trainable, o.clip_norm)
    grad_norm = grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm
    finite = (torch.isfinite(total) & torch.isfinite(grad_norm)).to(torch.int32)
    if run.dist.world > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)  # every rank skips or none
    if bool(finite):
        state.optimizer.step()
        if state.anchor is not None:
            pull_towards(state.model, state.anchor, lr * o.anchor_decay)
        if state.ema is not None:
            update_ema(state.ema, state.model, run.config.train.ema_decay)
        state.bad_steps = 0
        state.bad_episodes.clear()
    else:
        state.bad_steps += 1
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return {"loss": total, "lr": lr, "grad_norm": grad_norm, "finite": bool(finite), "episodes": episodes}


def skipped(run: Run, state: ckpt.TrainState, values: dict, names: list[str]) -> None:
    """Say which step was skipped and what it was fed; stop after `train.max_bad_steps` such steps in a row."""
    what = f"non-finite loss {float(values['loss'])} or gradient norm {float(values['grad_norm'])}"
    tqdm.write(f"rank {run.dist.rank} step {state.step}: {what}; update skipped (batch from {', '.join(names)})",
               file=sys.stderr)  # fmt: skip
    state.bad_episodes |= set(names)
    if state.bad_steps >= run.config.train.max_bad_steps:
        raise NonFiniteTraining(
            f"{state.bad_steps} steps in a row up to step {state.step} had a non-finite loss or gradient norm "
            f"(train.max_bad_steps={run.config.train.max_bad_steps}); their batches came from "
            f"{', '.join(sorted(state.bad_episodes))}. Check those episodes, or lower optim.lr"
        )


def gradient_sync(run: Run, state: ckpt.TrainState, *, on: bool):
    """Skip the gradient all-reduce on accumulation micro-batches (DDP's no_sync, FSDP's flag)."""
    if run.sharded:
        state.model.set_requires_gradient_sync(on)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if on or run.dist.world == 1 else state.net.no_sync()


def save(run: Run, state: ckpt.TrainState) -> None:
    """Under FSDP gathering the full state is collective: every rank takes part, rank 0 writes."""
    model_state = fsdp.full_model_state(state.model) if run.sharded else None
    ema_state = fsdp.full_model_state(state.ema.module) if run.sharded and state.ema is not None else None
    optimizer_state = fsdp.full_optimizer_state(state.model, state.optimizer) if run.sharded or run.dist.main else None
    rngs = None
    if run.dist.world > 1:  # each rank draws its own noise and flow times: a resume restores every rank's streams
        rngs = [None] * run.dist.world
        torch.distributed.all_gather_object(rngs, ckpt.rng_state())
    if run.dist.main:
        arms = tuple((g.name, g.spec, run.config.norm_stats_path(g.sources[0].path)) for g in run.arms)
        sources = ckpt.Sources(run.config.to_dict(), run.spec, run.tokenizer_path, run.norm_stats_path, arms)
        ckpt.save_checkpoint(run.dir, state, sources, optimizer_state=optimizer_state, model_state=model_state,
                             ema_state=ema_state, keep_last=run.config.train.keep_last, rng_states=rngs)  # fmt: skip
