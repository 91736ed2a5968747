"""The HTTP behaviour every client shares: timeouts, pooled connections, retries, pacing, redaction.

Retries: connect errors, 429, 502, 503 and 504, with exponential backoff and jitter, honouring
``Retry-After``, bounded in attempts and in total time. Other 4xx are never retried. A connection that
breaks *after* a request was sent is retried only for idempotent operations; otherwise the caller gets
``OutcomeUnknownError`` (a retry could duplicate the side effect).
"""

from __future__ import annotations

import email.utils
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from .aio import AiohttpTransport
from .errors import ApiError, AuthError, NotFoundError, OutcomeUnknownError, RateLimitedError
from .redaction import install_log_redaction, redact, register_secret
from .spread import shared_ssl_context, spread_for
from .timing import SYSTEM_CLOCK, Clock, Pacer

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MAX_CACHED_URLS = 256


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Delays are ``base_delay * 2**n`` capped at ``max_delay``, times a jitter factor
    drawn from ``[1 - jitter, 1]``; a ``Retry-After`` from the service replaces the computed delay."""

    max_attempts: int = 6
    max_elapsed: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.5
    retry_statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        delay = min(self.max_delay, self.base_delay * 2 ** (retry_number - 1))
        return delay * rng.uniform(1 - self.jitter, 1.0)


NO_RETRY = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds (decimals accepted) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass
class HttpSettings:
    """Connection settings of one client instance."""

    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(30.0, connect=10.0))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Connections per host: ``pool_size * max_connections_per_client`` (``clients.spread.spread_for`` above 1).
    # Requests go through aiohttp under httpx (clients/aio.py); the large or streamed bodies through httpx's
    # own pools, which get slower with many requests in flight on one pool (docs/performance.md).
    pool_size: int = 1
    max_connections_per_client: int = 16
    transport: httpx.AsyncBaseTransport | None = None  # tests inject a MockTransport here


class HttpService:
    """Base of the service clients: owns the httpx clients and performs every request.

    Subclasses set ``service`` and call ``self._request(...)``; they never touch httpx directly. Unless
    ``HttpSettings.transport`` says otherwise, httpx sends through aiohttp (``clients.aio``).
    """

    service = "http"

    def __init__(
        self,
        base_url: str,
        *,
        settings: HttpSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        secrets: tuple[str | None, ...] = (),
        seed: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.settings = settings or HttpSettings()
        self.clock = clock
        self.logger = logging.getLogger(f"clients.{self.service}")
        for secret in secrets:
            register_secret(secret)
        install_log_redaction(self.logger.name)
        self._rng = random.Random(seed)
        self._client: httpx.AsyncClient | None = None
        self._urls: dict[str, httpx.URL] = {}

    # --- lifecycle --------------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.settings
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=s.timeout,
                transport=self._wrap_transport(s.transport or self._default_transport()),
                headers={"User-Agent": "prefect-imaging-pipelines/0.1"},
            )
            if isinstance(getattr(self._client, "_cookies", None), httpx.Cookies):
                self._client._cookies = _SetCookiesOnly(self._client.cookies)
        return self._client

    def _default_transport(self) -> httpx.AsyncBaseTransport:
        s = self.settings
        if s.pool_size > 1:  # many requests in flight: the one spreading mechanism (clients/spread.py)
            return spread_for(s.pool_size * s.max_connections_per_client)
        n, ssl_context = s.max_connections_per_client, shared_ssl_context()
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        # aiohttp carries the requests (clients/aio.py); httpx's own pool the large or streamed bodies
        fallback = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits)
        return AiohttpTransport(n, fallback=fallback, ssl_context=ssl_context)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:  # never shows credentials
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # --- hooks for subclasses ---------------------------------------------------------------------
    def _wrap_transport(self, transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return transport

    async def _auth_headers(self) -> dict[str, str]:
        return {}

    def _error_detail(self, response: httpx.Response) -> Any:
        """The service's error message from a response body (subclasses know the shape)."""
        try:
            return response.json()
        except ValueError:
            return response.text[:500]

    async def _on_auth_failure(self, response: httpx.Response) -> bool:
        """Called on 401/403-style answers; return True to retry once (e.g. after re-login)."""
        return False

    def _is_auth_failure(self, response: httpx.Response) -> bool:
        return response.status_code in (401, 403)

    def _absolute(self, path: str) -> httpx.URL:
        """A path on the base URL made absolute here, as httpx would join it, and parsed once: httpx parses
        a URL string on every request (a relative one twice, ~35 µs, several % of a busy request loop).
        Absolute URLs are taken as given."""
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= MAX_CACHED_URLS:  # paths with ids: keep the recent ones
                self._urls.clear()
            absolute = (
                path if "://" in path else self.base_url + (path if path.startswith("/") else "/" + path)
            )
            url = self._urls[path] = httpx.URL(absolute)
        return url

    # --- the request loop -------------------------------------------------------------------------
    async def _token_request(
        self, path: str, operation: str, body: Mapping[str, Any], *, idempotent: bool
    ) -> tuple[httpx.Response, float]:
        """POST a login or refresh body (no Authorization header); also returns when it was sent: a token's
        lifetime counts from then."""
        sent = self.clock.time()
        response = await self._request(
            "POST", path, operation, json=body, authenticated=False, idempotent=idempotent
        )
        return response, sent

    async def _request(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        authenticated: bool = True,
        pacer: Pacer | None = None,
        ok: Callable[[httpx.Response], bool] | None = None,
        retry_on_429: bool = True,
    ) -> httpx.Response:
        """Send one logical request with retries; return the successful response or raise ``ApiError``.

        ``idempotent`` defaults to the HTTP method's semantics; read-only POSTs should pass True.
        ``pacer`` spaces calls so the service's documented rate limit is never hit. ``retry_on_429=False``
        raises a 429 at once (for callers that defer the item instead of waiting).
        """
        idempotent = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        path = self._absolute(path)
        policy = self.settings.retry
        started = self.clock.monotonic()
        attempt = 0
        reauthed = False
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            if authenticated:
                request_headers.update(await self._auth_headers())
            t0 = self.clock.monotonic()
            try:
                if pacer is not None:
                    async with pacer.slot():
                        response = await self._http().request(
                            method, path, json=json, params=params, content=content, headers=request_headers
                        )
                else:
                    response = await self._http().request(
                        method, path, json=json, params=params, content=content, headers=request_headers
                    )
            except httpx.TransportError as exc:
                # Connect errors mean nothing was sent: always safe to retry. Anything later is only
                # safe for idempotent operations.
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
                problem = f"{type(exc).__name__}: {redact(exc) or 'connection problem'}"
                if sent and not idempotent:
                    raise OutcomeUnknownError(
                        self.service,
                        operation,
                        f"connection broke after the request was sent ({problem}); it may or may not have "
                        "taken effect, so it was not retried",
                        attempts=attempt,
                        retryable=True,
                    ) from None
                delay = policy.backoff(attempt, self._rng)
                if not self._may_retry(policy, attempt, started, delay):
                    raise ApiError(
                        self.service,
                        operation,
                        f"gave up after {attempt} attempt(s): {problem}",
                        attempts=attempt,
                        retryable=True,
                    ) from None
                self.logger.debug("%s %s: %s; retrying in %.2fs", self.service, operation, problem, delay)
                await self.clock.sleep(delay)
                continue

            elapsed_ms = (self.clock.monotonic() - t0) * 1000
            self.logger.debug(
                "%s %s -> %s in %.0f ms (attempt %d)",
                self.service,
                operation,
                response.status_code,
                elapsed_ms,
                attempt,
            )
            if (ok or _is_success)(response):
                return response
            if self._is_auth_failure(response) and not reauthed and await self._on_auth_failure(response):
                reauthed = True
                continue
            status = response.status_code
            if status in policy.retry_statuses and (retry_on_429 or status != 429):
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self.clock.time())
                delay = retry_after if retry_after is not None else policy.backoff(attempt, self._rng)
                if self._may_retry(policy, attempt, started, delay):
                    self.logger.debug(
                        "%s %s: HTTP %s; retrying in %.2fs", self.service, operation, status, delay
                    )
                    if pacer is not None and (status == 429 or retry_after is not None):
                        pacer.push_back(delay)  # the service asked us to wait: every later caller waits too
                    else:  # a plain 5xx is this request's bad luck: only it backs off
                        await self.clock.sleep(delay)
                    continue
                raise self._error(response, operation, attempt, retry_after=retry_after)
            raise self._error(response, operation, attempt)

    def _may_retry(self, policy: RetryPolicy, attempt: int, started: float, delay: float) -> bool:
        """Another attempt is allowed if attempts remain and waiting ``delay`` stays within the time budget."""
        return (
            attempt < policy.max_attempts and self.clock.monotonic() - started + delay <= policy.max_elapsed
        )

    def _error(
        self, response: httpx.Response, operation: str, attempts: int, retry_after: float | None = None
    ) -> ApiError:
        status = response.status_code
        detail = self._error_detail(response)
        text = redact(detail if isinstance(detail, str) else _compact(detail))
        message = f"HTTP {status}: {text}" + (f" (after {attempts} attempts)" if attempts > 1 else "")
        if status == 404:
            cls: type[ApiError] = NotFoundError
        elif status == 429:
            cls = RateLimitedError
        elif self._is_auth_failure(response):
            cls = AuthError
        else:
            cls = ApiError
        err = cls(
            self.service,
            operation,
            message,
            status=status,
            detail=text,
            attempts=attempts,
            retryable=status in self.settings.retry.retry_statuses,
        )
        if isinstance(err, RateLimitedError):
            err.retry_after = retry_after
        return err


class _SetCookiesOnly(httpx.Cookies):
    """httpx reads every response into its cookie jar through urllib's cookie machinery (~10 % of a small
    request's client CPU); only a response that sets a cookie can change the jar."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


def _is_success(response: httpx.Response) -> bool:
    return 200 <= response.status_code < 300


def _compact(detail: Any) -> str:
    import json

    try:
        return json.dumps(detail, separators=(",", ":"))[:500]
    except (TypeError, ValueError):
        return str(detail)[:500]
