"""Injectable time for clients: the real clock in production, a fake one in tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """Moves only when slept on: ``sleep(5)`` advances it by 5 s at once. Records every sleep."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class Pacer:
    """Spaces calls so the service never sees two closer than ``interval`` seconds.

    The next call may start ``interval`` after the previous call *finished*: the service accepted the
    previous request at some moment before its response arrived, so this spacing can never trigger its
    rate limit, whatever the network does. Use as ``async with pacer.slot(): ...``; calls queue in FIFO
    order.
    """

    def __init__(self, interval: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.interval = max(0.0, interval)
        self.clock = clock
        self._lock = asyncio.Lock()
        self._next_allowed = float("-inf")

    def wait_time(self) -> float:
        """Seconds until a call may start (0 when it may start now)."""
        return max(0.0, self._next_allowed - self.clock.monotonic())

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold the next slot for the duration of one call."""
        if self.interval == 0 and self.wait_time() == 0:
            yield  # no limit and no pushback: calls run concurrently
            return
        async with self._lock:
            wait = self.wait_time()
            if wait > 0:
                await self.clock.sleep(wait)
            try:
                yield
            finally:
                self._next_allowed = self.clock.monotonic() + self.interval

    def push_back(self, seconds: float) -> None:
        """The service asked us to wait (Retry-After): no call before ``seconds`` from now."""
        self._next_allowed = max(self._next_allowed, self.clock.monotonic() + seconds)


class KeyedPacer:
    """One ``Pacer`` per key (e.g. Miniviz images: one per label_key)."""

    def __init__(self, interval: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.interval = interval
        self.clock = clock
        self._pacers: dict[str, Pacer] = {}

    def __call__(self, key: str) -> Pacer:
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(self.interval, self.clock)
        return pacer
