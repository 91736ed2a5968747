"""Wire timing for paced calls: the moments a request's first byte leaves and its answer's first byte arrives.

A rate-limited service stamps each request when it arrives and compares stamps. The pacer
(``clients.timing.Pacer``) can only bound those stamps by what it observes: a request cannot arrive before its
first byte left, and the service stamped it before its answer's first byte came back. Timing both at the
socket, instead of around the whole httpx call, keeps httpx's own work (building the request, parsing the
answer: most of a loopback round trip) out of the interval, and lets the request be prepared while the pacer
waits: the first byte is held here until the allowed moment.

``time_the_wire`` wraps the network backend of an ``httpx.AsyncHTTPTransport``'s connection pool (httpcore's
documented ``AsyncNetworkBackend`` interface). httpx does not expose that pool's backend as a parameter, so
this reaches one private attribute; when the layout differs (another httpx version, a mock transport) it
changes nothing and returns False, and the pacer keeps timing the whole call (safe, a little slower).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from .aio import AiohttpTransport
from .spread import SpreadTransport
from .timing import PacedCall, current_paced_call

# httpcore writes a request's head and body separately; each write through anyio costs a socket send and
# an event-loop turn (~0.3 ms measured here), and the service cannot stamp the request before its last
# piece. A paced request's pieces are therefore held and sent in one write when httpcore turns to reading
# the answer (or once this many bytes are held: large bodies stream as usual).
MAX_HELD_BYTES = 64 * 1024


class _TimedStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._held_timeout: float | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        call = current_paced_call()
        if self._held:
            await self._send_held(call)
        data = await self._inner.read(max_bytes, timeout)
        if data and call is not None:
            call.answer_arriving()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        call = current_paced_call()
        if call is None:
            if self._held:
                await self._send_held(None)
            await self._inner.write(buffer, timeout)
            return
        if buffer:
            self._held.append(buffer)
            self._held_bytes += len(buffer)
            self._held_timeout = timeout
            if self._held_bytes >= MAX_HELD_BYTES:
                await self._send_held(call)

    async def _send_held(self, call: PacedCall | None) -> None:
        data, timeout = b"".join(self._held), self._held_timeout
        self._held.clear()
        self._held_bytes = 0
        if call is not None:
            await call.request_starting()  # before the inner write: its timeout does not cover the wait
        await self._inner.write(data, timeout)

    async def aclose(self) -> None:
        self._held.clear()
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _TimedStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class TimedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Wraps another backend; its streams report to the running task's paced call (if any)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _TimedStream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _TimedStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def time_the_wire(transport: httpx.AsyncBaseTransport) -> bool:
    """Make ``transport``'s connections report wire times to paced calls; True when it could.

    A ``SpreadTransport`` (``clients.spread``) has it done to each of its pools as they are made."""
    if isinstance(transport, SpreadTransport):
        return transport.prepare_pools(time_the_wire)
    if isinstance(transport, AiohttpTransport):
        time_the_wire(transport.fallback)  # the large bodies it passes on
        return transport.time_the_wire()
    if type(transport) is not httpx.AsyncHTTPTransport:
        return False
    pool = getattr(transport, "_pool", None)
    if type(pool) is not httpcore.AsyncConnectionPool or pool.connections:
        return False  # a proxy pool, or connections already made with the plain backend
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.AsyncNetworkBackend):
        return False
    if not isinstance(backend, TimedNetworkBackend):
        pool._network_backend = TimedNetworkBackend(backend)
    return True
