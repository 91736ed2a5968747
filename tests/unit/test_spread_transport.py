"""``clients.spread``: requests go to the least busy pool of their host, and a pool is busy until its response
is closed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from clients.aio import AiohttpTransport
from clients.spread import SpreadTransport, spread_for, spread_over_pools

API, STORAGE = "http://api.test", "https://storage.test"


def pool_maker(
    seen: list[tuple[str, int]], gate: asyncio.Event | None = None
) -> Callable[[], httpx.MockTransport]:
    """Makes mock pools numbered per host in creation order; each records ``(host, its number)``."""
    made: dict[str, int] = {}

    def make() -> httpx.MockTransport:
        number: dict[str, int] = {}

        async def handle(request: httpx.Request) -> httpx.Response:
            host = request.url.host
            if host not in number:
                number[host] = made[host] = made.get(host, -1) + 1
            seen.append((host, number[host]))
            if gate is not None:
                await gate.wait()
            return httpx.Response(200)

        return httpx.MockTransport(handle)

    return make


async def test_concurrent_requests_spread_over_pools_then_reuse_the_first():
    seen: list[tuple[str, int]] = []
    gate = asyncio.Event()
    transport = SpreadTransport(pool_maker(seen, gate), pools=3)
    async with httpx.AsyncClient(transport=transport) as client:
        pending = [asyncio.create_task(client.get("http://api.test/")) for _ in range(4)]
        await asyncio.sleep(0.01)
        assert transport.in_flight() == {API: [2, 1, 1]}  # the 4th: with the least busy, the first of them
        gate.set()
        await asyncio.gather(*pending)
        assert transport.in_flight() == {API: [0, 0, 0]}
        seen.clear()
        for _ in range(3):  # one at a time: always the first pool (its connection is the warm one)
            await client.get("http://api.test/")
        assert seen == [("api.test", 0)] * 3


async def test_each_host_has_pools_of_its_own():
    seen: list[tuple[str, int]] = []
    gate = asyncio.Event()
    transport = SpreadTransport(pool_maker(seen, gate), pools=2)
    async with httpx.AsyncClient(transport=transport) as client:
        pending = [
            asyncio.create_task(client.get(url))
            for url in ("http://api.test/a", "https://storage.test/b", "http://api.test/c")
        ]
        await asyncio.sleep(0.01)
        assert transport.in_flight() == {API: [1, 1], STORAGE: [1, 0]}
        gate.set()
        await asyncio.gather(*pending)


async def test_a_pool_stays_busy_until_the_streamed_response_is_closed():
    seen: list[tuple[str, int]] = []
    transport = SpreadTransport(pool_maker(seen), pools=2)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        async with client.stream("GET", "/") as response:
            assert transport.in_flight() == {API: [1, 0]}
            await client.get("/")  # goes to the idle pool
            await response.aread()
        assert transport.in_flight() == {API: [0, 0]}


async def test_a_failed_request_frees_its_pool():
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    transport = SpreadTransport(lambda: httpx.MockTransport(refuse), pools=1)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")
    assert transport.in_flight() == {API: [0]}


def test_spread_for_is_aiohttp_with_one_pool_per_request_in_flight_for_large_bodies():
    transport = spread_for(5)
    assert isinstance(transport, AiohttpTransport) and transport.connections == 5
    assert isinstance(transport.fallback, SpreadTransport) and transport.fallback._size == 5
    assert spread_over_pools(0)._size == 1
    with pytest.raises(ValueError):
        SpreadTransport(httpx.MockTransport, pools=0)
