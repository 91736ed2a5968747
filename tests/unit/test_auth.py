"""LoginSession on a fake clock: single flight, renewal before expiry, refresh → login fallback, invalidation,
sharing across instances, event loops and threads."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import pytest

from clients.auth import LoginSession, Tokens, clear_shared_sessions, jwt_expiry, share_key
from clients.errors import ApiError, AuthError, OutcomeUnknownError
from clients.redaction import redact
from clients.timing import FakeClock


class FakeAccount:
    """Issues numbered tokens that live ``ttl`` seconds on ``clock``; counts logins and refreshes."""

    def __init__(self, clock: FakeClock, ttl: float = 3600.0) -> None:
        self.clock = clock
        self.ttl = ttl
        self.issued = 0
        self.logins = 0
        self.refreshes: list[str] = []
        self.login_error: Exception | None = None
        self.refresh_error: Exception | None = None

    def _issue(self) -> Tokens:
        self.issued += 1
        return Tokens(
            access=f"access-token-{self.issued:04d}",
            refresh=f"refresh-token-{self.issued:04d}",
            expires_at=self.clock.time() + self.ttl,
            info={"n": self.issued},
        )

    async def login(self) -> Tokens:
        self.logins += 1
        await asyncio.sleep(0.001)  # real latency: concurrent callers overlap
        if self.login_error is not None:
            raise self.login_error
        return self._issue()

    async def refresh(self, refresh_token: str) -> Tokens:
        self.refreshes.append(refresh_token)
        await asyncio.sleep(0.001)
        if self.refresh_error is not None:
            raise self.refresh_error
        return self._issue()


def session(account: FakeAccount, **kw) -> LoginSession:
    return LoginSession(account.login, account.refresh, clock=account.clock, **kw)


@pytest.fixture(autouse=True)
def _sessions():
    clear_shared_sessions()
    yield
    clear_shared_sessions()


async def test_twenty_concurrent_callers_share_one_login_then_one_refresh():
    account = FakeAccount(FakeClock())
    s = session(account)
    tokens = await asyncio.gather(*(s.access_token() for _ in range(20)))
    assert set(tokens) == {"access-token-0001"} and account.logins == 1 and s.logins == 1
    account.clock.now += 3590  # inside the 60 s margin
    tokens = await asyncio.gather(*(s.access_token() for _ in range(20)))
    assert set(tokens) == {"access-token-0002"}
    assert account.refreshes == ["refresh-token-0001"] and account.logins == 1
    assert (s.logins, s.refreshes) == (1, 1)


async def test_renews_renew_margin_before_expiry():
    account = FakeAccount(FakeClock(start=0))
    s = session(account, renew_margin=60)
    assert await s.access_token() == "access-token-0001"
    assert s.renew_at(s.tokens) == 3540
    account.clock.now = 3539.9
    assert await s.access_token() == "access-token-0001"
    account.clock.now = 3540
    assert await s.access_token() == "access-token-0002" and account.refreshes == ["refresh-token-0001"]


async def test_short_lived_token_renews_at_half_its_lifetime():
    account = FakeAccount(FakeClock(start=0), ttl=60)
    s = session(account, renew_margin=300)
    await s.access_token()
    account.clock.now = 29.9
    assert await s.access_token() == "access-token-0001"
    account.clock.now = 30
    assert await s.access_token() == "access-token-0002"


async def test_refused_refresh_falls_back_to_a_login():
    account = FakeAccount(FakeClock())
    s = session(account)
    await s.access_token()
    account.refresh_error = AuthError("svc", "refresh", "HTTP 401: token expired", status=401)
    account.clock.now += 3600
    assert await s.access_token() == "access-token-0002"
    assert (account.logins, len(account.refreshes)) == (2, 1) and (s.logins, s.refreshes) == (2, 1)


async def test_refresh_with_unknown_outcome_falls_back_to_a_login():
    account = FakeAccount(FakeClock())
    s = session(account)
    await s.access_token()
    account.refresh_error = OutcomeUnknownError("svc", "refresh", "connection broke", retryable=True)
    account.clock.now += 3600
    assert await s.access_token() == "access-token-0002" and account.logins == 2


async def test_outage_during_refresh_is_raised_without_a_login():
    account = FakeAccount(FakeClock())
    s = session(account)
    await s.access_token()
    account.refresh_error = ApiError("svc", "refresh", "HTTP 503", status=503, retryable=True)
    account.clock.now += 3600
    with pytest.raises(ApiError, match="HTTP 503"):
        await s.access_token()
    assert account.logins == 1
    account.refresh_error = None  # the next call tries again
    assert await s.access_token() == "access-token-0002"


async def test_failed_login_fails_every_waiter_once_then_is_retried():
    account = FakeAccount(FakeClock())
    account.login_error = AuthError("svc", "login", "HTTP 401: Invalid credentials", status=401)
    s = session(account)
    results = await asyncio.gather(*(s.access_token() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, AuthError) and r.status == 401 for r in results) and account.logins == 1
    account.login_error = None
    assert await s.access_token() == "access-token-0001" and account.logins == 2


async def test_invalidate_renews_only_the_refused_token():
    account = FakeAccount(FakeClock())
    s = session(account)
    await s.access_token()
    s.invalidate("access-token-0001")
    assert await s.access_token() == "access-token-0002" and account.refreshes == ["refresh-token-0001"]
    s.invalidate("access-token-0001")  # a late refusal of the old token: already replaced
    assert await s.access_token() == "access-token-0002" and len(account.refreshes) == 1


async def test_explicit_login_and_refresh_renew_now():
    account = FakeAccount(FakeClock())
    s = session(account)
    assert (await s.refresh()).info == {"n": 1} and account.logins == 1  # nothing to refresh yet: login
    assert (await s.refresh()).access == "access-token-0002" and account.refreshes == ["refresh-token-0001"]
    assert (await s.login()).access == "access-token-0003" and account.logins == 2
    assert await s.access_token() == "access-token-0003"


async def test_session_without_refresh_logs_in_again():
    account = FakeAccount(FakeClock())
    s = LoginSession(account.login, clock=account.clock)
    await s.access_token()
    account.clock.now += 3600
    assert await s.access_token() == "access-token-0002" and account.logins == 2


async def test_tokens_are_registered_as_secrets_and_kept_out_of_reprs():
    account = FakeAccount(FakeClock())
    s = session(account)
    await s.access_token()
    assert redact("Bearer access-token-0001 / refresh-token-0001") == "Bearer *** / ***"
    assert "access-token-0001" not in repr(s.tokens) and "refresh-token-0001" not in repr(s.tokens)


async def test_cancelled_renewer_hands_over_to_a_waiter():
    account = FakeAccount(FakeClock())
    gate = asyncio.Event()
    calls = 0

    async def login() -> Tokens:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()  # the first login hangs until cancelled
        return Tokens(access=f"access-token-{calls:04d}", expires_at=account.clock.time() + 3600)

    s = LoginSession(login, clock=account.clock)
    first = asyncio.create_task(s.access_token())
    second = asyncio.create_task(s.access_token())
    for _ in range(3):
        await asyncio.sleep(0)
    first.cancel()
    assert await second == "access-token-0002" and calls == 2
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_sessions_with_one_key_share_tokens_and_renewals():
    account = FakeAccount(FakeClock())
    key = share_key("https://svc.test", "u@x.org", secret="pw-secret-1")
    a, b = session(account, share_key=key), session(account, share_key=key)
    tokens = await asyncio.gather(*(s.access_token() for s in (a, b) for _ in range(10)))
    assert set(tokens) == {"access-token-0001"} and account.logins == 1
    assert a.logins + b.logins == 1
    a.invalidate("access-token-0001")
    assert await b.access_token() == "access-token-0002" and len(account.refreshes) == 1
    assert await session(account, share_key=key).access_token() == "access-token-0002"  # a third client
    assert await session(account).access_token() == "access-token-0003"  # no key: its own session


async def test_another_password_never_borrows_a_session():
    account = FakeAccount(FakeClock())
    right = share_key("https://svc.test", "u@x.org", secret="pw-secret-1")
    wrong = share_key("https://svc.test", "u@x.org", secret="pw-wrong-22")
    assert right != wrong and "pw-secret-1" not in right
    await session(account, share_key=right).access_token()
    assert await session(account, share_key=wrong).access_token() == "access-token-0002"
    assert account.logins == 2


def test_sessions_on_other_event_loops_share_one_login():
    clock = FakeClock()
    key = share_key("https://svc.test", "u@x.org", secret="pw-secret-1")
    started, release = threading.Event(), threading.Event()
    logins: list[str] = []

    async def login() -> Tokens:
        logins.append(threading.current_thread().name)
        started.set()
        await asyncio.to_thread(release.wait, 10)  # hold the renewal while the other thread arrives
        return Tokens(access="access-token-0001", expires_at=clock.time() + 3600)

    results: dict[str, str] = {}

    def run(name: str) -> None:
        results[name] = asyncio.run(LoginSession(login, clock=clock, share_key=key).access_token())

    first = threading.Thread(target=run, args=("first",), name="first")
    second = threading.Thread(target=run, args=("second",), name="second")
    first.start()
    assert started.wait(10)
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert results == {"first": "access-token-0001", "second": "access-token-0001"}
    assert logins == ["first"]


def test_jwt_expiry_reads_exp_and_ignores_opaque_tokens():
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    token = f"{part({'alg': 'RS256'})}.{part({'exp': 1_700_003_600, 'sub': 'u'})}.c2ln"
    assert jwt_expiry(token) == 1_700_003_600
    assert jwt_expiry("opaque-token") is None and jwt_expiry("a.b.c") is None
