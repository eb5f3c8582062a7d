"""Prepared dataset -> torch batches for PI0GraphPytorch.

Samples go through the same input transform as inference. Batches are plain dicts (torch's default collate), so the
graph survives where openpi's `Observation.from_dict` would drop it; images stay uint8 until `to_device`, which
makes them float on the device (a quarter of the bytes through the loader and the host-to-device copy).
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import signal

import numpy as np
from openpi.models.model import Observation
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from softarm import openpi_compat
from softarm.data.prepared import PreparedDataset, episode_name
from softarm.history import NO_HISTORY, HistorySpec
from softarm.layout import GRAPH_HISTORY_MASK, GRAPH_NODES, IMAGE_HISTORY, IMAGE_HISTORY_MASK, IMAGE_SLOTS


class SoftArmDataset(Dataset):
    """Prepared frames through an input transform built with `prepared_cameras(...)` and `resize=False`; with
    `history` (more than one step) each sample's graph is its history window and its mask; with `image_history`, the
    past frames of the `image_slots` that hold a camera come along (the transform fills the others)."""

    def __init__(
        self,
        prepared: PreparedDataset,
        transform,
        history: HistorySpec = NO_HISTORY,
        image_history: HistorySpec = NO_HISTORY,
        image_slots: tuple[str, ...] = (),
    ) -> None:
        self.prepared = prepared
        self.transform = transform
        self.history, self.image_history = history, image_history
        self.image_slots = [slot for slot in image_slots if slot in prepared.spec.present_cameras]
        self.state_dim = prepared.spec.state_dim or 0

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch's samples (DataLoader's batched fetch): their frames are asked of the disk together first."""
        self.prepared.will_need(indices)
        return [self[i] for i in indices]

    def __getitem__(self, index: int) -> dict:
        sample = self.prepared[index]
        fields = {key: getattr(sample, key) for key in ("images", GRAPH_NODES, "prompt", "actions", "action_is_pad")}
        if self.history.steps > 1:
            fields[GRAPH_NODES], fields[GRAPH_HISTORY_MASK] = self.prepared.graph_window(index, self.history)
        if self.image_history.steps > 1:
            fields[IMAGE_HISTORY], mask = {}, None
            for slot in self.image_slots:  # prepared images are stored per slot: a slot is its own camera name
                frames, mask = self.prepared.window(index, f"image_{slot}", self.image_history)
                fields[IMAGE_HISTORY][slot] = frames[:-1]  # the past; the current frame is the sample's image
            if mask is not None:
                fields[IMAGE_HISTORY_MASK] = mask[:-1]
        item = self.transform(fields | {"state": sample.state[: self.state_dim]})
        return item | {"episode": sample.episode}  # which episode of the split: named when a step goes wrong

    @property
    def episode_names(self) -> list[str]:
        """What `episode` indexes: the split's episodes, as errors name them."""
        return [episode_name(episode) for episode in self.prepared.episodes]


class MixtureDataset(Dataset):
    """Several SoftArmDatasets end to end (`data.datasets`); an item's `episode` indexes `episode_names`, which
    prefix each episode with its dataset's directory name."""

    def __init__(self, parts: list[SoftArmDataset]) -> None:
        self.parts = parts
        self.sizes = [len(part) for part in parts]
        self.starts = np.cumsum([0, *self.sizes])
        self.episode_starts = np.cumsum([0, *(len(part.episode_names) for part in parts)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def episode_names(self) -> list[str]:
        return [f"{part.prepared.directory.name}/{name}" for part in self.parts for name in part.episode_names]

    def _locate(self, index: int) -> tuple[int, int]:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return part, index - int(self.starts[part])

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Each part's samples fetched together (its disk read-ahead), returned in the order asked."""
        located = [self._locate(i) for i in indices]
        items: list[dict | None] = [None] * len(indices)
        for p, part in enumerate(self.parts):
            mine = [k for k, (q, _) in enumerate(located) if q == p]
            if mine:
                for k, item in zip(mine, part.__getitems__([located[k][1] for k in mine]), strict=True):
                    items[k] = item | {"episode": item["episode"] + int(self.episode_starts[p])}
        return items


def spread(dataset: Dataset, count: int) -> Dataset:
    """`count` samples spread evenly over `dataset` (all of it when smaller). Validation reads a fixed number of
    batches: taken from the start, they were the first episode or two of the val split (by file name: often one
    task's), whose loss said nothing of the others."""
    if count >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, count).round().astype(np.int64).tolist())


def prepared_cameras(prepared: PreparedDataset) -> dict[str, str | None]:
    """Prepared images are stored per openpi slot: each slot with a camera reads itself."""
    return {slot: slot if slot in prepared.spec.present_cameras else None for slot in IMAGE_SLOTS}


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices of one epoch for one rank, able to start mid-epoch.

    The order is a pure function of (seed, epoch), like DistributedSampler's, so `set_epoch` reshuffles every epoch and
    `set_position(epoch, batch)` resumes exactly where a checkpoint left off without reading the skipped samples.
    Each rank takes every world-th index; the epoch is cut to a multiple of world * batch_size so ranks stay in step.
    """

    def __init__(
        self, size: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise ValueError(f"{size} samples cannot fill one batch of {batch_size} on each of {world} ranks")

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start_batch = epoch, 0

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def order(self) -> torch.Tensor:
        """The epoch's indices, before each rank takes its share."""
        if self.shuffle:
            return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return torch.arange(self.size)

    def __iter__(self) -> Iterator[int]:
        mine = self.order()[: self.batches_per_epoch * self.batch_size * self.world][self.rank :: self.world]
        return iter(mine[self.start_batch * self.batch_size :].tolist())


class MixtureSampler(ResumableSampler):
    """ResumableSampler over a MixtureDataset: an epoch is as many draws as the datasets hold samples, each draw's
    dataset picked in proportion to the weights, and within a dataset its samples in a shuffled order (cycled where
    a heavy dataset is drawn more often than it has samples). A pure function of (seed, epoch), so resuming is exact."""

    def __init__(self, sizes: list[int], weights: list[float], batch_size: int, **kwargs) -> None:
        if len(sizes) != len(weights) or min(weights) <= 0:
            raise ValueError(f"weights {weights}: expected one positive weight per dataset ({len(sizes)})")
        self.sizes, self.weights = sizes, torch.tensor(weights, dtype=torch.float64)
        super().__init__(sum(sizes), batch_size, shuffle=True, **kwargs)

    def order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        picks = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        order, start = torch.empty(self.size, dtype=torch.long), 0
        for part, size in enumerate(self.sizes):
            where = (picks == part).nonzero().squeeze(1)
            cycles = -(-len(where) // size)
            within = torch.cat([torch.randperm(size, generator=generator) for _ in range(cycles)] or [torch.empty(0)])
            order[where] = start + within[: len(where)].long()
            start += size
        return order


def _worker_ignores_stop_signals(_worker_id: int) -> None:
    """A cluster's preemption (SLURM), `kill -- -PGID` and Ctrl-C signal the whole process group. The main process
    stops after the step and saves (train.loop.stop_requests), then ends its workers itself; a worker that died of
    the signal first would fail the step and lose the checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    dataset: SoftArmDataset | MixtureDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    weights: list[float] | None = None,
) -> DataLoader:
    """A DataLoader over whole batches; under torch.distributed each rank reads its own shard. Call
    `loader.sampler.set_epoch(epoch)` every epoch for a new shuffle. `weights`: a MixtureDataset's, one per part."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if weights is not None:
        sampler = MixtureSampler(dataset.sizes, weights, batch_size, seed=seed, rank=rank, world=world)
    else:
        sampler = ResumableSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_ignores_stop_signals if num_workers else None,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: otherwise every iter() draws from the global RNG, and a resumed run (one more iter())
        # would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


@dataclasses.dataclass
class Batch:
    observation: Observation
    graph_nodes: torch.Tensor  # [B, N, F], normalised; with history [B, K, N, F], oldest step first
    graph_mask: torch.Tensor | None = None  # [B, K] with history: False for steps before the episode's start
    # Training targets; None at inference.
    actions: torch.Tensor | None = None  # [B, H, 32], normalised, zero-padded dims
    action_is_pad: torch.Tensor | None = None  # [B, H] True past the episode end
    action_dim_mask: torch.Tensor | None = None  # [B, 32] True for the arm's real action dims
    arm: torch.Tensor | None = None  # [B] int64, a model of several arms: each sample's arm
    # visual history: ({slot: past frames [B, K-1, 3, H, W] in [-1, 1]}, mask [B, K-1])
    image_history: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None

    def loss_mask(self, action_padding: str) -> torch.Tensor:
        """[B, H, 32]: which elements of the model's per-element loss are trained: the arm's real action dims, and
        with `action_padding="mask"` only the steps inside the episode ("hold" trains the held last action too)."""
        mask = self.action_dim_mask[:, None, :].expand(-1, self.action_is_pad.shape[1], -1)
        if action_padding == "mask":
            mask = mask & ~self.action_is_pad[:, :, None]
        return mask


def observation_from_batch(batch: dict) -> Observation:
    """openpi's Observation.from_dict (its own uint8 -> [-1, 1] image conversion) without the runtime type check:
    SoftArmInputs has validated every field already."""
    images = {
        k: v.to(torch.float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0 if v.dtype == torch.uint8 else v
        for k, v in batch["image"].items()
    }
    return openpi_compat.unchecked_observation(
        images=images,
        image_masks=batch["image_mask"],
        state=batch["state"],
        tokenized_prompt=batch.get("tokenized_prompt"),
        tokenized_prompt_mask=batch.get("tokenized_prompt_mask"),
    )


def to_device(batch: dict, device: torch.device | str) -> Batch:
    """Move a collated batch to `device` and build openpi's Observation (uint8 HWC -> float [-1, 1] CHW there)."""
    batch = {
        k: ({kk: vv.to(device, non_blocking=True) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
        for k, v in batch.items()
    }
    image_history = None
    if IMAGE_HISTORY in batch:
        frames = {slot: v.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0 for slot, v in batch[IMAGE_HISTORY].items()}
        image_history = (frames, batch[IMAGE_HISTORY_MASK])
    return Batch(
        observation=observation_from_batch(batch),
        graph_nodes=batch[GRAPH_NODES],
        graph_mask=batch.get(GRAPH_HISTORY_MASK),
        actions=batch["actions"].float() if "actions" in batch else None,
        action_is_pad=batch.get("action_is_pad"),
        action_dim_mask=batch.get("action_dim_mask"),
        arm=batch.get("arm"),
        image_history=image_history,
    )
