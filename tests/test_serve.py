"""The policy server with the real openpi-client on 127.0.0.1: actions, metadata, errors per client, /healthz."""

from __future__ import annotations

from collections.abc import Iterator
import http.client
from pathlib import Path
import subprocess
import sys
import threading
import time

import numpy as np
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
import pytest
import torch
import websockets.sync.client

from softarm.data.raw import write_episode
from softarm.policy import SoftArmPolicy
from softarm.serve import exposure_warning, read_api_key
from tests.conftest import make_episode, observation, running

TIP = {"tip": np.zeros((8, 8, 3), np.uint8)}


@pytest.fixture(scope="module")
def policy(checkpoint) -> SoftArmPolicy:
    return SoftArmPolicy.from_checkpoint(checkpoint[0])


@pytest.fixture(scope="module")
def server(policy) -> Iterator[int]:
    with running(policy) as port:
        yield port


def test_openpi_client_gets_actions_and_metadata(server: int) -> None:
    client = WebsocketClientPolicy("127.0.0.1", server)
    meta = client.get_server_metadata()
    assert meta["action_horizon"] == 16
    assert meta["action_dim"] == 10
    assert meta["graph"]["num_nodes"] == 10
    assert (meta["noise_scale"], meta["num_steps"]) == (1.0, 10)
    result = client.infer(observation(0, 20, 4))
    assert result["actions"].shape == (16, 10)
    assert np.isfinite(result["actions"]).all()
    assert result["server_timing"]["infer_ms"] > 0
    second = client.infer(observation(0, 20, 5))
    assert "prev_total_ms" in second["server_timing"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"graph_nodes": None}, "missing key 'graph_nodes'"),
        ({"graph_nodes": np.zeros((10, 18), np.float32)}, "'graph_nodes' must be [10, 19], got [10, 18]"),
        ({"images": {**TIP, "base": np.zeros((48, 64, 3), np.float32)}}, "images['base'] must be uint8 [H, W, 3]"),
        ({"graph_nodes": np.full((10, 19), np.nan, np.float32)}, "'graph_nodes' contains NaN or Inf"),
        ({"images": {**TIP, "base": np.zeros((5000, 8, 3), np.uint8)}}, "is 5000x8; at most 4096 pixels a side"),
    ],
)
def test_bad_request_gets_a_clear_error_and_the_connection_survives(server: int, change: dict, message: str) -> None:
    client = WebsocketClientPolicy("127.0.0.1", server)
    obs = {**observation(0, 20, 1), **change}
    obs = {k: v for k, v in obs.items() if v is not None}
    with pytest.raises(RuntimeError) as exc:
        client.infer(obs)
    text = str(exc.value)
    assert message in text
    assert "Traceback" not in text
    assert "/softarm/" not in text  # no internal paths
    assert client.infer(observation(0, 20, 2))["actions"].shape == (16, 10)  # same connection still serves


def test_bytes_that_are_not_msgpack_and_disconnects_are_harmless(server: int) -> None:
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server}", max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())  # metadata
        ws.send(b"\xc1\xc1 definitely not msgpack")
        assert ws.recv() == "bad request: the message is not a msgpack-encoded observation map"
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server}", max_size=None) as ws:  # leave mid-request
        ws.recv()
        ws.send(msgpack_numpy.packb(observation(0, 20, 3)))
    client = WebsocketClientPolicy("127.0.0.1", server)
    assert client.infer(observation(0, 20, 6))["actions"].shape == (16, 10)


def test_healthz(server: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b"OK\n"


def robot_loop(port: int, episode: Path, *flags: str) -> list[str]:
    """examples/robot_loop.py as the README runs it: its own process, a recorded episode."""
    return [sys.executable, str(Path(__file__).parents[1] / "examples" / "robot_loop.py"), "--port", str(port),
            "--episode", str(episode), *flags]  # fmt: skip


def test_example_robot_loop(server: int, tmp_path: Path) -> None:
    """As the README runs it: its own process, a recorded episode, the default number of steps (all of them)."""
    episode = write_episode(tmp_path / "ep.h5", make_episode(length=20, seed=0))
    command = robot_loop(server, episode, "--host", "127.0.0.1", "--replan", "8")
    for extra, expected in (([], "20 steps of 10-D commands; MSE vs recorded "),
                            (["--mode", "async"], "; reply delays (control steps) [0, "),
                            (["--steps", "32"], "--steps 32: the episode has 20 steps; replaying all 20")):  # fmt: skip
        result = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        assert expected in result.stdout, result.stdout
    mse = float(result.stdout.split("MSE vs recorded ")[1].split(";")[0])
    assert np.isfinite(mse)


def test_api_key_required_when_set(policy: SoftArmPolicy, caplog: pytest.LogCaptureFixture) -> None:
    key = "s3cret-key-123"
    with running(policy, api_key=key) as port:
        client = WebsocketClientPolicy("127.0.0.1", port, api_key=key)
        assert client.infer(observation(0, 20, 4))["actions"].shape == (16, 10)
        for wrong in (None, "guess"):
            with pytest.raises(websockets.exceptions.InvalidStatus, match="HTTP 401"):
                websockets.sync.client.connect(
                    f"ws://127.0.0.1:{port}",
                    additional_headers={"Authorization": f"Api-Key {wrong}"} if wrong else None,
                )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # the health check stays open
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        assert client.infer(observation(0, 20, 5))["actions"].shape == (16, 10)  # others unaffected
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2
    assert "no API key" in refusals[0]
    assert "wrong API key" in refusals[1]
    assert all(key not in r.getMessage() and "guess" not in r.getMessage() for r in caplog.records)


def test_example_robot_loop_sends_the_servers_api_key(policy: SoftArmPolicy, tmp_path: Path) -> None:
    """The README's pair of commands: a server with --api-key-file and the robot loop given the same file."""
    episode = write_episode(tmp_path / "ep.h5", make_episode(length=12, seed=1))
    (tmp_path / "key").write_text("s3cret-key-123\n")
    with running(policy, api_key="s3cret-key-123") as port:
        command = robot_loop(port, episode, "--api-key-file", str(tmp_path / "key"))
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        (tmp_path / "key").write_text("guess\n")
        refused = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "12 steps of 10-D commands; MSE vs recorded " in result.stdout
    assert refused.returncode == 1
    expected = (f"127.0.0.1:{port} wants an API key and ours was refused: --api-key-file KEY_FILE or "
                "$SOFTARM_API_KEY, the key the server was started with")  # fmt: skip
    assert refused.stderr.strip().endswith(expected), refused.stderr[-2000:]


class SlowPolicy:
    """The real policy, its model taking at least `seconds` per request, its sampling noise seeded per request."""

    def __init__(self, policy: SoftArmPolicy, seconds: float) -> None:
        self.policy, self.seconds, self.metadata = policy, seconds, policy.metadata
        self.prepare = policy.prepare

    def act(self, prepared: dict) -> dict:
        time.sleep(self.seconds)
        torch.manual_seed(0)
        return self.policy.act(prepared)

    def infer(self, obs: dict) -> dict:
        return self.act(self.prepare(obs))


def test_bad_request_is_answered_while_the_model_runs(policy: SoftArmPolicy) -> None:
    slow = SlowPolicy(policy, 1.0)
    expected = slow.act(policy.prepare(observation(0, 20, 4)))["actions"]
    with running(slow) as port:
        clients = [WebsocketClientPolicy("127.0.0.1", port) for _ in range(3)]
        results: dict[int, np.ndarray] = {}

        def ask(i: int) -> None:
            results[i] = clients[i].infer(observation(0, 20, 4))["actions"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
            time.sleep(0.1)  # both queued: the model is busy with the first for a second
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="missing key 'graph_nodes'"):
            clients[2].infer({k: v for k, v in observation(0, 20, 1).items() if k != "graph_nodes"})
        assert time.monotonic() - start < 0.1
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        assert time.monotonic() - start < 0.2
        for thread in threads:
            thread.join(timeout=10)
    assert sorted(results) == [0, 1]
    for actions in results.values():
        np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-5)


def test_api_key_sources_and_the_open_network_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOFTARM_API_KEY", raising=False)
    assert read_api_key(None) is None
    (tmp_path / "key").write_text("  abc123 \n")
    assert read_api_key(str(tmp_path / "key")) == "abc123"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"--api-key-file .*empty is empty"):
        read_api_key(str(tmp_path / "empty"))
    monkeypatch.setenv("SOFTARM_API_KEY", "from-env")
    assert read_api_key(None) == "from-env"
    assert "anyone who can reach 0.0.0.0:8000 can drive the arm" in exposure_warning("0.0.0.0", 8000, None)
    assert exposure_warning("0.0.0.0", 8000, "k") is None
    assert exposure_warning("127.0.0.1", 8000, None) is None
    assert exposure_warning("localhost", 8000, None) is None
    assert exposure_warning("::1", 8000, None) is None
