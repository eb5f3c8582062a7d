"""Visual history for π0: a camera's past frames read by the current frame's image tokens.

`memory` (after MEM, Physical Intelligence 2026): the past frames go through the same vision tower (without
gradients: a past frame's tokens are what they were when it was current, so a server may keep them), then each
current image token attends to the tokens at its own patch position in the past frames and in the current one — a
causal temporal attention, K keys per token — and what it reads is added through a zero-initialised output
projection (and a per-channel gate that starts open). The past tokens are dropped there: the VLM reads as many image
tokens as without history, and a fresh memory leaves the model exactly as it was.

`attend`: the same, but each current token attends to every patch of the K frames (K x T keys), so it can find
where the ball was, not only what its own patch held: a moving target crosses patches between frames.

`concat`: each patch position's tokens in the K frames, each reduced to a few channels, side by side (oldest first)
and mapped by a small MLP into what is added to the current token there (zero-initialised output again). Nothing is
averaged away: where the ball was in each frame stays apart, so a difference between frames is one linear map away —
what a readout of the same frames side by side found and the attention memories lost (docs/history.md).

`stack`: the past frames' tokens (with a learned age embedding) join the prefix after the current images: the
naive way, whose VLM cost grows with K (HAMLET measured it slower and worse); kept to measure against.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
import torch.nn.functional as F


class VisualMemory(nn.Module):
    """Attention over K frames, for the image slots that have history: at each patch position, or over every patch
    (`spatial`)."""

    def __init__(self, width: int, steps: int, slots: int, *, spatial: bool = False) -> None:
        super().__init__()
        self.spatial = spatial
        self.num_heads = max(1, width // 64) if width % 64 == 0 else 1
        # which frame a token is from (0 = oldest, steps - 1 = current), per slot
        self.age = nn.Parameter(torch.randn(slots, steps, width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        # The branch starts silent at its output projection, not at the gate: a closed gate in front of a random
        # projection gives that projection no gradient, and the gate alone had opened to ~0.01 after 1500 fine-tuning
        # steps (docs/history.md); a zero projection learns from the first step what the read tokens say.
        self.out = nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.gate = nn.Parameter(torch.ones(width))

    def forward(self, slot: int, current: torch.Tensor, past: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """current [B, T, D] tokens of the current frame, past [B, K-1, T, D] of the past frames (oldest first), mask
        [B, K-1] True for real frames -> the current frame's tokens [B, T, D] with what they read of the past."""
        batch, tokens, width = current.shape
        frames = torch.cat([past.to(current.dtype), current[:, None]], dim=1) + self.age[slot, :, None, :]
        x = self.norm(frames)  # [B, K, T, D]
        heads, head_dim = self.num_heads, width // self.num_heads
        k, v = self.key_value(x).chunk(2, dim=-1)  # [B, K, T, D] each
        keys = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # [B, K]: the current frame is always there
        if self.spatial:  # one query per current token over all K x T tokens
            q = self.query(x[:, -1]).view(batch, tokens, heads, head_dim).transpose(1, 2)
            k, v = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2) for t in (k, v))
            keys = keys.repeat_interleave(tokens, dim=1)[:, None, None, :]  # [B, 1, 1, K * T]
        else:  # one query per current token over its own patch in the K frames
            q = self.query(x[:, -1]).view(batch * tokens, 1, heads, head_dim).transpose(1, 2)
            k, v = (t.permute(0, 2, 1, 3).reshape(batch * tokens, -1, heads, head_dim).transpose(1, 2) for t in (k, v))
            keys = keys.repeat_interleave(tokens, dim=0)[:, None, None, :]  # [B * T, 1, 1, K]
        read = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)  # [B, H, T, d] or [B * T, H, 1, d]
        read = read.transpose(1, 2).reshape(batch, tokens, width)
        return current + self.gate * self.out(read)


class PatchWindow(nn.Module):
    """Each patch position's tokens in the K frames side by side, read by a small MLP per patch (`concat`)."""

    def __init__(self, width: int, steps: int, slots: int, *, per_frame: int = 16, hidden: int = 128) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.reduce = nn.Linear(width, per_frame)
        # the reduced frames, oldest first, and which past frames are real (a padded one reads as zeros)
        self.mix = nn.Linear(steps * per_frame + steps - 1, hidden)
        self.slot = nn.Parameter(torch.zeros(slots, hidden))  # the cameras share the weights, each its own bias
        self.out = nn.Linear(hidden, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, slot: int, current: torch.Tensor, past: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """current [B, T, D], past [B, K-1, T, D] (oldest first), mask [B, K-1] True for real frames -> [B, T, D]."""
        batch, tokens, _ = current.shape
        frames = torch.cat([past.to(current.dtype), current[:, None]], dim=1)  # [B, K, T, D]
        real = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1).to(current.dtype)  # [B, K]
        reduced = self.reduce(self.norm(frames)) * real[:, :, None, None]  # [B, K, T, r]
        side_by_side = reduced.permute(0, 2, 1, 3).flatten(2)  # [B, T, K * r]
        flags = mask.to(current.dtype)[:, None, :].expand(batch, tokens, -1)
        hidden = F.gelu(self.mix(torch.cat([side_by_side, flags], dim=-1)) + self.slot[slot])
        return current + self.out(hidden)


class StackedFrames(nn.Module):
    """The past frames' tokens as extra prefix tokens, each frame marked by a learned age embedding per slot."""

    def __init__(self, width: int, steps: int, slots: int) -> None:
        super().__init__()
        self.age = nn.Parameter(torch.randn(slots, steps - 1, width) * 0.02)

    def forward(self, slot: int, past: torch.Tensor) -> torch.Tensor:
        """past [B, K-1, T, D] -> [B, (K-1) * T, D] tokens to append to the prefix."""
        return (past + self.age[slot, :, None, :]).flatten(1, 2)


class FrameCache:
    """Past frames' image tokens by content, for serving: a robot sends each frame K-1 more times after it was
    current, and it is encoded once. A frame is found by a fingerprint computed where it lies (its projection on a
    few fixed random directions, in float64: no copy to the host) and confirmed equal to the stored frame, so a
    look-up is exact. Least recently used frames go first, beyond `size`. Only for a model whose weights no longer
    change (a policy's)."""

    def __init__(self, size: int = 128, directions: int = 4) -> None:
        self.size, self.directions, self.hits, self.misses = size, directions, 0, 0
        self._frames: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._basis: torch.Tensor | None = None

    def _keys(self, slot: str, frames: torch.Tensor) -> list[tuple]:
        flat = frames.flatten(1).double()
        if self._basis is None or self._basis.shape[0] != flat.shape[1] or self._basis.device != flat.device:
            generator = torch.Generator().manual_seed(0)
            self._basis = torch.randn(flat.shape[1], self.directions, generator=generator, dtype=torch.float64)
            self._basis = self._basis.to(flat.device)
        return [(slot, *row) for row in (flat @ self._basis).tolist()]

    def tokens(self, slot: str, frames: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """frames [n, 3, H, W] of one slot -> their tokens [n, T, D], encoding (with `embed`) only the new ones."""
        keys = self._keys(slot, frames)
        new = sorted({i for i, key in enumerate(keys)
                      if key not in self._frames or not torch.equal(self._frames[key][0], frames[i])})  # fmt: skip
        if new:
            for i, tokens in zip(new, embed(frames[new]), strict=True):
                self._frames[keys[i]] = (frames[i].clone(), tokens)
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        for key in keys:
            self._frames.move_to_end(key)
        out = torch.stack([self._frames[key][1] for key in keys])
        while len(self._frames) > self.size:
            self._frames.popitem(last=False)
        return out
