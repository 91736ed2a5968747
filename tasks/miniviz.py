"""Prefect tasks for Miniviz: one per API call, plus ``send_miniviz_data_batch`` for many data events.

Every task goes through the account's process-wide session (``creds.session()``, ``clients/session.py``), so
tasks composed in any flow share one client: its pacing (no 429 of our own making) and its connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.miniviz import MinivizCredentials
from clients.errors import ApiError, AuthError, InputError, NotFoundError
from clients.miniviz import EventAck, MinivizClient, PayloadValue, StoredImage
from tasks.journal import GroupCommit, Journal

T = TypeVar("T")
_call = MinivizCredentials.session_call  # a client method, run with the account's session client


@task(name="miniviz-send-data")
async def send_miniviz_data(
    credentials: MinivizCredentials | str,
    label_key: str,
    payload: dict[str, PayloadValue],
    timestamp_ms: int | None = None,
) -> EventAck:
    """Send one data event to a Miniviz project.

    Example:
        ```python
        ack = await send_miniviz_data("my-miniviz", "greenhouse_1", {"temperature": 21.5})
        ```
    """
    return await _call(credentials, MinivizClient.send_data, label_key, payload, timestamp_ms)


@task(name="miniviz-send-image")
async def send_miniviz_image(
    credentials: MinivizCredentials | str,
    label_key: str,
    image: bytes,
    image_name: str,
    timestamp_ms: int | None = None,
) -> EventAck:
    """Send one JPEG/PNG image event (Pro plan, ≤ 204,800 bytes, one per 60 s per label key).

    Example:
        ```python
        ack = await send_miniviz_image("my-miniviz", "camera_1", jpeg_bytes, "snapshot.jpg")
        ```
    """
    return await _call(credentials, MinivizClient.send_image, label_key, image, image_name, timestamp_ms)


@task(name="miniviz-get-image")
async def get_miniviz_image(credentials: MinivizCredentials | str, event_id: str) -> StoredImage:
    """Fetch the stored image of an image event.

    Example:
        ```python
        stored = await get_miniviz_image("my-miniviz", ack.id)
        ```
    """
    return await _call(credentials, MinivizClient.get_image, event_id)


class DataEvent(Protocol):
    """A data event as an object (a dataclass, say); a mapping with these keys works as well. ``seq`` (an
    integer the caller recognises the event by) is needed only when the sender journals acknowledgements."""

    label_key: str
    payload: dict[str, PayloadValue]
    timestamp: int | None


class EventOutcome(BaseModel):
    """What became of one event of a batch, by its ``index`` in the batch.

    ``done``: Miniviz acknowledged it (``event_id``). ``rejected``: the event itself is invalid (a documented
    rule, checked before sending, or Miniviz's 400/413/422): sending it again cannot help. ``failed``: it did
    not go through after the client's retries (a later try may); ``error`` says why.
    """

    index: int
    status: Literal["done", "rejected", "failed"]
    event_id: str | None = None
    error: str | None = None


class SendingStopped(RuntimeError):
    """Sending cannot go on: Miniviz refused the token or the project, or too many events failed in a row.
    Everything acknowledged before is journaled (with a journal), so a later run can resume. ``outcomes``: the
    batch's outcomes (events not tried once sending stopped are ``failed``), so none goes uncounted."""

    def __init__(self, message: str, outcomes: Sequence[EventOutcome] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect may pickle a task's exception: keep the outcomes
        return type(self), (str(self), self.outcomes)


class MinivizDataSender:
    """Sends data events through one Miniviz client, for as many batches as are given to it, even at once.

    - **Pacing is the client's.** With a data interval, one event at a time, each request leaving one interval
      after the previous answer began to arrive, timed at the socket (``clients/wire.py``): no 429. With
      interval 0, up to ``max_in_flight`` at once over all batches together, over the client's transport (a
      session's spreads them over one-connection pools: ``clients/spread.py``).
    - **On a session** (``creds.session()``), each batch runs whole on the session's event loop
      (``SessionClient.within``), so its requests pay no hop between threads.
    - **With a journal**, an event is in flight from the moment it is sent until its acknowledgement is durably
      in the journal, as ``{"t": "sent", "f": <batch key>, "r": [[first seq, end), ...]}``; only then does it
      free its slot. After a crash at any instant, at most ``max_in_flight`` events Miniviz accepted are missing
      from the journal: the only ones a resuming run can send twice. Appends are group-committed in a worker
      thread (``tasks.journal.GroupCommit``: the acknowledgements that arrive during a write go together in the
      next one). ``record`` journals the caller's own records the same way, in order with the acknowledgements.
    - **Every event gets an outcome** (``EventOutcome``). A refused token or unknown project, or
      ``max_consecutive_failures`` failures in a row, raise ``SendingStopped``.

    ``progress``, if given, is any object whose ``sent`` and ``failed`` counters should grow as events finish
    (a progress display reads them). Call ``aclose()`` when done: it waits for the last journal write.
    """

    def __init__(
        self,
        client: Any,
        max_in_flight: int = 1,
        *,
        journal: Journal | None = None,
        max_consecutive_failures: int | None = None,
        progress: Any = None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.max_in_flight = max(1, max_in_flight)
        self.max_consecutive_failures = max_consecutive_failures
        self.progress = progress
        self.consecutive_failures = 0
        self.stopped = ""  # why sending stopped, once it has
        self._slots: asyncio.Semaphore | None = None
        self._commit = GroupCommit(journal, pack=merge_sent_records)

    async def send(
        self, events: Sequence[Mapping[str, Any] | DataEvent], key: str = ""
    ) -> list[EventOutcome]:
        """Send ``events``; returns their outcomes once each is acknowledged (and journaled under ``key``) or
        not sent."""
        return await self._on_client_loop(self._send, events, key)

    async def record(self, *records: dict[str, Any]) -> None:
        """Append the caller's own records to the journal, durably, in order with the acknowledgements."""
        if self.journal is None:
            raise ValueError("this sender has no journal")
        await self._on_client_loop(self._record, records)

    async def aclose(self) -> None:
        """Wait until everything acknowledged is journaled."""
        if self.journal is not None:
            await self._on_client_loop(self._close)

    def journal_figures(self) -> dict[str, float]:
        """How the group commits went: how many, mean and slowest (ms)."""
        return self._commit.figures()

    async def _on_client_loop(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``fn(client, *args)`` where the client's requests run: whole on a session's loop, or right here."""
        within = getattr(self.client, "within", None)
        if within is not None:
            return await within(fn, *args)
        return await fn(self.client, *args)

    async def _send(self, client: Any, events: Sequence[Any], key: str) -> list[EventOutcome]:
        if self._slots is None:  # created on the loop that runs the batches
            self._slots = asyncio.Semaphore(self.max_in_flight)
        outcomes: list[Any] = [None] * len(events)
        try:
            async with asyncio.TaskGroup() as group:
                for index, event in enumerate(events):
                    group.create_task(self._one(client, key, index, event, outcomes))
        except BaseExceptionGroup as group_error:
            raise _first_leaf(group_error) from None
        if self.stopped:
            raise SendingStopped(self.stopped, outcomes)
        return outcomes

    async def _one(self, client: Any, key: str, index: int, event: Any, outcomes: list[Any]) -> None:
        label_key, payload, timestamp, seq = _event_fields(event)
        missing = [name for name, value in (("label_key", label_key), ("payload", payload)) if value is None]
        if self.journal is not None and seq is None:
            missing.append("seq (needed to journal it)")
        if missing:
            outcomes[index] = self._not_sent(index, InputError("event", f"has no {' or '.join(missing)}"))
            return
        async with self._slots:
            if self.stopped:  # the other events of every batch end at once, each with its outcome
                outcomes[index] = EventOutcome(
                    index=index, status="failed", error=f"not sent: {self.stopped}"
                )
                return
            try:
                ack = await client.send_data(label_key, payload, timestamp)
            except (AuthError, NotFoundError) as exc:
                self.stopped = f"Miniviz refused the project or token: {exc}"
                outcomes[index] = EventOutcome(index=index, status="failed", error=str(exc))
                return
            except (ApiError, InputError) as exc:
                outcomes[index] = self._not_sent(index, exc)
                return
            self.consecutive_failures = 0
            if self.journal is not None:
                await self._commit.append({"t": "sent", "f": key, "r": [[seq, seq + 1]]})
            outcomes[index] = EventOutcome(index=index, status="done", event_id=ack.id)
            if self.progress is not None:
                self.progress.sent += 1

    def _not_sent(self, index: int, exc: Exception) -> EventOutcome:
        outcome = EventOutcome(index=index, status="rejected" if _invalid(exc) else "failed", error=str(exc))
        if self.progress is not None:
            self.progress.failed += 1
        self.consecutive_failures += 1
        limit = self.max_consecutive_failures
        if limit is not None and self.consecutive_failures >= limit and not self.stopped:
            self.stopped = (
                f"{self.consecutive_failures} events failed in a row (last: {exc}); stopping so a later "
                "run can resume"
            )
        return outcome

    async def _record(self, _client: Any, records: tuple[dict[str, Any], ...]) -> None:
        await self._commit.append(*records)

    async def _close(self, _client: Any) -> None:
        await self._commit.aclose()


def merge_sent_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group commit's records with its acknowledgements merged: the caller's records in order, then one
    ``sent`` record per batch key with the sequence numbers as ranges."""
    others = [r for r in records if r.get("t") != "sent"]
    by_key: dict[str, list[int]] = {}
    for r in records:
        if r.get("t") == "sent":
            by_key.setdefault(r["f"], []).extend(s for start, end in r["r"] for s in range(start, end))
    return others + [{"t": "sent", "f": key, "r": seq_ranges(seqs)} for key, seqs in by_key.items()]


def seq_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sequence numbers as sorted half-open ranges, as the journal stores them: [3, 4, 5, 9] -> [[3, 6], [9, 10]]."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s:
            out[-1][1] = s + 1
        else:
            out.append([s, s + 1])
    return out


def _event_fields(event: Any) -> tuple[Any, Any, Any, Any]:
    """(label_key, payload, timestamp, seq) of a mapping or an object; None where missing."""
    if isinstance(event, Mapping):
        return event.get("label_key"), event.get("payload"), event.get("timestamp"), event.get("seq")
    return tuple(getattr(event, name, None) for name in ("label_key", "payload", "timestamp", "seq"))


def _invalid(exc: Exception) -> bool:
    """The event itself is invalid for Miniviz (a documented rule, or the service's 400/413/422): rejected."""
    if isinstance(exc, InputError):
        return True
    return isinstance(exc, ApiError) and exc.status in (400, 413, 422) and not exc.retryable


def _first_leaf(error: BaseException) -> BaseException:
    """The exception that matters in a (nested) exception group: a ``SendingStopped`` if there is one."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(error)
    stopped = [e for e in leaves if isinstance(e, SendingStopped)]
    return (stopped or leaves)[0]


@task(name="miniviz-send-data-batch", cache_policy=NO_CACHE)
async def send_miniviz_data_batch(
    credentials: MinivizCredentials | str | MinivizDataSender,
    events: Sequence[Mapping[str, Any] | DataEvent],
    concurrency: int = 8,
    key: str = "",
) -> list[EventOutcome]:
    """Send many data events (``{"label_key", "payload", "timestamp"}`` mappings or objects) in one task run.

    Paced at the project's interval (timed at the socket: no 429); up to ``concurrency`` at once when the
    interval is 0. Returns one ``EventOutcome`` per event, in order: ``done`` (with its Miniviz id),
    ``rejected`` (invalid: fix the event) or ``failed`` (with the error). A refused token or unknown project
    raises ``SendingStopped``.

    ``credentials`` is a block or a saved block's name (the batch goes through the account's process-wide
    session), or a ``MinivizDataSender`` that several batches share: its in-flight bound, journal (each
    acknowledgement journaled under ``key`` before its slot is freed) and stop rule then hold across them, and
    ``concurrency`` is the sender's.

    Example:
        ```python
        outcomes = await send_miniviz_data_batch("my-miniviz", [
            {"label_key": "s1", "payload": {"t": 20.5}, "timestamp": 1731129600000},
        ])
        ```
    """
    if isinstance(credentials, MinivizDataSender):
        return await credentials.send(events, key)
    creds = await MinivizCredentials.resolve(credentials)
    sender = MinivizDataSender(creds.session(), concurrency)
    return await sender.send(events, key)
