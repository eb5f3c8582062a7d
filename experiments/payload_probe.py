"""What the graph tells that the pressures cannot: a probe that predicts each episode's hidden tip payload.

On a prepared dataset of simulated episodes (e.g. `demo_out/prepared`), a small MLP regresses the payload (grams,
recovered from each episode's seed) from one frame of (a) the 10 chamber pressures, (b) the 10 x 19 graph,
(c) both; whole episodes are held out (every 5th by a seeded shuffle). R^2 near 1: the input reveals the payload;
near or below 0: it does not.

    .venv/bin/python experiments/payload_probe.py demo_out/prepared
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from softarm.data.prepared import PreparedDataset
from softarm.sim.env import SoftArmEnv
from softarm.sim.statics import StaticArm
from softarm.sim.tasks import TASKS


def load(prepared: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pressures [T, 10], graph [T, 190], payload grams [T], episode index [T]) over train and val."""
    with SoftArmEnv() as env:
        static = StaticArm(env)
        pressures, graph, payload, episode = [], [], [], []
        for split in ("train", "val"):
            data = PreparedDataset(prepared, split)
            for ep in data.episodes:
                task, seed = Path(ep["file"]).stem.rsplit("_", 1)
                grams = 1000 * TASKS[task].sample(int(seed), static, env.control_hz).payload
                frames = np.arange(ep["start"], ep["start"] + ep["length"])
                pressures.append(np.asarray(data.arrays["state"][frames]))
                graph.append(np.asarray(data.arrays["graph_nodes"][frames]).reshape(len(frames), -1))
                payload.append(np.full(len(frames), grams))
                episode.append(np.full(len(frames), len(episode)))
    return np.concatenate(pressures), np.concatenate(graph), np.concatenate(payload), np.concatenate(episode)


def probe(x: np.ndarray, y: np.ndarray, held_out: np.ndarray, steps: int = 3000) -> tuple[float, float]:
    torch.manual_seed(0)
    mean, std = x[~held_out].mean(0), x[~held_out].std(0) + 1e-6
    inputs = torch.tensor((x - mean) / std, dtype=torch.float32)
    target = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.GELU(), torch.nn.Linear(128, 128),
                              torch.nn.GELU(), torch.nn.Linear(128, 1))  # fmt: skip
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    train_rows = torch.tensor(np.flatnonzero(~held_out))
    for _ in range(steps):
        batch = train_rows[torch.randint(len(train_rows), (128,))]
        loss = ((net(inputs[batch]).squeeze(-1) - target[batch]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = net(inputs[torch.tensor(np.flatnonzero(held_out))]).squeeze(-1).numpy() * y.std() + y.mean()
    truth = y[held_out]
    r2 = 1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    return float(r2), float(np.sqrt(((predicted - truth) ** 2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--steps", type=int, default=3000, help="training steps of each probe")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps = 5
    pressures, graph, payload, episode = load(args.prepared)
    held_out = (np.random.default_rng(0).permutation(episode.max() + 1) % 5 == 0)[episode]
    print(f"{episode.max() + 1} episodes, {len(payload)} frames; {held_out.sum()} frames of held-out episodes")
    for name, x in (("pressures", pressures), ("graph", graph), ("graph + pressures", np.c_[pressures, graph])):
        r2, rmse = probe(x, payload, held_out, args.steps)
        print(f"{name:<18} R^2 {r2:6.3f}   RMSE {rmse:5.1f} g   (payload std {payload[held_out].std():.1f} g)")


if __name__ == "__main__":
    main()
