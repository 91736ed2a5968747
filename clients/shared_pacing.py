"""Pacing shared by every process of one machine: a lock file per rate limit, holding the next slot's time.

A worker runs each flow run in a process of its own, so a harvest and a backfill sending to one Miniviz project
at once have separate clients, each pacing alone: without this, each would take the other's 429s. Every
``Pacer`` given a ``SharedSlot`` (``clients.timing``) also holds that slot's lock for the whole paced call, and
leaves the next slot's time (``CLOCK_MONOTONIC``, the same clock in every process) for the others:

- ``<key>.lock``: ``flock``-ed by the process whose call holds the slot, from just before the slot opens until
  its answer began to arrive (timed at the socket, ``clients.wire``). The kernel drops it if that process dies.
- ``<key>.next``: when the next call may start (the answer's first byte plus the interval, or later after a
  ``Retry-After``), with the boot it belongs to (a file from before a reboot means nothing). Read and updated
  under its own short ``flock``, so a ``push_back`` never waits for a call in flight.

A process contends for the lock only once the next slot is about to open (``CONTEND_LEAD_S`` before it), so the
process that just made a call has no head start: the slots go to the waiting processes about evenly. A loser
polls until the winner's answer arrives (``POLL_S``; a call in flight is one round trip), then waits for the
slot after it. Cost per paced call: a few system calls on local files (tens of microseconds).

Across machines the same protocol runs on Redis (``$PIPELINES_PACING_URL``, ``clients.redis_pacing``). Why not
Prefect's global concurrency limits with slot decay: README, "Pacing across runs". No Prefect
imports here (``clients/``). POSIX only: where ``fcntl`` is missing, pacing stays per process.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no shared pacing
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "PACING_DIR_ENV",
    "PACING_URL_ENV",
    "SharedSlot",
    "default_pacing",
    "default_pacing_dir",
    "shared_slot",
]

PACING_DIR_ENV = "PIPELINES_PACING_DIR"
PACING_URL_ENV = "PIPELINES_PACING_URL"  # redis://host:port/db: pacing shared across machines
DEFAULT_PACING_DIR = ".pipeline-state/pacing"
# Contend for the slot this long before it opens: room for the paced call's own wire lead (clients/miniviz.py
# WIRE_LEAD_S) and a late wake-up on a busy machine.
CONTEND_LEAD_S = 0.010
# How often a process checks whether another one's call in flight has ended (its answer sets the next slot).
POLL_S = 0.001


def default_pacing() -> Path | str | None:
    """Where rate limits are shared: ``$PIPELINES_PACING_URL`` (a ``redis://`` URL: every process of every
    machine using that Redis, ``clients.redis_pacing``), else this machine's pacing directory."""
    return os.environ.get(PACING_URL_ENV, "").strip() or default_pacing_dir()


def default_pacing_dir() -> Path | None:
    """Where the shared pacing files live: ``$PIPELINES_PACING_DIR``, else ``.pipeline-state/pacing`` under the
    working directory (a worker's runs share it); ``off`` (or no ``fcntl``): pacing per process only."""
    where = os.environ.get(PACING_DIR_ENV, DEFAULT_PACING_DIR).strip()
    if fcntl is None or where.lower() in ("", "off"):
        return None
    return Path(where).resolve()


def _boot_id() -> str:
    """This boot's identity: ``CLOCK_MONOTONIC`` restarts at boot, so a time from another boot is ignored."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the boot's wall-clock moment, to the minute
        return str(round((time.time() - time.monotonic()) / 60))


BOOT_ID = _boot_id()


class Slot:
    """Holding one shared rate limit's slot; a subclass says where the lock and the next moment live."""

    def __init__(self) -> None:
        self._held: Any = None  # what holds the slot while this process does (a lock file, a token)

    def next_allowed(self) -> float:  # pragma: no cover - each kind implements it
        raise NotImplementedError

    def push_next(self, at: float) -> None:  # pragma: no cover
        raise NotImplementedError

    def _try_hold(self) -> Any:
        """Take the lock if it is free: what holds it, or None."""
        raise NotImplementedError  # pragma: no cover

    def _let_go(self, held: Any) -> None:
        raise NotImplementedError  # pragma: no cover

    async def acquire(self, sleep_until: Any) -> float:
        """Hold the slot (once it is about to open); returns the next-allowed time to wait for.

        ``sleep_until(deadline)`` is the pacer's precise sleep on its clock (``CLOCK_MONOTONIC``)."""
        while True:
            await sleep_until(self.next_allowed() - CONTEND_LEAD_S)
            held = self._try_hold()
            if held is not None:
                self._held = held
                return self.next_allowed()  # the last holder may have written it as we waited
            await asyncio.sleep(self.poll_s)  # another process's call is in flight

    def release(self, next_allowed: float) -> None:
        """Leave ``next_allowed`` for the others and let go of the slot."""
        held, self._held = self._held, None
        if held is None:
            return
        try:
            self.push_next(next_allowed)
        finally:
            self._let_go(held)


class SharedSlot(Slot):
    """One rate limit shared by the processes of this machine (see the module doc)."""

    poll_s = POLL_S

    def __init__(self, directory: Path, key: str) -> None:
        super().__init__()
        directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]  # any key, a safe file name
        self.lock_path = directory / f"{name}.lock"
        self.next_path = directory / f"{name}.next"

    # the next slot's time
    def next_allowed(self) -> float:
        """When the next call may start (monotonic), as the last holder or ``push_back`` left it."""
        fd = os.open(self.next_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._parse(os.pread(fd, 128, 0))
        finally:
            os.close(fd)  # drops the lock

    def push_next(self, at: float) -> None:
        """No call anywhere before ``at`` (monotonic); a later time already there stays."""
        fd = os.open(self.next_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if at > self._parse(os.pread(fd, 128, 0)):
                data = f"{BOOT_ID} {at!r}\n".encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    @staticmethod
    def _parse(data: bytes) -> float:
        boot, _, at = data.decode("ascii", "replace").partition(" ")
        try:
            return float(at) if boot == BOOT_ID else float("-inf")
        except ValueError:  # empty (new) or damaged: no constraint
            return float("-inf")

    def busy(self) -> bool:
        """A call holds the slot right now (in this process or another)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            return not _try_lock(fd)
        finally:
            os.close(fd)

    # holding the slot: the lock file's descriptor
    def _try_hold(self) -> int | None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        if _try_lock(fd):
            return fd
        os.close(fd)
        return None

    def _let_go(self, held: int) -> None:
        os.close(held)  # drops the lock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def shared_slot(where: Path | str | None, *key_parts: str) -> Any:
    """The slot named by ``key_parts`` under ``where`` (a directory, or a ``redis://`` URL); None (pacing per
    process) without one."""
    if not where:
        return None
    key = "\x1f".join(key_parts)
    if isinstance(where, str) and where.startswith(("redis://", "rediss://", "unix://")):
        from .redis_pacing import redis_slot  # only where Redis is used

        return redis_slot(where, key)
    return SharedSlot(Path(where).resolve(), key)
