"""Graph encoder: the arm's node features -> node tokens [B, N, D] and a 32-D robot embedding [B, 32].

Attention over the nodes is biased by hop distance on the arm's graph (GET-Zero / Body Transformer style):
plain message passing along morphology edges did not help in the literature, attention with a graph prior did.
Each head starts with its own locality (an ALiBi-like slope per hop), and the biases are learned from there.

With history (`history_steps` K > 1, `softarm.history`) the nodes are [B, K, N, F], oldest step first, and a mask
[B, K] says which steps are real (False before the episode's start). Two ways in:
- ``attend``: every step's node tokens, with a learned step embedding, attend to each other under the hop bias plus
  a learned per-head bias over the time lag; masked steps are not attended to. The current step's tokens come out.
- ``stack``: each node's K steps side by side into the node projection (a linear temporal encoder in front);
  masked steps hold the repeated first step the window gives them.
Either way the output is the current step's N tokens: what follows the encoder does not change.

A model of several arms (`arms`: each arm's node count and edges) reads every arm's graph padded to the largest
node count and is told each sample's arm ([B] indices): padded nodes are not attended to and leave as zero tokens,
each arm's hop distances bias its own attention, and with `arm_embedding` a learned vector per arm is added to
every node token.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Literal

import torch
from torch import nn
import torch.nn.functional as F

from softarm import arm

HistoryMode = Literal["attend", "stack"]
HISTORY_MODES: tuple[str, ...] = ("attend", "stack")


@dataclasses.dataclass
class GraphEncoding:
    tokens: torch.Tensor  # [B, N, D], one token per node
    embedding: torch.Tensor | None  # [B, embedding_dim], the pooled robot embedding (None without a readout)
    node_mask: torch.Tensor | None = None  # [B, N]: False for a padded node of a smaller arm (None: all real)


class GraphAttentionLayer(nn.Module):
    """Pre-norm transformer layer whose attention logits get an additive [H, N, N] graph bias."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"graph encoder width {width} must be divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, nodes, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(batch, nodes, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = x + self.out(attended.transpose(1, 2).reshape(batch, nodes, width))
        return x + self.mlp(self.mlp_norm(x))


class GraphEncoder(nn.Module):
    def __init__(
        self,
        num_nodes: int = arm.NUM_NODES,
        node_features: int = arm.NUM_NODE_FEATURES,
        edges: Sequence[arm.Edge] | None = None,
        width: int = 128,
        depth: int = 3,
        num_heads: int = 4,
        embedding_dim: int | None = 32,
        ignored_features: Sequence[int] = (),
        history_steps: int = 1,
        history_mode: HistoryMode = "attend",
        arms: Sequence[tuple[int, Sequence[arm.Edge]]] = (),
        arm_embedding: bool = False,
    ) -> None:
        super().__init__()
        if history_mode not in HISTORY_MODES:
            raise ValueError(f"history_mode must be one of {HISTORY_MODES}, got {history_mode!r}")
        self.num_nodes = num_nodes
        self.node_features = node_features
        self.history_steps, self.history_mode = history_steps, history_mode
        stacked = history_steps if history_mode == "stack" else 1
        # Features the encoder does not read are zeroed before it sees them (training and serving alike).
        mask = torch.ones(node_features)
        mask[list(ignored_features)] = 0.0
        self.register_buffer("feature_mask", mask.repeat(stacked), persistent=False)
        edges = arm.chain_edges(num_nodes) if edges is None else arm.validate_edges(num_nodes, edges)
        hops = torch.as_tensor(arm.hop_distances(num_nodes, edges))
        self.register_buffer("hops", hops, persistent=False)
        self.num_arms = len(arms)
        if self.num_arms:  # each arm's hops within the padded graph; a padded node is unreachable from any other
            padded = torch.full((self.num_arms, num_nodes, num_nodes), num_nodes, dtype=torch.long)
            for k, (count, arm_edges) in enumerate(arms):
                if not 1 <= count <= num_nodes:
                    raise ValueError(f"arm {k} has {count} nodes; the padded graph has {num_nodes}")
                padded[k, :count, :count] = torch.as_tensor(
                    arm.hop_distances(count, arm.validate_edges(count, arm_edges))
                )
            self.register_buffer("arm_hops", padded, persistent=False)
            self.register_buffer("arm_nodes", torch.tensor([count for count, _ in arms]), persistent=False)
        elif arm_embedding:
            raise ValueError("arm_embedding needs the arms (several) the model is trained on")

        self.node_proj = nn.Linear(node_features * stacked, width)
        self.node_embedding = nn.Parameter(torch.randn(num_nodes, width) * 0.02)
        # One learned bias per (layer, head, hop count); bucket `num_nodes` is "unreachable".
        slopes = 2.0 ** -torch.arange(1, num_heads + 1, dtype=torch.float32)
        hop_values = torch.arange(num_nodes + 1, dtype=torch.float32)
        self.hop_bias = nn.Parameter((-slopes[:, None] * hop_values[None, :]).repeat(depth, 1, 1))
        if history_steps > 1 and history_mode == "attend":
            # which step a token is from, and per (layer, head, lag) a bias that starts as a preference for recent steps
            self.step_embedding = nn.Parameter(torch.zeros(history_steps, width))
            lags = torch.arange(history_steps, dtype=torch.float32)
            self.lag_bias = nn.Parameter((-slopes[:, None] * lags[None, :]).repeat(depth, 1, 1))
            lag = (torch.arange(history_steps)[:, None] - torch.arange(history_steps)[None, :]).abs()
            self.register_buffer("lags", lag, persistent=False)
        if arm_embedding:
            self.arm_embedding = nn.Parameter(torch.randn(self.num_arms, width) * 0.02)
        self.layers = nn.ModuleList(GraphAttentionLayer(width, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        # Flattening keeps which node said what; the graph is small and fixed.
        self.readout = nn.Linear(num_nodes * width, embedding_dim) if embedding_dim else None
        # The NaN/Inf check reads the tensor back to the host, a sync per call; the data path (convert, SoftArmInputs)
        # has checked already, so training and the policy turn it off. Direct callers keep it.
        self.check_finite = True

    def check_nodes(
        self, nodes: torch.Tensor, mask: torch.Tensor | None = None, arm: torch.Tensor | None = None
    ) -> None:
        """Raise ValueError unless `nodes` is a finite float [B, (K steps,) num_nodes, node_features] tensor, `mask`
        None or bool [B, K] with the current (last) step True, and `arm` given ([B] arm indices) exactly when the
        encoder knows several arms."""
        if (arm is None) != (self.num_arms == 0):
            raise ValueError(
                f"this graph encoder knows {self.num_arms} arms: each sample's arm index must be given"
                if arm is None
                else "an arm index was given to a graph encoder of one arm"
            )
        if arm is not None and (arm.dtype != torch.long or tuple(arm.shape) != (nodes.shape[0],)):
            raise ValueError(f"the arm indices must be int64 [batch], got {arm.dtype} {list(arm.shape)}")
        expected = (self.num_nodes, self.node_features)
        steps = (self.history_steps,) if self.history_steps > 1 else ()
        if nodes.ndim != 3 + len(steps) or tuple(nodes.shape[1:]) != (*steps, *expected):
            what = f"{steps[0]} steps, " if steps else ""
            raise ValueError(
                f"graph nodes must have shape [batch, {what}{expected[0]} nodes, {expected[1]} features], "
                f"got {list(nodes.shape)}"
            )
        shaped = mask is None or (steps and mask.dtype == torch.bool and tuple(mask.shape) == (nodes.shape[0], *steps))
        # the current step's flag is read back to the host (a sync), like the finite check below
        if not shaped or (mask is not None and self.check_finite and not bool(mask[:, -1].all())):
            raise ValueError(
                f"the history mask must be bool [batch, {self.history_steps}] with the current step True, got "
                f"{mask.dtype} {list(mask.shape)}"
            )
        if not nodes.is_floating_point():
            raise ValueError(f"graph nodes must be a floating-point tensor, got {nodes.dtype}")
        if not self.check_finite:
            return
        finite = torch.isfinite(nodes)
        if not bool(finite.all()):
            where = [int(i) for i in (~finite).nonzero()[0]]
            names = ("batch", "step", "node", "feature") if steps else ("batch", "node", "feature")
            at = ", ".join(f"{name} {i}" for name, i in zip(names, where, strict=True))
            raise ValueError(f"graph nodes contain NaN or Inf (first at {at})")

    def forward(
        self, nodes: torch.Tensor, mask: torch.Tensor | None = None, arm: torch.Tensor | None = None
    ) -> GraphEncoding:
        """nodes [B, N, F], or [B, K, N, F] oldest step first with history; mask [B, K] (None: every step real);
        arm [B] with several arms (each sample's nodes padded to N)."""
        self.check_nodes(nodes, mask, arm)
        nodes = nodes.to(self.node_proj.weight.dtype)
        if self.history_steps > 1 and self.history_mode == "stack":
            nodes = nodes.transpose(1, 2).flatten(2)  # [B, N, K * F]: each node's steps side by side
        x = self.node_proj(nodes * self.feature_mask) + self.node_embedding
        real = None
        if arm is not None:
            real = torch.arange(self.num_nodes, device=arm.device) < self.arm_nodes[arm][:, None]  # [B, N]
            if hasattr(self, "arm_embedding"):
                x = x + self.arm_embedding[arm].view(len(arm), *([1] * (x.ndim - 2)), -1)
        if nodes.ndim == 4:
            x = self._attend_over_steps(x, mask, arm, real)
        else:
            hidden = None if real is None else (~real)[:, None, None, :] * torch.finfo(x.dtype).min
            for layer, bias in zip(self.layers, self.hop_bias, strict=True):
                bias = self._hop_bias(bias, arm)
                x = layer(x, bias if hidden is None else bias + hidden)
        tokens = self.norm(x)
        if real is not None:
            tokens = tokens * real[:, :, None].to(tokens.dtype)  # a padded node says nothing
        embedding = self.readout(tokens.flatten(1)) if self.readout is not None else None
        return GraphEncoding(tokens=tokens, embedding=embedding, node_mask=real)

    def _hop_bias(self, table: torch.Tensor, arm: torch.Tensor | None) -> torch.Tensor:
        """A layer's [H, hops] bias table -> [H, N, N] on the one arm's graph, or [B, H, N, N] on each sample's."""
        if arm is None:
            return table[:, self.hops]
        return table[:, self.arm_hops[arm]].transpose(0, 1)

    def _attend_over_steps(
        self, x: torch.Tensor, mask: torch.Tensor | None, arm: torch.Tensor | None, real: torch.Tensor | None
    ) -> torch.Tensor:
        """[B, K, N, D] node tokens of K steps -> the current step's [B, N, D], all K * N tokens attending together."""
        batch, steps, nodes, width = x.shape
        x = (x + self.step_embedding[:, None, :]).reshape(batch, steps * nodes, width)
        keys = None  # [B, K * N]: which keys may be attended to
        if mask is not None:  # keys of steps before the episode's start are not
            keys = mask.repeat_interleave(nodes, dim=1)
        if real is not None:  # nor a smaller arm's padded nodes
            keys = real.repeat(1, steps) if keys is None else keys & real.repeat(1, steps)
        hidden = None if keys is None else (~keys)[:, None, None, :] * torch.finfo(x.dtype).min
        for layer, hop_bias, lag_bias in zip(self.layers, self.hop_bias, self.lag_bias, strict=True):
            # [(B,) H, K, N, K, N]: the hop bias between the two nodes plus the lag bias between the two steps
            bias = self._hop_bias(hop_bias, arm)[..., None, :, None, :] + lag_bias[:, self.lags][:, :, None, :, None]
            bias = bias.reshape(*bias.shape[:-4], steps * nodes, steps * nodes)
            x = layer(x, bias if hidden is None else bias + hidden)
        return x[:, -nodes:]
