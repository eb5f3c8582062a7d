"""The EMA copy of the model (`train.ema_decay`): openpi's PyTorch trainer has none, and its JAX one averages only what
trains. Here too: the copy's frozen parameters are the model's own tensors, so a frozen tower or LoRA's frozen base
costs no second copy (7-14 GB for the full-size π0), and each update averages the trainable parameters alone."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import AveragedModel


def make_ema(model: nn.Module) -> AveragedModel:
    """An AveragedModel around a copy of `model` that shares its frozen parameters (they never change). Sharding the
    copy (FSDP) gives it shards of its own, the same values."""
    ema = AveragedModel(nn.Identity(), use_buffers=False)  # the container and its counter; the copy is ours
    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    ema.module = copy.deepcopy(model, memo=shared)
    return ema


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module, decay: float) -> None:
    """Average the trainable parameters into the copy, by name, shard by shard when both are sharded. A forward
    without backward (validation of the EMA copy) leaves FSDP's root unit unsharded: resharded first, every parameter
    is a DTensor shard of the same layout on both sides."""
    for module in (*ema.module.modules(), *model.modules()):
        if isinstance(module, FSDPModule):
            module.reshard()
    current = {name: _local(p) for name, p in model.named_parameters() if p.requires_grad}
    averaged = [(_local(p), current[name]) for name, p in ema.module.named_parameters() if name in current]
    mine, theirs = [a for a, _ in averaged], [b for _, b in averaged]
    if ema.n_averaged == 0:
        torch._foreach_copy_(mine, theirs)
    else:
        torch._foreach_lerp_(mine, theirs, 1 - decay)
    ema.n_averaged += 1


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor.detach()
