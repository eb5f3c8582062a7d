"""Vision warm-up: a small vision tower learns to see before the policy learns to act.

A SigLIP tower trained from scratch inside the policy learns from the flow-matching loss only through the whole
model: slowly, and on a 2-core budget sometimes not at all (docs/sim_base.md). Here the tower and its projector learn
one thing first: from a frame's camera images, where the episode's tip ends. In a demonstration that goes to a goal
(reach a ball) that is the goal, seen in the images — a hindsight label the recorded graph already holds, so real
episodes need nothing more than the simulator's; and, as a second target, where that goal is seen from the tip at
each frame (what the last centimetres need). A small readout is trained with it and thrown away; the policy then
starts from the warmed-up tower. The readout decides how well the tower learns to see: a flat one, which keeps where
each token sits, placed the goal twice as precisely as attention pooling (docs/sim_base.md).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from softarm.data.prepared import PreparedDataset, episode_name
from softarm.layout import GRAPH_NODES
from softarm.model import PI0GraphPytorch

POSITION = ("pos_x", "pos_y", "pos_z")
VISION_PREFIXES = ("paligemma_with_expert.paligemma.model.vision_tower.",
                   "paligemma_with_expert.paligemma.model.multi_modal_projector.")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WarmupOptions:
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    # the episodes whose end is a goal the cameras see, by prompt; None: every episode
    prompts: tuple[str, ...] | None = None
    # episodes whose end is not their goal, e.g. demonstrations that missed under DART noise (their hindsight label
    # would point where the arm stopped, not at the ball), named as the dataset names them (`episode_name`: the file,
    # after its source when the dataset was converted from several)
    exclude: tuple[str, ...] = ()
    val_every: int = 500
    seed: int = 0
    # how the thrown-away readout reads the tokens: "flat" (every token through one small projection, then all of
    # them together: where a token sits is kept) or "attend" (learned queries per camera)
    readout: str = "flat"
    # also predict where the goal is from the tip now (goal - the tip's position at the frame): what the last
    # centimetres need, and what the tip camera shows best
    relative: bool = True


@dataclasses.dataclass(frozen=True)
class WarmupResult:
    steps: int
    train_frames: int
    val_frames: int
    val_error_mm_median: float | None  # distance between predicted and true end of the tip, on held-out episodes
    val_error_mm_mean: float | None  # (None: no held-out episode of the chosen prompts)
    val_relative_error_mm_median: float | None  # the goal seen from the tip now (None: not asked for)
    s_per_step: float
    excluded_episodes: int = 0  # left out by `exclude`


@dataclasses.dataclass(frozen=True)
class HindsightGoals:
    targets: np.ndarray  # float32 [frames, 3]: for every frame of the dataset, where its episode's tip ends (m)
    tips: np.ndarray  # float32 [frames, 3]: where the tip is at that frame
    train: np.ndarray  # frame indices of the train split's chosen episodes
    val: np.ndarray
    excluded: int = 0  # episodes of the chosen prompts left out as not ending at their goal


def hindsight_goals(
    dataset: PreparedDataset, prompts: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> HindsightGoals:
    """Every frame's label: the tip's (last node's) position at the end of its episode; the episodes named in
    `exclude` (`episode_name`) are left out."""
    features = dataset.spec.layout
    missing = [name for name in POSITION if name not in features.measured]
    if missing:
        raise ValueError(
            f"{dataset.directory}: the vision warm-up needs the tip's measured position, but {', '.join(missing)} is "
            f"not among the measured node features {list(features.measured)}"
        )
    columns = [features.features.index(name) for name in POSITION]
    nodes = dataset.arrays[GRAPH_NODES]
    targets = np.zeros((len(nodes), 3), np.float32)
    split: dict[str, list[int]] = {"train": [], "val": []}
    excluded, skip = 0, set(exclude)
    for episode in dataset.episodes:
        if prompts is not None and episode["prompt"] not in prompts:
            continue
        if episode_name(episode) in skip:
            excluded += 1
            continue
        start, length = episode["start"], episode["length"]
        targets[start : start + length] = nodes[start + length - 1, -1, columns]
        split[episode["split"]].extend(range(start, start + length))
    if not split["train"]:
        chosen = f"with the prompts {list(prompts)}" if prompts is not None else ""
        raise ValueError(f"{dataset.directory}: no training episodes {chosen} for the vision warm-up")
    tips = np.asarray(nodes[:, -1, columns], np.float32)
    return HindsightGoals(targets, tips, np.array(split["train"]), np.array(split["val"], dtype=np.int64), excluded)


class FlatReadout(nn.Module):
    """Each image token projected to a few numbers, every camera's tokens concatenated in place, an MLP on top: the
    readout keeps which token saw what (a linear readout of flattened tokens localises far better than pooling)."""

    def __init__(self, cameras: int, tokens: int, width: int, outputs: int = 3, per_token: int = 16) -> None:
        super().__init__()
        self.reduce = nn.Linear(width, per_token)
        self.head = nn.Sequential(nn.Linear(cameras * tokens * per_token, 256), nn.GELU(), nn.Linear(256, outputs))

    def forward(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([self.reduce(camera).flatten(1) for camera in tokens], dim=1))


class GoalReadout(nn.Module):
    """Learned queries attend over each camera's image tokens; an MLP maps what they read to a 3-D position."""

    def __init__(self, cameras: int, width: int, queries: int = 4, outputs: int = 3) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cameras, queries, width) * 0.1)
        self.head = nn.Sequential(nn.Linear(cameras * queries * width, 256), nn.GELU(), nn.Linear(256, outputs))

    def forward(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        read = []
        for queries, camera in zip(self.queries, tokens, strict=True):  # camera: [B, T, D]
            weights = torch.softmax(torch.einsum("qd,btd->bqt", queries, camera) / camera.shape[-1] ** 0.5, dim=-1)
            read.append(torch.einsum("bqt,btd->bqd", weights, camera).flatten(1))
        return self.head(torch.cat(read, dim=1))


def warmup_cosine(lr: float, step: int, steps: int, warmup_steps: int) -> float:
    """A warm-up's learning rate at `step` of `steps`: a linear ramp over `warmup_steps`, then a cosine down to 2 %."""
    ramp = min(1.0, step / max(1, warmup_steps))
    return lr * ramp * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def vision_state(model: PI0GraphPytorch) -> dict[str, torch.Tensor]:
    """The tower's and projector's tensors, under the model's names: what the warm-up trains."""
    return {name: t.detach().clone() for name, t in model.state_dict().items() if name.startswith(VISION_PREFIXES)}


def warm_up_vision(model: PI0GraphPytorch, prepared: str, options: WarmupOptions = WarmupOptions()) -> WarmupResult:
    """Train `model`'s vision tower and projector in place on the hindsight goals of the dataset `prepared` (the
    cameras it records); the rest of the model is untouched."""
    if options.readout not in ("attend", "flat"):
        raise ValueError(f"vision warm-up readout must be 'attend' or 'flat', not {options.readout!r}")
    dataset = PreparedDataset(prepared, "all")
    goals = hindsight_goals(dataset, options.prompts, options.exclude)
    labels = np.concatenate([goals.targets, goals.targets - goals.tips], 1) if options.relative else goals.targets
    slots = list(dataset.spec.present_cameras)
    images = [dataset.arrays[f"image_{slot}"] for slot in slots]
    mean, std = labels[goals.train].mean(0), labels[goals.train].std(0) + 1e-6
    paligemma = model.paligemma_with_expert
    width, device = paligemma.paligemma.config.text_config.hidden_size, next(model.parameters()).device

    def batch(frames: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        frames = np.sort(frames)  # memory-mapped frames read in file order
        pixels = [torch.from_numpy(np.stack([array[i] for i in frames])).to(device) for array in images]
        pixels = [p.permute(0, 3, 1, 2).float() / 127.5 - 1.0 for p in pixels]  # openpi's [-1, 1]
        return pixels, torch.from_numpy((labels[frames] - mean) / std).to(device)

    with torch.random.fork_rng():  # the readout's init from the warm-up's seed, the caller's RNG untouched
        torch.manual_seed(options.seed)
        if options.readout == "flat":
            with torch.no_grad():
                tokens = paligemma.embed_image(batch(goals.train[:1])[0][0]).shape[1]
            readout = FlatReadout(len(slots), tokens, width, outputs=labels.shape[1])
        else:
            readout = GoalReadout(len(slots), width, outputs=labels.shape[1])
    tower = [*paligemma.paligemma.model.vision_tower.parameters(),
             *paligemma.paligemma.model.multi_modal_projector.parameters()]  # fmt: skip
    optimizer = torch.optim.AdamW([*tower, *readout.parameters()], lr=options.lr, weight_decay=1e-4)
    rng = np.random.default_rng(options.seed)
    readout.to(device)

    def predict(pixels: list[torch.Tensor]) -> torch.Tensor:
        return readout([paligemma.embed_image(p) for p in pixels])

    @torch.no_grad()
    def val_errors() -> np.ndarray:
        """[frames, 1 or 2]: the goal's error (and the goal-from-the-tip's) in mm."""
        frames = goals.val[:: max(1, len(goals.val) // 512)]
        errors = [((predict(x) - y).cpu().numpy() * std) for x, y in (batch(frames[k : k + 64])
                                                                     for k in range(0, len(frames), 64))]  # fmt: skip
        if not errors:
            return np.zeros((0, labels.shape[1] // 3))
        errors = np.concatenate(errors)
        return np.stack([np.linalg.norm(errors[:, k : k + 3], axis=1) for k in range(0, errors.shape[1], 3)], 1) * 1000

    model.train()
    start = time.perf_counter()
    progress = tqdm(range(1, options.steps + 1), desc="vision warm-up", unit="step")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(options.lr, step, options.steps, options.warmup_steps)
        pixels, target = batch(rng.choice(goals.train, options.batch_size))
        loss = ((predict(pixels) - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*tower, *readout.parameters()], 1.0)
        optimizer.step()
        if step % options.val_every == 0 or step == options.steps:
            errors = val_errors()
            shown = " / ".join(f"{e:.1f}" for e in np.median(errors, 0)) + " mm" if len(errors) else "-"
            progress.set_postfix(loss=f"{loss.item():.4f}", val_error=shown)
    seconds = time.perf_counter() - start
    errors = val_errors()
    relative = errors[:, 1] if options.relative else np.zeros(0)
    errors = errors[:, 0]
    return WarmupResult(
        steps=options.steps,
        train_frames=len(goals.train),
        val_frames=len(goals.val),
        val_error_mm_median=float(np.median(errors)) if len(errors) else None,
        val_error_mm_mean=float(np.mean(errors)) if len(errors) else None,
        val_relative_error_mm_median=float(np.median(relative)) if len(relative) else None,
        s_per_step=seconds / max(1, options.steps),
        excluded_episodes=goals.excluded,
    )
