"""Sending: one shared paced Miniviz client, every acknowledgement journaled durably (bounded duplicates)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.errors import ApiError, AuthError, InputError, NotFoundError, OutcomeUnknownError
from tasks.journal import Journal

from .checkpoint import ranges
from .plan import ScanProgress
from .transform import Event


class FatalSendError(RuntimeError):
    """Sending cannot go on (bad credentials, unknown project, the service keeps failing): the run stops."""


@dataclass
class BatchOutcome:
    sent_by_label: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[Event, str]] = field(default_factory=list)
    refused: list[tuple[Event, str]] = field(default_factory=list)  # invalid for Miniviz: 400, its reason
    outcome_unknown: int = 0

    @property
    def sent(self) -> int:
        return sum(self.sent_by_label.values())


class BackfillSender:
    """Sends events through ONE shared Miniviz client and journals each acknowledgement durably.

    - Pacing is the client's: with a data interval, one request at a time, each leaving one interval after
      the previous answer began to arrive, timed at the socket (never a 429; ``clients/timing.py``). The
      journal commit of one event runs during the wait for the next slot, so it costs no time unless it
      takes longer than that wait. With interval 0, up to ``max_in_flight`` run concurrently, across however
      many ``send`` calls run at once (the flow overlaps two batches).
    - An event counts as *in flight* from the moment it is sent until its acknowledgement is in the journal
      (fsynced / written to S3), and at most ``max_in_flight`` are in flight at any time. Acknowledgements are
      group-committed by one background committer: while one journal append runs (in a worker thread), the
      events finishing meanwhile wait and go together in the next one, so the number of appends adapts to
      how fast the disk is.
    - So after a crash at any instant, the events Miniviz accepted but the journal does not show are at most
      ``max_in_flight``: those are the only possible duplicates of a re-run. Nothing acknowledged is lost,
      nothing unacknowledged is marked sent.
    - Failed events (after the client's retries) are reported, not journaled: a re-run tries them again.
      Events Miniviz refuses as invalid (400: e.g. a timestamp it will not take) are ``refused``, with the
      service's reason: rejected, the input must change.
      ``AuthError``/``NotFoundError`` (wrong token or project) and ``max_consecutive_failures`` failures in a
      row raise ``FatalSendError``: the run stops, resumable.

    Call ``aclose()`` when done (stops the committer).
    """

    def __init__(
        self,
        client: Any,
        journal: Journal,
        max_in_flight: int = 1,
        *,
        max_consecutive_failures: int = 25,
        progress: ScanProgress | None = None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.max_in_flight = max(1, max_in_flight)
        self.max_consecutive_failures = max_consecutive_failures
        self.progress = progress or ScanProgress()
        self.consecutive_failures = 0
        self.in_flight = 0
        self.journal_appends = 0
        self.commits = 0  # group commits of acknowledgements, and the time they took
        self.commit_seconds = 0.0
        self.commit_seconds_max = 0.0
        self._slots: asyncio.Semaphore | None = None
        self._pending: list[tuple[str, int]] = []
        self._commit_done: asyncio.Future | None = None
        self._wake: asyncio.Event | None = None
        self._committer: asyncio.Task | None = None
        self._closing = False
        self._broken: BaseException | None = None
        self._journal_lock = threading.Lock()

    def record(self, *records: dict[str, Any]) -> None:
        """Append records to the journal durably (blocking: call from a worker thread in async code).

        Serialized: ``Journal`` is not safe for concurrent appends (S3 segment numbers)."""
        with self._journal_lock:
            self.journal.append(*records)
            self.journal_appends += 1

    def journal_figures(self) -> dict[str, float]:
        """How the group commits of acknowledgements went: how many, mean and slowest (ms)."""
        n = max(1, self.commits)
        return {
            "journal_commits": self.commits,
            "mean_commit_ms": round(self.commit_seconds / n * 1000, 3),
            "max_commit_ms": round(self.commit_seconds_max * 1000, 3),
        }

    async def send(self, fid: str, events: Sequence[Event]) -> BatchOutcome:
        """Send ``events`` of file ``fid``; returns once each is acknowledged and journaled, or failed."""
        self._start()
        outcome = BatchOutcome()
        try:
            async with asyncio.TaskGroup() as group:
                for event in events:
                    group.create_task(self._one(fid, event, outcome))
        except BaseExceptionGroup as group_error:
            raise _first_leaf(group_error) from None
        return outcome

    async def aclose(self) -> None:
        """Stop the committer once everything acknowledged is journaled."""
        if self._committer is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await self._committer
        except Exception:
            if self._broken is None:
                raise  # otherwise every waiter already got the journal error
        finally:
            self._committer = None

    def _start(self) -> None:
        if self._committer is not None:
            return
        loop = asyncio.get_running_loop()
        self._slots = self._slots or asyncio.Semaphore(self.max_in_flight)
        self._wake = asyncio.Event()
        self._commit_done = loop.create_future()
        self._closing = False
        self._committer = loop.create_task(self._commit_loop())

    async def _one(self, fid: str, event: Event, outcome: BatchOutcome) -> None:
        async with self._slots:
            self.in_flight += 1
            try:
                try:
                    await self.client.send_data(event.label_key, event.payload, event.timestamp)
                except (AuthError, NotFoundError) as exc:
                    raise FatalSendError(f"Miniviz refused the project or token: {exc}") from None
                except (ApiError, InputError) as exc:
                    self._failed(outcome, event, exc)
                    return
                self.consecutive_failures = 0
                await self._journaled(fid, event.seq)
                outcome.sent_by_label[event.label_key] += 1
                self.progress.sent += 1
            finally:
                self.in_flight -= 1

    def _failed(self, outcome: BatchOutcome, event: Event, exc: Exception) -> None:
        if isinstance(exc, OutcomeUnknownError):
            outcome.outcome_unknown += 1
        if _refused(exc):
            outcome.refused.append((event, str(exc)))
        else:
            outcome.failed.append((event, str(exc)))
        self.progress.failed += 1
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.max_consecutive_failures:
            raise FatalSendError(
                f"{self.consecutive_failures} events failed in a row (last: {exc}); stopping so a later "
                "re-run can resume"
            )

    async def _journaled(self, fid: str, seq: int) -> None:
        """Wait until the acknowledgement of ``seq`` is durably in the journal."""
        if self._broken is not None:
            raise self._broken
        self._pending.append((fid, seq))
        done = self._commit_done
        self._wake.set()
        await asyncio.shield(done)

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                if self._closing:
                    return
                continue
            batch, self._pending = self._pending, []
            done, self._commit_done = self._commit_done, loop.create_future()
            by_file: dict[str, list[int]] = {}
            for fid, seq in batch:
                by_file.setdefault(fid, []).append(seq)
            records = [{"t": "sent", "f": fid, "r": ranges(seqs)} for fid, seqs in by_file.items()]
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self.record, *records)  # fsync or S3 PUT: off the event loop
            except BaseException as exc:
                self._broken = exc  # no acknowledgement can be made durable any more: everyone fails
                for future in (done, self._commit_done):
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved: no "never retrieved" warning if nobody waits
                raise
            took = time.perf_counter() - started
            self.commits += 1
            self.commit_seconds += took
            self.commit_seconds_max = max(self.commit_seconds_max, took)
            done.set_result(None)
            if self._pending:
                self._wake.set()


def _refused(exc: Exception) -> bool:
    """The event itself is invalid for Miniviz (the client's documented checks, or the service's 400/413/422):
    sending it again cannot help, the input must change (``rejected``, not ``failed``)."""
    if isinstance(exc, InputError):
        return True
    return isinstance(exc, ApiError) and exc.status in (400, 413, 422) and not exc.retryable


def _first_leaf(error: BaseException) -> BaseException:
    """The exception that matters in a (nested) exception group: a FatalSendError if there is one."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(error)
    fatal = [e for e in leaves if isinstance(e, FatalSendError)]
    return (fatal or leaves)[0]


@task(name="miniviz-backfill-send-batch", cache_policy=NO_CACHE)
async def send_backfill_batch(sender: BackfillSender, fid: str, events: list[Event]) -> BatchOutcome:
    """Send one batch of events of one file (paced by the client, journaled per acknowledgement)."""
    return await sender.send(fid, events)
