"""Shared builders and fixtures: synthetic raw episodes, batches for the tiny real PI0Pytorch, a trained policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from openpi.models.model import Observation
import pytest
import torch

from softarm.data.convert import ConvertOptions, convert
from softarm.data.raw import RawEpisode, write_episode
from softarm.layout import IMAGE_SLOTS
from softarm.model import SoftArmModelConfig

DEBUG_CONFIG = Path(__file__).parents[1] / "configs" / "debug.yaml"
POLICY_CAMERAS = {"base_0_rgb": "base", "left_wrist_0_rgb": "tip"}


def make_episode(length: int = 5, seed: int = 0, state_dim: int | None = 4) -> RawEpisode:
    rng = np.random.default_rng(seed)
    return RawEpisode(
        path=Path("unused"),
        images={
            "base": rng.integers(0, 256, (length, 48, 64, 3), dtype=np.uint8),
            "tip": rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8),
        },
        graph_nodes=rng.normal(size=(length, 10, 19)).astype(np.float32),
        actions=rng.uniform(-1, 1, (length, 10)).astype(np.float32),
        prompt="reach the red ball",
        fps=10.0,
        state=None if state_dim is None else rng.normal(size=(length, state_dim)).astype(np.float32),
        edges=np.array([[i, i + 1] for i in range(9)]),
    )


def raw_dir(tmp_path: Path, lengths=(20, 7, 12, 9)) -> Path:
    directory = tmp_path / "raw"
    for i, length in enumerate(lengths):
        write_episode(directory / f"ep_{i:03d}.h5", make_episode(length=length, seed=i))
    return directory


def observation(episode_seed: int, length: int, t: int) -> dict:
    """A policy request: frame `t` of the synthetic episode `episode_seed`."""
    episode = make_episode(length=length, seed=episode_seed)
    return {
        "images": {camera: episode.images[camera][t] for camera in ("base", "tip")},
        "graph_nodes": episode.graph_nodes[t],
        "state": episode.state[t],
        "prompt": episode.prompt,
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny policy trained 3 steps (suffix fusion) on synthetic episodes: (checkpoint dir, prepared dir)."""
    from softarm.train.config import load_config
    from softarm.train.loop import train

    tmp = tmp_path_factory.mktemp("policy")
    convert(raw_dir(tmp, lengths=(20, 12, 16)), tmp / "prep", ConvertOptions(val_episodes=1, cameras=POLICY_CAMERAS))
    overrides = [f"data.path={tmp / 'prep'}", f"train.out_dir={tmp / 'run'}", "train.steps=3", "train.save_every=3",
                 "train.val_every=100", "model.overrides.fusion=suffix"]  # fmt: skip
    train(load_config(DEBUG_CONFIG, overrides))
    return tmp / "run" / "checkpoints" / "3", tmp / "prep"


def make_observation(config: SoftArmModelConfig, batch: int = 2, seed: int = 0) -> Observation:
    gen = torch.Generator().manual_seed(seed)
    images = {k: torch.rand(batch, 3, 224, 224, generator=gen) * 2 - 1 for k in IMAGE_SLOTS}
    masks = {k: torch.ones(batch, dtype=torch.bool) for k in IMAGE_SLOTS}
    tokens = torch.randint(0, config.vocab_size, (batch, config.max_token_len), generator=gen)
    token_mask = torch.arange(config.max_token_len)[None].expand(batch, -1) < 12
    return Observation(
        images=images,
        image_masks=masks,
        state=torch.randn(batch, 32, generator=gen),
        tokenized_prompt=tokens,
        tokenized_prompt_mask=token_mask,
    )


def make_graph(config: SoftArmModelConfig, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, config.num_nodes, config.node_features, generator=torch.Generator().manual_seed(seed))


def make_actions(config: SoftArmModelConfig, batch: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, config.action_horizon, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
