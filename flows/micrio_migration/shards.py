"""A big migration fanned out: shards of the source, each a child flow run on the work pool, one report.

The parent reads the source once, creates the target folder if asked (once, journaled), and splits the
source: an S3 prefix by key ranges (an object that appears meanwhile still falls in exactly one shard), a
manifest by row ranges. Each shard is a migration of its range into that existing folder, with its own
journal under the state root, run by ``tasks.fan_out.run_shards`` (a crashed shard runs again and resumes).

Folder status is shared by Micrio itself: each shard adds and polls only its own images (the status
listing is per folder, each shard reads the rows of its images), and the per-folder index of added objects
(``folder_index``) is one journal every shard appends to, so no source is added twice across shards or runs.
"""

from __future__ import annotations

from typing import Any

from flows.micrio_migration.items import Item
from flows.micrio_migration.parameters import MigrationSummary
from flows.micrio_migration.report import outcome_totals, report_frame, report_row, write_report
from flows.micrio_migration.sources import Sources
from tasks.fan_out import FanOut, ShardRange, ShardRun, fan_out_job, key_ranges, row_ranges, shard_problems
from tasks.state import StateRoot

FLOW = "micrio-migration"


def take_shard(sources: Sources, shard: ShardRange) -> None:
    """Keep the shard's part of the source: its key range of a prefix, its row range of a manifest."""
    if sources.kind == "prefix":
        sources.items = [i for i in sources.items if shard.holds_key(i.key)]
    else:
        sources.items = [i for i in sources.items if shard.holds_row(i.row)]


async def migrate_in_shards(
    sources: Sources, folder_id: str, fan_out: FanOut, root: StateRoot, report: str, journal: str, s3: Any
) -> tuple[MigrationSummary, dict[str, int]]:
    """Run the shards with this run's parameters, wait for them, and write the job's one report and
    artifacts."""
    from prefect import get_run_logger

    logger = get_run_logger()
    size, items = fan_out.shard_size, sources.items
    if sources.kind == "prefix":  # each shard lists its key range only, numbering from its first row
        ranges = key_ranges([i.key for i in items], size)
        row_of = {i.key: i.row for i in items}
        for bounds in ranges:
            bounds["first_row"] = row_of.get(bounds["first_key"], 1)
    else:
        ranges = row_ranges(len(items), size)
    target = {"kind": "existing", "folder_id": folder_id}  # the shards add to the folder the parent has
    what = f"{len(items)} sources"
    runs = await fan_out_job(FLOW, ranges, fan_out, root, s3, logger, what, {"journal": ""}, target=target)
    rows, problems = _gather(sources, runs)
    frame = report_frame(rows)
    del rows
    in_flight = sum(r.summary.get("in_flight", 0) for r in runs)
    resumed = sum(1 for r in runs if r.summary.get("resumed") or r.runs > 1)
    figures = {key: sum(r.summary.get(key, 0) for r in runs) for key in ("added_this_run", "already_added")}
    summary = MigrationSummary(
        folder_id=folder_id, read_as=sources.read_as, problems=[*sources.problems, *problems], report=report,
        journal=journal, in_flight=in_flight, **figures, **outcome_totals(frame, in_flight),
        resumed=f"{resumed} of {len(runs)} shards resumed from their journals" if resumed else "",
    )  # fmt: skip
    return await write_report(frame, summary, s3)


def _gather(sources: Sources, runs: list[ShardRun]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every source's row, from its shard's report; a shard that never finished reports its sources failed."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.finished:
            rows += run.rows()
            continue
        error = f"{run.why_unfinished()}; re-run to resume it"
        for item in _items_of(sources, run.shard.range):
            rows.append({**report_row(item, 0), "outcome": "failed", "status": "not_added", "error": error})
    rows.sort(key=lambda r: r["row"])
    return rows, shard_problems(runs)


def _items_of(sources: Sources, shard: ShardRange) -> list[Item]:
    part = Sources(sources.kind, sources.where, list(sources.items))
    take_shard(part, shard)
    return part.items
