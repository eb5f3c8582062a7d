"""The model's configuration: openpi's Pi0Config plus where and how the arm's graph enters, and the named presets."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from openpi.models import gemma, pi0_config

from softarm import arm, rtc
from softarm.graph_encoder import HISTORY_MODES, HistoryMode
from softarm.history import NO_HISTORY, HistorySpec
from softarm.layout import IMAGE_SLOTS
from softarm.openpi_compat import PALIGEMMA_VOCAB_SIZE, SMALL_GEMMA_VARIANTS
from softarm.vision import VisionSpec

GEMMA_VARIANTS: tuple[str, ...] = (*typing.get_args(gemma.Variant), *SMALL_GEMMA_VARIANTS)
GEMMA_FIELDS: tuple[str, ...] = ("paligemma_variant", "action_expert_variant")  # the two towers' sizes
FusionMode = Literal["state", "prefix", "suffix", "none"]
FUSION_MODES: tuple[str, ...] = ("state", "prefix", "suffix", "none")
ImageHistoryMode = Literal["memory", "attend", "concat", "stack"]
IMAGE_HISTORY_MODES: tuple[str, ...] = ("memory", "attend", "concat", "stack")
ArmConditioning = Literal["prompt", "embedding"]
ARM_CONDITIONINGS: tuple[str, ...] = ("prompt", "embedding")


@dataclasses.dataclass(frozen=True)
class ArmShape:
    """One arm of a model trained on several: the name a request, `--arm` and the checkpoint's assets call it, and
    its graph (its nodes are the first `num_nodes` of the model's padded graph)."""

    name: str
    num_nodes: int
    edges: tuple[arm.Edge, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise ValueError(f"an arm's name must be a non-empty string without '/', got {self.name!r}")
        if not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise ValueError(f"arm {self.name!r}: num_nodes must be a positive integer, got {self.num_nodes!r}")
        object.__setattr__(self, "edges", arm.validate_edges(self.num_nodes, self.edges))


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
    # Proprioceptive history (softarm.history): the graph over the current and `history_steps - 1` past control
    # steps, `history_stride` steps apart, read by the graph encoder as `history_mode` says; 1 = no history.
    history_steps: int = 1
    history_stride: int = 1
    history_mode: HistoryMode = "attend"
    # Several arms in one model (`softarm train` with datasets of different arms): each arm's graph padded to
    # `num_nodes` (the largest), the node features shared; () = one arm, the fields above. How the model is told
    # which arm a sample is from: "prompt" (its name before the prompt: works without a graph too) or "embedding"
    # (a learned vector per arm added to every node token).
    arms: tuple[ArmShape, ...] = ()
    arm_conditioning: ArmConditioning = "prompt"
    # Visual history (softarm.visual_memory): the past `image_history_steps - 1` frames of the cameras in
    # `image_history_slots` (openpi slots; () = all three), `image_history_stride` control steps apart. "memory":
    # each current image token attends to its patch in the past frames (MEM-style), the past tokens are dropped
    # before the VLM; "attend": the same over every patch of the past frames; "concat": each patch's tokens in the K
    # frames side by side, read by a small MLP into the current token; "stack": the past frames' tokens join the
    # prefix (the naive way, for comparison). 1 = none.
    image_history_steps: int = 1
    image_history_stride: int = 1
    image_history_mode: ImageHistoryMode = "memory"
    image_history_slots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.vision, dict):
            object.__setattr__(self, "vision", VisionSpec(**self.vision))
        object.__setattr__(self, "arms", tuple(a if isinstance(a, ArmShape) else ArmShape(**a) for a in self.arms))
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
        for name in GEMMA_FIELDS:
            if getattr(self, name) not in GEMMA_VARIANTS:
                raise ValueError(f"{name} must be one of {GEMMA_VARIANTS}, got {getattr(self, name)!r}")
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
        HistorySpec(self.history_steps, self.history_stride)  # checks both
        if self.history_mode not in HISTORY_MODES:
            raise ValueError(f"history_mode must be one of {HISTORY_MODES}, got {self.history_mode!r}")
        self._check_arms()
        HistorySpec(self.image_history_steps, self.image_history_stride)  # checks both
        if self.image_history_mode not in IMAGE_HISTORY_MODES:
            mode = self.image_history_mode
            raise ValueError(f"image_history_mode must be one of {IMAGE_HISTORY_MODES}, got {mode!r}")
        object.__setattr__(self, "image_history_slots", tuple(self.image_history_slots))
        unknown = [slot for slot in self.image_history_slots if slot not in IMAGE_SLOTS]
        if unknown:
            raise ValueError(f"image_history_slots: {unknown[0]!r} is not one of openpi's image slots {IMAGE_SLOTS}")
        if self.action_dim != 32:
            raise ValueError(
                f"openpi's PI0Pytorch has 32-D action/state projections; action_dim must be 32, got {self.action_dim}"
            )

    def _check_arms(self) -> None:
        if self.arm_conditioning not in ARM_CONDITIONINGS:
            raise ValueError(f"arm_conditioning must be one of {ARM_CONDITIONINGS}, got {self.arm_conditioning!r}")
        if self.arm_conditioning == "embedding" and self.fusion == "none":
            raise ValueError("arm_conditioning 'embedding' adds to the graph's node tokens; without a graph (fusion "
                             "none) name the arm in the prompt: 'prompt'")  # fmt: skip
        names = [a.name for a in self.arms]
        if len(self.arms) == 1 or len(set(names)) != len(names):
            raise ValueError(f"arms: a model of several arms needs two or more, each named once; got {names}")
        for shape in self.arms:
            if shape.num_nodes > self.num_nodes:
                raise ValueError(
                    f"arm {shape.name!r} has {shape.num_nodes} nodes, more than the model's {self.num_nodes}"
                )

    def arm_index(self, name: str) -> int:
        """The index a sample of arm `name` carries; ValueError listing the arms the model knows."""
        names = [a.name for a in self.arms]
        if name not in names:
            raise ValueError(f"unknown arm {name!r}; this model knows {names}")
        return names.index(name)

    @property
    def history(self) -> HistorySpec:
        """The graph history the model reads: none without a graph (fusion none), so the same overrides can train a
        graph model with history and its no-graph baseline."""
        if self.fusion == "none":
            return NO_HISTORY
        return HistorySpec(self.history_steps, self.history_stride)

    @property
    def image_history(self) -> HistorySpec:
        """The camera frames the model reads besides the current ones (1 step: none)."""
        return HistorySpec(self.image_history_steps, self.image_history_stride)

    @property
    def history_slots(self) -> tuple[str, ...]:
        """The image slots whose past frames the model reads (none without visual history)."""
        if self.image_history_steps == 1:
            return ()
        return self.image_history_slots or IMAGE_SLOTS

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
