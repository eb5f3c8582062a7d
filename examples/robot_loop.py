"""A robot-side control loop against `softarm serve`, with openpi-client's WebsocketClientPolicy + ActionChunkBroker.

The observation source here replays a recorded raw episode (docs/data_format.md), so the loop runs anywhere and
reports how far the policy's actions are from the recorded ones (an open-loop check). On a real arm, replace
`EpisodeReplay` with your driver: `observation()` returns the current camera frames, graph nodes (with the names of
their columns), state and prompt, and `apply(action)` sends one command per actuator.

    python examples/robot_loop.py --host 127.0.0.1 --port 8000 --episode demo_out/raw/choose_000000.hdf5 --replan 8
    python examples/robot_loop.py ... --mode async      # keep moving while the policy thinks (real-time chunking)

`--mode sync` (default) waits for each chunk: the arm pauses for the round trip. `--mode async` requests the next
chunk from a background thread while the arm executes the current one, sending the current chunk's unexecuted
actions and the expected delay (`prev_actions`, `delay`: the measured round trip in control steps), and switches
to the new chunk at the step the arm has reached; `--no-rtc` leaves the two keys out (plain asynchronous switching).
A server started with an API key (`softarm serve --api-key-file KEY_FILE`) wants it from every client:
`--api-key-file KEY_FILE` here, or $SOFTARM_API_KEY.

A policy with proprioceptive history (the server's metadata: `history.steps` > 1) reads the last few control steps'
graphs: the loop keeps them (`GraphHistory`, fed at every control step, not only when it asks for a chunk) and sends
the window with each request; one with visual history (`image_history.steps` > 1) likewise gets the past frames
of the cameras it names (`ImageHistory`).
"""

from __future__ import annotations

import argparse
import math
import threading
import time

import numpy as np
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy
import websockets.exceptions

from softarm.data.raw import read_episode
from softarm.execution import ChunkExecutor
from softarm.history import GraphHistory, HistorySpec, ImageHistory
from softarm.serve import read_api_key  # websockets and openpi-client: the robot side stays free of torch


class EpisodeReplay:
    """Stands in for an arm: serves the recorded observations in order and records the commands it receives."""

    def __init__(self, path: str) -> None:
        self.episode = read_episode(path)
        self.t = 0
        self.commands: list[np.ndarray] = []

    def observation(self) -> dict:
        return self.episode.observation(self.t)

    def apply(self, action: np.ndarray) -> None:
        self.commands.append(np.asarray(action))
        self.t = min(self.t + 1, self.episode.length - 1)


class AsyncChunks:
    """Asynchronous execution (`softarm.execution`, `async` or `rtc`): `act(observation)` returns this control step's
    command at once, while a background thread fetches the next chunk. The delay the scheduler plans with is the
    round trip measured so far in control steps (running mean, rounded up); a reply takes over at the step the arm
    has reached since its request."""

    def __init__(self, client: WebsocketClientPolicy, replan: int, period: float, rtc: bool = True) -> None:
        self.client, self.period = client, period
        self.executor = ChunkExecutor(replan, "rtc" if rtc else "async")
        self.round_trip_s: float | None = None
        self.reply: np.ndarray | None = None
        self.delays: list[int] = []  # control steps each reply took, as measured

    @property
    def delay(self) -> int:
        return 0 if self.round_trip_s is None else math.ceil(self.round_trip_s / self.period)

    def _request(self, observation: dict) -> None:
        start = time.monotonic()
        chunk = np.asarray(self.client.infer(observation)["actions"])
        elapsed = time.monotonic() - start
        self.round_trip_s = elapsed if self.round_trip_s is None else 0.8 * self.round_trip_s + 0.2 * elapsed
        self.reply = chunk

    def act(self, observation: dict) -> np.ndarray:
        executor = self.executor
        if executor.chunk is None:  # the first chunk is waited for
            self._request({**observation, **executor.request()})
        if self.reply is not None:  # a new chunk has arrived: it takes over where the arm is now
            self.delays.append(executor.step - executor.sent_at)
            reply, self.reply = self.reply, None
            executor.receive(reply)
        if executor.wants_request(self.delay):
            request = {**observation, **executor.request(self.delay)}
            threading.Thread(target=self._request, args=(request,), daemon=True).start()
        return executor.command()


def run(
    host: str, port: int, arm: EpisodeReplay, steps: int | None, replan: int, realtime: bool = False,
    mode: str = "sync", rtc: bool = True, api_key: str | None = None,
) -> dict:  # fmt: skip
    """Drive `steps` control steps (None: the whole recording; a replay cannot run past its end) and compare the
    commands with the recorded ones."""
    length = arm.episode.length
    if steps is not None and steps > length:
        print(f"--steps {steps}: the episode has {length} steps; replaying all {length}")
    steps = length if steps is None else min(steps, length)
    try:
        client = WebsocketClientPolicy(host, port, api_key=api_key)
    except websockets.exceptions.InvalidStatus as refused:
        if refused.response.status_code != 401:
            raise
        given = "was refused" if api_key else "is missing"
        raise SystemExit(f"{host}:{port} wants an API key and ours {given}: --api-key-file KEY_FILE or "
                         "$SOFTARM_API_KEY, the key the server was started with") from None  # fmt: skip
    meta = client.get_server_metadata()
    if replan > meta["action_horizon"]:
        raise SystemExit(f"--replan {replan} exceeds the policy's action horizon {meta['action_horizon']}")
    period = 1.0 / arm.episode.fps
    if mode == "async":
        chunks = AsyncChunks(client, replan, period, rtc=rtc and "rtc" in meta)
        policy, realtime = chunks.act, True  # asynchronous execution only makes sense at the control rate
    else:
        broker = ActionChunkBroker(client, action_horizon=replan)  # execute `replan` steps of each chunk, re-plan
        policy = lambda observation: broker.infer(observation)["actions"]  # noqa: E731
    history = GraphHistory(HistorySpec(**meta["history"])) if meta.get("history", {}).get("steps", 1) > 1 else None
    seen = meta.get("image_history", {})  # past camera frames: the loop keeps them, as it keeps the graph's
    frames = (
        ImageHistory(HistorySpec(seen["steps"], seen["stride"]), seen["cameras"]) if seen.get("steps", 1) > 1 else None
    )
    for _ in range(steps):
        tick = time.monotonic()
        observation = arm.observation()
        if history is not None:
            history.push(observation["graph_nodes"])
            observation |= history.request_fields()
        if frames is not None:
            frames.push(observation["images"])
            observation |= frames.request_fields()
        arm.apply(policy(observation))
        if realtime:
            time.sleep(max(0.0, period - (time.monotonic() - tick)))
    recorded = arm.episode.actions[: len(arm.commands)]
    commands = np.stack(arm.commands)
    mse = float(((commands - recorded) ** 2).mean())
    result = {"steps": len(commands), "action_dim": commands.shape[1], "mse_vs_recorded": mse}
    if mode == "async":
        result["measured_delays"] = chunks.delays
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--episode", required=True, help="a raw HDF5 episode to replay")
    parser.add_argument("--steps", type=int, help="control steps to run (default: the whole episode)")
    parser.add_argument("--replan", type=int, default=8, help="actions executed from each chunk")
    parser.add_argument("--realtime", action="store_true", help="pace the loop at the episode's fps")
    parser.add_argument("--mode", choices=["sync", "async"], default="sync",
                        help="async: fetch the next chunk while executing the current one (paced at fps)")  # fmt: skip
    parser.add_argument("--no-rtc", action="store_true", help="async without prev_actions/delay in the requests")
    parser.add_argument("--api-key-file", help="the server's API key (its first line); default: $SOFTARM_API_KEY")
    args = parser.parse_args()
    result = run(args.host, args.port, EpisodeReplay(args.episode), args.steps, args.replan, args.realtime, args.mode,
                 rtc=not args.no_rtc, api_key=read_api_key(args.api_key_file))  # fmt: skip
    print(
        f"{result['steps']} steps of {result['action_dim']}-D commands; MSE vs recorded {result['mse_vs_recorded']:.4f}"
        + (f"; reply delays (control steps) {result['measured_delays']}" if "measured_delays" in result else "")
    )


if __name__ == "__main__":
    main()
