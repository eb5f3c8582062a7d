"""LoRA on the Gemma layers through peft, with checkpoints that stay servable.

`apply_lora` injects peft LoRA adapters into the attention and MLP projections of PaliGemma's language model
(`rank`) and/or the action expert (`expert_rank`) and freezes the weights they adapt, as openpi's gemma_2b_lora /
gemma_300m_lora variants do. The graph encoder, fusion layers and the action/state/time projections stay trainable.

A checkpoint keeps two views: `merged_state_dict` (adapters folded into the base weights, plain PI0GraphPytorch
names: what SoftArmPolicy and the server load) and `trainable_state_dict` (what training changes, under the
training model's names: what resume loads on top of the same frozen base). The training model is never merged in
place, so saving does not perturb training and resume stays exact.
"""

from __future__ import annotations

import peft
from peft.tuners.lora import LoraLayer
import torch

from softarm.model import PI0GraphPytorch
from softarm.weights import tied_aliases

PROJECTIONS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VLM_LAYERS = r"paligemma_with_expert\.paligemma\.model\.language_model\.layers\.\d+\.(self_attn|mlp)\."
EXPERT_LAYERS = r"paligemma_with_expert\.gemma_expert\.model\.layers\.\d+\.(self_attn|mlp)\."
VLM_PREFIX = "paligemma_with_expert.paligemma.model.language_model."
EXPERT_PREFIX = "paligemma_with_expert.gemma_expert."
ADAPTER = "default"


def apply_lora(model: PI0GraphPytorch, *, rank: int, expert_rank: int, alpha: float | None, dropout: float) -> int:
    """Inject adapters (rank 0 leaves that part fully trainable); returns the number of adapted linear layers."""
    parts = [(pattern, r) for pattern, r in ((VLM_LAYERS, rank), (EXPERT_LAYERS, expert_rank)) if r > 0]
    if not parts:
        return 0
    first = parts[0][1]
    config = peft.LoraConfig(
        r=first,
        lora_alpha=alpha or first,
        lora_dropout=dropout,
        target_modules=rf"({'|'.join(pattern for pattern, _ in parts)}){PROJECTIONS}",
        rank_pattern={rf"{pattern}{PROJECTIONS}": r for pattern, r in parts[1:]},
        alpha_pattern={rf"{pattern}{PROJECTIONS}": alpha or r for pattern, r in parts[1:]},
    )
    adapted = tuple(prefix for prefix, r in ((VLM_PREFIX, rank), (EXPERT_PREFIX, expert_rank)) if r > 0)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and not name.startswith(adapted)}
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    # peft freezes everything but the adapters; here an adapted Gemma is frozen whole (norms and embeddings too, as
    # openpi's LoRA variants do) and everything else keeps its flag.
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name or name in trainable)
    return len(lora_layers(model))


def lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def has_lora(model: torch.nn.Module) -> bool:
    return bool(lora_layers(model))


def merged_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Adapters folded into their base weights, under plain names, on the CPU (each tied weight once, under the name
    safetensors keeps; unadapted CPU weights are the model's own tensors: write them before training goes on).
    `state`: the model's full state dict when the model holds only shards of it (FSDP)."""
    layers = lora_layers(model)
    aliases = tied_aliases(model)
    state = model.state_dict() if state is None else state
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".lora_" in name or name in aliases:
            continue
        module_name, _, leaf = name.rpartition(".base_layer.")
        value = tensor.detach()
        if module_name in layers and leaf == "weight":
            layer = layers[module_name]
            for adapter in layer.active_adapters:  # peft's delta for a Linear: B @ A, scaled (transposed if Conv1D)
                down, up = (state[f"{module_name}.lora_{x}.{adapter}.weight"].float() for x in "AB")
                delta = (up.to(down.device) @ down) * layer.scaling[adapter]
                value = value + (delta.T if layer.fan_in_fan_out else delta).to(value.device, value.dtype)
        merged[name.replace(".base_layer.", ".")] = value.to("cpu")  # no second copy of CPU weights: 7 GB at π0 size
    return merged


def trainable_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """What training changes, as CPU copies; `state` as for `merged_state_dict`."""
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    values = dict(model.named_parameters()) if state is None else state
    return {name: values[name].detach().to("cpu", copy=True) for name in trained}
