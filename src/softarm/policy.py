"""SoftArmPolicy: a training checkpoint -> `infer(observation) -> {"actions": [H, A]}` in the arm's own units.

Preprocessing is the training chain itself (`softarm.data.transforms.input_transform`), with openpi's ResizeImages
added because robot cameras arrive at their native size; the EMA weights are used when the checkpoint has them. On
CUDA the sampling path is compiled (openpi's max-autotune) unless told otherwise; `warm_up` pays that cost up front.
`noise_scale` scales the flow's starting noise (1: openpi's sampling; 0: deterministic, the flow from the noise's mean);
`num_steps` is how many Euler steps integrate the flow (openpi's 10; fewer are faster, and on the simulator's tasks
measured as precise or more, docs/sim_base.md).
Given the previous chunk's unexecuted actions and the inference delay, sampling is real-time chunking
(`softarm.rtc`), eager.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
import time

import numpy as np
from openpi.shared import normalize
import torch
from torch.utils.data import default_collate

from softarm import arm as arm_layout
from softarm import layout
from softarm.data.loader import to_device
from softarm.data.spec import DatasetSpec, read_spec
from softarm.data.tokenizer import SentencePieceTokenizer
from softarm.data.transforms import ArmTag, input_transform, output_transform
from softarm.history import HistorySpec
from softarm.model import PI0GraphPytorch
from softarm.rtc import ActionPrefix
from softarm.visual_memory import FrameCache
from softarm.weights import load_model

COMPILE_MODES = ("auto", "none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(mode: str, device: torch.device) -> str | None:
    """torch.compile's mode for the sampling path, or None for eager. `auto` is openpi's choice on CUDA
    (max-autotune) and eager elsewhere: on a CPU compiling costs minutes and gains little."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    if mode == "auto":
        return "max-autotune" if device.type == "cuda" else None
    return None if mode == "none" else mode


def checked_noise_scale(value) -> float:
    """The scale as a float, or a ValueError naming it: a negative or infinite scale would silently garble actions."""
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0 <= value < math.inf):
        raise ValueError(f"noise_scale: expected a finite number >= 0 (1: openpi's sampling), got {value!r}")
    return float(value)


def checked_num_steps(value) -> int:
    """The step count, or a ValueError naming it: zero steps would return the starting noise as actions."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"num_steps: expected an integer >= 1 (openpi's 10), got {value!r}")
    return value


def check_checkpoint(directory: str | Path) -> None:
    """Refuse a directory that lacks a file serving needs, before any loading or progress output."""
    stats = Path(layout.ASSETS_DIR, layout.ASSET_ID, layout.NORM_STATS_FILE)
    for name in (layout.CONFIG_FILE, layout.DATA_SPEC_FILE, layout.TOKENIZER_FILE, stats):
        if not (Path(directory) / name).is_file():
            raise FileNotFoundError(f"{directory} is not a softarm checkpoint: {name} is missing")


def checkpoint_arms(directory: str | Path) -> list[str]:
    """The arms a checkpoint's model was trained on, by name; [] for a model of one arm."""
    config = json.loads((Path(directory) / layout.CONFIG_FILE).read_text())
    return [arm["name"] for arm in config.get("arms") or ()]


def arm_assets(directory: str | Path, arm: str | None) -> tuple[DatasetSpec, dict]:
    """The spec and norm stats a policy for `arm` uses: a model of one arm has one of each (`arm` must then be None
    or absent from the checkpoint's names), a model of several keeps each arm's under arm_assets/<name>/."""
    directory, arms = Path(directory), checkpoint_arms(directory)
    if not arms:
        if arm is not None:
            raise ValueError(f"arm {arm!r}: {directory} holds a model of one arm, which takes no arm name")
        return read_spec(directory), normalize.load(directory / layout.ASSETS_DIR / layout.ASSET_ID)
    if arm not in arms:
        what = f"unknown arm {arm!r}" if arm is not None else 'name one (--arm NAME, or "arm" in each request)'
        raise ValueError(f"{directory} holds a model of the arms {arms}: {what}")
    return read_spec(directory / layout.ARMS_DIR / arm), normalize.load(directory / layout.ARMS_DIR / arm)


class SoftArmPolicy:
    def __init__(
        self,
        model: PI0GraphPytorch,
        spec: DatasetSpec,
        norm_stats,
        tokenizer,
        *,
        device,
        num_steps: int = 10,
        noise_scale: float = 1.0,
        compile: str = "none",
        arm: str | None = None,
    ):
        """`arm`: which arm of a model of several this policy drives (`spec` and `norm_stats` are that arm's)."""
        config = model.config
        self.model, self.spec, self.device = model, spec, torch.device(device)
        self.num_steps = checked_num_steps(num_steps)
        self.noise_scale = checked_noise_scale(noise_scale)
        self.arm, tag, num_nodes, node_layout = arm, None, config.num_nodes, config.node_layout
        if config.arms or arm is not None:
            tag = ArmTag(config.arm_index(arm), arm, config.num_nodes, config.arm_conditioning == "prompt")
            num_nodes, node_layout = spec.num_nodes, spec.layout
        self._inputs = input_transform(
            spec.cameras, norm_stats, tokenizer, pi05=config.pi05, resize=True, num_nodes=num_nodes,
            layout=node_layout, action_dim=spec.action_dim, state_dim=spec.state_dim, history=config.history, arm=tag,
            image_history=config.image_history, image_slots=config.history_slots,
        )  # fmt: skip
        self._outputs = output_transform(norm_stats, pi05=config.pi05, action_dim=spec.action_dim)
        if config.image_history.steps > 1 and model.frame_cache is None:  # each past frame encoded once, not K-1 times
            model.frame_cache = FrameCache()
        self.compile_mode = compile_mode(compile, self.device)
        self._sample = model.sample_actions
        if self.compile_mode is not None:
            model.drop_prefix_padding = False  # one shape for every prompt: compiled once
            self._sample = torch.compile(model.sample_actions, mode=self.compile_mode)

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | Path,
        *,
        device: str = "auto",
        use_ema: bool = True,
        num_steps: int = 10,
        noise_scale: float = 1.0,
        compile: str = "auto",
        arm: str | None = None,
    ) -> SoftArmPolicy:
        """`arm`: for a model of several arms, the one to drive (MultiArmPolicy drives them all)."""
        directory, noise_scale = Path(directory), checked_noise_scale(noise_scale)  # before minutes of loading
        checked_num_steps(num_steps)
        check_checkpoint(directory)
        spec, norm_stats = arm_assets(directory, arm)
        model, tokenizer, device = _load(directory, device, use_ema)
        return cls(
            model, spec, norm_stats, tokenizer, device=device, num_steps=num_steps, noise_scale=noise_scale,
            compile=compile, arm=arm,
        )  # fmt: skip

    @property
    def metadata(self) -> dict:
        """What a robot client needs to know; sent by the server on connect."""
        config = self.model.config
        arms = {"arm": self.arm, "arms": [a.name for a in config.arms]} if config.arms else {}
        return arms | {
            "action_horizon": config.action_horizon,
            "action_dim": self.spec.action_dim,
            "cameras": self.spec.present_cameras,
            "state_dim": self.spec.state_dim,
            "graph": {
                "num_nodes": self._graph_shape[0],
                # the columns of a request's graph_nodes [num_nodes, len(node_features)], in this order
                "node_features": self._graph_shape[1].described(),
                # not measured on the arm trained on: the model feeds them as 0; a request may carry them (all the
                # layout's columns, or columns named by graph_features) and they are dropped
                "unmeasured_features": list(self._graph_shape[1].unmeasured),
                "edges": [list(e) for e in self._graph_shape[2]],
                "ignored_features": list(config.ignored_features),  # accepted in requests, not read
            },
            "fusion": config.fusion,
            # proprioceptive history: with steps > 1 a request's graph_nodes are [steps, num_nodes, F], the last
            # `steps` control steps `stride` apart, oldest first, and "graph_history_mask" [steps] may say which are
            # before the episode's start. The robot keeps the window (softarm.history.GraphHistory, fed every control
            # step): only it sees every step, the server sees those it is asked to act on.
            "history": {"steps": self.history.steps, "stride": self.history.stride},
            # visual history: with steps > 1 a request also carries "image_history" {camera: [steps - 1, H, W, 3]},
            # the past frames of these cameras `stride` control steps apart, oldest first, and optionally
            # "image_history_mask" [steps - 1] (softarm.history.ImageHistory keeps them on the robot)
            "image_history": {
                "steps": self.image_history.steps,
                "stride": self.image_history.stride,
                "cameras": self.history_cameras,
            },
            "pi05": config.pi05,
            "noise_scale": self.noise_scale,  # of the flow's starting noise: 0 = deterministic sampling
            "num_steps": self.num_steps,  # Euler steps integrating the flow
            # real-time chunking: a request may carry "prev_actions" [L, action_dim] (the previous chunk's actions
            # not yet executed, arm units) and "delay" (control steps that will execute before this reply arrives)
            "rtc": {
                "prev_actions": True,
                "max_guidance_weight": config.rtc_max_guidance_weight,
                "schedule": config.rtc_schedule,
                "trained_max_delay": config.rtc_max_delay,  # delays up to this: clean prefix; above: guidance
            },
        }

    @property
    def _graph_shape(self) -> tuple[int, arm_layout.NodeLayout, tuple]:
        """The graph a request carries: nodes, their layout and edges (the driven arm's own in a model of several)."""
        config = self.model.config
        if self.arm is None:
            return config.num_nodes, config.node_layout, config.edges
        return self.spec.num_nodes, self.spec.layout, self.spec.edges

    @property
    def history_cameras(self) -> list[str]:
        """The cameras whose past frames a request carries (none without visual history)."""
        return [self.spec.cameras[slot] for slot in self.model.config.history_slots if self.spec.cameras.get(slot)]

    @property
    def history(self) -> HistorySpec:
        """The graph history this policy reads: a request's graph_nodes window (1 step: no history)."""
        return self.model.config.history

    @property
    def image_history(self) -> HistorySpec:
        """The camera frames this policy reads: the current ones and `steps - 1` past ones (1 step: none)."""
        return self.model.config.image_history

    def infer(self, observation: dict, prev_actions=None, delay: int = 0) -> dict:
        """observation: {"images": {camera: uint8 [H, W, 3]}, "graph_nodes": [N, F] (with history [K, N, F] and
        "graph_history_mask"?: [K]), "prompt": str, "state"?: [S],
        "graph_features"?: [F names], "prev_actions"?: [L, A], "delay"?: int} (see SoftArmInputs for the columns
        graph_nodes may have). `prev_actions` / `delay` may also be given as arguments."""
        if prev_actions is not None:
            observation = {**observation, "prev_actions": prev_actions, "delay": delay}
        return self.act(self.prepare(observation))

    def prepare(self, observation: dict) -> dict:
        """Validate and transform one observation (ValueError naming the key if malformed); no model work, so a
        server can answer a bad request without waiting for the model."""
        keys = ("images", layout.GRAPH_NODES, layout.GRAPH_HISTORY_MASK, "graph_features", "prompt", "state",
                layout.IMAGE_HISTORY, layout.IMAGE_HISTORY_MASK)  # fmt: skip
        inputs = {k: v for k, v in observation.items() if k in keys}
        if observation.get("arm", self.arm) != self.arm:
            raise ValueError(f"'arm': {observation['arm']!r}, but this policy drives " + (
                f"arm {self.arm!r}" if self.arm else "a model of one arm, which takes no arm name"))  # fmt: skip
        overlap, delay = self._previous_chunk(observation)
        if overlap:  # normalised and padded to 32 dims by the training chain, then to the chunk's length
            inputs["actions"] = np.asarray(observation["prev_actions"], np.float32)
        prepared = self._inputs(inputs)
        if overlap:
            actions = prepared["actions"]
            horizon = self.model.config.action_horizon
            prepared["actions"] = np.concatenate([actions, np.zeros((horizon - overlap, actions.shape[1]), np.float32)])
            prepared["action_is_pad"] = np.arange(horizon) >= overlap
            prepared["rtc"] = {"overlap": overlap, "delay": delay}
        return prepared

    def _previous_chunk(self, observation: dict) -> tuple[int, int]:
        """The checked length of "prev_actions" (0 without) and "delay"."""
        horizon, action_dim = self.model.config.action_horizon, self.spec.action_dim
        delay = observation.get("delay", 0)
        if "prev_actions" not in observation:
            if delay not in (0, None):
                raise ValueError("'delay' needs 'prev_actions': the previous chunk's actions not yet executed")
            return 0, 0
        prev = np.asarray(observation["prev_actions"])
        expected = f"expected a float array [L, {action_dim}] with 1 <= L <= {horizon}, the previous chunk's actions"
        shaped = prev.ndim == 2 and prev.shape[1] == action_dim and 1 <= len(prev) <= horizon
        if prev.dtype.kind not in "fiu" or not shaped:
            raise ValueError(f"'prev_actions': {expected} not yet executed; got {prev.dtype} {list(prev.shape)}")
        if not np.isfinite(prev).all():
            raise ValueError("'prev_actions': contains NaN or Inf")
        if isinstance(delay, bool) or not isinstance(delay, int | np.integer):
            raise ValueError(f"'delay': expected an integer number of control steps, got {delay!r}")
        if not 0 <= delay <= min(len(prev), horizon - 1):
            raise ValueError(
                f"'delay': expected 0 to {min(len(prev), horizon - 1)} control steps (no more than the {len(prev)} "
                f"prev_actions given, fewer than the {horizon}-step chunk), got {delay}"
            )
        return len(prev), int(delay)

    def warm_up(self, repeats: int | None = None) -> float:
        """Run inference on a blank observation of the served shapes so that compilation (and CUDA's lazy set-up)
        happens now, not on the robot's first request; the RNG streams are left as they were. Returns seconds."""
        side, spec, (nodes, node_layout, _) = layout.IMAGE_SIZE, self.spec, self._graph_shape
        window = (self.history.steps,) if self.history.steps > 1 else ()
        observation = {
            "images": {cam: np.zeros((side, side, 3), np.uint8) for cam in spec.present_cameras.values()},
            "graph_nodes": np.zeros((*window, nodes, len(node_layout.measured)), np.float32),
            "prompt": "warm up",
            **({"state": np.zeros(spec.state_dim, np.float32)} if spec.state_dim else {}),
        }
        past = self.image_history.steps - 1
        if past:
            observation[layout.IMAGE_HISTORY] = {
                cam: np.zeros((past, side, side, 3), np.uint8) for cam in self.history_cameras
            }
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        start = time.monotonic()
        with torch.random.fork_rng(devices=devices):
            for _ in range(repeats or (3 if self.compile_mode else 1)):  # CUDA graphs are recorded on a later call
                self.infer(observation)
        return time.monotonic() - start

    def act(self, prepared: dict) -> dict:
        """The action chunk in the arm's units for a `prepare`d observation. With a previous chunk the reply's first
        `delay` actions are the ones executed while it was computed (frozen, or guided towards the old ones)."""
        start = time.monotonic()
        rtc = prepared.get("rtc")
        batch = to_device(default_collate([{k: v for k, v in prepared.items() if k != "rtc"}]), self.device)
        prefix = ActionPrefix(batch.actions, rtc["overlap"], rtc["delay"]) if rtc else None
        guided = prefix is not None and not self.model.conditions_on(prefix)
        sample = self._sample if prefix is None else self.model.sample_actions  # one compiled shape: no prefix
        config = self.model.config
        noise = self.noise_scale * self.model.sample_noise((1, config.action_horizon, config.action_dim), self.device)
        with torch.inference_mode(not guided):  # guidance differentiates through the action expert
            actions = sample(
                self.device, batch.observation, graph_nodes=batch.graph_nodes, noise=noise, num_steps=self.num_steps,
                prefix=prefix, graph_mask=batch.graph_mask, arm=batch.arm, image_history=batch.image_history,
            )  # fmt: skip
        out = self._outputs({"actions": actions[0].float().cpu().numpy()})
        return {"actions": out["actions"], "policy_timing": {"infer_ms": 1000 * (time.monotonic() - start)}}


def _load(directory: Path, device: str, use_ema: bool) -> tuple[PI0GraphPytorch, SentencePieceTokenizer, str]:
    """A checkpoint's model (its EMA weights when it has them, in eval mode) and tokenizer, on `device`."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = directory / layout.EMA_FILE if use_ema and (directory / layout.EMA_FILE).is_file() else None
    model = load_model(directory, device, weights).eval().trust_validated_inputs()  # SoftArmInputs checks
    tokenizer = SentencePieceTokenizer(directory / layout.TOKENIZER_FILE, max_len=model.config.max_token_len)
    return model, tokenizer, device


class MultiArmPolicy:
    """One model of several arms serving all of them: each request names its arm (`"arm": NAME`) and goes through
    that arm's policy (its cameras, graph, statistics and action size); the model is loaded once."""

    def __init__(self, policies: dict[str, SoftArmPolicy]) -> None:
        self.policies = policies

    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, device: str = "auto", use_ema: bool = True, num_steps: int = 10,
                        noise_scale: float = 1.0, compile: str = "auto") -> MultiArmPolicy:  # fmt: skip
        directory, noise_scale = Path(directory), checked_noise_scale(noise_scale)
        checked_num_steps(num_steps)
        check_checkpoint(directory)
        arms = checkpoint_arms(directory)
        if not arms:
            raise ValueError(f"{directory} holds a model of one arm: serve it with SoftArmPolicy")
        assets = {arm: arm_assets(directory, arm) for arm in arms}
        model, tokenizer, device = _load(directory, device, use_ema)
        return cls({arm: SoftArmPolicy(model, spec, stats, tokenizer, device=device, num_steps=num_steps,
                                       noise_scale=noise_scale, compile=compile, arm=arm)
                    for arm, (spec, stats) in assets.items()})  # fmt: skip

    @property
    def compile_mode(self) -> str | None:
        return next(iter(self.policies.values())).compile_mode

    @property
    def metadata(self) -> dict:
        """Every arm's metadata under its name; a request must say which arm it comes from."""
        return {"arms": {arm: policy.metadata for arm, policy in self.policies.items()}, "arm_key": "arm"}

    def _policy(self, observation: dict) -> SoftArmPolicy:
        arm = observation.get("arm")
        if arm not in self.policies:
            given = f"unknown arm {arm!r}" if arm is not None else "no 'arm' given"
            raise ValueError(f'{given}: this server drives the arms {list(self.policies)}; name one as "arm"')
        return self.policies[arm]

    def prepare(self, observation: dict) -> dict:
        return {"arm": observation.get("arm"), "prepared": self._policy(observation).prepare(observation)}

    def act(self, prepared: dict) -> dict:
        return self.policies[prepared["arm"]].act(prepared["prepared"])

    def infer(self, observation: dict) -> dict:
        return self.act(self.prepare(observation))

    def warm_up(self, repeats: int | None = None) -> float:
        return sum(policy.warm_up(repeats) for policy in self.policies.values())
