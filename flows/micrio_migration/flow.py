"""The Micrio migration flow: read the sources, check them, add them, poll them, report, finish.

What each step does, and the outcomes a source can end with: the package's docstring
(``flows/micrio_migration/__init__.py``).
"""

from __future__ import annotations

import asyncio
import time

from prefect import flow, get_run_logger

from blocks.micrio import MicrioCredentials
from flows.micrio_migration.batches import Migration, target_folder
from flows.micrio_migration.folder_index import FolderIndex
from flows.micrio_migration.parameters import (
    AddingOptions,
    ExistingFolder,
    MigrationSummary,
    NewFolder,
    OutputOptions,
    PollingOptions,
)
from flows.micrio_migration.report import report_run
from flows.micrio_migration.run_journal import RunJournal, default_journal_location
from flows.micrio_migration.shards import migrate_in_shards
from flows.micrio_migration.sources import ContentCheck, read_sources
from tasks.fan_out import FanOut, write_shard_summary
from tasks.run_state import finish
from tasks.state import StateRoot
from tasks.storage import s3_client_for


@flow(name="micrio-migration")
async def migrate_to_micrio(
    source: str,
    target: ExistingFolder | NewFolder,
    micrio_block: str = "micrio-demo",
    s3_bucket_block: str = "",
    retry_failed: bool = False,
    adding: AddingOptions = AddingOptions(),  # noqa: B008 (a pydantic model, read only)
    polling: PollingOptions = PollingOptions(),  # noqa: B008 (a pydantic model, read only)
    outputs: OutputOptions = OutputOptions(),  # noqa: B008 (a pydantic model, read only)
    fan_out: FanOut = FanOut(),  # noqa: B008 (a pydantic model, read only)
) -> MigrationSummary:
    """Add images to Micrio and follow their tiling to the end; resumable.

    Completed only when every source is done or skipped by design; rejected or failed sources, an empty
    prefix or manifest, or a source that cannot be read end the run Failed with the counts and the report's
    location (the package's docstring says what is rejected and what is skipped).

    Args:
        source: A manifest (CSV, Parquet or JSON lines with a source_url column and an optional name), as a
            local path or s3://bucket/key.csv; or an S3 prefix (s3://bucket/photos or s3://bucket/photos/),
            whose image objects are presigned for Micrio to fetch. S3 sources are checked by content first.
        target: An existing folder (its 6-character id), or a new folder, album or space to create under a
            parent folder (created once: a re-run reuses it).
        micrio_block: Name of the saved Micrio Credentials block.
        s3_bucket_block: Name of a saved prefect-aws S3 Bucket block, needed for s3:// sources, journals or
            reports (its credentials may carry an endpoint URL). Empty: local files and http(s) URLs only.
        retry_failed: Add again the images an earlier run of the same source and target left failed (after
            you fixed the source). Off: they stay failed, and so does the run.
        adding: Batch size, attempts per image, presigned URL validity.
        polling: Waits between status rounds and when to stop.
        outputs: Report and journal locations (empty: defaults, see each field).
        fan_out: Shards on the work pool for big jobs (shard size 0: all in this run).
    """
    logger = get_run_logger()
    deadline = time.monotonic() + polling.timeout_minutes * 60
    credentials = await MicrioCredentials.resolve(micrio_block)
    state = await StateRoot.current(outputs.state_root)
    state.check_local([source], "source")
    state.check_local([outputs.journal, outputs.report], "outputs")
    report = outputs.report or state.report("micrio-migration")
    s3 = await s3_client_for(
        s3_bucket_block or state.s3_bucket_block, [source, outputs.journal, report, state.root]
    )

    sources = await asyncio.to_thread(read_sources, source, s3, fan_out.shard)  # a shard: its range only
    logger.info("read %s as %s: %d source(s)", source, sources.read_as, len(sources.items))
    journal = RunJournal(
        outputs.journal or default_journal_location(state, sources.where, target, fan_out.shard), s3
    )
    replayed = await journal.resume(sources.items, retry_failed, adding.max_attempts, logger)
    folder_id = await target_folder(target, replayed.folder_id, credentials, journal, logger)
    if fan_out.shard_size and len(sources.items) > fan_out.shard_size:  # a big job: shards on the work pool
        summary, counts = await migrate_in_shards(
            sources, folder_id, fan_out, state, report, journal.location, s3
        )
        return finish(
            summary, what="images", counts=counts, report=report, problems=summary.problems, logger=logger
        )
    index = await FolderIndex.open(folder_id, s3, journal.location, sources.where, sources.items)

    migration = Migration(credentials, folder_id, sources.items, journal, index, adding, polling, s3, logger)
    checking = ContentCheck.of(sources, s3, adding.batch_size, adding.max_attempts, index.skip_present)
    async with checking:  # S3 objects are checked in the background, a chunk ahead of the adding
        await migration.run(checking, deadline)

    summary, counts = await report_run(sources, migration, replayed, report, journal.location, s3)
    if fan_out.shard.is_shard:  # what the parent reads back
        await asyncio.to_thread(write_shard_summary, report, summary, s3)
    if replayed.resumed:
        logger.info("%s; this run added %d", replayed.resumed, migration.added_this_run)
    return finish(
        summary, what="images", counts=counts, report=summary.report, problems=summary.problems, logger=logger
    )
