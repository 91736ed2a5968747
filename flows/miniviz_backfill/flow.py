"""Flow: backfill historical measurements from CSV/Parquet/JSON Lines files into Miniviz.

Two passes over the input, both streamed chunk by chunk (memory stays flat whatever the size):

1. **Plan** (one task, ``miniviz-backfill-scan``, ``plan.py``): transform every row, count events and
   rejections per file and label, write rejected rows to the dead-letter file, read the journal to see what
   is already sent, and publish the plan (``report.py``). ``dry_run=True`` stops here: nothing is sent.
2. **Send** (``sending.py``: one ``miniviz-send-data-batch`` task run per batch of ``batch_size`` events, the
   public ``tasks.miniviz.send_miniviz_data_batch``): the same deterministic transform again, skipping the
   events the journal shows as sent, through the account's session: paced at the project's interval (timed
   at the socket, so no 429), or ``concurrency`` at once over one-connection pools when the interval is 0.

Resuming: every event of a file has a number (``seq``) fixed by the file and the transform parameters. An
acknowledged event is journaled (group-committed, fsynced) before its slot is released, so a crash (even
``kill -9``) loses no row and re-sends at most the events in flight at that instant: ``concurrency`` with no
rate limit, 1 when paced. The journal pins each file's size and mtime (or ETag): a file that changed is
refused rather than resumed.

Fan-out (``fan_out.shard_size``; ``shards.py``): a source of more files than that runs as shards of that many
files, runs of the ``miniviz-backfill-shard`` deployment on the work pool, all appending to the job's journal;
the parent waits, starts again a shard whose run crashed (it resumes), and writes one report, one dead-letter
file and one set of artifacts, then ends in the final state of the whole job.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.miniviz import MinivizCredentials
from tasks.fan_out import FanOut

from .options import CsvOptions, EventOptions, OutputOptions, PacingOptions, TimestampOptions, build_spec
from .plan import scan_backfill
from .report import BackfillSummary, final_state, publish_plan, reporting, summarize
from .run import FLOW_NAME, open_run
from .sending import send_pending
from .shards import backfill_in_shards, fans_out, shard_done


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
    fan_out: FanOut = FanOut(),  # noqa: B008
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
            a local S3). Empty: local files and http(s) URLs only.
        fan_out: Shards on the work pool for sources of many files: shard size is files per shard (a file is
            never split, so one big file runs in one shard); 0: every file in this run.
    """
    logger = get_run_logger()
    spec = build_spec(csv, timestamps, events)
    creds = await MinivizCredentials.resolve(miniviz_block)
    run = await open_run(source, spec, creds, pacing, outputs, s3_bucket_block, fan_out.shard)
    logger.info(run.describe(dry_run))
    sharded = fans_out(run, fan_out)  # many files: shards on the work pool, their counts gathered here

    async with reporting(run, dry_run):  # progress while it runs; the report and artifacts however it ends
        if sharded:
            await backfill_in_shards(run, fan_out, dry_run)
        else:
            run.tally, run.fingerprints = await scan_backfill(
                run.files,
                spec,
                pacing.chunk_rows,
                run.sent,
                run.dead_letters,
                run.s3_client,
                run.labels,
                run.progress,
            )
            await publish_plan(run, dry_run)
            if not dry_run and run.to_send:
                await send_pending(run)

    summary = summarize(run, dry_run)
    if fan_out.shard.is_shard:  # what the parent reads back
        await shard_done(run, summary)
    return final_state(run, summary, logger)
