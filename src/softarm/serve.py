"""`softarm serve`: SoftArmPolicy over openpi's websocket protocol, so openpi-client talks to it unchanged.

The protocol is openpi's: the metadata as the first frame, then one msgpack-numpy observation in, one action chunk
out (with `server_timing`), and GET /healthz answered with 200. openpi's own server answers any error with the full
traceback and closes the connection. A robot needs less and more:
a bad request (missing key, wrong shape or dtype, NaN, oversized image, bytes that are not msgpack) gets one text
frame that says what is wrong, and the connection stays open; an internal error is logged here and the client only
learns that it happened. Every connection is its own task, so one client's trouble never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time

from openpi_client import base_policy, msgpack_numpy
import websockets
import websockets.asyncio.server as _server
import websockets.frames

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 2**20  # three full-HD frames fit; a runaway client does not


class SoftArmPolicyServer:
    def __init__(
        self, policy: base_policy.BasePolicy, host: str = "0.0.0.0", port: int = 8000, metadata: dict | None = None
    ) -> None:
        self.policy, self.host, self.port, self.metadata = policy, host, port, metadata or {}
        self.server: _server.Server | None = None

    def serve_forever(self) -> None:
        asyncio.run(self.run())

    async def run(self, ready: asyncio.Event | None = None) -> None:
        async with _server.serve(
            self._handler,
            self.host,
            self.port,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            process_request=_health_check,
        ) as server:
            self.server = server
            if ready is not None:
                ready.set()
            await server.serve_forever()

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
                infer_start = time.monotonic()
                result = self.policy.infer(obs)
                result["server_timing"] = {"infer_ms": 1000 * (time.monotonic() - infer_start)}
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


def _health_check(connection: _server.ServerConnection, request: _server.Request) -> _server.Response | None:
    """GET /healthz: 200 without a websocket upgrade (load balancers, the robot's watchdog); anything else goes on."""
    return connection.respond(http.HTTPStatus.OK, "OK\n") if request.path == "/healthz" else None


async def _send_error(websocket: _server.ServerConnection, text: str) -> None:
    """openpi-client raises a RuntimeError with this text when it receives a text frame."""
    with contextlib.suppress(websockets.ConnectionClosed):
        await websocket.send(text)


def serve(checkpoint: str, host: str = "0.0.0.0", port: int = 8000, device: str = "auto") -> None:
    from softarm.policy import SoftArmPolicy

    policy = SoftArmPolicy.from_checkpoint(checkpoint, device=device)
    logger.info("serving %s on %s:%d", checkpoint, host, port)
    SoftArmPolicyServer(policy, host=host, port=port, metadata=policy.metadata).serve_forever()
