"""Pacing shared by the processes of several machines: the slot of ``clients.shared_pacing`` kept in Redis.

Workers on different machines share no lock file, so with ``$PIPELINES_PACING_URL=redis://host:6379/0`` (the
Redis of the production topology) each rate limit's slot lives in Redis instead, with the same protocol:

- ``<key>:lock``: held (``SET NX`` with a token) by the process whose call holds the slot, from just before
  the slot opens until its answer began to arrive. It expires after ``LOCK_TTL_MS`` if that process dies.
- ``<key>:next``: when the next call may start, in the Redis server's clock (``TIME``), so machines whose
  clocks disagree still agree on the moment. Scripts compare and set it atomically.

Each process converts between Redis time and its own ``CLOCK_MONOTONIC`` at every read and write, erring late:
a read counts from the end of its round trip, a write from its start, so a slow round trip (a busy machine)
delays a call, never lets one go early. Cost per paced call: three or four Redis round trips.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import redis

from .shared_pacing import Slot

KEY_PREFIX = "pipelines:pacing:"
LOCK_TTL_MS = 120_000  # longer than any one call with its timeout; only a dead holder's lock ever expires
POLL_S = 0.002  # how often a waiting process checks whether the call in flight has ended

# Seconds from now until the stored next moment (-inf when none).
_NEXT_IN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local at = tonumber(redis.call('GET', KEYS[1]) or '')
if not at then return '-inf' end
return tostring(at - now)
"""
# Push the next moment to now + ARGV[1] seconds unless a later one is stored; it expires when long past.
_PUSH_IN = """
local t = redis.call('TIME')
local target = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[1])
local at = tonumber(redis.call('GET', KEYS[1]) or '')
if (not at) or target > at then
  redis.call('SET', KEYS[1], string.format('%.6f', target), 'PX', math.floor((tonumber(ARGV[1]) + 3600) * 1000))
end
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisSlot(Slot):
    """One rate limit shared through Redis (see the module doc)."""

    poll_s = POLL_S

    def __init__(self, client: redis.Redis, key: str) -> None:
        super().__init__()
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
        self._redis = client
        self._lock_key, self._next_key = f"{KEY_PREFIX}{name}:lock", f"{KEY_PREFIX}{name}:next"
        self._next_in = client.register_script(_NEXT_IN)
        self._push_in = client.register_script(_PUSH_IN)
        self._release = client.register_script(_RELEASE)

    def next_allowed(self) -> float:
        """When the next call may start, on this process's ``CLOCK_MONOTONIC``."""
        seconds = float(self._next_in(keys=[self._next_key]))
        # Counted from the end of the round trip: Redis read its clock at some moment before it, so the
        # moment computed is never early (a delayed request, e.g. on a busy machine, makes it later only).
        return time.monotonic() + seconds

    def push_next(self, at: float) -> None:
        """No call anywhere before ``at`` (monotonic); a later moment already stored stays."""
        self._push_in(keys=[self._next_key], args=[repr(at - time.monotonic())])

    def busy(self) -> bool:
        return bool(self._redis.exists(self._lock_key))

    # holding the slot: a token of this holder's own
    def _try_hold(self) -> str | None:
        token = secrets.token_hex(8)
        return token if self._redis.set(self._lock_key, token, nx=True, px=LOCK_TTL_MS) else None

    def _let_go(self, held: str) -> None:
        self._release(keys=[self._lock_key], args=[held])


_clients: dict[str, redis.Redis] = {}


def redis_slot(url: str, key: str) -> RedisSlot:
    """The slot ``key`` in the Redis at ``url`` (one connection pool per URL and process)."""
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return RedisSlot(client, key)
