"""Batch skin analysis with Haut.ai: folder, S3 prefix or manifest in; tidy and wide metric tables out; resumable.

1. **Inputs**: a local folder or ``s3://bucket/prefix/`` of selfies (the subject is the first sub-folder, or the
   file name; a trailing ``_front``/``_left``/``_right`` names the side), or a CSV manifest (``subject``,
   ``image``, optional ``side``, ``visit``, ``birth_date``, ``biological_sex``, ``meta``; or ``front``/``left``/
   ``right`` columns). Paths in a manifest are relative to it unless absolute or ``s3://``.
2. **Subjects and dataset**: the dataset is found by name or created (applications attached); the dataset's
   subjects are listed once and reused by name, missing ones created when an analysis first needs them, each
   once and concurrently (``tasks.haut_batch.SubjectResolver``), so a re-run creates none.
3. **Analyses** in coarse batches (one task run per ``batch_size`` analyses, ``parallel_batches`` sending at
   once, at most ``concurrency`` requests in flight per batch): read, validate and prepare each image
   (decodable JPEG/PNG by content, ≥ 256×256, ≤ 30 MiB as sent, EXIF orientation applied, optional
   downscale), then signed URL(s) → PUT → compute, each analysis through its steps without waiting for the
   rest of its batch; then the batch polls results with backoff, having made way for the next one. v1: one
   analysis per image, per-image results. v3: one batch per subject and visit with up to three sides, batch
   results (``all_algorithms_calculated``). Each batch is a run of the public task
   ``tasks.haut.analyse_haut_batch`` on the account's session: one client and one login for the process.
4. **Outputs**: a wide report (one row per input image: status, reason, whole-face metrics) and a tidy metrics
   table (analysis × algorithm × area × metric: value, tag), CSV or Parquet, local or ``s3://``; artifacts:
   progress, per-metric summary (mean, min, max), outcomes by reason, and a markdown list of failures.
5. **Fan-out** (``fan_out.shard_size``; ``shards.py``): more subjects than that, and the run creates every
   subject once, splits them by pseudonymous key into shards (runs of the ``skin-analysis-shard`` deployment
   on the work pool, all at once, writing to the job's one journal under the state root) and waits; a shard
   whose run crashed starts again and resumes from the journal. One report and one set of artifacts.

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

from prefect import flow, get_run_logger

from blocks.haut import HautCredentials
from tasks.fan_out import FanOut, write_shard_summary
from tasks.haut import ensure_haut_dataset
from tasks.haut_batch import JournalState
from tasks.journal import GroupCommit, Journal
from tasks.run_state import finish
from tasks.state import StateRoot
from tasks.storage import s3_client_for

from .inputs import group_units
from .options import (
    AnalysisOptions,
    OutputOptions,
    PollingOptions,
    PrivacyOptions,
    SkinAnalysisSummary,
    UploadOptions,
)
from .outputs import Locations, report_builder, report_run
from .run import SkinRun, read_inputs
from .shards import analyse_in_shards, take_shard


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
    fan_out: FanOut = FanOut(),  # noqa: B008 (a pydantic model, read only)
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
        fan_out: Shards on the work pool for big studies, by subject (shard size: subjects per shard; 0: all
            in this run).
    """
    logger = get_run_logger()
    credentials = await HautCredentials.resolve(haut_block)
    root = await StateRoot.current(outputs.state_root)
    root.check_local([source], "source")
    root.check_local([outputs.report, outputs.metrics_report, outputs.journal], "outputs")
    where = Locations.of(source, analysis, outputs, credentials, root)
    s3 = await s3_client_for(s3_bucket_block or root.s3_bucket_block, (source, *where))
    journal = GroupCommit(Journal(where.journal, s3_client=s3))
    records, (inputs, problems) = await asyncio.gather(  # the journal is read while the source is listed
        asyncio.to_thread(journal.journal.read), read_inputs(source, s3)
    )
    units = group_units(inputs.images, analysis.api_version)
    if fan_out.shard.is_shard:  # a shard: its subjects' images and analyses
        units = take_shard(inputs, units, analysis.dataset_name, fan_out.shard)
    report = report_builder(analysis.dataset_name, analysis.api_version, privacy, where)
    state = JournalState(records)
    run = SkinRun(units, state, journal, analysis.api_version, upload, polling, privacy, report, s3)
    dataset_id = ""
    if units:  # nothing usable: nothing is created in Haut, not even the dataset
        dataset, _ = await asyncio.gather(
            ensure_haut_dataset(credentials, analysis.dataset_name, analysis.application_names()),
            run.progress.update(0.0),
        )
        dataset_id = dataset.id
    if fan_out.shard_size and len({u.subject for u in units}) > fan_out.shard_size:  # shards on the pool
        summary = await analyse_in_shards(
            run, credentials, dataset_id, inputs, problems, fan_out, root, where
        )
    else:
        if units:
            await run.analyse(credentials, dataset_id, inputs.subjects)
        summary = await report_run(run, inputs, problems, dataset_id, where)
    await run.progress.update(100.0)
    if fan_out.shard.is_shard:  # what the parent reads back
        await asyncio.to_thread(write_shard_summary, where.report, summary, s3)
    counts = {"done": summary.done, "rejected": summary.rejected, "failed": summary.failed}
    return finish(
        summary, what="images", counts=counts, report=where.report, problems=summary.problems, logger=logger
    )
