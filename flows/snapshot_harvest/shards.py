"""A big harvest fanned out: camera uuid ranges, each a child flow run on the work pool, one report.

The parent lists the cameras once and, when more than ``fan_out.shard_size`` are to be harvested, splits them
by device uuid (``tasks.fan_out.split_keys``: a camera added meanwhile still falls in exactly one range). Each
range is a run of the ``snapshot-harvest-shard`` deployment with the parent's parameters plus its range; all
run at once, and one whose run crashed is started again (``tasks.fan_out.run_shards``). A shard lists the
cameras too and keeps those of its range (every row: pending, offline, rejected uuids), so the shards' reports
together hold every row once; the parent writes them as one report with one set of artifacts.

Each shard keeps, next to its report under the state root:

- a journal of the cameras whose originals it stored (``<report>.journal``), written as each camera ends: a
  re-run of the shard reuses those rows and asks only the others, so a kill stores again at most the cameras
  that were in delivery (``2 * max(concurrency, fit_workers)`` at most);
- its Miniviz pacing marks (``<report>.pacing.json``): seeded from the project's pacing state, never writing
  it. The parent merges the shards' marks into the project's state once they are over (the only writer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from flows.snapshot_harvest.pacing import PacingState
from flows.snapshot_harvest.parameters import FLOW_NAME, HarvestSummary, Outputs
from flows.snapshot_harvest.report import Stages, write_outputs
from flows.snapshot_harvest.rows import CameraResult
from tasks.fan_out import (
    FanOut,
    ShardRange,
    ShardRun,
    fan_out_job,
    key_ranges,
    shard_problems,
    write_shard_summary,
)
from tasks.journal import GroupCommit, Journal
from tasks.reports import Progress
from tasks.state import StateRoot
from tasks.storage import BucketRef


class ShardSummary(HarvestSummary):
    """What a shard leaves for its parent: its summary and the problems of its run."""

    problems: list[str] = []


def _s3(location: str, bucket: BucketRef) -> Any:
    return bucket.client if location.startswith("s3://") else None


def journal_location(report: str) -> str:
    return f"{report.rsplit('.', 1)[0]}.journal"


def pacing_location(report: str) -> str:
    return f"{report.rsplit('.', 1)[0]}.pacing.json"


def take_shard(rows: list[CameraResult], shard: ShardRange) -> list[CameraResult]:
    """The rows of the shard's uuid range (every row when not a shard)."""
    return [r for r in rows if shard.holds_key(r.device_uuid)] if shard.is_shard else rows


async def open_shard(
    rows: list[CameraResult], shard: ShardRange, report: str, bucket: BucketRef, logger: Any
) -> tuple[list[CameraResult], GroupCommit | None]:
    """A shard's rows, those an earlier run of it stored taken from its journal (``done``, to settle again),
    and the journal to record the others in; outside shards, the rows as they are and no journal."""
    if not shard.is_shard:
        return rows, None
    journal = Journal(journal_location(report), _s3(report, bucket))
    stored = {rec["device_uuid"]: rec for rec in await asyncio.to_thread(journal.read)}
    rows = take_shard(rows, shard)
    for i, row in enumerate(rows):
        if row.outcome == "pending" and row.device_uuid in stored:
            rows[i] = CameraResult.model_validate(
                {**stored[row.device_uuid], "index": row.index, "outcome": "done"}
            )
    if stored:
        logger.info("%s resumed from its journal: %d camera(s) already stored", shard.label(), len(stored))
    return rows, GroupCommit(journal)


async def pacing_state(
    location: str, shard: ShardRange, report: str, bucket: BucketRef, logger: Any
) -> PacingState:
    """The Miniviz pacing state a run writes: the project's, or for a shard its own file seeded from it."""
    own = pacing_location(report) if shard.is_shard else location
    state = PacingState(own, _s3(own, bucket))
    await asyncio.to_thread(state.load)
    if shard.is_shard:
        project = PacingState(location, _s3(location, bucket))
        await asyncio.to_thread(project.load)
        state.merge(project)
        state.load_problem = state.load_problem or project.load_problem
    if state.load_problem:
        logger.warning("%s", state.load_problem)
    return state


async def shard_done(summary: HarvestSummary, problems: list[str], report: str, bucket: BucketRef) -> None:
    """What the parent reads back beside the shard's report."""
    out = ShardSummary(**summary.model_dump(), problems=problems)
    await asyncio.to_thread(write_shard_summary, report, out, _s3(report, bucket))


async def harvest_in_shards(
    rows: list[CameraResult],
    problems: list[str],
    *,
    fan_out: FanOut,
    root: StateRoot,
    outputs: Outputs,
    bucket: BucketRef,
    state: str | None,
    progress: Progress,
    stages: Stages,
) -> HarvestSummary:
    """Run the shards at once, wait for them, merge their pacing marks into the project's state, and write the
    job's one report and artifacts (``problems`` gets the shards' own)."""
    from prefect import get_run_logger

    logger = get_run_logger()
    pending = [r.device_uuid for r in rows if r.outcome == "pending"]
    ranges = key_ranges(pending, fan_out.shard_size)
    await progress.update(5, f"{len(pending)} cameras in {len(ranges)} shards")
    what = f"{len(pending)} cameras to harvest"
    runs = await fan_out_job(FLOW_NAME, ranges, fan_out, root, bucket.client, logger, what)
    stages.done("shards")
    if state is not None:
        await merge_pacing(state, runs, bucket)
    all_rows = gather(rows, runs, problems)
    return await write_outputs(all_rows, problems, outputs=outputs, bucket=bucket, progress=progress,
                               state=state, stages=stages, logger=logger)  # fmt: skip


async def merge_pacing(location: str, runs: list[ShardRun], bucket: BucketRef) -> None:
    """The shards' marks into the project's pacing state (read again now: the parent is its only writer)."""
    project = PacingState(location, _s3(location, bucket))
    await asyncio.to_thread(project.load)
    for run in runs:
        where = pacing_location(run.shard.report)
        part = PacingState(where, _s3(where, bucket))
        project.merge(await asyncio.to_thread(part.load))
    await project.flush()


def gather(rows: list[CameraResult], runs: list[ShardRun], problems: list[str]) -> list[CameraResult]:
    """Every camera's row from its shard's report; a shard that never finished reports its cameras failed."""
    out: list[CameraResult] = []
    for run in runs:
        if run.finished:
            out += [CameraResult.model_validate(r) for r in run.rows()]
            continue
        why = f"{run.why_unfinished()}; re-run to resume it"
        for row in take_shard(rows, run.shard.range):
            if row.outcome == "pending":
                row = row.model_copy(update={"originals": "failed", "reason": why})
            out.append(row)
    problems += [p for p in shard_problems(runs) if p not in problems]
    return out
