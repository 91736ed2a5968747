"""Batch skin analysis with Haut.ai: folder, S3 prefix or manifest in; tidy and wide metric tables out; resumable.

1. **Inputs**: a local folder or ``s3://bucket/prefix/`` of selfies (the subject is the first sub-folder, or the
   file name; a trailing ``_front``/``_left``/``_right`` names the side), or a CSV manifest (``subject``,
   ``image``, optional ``side``, ``visit``, ``birth_date``, ``biological_sex``, ``meta``; or ``front``/``left``/
   ``right`` columns). Paths in a manifest are relative to it unless absolute or ``s3://``.
2. **Subjects and dataset**: the dataset is found by name or created (applications attached); the dataset's
   subjects are listed once and reused by name, missing ones created when an analysis first needs them, each
   once and concurrently (``tasks/skin/subjects.py``), so a re-run creates none.
3. **Analyses** in coarse batches (one task run per ``batch_size`` analyses, ``parallel_batches`` sending at
   once, at most ``concurrency`` requests in flight per batch): read, validate and prepare each image
   (decodable JPEG/PNG by content, ≥ 256×256, ≤ 30 MiB as sent, EXIF orientation applied, optional
   downscale), then signed URL(s) → PUT → compute, each analysis through its steps without waiting for the
   rest of its batch; then the batch polls results with backoff, having made way for the next one. v1: one
   analysis per image, per-image results. v3: one batch per subject and visit with up to three sides, batch
   results (``all_algorithms_calculated``). One HTTP client serves the whole run.
4. **Outputs**: a wide report (one row per input image: status, reason, whole-face metrics) and a tidy metrics
   table (analysis × algorithm × area × metric: value, tag), CSV or Parquet, local or ``s3://``; artifacts:
   progress, per-metric summary (mean, min, max), outcomes by reason, and a markdown list of failures.

**Re-running** the same input resumes from the journal (records per analysis step, keyed by API, dataset,
subject and the images' content hashes): finished analyses are reported from the journal without a request;
computed ones are polled again; new ones are sent. Image records are journalled *before* any byte is sent, so
a crash never loses track of an uploaded photo. Bound after a ``kill -9`` at any moment, for the batches that
were submitting (at most ``batch_size × parallel_batches`` analyses): their image records may be left without
bytes (signed URL issued, journal not yet written: never computed, nothing to bill) and their compute may be
called a second time (crash between the compute and its journal record; the re-run checks for results first).
A batch's results are journalled together when it ends: found but not yet journalled, they are polled again.
Image bytes are sent again only when the earlier upload did not complete (v3: a batch with some sides sent).
No subject is ever created twice (subjects are looked up by name first).

**When a run fails**: the input cannot be read at all (no such folder, a manifest without a subject or image
column), the block or the dataset cannot be loaded or created, or no image at all could be analysed while
some failed for another reason than a results timeout (a systemic problem: credentials, service down).
Reports and artifacts are written first. Otherwise every image ends in the report as done, rejected (unusable
input, with the reason) or failed (with the error); ``pending`` ones are collected by a re-run.

**Privacy**: logs and artifacts never carry subject names, birth dates, meta or file paths (images are named by
their item number and a pseudonymous subject key, sha256(dataset, name)) unless ``show_personal_data``. The
reports are the user's own output: they hold the source paths (to join back) and the subject key, and the
subject names only with ``subject_names_in_report``. Subjects are created in Haut only for images that pass
validation, with image names derived from the analysis key. ``delete_photos`` calls Haut's GDPR "delete
photos" for each subject once all its analyses in the run have results: it removes *all* photo files of that
subject (records and results stay); subjects with results still pending keep their photos until a re-run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import pandas as pd
from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote
from prefect_aws import S3Bucket
from pydantic import BaseModel, Field

from blocks.haut import HautCredentials
from clients.haut import FS3_TECH_NAME, FSM2_TECH_NAME
from clients.spread import spread_for
from tasks.haut import ensure_haut_dataset
from tasks.journal import Journal
from tasks.reports import Progress, counts_table, failures_markdown, publish_markdown, publish_table
from tasks.skin.analyses import SendingBatches, analyse_skin_batch
from tasks.skin.inputs import ImageInput, SkinUnit, collect_skin_inputs, group_units
from tasks.skin.journal import JournalState, JournalWriter
from tasks.skin.outcomes import UnitOutcome
from tasks.skin.subjects import SubjectResolver, delete_skin_photos
from tasks.skin.tables import metric_summary, report_tables, write_skin_reports
from tasks.storage import s3_client_from_block

STATE_DIR = ".pipeline-state/skin-analysis"
ARTIFACT = "skin-analysis"


class SkinAnalysisSummary(BaseModel):
    """What a run did: image and analysis counts, and where the reports and the journal are."""

    api_version: str
    dataset_id: str
    images: int = Field(description="Input images (every one is in the report).")
    analyses: int = Field(description="v1: one per usable image; v3: one per subject batch of sides.")
    subjects: int
    done: int = Field(description="Images whose analysis has results (this run or an earlier one).")
    rejected: int = Field(description="Images refused before sending (unusable input), with the reason.")
    failed: int = Field(description="Images whose analysis failed or has no results yet.")
    pending: int = Field(description="Of the failed: computed, results not in yet; a re-run collects them.")
    resumed: int = Field(description="Analyses finished by an earlier run (nothing sent this time).")
    ignored_files: int = Field(description="Files in the folder or prefix that are not images by extension.")
    photos_deleted_subjects: int
    report: str
    metrics_report: str
    journal: str


def default_journal(source: str, dataset_name: str, api_version: str, credentials: HautCredentials) -> str:
    """Journal file named after the input and the target, so re-running the same input resumes."""
    where = source if source.startswith("s3://") else os.path.abspath(source)
    target = [where, dataset_name, api_version, credentials.base_url, credentials.company_id]
    return f"{STATE_DIR}/{hashlib.sha256(json.dumps(target).encode()).hexdigest()[:16]}.jsonl"


def metrics_name(report: str) -> str:
    """``reports/run.csv`` → ``reports/run-metrics.csv`` (same folder and format)."""
    for suffix in (".csv.gz", ".csv", ".parquet", ".pq", ".jsonl"):
        if report.lower().endswith(suffix):
            return report[: -len(suffix)] + "-metrics" + report[-len(suffix) :]
    return report + "-metrics.csv"


@flow(name="skin-analysis", log_prints=False)
async def skin_analysis(
    source: str,
    dataset_name: str = "skin-analysis",
    api_version: Literal["v1", "v3"] = "v1",
    haut_block: str = "haut-demo",
    s3_bucket_block: str | None = None,
    max_side: Annotated[int, Field(ge=256, le=20_000)] | None = None,
    batch_size: Annotated[int, Field(ge=1, le=500)] = 20,
    concurrency: Annotated[int, Field(ge=1, le=64)] = 8,
    parallel_batches: Annotated[int, Field(ge=1, le=16)] = 4,
    poll_initial_delay: Annotated[float, Field(ge=0)] | None = None,
    poll_max_delay: Annotated[float, Field(gt=0)] | None = None,
    results_timeout: Annotated[float, Field(gt=0)] | None = None,
    delete_photos: bool = False,
    subject_names_in_report: bool = False,
    show_personal_data: bool = False,
    applications: list[str] | None = None,
    report: str | None = None,
    metrics_report: str | None = None,
    journal: str | None = None,
) -> SkinAnalysisSummary:
    """Analyse a batch of selfies with Haut.ai and report every skin metric; safe to re-run.

    Args:
        source: A local folder or `s3://bucket/prefix/` of JPEG/PNG selfies (subject = first sub-folder, or the
            file name; a `_front`/`_left`/`_right` name suffix gives the side), or a CSV manifest with `subject`,
            `image` (path relative to the manifest, absolute, or `s3://`), optional `side`, `visit`,
            `birth_date`, `biological_sex`, `meta` (or `front`/`left`/`right` image columns).
        dataset_name: Haut dataset to use, found by name or created (one per study, not per run).
        api_version: `v1`: Face Skin Metrics 2.0, one analysis and result per image. `v3`: Face Skin Analysis
            3.0 (beta), one batch per subject and visit with up to three sides.
        haut_block: Name of the saved Haut Credentials block (use a private token: never a login per image).
        s3_bucket_block: Name of a saved prefect-aws S3 Bucket block, needed for `s3://` sources, reports or
            journals; its credentials may carry an endpoint URL.
        max_side: Shrink images whose longer side exceeds this many pixels before upload (none by default;
            Haut sets no maximum, bigger is slower).
        batch_size: Analyses per task run (each batch is read, uploaded and polled together).
        concurrency: Requests in flight at once within one batch (uploads, computes, result polls).
        parallel_batches: Batches running at the same time.
        poll_initial_delay: Seconds from sending an analysis to its first results poll (default: the block's,
            2 s); waits grow by 1.5× after each poll.
        poll_max_delay: Longest wait between results polls, in seconds (default: the block's, 15 s).
        results_timeout: Seconds to wait for an analysis's results once it is sent (default: the block's,
            300 s); later results are collected by a re-run.
        delete_photos: GDPR: delete each subject's photo files in Haut once all its analyses in this run have
            results (image records and results stay).
        subject_names_in_report: Add a `subject_name` column to the reports (by default they carry only a
            pseudonymous subject key).
        show_personal_data: Allow subject names and file paths in logs and artifacts (off: item numbers and
            subject keys only).
        applications: Haut applications to attach to the dataset (default: `face_skin_metrics_2.0` for v1,
            `face_skin_metrics_3.0` for v3).
        report: Where to write the per-image report (`.csv` or `.parquet`, local or `s3://`). Default:
            `reports/skin-analysis-<UTC time>.csv`.
        metrics_report: Where to write the tidy metrics table. Default: the report's name with `-metrics`.
        journal: Where to keep the journal (local path or `s3://` prefix). Default: a file under
            `.pipeline-state/skin-analysis/` named after the source, dataset, API version and company, so
            re-running the same input resumes.
    """
    logger = get_run_logger()
    credentials = await HautCredentials.resolve(haut_block)
    s3 = s3_client_from_block(await S3Bucket.aload(s3_bucket_block)) if s3_bucket_block else None
    if s3 is None and any(x and x.startswith("s3://") for x in (source, journal, report, metrics_report)):
        raise ValueError("s3:// sources, reports and journals need s3_bucket_block")
    report_location = report or f"reports/skin-analysis-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    metrics_location = metrics_report or metrics_name(report_location)
    journal_location = journal or default_journal(source, dataset_name, api_version, credentials)
    # Built in a thread meanwhile: its SSL context loads the CA bundle (~25 ms, mostly without the GIL).
    transport = asyncio.ensure_future(asyncio.to_thread(spread_for, concurrency * parallel_batches))
    writer = JournalWriter(Journal(journal_location, s3_client=s3))
    records, inputs = await asyncio.gather(
        asyncio.to_thread(writer.journal.read), collect_skin_inputs(source, s3)
    )
    state = JournalState(records)
    images = inputs.images
    names = list(dict.fromkeys(i.subject for i in images if i.rejected is None and i.subject))
    logger.info(
        "%d image(s) of %d subject(s) to analyse with the %s API (%d other file(s) left out, %d refused as input)",
        len(images),
        len(names),
        api_version,
        inputs.ignored_files,
        sum(1 for i in images if i.rejected),
    )

    apps = (
        applications
        if applications is not None
        else [FSM2_TECH_NAME if api_version == "v1" else FS3_TECH_NAME]
    )
    units = group_units(images, api_version)
    outcomes: dict[int, UnitOutcome] = {}
    remaining = Counter(u.subject for u in units)  # analyses not finished yet, per subject name
    subject_id_of: dict[str, str] = {}
    has_photos: set[str] = set()  # subjects with photo files in Haut (this run, or an earlier unfinished one)
    waiting_results: set[str] = set()
    deleted: set[str] = set()
    progress = Progress(f"{ARTIFACT}-progress", f"Analyses finished of {len(units)} ({api_version})")
    gate = asyncio.Semaphore(parallel_batches)  # batches reading and uploading at once
    senders = SendingBatches()  # result polls make way for batches that are sending
    # A subject's analyses together: its photos can be deleted sooner.
    order = sorted(units, key=lambda u: (u.subject, u.unit))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    async def run_batch(number: int, batch: list[SkinUnit]) -> None:
        try:
            results = await analyse_skin_batch(
                haut,
                dataset.id,
                quote(batch),
                writer,
                state,
                subjects,
                gate,
                api_version=api_version,
                max_side=max_side,
                concurrency=concurrency,
                s3_client=s3,
                senders=senders,
                poll_initial_delay=poll_initial_delay,
                poll_max_delay=poll_max_delay,
                results_timeout=results_timeout,
            )
        except Exception as exc:  # a batch-wide failure fails its analyses, not the run
            logger.error("batch %d of %d failed as a whole: %s", number, len(batches), type(exc).__name__)
            results = [UnitOutcome(unit=u.unit, status="failed", error=f"batch failed: {exc}") for u in batch]
        for unit, outcome in zip(batch, results, strict=True):
            outcomes[outcome.unit] = outcome
            remaining[unit.subject] -= 1
            if outcome.subject_id:
                subject_id_of[unit.subject] = outcome.subject_id
                if outcome.uploaded or state.photos_pending(outcome.subject_id):
                    has_photos.add(unit.subject)
            if outcome.pending:
                waiting_results.add(unit.subject)
        counts = Counter(o.status for o in results)
        logger.info(
            "batch %d of %d: %d analysed, %d from earlier runs, %d failed, %d rejected",
            number,
            len(batches),
            sum(1 for o in results if o.status == "done" and not o.resumed),
            sum(1 for o in results if o.resumed),
            counts["failed"],
            counts["rejected"],
        )
        if delete_photos:
            ready = [
                name
                for name in dict.fromkeys(u.subject for u in batch)
                if remaining[name] == 0 and name in has_photos and name not in waiting_results | deleted
            ]
            if ready:
                ids = [subject_id_of[n] for n in ready]
                errors = await delete_skin_photos(haut, ids, writer, concurrency=concurrency)
                deleted.update(n for n in ready if errors.get(subject_id_of[n]) is None)
                if any(errors.values()):
                    failed = sum(map(bool, errors.values()))
                    logger.warning("GDPR: photos of %d subject(s) could not be deleted", failed)
        done = len(outcomes)
        await progress.update(100.0 * done / max(1, len(units)), f"{done} of {len(units)} analyses finished")

    # One client for the whole run, shared by its tasks on the flow's event loop: warm connections, each in a
    # pool of its own so that many requests in flight stay cheap (clients/spread.py).
    async with credentials.get_client(transport=await transport) as haut:
        dataset, _ = await asyncio.gather(
            ensure_haut_dataset(haut, dataset_name, apps), progress.update(0.0 if units else 100.0)
        )
        subjects = SubjectResolver(haut, dataset.id, inputs.subjects)
        await asyncio.gather(*(run_batch(n, b) for n, b in enumerate(batches, 1)))

    # --- reports -------------------------------------------------------------------------------------------------
    wide_rows, wide, tidy = report_tables(
        images, units, outcomes, dataset_name, api_version, subject_names_in_report
    )
    statuses = Counter(r["status"] for r in wide_rows)
    waiting = {n for n, o in outcomes.items() if o.pending}
    pending = sum(1 for r in wide_rows if r["status"] == "failed" and r.get("analysis") in waiting)
    summary = SkinAnalysisSummary(
        api_version=api_version,
        dataset_id=dataset.id,
        images=len(images),
        analyses=len(units),
        subjects=len(names),
        done=statuses["done"],
        rejected=statuses["rejected"],
        failed=statuses["failed"],
        pending=pending,
        resumed=sum(1 for o in outcomes.values() if o.resumed),
        ignored_files=inputs.ignored_files,
        photos_deleted_subjects=len(deleted),
        report=report_location,
        metrics_report=metrics_location,
        journal=journal_location,
    )
    # Written (in threads) while the artifacts are published; both finish before anything is raised.
    written, published = await asyncio.gather(
        write_skin_reports(wide, tidy, report_location, metrics_location, s3),
        _publish(wide_rows, tidy, summary, images if show_personal_data else None),
        return_exceptions=True,
    )
    for outcome in (written, published):
        if isinstance(outcome, BaseException):
            raise outcome
    logger.info(
        "skin analysis: %d image(s) done, %d rejected, %d failed (%d awaiting results); %d analyses resumed; "
        "photos deleted for %d subject(s); report %s",
        summary.done,
        summary.rejected,
        summary.failed,
        summary.pending,
        summary.resumed,
        summary.photos_deleted_subjects,
        report_location,
    )
    if summary.failed > summary.pending and not summary.done:  # nothing worked: credentials, service, dataset
        errors = Counter(r.get("reason") or "unknown" for r in wide_rows if r["status"] == "failed")
        (error, count), *_ = errors.most_common(1)
        raise RuntimeError(
            f"no image could be analysed ({summary.failed} failed, {summary.rejected} rejected); "
            f"{count} with: {error[:500]}; see {report_location}"
        )
    return summary


async def _publish(
    wide_rows: list[dict[str, Any]],
    tidy: pd.DataFrame,
    summary: SkinAnalysisSummary,
    personal: list[ImageInput] | None,
) -> None:
    """Artifacts: per-metric summary, outcomes by reason, failures. Personal data only if ``personal`` (the
    input images, to name subjects and paths) is given."""
    await publish_table(
        f"{ARTIFACT}-summary",
        metric_summary(tidy),
        f"Whole-face metrics of {len(tidy['analysis'].unique())} analyses ({summary.api_version}): mean, min, "
        f"max. Images: {summary.done} done, {summary.rejected} rejected, {summary.failed} failed.",
    )
    reasons = Counter((r["status"], r.get("reason") or "") for r in wide_rows)
    await publish_table(f"{ARTIFACT}-outcomes", counts_table(reasons), "Images by status and reason")
    columns = ["item", "status", "reason", "subject_key", "side"]
    failures = [{c: r.get(c) for c in columns} for r in wide_rows if r["status"] != "done"]
    if personal is not None:
        by_item = {i.item: i for i in personal}
        for f in failures:
            f.update(image=by_item[f["item"]].source, subject=by_item[f["item"]].subject)
        columns += ["image", "subject"]
    await publish_markdown(
        f"{ARTIFACT}-failures",
        failures_markdown("Skin analysis: images not done", failures, columns),
        "Rejected and failed images with the reason (item = row of the report)",
    )
