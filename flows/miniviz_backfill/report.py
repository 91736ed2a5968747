"""What a backfill run reports: its plan, progress while it runs, the report file (one row per file and label),
the summary and failures artifacts, and the run's summary and outcome counts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pandas as pd
from prefect import get_run_logger
from pydantic import BaseModel

from blocks.miniviz import MinivizCredentials
from clients.miniviz import DATA_INTERVAL_S
from tasks.reports import Progress, markdown_cell, publish_markdown, publish_table
from tasks.run_state import finish
from tasks.tables import write_table

from .labels import LabelMapper
from .plan import ScanProgress, Tally, estimate_seconds, format_duration
from .run import FLOW_NAME, BackfillRun
from .spec import REASONS

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


def summarize(run: BackfillRun, dry_run: bool) -> BackfillSummary:
    tally, figures = run.tally, dict(run.send_figures)
    return BackfillSummary(
        dry_run=dry_run,
        files=len(run.files),
        files_failed=len(tally.file_errors),
        rows=tally.total("rows"),
        rows_rejected=tally.total("rejected_rows"),
        rows_skipped=tally.total("skipped_rows"),
        rows_out_of_range=tally.total("out_of_range_rows"),
        rows_split=tally.total("split_rows"),
        events=tally.total("events"),
        events_already_sent=tally.total("already_sent"),
        events_to_send=run.to_send,
        events_sent=tally.total("sent"),
        events_refused=tally.total("refused"),
        events_failed=tally.total("failed"),
        rejected_by_reason=dict(tally.reasons.most_common()),
        read_as=tally.read_as,
        interval_seconds=run.interval,
        estimated_seconds=estimate_seconds(run.to_send, run.interval),
        send_seconds=figures.pop("send_seconds", None),
        send_timing=figures or None,
        report=run.report,
        dead_letter=run.dead_letters.location,
        journal=run.journal.location,
    )


def reported_files(run: BackfillRun) -> str:
    """Where to look: the report, and the dead-letter file when it holds anything."""
    if run.dead_letters.count:
        return f"{run.report}, dead letters {run.dead_letters.location}"
    return run.report


async def publish_plan(run: BackfillRun, dry_run: bool) -> None:
    """Log the plan and publish it as an artifact: events, rejected rows by reason, estimated time."""
    tally = run.tally
    run.progress.to_send = run.to_send
    await publish_markdown(
        f"{FLOW_NAME}-plan",
        _plan_markdown(run.source, run.creds, tally, run.labels, run.to_send, run.interval, dry_run),
        "Miniviz backfill plan: events, rejected rows, estimated time",
    )
    estimate = estimate_seconds(run.to_send, run.interval)
    logger = get_run_logger()
    logger.info(
        "Plan: %d rows -> %d events (%d already sent, %d to send), %d rows rejected, %d out of range; "
        "estimated %s",
        tally.total("rows"),
        tally.total("events"),
        tally.total("already_sent"),
        run.to_send,
        tally.total("rejected_rows"),
        tally.total("out_of_range_rows"),
        format_duration(estimate) if estimate is not None else "n/a (no rate limit)",
    )
    for path, how in tally.read_as.items():
        logger.info("Read %s as CSV: %s", path, how)


@contextlib.asynccontextmanager
async def reporting(run: BackfillRun, dry_run: bool) -> AsyncIterator[None]:
    """The progress artifact, updated while the body runs; then, however it ends, the dead-letter file
    closed, the report written and the summary and failures artifacts published."""
    artifact = Progress(f"{FLOW_NAME}-progress", "Miniviz backfill")
    reporter = asyncio.create_task(_report_progress(run.progress, artifact, run.interval))
    try:
        yield
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await asyncio.to_thread(run.dead_letters.close)
        report_df = _report_frame(run.tally, dry_run, run.stopped)
        await asyncio.to_thread(write_table, report_df, run.report, run.s3_client)
        await _publish_outcome(run.tally, report_df, run.failures, run.progress, artifact, dry_run)


def final_state(run: BackfillRun, summary: BackfillSummary, logger: Any) -> Any:
    """The summary when every event was sent (or planned) and no row needs fixing, else a Failed state with
    the counts and where the report (and dead letters) are (``tasks.run_state.finish``)."""
    return finish(
        summary,
        what="items (events sent or planned, rows skipped or rejected)",
        counts=outcome_counts(summary, run.tally),
        report=reported_files(run),
        problems=problems(summary, run.tally),
        logger=logger,
    )


def outcome_counts(summary: BackfillSummary, tally: Tally) -> dict[str, int]:
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


def problems(summary: BackfillSummary, tally: Tally) -> list[str]:
    """Input-level errors: files that cannot be read or mapped, and a source with nothing to send."""
    found = [
        f"{path}: {_first_line(error.removeprefix('InputError: ').replace(f'source: {path} ', ''))}"
        for path, error in tally.file_errors.items()
    ]
    if not found and not summary.events and not summary.rows_rejected:  # e.g. every row outside start/end
        found.append(f"nothing to send in {summary.files} file(s)")
    return found


def _first_line(text: str) -> str:
    return " ".join(text.split())[:300]


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
        if status in ("pending", "partial") and source in tally.unsent:
            error = tally.unsent[source]
        elif status in ("pending", "partial") and stopped:
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
                f"| `{code}` | {n:,} | {REASONS.get(code, code)} | {markdown_cell(f'{src} row {row}: {detail}')} |"
            )
    if tally.read_as:
        lines += ["", "## CSV files read as", "", "| file | read as |", "|---|---|"]
        lines += [
            f"| {markdown_cell(p)} | {markdown_cell(how)} |" for p, how in list(tally.read_as.items())[:50]
        ]
    if tally.file_errors:
        lines += ["", "## Files that cannot be sent", "", "| file | error |", "|---|---|"]
        lines += [f"| {markdown_cell(p)} | {markdown_cell(e)} |" for p, e in tally.file_errors.items()]
    if labels.changed:
        lines += [
            "",
            f"## Labels mapped into Miniviz's characters ({len(labels.changed):,})",
            "",
            "| label | label_key |",
            "|---|---|",
        ]
        lines += [f"| {markdown_cell(o)} | `{m}` |" for o, m in list(labels.changed.items())[:50]]
    if labels.collisions:
        lines += ["", "## Warning: different labels mapped to the same label_key", ""]
        lines += [
            f"- `{m}` <- {', '.join(sorted(map(repr, o)))}" for m, o in list(labels.collisions.items())[:50]
        ]
    return "\n".join(lines) + "\n"


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
            f"| {markdown_cell(f['source'])} | {f['row']} | {markdown_cell(f['label_key'])} | {f['timestamp']} | {markdown_cell(f['error'])} |"
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
            lines.append(f"| `{code}` | {n:,} | {markdown_cell(f'{src} row {row}: {detail}')} |")
    for path, error in tally.file_errors.items():
        lines.append(f"\nFile not sent: {markdown_cell(path)}: {markdown_cell(error)}")
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
        if progress.waiting:
            await artifact.update(0.0, progress.waiting)
        elif progress.phase == "scanning":
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
