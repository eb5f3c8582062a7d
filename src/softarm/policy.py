"""SoftArmPolicy: a training checkpoint -> `infer(observation) -> {"actions": [H, A]}` in the arm's own units.

Preprocessing is the training chain itself (`softarm.data.transforms.input_transform`), with openpi's ResizeImages
added because robot cameras arrive at their native size; the EMA weights are used when the checkpoint has them. On
CUDA the sampling path is compiled (openpi's max-autotune) unless told otherwise; `warm_up` pays that cost up front.
"""

from __future__ import annotations

import json
from pathlib import Path
import time

import numpy as np
from openpi.shared import normalize
import torch
from torch.utils.data import default_collate

from softarm.data.loader import to_device
from softarm.data.tokenizer import SentencePieceTokenizer
from softarm.data.transforms import input_transform, output_transform
from softarm.layout import (
    ASSET_ID,
    ASSETS_DIR,
    CONFIG_FILE,
    DATA_SPEC_FILE,
    EMA_FILE,
    IMAGE_SIZE,
    NORM_STATS_FILE,
    TOKENIZER_FILE,
)
from softarm.model import PI0GraphPytorch
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


class SoftArmPolicy:
    def __init__(
        self,
        model: PI0GraphPytorch,
        spec: dict,
        norm_stats,
        tokenizer,
        *,
        device,
        num_steps: int = 10,
        compile: str = "none",
    ):
        config = model.config
        self.model, self.spec, self.device, self.num_steps = model, spec, torch.device(device), num_steps
        self._inputs = input_transform(
            spec["cameras"], norm_stats, tokenizer, pi05=config.pi05, resize=True, num_nodes=config.num_nodes,
            layout=config.node_layout, action_dim=spec["action_dim"], state_dim=spec["state_dim"],
        )  # fmt: skip
        self._outputs = output_transform(norm_stats, pi05=config.pi05, action_dim=spec["action_dim"])
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
        compile: str = "auto",
    ) -> SoftArmPolicy:
        directory = Path(directory)
        for name in (CONFIG_FILE, DATA_SPEC_FILE, TOKENIZER_FILE, f"{ASSETS_DIR}/{ASSET_ID}/{NORM_STATS_FILE}"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a softarm checkpoint: {name} is missing")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        weights = directory / EMA_FILE if use_ema and (directory / EMA_FILE).is_file() else None
        model = load_model(directory, device, weights).eval().trust_validated_inputs()  # SoftArmInputs checks
        spec = json.loads((directory / DATA_SPEC_FILE).read_text())
        norm_stats = normalize.load(directory / ASSETS_DIR / ASSET_ID)
        tokenizer = SentencePieceTokenizer(directory / TOKENIZER_FILE, max_len=model.config.max_token_len)
        return cls(model, spec, norm_stats, tokenizer, device=device, num_steps=num_steps, compile=compile)

    @property
    def metadata(self) -> dict:
        """What a robot client needs to know; sent by the server on connect."""
        config = self.model.config
        layout = config.node_layout
        return {
            "action_horizon": config.action_horizon,
            "action_dim": self.spec["action_dim"],
            "cameras": {slot: cam for slot, cam in self.spec["cameras"].items() if cam is not None},
            "state_dim": self.spec["state_dim"],
            "graph": {
                "num_nodes": config.num_nodes,
                # the columns of a request's graph_nodes [num_nodes, len(node_features)], in this order
                "node_features": layout.described(),
                # not measured on the arm trained on: the model feeds them as 0; a request may carry them (all the
                # layout's columns, or columns named by graph_features) and they are dropped
                "unmeasured_features": list(layout.unmeasured),
                "edges": [list(e) for e in config.edges],
                "ignored_features": list(config.ignored_features),  # accepted in requests, not read
            },
            "fusion": config.fusion,
            "pi05": config.pi05,
        }

    def infer(self, observation: dict) -> dict:
        """observation: {"images": {camera: uint8 [H, W, 3]}, "graph_nodes": [N, F], "prompt": str, "state"?: [S],
        "graph_features"?: [F names]} (see SoftArmInputs for the columns graph_nodes may have)."""
        return self.act(self.prepare(observation))

    def prepare(self, observation: dict) -> dict:
        """Validate and transform one observation (ValueError naming the key if malformed); no model work, so a
        server can answer a bad request without waiting for the model."""
        keys = ("images", "graph_nodes", "graph_features", "prompt", "state")
        return self._inputs({k: v for k, v in observation.items() if k in keys})

    def warm_up(self, repeats: int | None = None) -> float:
        """Run inference on a blank observation of the served shapes so that compilation (and CUDA's lazy set-up)
        happens now, not on the robot's first request; the RNG streams are left as they were. Returns seconds."""
        layout, spec = self.model.config.node_layout, self.spec
        observation = {
            "images": {cam: np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8) for cam in spec["cameras"].values() if cam},
            "graph_nodes": np.zeros((self.model.config.num_nodes, len(layout.measured)), np.float32),
            "prompt": "warm up",
            **({"state": np.zeros(spec["state_dim"], np.float32)} if spec["state_dim"] else {}),
        }
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        start = time.monotonic()
        with torch.random.fork_rng(devices=devices):
            for _ in range(repeats or (3 if self.compile_mode else 1)):  # CUDA graphs are recorded on a later call
                self.infer(observation)
        return time.monotonic() - start

    @torch.inference_mode()
    def act(self, prepared: dict) -> dict:
        """The action chunk in the arm's units for a `prepare`d observation."""
        start = time.monotonic()
        batch = to_device(default_collate([prepared]), self.device)
        actions = self._sample(self.device, batch.observation, graph_nodes=batch.graph_nodes, num_steps=self.num_steps)
        out = self._outputs({"actions": actions[0].float().cpu().numpy()})
        return {"actions": out["actions"], "policy_timing": {"infer_ms": 1000 * (time.monotonic() - start)}}
