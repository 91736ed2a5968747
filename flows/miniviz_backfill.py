"""Flow: backfill historical measurements from CSV/Parquet files into Miniviz (issue 6).

Two passes over the input, both streamed chunk by chunk (memory stays flat whatever the size):

1. **Plan** (one task, ``miniviz-backfill-scan``): transform every row, count events and rejections per file and
   label, write rejected rows to the dead-letter file, read the journal to see what is already sent, and
   publish the plan artifact (events, rejections by reason, estimated time at the rate limit). ``dry_run=True``
   stops here: nothing is sent.
2. **Send** (one task per batch of ``batch_size`` events, ``miniviz-backfill-send-batch``): the same
   deterministic transform again, skipping the events the journal shows as sent, through one shared Miniviz
   client: paced at the project's interval (each request leaves one interval after the previous answer began
   to arrive, timed at the socket, so no 429), or ``concurrency`` requests at once over one-connection pools
   (``clients/spread.py``) when the interval is 0. The summary's ``send_timing`` says where the send time went.

Resuming: every event of a file has a number (``seq``) fixed by the file and the transform parameters. An
acknowledged event is journaled (``{"t": "sent", "f": <file>, "r": [[start, end)]}``, group-committed, fsynced)
before its concurrency slot is released, so a crash (even ``kill -9``) loses no row, and re-sends at most the
events in flight at that instant: at most ``concurrency`` with no rate limit, at most 1 when paced. The
journal also pins each file's size and mtime (or ETag): a file that changed is refused rather than resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import time
from collections import Counter
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote
from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel

from blocks.base import load_block
from blocks.miniviz import MinivizCredentials
from clients.errors import InputError
from clients.miniviz import DATA_INTERVAL_S
from clients.spread import spread_for
from tasks.backfill import (
    REASONS,
    BackfillSender,
    BackfillSpec,
    DeadLetterWriter,
    Event,
    LabelMapper,
    ScanProgress,
    SentIndex,
    Tally,
    estimate_seconds,
    file_id,
    format_duration,
    iter_pending_batches,
    scan_backfill,
    send_backfill_batch,
)
from tasks.backfill.options import (
    CsvOptions,
    EventOptions,
    OutputOptions,
    PacingOptions,
    TimestampOptions,
    build_spec,
)
from tasks.journal import Journal
from tasks.reports import MAX_MARKDOWN_ITEMS, Progress, publish_markdown, publish_table
from tasks.run_state import finish
from tasks.storage import resolve_s3_client
from tasks.tables import list_sources, write_table

FLOW_NAME = "miniviz-backfill"
STATE_DIR = ".pipeline-state/miniviz-backfill"
PROGRESS_EVERY_SECONDS = 2.0
MAX_SUMMARY_ROWS = 500


class BackfillSummary(BaseModel):
    """What a backfill run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    files: int
    files_failed: int
    rows: int
    rows_rejected: int
    rows_skipped: int
    rows_out_of_range: int
    rows_split: int
    events: int
    events_already_sent: int
    events_to_send: int
    events_sent: int
    events_refused: int
    events_failed: int
    rejected_by_reason: dict[str, int]
    read_as: dict[str, str] = {}
    interval_seconds: float
    estimated_seconds: float | None
    send_seconds: float | None = None
    send_timing: dict[str, float] | None = None
    report: str
    dead_letter: str
    journal: str


@flow(name=FLOW_NAME, log_prints=False)
async def miniviz_backfill(
    source: str = "data/history/*.csv",
    miniviz_block: str = "miniviz-demo",
    dry_run: bool = False,
    csv: CsvOptions = CsvOptions(),  # noqa: B008 - immutable pydantic defaults, shown in the UI
    timestamps: TimestampOptions = TimestampOptions(),  # noqa: B008
    events: EventOptions = EventOptions(),  # noqa: B008
    pacing: PacingOptions = PacingOptions(),  # noqa: B008
    outputs: OutputOptions = OutputOptions(),  # noqa: B008
    s3_bucket_block: str = "",
) -> BackfillSummary:
    """Backfill historical measurements (CSV, Parquet, JSON Lines) into a Miniviz project, paced and resumable.

    Ends Completed only when every event was sent (or already sent by an earlier run) and no row needs fixing;
    otherwise Failed, after the report and the dead-letter file are written, with the counts in the message.
    Skipped by design (Completed): rows outside start/end, exact duplicate rows, rows whose every metric is
    empty (a gap in the measurements), files with a header and no row. Rejected (Failed): every
    other row that cannot be sent (bad timestamp, no label, unusable value, ragged CSV line, an event Miniviz
    refuses as invalid), and a file that cannot be read or lacks a column. A source with nothing to send is
    Failed too. A dry run ends in the state the real run would (if every send succeeded).

    Args:
        source: A CSV/Parquet/JSON Lines file, a glob (data/*.parquet), a directory, or s3://bucket/prefix/.
        miniviz_block: Name of the saved Miniviz Credentials block (project, token, plan, data interval).
        dry_run: Plan only: count events and rejections and estimate the time; send nothing.
        csv: How CSV files are read: separator, encoding, decimal mark (detected by default).
        timestamps: The time column and how to read it: format, epoch unit, time zone, start and end.
        events: Labels, metrics, renaming, resampling, and what to do with oversized rows.
        pacing: Data interval, concurrency, batch and chunk sizes.
        outputs: Journal, report and dead-letter locations.
        s3_bucket_block: Name of a saved S3Bucket block whose credentials reach the s3:// paths (endpoint URL for
            a local S3). Empty: boto3's default credentials.
    """
    logger = get_run_logger()
    spec = build_spec(csv, timestamps, events)
    data_interval_seconds = pacing.data_interval_seconds if pacing.data_interval_seconds >= 0 else None
    concurrency, chunk_rows, batch_size = pacing.concurrency, pacing.chunk_rows, pacing.batch_size
    journal, report, dead_letter = outputs.journal, outputs.report, outputs.dead_letter

    creds = await MinivizCredentials.resolve(miniviz_block)
    updates: dict[str, Any] = {}
    if data_interval_seconds is not None:
        updates["data_interval_seconds"] = data_interval_seconds
    interval = (
        data_interval_seconds
        if data_interval_seconds is not None
        else creds.data_interval_seconds
        if creds.data_interval_seconds is not None
        else DATA_INTERVAL_S[creds.plan]
    )
    # paced: one event at a time (the client's pacer allows no more), so a crash re-sends at most one
    in_flight = 1 if interval > 0 else concurrency
    updates["parallel_connections"] = pacing.parallel_connections or max(
        creds.parallel_connections, math.ceil(in_flight / 4)
    )
    creds = creds.model_copy(update=updates)

    s3_client = None
    if s3_bucket_block:
        s3_client = resolve_s3_client(await load_block(S3Bucket, s3_bucket_block))
    elif any(p and p.startswith("s3://") for p in (source, journal, report, dead_letter)):
        import boto3

        s3_client = boto3.client("s3")

    resume_key = _resume_key(source, creds, spec, chunk_rows)
    journal_location = journal or f"{STATE_DIR}/{resume_key}.jsonl"
    log = Journal(journal_location, s3_client)
    sent = await asyncio.to_thread(SentIndex.load, log)
    if sent.specs and spec.fingerprint() not in sent.specs:
        raise InputError(
            "journal",
            f"{journal_location} was written for other transform parameters",
            "use the same parameters to resume, or another journal",
        )
    files = await asyncio.to_thread(list_sources, source, s3_client)
    if not files:
        raise InputError(
            "source", f"{source!r} matches no file", "a CSV/Parquet file, glob, directory or s3:// prefix"
        )

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report_location = report or f"reports/{FLOW_NAME}-{stamp}.csv"
    dead_letter_location = dead_letter or _beside(report_location, "-dead-letter.csv")
    dead_letters = DeadLetterWriter(dead_letter_location, s3_client)
    logger.info(
        "Backfill of %d file(s) from %s into Miniviz project %s (%s plan): %s; journal %s",
        len(files),
        source,
        creds.project_id,
        creds.plan,
        "dry run" if dry_run else f"interval {interval:g} s" if interval else f"{in_flight} in flight",
        journal_location,
    )

    progress = ScanProgress()
    progress_artifact = Progress(f"{FLOW_NAME}-progress", "Miniviz backfill")
    reporter = asyncio.create_task(_report_progress(progress, progress_artifact, interval))
    labels = LabelMapper()
    failures: list[dict[str, Any]] = []
    tally = Tally()
    to_send = 0
    send_figures: dict[str, float] = {}
    stopped = ""  # why sending stopped early, for the report's unfinished rows
    try:
        tally, fingerprints = await scan_backfill(
            files, spec, chunk_rows, sent, dead_letters, s3_client, labels, progress
        )
        to_send = tally.total("events") - tally.total("already_sent")
        progress.to_send = to_send
        estimate = estimate_seconds(to_send, interval)
        await publish_markdown(
            f"{FLOW_NAME}-plan",
            _plan_markdown(source, creds, tally, labels, to_send, interval, dry_run),
            "Miniviz backfill plan: events, rejected rows, estimated time",
        )
        logger.info(
            "Plan: %d rows -> %d events (%d already sent, %d to send), %d rows rejected, %d out of range; "
            "estimated %s",
            tally.total("rows"),
            tally.total("events"),
            tally.total("already_sent"),
            to_send,
            tally.total("rejected_rows"),
            tally.total("out_of_range_rows"),
            format_duration(estimate) if estimate is not None else "n/a (no rate limit)",
        )
        if not dry_run and to_send:
            progress.phase = "sending"
            progress.send_started = time.monotonic()
            pending_files = [f for f in files if f in fingerprints and file_id(f) not in sent.done]
            try:
                send_figures = await _send_all(
                    pending_files,
                    spec,
                    chunk_rows,
                    sent,
                    batch_size,
                    s3_client,
                    creds,
                    in_flight,
                    log,
                    fingerprints,
                    tally,
                    dead_letters,
                    failures,
                    progress,
                )
            except BaseException as exc:
                stopped = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await asyncio.to_thread(dead_letters.close)
        report_df = _report_frame(tally, dry_run, stopped)
        await asyncio.to_thread(write_table, report_df, report_location, s3_client)
        await _publish_outcome(tally, report_df, failures, progress, progress_artifact, dry_run)

    summary = BackfillSummary(
        dry_run=dry_run,
        files=len(files),
        files_failed=len(tally.file_errors),
        rows=tally.total("rows"),
        rows_rejected=tally.total("rejected_rows"),
        rows_skipped=tally.total("skipped_rows"),
        rows_out_of_range=tally.total("out_of_range_rows"),
        rows_split=tally.total("split_rows"),
        events=tally.total("events"),
        events_already_sent=tally.total("already_sent"),
        events_to_send=to_send,
        events_sent=tally.total("sent"),
        events_refused=tally.total("refused"),
        events_failed=tally.total("failed"),
        rejected_by_reason=dict(tally.reasons.most_common()),
        read_as=tally.read_as,
        interval_seconds=interval,
        estimated_seconds=estimate_seconds(to_send, interval),
        send_seconds=send_figures.pop("send_seconds", None),
        send_timing=send_figures or None,
        report=report_location,
        dead_letter=dead_letter_location,
        journal=journal_location,
    )
    for path, how in tally.read_as.items():
        logger.info("Read %s as CSV: %s", path, how)
    return finish(
        summary,
        what="items (events sent or planned, rows skipped or rejected)",
        counts=_outcome_counts(summary, tally),
        report=f"{report_location}, dead letters {dead_letter_location}"
        if dead_letters.count
        else report_location,
        problems=_problems(summary, tally),
        logger=logger,
    )


def _outcome_counts(summary: BackfillSummary, tally: Tally) -> dict[str, int]:
    """The run's outcomes (tasks/run_state.py): events done, failed or (dry run) deferred; rows skipped by
    design (outside start/end, duplicates, empty measurements) or rejected (everything else the user must fix)."""
    return {
        "done": summary.events_sent + summary.events_already_sent,
        "deferred": summary.events_to_send if summary.dry_run else 0,
        "skipped": summary.rows_skipped + summary.rows_out_of_range + _empty_files(tally),
        "rejected": summary.rows_rejected + summary.events_refused,
        "failed": summary.events_failed,
    }


def _empty_files(tally: Tally) -> int:
    """Files that hold a header and no row: skipped (e.g. an empty partition of an export)."""
    with_rows = {source for (source, _), c in tally.by_label.items() if c["rows"]}
    return sum(1 for f in tally.files if f not in with_rows and f not in tally.file_errors)


def _problems(summary: BackfillSummary, tally: Tally) -> list[str]:
    """Input-level errors: files that cannot be read or mapped, and a source with nothing to send."""
    problems = [
        f"{path}: {_first_line(error.removeprefix('InputError: ').replace(f'source: {path} ', ''))}"
        for path, error in tally.file_errors.items()
    ]
    if not problems and not summary.events and not summary.rows_rejected:  # e.g. every row outside start/end
        problems.append(f"nothing to send in {summary.files} file(s)")
    return problems


def _first_line(text: str) -> str:
    return " ".join(text.split())[:300]


async def _send_all(
    files: list[str],
    spec: BackfillSpec,
    chunk_rows: int,
    sent: SentIndex,
    batch_size: int,
    s3_client: Any,
    creds: MinivizCredentials,
    in_flight: int,
    log: Journal,
    fingerprints: dict[str, dict[str, Any]],
    tally: Tally,
    dead_letters: DeadLetterWriter,
    failures: list[dict[str, Any]],
    progress: ScanProgress,
) -> dict[str, float]:
    """Producer (transform in a worker thread) -> queue of batches -> one send task per batch.

    Returns where the time went: ``send_seconds``, and when paced the pacer's figures (mean wire round trip,
    lateness, idle time per event) and the journal's group commits."""
    batches = iter_pending_batches(files, spec, chunk_rows, sent, batch_size, s3_client)
    queue: asyncio.Queue = asyncio.Queue(maxsize=2)  # bounded: at most ~3 batches in memory

    async def produce() -> None:
        while True:
            item = await asyncio.to_thread(next, batches, None)
            await queue.put(item)
            if item is None:
                return

    async def consume(sender: BackfillSender) -> None:
        await asyncio.to_thread(sender.record, {"t": "run", "spec": spec.fingerprint(), "at": _now_iso()})
        failed_in_file: Counter[str] = Counter()
        running: list[tuple[str, asyncio.Task]] = []  # two batches overlap: no drain at batch boundaries

        async def finish_oldest() -> None:
            path, batch_task = running.pop(0)
            outcome = await batch_task
            for label, n in outcome.sent_by_label.items():
                tally.cell(path, label)["sent"] += n
            for event, error in outcome.failed:
                _record_failure(path, event, error, tally, dead_letters, failures)
            for event, error in outcome.refused:
                _record_failure(path, event, error, tally, dead_letters, failures, refused=True)
            failed_in_file[path] += len(outcome.failed) + len(outcome.refused)

        try:
            while (item := await queue.get()) is not None:
                path, events, last = item
                fid = file_id(path)
                if fid not in sent.fingerprints:
                    await asyncio.to_thread(
                        sender.record, {"t": "file", "f": fid, "path": path, "fp": fingerprints[path]}
                    )
                    sent.fingerprints[fid] = fingerprints[path]
                if events:  # quote: Prefect would otherwise walk every event looking for futures
                    running.append(
                        (path, asyncio.create_task(send_backfill_batch(sender, fid, quote(events))))
                    )
                    if len(running) > 1:
                        await finish_oldest()
                if last:
                    while running:
                        await finish_oldest()
                    if not failed_in_file[path]:
                        await asyncio.to_thread(sender.record, {"t": "file_done", "f": fid})
        finally:
            for _, batch_task in running:
                batch_task.cancel()
            for _, batch_task in running:
                with contextlib.suppress(BaseException):
                    await batch_task

    started = time.monotonic()
    # Unpaced, many requests in flight: one-connection pools, cheaper per request than one big httpx pool
    # (clients/spread.py). Paced, one in flight: the default transport, whose wire the pacer can time.
    transport = spread_for(in_flight) if in_flight > 1 else None
    async with creds.get_client(transport=transport) as client:
        sender = BackfillSender(client, log, in_flight, progress=progress)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(produce())
                group.create_task(consume(sender))
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        finally:
            await sender.aclose()
        figures: dict[str, float] = {"send_seconds": round(time.monotonic() - started, 3)}
        if client.data_pacer.interval > 0:
            figures.update(client.data_pacer.stats.as_dict(), interval_ms=client.data_pacer.interval * 1000)
        figures.update(sender.journal_figures())
        return figures


def _first_error(error: BaseException) -> BaseException:
    """The exception that stopped sending, out of (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _record_failure(
    path: str,
    event: Event,
    error: str,
    tally: Tally,
    dead_letters: DeadLetterWriter,
    failures: list[dict[str, Any]],
    refused: bool = False,
) -> None:
    tally.cell(path, event.label_key)["refused" if refused else "failed"] += 1
    if refused:
        tally.reasons["refused_by_service"] += 1
        tally.reason_examples.setdefault("refused_by_service", (path, event.row, error))
    dead_letters.failed(path, event, error, refused=refused)
    if len(failures) < MAX_MARKDOWN_ITEMS:
        failures.append(
            {
                "source": path,
                "row": event.row,
                "label_key": event.label_key,
                "timestamp": event.timestamp,
                "error": ("refused as invalid: " if refused else "") + error,
            }
        )


# --- parameters, keys, paths ----------------------------------------------------------------------------


def _resume_key(source: str, creds: MinivizCredentials, spec: BackfillSpec, chunk_rows: int) -> str:
    """Stable key of (input, target project, transform): the default journal name."""
    data = {
        "source": source,
        "project_id": creds.project_id,
        "base_url": creds.base_url,
        "spec": spec.fingerprint(),
        # resampled buckets are emitted per chunk, so the event order depends on the chunk size
        "chunk_rows": chunk_rows if spec.resample_ms else None,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _beside(location: str, suffix: str) -> str:
    base, _, ext = location.rpartition(".")
    return f"{base}{suffix}" if base and "/" not in ext else f"{location}{suffix}"


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# --- reports and artifacts ------------------------------------------------------------------------------


def _report_frame(tally: Tally, dry_run: bool, stopped: str = "") -> pd.DataFrame:
    """One row per (file, label), and one per file that holds no row or could not be read."""
    rows = []
    for (source, label), c in sorted(tally.by_label.items()):
        to_send = c["events"] - c["already_sent"]
        if source in tally.file_errors:
            status = "failed"
        elif c["failed"] or c["refused"]:
            status = "partial"
        elif not c["events"]:
            status = (
                "rejected"
                if c["rejected_rows"]
                else "out_of_range"
                if c["out_of_range_rows"]
                else "skipped"
                if c["skipped_rows"]
                else ""
            )
        elif dry_run:
            status = "planned" if to_send else "done"
        else:
            status = "done" if c["sent"] + c["already_sent"] == c["events"] else "pending"
        error = tally.file_errors.get(source, "")
        if status == "pending" and stopped:
            error = f"not all sent: the run stopped early ({stopped}); a re-run sends the rest"
        rows.append(
            {
                "source": source,
                "label_key": label,
                "status": status,
                **{f: c[f] for f in Tally.FIELDS},
                "to_send": to_send,
                "error": error,
                "read_as": tally.read_as.get(source, ""),
            }
        )
    reported = {source for source, _ in tally.by_label}
    for source in dict.fromkeys([*tally.files, *tally.file_errors]):
        if source not in reported:
            error = tally.file_errors.get(source, "")
            rows.append(
                {
                    "source": source,
                    "label_key": "",
                    "status": "failed" if error else "empty",
                    **{f: 0 for f in Tally.FIELDS},
                    "to_send": 0,
                    "error": error or "the file holds no rows",
                    "read_as": tally.read_as.get(source, ""),
                }
            )
    columns = ["source", "label_key", "status", *Tally.FIELDS, "to_send", "error", "read_as"]
    return pd.DataFrame(rows, columns=columns)


def _interval_text(interval: float, creds: MinivizCredentials) -> str:
    if interval <= 0:
        return "no rate limit"
    documented = DATA_INTERVAL_S[creds.plan]
    origin = f"{creds.plan} plan" if interval == documented else "configured"
    return f"one event per {interval:g} s ({origin})"


def _plan_markdown(
    source: str,
    creds: MinivizCredentials,
    tally: Tally,
    labels: LabelMapper,
    to_send: int,
    interval: float,
    dry_run: bool,
) -> str:
    estimate = estimate_seconds(to_send, interval)
    lines = [
        f"# Miniviz backfill plan{' (dry run: nothing sent)' if dry_run else ''}",
        "",
        f"`{source}` -> project `{creds.project_id}` ({creds.plan} plan), {len(tally.files)} file(s).",
        "",
        "| | count |",
        "|---|---|",
        f"| rows read | {tally.total('rows'):,} |",
        f"| events | {tally.total('events'):,} |",
        f"| rows split into several events | {tally.total('split_rows'):,} |",
        f"| rejected rows (dead-letter file) | {tally.total('rejected_rows'):,} |",
        f"| skipped rows (exact duplicates, no metric value) | {tally.total('skipped_rows'):,} |",
        f"| rows outside the time range | {tally.total('out_of_range_rows'):,} |",
        f"| events already sent (journal) | {tally.total('already_sent'):,} |",
        f"| **events to send** | **{to_send:,}** |",
        f"| rate | {_interval_text(interval, creds)} |",
        f"| **estimated time** | **{format_duration(estimate) if estimate is not None else 'n/a: no rate limit'}**"
        f"{f' ({estimate:,.0f} s)' if estimate is not None else ''} |",
        f"| at the Pro plan limit (15 s) | {format_duration(estimate_seconds(to_send, DATA_INTERVAL_S['pro']))} |",
        f"| at the Free plan limit (60 s) | {format_duration(estimate_seconds(to_send, DATA_INTERVAL_S['free']))} |",
    ]
    if tally.reasons:
        lines += [
            "",
            "## Rejected rows by reason",
            "",
            "| reason | rows | meaning | first example |",
            "|---|---|---|---|",
        ]
        for code, n in tally.reasons.most_common():
            src, row, detail = tally.reason_examples[code]
            lines.append(
                f"| `{code}` | {n:,} | {REASONS.get(code, code)} | {_cell(f'{src} row {row}: {detail}')} |"
            )
    if tally.read_as:
        lines += ["", "## CSV files read as", "", "| file | read as |", "|---|---|"]
        lines += [f"| {_cell(p)} | {_cell(how)} |" for p, how in list(tally.read_as.items())[:50]]
    if tally.file_errors:
        lines += ["", "## Files that cannot be sent", "", "| file | error |", "|---|---|"]
        lines += [f"| {_cell(p)} | {_cell(e)} |" for p, e in tally.file_errors.items()]
    if labels.changed:
        lines += [
            "",
            f"## Labels mapped into Miniviz's characters ({len(labels.changed):,})",
            "",
            "| label | label_key |",
            "|---|---|",
        ]
        lines += [f"| {_cell(o)} | `{m}` |" for o, m in list(labels.changed.items())[:50]]
    if labels.collisions:
        lines += ["", "## Warning: different labels mapped to the same label_key", ""]
        lines += [
            f"- `{m}` <- {', '.join(sorted(map(repr, o)))}" for m, o in list(labels.collisions.items())[:50]
        ]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")[:300]


async def _publish_outcome(
    tally: Tally,
    report_df: pd.DataFrame,
    failures: list[dict[str, Any]],
    progress: ScanProgress,
    progress_artifact: Progress,
    dry_run: bool,
) -> None:
    rows = report_df.head(MAX_SUMMARY_ROWS).to_dict("records")
    await publish_table(
        f"{FLOW_NAME}-summary",
        rows,
        f"Miniviz backfill per file and label ({'plan' if dry_run else 'sent'}); "
        f"{len(report_df)} row(s){'' if len(report_df) <= MAX_SUMMARY_ROWS else ', first 500 shown'}",
    )
    lines = ["# Miniviz backfill: failures and rejections", ""]
    if failures:
        lines += [
            f"{tally.total('failed'):,} event(s) failed to send (a re-run sends them again):",
            "",
            "| source | row | label_key | timestamp | error |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(f['source'])} | {f['row']} | {_cell(f['label_key'])} | {f['timestamp']} | {_cell(f['error'])} |"
            for f in failures
        ]
    else:
        lines.append("No event failed to send." if not dry_run else "Dry run: nothing was sent.")
    if tally.reasons:
        lines += [
            "",
            f"{tally.total('rejected_rows'):,} row(s) rejected (see the dead-letter file):",
            "",
            "| reason | rows | first example |",
            "|---|---|---|",
        ]
        for code, n in tally.reasons.most_common():
            src, row, detail = tally.reason_examples[code]
            lines.append(f"| `{code}` | {n:,} | {_cell(f'{src} row {row}: {detail}')} |")
    for path, error in tally.file_errors.items():
        lines.append(f"\nFile not sent: {_cell(path)}: {_cell(error)}")
    await publish_markdown(f"{FLOW_NAME}-failures", "\n".join(lines) + "\n", "Miniviz backfill failures")
    if dry_run:
        await progress_artifact.update(100.0, f"Dry run: {progress.to_send:,} event(s) to send, nothing sent")
    else:
        done = progress.sent + progress.failed
        percent = 100.0 if not progress.to_send else 100.0 * done / progress.to_send
        await progress_artifact.update(
            percent, f"Sent {progress.sent:,} of {progress.to_send:,} event(s), {progress.failed:,} failed"
        )


async def _report_progress(progress: ScanProgress, artifact: Progress, interval: float) -> None:
    """Update the progress artifact every few seconds: rows scanned, then events sent and time left."""
    while True:
        if progress.phase == "scanning":
            await artifact.update(0.0, f"Planning: {progress.rows_scanned:,} rows read")
        else:
            done = progress.sent + progress.failed
            remaining = max(0, progress.to_send - done)
            elapsed = time.monotonic() - (progress.send_started or time.monotonic())
            if done >= 5 and elapsed > 0:
                eta: float | None = remaining * elapsed / done
            elif interval > 0:
                eta = remaining * interval
            else:
                eta = None
            percent = 100.0 * done / progress.to_send if progress.to_send else 100.0
            await artifact.update(
                percent,
                f"Sent {progress.sent:,} of {progress.to_send:,} event(s), {progress.failed:,} failed; "
                f"about {format_duration(eta) if eta is not None else 'unknown'} left",
            )
        await asyncio.sleep(PROGRESS_EVERY_SECONDS)
