"""Training checkpoints: atomic, complete enough to resume exactly and to serve directly.

`<run>/checkpoints/<step>/` holds model.safetensors + model_config.json (softarm.weights.save_model), ema.safetensors
(when EMA is on), optimizer.pt, trainer_state.pt (step, data position, every rank's RNG states, EMA count),
train_config.yaml, assets/<asset_id>/norm_stats.json (openpi's layout), tokenizer.model and data_spec.json (the
dataset's spec; a model of several arms: the first arm's, and every arm's under arm_assets/<name>/). It is
written to `tmp_<step>/` and renamed, so a directory named by a step is always complete; only the last `keep_last`
are kept. With LoRA, model/ema.safetensors hold the adapters merged in (servable as they are) and lora.safetensors
the trained tensors under the training model's names, which resume loads on top of the same frozen base.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import random
import shutil

import numpy as np
import safetensors.torch
import torch
from torch.optim.swa_utils import AveragedModel
import yaml

from softarm import layout
from softarm.data.spec import DatasetSpec, write_spec
from softarm.train.lora import has_lora, merged_state_dict, trainable_state_dict
from softarm.weights import load_weights, save_model, save_state


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / layout.CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def rng_state() -> dict:
    # The legacy global numpy RNG too: third-party transforms may draw from it.
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}  # noqa: NPY002
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclasses.dataclass
class TrainState:
    """What training changes step by step; a checkpoint saves it and resume restores it."""

    model: torch.nn.Module  # this rank's model (sharded under FSDP)
    net: torch.nn.Module  # what the step calls: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    ema: AveragedModel | None = None
    anchor: torch.nn.Module | None = None  # the weights training started from (optim.anchor_decay), never saved
    step: int = 0
    epoch: int = 0  # the position in the data: the next batch is batch `batch_in_epoch` of `epoch`
    batch_in_epoch: int = 0
    bad_steps: int = 0  # non-finite steps in a row (not saved: a resumed run starts counting anew)
    bad_episodes: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True)
class Sources:
    """What a checkpoint copies beside the weights, so that it trains on and serves on its own."""

    config: dict  # the training config, as written to train_config.yaml
    spec: DatasetSpec  # the dataset trained on, as data_spec.json
    tokenizer_path: Path
    norm_stats_path: Path
    # a model of several arms: each arm's name, spec and statistics, into arm_assets/<name>/ (the first is `spec` too)
    arms: tuple[tuple[str, DatasetSpec, Path], ...] = ()


def save_checkpoint(
    run_dir: str | Path,
    state: TrainState,
    sources: Sources,
    *,
    optimizer_state: dict,
    keep_last: int,
    model_state: dict | None = None,
    ema_state: dict | None = None,
    rng_states: list[dict] | None = None,
) -> Path:
    """`model_state` / `ema_state`: the full state dicts of the model and its EMA copy when they are sharded (FSDP);
    otherwise read from the modules.
    `rng_states`: every rank's RNG streams, in rank order, when there are several (default: this process's). Raises
    CheckpointError, leaving the earlier checkpoints as they were, if the weights are not finite or the write fails
    (disk full, permission denied): a partial write is removed, and resume never reads a `tmp_<step>` anyway."""
    root = Path(run_dir) / layout.CHECKPOINTS_DIR
    final, tmp = root / str(state.step), root / f"tmp_{state.step}"
    tensors = model_state if model_state is not None else dict(state.model.named_parameters())
    if state.ema is not None:
        ema = ema_state if ema_state is not None else dict(state.ema.module.named_parameters())
        tensors = tensors | {f"ema.{k}": v for k, v in ema.items()}
    bad = [name for name, value in tensors.items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if bad:
        raise CheckpointError(f"not writing checkpoint {state.step}: {len(bad)} tensors hold NaN or Inf, e.g. {bad[0]}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        _write(tmp, state, sources, optimizer_state, (model_state, ema_state), rng_states or [rng_state()])
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        earlier = [p.name for p in list_checkpoints(run_dir)]
        kept = f"checkpoint {earlier[-1]} is intact" if earlier else "there is no earlier checkpoint"
        raise CheckpointError(f"could not write checkpoint {state.step} in {root}: {e}; nothing of it was kept, "
                              f"{kept}") from e  # fmt: skip
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


class CheckpointError(RuntimeError):
    pass


def _write(
    tmp: Path,
    state: TrainState,
    sources: Sources,
    optimizer_state: dict,
    full_states: tuple[dict | None, dict | None],
    rngs: list[dict],
) -> None:
    """`full_states`: the gathered (model, EMA) state dicts of a sharded run, else (None, None)."""
    model, ema = state.model, state.ema.module if state.ema is not None else None
    model_state, ema_state = full_states
    if has_lora(model):
        save_model(model, tmp, merged_state_dict(model, model_state))
        trained = trainable_state_dict(model, model_state)
        if ema is not None:
            save_state(ema, merged_state_dict(ema, ema_state), tmp / layout.EMA_FILE)
            trained |= {f"ema.{k}": v for k, v in trainable_state_dict(ema, ema_state).items()}
        safetensors.torch.save_file(trained, str(tmp / layout.LORA_FILE))
    elif model_state is not None:
        save_model(model, tmp, model_state)
        if ema is not None:
            save_state(ema, ema_state, tmp / layout.EMA_FILE)
    else:
        save_model(model, tmp)
        if ema is not None:
            safetensors.torch.save_model(ema, str(tmp / layout.EMA_FILE))
    torch.save(optimizer_state, tmp / layout.OPTIMIZER_FILE)
    trainer_state = {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                     "ema_n_averaged": int(state.ema.n_averaged) if state.ema is not None else 0}  # fmt: skip
    torch.save({**trainer_state, "rng": rngs[0], "rng_ranks": rngs}, tmp / layout.STATE_FILE)
    (tmp / layout.TRAIN_CONFIG_FILE).write_text(yaml.safe_dump(sources.config, sort_keys=False))
    assets = tmp / layout.ASSETS_DIR / layout.ASSET_ID
    assets.mkdir(parents=True)
    shutil.copy2(sources.norm_stats_path, assets / layout.NORM_STATS_FILE)
    shutil.copy2(sources.tokenizer_path, tmp / layout.TOKENIZER_FILE)
    write_spec(sources.spec, tmp / layout.DATA_SPEC_FILE)
    for name, spec, stats in sources.arms:
        (tmp / layout.ARMS_DIR / name).mkdir(parents=True)
        write_spec(spec, tmp / layout.ARMS_DIR / name / layout.DATA_SPEC_FILE)
        shutil.copy2(stats, tmp / layout.ARMS_DIR / name / layout.NORM_STATS_FILE)


def load_weights_for_resume(checkpoint: Path, *, model, ema: bool = False) -> None:
    """Restore the model's (or, with `ema`, the EMA copy's) weights in place, before any sharding."""
    if has_lora(model):
        _load_lora(checkpoint, model, ema)
    elif ema and not (checkpoint / layout.EMA_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint} has no {layout.EMA_FILE}, but train.ema_decay is set")
    else:
        load_weights(model, checkpoint / layout.EMA_FILE if ema else checkpoint, allow_fresh_graph=False)


def load_trainer_state(checkpoint: Path, state: TrainState, rank: int = 0, world: int = 1) -> dict:
    """Restore the step, the position in the data, the EMA count and this rank's RNG streams into `state`; returns
    the optimizer state in torch.distributed.checkpoint's full, name-keyed form (to load once the model is sharded).
    A checkpoint of another world size (or one without every rank's streams) gives every rank rank 0's streams."""
    saved = torch.load(checkpoint / layout.STATE_FILE, map_location="cpu", weights_only=False)
    state.step, state.epoch, state.batch_in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]
    if state.ema is not None:
        state.ema.n_averaged.fill_(saved["ema_n_averaged"])
    ranks = saved.get("rng_ranks") or [saved["rng"]]
    set_rng_state(ranks[rank] if len(ranks) == world else ranks[0])
    return torch.load(checkpoint / layout.OPTIMIZER_FILE, map_location="cpu", weights_only=False)


def _load_lora(checkpoint: Path, model, ema: bool) -> None:
    path = checkpoint / layout.LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {path.name}: it was not trained with LoRA, but lora.* is set")
    tensors = safetensors.torch.load_file(str(path))
    prefix = "ema." if ema else ""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(name for name in params if prefix + name not in tensors)
    if missing:
        raise ValueError(f"{path}: no saved value for {len(missing)} trained tensors, e.g. {missing[0]} "
                         "(another lora / freeze setting?)")  # fmt: skip
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[prefix + name])
