"""Real-time chunking: a new action chunk that joins the one the robot is still executing.

While the policy thinks, the robot keeps executing the previous chunk; the first `delay` actions of the new chunk
will have been executed from the old one by the time it arrives. Two ways to make the new chunk agree with them:

- inference-time guidance (Black, Galliker, Levine 2025, arXiv 2506.07339): sampling as inpainting. Each
  denoising step estimates the final chunk, weighs its error to the previous chunk (1 over the delay, decaying over
  the rest of the overlap, 0 beyond) and adds the vector-Jacobian product of that error through the model's
  velocity, with a clipped time-dependent guidance weight;
- training-time conditioning (Black, Ren, Equi, Levine 2025, arXiv 2512.05964): training gives a random prefix of
  action tokens clean (flow time at the data end) and leaves it out of the loss; at inference the committed actions
  are that clean prefix, at no extra cost.

Time follows openpi: t = 1 is noise, t = 0 data, x_t = t * noise + (1 - t) * actions; the papers' tau is 1 - t.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

SCHEDULES = ("exp", "linear", "ones", "zeros")
DELAY_DISTRIBUTIONS = ("uniform", "exp")


@dataclasses.dataclass(frozen=True)
class ActionPrefix:
    """The previous chunk's actions not yet executed when the observation was taken, aligned with the new chunk:
    `actions[:, i]` is what the old plan does at the new chunk's step i (normalised model units, [B, H, 32], zero
    past `overlap`). The first `delay` of them execute during inference, whatever the new chunk says."""

    actions: torch.Tensor
    overlap: int
    delay: int

    def __post_init__(self) -> None:
        horizon = self.actions.shape[1]
        if not 1 <= self.overlap <= horizon:
            raise ValueError(f"prev_actions: 1 to {horizon} actions, got {self.overlap}")
        if not 0 <= self.delay <= self.overlap or self.delay >= horizon:
            raise ValueError(
                f"delay: 0 to {min(self.overlap, horizon - 1)} control steps (at most the {self.overlap} previous "
                f"actions given, fewer than the {horizon}-step chunk), got {self.delay}"
            )

    def clean_tokens(self) -> torch.Tensor:
        """[B, H] True for the committed steps (a training-conditioned model takes them as clean tokens)."""
        batch, horizon = self.actions.shape[:2]
        return (torch.arange(horizon, device=self.actions.device) < self.delay).expand(batch, horizon)


def prefix_weights(horizon: int, overlap: int, delay: int, schedule: str = "exp") -> torch.Tensor:
    """[H] guidance weights: 1 over the delay, then `schedule` from 1 towards 0 over the rest of the overlap, 0 past
    it (the paper's eq. 5 for `exp`: c * (e^c - 1) / (e - 1) with c falling linearly to 0 at the overlap's end)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"RTC schedule must be one of {SCHEDULES}, got {schedule!r}")
    i = torch.arange(horizon, dtype=torch.float32)
    c = ((overlap - i) / (overlap - delay + 1)).clamp(0.0, 1.0)
    soft = {"exp": c * torch.expm1(c) / math.expm1(1.0), "linear": c, "ones": torch.ones_like(c), "zeros": 0 * c}
    weights = torch.where(i < delay, 1.0, soft[schedule])
    return torch.where(i < overlap, weights, 0.0)


def guidance_weight(t: float, max_weight: float) -> float:
    """The paper's guidance weight min(beta, (1 - tau) / (tau * r^2)), r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2),
    written in openpi's t = 1 - tau: ((1 - t)^2 + t^2) / (t (1 - t)); large near either end, hence the clip."""
    if t <= 0.0 or t >= 1.0:
        return max_weight
    return min(max_weight, ((1 - t) ** 2 + t**2) / (t * (1 - t)))


def sample_delays(
    batch: int,
    max_delay: int,
    distribution: Literal["uniform", "exp"] = "uniform",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[B] training delays in 0..max_delay: uniform, or exponentially decaying (weight e^(-d / (max_delay / 2)))
    to train more on the short delays a fast GPU sees most."""
    if distribution not in DELAY_DISTRIBUTIONS:
        raise ValueError(f"delay distribution must be one of {DELAY_DISTRIBUTIONS}, got {distribution!r}")
    if distribution == "uniform":
        return torch.randint(0, max_delay + 1, (batch,), device=device)
    weights = torch.exp(-torch.arange(max_delay + 1, dtype=torch.float32) / max(max_delay / 2, 1e-6))
    return torch.multinomial(weights, batch, replacement=True).to(device)
