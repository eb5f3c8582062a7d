"""Loading official openpi PyTorch checkpoints into PI0GraphPytorch, and saving/loading the whole graph model.

An official converted checkpoint directory holds ``model.safetensors`` written by ``safetensors.torch.save_model``
(tied weights stored once). Every base key must be there with the right shape; only the graph extension's keys may
be missing, and those are reported as freshly initialised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from softarm.layout import CONFIG_FILE, WEIGHTS_FILE
from softarm.model import PI0GraphPytorch, is_graph_key
from softarm.model_config import SoftArmModelConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadReport:
    path: Path
    loaded: int  # tensors copied from the file
    fresh: list[str]  # graph-extension keys the file lacked: freshly initialised
    # graph-extension tensors of another shape in the file (a base of another arm, or of another graph history in
    # `stack` mode), kept freshly initialised:
    # "name: file [..] -> model [..]"
    reshaped: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded - len(self.reshaped)} tensors from {self.path}"]
        if self.fresh:
            parts.append(f"freshly initialised {len(self.fresh)} graph-extension tensors: {', '.join(self.fresh)}")
        if self.reshaped:
            parts.append(f"re-initialised {len(self.reshaped)} graph-extension tensors shaped by the base's arm (or "
                         f"graph history), which differs from this one: {'; '.join(self.reshaped)}")  # fmt: skip
        if len(parts) == 1:
            parts.append("nothing freshly initialised")
        return "; ".join(parts)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(
    model: torch.nn.Module, checkpoint: str | Path, *, allow_fresh_graph: bool = True, other_arm: bool = False
) -> LoadReport:
    """Copy `checkpoint/model.safetensors` (or the file itself) into `model`.

    Raises ValueError naming the keys that are missing or have the wrong shape. With `allow_fresh_graph`, the graph
    extension's keys may be absent (loading openpi base weights); without it the file must hold the whole model. With
    `other_arm` (a softarm base of another arm), graph-extension tensors whose shape the arm decides (node count,
    feature columns) may differ: those keep the model's fresh initialisation and are listed in the report.
    """
    path = Path(checkpoint)
    if path.suffix != ".safetensors":
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path} (expected an openpi PyTorch checkpoint directory)")

    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with safetensors.safe_open(str(path), framework="pt") as f:
        found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    reshaped = {name for name, shape in found.items() if other_arm and is_graph_key(name)
                and name in expected and shape != expected[name]}  # fmt: skip
    wrong_shape = [
        f"{name}: file {list(shape)} vs model {list(expected[name])}"
        for name, shape in found.items()
        if name in expected and shape != expected[name] and name not in reshaped
    ]
    if wrong_shape:
        raise ValueError(
            f"{path}: {len(wrong_shape)} tensors have the wrong shape for this model config "
            f"(another model variant or preset?): {_listing(wrong_shape, 5)}"
        )

    if reshaped:
        state = {k: v for k, v in safetensors.torch.load_file(str(path)).items() if k not in reshaped}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in reshaped and k not in tied_aliases(model)]
    else:
        missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False)
    if unexpected:
        raise ValueError(
            f"{path}: holds {len(unexpected)} tensors this model does not have (pi0 vs pi0.5, or another fusion "
            f"mode?): {_listing(sorted(unexpected))}"
        )
    fresh = sorted(k for k in missing if is_graph_key(k))
    base_missing = sorted(k for k in missing if not is_graph_key(k))
    if base_missing:
        raise ValueError(f"{path}: missing {len(base_missing)} base-model tensors: {_listing(base_missing)}")
    if fresh and not allow_fresh_graph:
        raise ValueError(f"{path}: missing {len(fresh)} graph-extension tensors: {_listing(fresh)}")
    changes = [f"{name} {list(found[name])} -> {list(expected[name])}" for name in sorted(reshaped)]
    report = LoadReport(path=path, loaded=len(found), fresh=fresh, reshaped=changes)
    logger.info(report.summary())
    return report


def save_model(model: PI0GraphPytorch, directory: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `model_config.json` and `model.safetensors`: everything `load_model` needs. `state` replaces the model's
    own tensors (under the same plain names) when they are not what should be saved: gathered FSDP shards, LoRA
    adapters merged in."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    if state is None:
        safetensors.torch.save_model(model, str(directory / WEIGHTS_FILE))
    else:
        save_state(model, state, directory / WEIGHTS_FILE)
    return directory


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """Names of tied parameters that safetensors' save_model leaves out (it keeps the first name in sorted order)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return {name for names in groups.values() for name in sorted(names)[1:]}


def save_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write `state` with the tensor names `safetensors.torch.save_model(model)` would write."""
    aliases = tied_aliases(model)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items() if k not in aliases}, str(path))


def load_model(
    directory: str | Path, device: str | torch.device = "cpu", weights: str | Path | None = None
) -> PI0GraphPytorch:
    """Rebuild a graph model saved by `save_model` (or a checkpoint), with the weights of `directory` or of the
    `weights` file beside them (e.g. a checkpoint's EMA copy); every tensor must be there."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: not a saved PI0GraphPytorch directory")
    config = SoftArmModelConfig.from_dict(json.loads(config_path.read_text()))
    model = PI0GraphPytorch(config)
    load_weights(model, weights or directory, allow_fresh_graph=False)
    return model.to(device)
