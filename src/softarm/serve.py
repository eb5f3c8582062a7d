"""`softarm serve`: SoftArmPolicy over openpi's websocket protocol, so openpi-client talks to it unchanged.

The protocol is openpi's: the metadata as the first frame, then one msgpack-numpy observation in, one action chunk
out (with `server_timing`), and GET /healthz answered with 200. openpi's own server answers any error with the full
traceback and closes the connection. A robot needs less and more:
- a bad request (missing key, wrong shape or dtype, NaN, oversized image, bytes that are not msgpack) gets one text
  frame that says what is wrong, and the connection stays open; an internal error is logged here and the client only
  learns that it happened;
- the model runs in one worker thread, one request at a time in arrival order, while the event loop keeps accepting
  connections, answering /healthz and checking requests (in a second thread), so a bad request is answered at once
  even while a long inference runs;
- with an API key, the websocket handshake must carry openpi-client's `Authorization: Api-Key <key>` header; without
  it (or with another key) the connection is refused with 401 before any policy work. /healthz stays open.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
import contextlib
import functools
import hmac
import http
import ipaddress
import logging
import os
from pathlib import Path
import time

from openpi_client import base_policy, msgpack_numpy
import websockets
import websockets.asyncio.server as _server
import websockets.frames

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 2**20  # three full-HD frames fit; a runaway client does not
API_KEY_ENV = "SOFTARM_API_KEY"


class SoftArmPolicyServer:
    """`policy` needs `infer(obs)`; one that also has `prepare(obs)` (checks, ValueError) and `act(prepared)` gets
    its requests checked outside the model's queue. All model work runs in `model_thread` (one is made if not
    given): build the policy there too, since torch used from two threads of a process keeps two OpenMP thread
    teams that, on a few cores, make every inference ~3x slower."""

    def __init__(
        self,
        policy: base_policy.BasePolicy,
        host: str = "0.0.0.0",
        port: int = 8000,
        metadata: dict | None = None,
        api_key: str | None = None,
        model_thread: ThreadPoolExecutor | None = None,
    ) -> None:
        self.policy, self.host, self.port, self.metadata = policy, host, port, metadata or {}
        self._expected = f"Api-Key {api_key}".encode() if api_key else None
        self.server: _server.Server | None = None
        self._model = model_thread or model_worker()  # FIFO, one request at a time
        self._checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="softarm-checks")

    def serve_forever(self) -> None:
        asyncio.run(self.run())

    async def run(self, ready: asyncio.Event | None = None) -> None:
        async with _server.serve(
            self._handler,
            self.host,
            self.port,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            process_request=self._process_request,
        ) as server:
            self.server = server
            if ready is not None:
                ready.set()
            try:
                await server.serve_forever()
            finally:  # the worker threads end with the server (they would idle on otherwise)
                self._checks.shutdown(wait=False, cancel_futures=True)
                self._model.shutdown(wait=False, cancel_futures=True)

    def _process_request(
        self, connection: _server.ServerConnection, request: _server.Request
    ) -> _server.Response | None:
        """Before the websocket upgrade: /healthz answers 200; a missing or wrong API key is refused with 401."""
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):  # constant time; the key is never logged
                logger.warning("refused %s: %s API key", connection.remote_address, "wrong" if given else "no")
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
        return None

    def _run(self, function, *args):
        return asyncio.get_running_loop().run_in_executor(self._model, function, *args)

    async def _infer(self, obs: dict) -> dict:
        prepare, act = getattr(self.policy, "prepare", None), getattr(self.policy, "act", None)
        if prepare is None or act is None:
            return await self._run(self.policy.infer, obs)
        prepared = await asyncio.get_running_loop().run_in_executor(self._checks, prepare, obs)
        return await self._run(act, prepared)

    async def _handler(self, websocket: _server.ServerConnection) -> None:
        packer = msgpack_numpy.Packer()
        await websocket.send(packer.pack(self.metadata))
        prev_total_time = None
        while True:
            try:
                message = await websocket.recv()
            except websockets.ConnectionClosed:
                return
            start = time.monotonic()
            try:
                obs = msgpack_numpy.unpackb(message)
                if not isinstance(obs, dict):
                    raise ValueError(f"expected a map of observation fields, got {type(obs).__name__}")
            except Exception:
                await _send_error(websocket, "bad request: the message is not a msgpack-encoded observation map")
                continue
            try:
                result = await self._infer(obs)
                result["server_timing"] = {"infer_ms": 1000 * (time.monotonic() - start)}
            except ValueError as e:
                await _send_error(websocket, f"bad request: {e}")
                continue
            except Exception:
                logger.exception("policy failed on a request from %s", websocket.remote_address)
                await _send_error(websocket, "internal error while running the policy (see the server log)")
                await websocket.close(websockets.frames.CloseCode.INTERNAL_ERROR, "internal error")
                return
            if prev_total_time is not None:
                result["server_timing"]["prev_total_ms"] = 1000 * prev_total_time
            try:
                await websocket.send(packer.pack(result))
            except websockets.ConnectionClosed:  # the client left mid-request: nothing to do
                return
            prev_total_time = time.monotonic() - start


async def _send_error(websocket: _server.ServerConnection, text: str) -> None:
    """openpi-client raises a RuntimeError with this text when it receives a text frame."""
    with contextlib.suppress(websockets.ConnectionClosed):
        await websocket.send(text)


def model_worker() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="softarm-model")


def read_api_key(path: str | None) -> str | None:
    """The key from `path` (its first line), else from $SOFTARM_API_KEY, else None."""
    key = (Path(path).read_text().strip().splitlines() or [""])[0] if path else os.environ.get(API_KEY_ENV, "")
    if path and not key:
        raise ValueError(f"--api-key-file {path} is empty")
    return key.strip() or None


def exposure_warning(host: str, port: int, api_key: str | None) -> str | None:
    """What to say when anyone on the network could drive the arm: a non-loopback address and no key."""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if api_key or loopback:
        return None
    return (f"no API key: anyone who can reach {host}:{port} can drive the arm "
            f"(pass --api-key-file, set {API_KEY_ENV}, or bind 127.0.0.1)")  # fmt: skip


def serve(
    checkpoint: str,
    host: str = "0.0.0.0",
    port: int = 8000,
    device: str = "auto",
    api_key_file: str | None = None,
    compile: str = "auto",
    noise_scale: float = 1.0,
    arm: str | None = None,
    num_steps: int = 10,
) -> None:
    """`arm`: serve one arm of a model of several; without it such a model serves every arm, each request naming
    its own (`"arm": NAME`)."""
    from softarm.policy import (
        MultiArmPolicy,
        SoftArmPolicy,
        check_checkpoint,
        checked_noise_scale,
        checked_num_steps,
        checkpoint_arms,
    )

    api_key = read_api_key(api_key_file)
    if warning := exposure_warning(host, port, api_key):
        logger.warning(warning)
    checked_noise_scale(noise_scale)  # mistakes first, before any loading
    checked_num_steps(num_steps)
    check_checkpoint(checkpoint)
    model_thread = model_worker()
    options = {"device": device, "compile": compile, "noise_scale": noise_scale, "num_steps": num_steps}
    if arm is None and checkpoint_arms(checkpoint):
        load = functools.partial(MultiArmPolicy.from_checkpoint, **options)
    else:
        load = functools.partial(SoftArmPolicy.from_checkpoint, arm=arm, **options)
    policy = model_thread.submit(load, checkpoint).result()
    logger.info("warming up (compile mode %s) ...", policy.compile_mode or "none: eager")
    logger.info("warm-up took %.1f s; the first request will not pay it", model_thread.submit(policy.warm_up).result())
    logger.info("serving %s on %s:%d%s", checkpoint, host, port, " (API key required)" if api_key else "")
    server = SoftArmPolicyServer(policy, host, port, policy.metadata, api_key=api_key, model_thread=model_thread)
    server.serve_forever()
