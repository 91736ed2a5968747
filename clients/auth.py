"""Login sessions: an access token obtained with a username and password, renewed before it expires.

For services that hand out short-lived tokens (VizioSense, Haut.ai). ``LoginSession`` logs in on first
use, renews ``renew_margin`` seconds before expiry (at most half the token's lifetime) with the refresh
token, falls back to a fresh login when the refresh is refused, and renews once however many calls wait
(single flight). Sessions built with the same ``share_key`` share their tokens and their renewals across
client instances, event loops and threads of one process, so code that opens one client per call (Prefect
tasks) still logs in once.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import json
import math
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ApiError, OutcomeUnknownError
from .redaction import register_secret
from .timing import SYSTEM_CLOCK, Clock


@dataclass(frozen=True)
class Tokens:
    """What a login or a refresh produced. Times are ``clock.time()`` seconds; tokens stay out of reprs."""

    access: str = field(repr=False)
    refresh: str | None = field(default=None, repr=False)
    expires_at: float = math.inf  # inf: the service gave no expiry
    info: Any = None  # whatever else the answer said (e.g. who logged in)
    issued_at: float = -math.inf  # set by the session: when the renewal that got these tokens started


class _Shared:
    """The tokens of one account and the renewal in flight, guarded by a thread lock (loops may differ)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: Tokens | None = None
        # A concurrent future, not an asyncio one: waiters may run on other event loops than the renewer.
        self.renewal: concurrent.futures.Future[Tokens] | None = None


class _RenewalAbandoned(Exception):
    """The task that was renewing was cancelled; a waiter takes over."""


_SHARED: dict[str, _Shared] = {}
_SHARED_LOCK = threading.Lock()
_KEY_SALT = secrets.token_bytes(16)  # per process: keys hold no reusable password hash


def share_key(*parts: str, secret: str | None = None) -> str:
    """A process-wide session key, e.g. ``share_key(base_url, username.lower(), secret=password)``.

    The secret enters as a salted hash, so a client with another (wrong) password never borrows a session.
    """
    digest = hmac.new(_KEY_SALT, (secret or "").encode(), hashlib.sha256).hexdigest()
    return "\0".join((*parts, digest))


def clear_shared_sessions() -> None:
    """Forget every shared login session of this process (tests; after a password change)."""
    with _SHARED_LOCK:
        states = list(_SHARED.values())
        _SHARED.clear()
    for state in states:
        with state.lock:
            state.tokens = None


def jwt_expiry(token: str) -> float | None:
    """``exp`` of a JWT access token (e.g. Firebase tokens); None for opaque tokens."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(payload["exp"])
    except (ValueError, KeyError, TypeError):
        return None


class LoginSession:
    """The access token of one account, renewed before it expires.

    ``login()`` and ``refresh(refresh_token)`` are the client's calls that obtain ``Tokens`` (the session
    stamps ``issued_at`` and registers the token values as secrets). A refresh that is refused (a 4xx, a
    bad answer, or an unknown outcome: the refresh token may be spent) is followed by a login; a service
    outage (429/5xx, unreachable, already retried by the transport) propagates, as a login would meet it
    too. Concurrent callers share one renewal and get its tokens or its error. ``logins`` and
    ``refreshes`` count the calls this session made.
    """

    def __init__(
        self,
        login: Callable[[], Awaitable[Tokens]],
        refresh: Callable[[str], Awaitable[Tokens]] | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        renew_margin: float = 60.0,
        share_key: str | None = None,
    ) -> None:
        self._login = login
        self._refresh = refresh
        self.clock = clock
        self.renew_margin = max(0.0, renew_margin)
        self.logins = 0
        self.refreshes = 0
        if share_key is None:
            self._shared = _Shared()
        else:
            with _SHARED_LOCK:
                self._shared = _SHARED.setdefault(share_key, _Shared())

    @property
    def tokens(self) -> Tokens | None:
        """The current tokens (possibly due for renewal), or None before the first login."""
        return self._shared.tokens

    def renew_at(self, tokens: Tokens) -> float:
        """When ``tokens`` are due: ``renew_margin`` before expiry, at most half their lifetime."""
        lifetime = max(0.0, tokens.expires_at - tokens.issued_at)
        return tokens.expires_at - min(self.renew_margin, lifetime / 2)

    async def access_token(self) -> str:
        """A valid access token: the current one, or one from a renewal (joined if one is in flight)."""
        return (await self._single_flight(self._renew, reuse=True)).access

    async def login(self) -> Tokens:
        """Log in now (or join the renewal in flight: its tokens are just as fresh)."""
        return await self._single_flight(lambda _: self._do_login(), reuse=False)

    async def refresh(self) -> Tokens:
        """Renew now: with the refresh token if there is one, else (or when it is refused) by logging in."""
        return await self._single_flight(self._renew, reuse=False)

    def invalidate(self, token: str) -> None:
        """The service refused ``token``: renew on next use, unless a renewal already replaced it."""
        with self._shared.lock:
            tokens = self._shared.tokens
            if tokens is not None and tokens.access == token:
                self._shared.tokens = replace(tokens, expires_at=-math.inf)

    # --- internals ------------------------------------------------------------------------------------
    async def _single_flight(
        self, renew: Callable[[Tokens | None], Awaitable[Tokens]], reuse: bool
    ) -> Tokens:
        shared = self._shared
        while True:
            with shared.lock:
                current = shared.tokens
                if reuse and current is not None and self.clock.time() < self.renew_at(current):
                    return current
                flight, lead = shared.renewal, shared.renewal is None
                if lead:
                    flight = shared.renewal = concurrent.futures.Future()
                    flight.set_running_or_notify_cancel()  # a cancelled waiter cannot cancel it for all
            assert flight is not None
            if lead:
                return await self._lead(flight, renew, current)
            try:
                return await asyncio.wrap_future(flight)
            except _RenewalAbandoned:
                continue

    async def _lead(
        self,
        flight: concurrent.futures.Future[Tokens],
        renew: Callable[[Tokens | None], Awaitable[Tokens]],
        current: Tokens | None,
    ) -> Tokens:
        shared = self._shared
        try:
            started = self.clock.time()
            tokens = replace(await renew(current), issued_at=started)
            register_secret(tokens.access)
            register_secret(tokens.refresh)
        except BaseException as exc:
            with shared.lock:
                shared.renewal = None
            flight.set_exception(exc if isinstance(exc, Exception) else _RenewalAbandoned())
            raise
        with shared.lock:
            shared.tokens, shared.renewal = tokens, None
        flight.set_result(tokens)
        return tokens

    async def _renew(self, current: Tokens | None) -> Tokens:
        if current is not None and current.refresh and self._refresh is not None:
            self.refreshes += 1
            try:
                return await self._refresh(current.refresh)
            except ApiError as exc:
                if exc.retryable and not isinstance(exc, OutcomeUnknownError):
                    raise  # an outage: a login would fail the same way
        return await self._do_login()

    async def _do_login(self) -> Tokens:
        self.logins += 1
        return await self._login()
