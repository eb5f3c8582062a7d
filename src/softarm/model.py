"""PI0GraphPytorch: openpi's official PI0Pytorch plus a graph encoder for the soft arm's proprioception.

Nothing of flow matching, the VLM or the action expert is re-implemented: the subclass only decides where the
graph enters. Three fusion modes:

- ``state``:  the 32-D graph embedding is added to pi0's 32-D state slot through a zero-initialised gate, so the
  pretrained ``state_proj`` is reused and a fresh model is exactly the base model (pi0 only).
- ``prefix``: node tokens, projected to the VLM width, are appended to the prefix (images + prompt); the VLM
  sees them and they are cached once per inference.
- ``suffix``: node tokens, projected to the action-expert width, go before the action tokens; only the action
  expert sees them.
- ``none``:   no graph at all: the base PI0Pytorch (the graph is ignored), the baseline the graph must beat.

Real-time chunking (`softarm.rtc`) works through the same hooks: sampling given the previous chunk's actions steers
openpi's own denoising loop (guidance in `denoise_step`), and training-time conditioning gives a prefix of action
tokens clean through `embed_suffix`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import contextlib
import dataclasses
import math
from typing import Any, Literal

from openpi.models import pi0_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
import torch
from torch import nn

from softarm import arm, openpi_compat, rtc
from softarm.graph_encoder import GraphEncoder, GraphEncoding
from softarm.rtc import ActionPrefix

FusionMode = Literal["state", "prefix", "suffix", "none"]
FUSION_MODES: tuple[str, ...] = ("state", "prefix", "suffix", "none")
PALIGEMMA_VOCAB_SIZE = 257_152
# Every parameter the graph extension adds lives under one of these names; nothing else may be missing when
# official base weights are loaded.
GRAPH_KEY_PREFIXES: tuple[str, ...] = ("graph_encoder.", "graph_state_gate", "graph_prefix_proj.", "graph_suffix_proj.")
openpi_compat.check_pi0_hooks()  # the methods PI0GraphPytorch overrides below


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """A SigLIP vision tower smaller than PaliGemma's So400m/14, for tests and CPU demos.

    ``SoftArmModelConfig.vision = None`` means the official tower (what the pretrained weights expect).
    """

    width: int = 32
    depth: int = 1
    mlp_dim: int = 64
    num_heads: int = 2
    patch_size: int = 56
    # "patch": SigLIP's own patch projection (one strided conv). "conv": a convolutional stem (3x3 stride-2 convs,
    # then the rest of the patch stride) in its place: ViTs trained from scratch with a conv stem optimise faster and
    # localise better (Xiao et al. 2021, "Early Convolutions Help Transformers See Better").
    stem: Literal["patch", "conv"] = "patch"

    def __post_init__(self) -> None:
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"vision.stem must be 'patch' or 'conv', got {self.stem!r}")


class ConvStem(nn.Module):
    """Stride-2 3x3 convs (group-normalised, channels doubling up to `width`) while the patch stride stays even, then
    one conv with the remaining stride to `width`: the same grid of tokens as SigLIP's patch projection, so the rest
    of the tower is unchanged."""

    def __init__(self, width: int, patch_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, out, stride = 3, min(width, 16), patch_size
        while stride % 2 == 0 and stride > 2:
            layers += [nn.Conv2d(channels, out, 3, 2, 1, bias=False), nn.GroupNorm(math.gcd(8, out), out), nn.GELU()]
            channels, out, stride = out, min(width, 2 * out), stride // 2
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, width, stride, stride)

    @property
    def weight(self) -> torch.Tensor:
        """HF's SiglipVisionEmbeddings casts the pixels to `patch_embedding.weight.dtype`."""
        return self.proj.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(pixels))


@dataclasses.dataclass(frozen=True)
class SoftArmModelConfig(pi0_config.Pi0Config):
    """openpi's Pi0Config plus where and how the arm's graph enters the model."""

    action_horizon: int = 16
    fusion: FusionMode = "state"
    graph_width: int = 128
    graph_depth: int = 3
    graph_heads: int = 4
    num_nodes: int = arm.NUM_NODES
    node_features: int = arm.NUM_NODE_FEATURES
    # The names of the node features (None: the 19-feature schema, or feature_<i> for another count) and which of
    # them the arm measures (None: all); the graph encoder masks the others. `softarm train` takes all of this, the
    # sizes and the edges from the dataset.
    feature_names: tuple[str, ...] | None = None
    measured_features: tuple[str, ...] | None = None
    edges: tuple[arm.Edge, ...] | None = None  # None: the chain 0-1-...-(num_nodes-1)
    vision: VisionSpec | None = None  # None: the official SigLIP So400m/14 tower
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    # Node features the graph encoder does not read although the arm measures them. Velocities and the last command
    # reveal where a smooth demonstration is heading, so a policy can copy its own motion instead of looking where
    # to go (causal confusion, de Haan et al. 2019; "copycat" policies, Wen et al. 2020).
    ignored_features: tuple[str, ...] = ()
    # Real-time chunking (softarm.rtc). Inference-time guidance: the clip on the guidance weight (the paper's beta)
    # and the weights' decay over the overlap. Training-time conditioning: the longest delay (control steps) the
    # model was trained to take as a clean prefix (train.rtc_max_delay); 0 = trained without it.
    rtc_max_guidance_weight: float = 5.0
    rtc_schedule: str = "exp"
    rtc_max_delay: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.vision, dict):
            object.__setattr__(self, "vision", VisionSpec(**self.vision))
        for name in ("graph_width", "graph_depth", "graph_heads", "num_nodes", "node_features", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        edges = arm.chain_edges(self.num_nodes) if self.edges is None else self.edges
        object.__setattr__(self, "edges", arm.validate_edges(self.num_nodes, edges))
        names = arm.column_names(self.node_features, self.feature_names)
        object.__setattr__(self, "feature_names", names)
        measured = names if self.measured_features is None else tuple(self.measured_features)
        object.__setattr__(self, "measured_features", measured)
        arm.NodeLayout(names, measured)  # checks the measured names against the feature names
        object.__setattr__(self, "ignored_features", tuple(self.ignored_features))
        for name in self.ignored_features:
            if name not in names:
                raise ValueError(f"ignored_features: unknown node feature {name!r}; the nodes have {list(names)}")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.fusion == "state" and self.pi05:
            raise ValueError(
                "fusion 'state' needs pi0's continuous state slot; pi0.5 has none: use 'prefix' or 'suffix'"
            )
        if self.rtc_schedule not in rtc.SCHEDULES:
            raise ValueError(f"rtc_schedule must be one of {rtc.SCHEDULES}, got {self.rtc_schedule!r}")
        if self.rtc_max_guidance_weight < 0:
            raise ValueError(f"rtc_max_guidance_weight must be >= 0, got {self.rtc_max_guidance_weight}")
        if not 0 <= self.rtc_max_delay < self.action_horizon:
            raise ValueError(f"rtc_max_delay must be in 0..{self.action_horizon - 1}, got {self.rtc_max_delay}")
        if self.rtc_max_delay and self.pi05:
            raise ValueError(
                "training-time RTC gives each action token its own flow time, which pi0's action-time MLP takes; "
                "pi0.5 conditions its action expert on one time per sample (adaRMS): use inference-time RTC"
            )
        if self.action_dim != 32:
            raise ValueError(
                f"openpi's PI0Pytorch has 32-D action/state projections; action_dim must be 32, got {self.action_dim}"
            )

    @property
    def node_layout(self) -> arm.NodeLayout:
        return arm.NodeLayout(self.feature_names, self.measured_features)

    def to_dict(self) -> dict:
        """Plain types only (lists, dicts, numbers), for JSON/YAML."""
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> SoftArmModelConfig:
        """From `to_dict`'s form: __post_init__ turns the lists back into tuples and `vision` into a VisionSpec."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(fields)}")
        return cls(**data)


def plain(value: Any) -> Any:
    """Tuples as lists, all the way down: what JSON and YAML hold, and what compares equal to what they read back."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def preset(name: str, **overrides) -> SoftArmModelConfig:
    """Named model configurations: ``tiny`` (CPU tests and demo), ``tiny_vision`` (CPU, finds a target in the
    images), ``pi0`` and ``pi05`` (full size)."""
    # The real PI0Pytorch at toy width: Gemma "dummy" (width 64, 4 layers, 8 heads) for both towers, a one-layer
    # SigLIP with 56-px patches (16 tokens per image) and a small vocabulary.
    tiny = {
        "paligemma_variant": "dummy",
        "action_expert_variant": "dummy",
        "dtype": "float32",
        "vision": VisionSpec(),
        "vocab_size": 1024,
        "graph_width": 64,
        "graph_depth": 2,
    }
    presets: dict[str, dict] = {
        "tiny": tiny,
        # a two-layer tower, 28-px patches (64 tokens per image) behind a conv stem: localises a ball, ~4x the cost
        "tiny_vision": {
            **tiny,
            "vision": VisionSpec(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=28, stem="conv"),
        },
        "pi0": {},
        "pi05": {"pi05": True, "fusion": "suffix"},
    }
    if name not in presets:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(presets)}")
    return SoftArmModelConfig(**{**presets[name], **overrides})


@contextlib.contextmanager
def backbone_overrides(config: pi0_config.Pi0Config) -> Iterator[None]:
    """While constructing PI0Pytorch, build the HF PaliGemma/Gemma towers with the config's smaller vision
    tower and vocabulary. Construction only: the classes, forward passes and weights are the official ones."""
    vision: VisionSpec | None = getattr(config, "vision", None)
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

    with openpi_compat.backbone_factories(small_paligemma, small_gemma):
        yield


@torch.no_grad()
def init_grid_positions(weight: torch.Tensor) -> None:
    """2-D sine-cosine patch position embedding (as MAE initialises ViTs) instead of random vectors, scaled to the
    random init's spread. A small tower trained from scratch on a few hundred episodes then knows from the first
    step which patches are neighbours, which is what locating a target in the image needs."""
    num_patches, width = weight.shape
    side = math.isqrt(num_patches)
    if side * side != num_patches or width % 4:
        return  # not a square grid of patches: keep the random init
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    # wavelengths from 2 patches (fine position) to twice the grid (unambiguous over the whole image)
    steps = width // 4
    frequencies = math.pi / float(side) ** (torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1))
    parts = [f(axis.reshape(-1, 1).double() * frequencies) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    grid = torch.cat(parts, dim=1)
    weight.copy_((grid / grid.std() * weight.std()).to(weight.dtype))


def build_base_model(config: pi0_config.Pi0Config) -> PI0Pytorch:
    """The official PI0Pytorch for `config` (honouring a small vision tower / vocab), with eager sampling."""
    with backbone_overrides(config):
        model = PI0Pytorch(config)
    openpi_compat.eager_sampling(model)
    return model


class PI0GraphPytorch(PI0Pytorch):
    """PI0Pytorch that also takes the arm's graph nodes [B, num_nodes, node_features]."""

    config: SoftArmModelConfig

    def __init__(self, config: SoftArmModelConfig) -> None:
        with backbone_overrides(config):
            super().__init__(config)
        openpi_compat.eager_sampling(self)
        openpi_compat.checkpoint_only_on_request(self)
        self._graph: GraphEncoding | None = None
        # openpi's training-time image augmentation (crop, rotation, colour jitter); off for fixed cameras whose
        # pixel positions carry the answer, e.g. where a target sits in a simulated scene.
        self.augment_images = True
        # Prefix positions padded in every sample of a batch are dropped (2-3x faster); a compiled model keeps them,
        # for shapes that do not change with the prompt's length (no recompilation, CUDA graphs possible).
        self.drop_prefix_padding = True
        self._prefix: ActionPrefix | None = None  # the previous chunk, during a sample_actions call
        self._clean_tokens: torch.Tensor | None = None  # [B, H] action tokens given clean (training-time RTC)
        if config.fusion == "none":
            return
        self.graph_encoder = GraphEncoder(
            num_nodes=config.num_nodes,
            node_features=config.node_features,
            edges=config.edges,
            width=config.graph_width,
            depth=config.graph_depth,
            num_heads=config.graph_heads,
            embedding_dim=config.action_dim if config.fusion == "state" else None,
            # unmeasured features hold a constant; ignored ones are hidden on purpose: the encoder reads neither
            ignored_features=[
                i for i, name in enumerate(config.feature_names)
                if name not in config.measured_features or name in config.ignored_features
            ],
        )  # fmt: skip
        if config.fusion == "state":
            self.graph_state_gate = nn.Parameter(torch.zeros(config.action_dim))
        elif config.fusion == "prefix":
            vlm_width = self.paligemma_with_expert.paligemma.config.text_config.hidden_size
            self.graph_prefix_proj = nn.Linear(config.graph_width, vlm_width)
        else:
            self.graph_suffix_proj = nn.Linear(config.graph_width, self.action_in_proj.out_features)

    @contextlib.contextmanager
    def _call_inputs(
        self,
        graph_nodes: torch.Tensor | None,
        prefix: ActionPrefix | None = None,
        clean_tokens: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Encode the graph once per call and make it, the previous chunk (for denoise_step) and the action tokens
        given clean ([B, H] bool, for embed_suffix) visible to the hooks during that call. One context manager:
        torch.compile traces one, not several nested."""
        self._graph = None if graph_nodes is None or self.config.fusion == "none" else self.graph_encoder(graph_nodes)
        self._prefix, self._clean_tokens = prefix, clean_tokens
        try:
            yield
        finally:
            self._graph, self._prefix, self._clean_tokens = None, None, None

    def conditions_on(self, prefix: ActionPrefix) -> bool:
        """Whether this model takes `prefix` as clean tokens (trained for its delay) rather than by guidance."""
        return 0 < prefix.delay <= self.config.rtc_max_delay

    def embed_prefix(self, images, img_masks, lang_tokens, lang_masks):
        embs, pad_masks, att_masks = super().embed_prefix(images, img_masks, lang_tokens, lang_masks)
        if self.drop_prefix_padding:
            embs, pad_masks, att_masks = drop_shared_padding(embs, pad_masks, att_masks)
        if self._graph is None or self.config.fusion != "prefix":
            return embs, pad_masks, att_masks
        tokens = self.graph_prefix_proj(self._graph.tokens).to(embs.dtype)
        graph = graph_block(tokens, pad_masks, att_masks, new_block=False)  # full attention with the image+prompt block
        return concat_tokens((embs, pad_masks, att_masks), graph)

    def embed_suffix(self, state, noisy_actions, timestep):
        if self._graph is not None and self.config.fusion == "state":
            state = state + self.graph_state_gate * self._graph.embedding.to(state.dtype)
        embs, pad_masks, att_masks, adarms_cond = super().embed_suffix(state, noisy_actions, timestep)
        if self._clean_tokens is not None:
            # Per-token flow time: the clean tokens' embeddings are the official ones at t = 0 (data); the action
            # tokens are the last H of the suffix.
            clean_embs = super().embed_suffix(state, noisy_actions, torch.zeros_like(timestep))[0]
            at = nn.functional.pad(self._clean_tokens, (embs.shape[1] - self._clean_tokens.shape[1], 0))
            embs = torch.where(at[:, :, None], clean_embs, embs)
        if self._graph is None or self.config.fusion != "suffix":
            return embs, pad_masks, att_masks, adarms_cond
        # A new block before state/actions: graph tokens see the prefix and each other; later tokens see them.
        # Action tokens stay last, where PI0Pytorch reads its output.
        tokens = self.graph_suffix_proj(self._graph.tokens).to(embs.dtype)
        graph = graph_block(tokens, pad_masks, att_masks, new_block=True)
        return (*concat_tokens(graph, (embs, pad_masks, att_masks)), adarms_cond)

    def _preprocess_observation(self, observation, *, train=True):
        return super()._preprocess_observation(observation, train=train and self.augment_images)

    def forward(self, observation, actions, graph_nodes=None, noise=None, time=None, delay=None) -> torch.Tensor:
        """Per-element flow-matching loss [B, H, 32], as PI0Pytorch.forward, with the graph fused in. `delay` [B]
        (training-time RTC): the first delay[b] action tokens of sample b are given clean, at flow time 0; their
        loss is not meaningful and the caller leaves it out."""
        clean = None
        if delay is not None:
            clean = torch.arange(actions.shape[1], device=actions.device) < delay[:, None]
            noise = self.sample_noise(actions.shape, actions.device) if noise is None else noise
            noise = torch.where(clean[:, :, None], actions, noise)  # x_t = actions there, whatever t is
        with self._call_inputs(graph_nodes, clean_tokens=clean):
            return super().forward(observation, actions, noise=noise, time=time)

    @torch.no_grad()
    def sample_actions(
        self, device, observation, graph_nodes=None, noise=None, num_steps=10, prefix: ActionPrefix | None = None
    ) -> torch.Tensor:
        """Denoised action chunk [B, H, 32], as PI0Pytorch.sample_actions, with the graph fused in. With `prefix`
        (the previous chunk), real-time chunking: a model trained for the delay starts its committed steps at the
        previous actions and keeps them (clean tokens); otherwise guidance steers the chunk towards them."""
        if prefix is not None and self.conditions_on(prefix):
            shape = (observation.state.shape[0], self.config.action_horizon, self.config.action_dim)
            noise = self.sample_noise(shape, device) if noise is None else noise
            clean = prefix.clean_tokens()
            noise = torch.where(clean[:, :, None], prefix.actions.to(noise.dtype), noise)
        with self._call_inputs(graph_nodes, prefix):
            return super().sample_actions(device, observation, noise=noise, num_steps=num_steps)

    def denoise_step(self, state, prefix_pad_masks, past_key_values, x_t, timestep):
        """The velocity at x_t (openpi's step, through the cached prefix), steered by the previous chunk if any."""
        prefix = self._prefix
        if prefix is None:
            return super().denoise_step(state, prefix_pad_masks, past_key_values, x_t, timestep)
        if self.conditions_on(prefix):
            clean = prefix.clean_tokens()
            self._clean_tokens = clean
            try:
                velocity = super().denoise_step(state, prefix_pad_masks, past_key_values, x_t, timestep)
            finally:
                self._clean_tokens = None
            return torch.where(clean[:, :, None], 0.0, velocity)  # the committed steps stay the previous actions
        weights = rtc.prefix_weights(x_t.shape[1], prefix.overlap, prefix.delay, self.config.rtc_schedule)
        weights = weights.to(x_t.device)[None, :, None]
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            velocity = super().denoise_step(state, prefix_pad_masks, past_key_values, x, timestep)
            estimate = x - timestep[:, None, None] * velocity  # the chunk one Euler step to the data end would give
            error = weights * (prefix.actions.to(estimate.dtype) - estimate).detach()
            (correction,) = torch.autograd.grad(estimate, x, error)
        # openpi integrates from t = 1 down to 0, so a step moves x against the velocity: subtract to move with it
        weight = rtc.guidance_weight(float(timestep[0]), self.config.rtc_max_guidance_weight)
        return velocity.detach() - weight * correction

    def trust_validated_inputs(self) -> PI0GraphPytorch:
        """Skip the graph encoder's NaN/Inf check (a host sync per call) for inputs the data path has validated."""
        if self.config.fusion != "none":
            self.graph_encoder.check_finite = False
        return self

    def unused_parameter_names(self) -> list[str]:
        """Parameters no training loss can reach: the VLM's outputs are never read (only its keys/values of the last
        layer are), and the action expert's LM head is never called. Freezing them lets DDP run without
        find_unused_parameters."""
        vlm = "paligemma_with_expert.paligemma.model.language_model."
        last = f"{vlm}layers.{len(self.paligemma_with_expert.paligemma.language_model.layers) - 1}."
        prefixes = (*(last + part for part in ("self_attn.o_proj.", "mlp.", "post_attention_layernorm.")),
                    f"{vlm}norm.", "paligemma_with_expert.gemma_expert.lm_head.")  # fmt: skip
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]

    def graph_parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters() if is_graph_key(name)]


def drop_shared_padding(
    embs: torch.Tensor, pad_masks: torch.Tensor, att_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove prefix positions that are padding in every sample: a camera slot the arm does not have (its image is
    masked) and the prompt's padded tail. Exact: padding is neither attended to nor counted in position ids, and
    only positions whose attention-block flag is 0 are removed, so the block structure is unchanged. It saves a
    third of the prefix for a two-camera arm."""
    keep = pad_masks.any(dim=0) | att_masks.any(dim=0)
    if bool(keep.all()):
        return embs, pad_masks, att_masks
    return embs[:, keep], pad_masks[:, keep], att_masks[:, keep]


def graph_block(tokens: torch.Tensor, pad_masks: torch.Tensor, att_masks: torch.Tensor, *, new_block: bool) -> tuple:
    """(tokens, pad mask, attention-block flags) for graph tokens: never padding; in the block before them (flags 0)
    or opening a block of their own (flag 1 on the first)."""
    batch, num_nodes = tokens.shape[:2]
    pad = torch.ones(batch, num_nodes, dtype=pad_masks.dtype, device=pad_masks.device)
    att = torch.zeros(batch, num_nodes, dtype=att_masks.dtype, device=att_masks.device)
    att[:, 0] = int(new_block)
    return tokens, pad, att


def concat_tokens(*parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Join (embeddings, pad masks, attention flags) triples along the token axis, in order."""
    return tuple(torch.cat(tensors, dim=1) for tensors in zip(*parts, strict=True))


def is_graph_key(name: str) -> bool:
    return name.startswith(GRAPH_KEY_PREFIXES)


def count_parameters(module: nn.Module, names: Sequence[str] | None = None) -> int:
    params = dict(module.named_parameters())
    return sum(params[n].numel() for n in (names if names is not None else params))
