"""Wire-timed pacing (clients/wire.py) over real HTTP: requests held at the socket and spaced from the answer's
first byte, against the Miniviz emulator, which stamps arrivals and answers 429 to anything too close."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from clients.miniviz import MinivizClient
from clients.transport import HttpSettings
from clients.wire import TimedNetworkBackend, time_the_wire
from tests.conftest import TEST_TIME_SCALE, start_service

pytestmark = pytest.mark.integration
TS = 1_731_129_600_000


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with start_service("miniviz", tmp_path_factory) as emu:
        yield emu["miniviz"]


def test_only_a_plain_httpx_transport_gets_wire_timing():
    transport = httpx.AsyncHTTPTransport()
    assert time_the_wire(transport) and time_the_wire(transport)  # wrapped once, however often asked
    backend = transport._pool._network_backend
    assert isinstance(backend, TimedNetworkBackend) and not isinstance(backend._inner, TimedNetworkBackend)
    assert not time_the_wire(httpx.MockTransport(lambda request: httpx.Response(200)))

    class Custom(httpx.AsyncHTTPTransport):  # may route differently: left alone
        pass

    assert not time_the_wire(Custom())


async def test_paced_sends_are_timed_at_the_wire_and_never_meet_a_429(svc):
    project = next(p for p in svc.credentials["projects"] if p["plan"] == "pro")
    svc.reset()
    async with MinivizClient(
        project["project_id"], project["token"], svc.url, data_interval=15 * TEST_TIME_SCALE
    ) as client:
        # concurrent callers queue on the pacer; every request is held at the socket until its slot
        await asyncio.gather(*(client.send_data("meter_1", {"v": i}, TS + i) for i in range(10)))
        stats = client.data_pacer.stats
    got = svc.received()
    assert got["accepted"] == {"data": 10} and got["rejected_by_status"] == {}
    assert (stats.calls, stats.wire_timed) == (10, 10)


async def test_a_mock_transport_is_paced_around_the_whole_call():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": f"e{len(seen)}"})

    client = MinivizClient(
        "p",
        "t",
        "http://miniviz.test",
        data_interval=0.01,
        settings=HttpSettings(transport=httpx.MockTransport(answer)),
    )
    async with client:
        for i in range(3):
            await client.send_data("x", {"v": i}, TS + i)
    assert len(seen) == 3 and client.data_pacer.stats.wire_timed == 0
