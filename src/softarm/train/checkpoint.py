"""Training checkpoints: atomic, complete enough to resume exactly and to serve directly.

`<run>/checkpoints/<step>/` holds model.safetensors + model_config.json (softarm.weights.save_model), ema.safetensors
(when EMA is on), optimizer.pt, trainer_state.pt (step, data position, RNG states, EMA count), train_config.yaml,
assets/<asset_id>/norm_stats.json (openpi's layout), tokenizer.model and data_spec.json (camera slots, sizes). It is
written to `tmp_<step>/` and renamed, so a directory named by a step is always complete; only the last `keep_last`
are kept. With LoRA, model/ema.safetensors hold the adapters merged in (servable as they are) and lora.safetensors
the trained tensors under the training model's names, which resume loads on top of the same frozen base.
"""

from __future__ import annotations

import json
from pathlib import Path
import random
import shutil

import numpy as np
import safetensors.torch
import torch
import yaml

from softarm.layout import (
    ASSET_ID,
    ASSETS_DIR,
    CHECKPOINTS_DIR,
    DATA_SPEC_FILE,
    EMA_FILE,
    LORA_FILE,
    META_FILE,
    NORM_STATS_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TOKENIZER_FILE,
    TRAIN_CONFIG_FILE,
)
from softarm.train.lora import has_lora, merged_state_dict, trainable_state_dict
from softarm.weights import load_weights, save_model, save_state


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoint_root(run_dir)
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


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    optimizer_state: dict,
    trainer_state: dict,
    config: dict,
    dataset_dir: Path,
    tokenizer_path: Path,
    keep_last: int,
    model_state: dict | None = None,
) -> Path:
    """`model_state`: the full state dict when the model is sharded (FSDP); otherwise read from `model`."""
    root = checkpoint_root(run_dir)
    final, tmp = root / str(step), root / f"tmp_{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    if has_lora(model):
        save_model(model, tmp, merged_state_dict(model))
        trained = trainable_state_dict(model)
        if ema is not None:
            save_state(ema, merged_state_dict(ema), tmp / EMA_FILE)
            trained |= {f"ema.{k}": v for k, v in trainable_state_dict(ema).items()}
        safetensors.torch.save_file(trained, str(tmp / LORA_FILE))
    elif model_state is not None:
        save_model(model, tmp, model_state)
    else:
        save_model(model, tmp)
        if ema is not None:
            safetensors.torch.save_model(ema, str(tmp / EMA_FILE))
    torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
    torch.save({**trainer_state, "rng": rng_state()}, tmp / STATE_FILE)
    (tmp / TRAIN_CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    assets = tmp / ASSETS_DIR / ASSET_ID
    assets.mkdir(parents=True)
    shutil.copy2(dataset_dir / NORM_STATS_FILE, assets / NORM_STATS_FILE)
    shutil.copy2(tokenizer_path, tmp / TOKENIZER_FILE)
    meta = json.loads((dataset_dir / META_FILE).read_text())
    spec = {k: meta[k] for k in ("cameras", "state_dim", "action_dim", "action_horizon", "num_nodes", "node_features")}
    (tmp / DATA_SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def load_weights_for_resume(checkpoint: Path, *, model, ema: bool = False) -> None:
    """Restore the model's (or, with `ema`, the EMA copy's) weights in place, before any sharding."""
    if has_lora(model):
        _load_lora(checkpoint, model, ema)
    else:
        _load_full(checkpoint, model, ema)


def load_trainer_state(checkpoint: Path) -> tuple[dict, dict]:
    """(optimizer state in torch.distributed.checkpoint's full, name-keyed form; trainer state with RNG states)."""
    optimizer = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
    return optimizer, torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)


def _load_lora(checkpoint: Path, model, ema: bool) -> None:
    path = checkpoint / LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {LORA_FILE}: it was not trained with LoRA, but lora.* is set")
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


def _load_full(checkpoint: Path, model, ema: bool) -> None:
    if ema and not (checkpoint / EMA_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint} has no {EMA_FILE}, but train.ema_decay is set")
    load_weights(model, checkpoint / EMA_FILE if ema else checkpoint, allow_fresh_graph=False)
