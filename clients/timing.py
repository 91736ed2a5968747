"""Injectable time for clients: the real clock in production, a fake one in tests; pacing of rate-limited calls."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .shared_pacing import SharedSlot

# The last stretch of a wait is spent yielding to the event loop instead of sleeping: asyncio's timers wake
# up to ~1 ms late (epoll rounds its timeout up to whole milliseconds) and later still on a busy machine.
SPIN_SECONDS = 0.001


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

    async def sleep_until(self, deadline: float) -> None:
        """Return as soon after ``deadline`` (monotonic) as possible, never before it."""
        left = deadline - time.monotonic()
        if left > SPIN_SECONDS:
            await asyncio.sleep(left - SPIN_SECONDS)
        while time.monotonic() < deadline:
            await asyncio.sleep(0)  # other tasks still run; nothing oversleeps the deadline


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

    async def sleep_until(self, deadline: float) -> None:
        if deadline > self.now:
            await self.sleep(deadline - self.now)


async def sleep_until(clock: Clock, deadline: float) -> None:
    """``clock.sleep_until(deadline)`` when the clock has it (precise), else a plain sleep."""
    precise = getattr(clock, "sleep_until", None)
    if precise is not None:
        await precise(deadline)
    else:
        await clock.sleep(deadline - clock.monotonic())


@dataclass
class PacingStats:
    """Where the time of a paced sequence goes: each cycle is ``interval + wire_rtt + late`` seconds.

    ``wire_rtt``: first byte of the request out -> first byte of the answer in (loopback or network plus the
    service's handling). ``late``: the request went out after its earliest allowed moment: sleep overshoot and
    request preparation not hidden in the wait (``late_ready``), or the caller had nothing to send yet
    (``idle``). Without a wire-timed transport the request's start and end are taken around the whole call.
    """

    calls: int = 0
    wire_timed: int = 0
    wire_rtt_s: float = 0.0
    late_ready_s: float = 0.0
    idle_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        n = max(1, self.calls)
        return {
            "calls": self.calls,
            "wire_timed_calls": self.wire_timed,
            "mean_wire_rtt_ms": round(self.wire_rtt_s / n * 1000, 3),
            "mean_late_ms": round(self.late_ready_s / n * 1000, 3),
            "mean_idle_ms": round(self.idle_s / n * 1000, 3),
        }


class PacedCall:
    """One call holding a pacer's slot. A wire-timed transport (``clients.wire``) calls ``request_starting``
    before the request's first byte leaves and ``answer_arriving`` when the answer's first byte arrives, so
    the pacer spaces the calls on the wire, not around the client library's own work."""

    __slots__ = ("_pacer", "entered", "sent_at", "answered_at")

    def __init__(self, pacer: Pacer, entered: float) -> None:
        self._pacer = pacer
        self.entered = entered
        self.sent_at: float | None = None
        self.answered_at: float | None = None

    async def request_starting(self) -> None:
        if self.sent_at is None:
            clock = self._pacer.clock
            await sleep_until(clock, self._pacer._next_allowed)  # re-read: a push_back may have moved it
            self.sent_at = clock.monotonic()

    def answer_arriving(self) -> None:
        if self.sent_at is not None and self.answered_at is None:
            self.answered_at = self._pacer.clock.monotonic()


_CURRENT_CALL: contextvars.ContextVar[PacedCall | None] = contextvars.ContextVar("paced_call", default=None)


def current_paced_call() -> PacedCall | None:
    """The paced call the running task is making, if any (read by wire-timed transports)."""
    return _CURRENT_CALL.get()


class Pacer:
    """Spaces calls so the service never sees two closer than ``interval`` seconds.

    The next call may start ``interval`` after the previous call's answer *began to arrive*: the service
    stamped the previous request at some moment before it answered, and stamps the next one after it leaves,
    so this spacing can never trigger its rate limit, whatever the network does. Use as
    ``async with pacer.slot(): ...``; calls queue in FIFO order.

    Precision: the wait ends by yielding to the event loop (``SystemClock.sleep_until``), not on a timer that
    may wake late. Through a wire-timed transport (``clients.wire``) the two ends are taken at the socket: the
    request's first byte is held there until the allowed moment, and the answer's first byte, not the end of
    the call, starts the next interval. Once a call has shown that its transport is wire-timed, the next one
    is let in ``wire_lead`` seconds early so the client library builds the request while the pacer waits.
    Without such a transport both ends are taken around the whole call (safe, a little slower).

    Across processes: with a ``shared`` slot (``clients.shared_pacing``), each call also holds the slot's lock
    file from just before its moment until its answer began to arrive, and leaves the next moment there, so
    every process of the machine pacing the same limit keeps the same spacing, measured the same way.
    """

    def __init__(
        self,
        interval: float,
        clock: Clock = SYSTEM_CLOCK,
        *,
        wire_lead: float = 0.0,
        shared: SharedSlot | None = None,
    ) -> None:
        self.interval = max(0.0, interval)
        self.clock = clock
        self.wire_lead = max(0.0, wire_lead)
        # the same limit paced by other processes of this machine (a real clock and a limit only)
        self.shared = shared if self.interval > 0 and isinstance(clock, SystemClock) else None
        self.stats = PacingStats()
        self._wire_seen = False
        self._lock = asyncio.Lock()
        self._next_allowed = float("-inf")

    def wait_time(self) -> float:
        """Seconds until a call may start (0 when it may start now), counting other processes' calls."""
        now = self.clock.monotonic()
        start = self._next_allowed
        if self.shared is not None:
            start = max(start, self.shared.next_allowed())
            if self.shared.busy():  # a call in flight: its answer, still to come, opens the next interval
                start = max(start, now) + self.interval
        return max(0.0, start - now)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold the next slot for the duration of one call."""
        if self.interval == 0 and self.wait_time() == 0:
            yield  # no limit and no pushback: calls run concurrently
            return
        async with self._lock:
            clock = self.clock
            call = PacedCall(self, clock.monotonic())
            if self.shared is not None:  # held until this call's answer arrives (released below)
                shared_next = await self.shared.acquire(functools.partial(sleep_until, clock))
                self._next_allowed = max(self._next_allowed, shared_next)
            earliest = self._next_allowed
            # Let the call in early only when the previous one proved the wire is timed (its transport held
            # the first byte); otherwise wait the whole interval here.
            if self._wire_seen and self.wire_lead:  # a plain sleep: its overshoot is absorbed by the lead
                await clock.sleep(earliest - self.wire_lead - clock.monotonic())
            else:
                await sleep_until(clock, earliest)
            released = clock.monotonic()
            token = _CURRENT_CALL.set(call)
            try:
                yield
            finally:
                _CURRENT_CALL.reset(token)
                self._wire_seen = call.answered_at is not None
                end = call.answered_at if self._wire_seen else clock.monotonic()
                self._next_allowed = max(end + self.interval, self._next_allowed)  # keep a push_back
                if self.shared is not None:
                    self.shared.release(self._next_allowed)
                self._record(call, earliest, released, end)

    def _record(self, call: PacedCall, earliest: float, released: float, end: float) -> None:
        s = self.stats
        sent = call.sent_at if call.sent_at is not None else released
        s.calls += 1
        s.wire_timed += self._wire_seen
        s.wire_rtt_s += end - sent
        if call.entered > earliest > float("-inf"):  # the caller came after the slot opened: nothing ready
            s.idle_s += call.entered - earliest
            s.late_ready_s += max(0.0, sent - call.entered)
        elif earliest > float("-inf"):
            s.late_ready_s += max(0.0, sent - earliest)

    def push_back(self, seconds: float) -> None:
        """The service asked us to wait (Retry-After): no call before ``seconds`` from now."""
        self._next_allowed = max(self._next_allowed, self.clock.monotonic() + seconds)
        if self.shared is not None:
            self.shared.push_next(self._next_allowed)


class KeyedPacer:
    """One ``Pacer`` per key (e.g. Miniviz images: one per label_key)."""

    def __init__(
        self,
        interval: float,
        clock: Clock = SYSTEM_CLOCK,
        *,
        wire_lead: float = 0.0,
        shared: Callable[[str], SharedSlot | None] | None = None,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.wire_lead = wire_lead
        self._shared = shared  # key -> the slot other processes pace this key with
        self._pacers: dict[str, Pacer] = {}

    def __call__(self, key: str) -> Pacer:
        pacer = self._pacers.get(key)
        if pacer is None:
            shared = self._shared(key) if self._shared is not None and self.interval > 0 else None
            pacer = self._pacers[key] = Pacer(
                self.interval, self.clock, wire_lead=self.wire_lead, shared=shared
            )
        return pacer
