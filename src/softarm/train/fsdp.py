"""FSDP (torch.distributed.fsdp.fully_shard) for models whose weights, gradients and AdamW state do not fit one GPU.

Shard units follow how openpi's PaliGemmaWithExpertModel runs its Gemma layers: it does not call a decoder layer's
forward, it calls the layer's projections and MLP one by one (the VLM and the action expert attend jointly), so each
q/k/v/o projection and each MLP is its own unit; SigLIP encoder layers are ordinary units; the root holds the rest
(embeddings, norms, the graph encoder and the small heads). Between uses every parameter lives as a 1/world shard.
The EMA copy is sharded the same way (its update is elementwise, shard against shard); LoRA adapters live inside the
projection they adapt, so a unit holds the frozen base weight and its trainable adapter side by side.

Checkpoints gather full (unsharded) state dicts on CPU, collectively, so a checkpoint written under FSDP is the same
files as one written under DDP: servable, and resumable with either strategy.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.checkpoint import state_dict as dcp
from torch.distributed.fsdp import fully_shard

from softarm.model import PI0GraphPytorch

FULL = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_units(model: PI0GraphPytorch) -> list[nn.Module]:
    backbone = model.paligemma_with_expert
    units: list[nn.Module] = []
    for gemma in (backbone.paligemma.model.language_model, backbone.gemma_expert.model):
        for layer in gemma.layers:
            units += [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj]
            units.append(layer.mlp)
    units += list(backbone.paligemma.model.vision_tower.vision_model.encoder.layers)
    return units


def shard(model: PI0GraphPytorch) -> int:
    """Shard `model` in place over the default process group; returns the number of units."""
    units = shard_units(model)
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    return len(units) + 1


def full_model_state(model: nn.Module) -> dict:
    """Collective: every rank must call it; the full tensors (on CPU) are what rank 0 writes."""
    return dcp.get_model_state_dict(model, options=FULL)


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    """Collective: the AdamW state of every parameter, unsharded, keyed by parameter name."""
    return dcp.get_optimizer_state_dict(model, optimizer, options=FULL)


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    dcp.set_optimizer_state_dict(model, optimizer, state, options=dcp.StateDictOptions(full_state_dict=True))
