"""Shared builders and fixtures: synthetic raw episodes, batches for the tiny real PI0Pytorch, a trained policy, a
running policy server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
import contextlib
from pathlib import Path
import socket
import threading

import numpy as np
from openpi.models.model import Observation
import pytest
import torch

from softarm.data.convert import ConvertOptions, convert
from softarm.data.raw import RawEpisode, write_episode
from softarm.layout import IMAGE_SLOTS
from softarm.model_config import SoftArmModelConfig
from softarm.serve import SoftArmPolicyServer

DEBUG_CONFIG = Path(__file__).parents[1] / "configs" / "debug.yaml"
POLICY_CAMERAS = {"base_0_rgb": "base", "left_wrist_0_rgb": "tip"}


def make_episode(
    length: int = 5, seed: int = 0, state_dim: int | None = 4, *, nodes: int = 10, features: int = 19, actions: int = 10
) -> RawEpisode:
    """A synthetic episode of an arm with `nodes` nodes (a chain), `features` node features, `actions` actuators."""
    rng = np.random.default_rng(seed)
    return RawEpisode(
        path=Path("unused"),
        images={
            "base": rng.integers(0, 256, (length, 48, 64, 3), dtype=np.uint8),
            "tip": rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8),
        },
        graph_nodes=rng.normal(size=(length, nodes, features)).astype(np.float32),
        actions=rng.uniform(-1, 1, (length, actions)).astype(np.float32),
        prompt="reach the red ball",
        fps=10.0,
        state=None if state_dim is None else rng.normal(size=(length, state_dim)).astype(np.float32),
        edges=np.array([[i, i + 1] for i in range(nodes - 1)]),
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


# `softarm pretrain` at toy sizes: the tiny preset, 2 steps, a few simulated episodes and evaluations
SMALL_PRETRAIN = ["--episodes", "reach=2", "--episodes", "follow=1", "--hard-reach", "4", "--noise", "0.05",
                  "--noise", "follow=0.1",
                  "--val-episodes", "1", "--eval-episodes", "1", "--workers", "1", "--vision-steps", "2",
                  "--finish-steps", "2", "model.preset=tiny", "data.batch_size=4", "data.num_workers=0",
                  "train.steps=2", "train.save_every=2", "train.val_every=2", "train.log_every=1"]  # fmt: skip


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `softarm pretrain` output at toy sizes: simulated episodes (raw, raw_hard, prepared), two tiny bases trained
    2 steps (base/graph, base/no_graph), their runs and evaluations."""
    from softarm.cli import main

    out = tmp_path_factory.mktemp("pretrain")
    assert main(["pretrain", "--out", str(out), *SMALL_PRETRAIN]) == 0
    return out


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


@contextlib.contextmanager
def running(policy, api_key: str | None = None) -> Iterator[int]:
    """The server in a thread of this process on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = SoftArmPolicyServer(policy, host="127.0.0.1", port=port, metadata=policy.metadata, api_key=api_key)
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(srv.run(ready),), daemon=True)
    thread.start()
    for _ in range(200):
        if ready.is_set():
            break
        threading.Event().wait(0.05)
    yield port
    loop.call_soon_threadsafe(srv.server.close)
    thread.join(timeout=10)
