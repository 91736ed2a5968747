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
from flows.micrio_migration.report import outcome_totals, report_row, write_report
from flows.micrio_migration.sources import Sources
from tasks.fan_out import (
    FanOut,
    ShardRange,
    ShardRun,
    check_fan_out,
    key_ranges,
    plan_shards,
    row_ranges,
    run_shards,
    this_run,
)
from tasks.state import StateRoot

FLOW = "micrio-migration"
SHARD_DEPLOYMENT = "micrio-migration/micrio-migration-shard"


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

    check_fan_out(root)
    logger = get_run_logger()
    size, items = fan_out.shard_size, sources.items
    if sources.kind == "prefix":
        ranges = key_ranges([i.key for i in items], size)
    else:
        ranges = row_ranges(len(items), size)
    target = {"kind": "existing", "folder_id": folder_id}  # the shards add to the folder the parent has
    parent, parameters = this_run()
    shards = plan_shards(FLOW, ranges, parameters, root, parent, outputs={"journal": ""}, target=target)
    logger.info("%d sources in %d shards of %d on %s", len(sources.items), len(shards), fan_out.shard_size,
                fan_out.deployment or SHARD_DEPLOYMENT)  # fmt: skip
    runs = await run_shards(fan_out.deployment or SHARD_DEPLOYMENT, shards, fan_out.max_reruns, s3, logger)
    rows, problems = _gather(sources, runs)
    in_flight = sum(r.summary.get("in_flight", 0) for r in runs)
    resumed = sum(1 for r in runs if r.summary.get("resumed") or r.runs > 1)
    figures = {key: sum(r.summary.get(key, 0) for r in runs) for key in ("added_this_run", "already_added")}
    summary = MigrationSummary(
        folder_id=folder_id, read_as=sources.read_as, problems=[*sources.problems, *problems], report=report,
        journal=journal, in_flight=in_flight, **figures, **outcome_totals(rows, in_flight),
        resumed=f"{resumed} of {len(runs)} shards resumed from their journals" if resumed else "",
    )  # fmt: skip
    return await write_report(rows, summary, s3)


def _gather(sources: Sources, runs: list[ShardRun]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every source's row, from its shard's report; a shard that never finished reports its sources failed."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for run in runs:
        if run.finished:
            rows += run.rows()
            problems += [p for p in run.summary.get("problems", []) if p not in problems]
            continue
        why = run.why_unfinished()
        problems.append(f"{why}: a re-run resumes it")
        for item in _items_of(sources, run.shard.range):
            rows.append({**report_row(item, 0), "outcome": "failed", "status": "not_added",
                         "error": f"{why}; re-run to resume it"})  # fmt: skip
    rows.sort(key=lambda r: r["row"])
    return rows, problems


def _items_of(sources: Sources, shard: ShardRange) -> list[Item]:
    part = Sources(sources.kind, sources.where, list(sources.items))
    take_shard(part, shard)
    return part.items
