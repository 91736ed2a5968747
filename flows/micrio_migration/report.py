"""The migration's report (one row per source), its artifacts and its summary."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pandas as pd

from clients.micrio import FINAL_ERRORS
from flows.micrio_migration.batches import Migration
from flows.micrio_migration.items import Item
from flows.micrio_migration.parameters import MigrationSummary
from flows.micrio_migration.run_journal import Replayed
from flows.micrio_migration.sources import LEFT_OUT, Sources
from tasks.reports import counts_table, failures_markdown, publish_markdown, publish_table
from tasks.tables import write_table

REPORT_COLUMNS = [
    "row",
    "name",
    "source",
    "micrio_id",
    "status",
    "outcome",
    "error",
    "width",
    "height",
    "thumbnail",
    "attempts",
]


async def report_run(
    sources: Sources, migration: Migration, replayed: Replayed, location: str, journal: str, s3: Any
) -> tuple[MigrationSummary, dict[str, int]]:
    """Write the report (``location``, or ``reports/micrio-migration-{UTC time}.csv``) and the artifacts;
    the run's summary and its counts by outcome (images still in flight count as failed)."""
    stopped, problems = migration.stopped(), list(sources.problems)
    if stopped:
        problems.append(
            f"{stopped}; a re-run resumes the images in flight" if migration.unreachable else stopped
        )
    in_flight = len(migration.in_flight())
    if sources.holds_no_image():
        problems.append(f"{sources.read_as} holds no image: {len(sources.items)} other file(s) {LEFT_OUT}")
    if in_flight and not stopped:
        problems.append(f"{in_flight} image(s) still processing after the timeout: a re-run polls them")
    frame = report_frame([report_values(i, migration.max_attempts, stopped) for i in sources.items])
    figures = {"in_flight": in_flight, "added_this_run": migration.added_this_run,
               "already_added": replayed.already_added, "resumed": replayed.resumed}  # fmt: skip
    summary = MigrationSummary(
        folder_id=migration.folder_id, read_as=sources.read_as, problems=problems, report=location, journal=journal,
        **figures, **outcome_totals(frame, in_flight),
    )  # fmt: skip
    return await write_report(frame, summary, s3)


def outcome_totals(frame: pd.DataFrame, in_flight: int) -> dict[str, int]:
    """The summary's counts by outcome (images still in flight are failed, but counted apart)."""
    counts = frame["outcome"].value_counts()
    return {"total": len(frame), "done": int(counts.get("done", 0)), "skipped": int(counts.get("skipped", 0)),
            "failed": int(counts.get("failed", 0)) - in_flight, "rejected": int(counts.get("rejected", 0))}  # fmt: skip


async def write_report(
    frame: pd.DataFrame, summary: MigrationSummary, s3: Any
) -> tuple[MigrationSummary, dict[str, int]]:
    """Write the report and publish the artifacts; the summary and the counts by outcome."""
    await asyncio.to_thread(write_table, frame, summary.report, s3)
    await publish(frame, summary)
    return summary, {k: int(n) for k, n in frame["outcome"].value_counts().items()}


def report_values(item: Item, max_attempts: int, stopped: str | None = None) -> tuple[Any, ...]:
    """One report row, in ``REPORT_COLUMNS`` order; ``stopped`` says why the run ended early (for images it
    left unfinished)."""
    if item.rejected is not None:
        outcome, status, error = "rejected", "rejected", item.rejected
    elif item.skipped is not None:
        outcome, status, error = "skipped", "skipped", item.skipped
    elif item.unreadable is not None:
        outcome, status, error = "failed", "not_checked", f"{item.unreadable}; re-run to try again"
    elif item.status == "ready":
        outcome, status, error = "done", "ready", None
    elif item.status == "error":
        outcome, status = "failed", "error"
        error = item.error + (
            " (final)" if item.error in FINAL_ERRORS else f" (after {item.attempts} attempts)"
        )
    elif item.micrio_id is None and item.attempts == 0 and item.error is None and stopped:
        outcome, status, error = "failed", "not_added", f"not sent: {stopped}; re-run to add it"
    elif item.micrio_id is None and not item.checked:
        outcome, status, error = (
            "failed",
            "not_checked",
            "not checked before the run stopped; re-run to add it",
        )
    elif item.micrio_id is None:
        outcome, status = "failed", "not_added"
        error = f"could not be added after {item.attempts} attempt(s): {item.error or 'unknown reason'}"
    else:  # in flight: still processing when the run stopped
        outcome, status = "failed", item.status or "queued"
        why = f" ({stopped})" if stopped else ""
        error = f"still processing when the run stopped{why}; re-run to resume"
    return (item.row, item.name, item.source, item.micrio_id, status, outcome, error,
            item.width, item.height, item.thumbnail, item.attempts)  # fmt: skip


def report_row(item: Item, max_attempts: int, stopped: str | None = None) -> dict[str, Any]:
    """``report_values`` as a dict."""
    return dict(zip(REPORT_COLUMNS, report_values(item, max_attempts, stopped), strict=True))


def report_frame(rows: list[tuple[Any, ...]] | list[dict[str, Any]]) -> pd.DataFrame:
    """The report from its rows (tuples in ``REPORT_COLUMNS`` order, or dicts), its counts as integers
    (nullable: an image without a size stays empty, never 1024.0). Tuples, not dicts: at 100k images the
    report costs 81 MB instead of 114."""
    df = pd.DataFrame.from_records(rows, columns=REPORT_COLUMNS)
    return df.astype({"row": "Int64", "width": "Int64", "height": "Int64", "attempts": "Int64"})


async def publish(frame: pd.DataFrame, summary: MigrationSummary) -> None:
    codes = (e.split(" (")[0] if isinstance(e, str) else "" for e in frame["error"])
    counts = Counter(zip(frame["status"], codes, strict=True))
    await publish_table(
        "micrio-migration-summary",
        counts_table(counts),
        f"Images by final status and error code (folder {summary.folder_id})",
    )
    columns = ["row", "name", "source", "status", "error", "attempts"]
    failures = frame.loc[~frame["outcome"].isin(("done", "skipped")), columns].astype(object)
    await publish_markdown(
        "micrio-migration-failures",
        failures_markdown(
            "Micrio migration: images not done",
            failures.where(failures.notna(), None).to_dict("records"),
            columns,
        ),
        "Sources that were rejected, failed or are still in flight",
    )
