"""The soft arm's openpi transforms, used for BOTH training and inference (openpi's `policies/<robot>_policy.py` shape).

`SoftArmInputs` maps one raw observation (the lab's camera names, graph nodes, optional state, prompt) to openpi's
layout plus `graph_nodes`; openpi's own `Normalize`, `ResizeImages`, `TokenizePrompt` and `PadStatesAndActions` do the
rest. `SoftArmOutputs` cuts the model's 32-D actions back to the arm's action size.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

import numpy as np
from openpi import transforms as _transforms
from openpi.models.tokenizer import PaligemmaTokenizer
from openpi.shared import normalize
from openpi_client import image_tools  # the resize of openpi's ResizeImages: past frames resized as current ones

from softarm import arm
from softarm.history import NO_HISTORY, HistorySpec
from softarm.layout import (
    GRAPH_HISTORY_MASK,
    IMAGE_HISTORY,
    IMAGE_HISTORY_MASK,
    IMAGE_SIZE,
    IMAGE_SLOTS,
    MODEL_DIM,
)

MAX_IMAGE_SIDE = 4096  # a camera frame larger than this is a mistake, not a photo to downsample


@dataclasses.dataclass(frozen=True)
class SoftArmInputs(_transforms.DataTransformFn):
    """{"images": {camera: uint8 [H, W, 3]}, "graph_nodes": [N, F], "prompt": str, optional "state": [S],
    optional "graph_features": [names of the F columns], optional "actions": [H, A], "action_is_pad": [H]} ->
    openpi's model inputs + "graph_nodes" in the model's node layout.

    The graph's F columns are the measured features in layout order, or all the layout's columns, or whatever
    "graph_features" names; columns the model does not read are dropped, unmeasured ones become 0. A model with
    history takes "graph_nodes" [K, N, F], the window `softarm.history.GraphHistory` gives, and optionally
    "graph_history_mask" [K] (default: every step real)."""

    cameras: Mapping[str, str | None]  # openpi slot -> the lab's camera name (None: no camera, zero image)
    num_nodes: int = arm.NUM_NODES
    layout: arm.NodeLayout = arm.FULL_LAYOUT
    action_dim: int = arm.ACTION_DIM
    state_dim: int | None = None  # the width the model was trained on; None accepts any (prepared data is uniform)
    history: HistorySpec = NO_HISTORY
    image_history: HistorySpec = NO_HISTORY  # past frames of `image_slots` ("image_history": {camera: [K-1, ...]})
    image_slots: tuple[str, ...] = ()

    def __call__(self, data: dict) -> dict:
        missing = [key for key in ("images", "graph_nodes", "prompt") if key not in data]
        if missing:
            raise ValueError(f"missing key {missing[0]!r}; an observation needs 'images', 'graph_nodes' and 'prompt'")
        images = data.get("images")
        if not isinstance(images, Mapping):
            raise ValueError("'images' must map camera names to uint8 [H, W, 3] arrays")
        out_images, masks = {}, {}
        for slot in IMAGE_SLOTS:
            camera = self.cameras.get(slot)
            if camera is None:
                out_images[slot], masks[slot] = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), np.False_
                continue
            if camera not in images:
                raise ValueError(f"'images' lacks camera {camera!r} (feeds {slot}); got {sorted(images)}")
            image = np.asarray(images[camera])
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"images[{camera!r}] must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
            if max(image.shape[:2]) > MAX_IMAGE_SIDE:
                raise ValueError(
                    f"images[{camera!r}] is {image.shape[0]}x{image.shape[1]}; at most {MAX_IMAGE_SIDE} pixels a side"
                )
            out_images[slot], masks[slot] = image, np.True_

        try:
            nodes = np.asarray(data["graph_nodes"], dtype=np.float32)
            state = np.asarray(data.get("state", np.zeros(0)), dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"'graph_nodes' and 'state' must be numeric arrays ({e})") from None
        inputs = {}
        if self.image_history.steps > 1:
            inputs[IMAGE_HISTORY], inputs[IMAGE_HISTORY_MASK] = self._past_frames(data)
        if self.history.steps > 1:
            nodes, inputs[GRAPH_HISTORY_MASK] = self._window(nodes, data.get("graph_features"), data)
        else:
            nodes = self._node_layout(nodes, data.get("graph_features"))
        if not np.isfinite(nodes).all():
            raise ValueError("'graph_nodes' contains NaN or Inf")
        if not np.isfinite(state).all():
            raise ValueError("'state' contains NaN or Inf")
        if self.state_dim is not None and len(state) != self.state_dim:
            raise ValueError(f"'state' must have {self.state_dim} values (the width trained on), got {len(state)}")
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"'prompt' must be a non-empty string, got {prompt!r}")

        inputs |= {"image": out_images, "image_mask": masks, "state": state, "graph_nodes": nodes, "prompt": prompt}
        if "actions" in data:
            actions = np.asarray(data["actions"], dtype=np.float32)
            inputs["actions"] = actions
            inputs["action_is_pad"] = np.asarray(data.get("action_is_pad", np.zeros(len(actions), bool)))
            inputs["action_dim_mask"] = np.arange(MODEL_DIM) < self.action_dim  # real dims of the padded 32
        return inputs

    def _past_frames(self, data: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """ "image_history" {camera: uint8 [K-1, H, W, 3]} -> {slot: [K-1, 224, 224, 3]} for the model's history slots
        (zeros where a slot has no camera), and "image_history_mask" [K-1] (default: every frame real)."""
        past, stride = self.image_history.steps - 1, self.image_history.stride
        given = data.get(IMAGE_HISTORY, {})
        if not isinstance(given, Mapping):
            raise ValueError("'image_history' must map camera names to uint8 [K-1, H, W, 3] arrays of past frames")
        frames = {}
        for slot in self.image_slots:
            camera = self.cameras.get(slot)
            if camera is None:
                frames[slot] = np.zeros((past, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
                continue
            if camera not in given:
                raise ValueError(
                    f"'image_history' lacks camera {camera!r}: the model reads its {past} past frames, {stride} "
                    "control steps apart, oldest first (softarm.history.ImageHistory keeps them)"
                )
            window = np.asarray(given[camera])
            if window.dtype != np.uint8 or window.ndim != 4 or len(window) != past or window.shape[-1] != 3:
                raise ValueError(f"image_history[{camera!r}] must be uint8 [{past}, H, W, 3], got {window.dtype} "
                                 f"{list(window.shape)}")  # fmt: skip
            if window.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
                window = image_tools.resize_with_pad(window, IMAGE_SIZE, IMAGE_SIZE)
            # a request's arrays are read-only views of its message (torch warns); the loader's are copies already
            frames[slot] = window if window.flags.writeable else window.copy()
        mask = np.asarray(data.get(IMAGE_HISTORY_MASK, np.ones(past, bool)))
        if mask.dtype != bool or mask.shape != (past,):
            raise ValueError(f"'image_history_mask' must be {past} bools, False for frames before the episode's "
                             f"start; got {mask.tolist()}")  # fmt: skip
        return frames, mask.copy()

    def _window(self, nodes: np.ndarray, names, data: dict) -> tuple[np.ndarray, np.ndarray]:
        """[K, N, F] history window -> ([K, N, layout width], mask [K])."""
        steps, stride = self.history.steps, self.history.stride
        if nodes.ndim != 3 or len(nodes) != steps:
            raise ValueError(
                f"'graph_nodes' must be [{steps} steps, {self.num_nodes}, {len(self.layout.measured)}]: the last "
                f"{steps} control steps, {stride} apart, oldest first (softarm.history.GraphHistory keeps them); "
                f"got {list(nodes.shape)}"
            )
        mask = np.asarray(data.get(GRAPH_HISTORY_MASK, np.ones(steps, bool)))
        if mask.dtype != bool or mask.shape != (steps,) or not mask[-1]:
            raise ValueError(
                f"'graph_history_mask' must be {steps} bools, False for steps before the episode's start and True "
                f"for the current (last) one; got {mask.tolist()}"
            )
        # a copy: a served request's arrays are read-only views of its message, which torch warns about
        return np.stack([self._node_layout(step, names) for step in nodes]), mask.copy()

    def _node_layout(self, nodes: np.ndarray, names) -> np.ndarray:
        """[N, F] in the request's columns -> [N, layout width]; NaN in a column the model does not read is fine."""
        layout, wanted = self.layout, f"[{self.num_nodes}, {len(self.layout.measured)}]"
        if layout.unmeasured:
            wanted += f" (the measured features) or [{self.num_nodes}, {layout.width}] (all of {list(layout.features)})"
        if nodes.ndim != 2 or nodes.shape[0] != self.num_nodes:
            raise ValueError(f"'graph_nodes' must be {wanted}, got {list(nodes.shape)}")
        if names is None:
            if nodes.shape[1] not in (len(layout.measured), layout.width):
                raise ValueError(f"'graph_nodes' must be {wanted}, got {list(nodes.shape)}")
            names = layout.measured if nodes.shape[1] == len(layout.measured) else layout.features
        elif not isinstance(names, list | tuple | np.ndarray) or len(names) != nodes.shape[1]:
            raise ValueError(f"'graph_features' must name the {nodes.shape[1]} columns of 'graph_nodes', got {names!r}")
        try:
            return layout.select(nodes, [str(n) for n in names])
        except ValueError as e:
            raise ValueError(f"'graph_nodes' {e}") from None


@dataclasses.dataclass(frozen=True)
class SoftArmOutputs(_transforms.DataTransformFn):
    action_dim: int = arm.ACTION_DIM

    def __call__(self, data: dict) -> dict:
        return {"actions": np.asarray(data["actions"][..., : self.action_dim])}


@dataclasses.dataclass(frozen=True)
class ArmTag(_transforms.DataTransformFn):
    """A sample of one arm of a model trained on several: its normalised graph padded with zero nodes to the model's
    node count, its arm index under "arm", and with `in_prompt` the arm's name before the prompt ("NAME: prompt")."""

    index: int
    name: str
    num_nodes: int  # the model's: the largest arm's
    in_prompt: bool

    def __call__(self, data: dict) -> dict:
        nodes = data["graph_nodes"]
        missing = self.num_nodes - nodes.shape[-2]
        if missing:
            nodes = np.concatenate([nodes, np.zeros((*nodes.shape[:-2], missing, nodes.shape[-1]), nodes.dtype)], -2)
        out = {**data, "graph_nodes": nodes, "arm": np.int64(self.index)}
        if self.in_prompt:
            out["prompt"] = f"{self.name}: {data['prompt']}"
        return out


def as_float32(norm_stats: dict[str, normalize.NormStats]) -> dict[str, normalize.NormStats]:
    """openpi's stats load as float64, which would silently upcast every normalised array."""
    fields = [field.name for field in dataclasses.fields(normalize.NormStats)]
    arrays = {key: {f: np.asarray(v, np.float32) for f in fields if (v := getattr(s, f)) is not None}
              for key, s in norm_stats.items()}  # fmt: skip
    return {key: dataclasses.replace(norm_stats[key], **values) for key, values in arrays.items()}


def input_transform(
    cameras: Mapping[str, str | None],
    norm_stats: dict[str, normalize.NormStats],
    tokenizer: PaligemmaTokenizer,
    *,
    pi05: bool,
    resize: bool = True,
    num_nodes: int = arm.NUM_NODES,
    layout: arm.NodeLayout = arm.FULL_LAYOUT,
    action_dim: int = arm.ACTION_DIM,
    state_dim: int | None = None,
    history: HistorySpec = NO_HISTORY,
    arm: ArmTag | None = None,
    image_history: HistorySpec = NO_HISTORY,
    image_slots: tuple[str, ...] = (),
) -> _transforms.DataTransformFn:
    """Raw observation -> model-ready numpy dict. `resize=False` for prepared data, already 224x224 (resized at
    conversion with the same openpi function that ResizeImages uses). Normalisation broadcasts the per-node stats
    over a history window's steps. `arm`: for a model of several arms (`num_nodes` and `layout` are then this arm's,
    its statistics normalise it before its graph is padded)."""
    steps: list[_transforms.DataTransformFn] = [
        SoftArmInputs(cameras, num_nodes, layout, action_dim, state_dim, history, image_history, image_slots),
        _transforms.Normalize(as_float32(norm_stats), use_quantiles=pi05),
    ]
    if resize:
        steps.append(_transforms.ResizeImages(IMAGE_SIZE, IMAGE_SIZE))
    if arm is not None:
        steps.append(arm)
    steps += [
        _transforms.TokenizePrompt(tokenizer, discrete_state_input=pi05),
        _transforms.PadStatesAndActions(MODEL_DIM),
    ]
    return _transforms.compose(steps)


def output_transform(
    norm_stats: dict[str, normalize.NormStats], *, pi05: bool, action_dim: int = arm.ACTION_DIM
) -> _transforms.DataTransformFn:
    """Model actions [H, 32] (normalised) -> the arm's actions [H, action_dim] in its own units."""
    return _transforms.compose(
        [_transforms.Unnormalize({"actions": norm_stats["actions"]}, use_quantiles=pi05), SoftArmOutputs(action_dim)]
    )
