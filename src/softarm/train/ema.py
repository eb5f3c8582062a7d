"""Copies of the model's trainable weights that training moves towards or away from.

The EMA copy (`train.ema_decay`): openpi's PyTorch trainer has none, and its JAX one averages only what trains. Here
too: the copy's frozen parameters are the model's own tensors, so a frozen tower or LoRA's frozen base costs no second
copy (7-14 GB for the full-size π0), and each update averages the trainable parameters alone.

The anchor (`optim.anchor_decay`): the weights training started from, which each step pulls the trainable weights
back towards (L2-SP, Li et al. 2018, decoupled from the gradient as AdamW decouples its decay towards zero), so a
fine-tuned base keeps more of what it knew."""

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
    ema.module = trainable_copy(model)
    return ema


def trainable_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose frozen parameters are the model's own tensors: only what trains is copied."""
    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    return copy.deepcopy(model, memo=shared)


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module, decay: float) -> None:
    """Average the trainable parameters into the copy, by name, shard by shard when both are sharded. A forward
    without backward (validation of the EMA copy) leaves FSDP's root unit unsharded: resharded first, every parameter
    is a DTensor shard of the same layout on both sides."""
    mine, theirs = _paired(ema.module, model)
    if ema.n_averaged == 0:
        torch._foreach_copy_(mine, theirs)
    else:
        torch._foreach_lerp_(mine, theirs, 1 - decay)
    ema.n_averaged += 1


@torch.no_grad()
def pull_towards(model: nn.Module, anchor: nn.Module, rate: float) -> None:
    """Move each trainable parameter of `model` the fraction `rate` of the way back to its value in `anchor` (a
    `trainable_copy` of the model as training started, sharded as the model is): w <- w - rate * (w - w0)."""
    mine, anchors = _paired(model, anchor)
    torch._foreach_lerp_(mine, anchors, rate)


def _paired(first: nn.Module, second: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The local tensors of `first`'s parameters that train in `second`, and `second`'s, matched by name (both
    resharded first under FSDP)."""
    for module in (*first.modules(), *second.modules()):
        if isinstance(module, FSDPModule):
            module.reshard()
    trained = {name: _local(p) for name, p in second.named_parameters() if p.requires_grad}
    pairs = [(_local(p), trained[name]) for name, p in first.named_parameters() if name in trained]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor.detach()
