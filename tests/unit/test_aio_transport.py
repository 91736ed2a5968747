"""``clients.aio.AiohttpTransport`` under the clients' rules (``clients.transport.HttpService``), over real
sockets to a tiny local HTTP server: what was sent or not decides retries, aiohttp adds and repeats nothing,
paced requests are timed at the wire, large bodies keep httpx's transport."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from clients.aio import MAX_BODY, AiohttpTransport
from clients.errors import ApiError, OutcomeUnknownError
from clients.timing import Pacer
from clients.transport import HttpService, HttpSettings, RetryPolicy
from clients.wire import time_the_wire

# the tests on the loop of the server fixture (fixtures run on the session's loop: pyproject.toml)
pytestmark = pytest.mark.asyncio(loop_scope="session")


class Server:
    """HTTP/1.1 on 127.0.0.1: ``/ok`` answers JSON, ``/drop`` closes without answering, ``/hang`` never
    answers, ``/redirect`` answers 302, ``/cookie`` sets a cookie, ``/stream`` answers a chunked body.
    Records each request's head and body, and counts connections."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                path = line.split()[1]
                self.requests.append((line, headers, body))
                if path.startswith("/drop"):
                    return
                if path.startswith("/hang"):
                    await asyncio.sleep(3600)
                writer.write(self.answer(path, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def answer(path: str, body: bytes) -> bytes:
        if path.startswith("/redirect"):
            return b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n"
        if path.startswith("/stream"):
            chunk = b"x" * 50_000
            size = f"{len(chunk):x}".encode()
            chunks = (size + b"\r\n" + chunk + b"\r\n") * 3
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        extra = b"Set-Cookie: session=abc; Path=/\r\n" if path.startswith("/cookie") else b""
        payload = json.dumps({"path": path, "received": len(body)}).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + extra
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )


@pytest.fixture
async def server():
    srv = Server()
    srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    yield srv
    srv.server.close()


def make_service(url: str, transport: httpx.AsyncBaseTransport | None = None, **settings) -> HttpService:
    retry = RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.001)
    return HttpService(url, settings=HttpSettings(retry=retry, transport=transport, **settings), seed=1)


def aio(connections: int = 4) -> AiohttpTransport:
    return AiohttpTransport(connections, fallback=httpx.AsyncHTTPTransport())


async def test_the_default_transport_is_aiohttp_and_answers(server):
    async with make_service(server.url) as svc:
        response = await svc._request("POST", "/ok", "op", json={"v": 1}, idempotent=False)
        assert isinstance(svc._http()._transport, AiohttpTransport)
    assert response.json() == {"path": "/ok", "received": len(b'{"v":1}')}
    assert response.headers["content-type"] == "application/json" and response.http_version == "HTTP/1.1"


async def test_the_request_goes_out_with_exactly_httpxs_headers(server):
    async with make_service(server.url, aio()) as svc:
        await svc._request("POST", "/ok", "op", content=b"raw", headers={"X-Trace": "1"}, idempotent=False)
    _, headers, body = server.requests[0]
    assert body == b"raw"
    assert set(headers) == {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "user-agent",
        "content-length",
        "x-trace",
    }
    assert headers["user-agent"] == "prefect-imaging-pipelines/0.1"


async def test_a_post_on_a_connection_that_breaks_after_sending_is_outcome_unknown(server):
    async with make_service(server.url, aio()) as svc:
        with pytest.raises(OutcomeUnknownError, match="may or may not have taken effect"):
            await svc._request("POST", "/drop", "create", json={}, idempotent=False)
    assert len(server.requests) == 1  # neither aiohttp nor the client sent it again


async def test_an_idempotent_call_on_a_broken_connection_is_retried_by_the_client_only(server):
    async with make_service(server.url, aio()) as svc:
        with pytest.raises(ApiError, match=r"gave up after 2 attempt\(s\): RemoteProtocolError"):
            await svc._request("GET", "/drop", "read")
    assert len(server.requests) == 2  # the client's two attempts, no hidden third from aiohttp


async def test_a_refused_connection_is_not_sent_and_is_retried_even_for_a_post(server):
    url = server.url
    server.server.close()
    await server.server.wait_closed()
    async with make_service(url, aio()) as svc:
        with pytest.raises(ApiError, match=r"gave up after 2 attempt\(s\): ConnectError") as exc:
            await svc._request("POST", "/ok", "create", json={}, idempotent=False)
    assert not isinstance(exc.value, OutcomeUnknownError)


async def test_a_read_timeout_after_sending_a_post_is_outcome_unknown(server):
    svc = make_service(server.url, aio(), timeout=httpx.Timeout(0.2))
    async with svc:
        with pytest.raises(OutcomeUnknownError, match="ReadTimeout"):
            await svc._request("POST", "/hang", "create", json={}, idempotent=False)


async def test_waiting_too_long_for_a_free_connection_is_not_sent(server):
    svc = make_service(server.url, aio(connections=1), timeout=httpx.Timeout(5.0, pool=0.2))
    async with svc:
        hanging = asyncio.create_task(svc._request("GET", "/hang", "read"))
        await asyncio.sleep(0.1)  # it holds the only connection
        with pytest.raises(ApiError, match="ConnectTimeout") as exc:
            await svc._request("POST", "/ok", "create", json={}, idempotent=False)
        assert not isinstance(exc.value, OutcomeUnknownError)
        hanging.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hanging


async def test_redirects_and_cookies_stay_httpxs(server):
    async with make_service(server.url, aio()) as svc:
        redirect = await svc._request("GET", "/redirect", "read", ok=lambda r: True)
        await svc._request("GET", "/cookie", "read")
        await svc._request("GET", "/ok", "read")
        assert svc._http().cookies.get("session") == "abc"  # httpx's jar, as before
    assert redirect.status_code == 302 and [r[0].split()[1] for r in server.requests] == [
        "/redirect",
        "/cookie",
        "/ok",
    ]
    assert server.requests[2][1].get("cookie") == "session=abc"  # sent once, by httpx


async def test_a_large_answer_streams(server):
    transport = aio()
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        async with client.stream("GET", "/stream") as response:
            chunks = [chunk async for chunk in response.aiter_bytes()]
        again = await client.get("/ok")  # the connection went back to the pool once read through
    assert sum(map(len, chunks)) == 150_000 and again.status_code == 200
    assert server.connections == 1


async def test_a_large_body_goes_through_httpxs_transport(server):
    sent_by_fallback: list[int] = []

    class Fallback(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent_by_fallback.append(len(request.content))
            return await super().handle_async_request(request)

    transport = AiohttpTransport(2, fallback=Fallback())
    async with make_service(server.url, transport) as svc:
        await svc._request("POST", "/ok", "op", content=b"x" * MAX_BODY, idempotent=False)
        big = await svc._request("POST", "/ok", "op", content=b"x" * (MAX_BODY + 1), idempotent=False)
    assert sent_by_fallback == [MAX_BODY + 1] and big.json()["received"] == MAX_BODY + 1


async def test_paced_requests_are_timed_at_the_wire(server):
    transport = aio()
    assert time_the_wire(transport)
    pacer = Pacer(0.01, wire_lead=0.005)
    async with make_service(server.url, transport) as svc:
        for _ in range(3):
            await svc._request("POST", "/ok", "op", json={}, idempotent=False, pacer=pacer)
        assert not time_the_wire(transport)  # too late once in use
    assert (pacer.stats.calls, pacer.stats.wire_timed) == (3, 3)


async def test_without_wire_timing_paced_requests_are_timed_around_the_call(server):
    pacer = Pacer(0.01)
    async with make_service(server.url, aio()) as svc:
        for _ in range(2):
            await svc._request("POST", "/ok", "op", json={}, idempotent=False, pacer=pacer)
    assert (pacer.stats.calls, pacer.stats.wire_timed) == (2, 0)
