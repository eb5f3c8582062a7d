"""Graph encoder: the arm's node features -> node tokens [B, N, D] and a 32-D robot embedding [B, 32].

Attention over the nodes is biased by hop distance on the arm's graph (GET-Zero / Body Transformer style):
plain message passing along morphology edges did not help in the literature, attention with a graph prior did.
Each head starts with its own locality (an ALiBi-like slope per hop), and the biases are learned from there.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import torch
from torch import nn
import torch.nn.functional as F

from softarm import arm


@dataclasses.dataclass
class GraphEncoding:
    tokens: torch.Tensor  # [B, N, D], one token per node
    embedding: torch.Tensor | None  # [B, embedding_dim], the pooled robot embedding (None without a readout)


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
    ) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.node_features = node_features
        # Features the encoder does not read are zeroed before it sees them (training and serving alike).
        mask = torch.ones(node_features)
        mask[list(ignored_features)] = 0.0
        self.register_buffer("feature_mask", mask, persistent=False)
        edges = arm.chain_edges(num_nodes) if edges is None else arm.validate_edges(num_nodes, edges)
        hops = torch.as_tensor(arm.hop_distances(num_nodes, edges))
        self.register_buffer("hops", hops, persistent=False)

        self.node_proj = nn.Linear(node_features, width)
        self.node_embedding = nn.Parameter(torch.randn(num_nodes, width) * 0.02)
        # One learned bias per (layer, head, hop count); bucket `num_nodes` is "unreachable".
        slopes = 2.0 ** -torch.arange(1, num_heads + 1, dtype=torch.float32)
        hop_values = torch.arange(num_nodes + 1, dtype=torch.float32)
        self.hop_bias = nn.Parameter((-slopes[:, None] * hop_values[None, :]).repeat(depth, 1, 1))
        self.layers = nn.ModuleList(GraphAttentionLayer(width, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        # Flattening keeps which node said what; the graph is small and fixed.
        self.readout = nn.Linear(num_nodes * width, embedding_dim) if embedding_dim else None
        # The NaN/Inf check reads the tensor back to the host, a sync per call; the data path (convert, SoftArmInputs)
        # has checked already, so training and the policy turn it off. Direct callers keep it.
        self.check_finite = True

    def check_nodes(self, nodes: torch.Tensor) -> None:
        """Raise ValueError unless `nodes` is a finite float [B, num_nodes, node_features] tensor."""
        expected = (self.num_nodes, self.node_features)
        if nodes.ndim != 3 or tuple(nodes.shape[1:]) != expected:
            raise ValueError(
                f"graph nodes must have shape [batch, {expected[0]} nodes, {expected[1]} features], "
                f"got {list(nodes.shape)}"
            )
        if not nodes.is_floating_point():
            raise ValueError(f"graph nodes must be a floating-point tensor, got {nodes.dtype}")
        if not self.check_finite:
            return
        finite = torch.isfinite(nodes)
        if not bool(finite.all()):
            b, n, f = (int(i) for i in (~finite).nonzero()[0])
            raise ValueError(f"graph nodes contain NaN or Inf (first at batch {b}, node {n}, feature {f})")

    def forward(self, nodes: torch.Tensor) -> GraphEncoding:
        self.check_nodes(nodes)
        x = self.node_proj(nodes.to(self.node_proj.weight.dtype) * self.feature_mask) + self.node_embedding
        for layer, bias in zip(self.layers, self.hop_bias, strict=True):
            x = layer(x, bias[:, self.hops])
        tokens = self.norm(x)
        embedding = self.readout(tokens.flatten(1)) if self.readout is not None else None
        return GraphEncoding(tokens=tokens, embedding=embedding)
