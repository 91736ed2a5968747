"""The plan pass (count everything, write dead letters, no sending) and the pending events for the send pass."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.errors import InputError
from clients.redaction import error_text

from .checkpoint import SentIndex, file_fingerprint, file_id
from .dead_letters import DeadLetterWriter
from .labels import LabelMapper
from .spec import SKIPPED_REASONS, BackfillSpec
from .transform import ChunkResult, Event, iter_file_results


class Tally:
    """Counts per (file, label) and per rejection reason; bounded by the number of files x labels."""

    FIELDS = (
        "rows",
        "rejected_rows",
        "skipped_rows",
        "out_of_range_rows",
        "events",
        "split_rows",
        "already_sent",
        "sent",
        "refused",
        "failed",
    )

    def __init__(self) -> None:
        self.by_label: dict[tuple[str, str], Counter[str]] = {}
        self.reasons: Counter[str] = Counter()
        self.reason_examples: dict[str, tuple[str, int, str]] = {}
        self.file_errors: dict[str, str] = {}
        self.files: list[str] = []
        self.read_as: dict[str, str] = {}  # how each CSV file was read (separator, encoding, decimal)
        self.unsent: dict[
            str, str
        ] = {}  # why a file's events are not all sent (a fanned-out run: its shards')

    def cell(self, source: str, label: str | None) -> Counter[str]:
        key = (source, label or "")
        counter = self.by_label.get(key)
        if counter is None:
            counter = self.by_label[key] = Counter()
        return counter

    def add_chunk(self, source: str, result: ChunkResult, fid: str, sent: SentIndex) -> None:
        for label, n in result.rows_by_label.items():
            self.cell(source, label)["rows"] += n
        for label, n in result.out_of_range_by_label.items():
            self.cell(source, label)["out_of_range_rows"] += n
        for r in result.rejections:
            kind = "skipped_rows" if r.reason in SKIPPED_REASONS else "rejected_rows"
            self.cell(source, r.label_key)[kind] += r.rows
            self.reasons[r.reason] += r.rows
            self.reason_examples.setdefault(r.reason, (source, r.row, r.detail))
        for e in result.events:
            c = self.cell(source, e.label_key)
            c["events"] += 1
            if e.part == 1:
                c["split_rows"] += 1
            if sent.is_sent(fid, e.seq):
                c["already_sent"] += 1

    def total(self, name: str) -> int:
        return sum(c[name] for c in self.by_label.values())


class ScanProgress:
    """Counters the flow's progress reporter reads while the scan thread and the sender update them."""

    def __init__(self) -> None:
        self.phase = "scanning"
        self.rows_scanned = 0
        self.to_send = 0
        self.sent = 0
        self.failed = 0
        self.send_started: float | None = None
        self.waiting = ""  # what a fanned-out run waits for instead: its shards


@task(name="miniviz-backfill-scan", cache_policy=NO_CACHE)
async def scan_backfill(
    files: list[str],
    spec: BackfillSpec,
    chunk_rows: int,
    sent: SentIndex,
    dead_letters: DeadLetterWriter,
    s3_client: Any = None,
    labels: LabelMapper | None = None,
    progress: ScanProgress | None = None,
) -> tuple[Tally, dict[str, dict[str, Any]]]:
    """The plan pass: transform every file without sending (in a worker thread): counts, dead letters,
    fingerprints. Returns (tally, fingerprints).

    A file that cannot be read (missing column, unknown type, changed since the journal recorded it) is
    listed in ``tally.file_errors`` and skipped; the other files go on.
    """
    tally = Tally()
    labels = labels or LabelMapper()
    fingerprints: dict[str, dict[str, Any]] = {}

    def scan(path: str) -> None:
        fid = file_id(path)
        fingerprint = file_fingerprint(path, s3_client)
        known = sent.fingerprints.get(fid)
        if known and known != fingerprint:
            raise InputError(
                "source",
                f"{path} changed since the journal recorded it ({known} -> {fingerprint})",
                "restore it, or use a new journal to send it again",
            )
        fingerprints[path] = fingerprint
        for result in iter_file_results(path, spec, chunk_rows, s3_client, labels, read_as=tally.read_as):
            tally.add_chunk(path, result, fid, sent)
            dead_letters.rejected(path, result.rejections)
            if progress is not None:
                progress.rows_scanned += result.rows

    def scan_all() -> None:
        for path in files:
            tally.files.append(path)
            try:
                scan(path)
            except (InputError, OSError, ValueError, KeyError) as exc:
                tally.file_errors[path] = error_text(exc)
                fingerprints.pop(path, None)

    await asyncio.to_thread(scan_all)
    return tally, fingerprints


def iter_pending_batches(
    files: Sequence[str],
    spec: BackfillSpec,
    chunk_rows: int,
    sent: SentIndex,
    batch_size: int,
    s3_client: Any = None,
) -> Iterator[tuple[str, list[Event], bool]]:
    """``(path, events, last_batch_of_file)`` for every event the journal does not show as sent, file by file.

    Re-runs the same deterministic transform as the scan, so event numbers match; at most one chunk and one
    batch are in memory. Every file ends with a (possibly empty) batch flagged ``last_batch_of_file``.
    """
    for path in files:
        fid = file_id(path)
        batch: list[Event] = []
        for result in iter_file_results(path, spec, chunk_rows, s3_client, report_bad_lines=False):
            for event in result.events:
                if not sent.is_sent(fid, event.seq):
                    batch.append(event)
                    if len(batch) >= batch_size:
                        yield path, batch, False
                        batch = []
        yield path, batch, True


def estimate_seconds(events: int, interval: float) -> float | None:
    """Time ``events`` take at one per ``interval`` seconds (None when there is no rate limit)."""
    return events * interval if interval > 0 else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text
