"""Chunk execution: which command the arm runs at each control step while a policy answers with action chunks.

One scheduler for the simulated evaluation (`softarm eval`, where a request's latency is a number of simulated
control steps) and the robot loop (examples/robot_loop.py, where a reply arrives from a thread after a measured
round trip). Its clock is the control step: the caller says how many steps a reply is expected to take (`delay`)
and hands the reply over at the step it arrives; the scheduler decides when to ask, what to send, and where the new
chunk takes over.

- `sync`: each chunk's first `replan` actions are executed; then the next request goes out and the arm holds its
  last command until the reply, which it executes from its first action.
- `async`: the arm keeps executing the current chunk; the next request goes out `delay` steps before `replan` of
  its actions are done, and the reply takes over at the step the arm has reached since the request.
- `rtc`: as async, and the request carries the current chunk's unexecuted actions and the delay (`prev_actions`,
  `delay`), so the new chunk joins the old one (softarm.rtc).
- `ensemble`: as async, and every chunk still running votes on the command, the older ones more (temporal
  ensembling, ACT: Zhao et al. 2023, weights exp(-decay * i)); consecutive plans are averaged instead of replacing
  each other, which damps the jitter of a plan re-estimated from every new view.

The first chunk is waited for in every mode and runs from its first action. Past a chunk's end (a reply later than
the chunk is long) the arm holds its last command.
"""

from __future__ import annotations

import math

import numpy as np

EXECUTIONS = ("sync", "async", "rtc", "ensemble")
ENSEMBLE_DECAY = 0.1  # temporal ensembling: chunk i (0 the oldest still running) weighs exp(-decay * i)


def delay_steps(latency_ms: float, control_hz: float) -> int:
    """Control steps that pass during an inference of `latency_ms` (a reply arriving mid-step is used next step)."""
    return math.ceil(latency_ms * control_hz / 1000 - 1e-9)


class ChunkExecutor:
    """The command of every control step, from the chunks handed to `receive`. Per step: `wants_request(delay)`
    (send `request(delay)`'s keys with the observation if so), `receive(chunk)` when a reply arrives, then `command()`
    once. One request is in flight at a time. `switches` and `gaps` record, per chunk switch, the step and how far
    the new command is from what the old chunk planned for it (smoothness, `softarm eval`)."""

    def __init__(self, replan: int, execution: str = "sync", decay: float = ENSEMBLE_DECAY) -> None:
        if execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {execution!r}; choose one of {EXECUTIONS}")
        if replan < 1 or decay < 0:
            raise ValueError(f"replan must be >= 1 and decay must be >= 0, got {replan} and {decay}")
        self.replan, self.execution, self.decay = replan, execution, decay
        self.reset(np.zeros(0, np.float32))

    def reset(self, command: np.ndarray) -> None:
        """A new episode, the arm at `command` until the first chunk arrives."""
        self.step, self.last = 0, np.asarray(command, np.float32)
        self.chunk: np.ndarray | None = None
        self.index = self.executed = 0  # next action of the chunk; actions of it executed so far
        self.sent_at: int | None = None  # step of the request in flight
        self.running: list[tuple[np.ndarray, int]] = []  # ensemble: (chunk, step of its action 0), oldest first
        self.switches: list[int] = []
        self.gaps: list[np.ndarray] = []
        self._planned: np.ndarray | None = None  # what the replaced chunk planned for this step

    def wants_request(self, delay: int = 0) -> bool:
        """Whether a request should go out at this step, for a reply expected `delay` steps later."""
        if self.sent_at is not None:
            return False
        if self.chunk is None:
            return True
        if self.execution == "sync":
            return self.executed >= self.replan
        return self.executed >= max(0, self.replan - delay)

    def request(self, delay: int = 0) -> dict:
        """Mark a request sent now; returns what it carries besides the observation (rtc: `prev_actions`, `delay`)."""
        self.sent_at = self.step
        remaining = self.chunk[self.index :] if self.chunk is not None else None
        if self.execution != "rtc" or remaining is None or not len(remaining):
            return {}
        return {"prev_actions": remaining, "delay": min(delay, len(remaining), len(self.chunk) - 1)}

    def receive(self, chunk: np.ndarray) -> None:
        """The reply to the request in flight arrives at this step: it takes over where the arm is (sync and the first
        chunk: from its first action)."""
        if self.sent_at is None:
            raise RuntimeError("a chunk arrived with no request in flight")
        chunk = np.asarray(chunk)
        start = 0
        if self.chunk is not None:
            self._planned = self.chunk[min(self.index, len(self.chunk) - 1)]
            self.switches.append(self.step)
            start = 0 if self.execution == "sync" else self.step - self.sent_at
        self.chunk, self.index, self.executed, self.sent_at = chunk, start, 0, None
        if self.execution == "ensemble":
            self.running.append((chunk, self.step - start))

    def command(self) -> np.ndarray:
        """This step's command; the clock moves on by one step."""
        waiting = self.chunk is None or (self.execution == "sync" and self.sent_at is not None)
        if not waiting and self.index < len(self.chunk):
            self.last = self._ensembled() if self.execution == "ensemble" else self.chunk[self.index]
            self.index += 1
            self.executed += 1
        if self._planned is not None:
            self.gaps.append(np.abs(self.last - self._planned))
            self._planned = None
        self.step += 1
        return self.last

    def _ensembled(self) -> np.ndarray:
        """The weighted mean of this step's action in every chunk still running."""
        self.running = [(chunk, first) for chunk, first in self.running if self.step - first < len(chunk)]
        actions = np.stack([chunk[self.step - first] for chunk, first in self.running])
        weights = np.exp(-self.decay * np.arange(len(actions)))
        return (weights @ actions / weights.sum()).astype(actions.dtype)
