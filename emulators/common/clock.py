"""Scaled and manual clocks shared by every emulator.

Emulated time ("virtual seconds") is what the vendors document: a 20 s camera wait, a 15 s Miniviz interval.
A ``ScaledClock`` with ``time_scale=0.01`` runs virtual time 100x faster than the wall clock, so a 20 s wait
takes 0.2 s of real time while every event keeps its order. Tests can use a ``ManualClock`` and advance it.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol


class Clock(Protocol):
    time_scale: float

    def now(self) -> float:
        """Virtual UNIX time in seconds."""

    def to_real(self, virtual_seconds: float) -> float:
        """Real seconds that ``virtual_seconds`` of emulated time take."""

    async def sleep(self, virtual_seconds: float) -> None:
        """Sleep for a span of virtual time."""


class ScaledClock:
    """Virtual time = wall time at start + real elapsed time / ``time_scale``."""

    def __init__(self, time_scale: float = 1.0, start: float | None = None) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        self.time_scale = time_scale
        self._start_virtual = time.time() if start is None else start
        self._start_real = time.monotonic()

    def now(self) -> float:
        return self._start_virtual + (time.monotonic() - self._start_real) / self.time_scale

    def to_real(self, virtual_seconds: float) -> float:
        return max(0.0, virtual_seconds) * self.time_scale

    async def sleep(self, virtual_seconds: float) -> None:
        await asyncio.sleep(self.to_real(virtual_seconds))


class ManualClock:
    """A clock that only moves when told to; ``sleep`` advances it instead of waiting."""

    def __init__(self, start: float = 1_700_000_000.0, time_scale: float = 1.0) -> None:
        self._now = start
        self.time_scale = time_scale

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def to_real(self, virtual_seconds: float) -> float:
        return 0.0

    async def sleep(self, virtual_seconds: float) -> None:
        self.advance(max(0.0, virtual_seconds))
        await asyncio.sleep(0)


def retry_after_header(clock: Clock, virtual_seconds: float) -> str:
    """The ``Retry-After`` value a client must honour, in *real* seconds.

    At scale 1 this is a whole number of seconds as RFC 9110 requires (rounded up so an obedient client is
    never early). On a scaled clock the real wait is often below one second, so it is given as a decimal
    with millisecond precision (rounded up), which our clients and most retry libraries accept.
    """
    real = clock.to_real(virtual_seconds)
    if clock.time_scale >= 1.0:
        return str(max(1, math.ceil(real)))
    return f"{math.ceil(real * 1000) / 1000:.3f}"
