"""The send pass: the pending events, batch by batch, through the public ``send_miniviz_data_batch`` task, all
on one ``MinivizDataSender`` (the account's session; every acknowledgement journaled before its slot is freed).

Reading runs a batch ahead of sending (in a worker thread), and two batches are sent at once, so sending never
waits at a batch boundary. The sender's bound on events in flight holds across both.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import math
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from prefect.utilities.annotations import quote

from blocks.base import SESSION_CONNECTIONS
from blocks.miniviz import MinivizCredentials
from clients.miniviz import DATA_INTERVAL_S
from clients.redaction import error_text
from tasks.miniviz import EventOutcome, MinivizDataSender, SendingStopped, send_miniviz_data_batch
from tasks.reports import MAX_MARKDOWN_ITEMS

from .checkpoint import file_id
from .options import PacingOptions
from .plan import iter_pending_batches
from .transform import Event

if TYPE_CHECKING:
    from .run import BackfillRun

MAX_CONSECUTIVE_FAILURES = 25  # then the run stops (resumable): the service is down or refuses everything


def sending_target(creds: MinivizCredentials, pacing: PacingOptions) -> tuple[MinivizCredentials, float, int]:
    """``(credentials, interval, in_flight)`` for sending: the block with the run's interval and enough
    connections for the events in flight (unchanged by default, so the run shares the account's session with
    any other task of the process), the data interval, and the events in flight: one when paced (the pacer
    lets no more through, so a crash re-sends at most one), ``pacing.concurrency`` otherwise."""
    updates: dict[str, Any] = {}
    if pacing.data_interval_seconds >= 0:
        updates["data_interval_seconds"] = pacing.data_interval_seconds
    interval = updates.get("data_interval_seconds", creds.data_interval_seconds)
    if interval is None:
        interval = DATA_INTERVAL_S[creds.plan]
    in_flight = 1 if interval > 0 else pacing.concurrency
    connections = pacing.parallel_connections or max(
        creds.parallel_connections, math.ceil(in_flight / SESSION_CONNECTIONS)
    )
    if connections != creds.parallel_connections:
        updates["parallel_connections"] = connections
    return (creds.model_copy(update=updates) if updates else creds), interval, in_flight


async def send_pending(run: BackfillRun) -> None:
    """Send every event the journal does not show as sent; fills ``run.tally`` and ``run.send_figures``
    (where the send time went: pacing, wire round trips, journal commits), or ``run.stopped`` with the reason
    sending stopped early."""
    client = run.creds.session()
    sender = MinivizDataSender(
        client,
        run.in_flight,
        journal=run.journal,
        max_consecutive_failures=MAX_CONSECUTIVE_FAILURES,
        progress=run.progress,
    )
    pacer = client.data_pacer
    stats_before = copy.copy(pacer.stats)
    started = time.monotonic()
    queue: asyncio.Queue = asyncio.Queue(maxsize=2)  # bounded: at most ~3 batches in memory
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_read_batches(run, queue))
            group.create_task(_send_batches(run, sender, queue))
    except BaseException as exc:
        error = _first_error(exc)
        run.stopped = error_text(error)
        raise error from None
    finally:
        await sender.aclose()
        run.send_figures = {"send_seconds": round(time.monotonic() - started, 3)}
        if pacer.interval > 0:
            run.send_figures.update(_since(stats_before, pacer.stats), interval_ms=pacer.interval * 1000)
        run.send_figures.update(sender.journal_figures())


async def _read_batches(run: BackfillRun, queue: asyncio.Queue) -> None:
    """Re-run the transform in a worker thread, a batch ahead of sending; ``None`` ends the queue."""
    files = [f for f in run.files if f in run.fingerprints and file_id(f) not in run.sent.done]
    batches = iter_pending_batches(
        files, run.spec, run.pacing.chunk_rows, run.sent, run.pacing.batch_size, run.s3_client
    )
    while True:
        item = await asyncio.to_thread(next, batches, None)
        await queue.put(item)
        if item is None:
            return


async def _send_batches(run: BackfillRun, sender: MinivizDataSender, queue: asyncio.Queue) -> None:
    """One ``send_miniviz_data_batch`` task run per batch, two at a time; a file is journaled before its
    first event is sent, and as done once every event of it was acknowledged."""
    now = dt.datetime.now(dt.UTC).isoformat()
    await sender.record({"t": "run", "spec": run.spec.fingerprint(), "at": now})
    not_sent: Counter[str] = Counter()
    running: list[tuple[str, list[Event], asyncio.Task]] = []

    async def finish_oldest() -> None:
        path, events, batch = running.pop(0)
        try:
            outcomes = await batch
        except SendingStopped as stop:  # every event of the batch still has its outcome: count them
            not_sent[path] += _count_batch(run, path, events, stop.outcomes)
            raise
        not_sent[path] += _count_batch(run, path, events, outcomes)

    try:
        while (item := await queue.get()) is not None:
            path, events, last = item
            fid = file_id(path)
            if fid not in run.sent.fingerprints:
                await sender.record({"t": "file", "f": fid, "path": path, "fp": run.fingerprints[path]})
                run.sent.fingerprints[fid] = run.fingerprints[path]
            if events:  # quote: Prefect would otherwise walk every event looking for futures
                batch = asyncio.create_task(send_miniviz_data_batch(sender, quote(events), key=fid))
                running.append((path, events, batch))
                if len(running) > 1:
                    await finish_oldest()
            if last:
                while running:
                    await finish_oldest()
                if not not_sent[path]:
                    await sender.record({"t": "file_done", "f": fid})
    except SendingStopped:  # the batch in flight beside it ends at once (the sender stopped): count it too
        while running:
            with contextlib.suppress(SendingStopped):
                await finish_oldest()
        raise
    finally:
        for *_, batch in running:
            batch.cancel()
        for *_, batch in running:
            with contextlib.suppress(BaseException):
                await batch


def _count_batch(run: BackfillRun, path: str, events: list[Event], outcomes: list[EventOutcome]) -> int:
    """Count a finished batch into the tally; events not sent go to the dead letters. Returns how many."""
    sent: Counter[str] = Counter()
    not_sent = 0
    for event, outcome in zip(events, outcomes, strict=True):
        if outcome.status == "done":
            sent[event.label_key] += 1
        else:
            not_sent += 1
            _record_failure(run, path, event, outcome.error or "", refused=outcome.status == "rejected")
    for label, n in sent.items():
        run.tally.cell(path, label)["sent"] += n
    return not_sent


def _record_failure(run: BackfillRun, path: str, event: Event, error: str, refused: bool) -> None:
    """A failed event (a re-run tries it again) or one Miniviz refused as invalid (rejected: fix the input)."""
    run.tally.cell(path, event.label_key)["refused" if refused else "failed"] += 1
    if refused:
        run.tally.reasons["refused_by_service"] += 1
        run.tally.reason_examples.setdefault("refused_by_service", (path, event.row, error))
    run.dead_letters.failed(path, event, error, refused=refused)
    if len(run.failures) < MAX_MARKDOWN_ITEMS:
        run.failures.append(
            {
                "source": path,
                "row": event.row,
                "label_key": event.label_key,
                "timestamp": event.timestamp,
                "error": ("refused as invalid: " if refused else "") + error,
            }
        )


def _since(before: Any, after: Any) -> dict[str, float]:
    """The pacer's figures for this run alone: the session's pacer may have served earlier calls."""
    delta = copy.copy(after)
    for f in dataclasses.fields(after):
        setattr(delta, f.name, getattr(after, f.name) - getattr(before, f.name))
    return delta.as_dict()


def _first_error(error: BaseException) -> BaseException:
    """The exception that stopped sending, out of (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
