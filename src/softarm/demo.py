"""`softarm demo`: the tiny real PI0GraphPytorch learns, on CPU, a batch whose actions depend on the graph.

A check that the install works end to end (model, graph fusion, backward, optimizer, sampling) in a few seconds,
with a loss curve to look at.
"""

from __future__ import annotations

import json
from pathlib import Path

from openpi.models.model import Observation
import torch
from tqdm import tqdm

from softarm.data.convert import IMAGE_SLOTS
from softarm.model import PI0GraphPytorch, preset


def synthetic_batch(config, batch: int, seed: int) -> tuple[Observation, torch.Tensor, torch.Tensor]:
    """Random images and prompt; actions are a fixed smooth function of the graph, so only the graph explains them."""
    gen = torch.Generator().manual_seed(seed)
    graph = torch.randn(batch, config.num_nodes, config.node_features, generator=gen)
    mixing = torch.randn(config.node_features, config.action_horizon, generator=gen) / config.node_features**0.5
    actions = torch.zeros(batch, config.action_horizon, 32)
    actions[..., : config.num_nodes] = torch.tanh(torch.einsum("bnf,fh->bhn", graph, mixing))
    obs = Observation(
        images={k: torch.rand(batch, 3, 224, 224, generator=gen) * 2 - 1 for k in IMAGE_SLOTS},
        image_masks={k: torch.ones(batch, dtype=torch.bool) for k in IMAGE_SLOTS},
        state=torch.zeros(batch, 32),
        tokenized_prompt=torch.randint(1, config.vocab_size, (batch, config.max_token_len), generator=gen),
        tokenized_prompt_mask=torch.ones(batch, config.max_token_len, dtype=torch.bool),
    )
    return obs, actions, graph


def run_demo(out_dir: Path, steps: int = 150, batch: int = 4, fusion: str = "suffix", seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = preset("tiny", fusion=fusion)
    model = PI0GraphPytorch(config).train()
    obs, actions, graph = synthetic_batch(config, batch, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    real_dims = slice(0, config.num_nodes)
    losses = []
    for _ in tqdm(range(steps), desc="fitting the tiny pi0 + graph", unit="step"):
        loss = model(obs, actions, graph=graph)[..., real_dims].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    noise = torch.randn(actions.shape, generator=torch.Generator().manual_seed(seed + 1))
    chunk = model.sample_actions(torch.device("cpu"), obs, graph=graph, noise=noise)
    result = {
        "fusion": fusion,
        "steps": steps,
        "first_loss": losses[0],
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "sampled_chunk_shape": list(chunk.shape),
        "sampled_action_mse": float(((chunk - actions)[..., real_dims] ** 2).mean()),
        "zero_action_mse": float((actions[..., real_dims] ** 2).mean()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_losses(losses, out_dir / "loss.png")
    return result


def plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses)
    ax.set(xlabel="step", ylabel="flow-matching loss (real action dims)", yscale="log", title="tiny pi0 + graph")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
