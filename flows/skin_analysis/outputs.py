"""Where a skin-analysis run writes, and what it writes at the end: the summary, the wide and tidy reports and
the artifacts (images by item number and subject key only: the reports' personal columns never go to Prefect)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd
from prefect import get_run_logger

from blocks.haut import HautCredentials
from tasks.reports import counts_table, failures_markdown, publish_markdown, publish_table
from tasks.state import StateRoot

from .inputs import SkinInputs
from .options import AnalysisOptions, OutputOptions, PrivacyOptions, SkinAnalysisSummary
from .tables import ReportBuilder, metric_summary, write_reports

if TYPE_CHECKING:
    from .run import SkinRun

ARTIFACT = "skin-analysis"


class Locations(NamedTuple):
    """A run's report, metrics table and journal (local paths or s3:// URIs)."""

    report: str
    metrics_report: str
    journal: str

    @classmethod
    def of(
        cls,
        source: str,
        analysis: AnalysisOptions,
        outputs: OutputOptions,
        credentials: HautCredentials,
        root: StateRoot,
    ) -> Locations:
        """The given locations, or the defaults under the state root: a timestamped report, a journal named
        after the input."""
        report = outputs.report or root.report("skin-analysis")
        journal = outputs.journal or default_journal(
            root, source, analysis.dataset_name, analysis.api_version, credentials
        )
        return cls(report, outputs.metrics_report or metrics_name(report), journal)


def default_journal(
    root: StateRoot, source: str, dataset_name: str, api_version: str, credentials: HautCredentials
) -> str:
    """Journal file named after the input and the target, so re-running the same input resumes."""
    where = source if source.startswith("s3://") else os.path.abspath(source)
    target = [where, dataset_name, api_version, credentials.base_url, credentials.company_id]
    return root.location("skin-analysis", target)


def report_builder(
    dataset_name: str, api_version: str, privacy: PrivacyOptions, where: Locations
) -> ReportBuilder:
    """The run's report rows, built as batches finish; the metrics report rendered as it goes if a CSV file."""
    return ReportBuilder(
        dataset_name,
        api_version,
        file_names=privacy.include_file_names,
        subject_names=privacy.include_subject_names,
        tidy_csv=where.metrics_report.lower().endswith(".csv"),
    )


def metrics_name(report: str) -> str:
    """``reports/run.csv`` → ``reports/run-metrics.csv`` (same folder and format)."""
    for suffix in (".csv.gz", ".csv", ".parquet", ".pq", ".jsonl"):
        if report.lower().endswith(suffix):
            return report[: -len(suffix)] + "-metrics" + report[-len(suffix) :]
    return report + "-metrics.csv"


def outcome_problems(wide_rows: list[dict[str, Any]], pending: int, done: int) -> list[str]:
    """What the counts alone do not say: results still to collect, or one error behind every failure."""
    problems = []
    failed = [r for r in wide_rows if r["status"] == "failed"]
    if pending:
        problems.append(f"{pending} image(s) computed but without results yet: a re-run collects them")
    if len(failed) > pending and not done:  # nothing worked: credentials, service, dataset
        errors = Counter(r.get("reason") or "unknown" for r in failed)
        (error, count), *_ = errors.most_common(1)
        problems.append(f"no image could be analysed; {count} with: {error[:500]}")
    return problems


async def report_run(
    run: SkinRun,
    inputs: SkinInputs,
    problems: list[str],
    dataset_id: str,
    where: Locations,
) -> SkinAnalysisSummary:
    """Write the reports and publish the artifacts (both finish before anything is raised); the summary."""
    # The batches' rows are built as they finish: what is left is put in order off the event loop.
    wide_rows, wide, tidy = await run.report.run(run.report.tables, inputs.images)
    statuses = Counter(r["status"] for r in wide_rows)
    waiting = run.pending
    pending = sum(1 for r in wide_rows if r["status"] == "failed" and r.get("analysis") in waiting)
    summary = SkinAnalysisSummary(
        api_version=run.api_version,
        dataset_id=dataset_id,
        images=len(inputs.images),
        analyses=len(run.units),
        subjects=len({i.subject for i in inputs.images if i.rejected is None and i.subject}),
        done=statuses["done"],
        rejected=statuses["rejected"],
        failed=statuses["failed"],
        pending=pending,
        resumed=sum(1 for o in run.outcomes.values() if o.resumed),
        ignored_files=inputs.ignored_files,
        photos_deleted_subjects=len(run.deleted),
        problems=[*problems, *outcome_problems(wide_rows, pending, statuses["done"])],
        report=where.report,
        metrics_report=where.metrics_report,
        journal=where.journal,
    )
    # Written (in a thread) while the artifacts are published.
    written, published = await asyncio.gather(
        run.report.run(write_reports, run.report, wide, tidy, where.report, where.metrics_report, run.s3),
        publish_run(wide_rows, tidy, summary),
        return_exceptions=True,
    )
    run.report.thread.shutdown(wait=False)
    for outcome in (written, published):
        if isinstance(outcome, BaseException):
            raise outcome
    get_run_logger().info(
        "skin analysis: %d image(s) done, %d rejected, %d failed (%d awaiting results); %d analyses resumed; "
        "photos deleted for %d subject(s); report %s",
        summary.done,
        summary.rejected,
        summary.failed,
        summary.pending,
        summary.resumed,
        summary.photos_deleted_subjects,
        where.report,
    )
    return summary


async def publish_run(
    wide_rows: list[dict[str, Any]], tidy: pd.DataFrame, summary: SkinAnalysisSummary
) -> None:
    """Artifacts: per-metric summary, outcomes by reason, failures (published at once)."""
    reasons = Counter((r["status"], r.get("reason") or "") for r in wide_rows)
    columns = ["item", "status", "reason", "subject_key", "side"]
    failures = [{c: r.get(c) for c in columns} for r in wide_rows if r["status"] != "done"]
    await asyncio.gather(
        publish_table(
            f"{ARTIFACT}-summary",
            metric_summary(tidy),
            f"Whole-face metrics of {len(tidy['analysis'].unique())} analyses ({summary.api_version}): mean, "
            f"min, max. Images: {summary.done} done, {summary.rejected} rejected, {summary.failed} failed.",
        ),
        publish_table(f"{ARTIFACT}-outcomes", counts_table(reasons), "Images by status and reason"),
        publish_markdown(
            f"{ARTIFACT}-failures",
            failures_markdown("Skin analysis: images not done", failures, columns),
            "Rejected and failed images with the reason (item = row of the report)",
        ),
    )
