"""Many requests in flight to one host: ``spread_for``, the transport of a session (``blocks/base.py``).

``spread_for(n)`` is an ``AiohttpTransport`` (``clients/aio.py``): aiohttp's pool of up to ``n`` connections per
host costs a fraction of httpcore's CPU per request and does not slow down as more requests are in flight.
The requests it passes on (bodies too large or streamed for aiohttp to carry with httpx's write timeout) go to
``spread_over_pools(n)``, the ``SpreadTransport`` below.

``SpreadTransport``: httpcore's pool does work proportional to (connections in the pool)² each time a request
starts or finishes, plus a ``poll()`` and a ``getpeername()`` per idle connection (docs/performance.md: one
``httpx.AsyncClient`` with 16-64 requests in flight spends ~2× the CPU per request it does with 4).
Measured on this 2-core machine (busy with other work), 32 requests in flight against a trivial server, client CPU per request: one pool of
16 connections ~2.1 ms, 8 pools of 4 ~1.0 ms, 16 of 2 ~0.8 ms, 32 of 1 ~0.7 ms. Each request goes to the pool
of its host with the fewest requests in flight, so none queues while another idles; every host has pools of
its own (a one-connection pool asked for another host would close its connection and open a new one), and
all pools share one SSL context (building one costs ~25 ms of CPU).

Use it as ``HttpSettings(transport=spread_for(32))``: one client, up to 32 keep-alive connections per host
(opened on first use).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Callable

import httpx

from .aio import AiohttpTransport

__all__ = ["SpreadTransport", "shared_ssl_context", "spread_for", "spread_over_pools"]

Origin = tuple[bytes, bytes, int | None]


class SpreadTransport(httpx.AsyncBaseTransport):
    """Up to ``pools`` transports per origin (scheme, host, port), made by ``make_pool`` on first need; each
    request goes to its origin's transport with the fewest requests in flight (ties: the first, so the
    connection that is already open is reused). A request counts until its response is closed."""

    def __init__(self, make_pool: Callable[[], httpx.AsyncBaseTransport], pools: int) -> None:
        if pools < 1:
            raise ValueError("at least one pool")
        self._make_pool, self._size = make_pool, pools
        self._pools: dict[Origin, list[httpx.AsyncBaseTransport]] = {}
        self._in_flight: dict[Origin, list[int]] = {}

    def prepare_pools(self, prepare: Callable[[httpx.AsyncBaseTransport], object]) -> bool:
        """Run ``prepare`` on each pool as it is made (``clients.wire.time_the_wire``); False once pools exist
        (their connections were made without it)."""
        if self._pools:
            return False
        make = self._make_pool

        def make_prepared() -> httpx.AsyncBaseTransport:
            pool = make()
            prepare(pool)
            return pool

        self._make_pool = make_prepared
        return True

    def in_flight(self) -> dict[str, list[int]]:
        """Requests under way per pool, by origin (``scheme://host`` and ``:port`` if not the default)."""
        return {
            f"{s.decode()}://{h.decode()}{f':{p}' if p else ''}": list(counts)
            for (s, h, p), counts in self._in_flight.items()
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port)
        counts = self._in_flight.get(origin)
        if counts is None:
            self._pools[origin] = [self._make_pool() for _ in range(self._size)]
            counts = self._in_flight[origin] = [0] * self._size
        n = counts.index(min(counts))
        counts[n] += 1
        try:
            response = await self._pools[origin][n].handle_async_request(request)
        except BaseException:
            counts[n] -= 1
            raise
        # The connection stays busy until the body is read and the response closed.
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Release(response.stream, counts, n),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pools in self._pools.values():
            for pool in pools:
                await pool.aclose()


class _Release(httpx.AsyncByteStream):
    """A response body that gives its pool's slot back when closed (once)."""

    def __init__(
        self, stream: httpx.AsyncByteStream | httpx.SyncByteStream, counts: list[int], n: int
    ) -> None:
        self._stream, self._counts, self._n = stream, counts, n
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:  # type: ignore[union-attr]
            yield chunk

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._counts[self._n] -= 1
        await self._stream.aclose()  # type: ignore[union-attr]


@functools.lru_cache(maxsize=4)
def shared_ssl_context(verify: bool | str = True) -> ssl.SSLContext:
    return httpx.create_ssl_context(verify=verify)  # ~25 ms (the CA bundle): once per process


def spread_over_pools(in_flight: int, *, verify: bool | str = True) -> SpreadTransport:
    """One-connection httpx pools for ``in_flight`` concurrent requests per host (at least one), one SSL
    context."""
    ssl_context = shared_ssl_context(verify)
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return SpreadTransport(
        lambda: httpx.AsyncHTTPTransport(verify=ssl_context, limits=one), max(1, in_flight)
    )


def spread_for(in_flight: int, *, verify: bool | str = True) -> AiohttpTransport:
    """A transport for ``in_flight`` concurrent requests per host: aiohttp's pool (no per-pool cost to
    spread away, ``clients/aio.py``), with one-connection httpx pools for the large or streamed bodies."""
    return AiohttpTransport(
        in_flight,
        fallback=spread_over_pools(in_flight, verify=verify),
        ssl_context=shared_ssl_context(verify),
    )
