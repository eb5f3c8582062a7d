"""Prepared dataset -> torch batches for PI0GraphPytorch.

Samples go through the same input transform as inference. Batches are plain dicts (torch's default collate), so the
graph survives where openpi's `Observation.from_dict` would drop it; images stay uint8 until `to_device`, which
makes them float on the device (a quarter of the bytes through the loader and the host-to-device copy).
"""

from __future__ import annotations

import dataclasses

from openpi.models.model import Observation
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from softarm.data.convert import IMAGE_SLOTS
from softarm.data.prepared import PreparedDataset


class SoftArmDataset(Dataset):
    """Prepared frames through an input transform built with `prepared_cameras(...)` and `resize=False`."""

    def __init__(self, prepared: PreparedDataset, transform) -> None:
        self.prepared = prepared
        self.transform = transform
        self.state_dim = prepared.meta["state_dim"] or 0

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, index: int) -> dict:
        sample = self.prepared[index]
        return self.transform(
            {
                "images": sample.images,
                "graph_nodes": sample.nodes,
                "state": sample.state[: self.state_dim],
                "prompt": sample.prompt,
                "actions": sample.actions,
                "action_is_pad": sample.action_is_pad,
            }
        )


def prepared_cameras(prepared: PreparedDataset) -> dict[str, str | None]:
    """Prepared images are stored per openpi slot: each slot with a camera reads itself."""
    return {slot: slot if prepared.meta["cameras"][slot] is not None else None for slot in IMAGE_SLOTS}


def make_loader(
    dataset: SoftArmDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader; under torch.distributed each rank reads its own shard (call `loader.sampler.set_epoch(epoch)`
    every epoch for a new shuffle)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


@dataclasses.dataclass
class Batch:
    observation: Observation
    graph: torch.Tensor  # [B, N, F], normalised
    actions: torch.Tensor  # [B, H, 32], normalised, zero-padded dims
    action_is_pad: torch.Tensor  # [B, H] True past the episode end
    action_dim_mask: torch.Tensor  # [B, 32] True for the arm's real action dims

    def loss_mask(self) -> torch.Tensor:
        """[B, H, 32]: which elements of the model's per-element loss are real actions."""
        return ~self.action_is_pad[:, :, None] & self.action_dim_mask[:, None, :]


def to_device(batch: dict, device: torch.device | str) -> Batch:
    """Move a collated batch to `device` and build openpi's Observation (uint8 HWC -> float [-1, 1] CHW there)."""
    batch = {
        k: ({kk: vv.to(device, non_blocking=True) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
        for k, v in batch.items()
    }
    return Batch(
        observation=Observation.from_dict(batch),
        graph=batch["graph_nodes"],
        actions=batch["actions"].float(),
        action_is_pad=batch["action_is_pad"],
        action_dim_mask=batch["action_dim_mask"],
    )
