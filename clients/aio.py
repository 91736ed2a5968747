"""An httpx transport that sends through aiohttp: httpx stays the API, aiohttp does the HTTP/1.1 work.

Why: per request, httpx's own transport (httpcore over anyio) costs the client several times the CPU of
aiohttp's C-accelerated connection handling (docs/performance.md). ``AiohttpTransport`` is a plain
``httpx.AsyncBaseTransport``: the clients' retries, pacing, redaction and error handling stay as they are
(``clients/transport.py``), and it keeps their guarantees:

- **Errors say whether the request may have been sent.** aiohttp's errors become httpx's:
  ``ConnectError``/``ConnectTimeout`` only when nothing was sent (no connection, or none free in time), and
  ``ReadTimeout``/``RemoteProtocolError``/``ReadError`` otherwise, so a broken POST still ends in
  ``OutcomeUnknownError``. aiohttp's own silent retry of idempotent requests is turned off: every retry is the
  client's (counted, logged, backed off).
- **Timeouts**: httpx's connect timeout bounds connecting, its pool timeout getting a connection (waiting for
  a free one and connecting), its read timeout every read. aiohttp has
  no write timeout, so only small in-memory bodies (``MAX_BODY``, far below the socket's write buffer, so
  the write cannot stall and the read timeout covers the request from its last byte) go through aiohttp;
  larger or streamed bodies go through ``fallback``, an httpx transport, with httpx's write timeout.
- **Pacing at the socket** (``clients/wire.py``): once ``time_the_wire()`` is called, a paced request's
  bytes wait, after its connection is ready, until the pacer's moment; the answer's arrival is taken as soon
  as its head is in.
- **Cookies and redirects** stay httpx's (aiohttp keeps no cookies and follows nothing), and the request
  goes out with exactly httpx's headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

from .redaction import install_log_redaction
from .timing import current_paced_call

__all__ = ["MAX_BODY", "AiohttpTransport"]

# Bodies up to this size go through aiohttp: asyncio buffers a write this small at once (its high-water mark
# is 64 KiB), so no write can stall where httpx would have timed it out.
MAX_BODY = 32 * 1024
KEEPALIVE_S = 5.0  # httpx's default keep-alive expiry
HTTP_11 = {"http_version": b"HTTP/1.1"}
# aiohttp adds these when absent; httpx already decided them (a bytes body has no Content-Type in httpx)
NOT_AUTOMATIC = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

install_log_redaction("aiohttp.client", "aiohttp.internal")  # their records may carry request URLs


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Up to ``connections`` keep-alive connections per host (aiohttp's pool), opened on first need.

    ``fallback`` carries the requests aiohttp cannot carry with httpx's guarantees (bodies over
    ``MAX_BODY`` or streamed). The aiohttp session is made on first use, on the event loop that uses it.
    """

    def __init__(
        self,
        connections: int,
        *,
        fallback: httpx.AsyncBaseTransport,
        ssl_context: Any = True,
    ) -> None:
        self.connections = max(1, connections)
        self.fallback = fallback
        self._ssl = ssl_context
        self._sessions: tuple[aiohttp.ClientSession, aiohttp.ClientSession] | None = None
        self._connector: aiohttp.TCPConnector | None = None
        self._wire_timed = False
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def time_the_wire(self) -> bool:
        """Report paced requests' wire moments (``clients.wire.time_the_wire``); False once in use."""
        if self._sessions is not None:
            return False
        self._wire_timed = True
        return True

    def _session(self, paced: bool) -> aiohttp.ClientSession:
        """The aiohttp session for a request: paced requests (when wire-timed) go through one whose traces hold
        them at the socket; both share one pool of connections."""
        if self._sessions is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self.connections, ssl=self._ssl, keepalive_timeout=KEEPALIVE_S
            )
            trace = aiohttp.TraceConfig()
            # the connection is ready and the request about to be written: hold it until its moment
            trace.on_connection_reuseconn.append(_hold_until_allowed)
            trace.on_connection_create_end.append(_hold_until_allowed)
            self._connector = connector
            self._sessions = (_new_session(connector, ()), _new_session(connector, (trace,)))
        return self._sessions[paced and self._wire_timed]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = _small_body(request)
        if body is None:
            return await self.fallback.handle_async_request(request)
        call = current_paced_call()
        headers = request.headers
        encoding = headers.encoding
        try:
            response = await self._session(call is not None).request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=CIMultiDict((k.decode(encoding), v.decode(encoding)) for k, v in headers.raw),
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request.extensions.get("timeout") or {}),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        except aiohttp.ClientError as exc:
            raise _as_httpx(exc, request) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"{type(exc).__name__}", request=request) from exc
        if call is not None:
            call.answer_arriving()
        return await _httpx_response(response, request)

    def _timeout(self, timeout: dict[str, float | None]) -> aiohttp.ClientTimeout:
        """httpx's timeouts in aiohttp's terms. aiohttp bounds the wait for a free connection and the
        connecting together: by httpx's pool timeout, never later than httpx would give up on the wait."""
        key = (timeout.get("pool"), timeout.get("connect"), timeout.get("read"))
        made = self._timeouts.get(key)
        if made is None:
            pool, connect, read = key
            made = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=pool, sock_connect=connect, sock_read=read
            )
        return made

    async def aclose(self) -> None:
        sessions, connector, self._sessions, self._connector = self._sessions, self._connector, None, None
        try:
            for session in sessions or ():
                await session.close()
            if connector is not None:
                await connector.close()
        finally:
            await self.fallback.aclose()


def _new_session(
    connector: aiohttp.TCPConnector, traces: tuple[aiohttp.TraceConfig, ...]
) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(
        connector=connector,
        connector_owner=False,  # two sessions share it (``AiohttpTransport.aclose`` closes it)
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,  # httpx decodes, as it asked for the encodings
        skip_auto_headers=NOT_AUTOMATIC,
        trace_configs=list(traces),
    )
    # aiohttp would resend an idempotent request once on a broken keep-alive connection, out of sight of
    # the client's retry policy and logs
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


async def _hold_until_allowed(_session: Any, _context: Any, _params: Any) -> None:
    call = current_paced_call()
    if call is not None:
        await call.request_starting()


def _small_body(request: httpx.Request) -> bytes | None:
    """The request's body if aiohttp may carry it (in memory, at most ``MAX_BODY``), else None."""
    try:
        content = request.content
    except httpx.RequestNotRead:  # streamed (multipart, iterators): httpx's write timeout applies
        return None
    return content if len(content) <= MAX_BODY else None


async def _httpx_response(response: aiohttp.ClientResponse, request: httpx.Request) -> httpx.Response:
    """A small body of known length is read now (its connection is free at once); others stream."""
    extensions = {**HTTP_11, "reason_phrase": (response.reason or "").encode()}
    length = response.content_length
    if length is not None and length <= MAX_BODY:
        try:
            content = await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise _as_httpx(exc, request) from exc
        except TimeoutError as exc:
            response.close()
            raise httpx.ReadTimeout(f"{type(exc).__name__}", request=request) from exc
        # given as content, httpx reads it at once, without the async iteration of a stream
        return httpx.Response(
            response.status, headers=response.raw_headers, content=content, extensions=extensions
        )
    stream = _Body(response, request)
    return httpx.Response(response.status, headers=response.raw_headers, stream=stream, extensions=extensions)


class _Body(httpx.AsyncByteStream):
    """A streamed answer: its connection is reused once the body was read through, closed otherwise."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response, self._request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            raise _as_httpx(exc, self._request) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"{type(exc).__name__}", request=self._request) from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


def _as_httpx(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    """The httpx error that says what aiohttp's says, above all whether the request may have been sent."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # no connection (or none free) in time
        cls: type[httpx.TransportError] = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerFingerprintMismatch):
        cls = httpx.ConnectError  # refused, DNS, TLS: nothing was sent
    elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        cls = httpx.UnsupportedProtocol
    elif isinstance(exc, asyncio.TimeoutError):  # sock_read: the request was sent
        cls = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        cls = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientResponseError):  # a malformed answer
        cls = httpx.RemoteProtocolError
    else:  # a reset or another break: the request may have gone out
        cls = httpx.ReadError
    return cls(message, request=request)
