"""Retry, pacing and redaction rules shared by every client, on a fake clock and a mock transport."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from clients.errors import (
    ApiError,
    AuthError,
    InputError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitedError,
)
from clients.redaction import error_text, redact, register_secret
from clients.timing import FakeClock, KeyedPacer, Pacer, current_paced_call
from clients.transport import HttpService, HttpSettings, RetryPolicy, parse_retry_after


class Scripted:
    """A mock transport answering from a script: each item is a status, (status, headers) or an exception."""

    def __init__(self, *script):
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        status, headers = item if isinstance(item, tuple) else (item, {})
        return httpx.Response(status, headers=headers, json={"detail": f"status {status}"})


def service(script: Scripted, clock=None, **policy) -> HttpService:
    settings = HttpSettings(transport=httpx.MockTransport(script), retry=RetryPolicy(**policy))
    return HttpService("http://svc.test", settings=settings, clock=clock or FakeClock(), seed=1)


async def test_retries_503_with_backoff_then_succeeds():
    clock = FakeClock()
    script = Scripted(503, 502, 504, 200)
    r = await service(script, clock)._request("POST", "/x", "op", idempotent=False)
    assert r.status_code == 200 and len(script.requests) == 4
    assert len(clock.sleeps) == 3
    assert (
        clock.sleeps[0] <= 0.5 and clock.sleeps[1] <= 1.0 and clock.sleeps[2] <= 2.0
    )  # exponential, jittered
    assert all(s >= d * 0.5 for s, d in zip(clock.sleeps, (0.5, 1.0, 2.0), strict=True))


async def test_honours_retry_after_on_429():
    clock = FakeClock()
    script = Scripted((429, {"Retry-After": "7"}), 200)
    await service(script, clock)._request("GET", "/x", "op")
    assert clock.sleeps == [7.0]


@pytest.mark.parametrize(
    "status,error",
    [(400, ApiError), (404, NotFoundError), (401, AuthError), (403, AuthError), (409, ApiError)],
)
async def test_other_4xx_are_not_retried(status, error):
    script = Scripted(status, 200)
    with pytest.raises(error) as exc:
        await service(script)._request("GET", "/x", "get_thing")
    assert len(script.requests) == 1
    assert exc.value.status == status and f"HTTP {status}" in str(exc.value) and "get_thing" in str(exc.value)


async def test_gives_up_after_max_attempts():
    script = Scripted(503)
    with pytest.raises(ApiError, match=r"after 3 attempts") as exc:
        await service(script, max_attempts=3)._request("GET", "/x", "op")
    assert exc.value.retryable and len(script.requests) == 3


async def test_gives_up_when_the_time_budget_would_be_exceeded():
    script = Scripted((429, {"Retry-After": "100"}), 200)
    with pytest.raises(RateLimitedError) as exc:
        await service(script, max_elapsed=30)._request("GET", "/x", "op")
    assert exc.value.retry_after == 100 and len(script.requests) == 1


async def test_connect_errors_are_retried_even_for_non_idempotent_calls():
    script = Scripted(httpx.ConnectError("refused"), 201)
    r = await service(script)._request("POST", "/x", "create", idempotent=False)
    assert r.status_code == 201 and len(script.requests) == 2


async def test_broken_connection_after_sending_a_post_is_not_retried():
    script = Scripted(httpx.RemoteProtocolError("Server disconnected"), 200)
    with pytest.raises(OutcomeUnknownError, match="may or may not have taken effect"):
        await service(script)._request("POST", "/x", "create", idempotent=False)
    assert len(script.requests) == 1


async def test_broken_connection_on_an_idempotent_call_is_retried():
    script = Scripted(httpx.ReadError("reset"), 200)
    r = await service(script)._request("POST", "/status", "status", idempotent=True)
    assert r.status_code == 200 and len(script.requests) == 2


@pytest.mark.parametrize(
    "value,expected",
    [("3", 3.0), ("0.250", 0.25), ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0), ("soon", None), (None, None)],
)
def test_parse_retry_after(value, expected):
    from email.utils import parsedate_to_datetime

    now = parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after(value, now) == expected


async def test_pacer_spaces_calls_from_the_end_of_the_previous_one():
    clock = FakeClock(start=0)
    pacer = Pacer(15, clock)
    starts = []
    for _ in range(3):
        async with pacer.slot():
            starts.append(clock.monotonic())
            await clock.sleep(1)  # the call itself takes 1 s
    assert starts == [0, 16, 32]


async def test_pacer_with_zero_interval_lets_calls_overlap():
    pacer = Pacer(0)
    inside = 0
    peak = 0

    async def call():
        nonlocal inside, peak
        async with pacer.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(call() for _ in range(5)))
    assert peak == 5


async def test_keyed_pacer_is_independent_per_key():
    clock = FakeClock(start=0)
    pacers = KeyedPacer(60, clock)
    async with pacers("a").slot():
        pass
    assert pacers("a").wait_time() == 60 and pacers("b").wait_time() == 0


async def test_429_pushes_back_the_pacer_for_every_caller():
    clock = FakeClock(start=0)
    script = Scripted((429, {"Retry-After": "5"}), 200)
    pacer = Pacer(1, clock)
    await service(script, clock)._request("POST", "/x", "op", pacer=pacer)
    assert len(script.requests) == 2
    assert clock.monotonic() >= 5


class SpyPacer(Pacer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pushed_back: list[float] = []

    def push_back(self, seconds: float) -> None:
        self.pushed_back.append(seconds)
        super().push_back(seconds)


@pytest.mark.parametrize(
    "answer,everyone_waits",
    [((503, {}), False), ((503, {"Retry-After": "3"}), True), ((429, {}), True)],
)
async def test_only_a_service_request_to_wait_pauses_every_paced_caller(answer, everyone_waits):
    """A bare 503 (5 % of requests in the mixed profile) backs off its own request; a 429 or a Retry-After
    (an outage) is about the service as a whole, so every caller sharing the pacer waits."""
    answers = [answer, (200, {})]

    def next_answer(request: httpx.Request) -> httpx.Response:
        status, headers = answers.pop(0)
        return httpx.Response(status, headers=headers)

    transport = httpx.MockTransport(next_answer)
    clock = FakeClock(start=0)
    client = HttpService("http://svc.test", settings=HttpSettings(transport=transport), clock=clock, seed=1)
    pacer = SpyPacer(0, clock)  # no rate limit: callers overlap unless pushed back
    response = await client._request("POST", "/x", "op", pacer=pacer)
    assert response.status_code == 200 and not answers
    assert bool(pacer.pushed_back) == everyone_waits
    assert clock.monotonic() > 0  # the retry waited either way


async def wire_timed_call(clock, pacer, round_trip=0.5, parsing=2.0):
    """One call as a wire-timed transport makes it: first byte held until allowed, answer, then parsing."""
    async with pacer.slot():
        call = current_paced_call()
        entered = clock.monotonic()
        await call.request_starting()  # the transport, before the request's first byte
        sent = clock.monotonic()
        await clock.sleep(round_trip)
        call.answer_arriving()  # the answer's first byte
        await clock.sleep(parsing)  # httpx's own work after it: not part of the interval
    return entered, sent


async def test_wire_timed_calls_are_spaced_from_the_answer_not_the_end_of_the_call():
    clock = FakeClock(start=0)
    pacer = Pacer(15, clock, wire_lead=0.25)
    calls = [await wire_timed_call(clock, pacer) for _ in range(3)]
    # each request leaves 15 s after the previous answer began (0.5 s after it left): 0, 15.5, 31
    assert [sent for _, sent in calls] == [0, 15.5, 31]
    # from the second call on, the call is let in 0.25 s early to prepare; the wire holds the first byte
    assert [entered for entered, _ in calls] == [0, 15.25, 30.75]
    assert pacer.stats.as_dict() == {
        "calls": 3,
        "wire_timed_calls": 3,
        "mean_wire_rtt_ms": 500.0,
        "mean_late_ms": 0.0,
        "mean_idle_ms": 0.0,
    }


async def test_without_wire_timing_the_lead_is_never_used():
    clock = FakeClock(start=0)
    pacer = Pacer(15, clock, wire_lead=0.25)
    starts = []
    for _ in range(3):
        async with pacer.slot():  # a transport that does not report the wire (e.g. a mock)
            starts.append(clock.monotonic())
            await clock.sleep(1)
    assert starts == [0, 16, 32]  # the whole interval after the whole call, as before
    assert pacer.stats.wire_timed == 0


async def test_a_push_back_during_a_held_call_moves_its_first_byte():
    clock = FakeClock(start=0)
    pacer = Pacer(10, clock, wire_lead=1)
    await wire_timed_call(clock, pacer, round_trip=0, parsing=0)
    async with pacer.slot():
        assert clock.monotonic() == 9  # let in 1 s early
        pacer.push_back(30)  # e.g. another caller met a 429 meanwhile
        await current_paced_call().request_starting()
        assert clock.monotonic() == 39


async def test_a_late_caller_is_counted_as_idle_not_as_pacing():
    clock = FakeClock(start=0)
    pacer = Pacer(10, clock, wire_lead=1)
    await wire_timed_call(clock, pacer, round_trip=0, parsing=0)
    await clock.sleep(14)  # nothing to send until 4 s after the slot opened
    await wire_timed_call(clock, pacer, round_trip=0, parsing=0)
    assert pacer.stats.idle_s == 4 and pacer.stats.late_ready_s == 0


async def test_secrets_are_redacted_from_errors_and_log_records(caplog):
    register_secret("sk-very-secret-value")
    assert redact("token=sk-very-secret-value;") == "token=***;"

    def answer(request):
        return httpx.Response(400, json={"detail": "bad token sk-very-secret-value"})

    svc = HttpService(
        "http://svc.test",
        settings=HttpSettings(transport=httpx.MockTransport(answer)),
        secrets=("sk-very-secret-value",),
    )
    with pytest.raises(ApiError) as exc:
        await svc._request("GET", "/x", "op")
    assert "sk-very-secret-value" not in str(exc.value) and "***" in str(exc.value)
    with caplog.at_level(logging.DEBUG, logger="httpx"):
        logging.getLogger("httpx").info("GET http://svc.test/?token=sk-very-secret-value")
    assert "sk-very-secret-value" not in caplog.text and "token=***" in caplog.text
    assert "sk-very" not in repr(svc)


def test_error_text_masks_secrets_and_names_foreign_errors():
    register_secret("sk-error-text-secret")
    assert (
        error_text(RuntimeError("disk full near sk-error-text-secret")) == "RuntimeError: disk full near ***"
    )
    assert error_text(KeyError()) == "KeyError"  # no message: the type alone, not "KeyError: "
    assert error_text(InputError("source", "empty")) == "source: empty"  # our errors name what failed
