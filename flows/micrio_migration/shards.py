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

from collections import Counter
from typing import Any

import pandas as pd
from pydantic_core import to_jsonable_python

from flows.micrio_migration.items import Item
from flows.micrio_migration.parameters import MigrationSummary
from flows.micrio_migration.report import publish, report_frame, report_row
from flows.micrio_migration.sources import Sources
from tasks.fan_out import (
    FanOut,
    Shard,
    ShardRange,
    ShardRun,
    check_fan_out,
    run_shards,
    shard_report_folder,
    split_keys,
    split_rows,
)
from tasks.state import StateRoot
from tasks.tables import write_table

FLOW = "micrio-migration"
SHARD_DEPLOYMENT = "micrio-migration/micrio-migration-shard"


def take_shard(sources: Sources, shard: ShardRange) -> None:
    """Keep the shard's part of the source: its key range of a prefix, its row range of a manifest."""
    if sources.kind == "prefix":
        sources.items = [i for i in sources.items if shard.holds_key(i.key)]
    else:
        sources.items = [i for i in sources.items if shard.holds_row(i.row)]


def plan_shards(
    sources: Sources, size: int, parameters: dict[str, Any], folder_id: str, root: StateRoot, parent: str
) -> list[Shard]:
    """The shards of a job: each one's range, and its parameters (the parent's, into the existing folder,
    reporting to the parent's shard folder)."""
    if sources.kind == "prefix":
        ranges = [dict(first_key=a, stop_key=b) for a, b in split_keys([i.key for i in sources.items], size)]
    else:
        ranges = [dict(first_row=a, stop_row=b) for a, b in split_rows(len(sources.items), size)]
    folder = shard_report_folder(root, FLOW, parent)
    shards = []
    for number, bounds in enumerate(ranges, 1):
        shard = ShardRange(number=number, of=len(ranges), parent=parent, **bounds)
        report = f"{folder}/shard-{number}.parquet"
        params = {
            **parameters,
            "target": {"kind": "existing", "folder_id": folder_id},
            "fan_out": {"shard_size": 0, "shard": shard.model_dump()},
            "outputs": {**parameters.get("outputs", {}), "report": report, "journal": ""},
        }
        shards.append(Shard(shard, params, report))
    return shards


async def migrate_in_shards(
    sources: Sources, folder_id: str, fan_out: FanOut, root: StateRoot, report: str, journal: str, s3: Any
) -> tuple[MigrationSummary, dict[str, int]]:
    """Run the shards with this run's parameters, wait for them, and write the job's one report and
    artifacts."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    check_fan_out(root)
    logger = get_run_logger()
    parent = f"{flow_run.name or 'ad-hoc'}-{str(flow_run.id or '')[:8]}"
    parameters = to_jsonable_python(flow_run.parameters)
    shards = plan_shards(sources, fan_out.shard_size, parameters, folder_id, root, parent)
    logger.info("%d sources in %d shards of %d on %s", len(sources.items), len(shards), fan_out.shard_size,
                fan_out.deployment or SHARD_DEPLOYMENT)  # fmt: skip
    runs = await run_shards(fan_out.deployment or SHARD_DEPLOYMENT, shards, fan_out.max_reruns, s3, logger)
    rows, problems = _gather(sources, runs)
    write_table(report_frame(rows), report, s3)
    counts = Counter(r["outcome"] for r in rows)
    in_flight = sum(r.summary.get("in_flight", 0) for r in runs)
    resumed = sum(1 for r in runs if r.summary.get("resumed") or r.runs > 1)
    summary = MigrationSummary(
        folder_id=folder_id,
        read_as=sources.read_as,
        total=len(rows),
        done=counts["done"],
        skipped=counts["skipped"],
        failed=counts["failed"] - in_flight,
        rejected=counts["rejected"],
        in_flight=in_flight,
        added_this_run=sum(r.summary.get("added_this_run", 0) for r in runs),
        already_added=sum(r.summary.get("already_added", 0) for r in runs),
        resumed=f"{resumed} of {len(runs)} shards resumed from their journals" if resumed else "",
        problems=[*sources.problems, *problems],
        report=report,
        journal=journal,
    )
    await publish(rows, summary)
    return summary, dict(counts)


def _gather(sources: Sources, runs: list[ShardRun]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every source's row, from its shard's report; a shard that never finished reports its sources failed."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for run in runs:
        if run.finished:
            rows += _plain_rows(run.report)
            problems += [p for p in run.summary.get("problems", []) if p not in problems]
            continue
        why = (
            f"{run.shard.range.label()} did not finish (its last run ended {run.state} after {run.runs} runs)"
        )
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


def _plain_rows(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    """A report read back, as the rows ``report_frame`` takes (missing values as None)."""
    if frame is None or frame.empty:
        return []
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
