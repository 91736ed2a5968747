"""The process-wide session registry (clients/session.py) and the blocks' session() (no network)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydantic import SecretStr

from blocks import HautCredentials, MinivizCredentials, VizioSenseCredentials
from blocks.base import SESSION_CONNECTIONS
from clients.aio import AiohttpTransport
from clients.session import SessionClosedError, close_sessions, open_sessions, session_for, session_key
from clients.spread import SpreadTransport, spread_for
from clients.wire import TimedNetworkBackend, time_the_wire

COMPANY = "6f1e9a52-3c1d-4b7e-9a0f-2d5c8e4b7a10"


class Recorder:
    """A stand-in client: records the thread and loop each call ran on, and whether it was closed."""

    made = 0

    def __init__(self) -> None:
        Recorder.made += 1
        self.calls: list[tuple[str, int]] = []
        self.closed = False
        self.label = "recorder"

    async def where(self, tag: str) -> str:
        self.calls.append((threading.current_thread().name, id(asyncio.get_running_loop())))
        return tag

    async def pages(self, n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield (i, threading.current_thread().name)

    async def block_forever(self, started: asyncio.Event | None = None) -> None:
        await asyncio.Event().wait()

    def plain(self) -> str:
        return "plain"

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def _fresh_registry():
    close_sessions()
    yield
    close_sessions()


def miniviz(token: str = "mvz-token-1", **kw) -> MinivizCredentials:
    return MinivizCredentials(project_id="p1", token=SecretStr(token), base_url="http://127.0.0.1:9", **kw)


def test_same_key_gives_the_same_session_and_one_client():
    before = Recorder.made
    first = session_for("k", Recorder)
    assert session_for("k", Recorder) is first and Recorder.made == before + 1
    assert session_for("other", Recorder) is not first and open_sessions() == 2


def test_equal_blocks_share_a_session_and_another_secret_does_not():
    a, b = miniviz(), miniviz()
    assert a.session_key() == b.session_key()
    assert a.session()._session is b.session()._session
    assert miniviz(token="mvz-token-2").session_key() != a.session_key()
    assert miniviz(data_interval_seconds=0).session_key() != a.session_key()  # another configuration
    assert open_sessions() == 1  # keys alone open nothing


@pytest.mark.parametrize(
    "block, secret",
    [
        (miniviz(token="mvz-secret-token-xyz"), "mvz-secret-token-xyz"),
        (VizioSenseCredentials(email="ops@example.org", password=SecretStr("vzs-pass-123")), "vzs-pass-123"),
        (VizioSenseCredentials(api_key=SecretStr("vzs-api-key-456")), "vzs-api-key-456"),
        (
            HautCredentials(company_id=COMPANY, private_token=SecretStr("haut-private-789")),
            "haut-private-789",
        ),
    ],
)
def test_a_key_never_holds_a_secret_in_clear(block, secret):
    key = block.session_key()
    assert secret not in key
    assert block.get_block_type_slug() in key  # the rest is readable: kind and non-secret settings


def test_session_key_hashes_secrets_and_shows_settings():
    key = session_key("kind", {"base_url": "http://x"}, ["s3cr3t"])
    assert "s3cr3t" not in key and "http://x" in key
    assert key != session_key("kind", {"base_url": "http://x"}, ["other"])


async def test_calls_from_any_loop_or_thread_run_on_the_session_loop():
    session = session_for("k", Recorder)
    client = session.view()
    assert await client.where("here") == "here"
    await asyncio.gather(client.where("a"), client.where("b"))
    # What .map does: a worker thread with a loop of its own for each task run.
    thread = threading.Thread(target=lambda: asyncio.run(client.where("thread")))
    thread.start()
    thread.join()
    assert len(session.client.calls) == 4
    assert {place for place in session.client.calls} == {session.client.calls[0]}
    assert session.client.calls[0][0] == "service-sessions"
    assert client.plain() == "plain" and client.label == "recorder"  # plain attributes read as they are


async def test_async_iterators_step_on_the_session_loop():
    client = session_for("k", Recorder).view()
    assert [item async for item in client.pages(3)] == [(i, "service-sessions") for i in range(3)]


async def test_within_runs_a_whole_engine_on_the_session_loop_with_the_client_itself():
    session = session_for("k", Recorder)

    async def engine(client: Recorder, n: int) -> list[str]:
        assert client is session.client
        return [await client.where(str(i)) for i in range(n)]

    assert await session.view().within(engine, 3) == ["0", "1", "2"]
    assert {name for name, _ in session.client.calls} == {"service-sessions"}


async def test_leaving_the_context_keeps_the_client_open():
    session = session_for("k", Recorder)
    async with session.view() as client:
        await client.where("x")
    assert not session.client.closed


async def test_cancelling_a_caller_cancels_its_call_on_the_session_loop():
    client = session_for("k", Recorder).view()
    call = asyncio.ensure_future(client.block_forever())
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_close_sessions_closes_every_client_and_refuses_later_calls():
    session = session_for("k", Recorder)
    client = session.view()
    await client.where("x")
    await asyncio.to_thread(close_sessions)
    assert session.client.closed and open_sessions() == 0
    with pytest.raises(SessionClosedError):
        await client.where("late")
    assert session_for("k", Recorder) is not session  # resolving again opens a new one


async def test_a_block_session_is_its_services_client():
    client = miniviz(data_interval_seconds=0).session()
    assert type(client._session.client).__name__ == "MinivizClient"
    assert client.project_id == "p1" and client.image_wait_time("cam") == 0


def test_parallel_connections_spread_requests_instead_of_side_by_side_clients():
    client = miniviz(parallel_connections=2).get_client()
    transport = client._http()._transport
    assert isinstance(transport, AiohttpTransport) and transport.connections == 2 * SESSION_CONNECTIONS
    assert isinstance(transport.fallback, SpreadTransport)  # large bodies: one-connection httpx pools
    single = miniviz().get_client()._http()._transport  # one: aiohttp's pool, httpx's own for large bodies
    assert single.connections == SESSION_CONNECTIONS and not isinstance(single.fallback, SpreadTransport)


def test_spread_pools_are_timed_at_the_socket_for_pacing():
    spread = spread_for(2)
    assert time_the_wire(spread) and spread._wire_timed
    pool = spread.fallback._make_pool()
    assert isinstance(pool._pool._network_backend, TimedNetworkBackend)
