"""A backfill of many files fanned out: file ranges, each a child flow run on the work pool, one report.

When the source holds more than ``fan_out.shard_size`` files, the parent splits its listing by path (or s3://
key) into ranges of that many files (``tasks.fan_out.key_ranges``: a file that appears meanwhile still falls
in exactly one range) and runs each range as a run of the ``miniviz-backfill-shard`` deployment, all at once
(``tasks.fan_out.run_shards``: a shard whose run crashed is started again). A file is never split: one big
file is all in one shard. A shard lists the source too and keeps the files of its range (``run.take_shard``).

Every shard appends to the job's one journal (the parent's: ``tasks.journal`` takes several writers, and a
file's records come from the one shard that holds it), so a shard started again, a re-run of the whole job,
or a later run that is not fanned out resumes from what any shard sent, however the files were split: a kill
sends again at most the events in flight (1 when paced, ``pacing.concurrency`` otherwise). Shards sending to
one project share its rate limit through the Miniviz session's shared pacing (lock files, or Redis with
``$PIPELINES_PACING_URL`` across machines), as any two runs do.

Each shard writes its report (one row per file and label), its dead-letter file beside it and a summary
(``ShardSummary``) in the parent's shard folder under the state root. The parent rebuilds the job's counts
from the shards' reports (``gather``), copies their dead letters into its own file, and then writes the one
report and artifacts and ends in the final state as a run in one process does. A shard that never finished
(its run failed, or crashed more than ``fan_out.max_reruns`` times) has each of its files reported failed
with the reason, and the run ends Failed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tasks import fan_out as fan
from tasks.reports import MAX_MARKDOWN_ITEMS

from .plan import Tally
from .report import BackfillSummary, publish_plan
from .run import FLOW_NAME, BackfillRun, take_shard


class ShardSummary(BackfillSummary):
    """What a shard leaves for its parent beside its report: its summary and what the report does not hold."""

    reason_examples: dict[str, tuple[str, int, str]] = {}
    failures: list[dict[str, Any]] = []
    dead_letters: int = 0  # lines in its dead-letter file


def fans_out(run: BackfillRun, fan_out: fan.FanOut) -> bool:
    """More files than a shard takes: the run fans out (never a shard itself: its shard size is 0), if every
    worker reaches its state root (else it says so before anything is written)."""
    if not fan_out.shard_size or len(run.files) <= fan_out.shard_size:
        return False
    fan.check_fan_out(run.root)
    return True


async def backfill_in_shards(run: BackfillRun, fan_out: fan.FanOut, dry_run: bool) -> None:
    """Run the shards with this run's parameters, wait for them, and fill ``run`` with the job's counts, dead
    letters and failures, for the report, artifacts and final state of one run."""
    from prefect import get_run_logger

    logger = get_run_logger()
    # the job's one journal for every shard; each shard's dead letters beside its own report
    outputs = {"journal": run.journal.location, "dead_letter": ""}
    ranges = fan.key_ranges(run.files, fan_out.shard_size)
    run.progress.waiting = f"{len(ranges)} shards of {fan_out.shard_size} files running on the work pool"
    started = time.monotonic()
    what = f"{len(run.files)} files"
    runs = await fan.fan_out_job(FLOW_NAME, ranges, fan_out, run.root, run.s3_client, logger, what, outputs)
    run.send_figures = {"send_seconds": round(time.monotonic() - started, 3)}
    await asyncio.to_thread(gather, run, runs)
    run.progress.waiting = ""
    await publish_plan(run, dry_run)
    run.progress.sent = run.tally.total("sent")
    run.progress.failed = run.tally.total("failed") + run.tally.total("refused")


def gather(run: BackfillRun, runs: list[fan.ShardRun]) -> None:
    """The job's tally from the shards' reports, their failures, and their dead letters into the run's file;
    the files of a shard that never finished are reported failed with the reason."""
    tally = run.tally = Tally()
    for shard in runs:
        if not shard.finished:
            why = shard.why_unfinished() + (f": {shard.message}" if shard.message else "")
            for path in take_shard(run.files, shard.shard.range):
                tally.files.append(path)
                tally.file_errors[path] = f"{why}; a re-run resumes it"
            continue
        summary = ShardSummary.model_validate(shard.summary)
        for row in shard.rows():
            absorb(tally, row)
        tally.reasons.update(summary.rejected_by_reason)
        for reason, example in summary.reason_examples.items():
            tally.reason_examples.setdefault(reason, example)
        run.failures += summary.failures[: MAX_MARKDOWN_ITEMS - len(run.failures)]
        run.dead_letters.append_file(summary.dead_letter, run.s3_client, summary.dead_letters)
    tally.files = list(dict.fromkeys(tally.files))  # a file has a row per label


def absorb(tally: Tally, row: dict[str, Any]) -> None:
    """One row of a shard's report (``report._report_frame``) back into counts the report is made from."""
    source, label, error, status = row["source"], row["label_key"] or "", row["error"] or "", row["status"]
    tally.files.append(source)
    if row.get("read_as"):
        tally.read_as[source] = row["read_as"]
    if status == "failed" and error:
        tally.file_errors[source] = error
    elif status in ("pending", "partial") and error:
        tally.unsent[source] = error
    counts = {f: int(row[f] or 0) for f in Tally.FIELDS}
    if any(counts.values()):  # a file's row without counts (empty, unreadable) is made again from its name
        tally.cell(source, label).update(counts)


async def shard_done(run: BackfillRun, summary: BackfillSummary) -> None:
    """What the parent reads back beside the shard's report."""
    out = ShardSummary(
        **summary.model_dump(),
        reason_examples=run.tally.reason_examples,
        failures=run.failures,
        dead_letters=run.dead_letters.count,
    )
    await asyncio.to_thread(fan.write_shard_summary, run.report, out, run.s3_client)
