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

from openpi.models import pi0_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
import torch
from torch import nn

from softarm import openpi_compat, rtc
from softarm.graph_encoder import GraphEncoder, GraphEncoding
from softarm.layout import IMAGE_SLOTS
from softarm.model_config import SoftArmModelConfig
from softarm.rtc import ActionPrefix
from softarm.visual_memory import FrameCache, PatchWindow, StackedFrames, VisualMemory

# The graph's parameters: its encoder and the layers that fuse it into π0.
GRAPH_FUSION_PREFIXES: tuple[str, ...] = ("graph_encoder.", "graph_state_gate", "graph_prefix_proj.",
                                          "graph_suffix_proj.")  # fmt: skip
# Every parameter the extension adds (the graph, visual history) lives under one of these names; nothing else may be
# missing when official base weights are loaded.
GRAPH_KEY_PREFIXES: tuple[str, ...] = (*GRAPH_FUSION_PREFIXES, "visual_history.")
openpi_compat.check_pi0_hooks()  # the methods PI0GraphPytorch overrides below


def build_base_model(config: pi0_config.Pi0Config) -> PI0Pytorch:
    """The official PI0Pytorch for `config` (honouring a small vision tower / vocab), run as PI0GraphPytorch runs it
    (eager sampling, gradient checkpointing only on request): what the graph is measured against."""
    with openpi_compat.backbone_overrides(config):
        model = PI0Pytorch(config)
    openpi_compat.eager_sampling(model)
    openpi_compat.checkpoint_only_on_request(model)
    return model


class PI0GraphPytorch(PI0Pytorch):
    """PI0Pytorch that also takes the arm's graph nodes [B, num_nodes, node_features]."""

    config: SoftArmModelConfig

    def __init__(self, config: SoftArmModelConfig) -> None:
        with openpi_compat.backbone_overrides(config):
            super().__init__(config)
        openpi_compat.eager_sampling(self)
        openpi_compat.checkpoint_only_on_request(self)
        if config.pi05:
            openpi_compat.per_token_adarms(self)  # training-time RTC: the committed tokens' own flow time
        self._graph: GraphEncoding | None = None
        # openpi's training-time image augmentation (crop, rotation, colour jitter); off for fixed cameras whose
        # pixel positions carry the answer, e.g. where a target sits in a simulated scene.
        self.augment_images = True
        # Prefix positions padded in every sample of a batch are dropped (2-3x faster); a compiled model keeps them,
        # for shapes that do not change with the prompt's length (no recompilation, CUDA graphs possible).
        self.drop_prefix_padding = True
        self._prefix: ActionPrefix | None = None  # the previous chunk, during a sample_actions call
        self._clean_tokens: torch.Tensor | None = None  # [B, H] action tokens given clean (training-time RTC)
        # past camera frames ({slot: [B, K-1, 3, H, W]}, mask [B, K-1]) during a call, for embed_prefix
        self._image_history: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
        self.frame_cache: FrameCache | None = None  # set by a policy: past frames' tokens kept between requests
        if config.image_history_steps > 1:
            width = self.paligemma_with_expert.paligemma.config.text_config.hidden_size
            steps, slots, mode = config.image_history_steps, len(config.history_slots), config.image_history_mode
            if mode == "stack":
                self.visual_history = StackedFrames(width, steps, slots)
            elif mode == "concat":
                self.visual_history = PatchWindow(width, steps, slots)
            else:
                self.visual_history = VisualMemory(width, steps, slots, spatial=mode == "attend")
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
            history_steps=config.history_steps,
            history_mode=config.history_mode,
            arms=[(shape.num_nodes, shape.edges) for shape in config.arms],
            arm_embedding=bool(config.arms) and config.arm_conditioning == "embedding",
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
        graph_mask: torch.Tensor | None = None,
        prefix: ActionPrefix | None = None,
        clean_tokens: torch.Tensor | None = None,
        arm: torch.Tensor | None = None,
        image_history: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None,
    ) -> Iterator[None]:
        """Encode the graph (its history mask, each sample's arm) once per call and make it, the previous chunk (for
        denoise_step) and the action tokens given clean ([B, H] bool, for embed_suffix) visible to the hooks during
        that call. One context manager: torch.compile traces one, not several nested."""
        skip = graph_nodes is None or self.config.fusion == "none"
        self._graph = None if skip else self.graph_encoder(graph_nodes, graph_mask, arm)
        self._prefix, self._clean_tokens = prefix, clean_tokens
        if (image_history is None) != (self.config.image_history_steps == 1):
            raise ValueError(f"this model reads {self.config.image_history_steps - 1} past frames of "
                             f"{list(self.config.history_slots)}: give image_history (and only then)")  # fmt: skip
        self._image_history = image_history
        try:
            yield
        finally:
            self._graph, self._prefix, self._clean_tokens, self._image_history = None, None, None, None

    def conditions_on(self, prefix: ActionPrefix) -> bool:
        """Whether this model takes `prefix` as clean tokens (trained for its delay) rather than by guidance."""
        return 0 < prefix.delay <= self.config.rtc_max_delay

    def embed_prefix(self, images, img_masks, lang_tokens, lang_masks):
        embs, pad_masks, att_masks = super().embed_prefix(images, img_masks, lang_tokens, lang_masks)
        if self._image_history is not None:
            per_image = (embs.shape[1] - lang_tokens.shape[1]) // len(images)  # openpi: images first, then the prompt
            embs, pad_masks, att_masks = self._with_past_frames(embs, pad_masks, att_masks, img_masks, per_image)
        if self.drop_prefix_padding:
            embs, pad_masks, att_masks = drop_shared_padding(embs, pad_masks, att_masks)
        if self._graph is None or self.config.fusion != "prefix":
            return embs, pad_masks, att_masks
        tokens = self.graph_prefix_proj(self._graph.tokens).to(embs.dtype)
        graph = graph_block(
            tokens, pad_masks, att_masks, new_block=False, node_mask=self._graph.node_mask
        )  # full attention with the image+prompt block
        return concat_tokens((embs, pad_masks, att_masks), graph)

    def past_frame_tokens(self, slot: str, past: torch.Tensor) -> torch.Tensor:
        """past [B, K-1, 3, H, W] frames of one camera -> their image tokens [B, K-1, T, D]. For the memories a past
        frame's tokens are what they were when it was current (no gradients; a policy's frame cache keeps them)."""
        embed = self.paligemma_with_expert.embed_image
        if self.frame_cache is not None and not torch.is_grad_enabled():  # serving: each frame encoded once
            tokens = self.frame_cache.tokens(slot, past.flatten(0, 1), embed)
        else:
            with torch.no_grad() if self.config.image_history_mode != "stack" else contextlib.nullcontext():
                tokens = embed(past.flatten(0, 1))
        return tokens.view(*past.shape[:2], *tokens.shape[1:])

    def _with_past_frames(self, embs, pad_masks, att_masks, img_masks, per_image: int) -> tuple:
        """The prefix with the past frames read into it: `memory`, `attend` and `concat` update each history slot's
        current image tokens, `stack` adds the past frames' tokens after the images (padding where a frame or its
        camera is missing)."""
        frames, mask = self._image_history
        added = []
        for k, slot in enumerate(self.config.history_slots):
            s = IMAGE_SLOTS.index(slot)
            tokens = self.past_frame_tokens(slot, frames[slot])  # [B, K-1, T, D]
            if self.config.image_history_mode != "stack":
                at = slice(s * per_image, (s + 1) * per_image)
                current = self.visual_history(k, embs[:, at], tokens, mask)
                embs = torch.cat([embs[:, : at.start], current.to(embs.dtype), embs[:, at.stop :]], dim=1)
            else:
                real = (img_masks[s][:, None] & mask).repeat_interleave(per_image, dim=1)
                added.append((self.visual_history(k, tokens).to(embs.dtype), real.to(pad_masks.dtype)))
        if not added:
            return embs, pad_masks, att_masks
        end = len(img_masks) * per_image  # the image tokens end here, the prompt's begin
        flags = torch.zeros(embs.shape[0], sum(t.shape[1] for t, _ in added), dtype=att_masks.dtype, device=embs.device)
        return (
            torch.cat([embs[:, :end], *(t for t, _ in added), embs[:, end:]], dim=1),
            torch.cat([pad_masks[:, :end], *(m for _, m in added), pad_masks[:, end:]], dim=1),
            torch.cat([att_masks[:, :end], flags, att_masks[:, end:]], dim=1),
        )

    def embed_suffix(self, state, noisy_actions, timestep):
        if self._graph is not None and self.config.fusion == "state":
            state = state + self.graph_state_gate * self._graph.embedding.to(state.dtype)
        embs, pad_masks, att_masks, adarms_cond = super().embed_suffix(state, noisy_actions, timestep)
        sample_cond = adarms_cond
        if self._clean_tokens is not None:
            # Per-token flow time: the clean tokens are embedded as the official code embeds them at t = 0 (data):
            # π0 mixes the time into each action token, π0.5 conditions the expert's adaRMS norms on it, here one
            # condition per token. The action tokens are the last H of the suffix.
            clean_embs, _, _, clean_cond = super().embed_suffix(state, noisy_actions, torch.zeros_like(timestep))
            at = nn.functional.pad(self._clean_tokens, (embs.shape[1] - self._clean_tokens.shape[1], 0))[:, :, None]
            embs = torch.where(at, clean_embs, embs)
            if adarms_cond is not None:
                adarms_cond = torch.where(at, clean_cond[:, None, :], adarms_cond[:, None, :])
        if self._graph is None or self.config.fusion != "suffix":
            return embs, pad_masks, att_masks, adarms_cond
        # A new block before state/actions: graph tokens see the prefix and each other; later tokens see them.
        # Action tokens stay last, where PI0Pytorch reads its output.
        tokens = self.graph_suffix_proj(self._graph.tokens).to(embs.dtype)
        graph = graph_block(tokens, pad_masks, att_masks, new_block=True, node_mask=self._graph.node_mask)
        if adarms_cond is not None and adarms_cond.dim() == 3:  # the graph tokens at the sample's flow time
            adarms_cond = torch.cat([sample_cond[:, None, :].expand(-1, tokens.shape[1], -1), adarms_cond], dim=1)
        return (*concat_tokens(graph, (embs, pad_masks, att_masks)), adarms_cond)

    def _preprocess_observation(self, observation, *, train=True):
        return super()._preprocess_observation(observation, train=train and self.augment_images)

    def forward(
        self,
        observation,
        actions,
        graph_nodes=None,
        noise=None,
        time=None,
        delay=None,
        graph_mask=None,
        arm=None,
        image_history=None,
    ) -> torch.Tensor:
        """Per-element flow-matching loss [B, H, 32], as PI0Pytorch.forward, with the graph fused in (with history:
        [B, K, N, F] and `graph_mask` [B, K]; a model of several arms: `arm` [B], each sample's arm index). `delay`
        [B] (training-time RTC): the first delay[b] action tokens of sample b are given clean, at flow time 0; their
        loss is not meaningful and the caller leaves it out. `image_history`: ({slot: past frames [B, K-1, 3, H, W]},
        mask [B, K-1]) for a model with visual history."""
        clean = None
        if delay is not None:
            clean = torch.arange(actions.shape[1], device=actions.device) < delay[:, None]
            noise = self.sample_noise(actions.shape, actions.device) if noise is None else noise
            noise = torch.where(clean[:, :, None], actions, noise)  # x_t = actions there, whatever t is
        with self._call_inputs(graph_nodes, graph_mask, clean_tokens=clean, arm=arm, image_history=image_history):
            return super().forward(observation, actions, noise=noise, time=time)

    @torch.no_grad()
    def sample_actions(
        self,
        device,
        observation,
        graph_nodes=None,
        noise=None,
        num_steps=10,
        prefix: ActionPrefix | None = None,
        graph_mask=None,
        arm=None,
        image_history=None,
    ) -> torch.Tensor:
        """Denoised action chunk [B, H, 32], as PI0Pytorch.sample_actions, with the graph fused in. With `prefix`
        (the previous chunk), real-time chunking: a model trained for the delay starts its committed steps at the
        previous actions and keeps them (clean tokens); otherwise guidance steers the chunk towards them."""
        if prefix is not None and self.conditions_on(prefix):
            shape = (observation.state.shape[0], self.config.action_horizon, self.config.action_dim)
            noise = self.sample_noise(shape, device) if noise is None else noise
            clean = prefix.clean_tokens()
            noise = torch.where(clean[:, :, None], prefix.actions.to(noise.dtype), noise)
        with self._call_inputs(graph_nodes, graph_mask, prefix, arm=arm, image_history=image_history):
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


def graph_block(
    tokens: torch.Tensor,
    pad_masks: torch.Tensor,
    att_masks: torch.Tensor,
    *,
    new_block: bool,
    node_mask: torch.Tensor | None = None,
) -> tuple:
    """(tokens, pad mask, attention-block flags) for graph tokens: padding only where `node_mask` says a node is a
    smaller arm's padding; in the block before them (flags 0) or opening a block of their own (flag 1 on the first)."""
    batch, num_nodes = tokens.shape[:2]
    pad = torch.ones(batch, num_nodes, dtype=pad_masks.dtype, device=pad_masks.device)
    if node_mask is not None:
        pad = node_mask.to(pad_masks.dtype)
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
