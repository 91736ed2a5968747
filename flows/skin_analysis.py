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

**The run's state** (``tasks/run_state.finish``, after the reports and artifacts are written): Completed only
when every image is done. Rejected images (input to fix: not a JPEG/PNG by content, too small or too big, no
usable subject name, a file not found, a bad manifest row), failed ones (an error, or results not in before
the timeout: a re-run collects them) and a source that cannot be read or holds no image make it Failed, with
the counts and the report's location. By design, and not in the report: files without an image extension
(counted as ``ignored_files``) and hidden files. An empty source creates nothing in Haut (no dataset).

**Privacy**: reports, logs and artifacts name an image by its item number (listing or manifest order) and its
content hash, and its subject by a pseudonymous key, sha256(dataset, name); never by path. The reports add the
file name relative to the source (folder, prefix, or the path as written in the manifest) only with
``include_file_names``, and the subject's name only with ``include_subject_names``; logs and artifacts never
carry either, nor birth dates or meta, and rejection reasons never quote a path. Subjects are created in Haut
only for images that pass validation, with image names derived from the analysis key. ``delete_photos`` calls
Haut's GDPR "delete photos" for each subject once all its analyses in the run have results: it removes *all*
photo files of that subject (records and results stay); subjects with results still pending keep their photos
until a re-run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote
from prefect_aws import S3Bucket
from pydantic import BaseModel, Field, field_validator

from blocks.base import load_block
from blocks.haut import HautCredentials
from clients.errors import InputError
from clients.haut import FS3_TECH_NAME, FSM2_TECH_NAME, MIN_IMAGE_SIDE
from clients.spread import spread_for
from tasks.haut import ensure_haut_dataset
from tasks.journal import Journal
from tasks.reports import Progress, counts_table, failures_markdown, publish_markdown, publish_table
from tasks.run_state import finish
from tasks.skin.analyses import SendingBatches, analyse_skin_batch
from tasks.skin.inputs import SkinInputs, SkinUnit, collect_skin_inputs, group_units, is_manifest
from tasks.skin.journal import JournalState, JournalWriter
from tasks.skin.outcomes import UnitOutcome
from tasks.skin.subjects import SubjectResolver, delete_skin_photos
from tasks.skin.tables import metric_summary, report_tables, write_skin_reports
from tasks.storage import s3_client_from_block

STATE_DIR = ".pipeline-state/skin-analysis"
ARTIFACT = "skin-analysis"


class AnalysisOptions(BaseModel):
    """Which Haut dataset, API and applications."""

    dataset_name: str = Field(
        "skin-analysis",
        min_length=1,
        max_length=512,
        description="Haut dataset to use, found by name or created (one per study, not per run); 1 to 512 "
        "characters.",
    )
    api_version: Literal["v1", "v3"] = Field(
        "v1",
        title="API version",
        description="v1: Face Skin Metrics 2.0, one analysis and result per image. v3: Face Skin Analysis 3.0 "
        "(beta), one batch per subject and visit with up to three sides.",
    )
    applications: list[str] = Field(
        default_factory=list,
        description="Haut applications to attach to the dataset. Empty: face_skin_metrics_2.0 for v1, "
        "face_skin_metrics_3.0 for v3.",
    )


class UploadOptions(BaseModel):
    """How images are prepared and sent."""

    max_side: int = Field(
        0,
        ge=0,
        le=20_000,
        title="Longest side (px)",
        description="Shrink images whose longer side exceeds this many pixels before upload, 256 to 20000. "
        "0: send them at their size (Haut sets no maximum; bigger is slower).",
    )
    batch_size: int = Field(
        20, ge=1, le=500, description="Analyses per task run (read, sent and polled together), 1 to 500."
    )
    concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Requests in flight at once within one batch (uploads, computes, polls), 1 to 64.",
    )
    parallel_batches: int = Field(4, ge=1, le=16, description="Batches running at the same time, 1 to 16.")

    @field_validator("max_side")
    @classmethod
    def _max_side_is_off_or_big_enough(cls, value: int) -> int:
        if 0 < value < MIN_IMAGE_SIDE:
            raise ValueError(f"0 (keep the size) or at least {MIN_IMAGE_SIDE}, as Haut needs")
        return value


class PollingOptions(BaseModel):
    """When results are asked for; 0 takes the Haut block's setting."""

    initial_delay: float = Field(
        0,
        ge=0,
        le=3600,
        title="First poll after (s)",
        description="Seconds from sending an analysis to its first results poll, 0 to 3600; waits grow 1.5 "
        "times after each poll. 0: the Haut block's setting (2 s unless changed).",
    )
    max_delay: float = Field(
        0,
        ge=0,
        le=3600,
        title="Longest wait between polls (s)",
        description="Longest wait between results polls, in seconds, 0 to 3600. 0: the block's (15 s).",
    )
    results_timeout: float = Field(
        0,
        ge=0,
        le=86_400,
        title="Results timeout (s)",
        description="Seconds to wait for an analysis's results once it is sent, 0 to 86400; later results are "
        "collected by a re-run. 0: the block's (300 s).",
    )


class PrivacyOptions(BaseModel):
    """Personal data in the reports, and photos kept in Haut. Logs and artifacts never carry names or paths."""

    include_file_names: bool = Field(
        False,
        description="Add an image column to the reports: the file name relative to the source folder or "
        "prefix, or as written in the manifest. Off: images are known by item number and content hash only "
        "(file names are often people's names).",
    )
    include_subject_names: bool = Field(
        False,
        description="Add a subject_name column to the reports. Off: subjects are known by a pseudonymous key.",
    )
    delete_photos: bool = Field(
        False,
        description="GDPR: delete each subject's photo files in Haut once all its analyses in this run have "
        "results (image records and results stay).",
    )


class OutputOptions(BaseModel):
    """Where the reports and the journal go (local paths or s3:// URIs)."""

    report: str = Field(
        "",
        description="Per-image report, .csv or .parquet. Empty: reports/skin-analysis-{UTC time}.csv.",
    )
    metrics_report: str = Field(
        "", description="Tidy metrics table. Empty: the report's name with -metrics added."
    )
    journal: str = Field(
        "",
        description="Where to keep the journal (a file, or an s3:// prefix). Empty: a file under "
        ".pipeline-state/skin-analysis/ named after the source, dataset, API version and company, so "
        "re-running the same input resumes.",
    )


class SkinAnalysisSummary(BaseModel):
    """What a run did: image and analysis counts, and where the reports and the journal are."""

    api_version: str
    dataset_id: str = Field(
        description="Empty when nothing was sent (no usable image): no dataset is created."
    )
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
    problems: list[str] = Field(default_factory=list, description="Why the run is Failed beyond the counts.")
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


async def read_inputs(source: str, s3: Any) -> tuple[SkinInputs, list[str]]:
    """The source's images, and the problems that make the run Failed whatever else happens: a source that
    cannot be read, or holds no image."""
    try:
        inputs = await collect_skin_inputs(source, s3)
    except InputError as exc:
        return SkinInputs(images=[]), [f"the source cannot be read: {exc}"]
    if inputs.images:
        return inputs, []
    others = f" ({inputs.ignored_files} other file(s) left out)" if inputs.ignored_files else ""
    kind = (
        "manifest lists"
        if is_manifest(source)
        else "prefix holds"
        if source.startswith("s3://")
        else "folder holds"
    )
    return inputs, [f"the source {kind} no image{others}"]


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


@flow(name="skin-analysis", log_prints=False)
async def skin_analysis(
    source: str,
    haut_block: str = "haut-demo",
    s3_bucket_block: str = "",
    analysis: AnalysisOptions = AnalysisOptions(),  # noqa: B008 (a pydantic model, read only)
    upload: UploadOptions = UploadOptions(),  # noqa: B008 (a pydantic model, read only)
    polling: PollingOptions = PollingOptions(),  # noqa: B008 (a pydantic model, read only)
    privacy: PrivacyOptions = PrivacyOptions(),  # noqa: B008 (a pydantic model, read only)
    outputs: OutputOptions = OutputOptions(),  # noqa: B008 (a pydantic model, read only)
) -> SkinAnalysisSummary:
    """Analyse a batch of selfies with Haut.ai and report every skin metric; safe to re-run.

    Completed only when every image is done; rejected or failed images, or a source without images, end the
    run Failed with the counts and the report's location (see the module's docstring for what is rejected).

    Args:
        source: A local folder or s3://bucket/prefix/ of JPEG/PNG selfies (subject = first sub-folder, or the
            file name; a _front, _left or _right name suffix gives the side), or a CSV manifest with subject,
            image (path relative to the manifest, absolute, or s3://), optional side, visit, birth_date,
            biological_sex, meta (or front, left, right image columns).
        haut_block: Name of the saved Haut Credentials block (use a private token: never a login per image).
        s3_bucket_block: Name of a saved prefect-aws S3 Bucket block, needed for s3:// sources, reports or
            journals (its credentials may carry an endpoint URL). Empty: local files only.
        analysis: Haut dataset (found by name or created), API version (v1 or v3) and applications.
        upload: Image downscaling, batch size and concurrency.
        polling: Results polling and timeout (0: the Haut block's settings).
        privacy: File and subject names in the reports (off by default), GDPR photo deletion.
        outputs: Report, metrics table and journal locations (empty: defaults, see each field).
    """
    logger = get_run_logger()
    api_version = analysis.api_version
    credentials = await HautCredentials.resolve(haut_block)
    s3 = s3_client_from_block(await load_block(S3Bucket, s3_bucket_block)) if s3_bucket_block else None
    locations = (source, outputs.journal, outputs.report, outputs.metrics_report)
    if s3 is None and any(x.startswith("s3://") for x in locations):
        raise ValueError("s3:// sources, reports and journals need s3_bucket_block")
    report_location = outputs.report or f"reports/skin-analysis-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    metrics_location = outputs.metrics_report or metrics_name(report_location)
    journal_location = outputs.journal or default_journal(
        source, analysis.dataset_name, api_version, credentials
    )
    concurrency, parallel_batches = upload.concurrency, upload.parallel_batches
    # Built in a thread meanwhile: its SSL context loads the CA bundle (~25 ms, mostly without the GIL).
    transport = asyncio.ensure_future(asyncio.to_thread(spread_for, concurrency * parallel_batches))
    writer = JournalWriter(Journal(journal_location, s3_client=s3))
    records, (inputs, problems) = await asyncio.gather(
        asyncio.to_thread(writer.journal.read), read_inputs(source, s3)
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

    apps = analysis.applications or [FSM2_TECH_NAME if api_version == "v1" else FS3_TECH_NAME]
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
    batch_size = upload.batch_size
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
                max_side=upload.max_side or None,
                concurrency=concurrency,
                s3_client=s3,
                senders=senders,
                poll_initial_delay=polling.initial_delay or None,
                poll_max_delay=polling.max_delay or None,
                results_timeout=polling.results_timeout or None,
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
        if privacy.delete_photos:
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

    dataset_id = ""
    if units:  # nothing usable: nothing is created in Haut, not even the dataset
        # One client for the whole run, shared by its tasks on the flow's event loop: warm connections, each
        # in a pool of its own so that many requests in flight stay cheap (clients/spread.py).
        async with credentials.get_client(transport=await transport) as haut:
            dataset, _ = await asyncio.gather(
                ensure_haut_dataset(haut, analysis.dataset_name, apps), progress.update(0.0)
            )
            dataset_id = dataset.id
            subjects = SubjectResolver(haut, dataset.id, inputs.subjects)
            await asyncio.gather(*(run_batch(n, b) for n, b in enumerate(batches, 1)))
    else:
        transport.cancel()
        await progress.update(100.0)

    # --- reports -------------------------------------------------------------------------------------------------
    wide_rows, wide, tidy = report_tables(
        images,
        units,
        outcomes,
        analysis.dataset_name,
        api_version,
        file_names=privacy.include_file_names,
        subject_names=privacy.include_subject_names,
    )
    statuses = Counter(r["status"] for r in wide_rows)
    waiting = {n for n, o in outcomes.items() if o.pending}
    pending = sum(1 for r in wide_rows if r["status"] == "failed" and r.get("analysis") in waiting)
    problems += outcome_problems(wide_rows, pending, statuses["done"])
    summary = SkinAnalysisSummary(
        api_version=api_version,
        dataset_id=dataset_id,
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
        problems=problems,
        report=report_location,
        metrics_report=metrics_location,
        journal=journal_location,
    )
    # Written (in threads) while the artifacts are published; both finish before anything is raised.
    written, published = await asyncio.gather(
        write_skin_reports(wide, tidy, report_location, metrics_location, s3),
        _publish(wide_rows, tidy, summary),
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
    counts = {k: statuses[k] for k in ("done", "rejected", "failed")}
    return finish(
        summary, what="images", counts=counts, report=report_location, problems=problems, logger=logger
    )


async def _publish(wide_rows: list[dict[str, Any]], tidy: pd.DataFrame, summary: SkinAnalysisSummary) -> None:
    """Artifacts: per-metric summary, outcomes by reason, failures; images by item number and subject key only
    (the reports' personal columns never go to Prefect)."""
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
    await publish_markdown(
        f"{ARTIFACT}-failures",
        failures_markdown("Skin analysis: images not done", failures, columns),
        "Rejected and failed images with the reason (item = row of the report)",
    )
