"""Every place softarm relies on openpi below its public API, in one module, so an openpi upgrade breaks here, loudly.

Each function says why it is needed; tests/test_openpi_compat.py checks every assumption against the installed
openpi, and `check_pi0_hooks` also runs when softarm.model is imported (a changed hook would otherwise fuse the
graph silently wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import dataclasses
import functools
import inspect

from openpi.models import gemma as _gemma
from openpi.models import pi0_config
from openpi.models.model import Observation
from openpi.models.tokenizer import PaligemmaTokenizer
from openpi.models_pytorch import gemma_pytorch
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
import sentencepiece
import torch
from torch import nn

from softarm.vision import ConvStem, init_grid_positions

PALIGEMMA_VOCAB_SIZE = 257_152  # the official PaliGemma tokenizer's; the presets for CPUs use a smaller one

# Gemma sizes between openpi's "dummy" (64 wide) and "gemma_300m" (1024 wide, 311 M parameters): towers that still
# train on a CPU with more room than "dummy". The depth and heads of "dummy", so any two of them pair (the VLM and
# the action expert attend jointly, layer by layer and head by head).
SMALL_GEMMA_VARIANTS: dict[str, _gemma.Config] = {
    "dummy_128": _gemma.Config(width=128, depth=4, mlp_dim=256, num_heads=8, num_kv_heads=1, head_dim=16),
    "dummy_256": _gemma.Config(width=256, depth=4, mlp_dim=512, num_heads=8, num_kv_heads=1, head_dim=16),
}

# The PI0Pytorch methods PI0GraphPytorch overrides, with the parameters it relies on. `_preprocess_observation` is
# private: it is the only place that decides whether training images are augmented.
PI0_HOOKS: dict[str, tuple[str, ...]] = {
    "embed_prefix": ("self", "images", "img_masks", "lang_tokens", "lang_masks"),
    "embed_suffix": ("self", "state", "noisy_actions", "timestep"),
    "_preprocess_observation": ("self", "observation", "train"),
    "forward": ("self", "observation", "actions", "noise", "time"),
    "sample_actions": ("self", "device", "observation", "noise", "num_steps"),
    # sample_actions calls it once per denoising step with the cached prefix: where RTC guidance steers
    "denoise_step": ("self", "state", "prefix_pad_masks", "past_key_values", "x_t", "timestep"),
}


def check_pi0_hooks() -> None:
    for name, expected in PI0_HOOKS.items():
        method = getattr(PI0Pytorch, name, None)
        found = tuple(inspect.signature(method).parameters) if callable(method) else None
        if found != expected:
            raise ImportError(
                f"the installed openpi's PI0Pytorch.{name} has parameters {found}; softarm's graph fusion overrides "
                f"it expecting {expected} (install the openpi revision pinned in pyproject.toml)"
            )


@contextlib.contextmanager
def backbone_factories(paligemma: Callable[..., object], gemma: Callable[..., object]) -> Iterator[None]:
    """While in the block, PaliGemmaWithExpertModel builds its towers with `paligemma(cls, config=...)` and
    `gemma(cls, config=...)` (`cls` the official class). It looks both classes up in gemma_pytorch's namespace at
    construction, and that is the only way to give the official code a smaller vision tower or vocabulary."""
    originals = gemma_pytorch.PaliGemmaForConditionalGeneration, gemma_pytorch.GemmaForCausalLM
    gemma_pytorch.PaliGemmaForConditionalGeneration = functools.partial(paligemma, originals[0])
    gemma_pytorch.GemmaForCausalLM = functools.partial(gemma, originals[1])
    try:
        yield
    finally:
        gemma_pytorch.PaliGemmaForConditionalGeneration, gemma_pytorch.GemmaForCausalLM = originals


_OPENPI_GEMMA_CONFIG = _gemma.get_config


def gemma_config(variant: str) -> _gemma.Config:
    """openpi's Gemma config of `variant`, or one of `SMALL_GEMMA_VARIANTS` (a copy: openpi's configs are mutable)."""
    if variant in SMALL_GEMMA_VARIANTS:
        return dataclasses.replace(SMALL_GEMMA_VARIANTS[variant])
    return _OPENPI_GEMMA_CONFIG(variant)


@contextlib.contextmanager
def small_gemma_variants() -> Iterator[None]:
    """While in the block, openpi's `gemma.get_config`, which PI0Pytorch.__init__ looks up in its module, also knows
    `SMALL_GEMMA_VARIANTS`."""
    _gemma.get_config = gemma_config
    try:
        yield
    finally:
        _gemma.get_config = _OPENPI_GEMMA_CONFIG


@contextlib.contextmanager
def backbone_overrides(config: pi0_config.Pi0Config) -> Iterator[None]:
    """While constructing PI0Pytorch, build the HF PaliGemma/Gemma towers with the config's smaller vision
    tower and vocabulary, and Gemma towers of `SMALL_GEMMA_VARIANTS`. Construction only: the classes, forward passes
    and weights are the official ones. It writes HF config fields (and PaliGemma's private `_vocab_size`, which sizes
    its embedding) and swaps the patch embedding for a conv stem: all below openpi's API, hence here."""
    with small_gemma_variants(), _small_towers(config):
        yield


@contextlib.contextmanager
def _small_towers(config: pi0_config.Pi0Config) -> Iterator[None]:
    vision = getattr(config, "vision", None)  # a softarm.vision.VisionSpec, or None for the official tower
    vocab_size: int = getattr(config, "vocab_size", PALIGEMMA_VOCAB_SIZE)
    if vision is None and vocab_size == PALIGEMMA_VOCAB_SIZE:
        yield
        return

    def small_paligemma(paligemma_cls, config):
        if vision is not None:
            vc = config.vision_config
            vc.hidden_size, vc.num_hidden_layers, vc.intermediate_size = vision.width, vision.depth, vision.mlp_dim
            vc.num_attention_heads, vc.patch_size = vision.num_heads, vision.patch_size
            vc.projection_dim = config.text_config.hidden_size
            config.text_config.num_image_tokens = (vc.image_size // vc.patch_size) ** 2
        config.text_config.vocab_size = vocab_size
        config._vocab_size = vocab_size
        paligemma = paligemma_cls(config=config)
        if vision is not None:  # a tower trained from scratch: start its patch positions on a 2-D grid
            embeddings = paligemma.model.vision_tower.vision_model.embeddings
            init_grid_positions(embeddings.position_embedding.weight)
            if vision.stem == "conv":
                embeddings.patch_embedding = ConvStem(vision.width, vision.patch_size)
        return paligemma

    def small_gemma(gemma_cls, config):
        config.vocab_size = vocab_size
        return gemma_cls(config=config)

    with backbone_factories(small_paligemma, small_gemma):
        yield


def eager_sampling(model: PI0Pytorch) -> None:
    """PI0Pytorch.__init__ wraps sample_actions in torch.compile per instance (minutes on a CPU before the first
    action); removing the instance attribute restores the eager class method."""
    vars(model).pop("sample_actions", None)


def unchecked_observation(**fields) -> Observation:
    """Observation(**fields) without jaxtyping's runtime check, which calls inspect.stack() on every construction:
    ~2 ms per batch, ~20 ms in a process started with `-m` (torchrun -m). Callers have validated every field."""
    init = getattr(Observation.__init__, "__wrapped__", None)
    if init is None:  # no checking wrapper any more: the plain constructor is as fast
        return Observation(**fields)
    observation = object.__new__(Observation)
    init(observation, **fields)
    return observation


def init_paligemma_tokenizer(
    tokenizer: PaligemmaTokenizer, processor: sentencepiece.SentencePieceProcessor, max_len: int
) -> None:
    """Set up `tokenizer` without PaligemmaTokenizer.__init__, which downloads the PaliGemma model; its tokenize()
    (the π0 / π0.5 prompt formats, kept as they are) reads only these two fields."""
    tokenizer._max_len = max_len
    tokenizer._tokenizer = processor


class _CheckpointingOnRequest:
    """Mixed into the action expert's GemmaModel by `checkpoint_only_on_request`: while training and not asked to
    checkpoint, `gradient_checkpointing` reads as absent (AttributeError), so `hasattr` is False; otherwise it is the
    flag HF and openpi set."""

    @property
    def gradient_checkpointing(self) -> bool:
        if self.__dict__.get("_checkpointing_requested", False):
            return True
        if self.training:
            raise AttributeError("gradient_checkpointing")
        return False

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.__dict__["_checkpointing_requested"] = bool(value)


def checkpoint_only_on_request(model: PI0Pytorch) -> None:
    """PaliGemmaWithExpertModel.forward turns gradient checkpointing of its joint layer loop on whenever it trains and
    the expert's GemmaModel has a `gradient_checkpointing` attribute (it always has), whatever was asked. Recomputing
    every layer in the backward pass saves memory that a small model does not need and costs it ~20 % of a training
    step; with this, the loop checkpoints only after `gradient_checkpointing_enable()` (`train.gradient_checkpointing`),
    as every other part of the model does. The numbers are the same either way: the layers draw no random numbers."""
    expert = model.paligemma_with_expert.gemma_expert.model
    if isinstance(expert, _CheckpointingOnRequest):
        return
    requested = bool(vars(expert).pop("gradient_checkpointing", False))
    expert.__class__ = type(expert.__class__.__name__, (_CheckpointingOnRequest, expert.__class__), {})
    expert.gradient_checkpointing = requested


def _per_token_adarms(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple:
    """The patched transformers' adaptive RMSNorm (GemmaRMSNorm with `dense`), also for one condition per token."""
    if cond is None or cond.dim() < 3:
        return type(norm).forward(norm, x, cond)  # openpi's, one condition per sample
    normed = norm._norm(x)
    scale, shift, gate = torch.chunk(norm.dense(cond), 3, dim=-1)  # [B, T, D] each: the same arithmetic per token
    return (normed * (1 + scale.to(torch.float32)) + shift.to(torch.float32)).to(x.dtype), gate.to(x.dtype)


def per_token_adarms(model: PI0Pytorch) -> None:
    """π0.5 conditions its action expert on the flow time through adaRMS norms, one condition [B, D] per sample,
    which the patched GemmaRMSNorm broadcasts over the tokens. Training-time RTC gives the committed action tokens
    their own time (0), so each adaRMS norm of the expert here also takes [B, T, D]; a [B, D] condition still runs
    the official code."""
    for module in model.paligemma_with_expert.gemma_expert.modules():
        if getattr(module, "dense", None) is not None and hasattr(module, "_norm"):
            module.forward = functools.partial(_per_token_adarms, module)
