"""Service sessions: one client per account (and configuration), shared by every caller in the process.

A session is what makes tasks compose: every task, batch task and flow of a process that resolves the same
block reaches the same client, so they share its pacers (no 429 of our own making), its login (one per account)
and its connection pool / spread transport.

Why a session's client lives on an event loop of its own (Prefect 3.8.8, observed with
``tests/integration/test_service_sessions.py``):

- An async task awaited directly in an async flow, gathered with ``asyncio.gather``, or nested inside another
  async task runs on the flow's event loop, in the flow's thread.
- ``.submit()`` and ``.map()`` on the default ``ThreadPoolTaskRunner`` run each task run as
  ``asyncio.run(run_task_async(...))`` in a worker thread: a new event loop per task run, closed when it ends.
- An ``httpx.AsyncClient``'s connections, the pacers' ``asyncio.Lock`` and asyncio futures belong to the loop
  that first used them.

A client per event loop would live for one mapped task run, could not close its connections once
``asyncio.run`` had closed its loop, and its pacer would not see the other loops' calls. So each session's
client lives on one process-wide event loop run by a daemon thread (``service-sessions``), and every call runs
there: ``await session.call(fn, ...)``, from any loop or thread, submits the coroutine to that loop
(``asyncio.run_coroutine_threadsafe``, which carries the caller's context variables along) and awaits its
result; cancelling the caller cancels the call. Pacing (``clients.timing``, timed at the socket by
``clients.wire``), retries and login renewal (``clients.auth``) are the client's own code, unchanged: they all
run on one loop, in one client. The price is one hop between threads per call (~0.1 ms measured on the
2-core test machine); a batch engine avoids it by running on that loop whole (``SessionClient.within``).

``SessionClient`` is the client as any caller sees it: its coroutine methods run on the session loop, its async
iterators are stepped there, anything else (attributes, plain methods) is read from the client itself. It is
also an async context manager that leaves the client open. Sessions are closed on the session loop at
interpreter exit (``atexit``) or by ``close_sessions()``, so no connection is left open and nothing warns. A
forked child forgets its parent's sessions (their thread does not exist there).

Keys (``session_key``) carry the non-secret settings in clear and the secrets only as a salted HMAC
(``clients.auth.share_key``): a key never holds a secret, and a different secret never shares a session.
No Prefect imports: the blocks (``blocks.base.ServiceCredentials.session``) build the clients.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from .auth import share_key

__all__ = ["ServiceSession", "SessionClient", "close_sessions", "open_sessions", "session_for", "session_key"]

C = TypeVar("C")
T = TypeVar("T")
CLOSE_TIMEOUT_S = 10.0
logger = logging.getLogger("clients.session")


class SessionClosedError(RuntimeError):
    """The session was closed (``close_sessions``); resolve the block again for a new one."""


class _SessionLoop:
    """An event loop run forever by a daemon thread: where every session's client lives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="service-sessions", daemon=True)
        self.thread.start()

    def is_current(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def stop(self, clients: Iterable[Any]) -> None:
        """Close ``clients`` on the loop, cancel whatever still runs there, then stop and close the loop."""
        if self.thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(_close(list(clients)), self.loop)
            try:
                done.result(CLOSE_TIMEOUT_S)
            except Exception as exc:  # closing is best effort: report it, never hang the exit
                logger.warning("closing service sessions: %s", type(exc).__name__)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(CLOSE_TIMEOUT_S)
        if not self.loop.is_running():
            self.loop.close()


async def _close(clients: list[Any]) -> None:
    for client in clients:
        try:
            await client.aclose()
        except Exception as exc:
            logger.warning("closing %s: %s", type(client).__name__, type(exc).__name__)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:  # calls of callers that did not wait for them
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class ServiceSession(Generic[C]):
    """One client of one account, used from any event loop or thread of the process (see the module doc)."""

    def __init__(self, key: str, client: C, loop: _SessionLoop) -> None:
        self.key = key
        self.client = client  # lives on the session loop: use it only through ``call`` from elsewhere
        self._loop = loop
        self.closed = False

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` on the session loop (directly when already there)."""
        if self.closed:
            raise SessionClosedError(f"{type(self.client).__name__} session is closed")
        if self._loop.is_current():
            return await fn(*args, **kwargs)

        async def run() -> T:
            return await fn(*args, **kwargs)

        coro = run()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop.loop)
        except RuntimeError:  # the loop closed between the check and now
            coro.close()
            raise SessionClosedError(f"{type(self.client).__name__} session is closed") from None
        return await asyncio.wrap_future(future)

    async def iterate(
        self, fn: Callable[..., AsyncIterator[T]], *args: Any, **kwargs: Any
    ) -> AsyncIterator[T]:
        """Items of the async iterator ``fn(*args, **kwargs)``, each step taken on the session loop."""
        iterator = fn(*args, **kwargs)
        try:
            while True:
                try:
                    item = await self.call(iterator.__anext__)
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self.closed:
                await self.call(iterator.aclose)  # type: ignore[attr-defined]

    def view(self) -> SessionClient:
        return SessionClient(self)

    def __repr__(self) -> str:  # the key holds no secret, but it is long: the client says enough
        return f"ServiceSession({self.client!r})"


class SessionClient:
    """The session's client as seen from any loop: ``await client.send_data(...)`` runs on the session loop.

    ``async with creds.session() as client:`` leaves the client open when the block ends: it is the process's.
    """

    __slots__ = ("_session",)

    def __init__(self, session: ServiceSession[Any]) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._session.client, name)
        if inspect.iscoroutinefunction(value):
            return functools.partial(self._session.call, value)
        if inspect.isasyncgenfunction(value):
            return functools.partial(self._session.iterate, value)
        return value

    async def within(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await fn(client, *args, **kwargs)`` on the session loop, where ``client`` is the session's own
        client, used without a hop per request: for batch engines making many requests (keep CPU work off
        that loop: every session shares it)."""
        return await self._session.call(fn, self._session.client, *args, **kwargs)

    async def __aenter__(self) -> SessionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None  # the session outlives its callers: closed at exit or by close_sessions()

    def __repr__(self) -> str:
        return f"SessionClient({self._session.client!r})"


_lock = threading.Lock()
_sessions: dict[str, ServiceSession[Any]] = {}
_loop: _SessionLoop | None = None


def session_key(kind: str, settings: Mapping[str, Any], secrets: Iterable[str | None]) -> str:
    """A registry key: ``kind`` and ``settings`` in clear, ``secrets`` as a salted HMAC (per process)."""
    shown = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return share_key(kind, shown, secret=json.dumps([s or "" for s in secrets]))


def session_for(key: str, make_client: Callable[[], C]) -> ServiceSession[C]:
    """The process's session under ``key``, its client made by ``make_client()`` the first time."""
    global _loop
    with _lock:
        session = _sessions.get(key)
        if session is None:
            if _loop is None:
                _loop = _SessionLoop()
            session = _sessions[key] = ServiceSession(key, make_client(), _loop)
        return session


def open_sessions() -> int:
    """How many sessions this process holds."""
    with _lock:
        return len(_sessions)


def close_sessions() -> None:
    """Close every session's client and the session loop (at exit; tests; after a credential change).

    Later calls through a closed session raise ``SessionClosedError``; resolving a block again opens a new one.
    """
    global _loop
    with _lock:
        sessions, loop = list(_sessions.values()), _loop
        _sessions.clear()
        _loop = None
    if loop is None:
        return
    if loop.is_current():
        raise RuntimeError("close_sessions() cannot run on the session loop itself")
    for session in sessions:
        session.closed = True
    loop.stop(session.client for session in sessions)


def _forget_after_fork() -> None:
    """A forked child has no session thread: start afresh (the parent still owns its connections)."""
    global _lock, _loop
    _lock = threading.Lock()
    _sessions.clear()
    _loop = None


atexit.register(close_sessions)
os.register_at_fork(after_in_child=_forget_after_fork)
