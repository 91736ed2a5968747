"""Each flow run once on generated inputs; each returns the lines the demo prints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from emulators.launcher import RunningEmulators
from tasks.run_state import IncompleteRun

from .setup import put_history_sample, put_micrio_samples, put_selfie_samples, save_demo_blocks


async def run_to_end(run: Awaitable[Any], why_failed: str) -> tuple[Any, str]:
    """The flow's summary and its final state: the samples hold bad items on purpose, so the runs that read
    them end Failed, with the counts and the report in the message (tasks/run_state.py)."""
    try:
        return await run, "Completed"
    except IncompleteRun as incomplete:
        return incomplete.summary, f"Failed, as it must {why_failed}: {incomplete}"


async def micrio_migration(emu: RunningEmulators, demo_dir: Path, time_scale: float) -> list[str]:
    from flows.micrio_migration import migrate_to_micrio

    blocks = await save_demo_blocks(emu, time_scale)
    source = put_micrio_samples(emu)
    report = demo_dir / "reports" / "micrio-migration.csv"
    summary, state = await run_to_end(
        migrate_to_micrio(
            source=source,
            target={"folder_id": emu["micrio"].credentials["root_folder_id"]},
            micrio_block=blocks["micrio"],
            s3_bucket_block=blocks["s3"],
            adding={"batch_size": 10},
            polling={"initial_seconds": 0.2, "max_seconds": 1.0},
            outputs={"journal": str(demo_dir / "state" / "micrio-migration.jsonl"), "report": str(report)},
        ),
        "with a text file named .jpg",
    )
    return [
        f"{summary.total} sources from {source}: {summary.done} ready, {summary.failed} failed, "
        f"{summary.rejected} rejected before sending, {summary.skipped} skipped "
        f"(added this run: {summary.added_this_run}; {summary.resumed or 'a re-run resumes from the journal'})",
        f"run state: {state}",
        f"report: {report}",
        "artifacts: micrio-migration-summary, micrio-migration-failures, micrio-migration-progress",
    ]


async def snapshot_harvest(emu: RunningEmulators, demo_dir: Path, time_scale: float) -> list[str]:
    from flows.snapshot_harvest import harvest_snapshots

    blocks = await save_demo_blocks(emu, time_scale)
    report = demo_dir / "reports" / "snapshot-harvest.csv"
    summary = await harvest_snapshots(
        viziosense_block=blocks["viziosense"],
        s3_bucket_block=blocks["s3"],
        miniviz_block=blocks["miniviz"],
        timing={"ready_after_seconds": 20 * time_scale, "poll_interval_seconds": 0.2},
        miniviz_push={"data_event_budget_seconds": 60 * time_scale},
        outputs={"state": str(demo_dir / "state" / "snapshot-harvest.json"), "report": str(report)},
    )
    return [
        f"{summary.cameras} cameras: {summary.done} done, {summary.deferred} deferred (Miniviz pacing), "
        f"{summary.failed} failed, {summary.skipped} skipped (offline); {summary.originals_stored} originals in "
        f"S3, {summary.images_pushed} fitted images pushed to Miniviz ({summary.images_deferred} deferred), "
        f"{summary.data_events_sent} data events sent ({summary.data_events_deferred} deferred by the 15 s limit)",
        f"report: {report}",
        "artifacts: snapshot-harvest-summary, -cameras, -failures, -links (presigned links to the originals)",
    ]


async def skin_analysis(emu: RunningEmulators, demo_dir: Path, time_scale: float) -> list[str]:
    from flows.skin_analysis import skin_analysis as run_skin_analysis

    blocks = await save_demo_blocks(emu, time_scale)
    source = put_selfie_samples(emu)
    reports = demo_dir / "reports"
    summary, state = await run_to_end(
        run_skin_analysis(
            source=source,
            haut_block=blocks["haut"],
            s3_bucket_block=blocks["s3"],
            analysis={"dataset_name": "skin-demo", "api_version": "v1"},
            polling={"initial_delay": 22 * time_scale, "max_delay": 0.5},
            outputs={
                "report": str(reports / "skin-analysis.csv"),
                "metrics_report": str(reports / "skin-metrics.csv"),
                "journal": str(demo_dir / "state" / "skin-analysis.jsonl"),
            },
        ),
        "with unusable photos",
    )
    return [
        f"{summary.images} images of {summary.subjects} subjects: {summary.done} analysed, "
        f"{summary.rejected} rejected before upload, {summary.failed} failed",
        f"run state: {state}",
        f"reports: {summary.report} (one row per image) and {summary.metrics_report} (tidy metrics)",
        "artifacts: skin-analysis-summary (mean/min/max per metric), -outcomes, -failures, -progress",
    ]


async def miniviz_backfill(emu: RunningEmulators, demo_dir: Path, time_scale: float) -> list[str]:
    from flows.miniviz_backfill import miniviz_backfill as run_backfill

    blocks = await save_demo_blocks(emu, time_scale)
    source = put_history_sample(emu)
    reports = demo_dir / "reports"
    common = dict(
        source=source,
        miniviz_block=blocks["miniviz"],
        s3_bucket_block=blocks["s3"],
        events={"resample": "30min"},
    )
    journal = str(demo_dir / "state" / "miniviz-backfill.jsonl")

    async def backfill(**params):
        return await run_to_end(run_backfill(**common, **params), "with a row to fix")

    plan, plan_state = await backfill(
        dry_run=True,
        pacing={"data_interval_seconds": 15.0},
        outputs={"journal": journal, "report": str(reports / "miniviz-backfill-plan.csv")},
    )
    summary, state = await backfill(
        outputs={
            "journal": journal,
            "report": str(reports / "miniviz-backfill.csv"),
            "dead_letter": str(reports / "miniviz-backfill-rejected.csv"),
        }
    )
    return [
        f"plan (dry run, nothing sent): {plan.rows} rows -> {plan.events} events, {plan.rows_rejected} rows rejected "
        f"{plan.rejected_by_reason}; at the real Pro rate that takes {plan.estimated_seconds / 60:.0f} min",
        f"sent, paced at the project's interval (15 s emulated, {15 * time_scale:.2f} s here): "
        f"{summary.events_sent} events sent, {summary.events_failed} failed",
        f"run state: {state}",
        f"reports: {reports / 'miniviz-backfill.csv'}; rejected rows: {reports / 'miniviz-backfill-rejected.csv'}",
    ]


FLOWS: dict[str, Callable[[RunningEmulators, Path, float], Awaitable[list[str]]]] = {
    "Micrio migration (flows/micrio_migration/)": micrio_migration,
    "Snapshot harvest (flows/snapshot_harvest/)": snapshot_harvest,
    "Skin analysis (flows/skin_analysis/)": skin_analysis,
    "Miniviz backfill (flows/miniviz_backfill/)": miniviz_backfill,
}
