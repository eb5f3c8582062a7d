"""Serving overhead: SoftArmPolicy.infer called directly vs through `softarm serve` with openpi-client, and
throughput with several concurrent clients (tiny preset, CPU).

As in deployment, every party is its own process: this script (the robot side) never imports torch, the server is
`softarm serve`, and the direct calls run in a fresh process of their own. On a 2-core machine this matters: a
process that has run torch keeps OpenMP threads that compete for the cores, which inflated served latency by
50-60 % when client and policy shared a process.

    .venv/bin/python benchmarks/serving.py
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
import json
from pathlib import Path
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from softarm.data.raw import RawEpisode, write_episode  # numpy and h5py only

ROOT = Path(__file__).parents[1]

SOFTARM = [sys.executable, "-m", "softarm.cli"]


def time_direct(checkpoint: str, repeats: int) -> list[float]:
    """Run in a fresh process (`--direct`): the policy called in-process, no server."""
    from softarm.policy import SoftArmPolicy

    policy = SoftArmPolicy.from_checkpoint(checkpoint)
    obs = observation()
    return timed(lambda: policy.infer(obs), repeats)


def make_episode(length: int, seed: int) -> RawEpisode:
    """A random episode of the 10-segment arm with a base and a tip camera (small images, 4-D state)."""
    rng = np.random.default_rng(seed)
    images = {"base": rng.integers(0, 256, (length, 48, 64, 3), dtype=np.uint8),
              "tip": rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8)}  # fmt: skip
    return RawEpisode(path=Path("unused"), images=images,
                      graph_nodes=rng.normal(size=(length, 10, 19)).astype(np.float32),
                      actions=rng.uniform(-1, 1, (length, 10)).astype(np.float32), prompt="reach the red ball",
                      fps=10.0, state=rng.normal(size=(length, 4)).astype(np.float32))  # fmt: skip


def observation() -> dict:
    ep, t = make_episode(length=20, seed=0), 3
    return {"images": {c: f[t] for c, f in ep.images.items()}, "graph_nodes": ep.graph_nodes[t], "state": ep.state[t],
            "prompt": ep.prompt}  # fmt: skip


def make_checkpoint(root: Path) -> Path:
    for i in range(3):
        write_episode(root / "raw" / f"ep_{i}.h5", make_episode(length=20, seed=i))
    run = lambda *args: subprocess.run([*SOFTARM, *args], check=True, capture_output=True, cwd=ROOT)  # noqa: E731
    run("convert", str(root / "raw"), str(root / "prep"), "--val-episodes", "1")
    run("train", "--config", "configs/debug.yaml", f"data.path={root / 'prep'}", f"train.out_dir={root / 'run'}",
        "train.steps=1")  # fmt: skip
    return root / "run" / "checkpoints" / "1"


def start_server(checkpoint: Path) -> tuple[int, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [*SOFTARM, "serve", "--checkpoint", str(checkpoint), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return port, proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not come up within 60 s")


def timed(call, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--direct", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.clients = 1, 1
    if args.direct:
        print(json.dumps(time_direct(args.direct, args.repeats)))
        return
    assert "torch" not in sys.modules, "the client side must stay free of torch"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(Path(tmp))
        # This very script in --direct mode: a fresh process that has never talked to the server.
        out = subprocess.run([sys.executable, __file__, "--direct", str(checkpoint), "--repeats", str(args.repeats)],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout  # fmt: skip
        direct = statistics.median(json.loads(out.strip().splitlines()[-1]))
        port, server = start_server(checkpoint)
        try:
            obs = observation()
            client = WebsocketClientPolicy("127.0.0.1", port)
            served = statistics.median(timed(lambda: client.infer(obs), args.repeats))
            print(
                f"infer latency, median of {args.repeats}: direct {1000 * direct:.1f} ms, through the server "
                f"{1000 * served:.1f} ms, ratio {served / direct:.3f} (overhead {100 * (served / direct - 1):.1f} %)"
            )
            clients = [WebsocketClientPolicy("127.0.0.1", port) for _ in range(args.clients)]
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda c: [c.infer(obs) for _ in range(args.repeats)], clients))
            rate = args.clients * args.repeats / (time.perf_counter() - start)
            print(f"{args.clients} concurrent clients: {rate:.1f} requests/s in all (one direct caller: "
                  f"{1 / direct:.1f} requests/s)")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
