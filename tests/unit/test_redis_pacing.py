"""Pacing shared across machines through Redis (clients/redis_pacing.py): the protocol of the lock files, run on
the Redis at 127.0.0.1:6379 (skipped without it, failed under ``PIPELINES_REQUIRE_PRODUCTION_SERVICES=1``)."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from clients.miniviz import MinivizClient
from clients.redis_pacing import RedisSlot, redis_slot
from clients.shared_pacing import PACING_URL_ENV
from clients.timing import Pacer
from tests.reliability.prefect_stack import REDIS_HOST, REDIS_PORT, require_services
from tests.unit.test_shared_pacing import CALLS, _too_close, _two_processes

URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
# A moment shared through Redis is never early, but it can come out late by the round trips that carried it
# (Redis reads its clock after ours; the stored value is rounded to the microsecond).
ROUND_TRIP = 0.05


@pytest.fixture
def key() -> str:
    """A limit of this test alone (the Redis is shared)."""
    require_services({"Redis": (REDIS_HOST, REDIS_PORT)})
    return f"test-{secrets.token_hex(6)}"


def test_two_processes_pacing_through_redis_never_call_within_the_interval(tmp_path, key):
    calls = _two_processes(tmp_path, URL, key)
    assert len(calls) == 2 * CALLS
    assert _too_close(calls) == []


async def test_a_push_back_and_a_call_in_flight_reach_every_pacer_of_the_limit(key):
    first, second = (Pacer(15.0, shared=redis_slot(URL, key)) for _ in range(2))
    other = Pacer(15.0, shared=redis_slot(URL, key + "-other"))
    assert second.wait_time() == 0
    async with first.slot():
        assert 14 < second.wait_time() <= 15  # its answer, still to come, starts the interval
    first.push_back(30)
    assert 29 < second.wait_time() <= 30 + ROUND_TRIP and other.wait_time() == 0


async def test_a_dead_holder_lets_go_when_its_lock_expires(key, monkeypatch):
    monkeypatch.setattr("clients.redis_pacing.LOCK_TTL_MS", 200)
    holder, waiter = redis_slot(URL, key), redis_slot(URL, key)
    await holder.acquire(lambda deadline: asyncio.sleep(0))  # and never releases: its process died
    assert waiter.busy()
    started = time.monotonic()
    await asyncio.wait_for(waiter.acquire(lambda deadline: asyncio.sleep(0)), timeout=10)
    assert time.monotonic() - started >= 0.1  # it waited for the lock to expire, then took the slot
    waiter.release(time.monotonic())
    assert not waiter.busy()


def test_miniviz_clients_pace_through_redis_when_the_url_is_set(monkeypatch, key):
    monkeypatch.setenv(PACING_URL_ENV, URL)
    a, b = (MinivizClient(key, "token", "http://miniviz.test") for _ in range(2))
    assert isinstance(a.data_pacer.shared, RedisSlot)
    a.data_pacer.push_back(10)
    assert 9 < b.data_pacer.wait_time() <= 10 + ROUND_TRIP
