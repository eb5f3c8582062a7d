"""Shared builders: tiny configs of the real PI0Pytorch and synthetic batches."""

from __future__ import annotations

from openpi.models.model import Observation
import pytest
import torch

from softarm.data.convert import IMAGE_SLOTS
from softarm.model import SoftArmModelConfig


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
