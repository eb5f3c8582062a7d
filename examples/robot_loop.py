"""A robot-side control loop against `softarm serve`, with openpi-client's WebsocketClientPolicy + ActionChunkBroker.

The observation source here replays a recorded raw episode (docs/data_format.md), so the loop runs anywhere and
reports how far the policy's actions are from the recorded ones (an open-loop check). On a real arm, replace
`EpisodeReplay` with your driver: `observation()` returns the current camera frames, graph nodes (with the names of
their columns), state and prompt, and `apply(action)` sends one command per actuator.

    python examples/robot_loop.py --host 127.0.0.1 --port 8000 --episode RAW_DIR/episode_000.h5 --replan 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from softarm.data.raw import read_episode


class EpisodeReplay:
    """Stands in for an arm: serves the recorded observations in order and records the commands it receives."""

    def __init__(self, path: str) -> None:
        self.episode = read_episode(path)
        self.t = 0
        self.commands: list[np.ndarray] = []

    def observation(self) -> dict:
        ep, t = self.episode, self.t
        obs = {"images": {cam: frames[t] for cam, frames in ep.images.items()}, "graph_nodes": ep.graph_nodes[t]}
        if ep.node_features is not None:  # the recording names its columns: the server picks what its model reads
            obs["graph_features"] = list(ep.node_features)
        if ep.state is not None:
            obs["state"] = ep.state[t]
        obs["prompt"] = ep.prompt
        return obs

    def apply(self, action: np.ndarray) -> None:
        self.commands.append(np.asarray(action))
        self.t = min(self.t + 1, self.episode.length - 1)


def run(host: str, port: int, arm: EpisodeReplay, steps: int, replan: int, realtime: bool = False) -> dict:
    client = WebsocketClientPolicy(host, port)
    meta = client.get_server_metadata()
    if replan > meta["action_horizon"]:
        raise SystemExit(f"--replan {replan} exceeds the policy's action horizon {meta['action_horizon']}")
    broker = ActionChunkBroker(client, action_horizon=replan)  # execute `replan` steps of each chunk, then re-plan
    period = 1.0 / arm.episode.fps
    for _ in range(steps):
        tick = time.monotonic()
        arm.apply(broker.infer(arm.observation())["actions"])
        if realtime:
            time.sleep(max(0.0, period - (time.monotonic() - tick)))
    recorded = arm.episode.actions[: len(arm.commands)]
    commands = np.stack(arm.commands)
    mse = float(((commands - recorded) ** 2).mean())
    return {"steps": len(commands), "action_dim": commands.shape[1], "mse_vs_recorded": mse}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--episode", required=True, help="a raw HDF5 episode to replay")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--replan", type=int, default=8, help="actions executed from each chunk")
    parser.add_argument("--realtime", action="store_true", help="pace the loop at the episode's fps")
    args = parser.parse_args()
    result = run(args.host, args.port, EpisodeReplay(args.episode), args.steps, args.replan, args.realtime)
    print(
        f"{result['steps']} steps of {result['action_dim']}-D commands; MSE vs recorded {result['mse_vs_recorded']:.4f}"
    )


if __name__ == "__main__":
    main()
