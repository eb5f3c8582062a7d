"""Chunk execution (softarm.execution) under latency: when requests go out, what they carry, where a reply takes
over, in the simulated evaluation's clock (ModelAgent) and in the robot loop's threads (examples/robot_loop.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
import threading
import time

import numpy as np
import pytest

from softarm.apps.evaluate import ModelAgent, smoothness
from softarm.execution import ChunkExecutor, delay_steps
from softarm.sim.tasks import EpisodeSpec


class ChunkRecorder:
    """Stands in for the policy to check the agent's timing: chunk n holds 100 * n + i at step i, and every
    request is recorded with the step it was sent at."""

    def __init__(self, agent_steps: list[int]) -> None:
        self.requests: list[dict] = []
        self.steps = agent_steps

    def infer(self, observation: dict, prev_actions=None, delay: int = 0) -> dict:
        n = len(self.requests)
        self.requests.append({"step": self.steps[0], "prev_actions": prev_actions, "delay": delay})
        chunk = 100.0 * (n + 1) + np.arange(16, dtype=np.float32)
        return {"actions": chunk[:, None], "policy_timing": {"infer_ms": 1.0}}


def run_agent(
    execution: str, delay: int, replan: int = 4, steps: int = 14, decay: float = 0.1
) -> tuple[list[float], ChunkRecorder, list]:
    clock = [0]
    recorder = ChunkRecorder(clock)
    agent = ModelAgent(recorder, replan=replan, delay=delay, execution=execution, decay=decay)
    spec = EpisodeSpec(task="reach", seed=0, prompt="", initial_command=np.array([-1.0], np.float32),
                       targets=np.zeros((steps + 1, 3)), time_limit=steps / 10)  # fmt: skip
    agent.reset(spec, 10.0)
    executed = []
    for k in range(steps):
        clock[0] = k
        executed.append(float(agent.act({})[0]))
    return executed, recorder, [float(gap[0]) for gap in agent.gaps]


def test_sync_holds_the_last_command_while_the_policy_thinks() -> None:
    executed, recorder, gaps = run_agent("sync", delay=2)
    assert executed == [-1, -1, 100, 101, 102, 103, 103, 103, 200, 201, 202, 203, 203, 203]
    assert [r["step"] for r in recorder.requests] == [0, 6, 12]
    assert gaps == [96.0]  # chunk 2 starts at 200 where chunk 1 planned 104
    sync, _, _ = run_agent("sync", delay=0)
    asynchronous, _, _ = run_agent("async", delay=0)
    assert sync == asynchronous == [100, 101, 102, 103, 200, 201, 202, 203, 300, 301, 302, 303, 400, 401]


def test_async_keeps_executing_and_switches_to_the_new_chunk_at_its_delay() -> None:
    executed, recorder, gaps = run_agent("async", delay=2)
    # request 2 goes out after 2 of chunk 1's 4 actions, arrives 2 steps later and starts at its own step 2
    assert executed == [-1, -1, 100, 101, 102, 103, 202, 203, 204, 205, 302, 303, 304, 305]
    assert [r["step"] for r in recorder.requests] == [0, 4, 8, 12]
    assert gaps == [98.0, 96.0]  # 202 where 104 was planned, 302 where 206 was
    assert all(r["prev_actions"] is None for r in recorder.requests)


def test_rtc_sends_the_unexecuted_rest_of_the_chunk_and_the_delay() -> None:
    executed, recorder, _ = run_agent("rtc", delay=2)
    assert executed == [-1, -1, 100, 101, 102, 103, 202, 203, 204, 205, 302, 303, 304, 305]
    first, second = recorder.requests[1], recorder.requests[2]
    assert first["prev_actions"][:, 0].tolist() == list(range(102, 116))
    assert first["delay"] == 2
    assert second["prev_actions"][:, 0].tolist() == list(range(204, 216))
    assert second["delay"] == 2
    assert recorder.requests[0]["prev_actions"] is None


@pytest.mark.parametrize("delay", [0, 2])
@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_ensemble_averages_every_running_chunk_older_ones_weighing_more(delay: int, decay: float) -> None:
    executed, recorder, _ = run_agent("ensemble", delay=delay, decay=decay, steps=24)
    sent = [r["step"] for r in recorder.requests]
    assert sent == [0, 4, 8, 12, 16, 20]  # timed as async: with a delay, each request goes out that much earlier
    expected = []
    # chunk n, sent at step s_n and in use from s_n + delay, holds 100 * (n + 1) + i for step s_n + i; the first
    # chunk is waited for and starts from its first action
    starts = [s + delay if n == 0 else s for n, s in enumerate(sent)]
    for k in range(24):
        running = [
            100.0 * (n + 1) + k - t
            for n, (s, t) in enumerate(zip(sent, starts, strict=True))
            if s + delay <= k < t + 16
        ]
        weights = np.exp(-decay * np.arange(len(running)))  # the oldest first
        expected.append(float(weights @ running / weights.sum()) if running else -1.0)
    np.testing.assert_allclose(executed, expected, rtol=1e-6)
    if decay == 0:  # at step 8 of a plain run three chunks run: (108 + 204 + 300) / 3
        assert executed[8] == pytest.approx(204.0 if delay == 0 else (106 + 204) / 2)
    with pytest.raises(ValueError, match="decay must be >= 0"):
        ModelAgent(recorder, replan=4, execution="ensemble", decay=-1.0)


def test_latency_becomes_control_steps_and_smoothness_is_measured_at_switches() -> None:
    assert [delay_steps(ms, 10.0) for ms in (0, 100, 150, 200, 300)] == [0, 1, 2, 2, 3]
    actions = np.array([[0.0], [0.0], [0.5], [0.5], [0.5], [0.5]])
    s = smoothness(actions, switches=[2, 4], gaps=[np.array([0.3]), np.array([0.1])], command_range=np.array([2.0]))
    assert s["switch_jump"] == pytest.approx(0.25)  # the jump of 0.5 at step 2, in a range of 2
    assert s["chunk_gap"] == pytest.approx(0.15)
    assert s["jerk_rms"] == pytest.approx(math.sqrt((0.5**2 + 0.25**2 + 0.0**2) / 3))  # third differences


def test_the_executor_refuses_what_it_cannot_schedule() -> None:
    with pytest.raises(ValueError, match=r"unknown execution 'later'; choose one of \('sync', 'async', 'rtc'"):
        ChunkExecutor(4, "later")
    with pytest.raises(ValueError, match=r"replan must be >= 1 and decay must be >= 0, got 0 and 0\.1"):
        ChunkExecutor(0)
    with pytest.raises(RuntimeError, match="a chunk arrived with no request in flight"):
        ChunkExecutor(4).receive(np.zeros((16, 1)))


def _robot_loop():
    path = Path(__file__).parents[1] / "examples" / "robot_loop.py"
    spec = importlib.util.spec_from_file_location("robot_loop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GatedClient:
    """openpi-client's infer, answering the first request at once and every later one when the test opens the gate;
    chunk n holds 100 * n + i at step i."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.gate = threading.Event()

    def infer(self, observation: dict) -> dict:
        self.requests.append(observation)
        if len(self.requests) > 1:
            assert self.gate.wait(timeout=30)
        return {"actions": 100.0 * len(self.requests) + np.arange(16, dtype=np.float32)[:, None]}


def test_the_robot_loop_keeps_executing_while_a_reply_is_late_and_switches_where_the_arm_is() -> None:
    client = GatedClient()
    chunks = _robot_loop().AsyncChunks(client, replan=4, period=10.0, rtc=True)  # a round trip here: 1 step
    executed = [float(chunks.act({"prompt": "p"})[0]) for _ in range(6)]
    # request 2 goes out 1 step (the measured delay) before 4 actions are done, then the arm keeps going
    assert executed == [100, 101, 102, 103, 104, 105]
    assert len(client.requests) == 2
    assert client.requests[1]["prev_actions"][:, 0].tolist() == list(range(103, 116))
    assert (client.requests[1]["delay"], client.requests[1]["prompt"]) == (1, "p")
    assert "prev_actions" not in client.requests[0]
    client.gate.set()
    deadline = time.monotonic() + 30
    while chunks.reply is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert float(chunks.act({})[0]) == 203  # sent at step 3, arrived at step 6: it takes over at its own step 3
    assert chunks.delays == [0, 3]
