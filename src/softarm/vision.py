"""The small SigLIP vision tower of the CPU presets: its sizes, a convolutional stem and a 2-D position init.

The tower itself is HF's SigLIP inside openpi's PaliGemma; `openpi_compat.backbone_overrides` builds it at these
sizes and puts these parts in.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """A SigLIP vision tower smaller than PaliGemma's So400m/14, for tests and CPU demos.

    ``SoftArmModelConfig.vision = None`` means the official tower (what the pretrained weights expect).
    """

    width: int = 32
    depth: int = 1
    mlp_dim: int = 64
    num_heads: int = 2
    patch_size: int = 56
    # "patch": SigLIP's own patch projection (one strided conv). "conv": a convolutional stem (3x3 stride-2 convs,
    # then the rest of the patch stride) in its place: ViTs trained from scratch with a conv stem optimise faster and
    # localise better (Xiao et al. 2021, "Early Convolutions Help Transformers See Better").
    stem: Literal["patch", "conv"] = "patch"

    def __post_init__(self) -> None:
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"vision.stem must be 'patch' or 'conv', got {self.stem!r}")


class ConvStem(nn.Module):
    """Stride-2 3x3 convs (group-normalised, channels doubling up to `width`) while the patch stride stays even, then
    one conv with the remaining stride to `width`: the same grid of tokens as SigLIP's patch projection, so the rest
    of the tower is unchanged."""

    def __init__(self, width: int, patch_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, out, stride = 3, min(width, 16), patch_size
        while stride % 2 == 0 and stride > 2:
            layers += [nn.Conv2d(channels, out, 3, 2, 1, bias=False), nn.GroupNorm(math.gcd(8, out), out), nn.GELU()]
            channels, out, stride = out, min(width, 2 * out), stride // 2
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, width, stride, stride)

    @property
    def weight(self) -> torch.Tensor:
        """HF's SiglipVisionEmbeddings casts the pixels to `patch_embedding.weight.dtype`."""
        return self.proj.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(pixels))


@torch.no_grad()
def init_grid_positions(weight: torch.Tensor) -> None:
    """2-D sine-cosine patch position embedding (as MAE initialises ViTs) instead of random vectors, scaled to the
    random init's spread. A small tower trained from scratch on a few hundred episodes then knows from the first
    step which patches are neighbours, which is what locating a target in the image needs."""
    num_patches, width = weight.shape
    side = math.isqrt(num_patches)
    if side * side != num_patches or width % 4:
        return  # not a square grid of patches: keep the random init
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    # wavelengths from 2 patches (fine position) to twice the grid (unambiguous over the whole image)
    steps = width // 4
    frequencies = math.pi / float(side) ** (torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1))
    parts = [f(axis.reshape(-1, 1).double() * frequencies) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    grid = torch.cat(parts, dim=1)
    weight.copy_((grid / grid.std() * weight.std()).to(weight.dtype))
