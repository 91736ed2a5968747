"""Scheduled camera snapshot harvest: VizioSense cameras -> originals in S3 + a fitted copy and a data event in Miniviz.

1. **Select** cameras: every page of the device list (per group when ``groups`` is given), then the name
   pattern (glob by default, or a regex) and explicit uuids. Online cameras only by default: offline ones are
   reported as ``skipped``; explicit uuids that are not found are ``rejected``. Nothing is an error.
2. **Harvest** in batches (one task run per ``batch_size`` cameras, batches overlapping): request a snapshot
   from every camera (``concurrency`` VizioSense calls in flight), sleep until the documented ready time
   (20 s), download the raw and the annotated image (a 404 is polled again with backoff, up to
   ``image_timeout_seconds``, far inside the links' 30 min), store both **originals in S3** under ``key_layout``
   with ASCII metadata (device uuid, name, city, country, label, request time; non-ASCII text as RFC 2047
   ``=?UTF-8?B?...?=`` words), then **fit** a copy into Miniviz's 204,800 bytes (Pillow, in ``fit_workers``
   worker processes started once per run: highest JPEG quality that fits, PNG when smaller, downscaled only
   if needed) and **push** it with the camera's ``label_key``. Each service's HTTP calls go over one-connection
   pools (``clients/spread.py``: httpx slows down with many requests in flight on one pool).
3. **Pacing, never a 429 loop.** Miniviz takes one image per label per 60 s. One Miniviz client serves the
   whole run, and a small pacing state (``state``: local JSON file by default, or ``s3://``) remembers when
   each label last got an image, so a harvest started right after another *defers* every image push with the
   reason instead of collecting 429s. Data events are paced per project (Pro: one per 15 s): they go out
   stalest camera first for ``data_event_budget_seconds``; the rest are deferred and go first next run.
4. **Report**: one row per camera (status, reason, S3 keys, Miniviz ids, bytes before/after fitting, timings)
   as CSV/Parquet and a table artifact; a markdown artifact of presigned links to the originals; the failures.
   One failing camera never fails the run; the run fails only when every camera it asked failed.

A harvest takes *new* snapshots each time, so there is nothing to resume after a crash: a re-run harvests
again, and the pacing state (marked before each send) keeps it from pushing too soon.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import pandas as pd
from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote
from prefect_aws import S3Bucket
from pydantic import BaseModel, Field

from blocks.miniviz import MinivizCredentials
from blocks.viziosense import VizioSenseCredentials
from clients.errors import InputError
from clients.miniviz import MAX_IMAGE_BYTES
from clients.spread import spread_for
from clients.viziosense import Device
from tasks.fit_pool import FitPool
from tasks.harvest import (
    DEFAULT_KEY_LAYOUT,
    REPORT_COLUMNS,
    CameraResult,
    HarvestRun,
    HarvestSettings,
    PacingState,
    check_key_layout,
    check_label_prefix,
    error_text,
    harvest_camera_batch,
    name_matcher,
    select_cameras,
    send_camera_data_events,
    snapshot_key,
)
from tasks.reports import Progress, failures_markdown, publish_markdown, publish_table
from tasks.storage import BucketRef, bucket_ref, check_key, presigned_get_url
from tasks.tables import write_table
from tasks.viziosense import list_viziosense_devices

FLOW_NAME = "snapshot-harvest"
STATE_DIR = ".pipeline-state/snapshot-harvest"
MAX_TABLE_ROWS = 1000  # per-camera table artifact; the report file always has every row
MAX_LINK_ROWS = 500  # cameras listed in the links artifact
TABLE_COLUMNS = ["device_name", "device_uuid", "label_key", "status", "reason", "s3_raw_key", "s3_annotated_key",
                 "image_push", "image_push_reason", "miniviz_image_id", "data_event", "miniviz_data_id",
                 "bytes_before_fit", "bytes_after_fit", "seconds_until_ready", "seconds_total"]  # fmt: skip


class HarvestSummary(BaseModel):
    """What a run did: cameras by status, what reached S3 and Miniviz, and where the report and state are."""

    cameras: int
    done: int
    partial: int
    failed: int
    skipped: int
    rejected: int
    originals_stored: int
    images_pushed: int
    images_deferred: int
    data_events_sent: int
    data_events_deferred: int
    report: str
    state: str | None


def default_state_location(credentials: MinivizCredentials) -> str:
    """One pacing state per Miniviz project (limits are per project + label), named after the project."""
    digest = hashlib.sha256(f"{credentials.base_url}|{credentials.project_id}".encode()).hexdigest()[:16]
    return f"{STATE_DIR}/miniviz-{digest}.json"


@flow(name=FLOW_NAME, log_prints=False)
async def harvest_snapshots(
    viziosense_block: str = "viziosense-demo",
    s3_bucket_block: str = "s3-demo",
    miniviz_block: str | None = "miniviz-demo",
    groups: list[str] | None = None,
    name_pattern: str | None = None,
    name_pattern_syntax: Literal["glob", "regex"] = "glob",
    device_uuids: list[str] | None = None,
    online_only: bool = True,
    prefix: str = "snapshots",
    key_layout: str = DEFAULT_KEY_LAYOUT,
    push_kind: Literal["annotated", "raw"] = "annotated",
    max_image_bytes: Annotated[int, Field(ge=1024, le=MAX_IMAGE_BYTES)] = MAX_IMAGE_BYTES,
    label_source: Literal["name", "client_identifier", "none"] = "name",
    label_prefix: str = "",
    data_events: bool = True,
    data_event_budget_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0,
    concurrency: Annotated[int, Field(ge=1, le=256)] = 16,
    fit_workers: Annotated[int | None, Field(ge=1, le=64)] = None,
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100,
    max_cameras_in_flight: Annotated[int, Field(ge=1, le=100_000)] = 2000,
    ready_after_seconds: Annotated[float, Field(ge=0, le=600)] = 20.0,
    poll_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0,
    image_timeout_seconds: Annotated[float, Field(gt=0, le=1500)] = 300.0,
    s3_workers: Annotated[int, Field(ge=1, le=64)] = 8,
    link_expiry_seconds: Annotated[int, Field(ge=60, le=604_800)] = 86_400,
    state: str | None = None,
    report: str | None = None,
) -> HarvestSummary:
    """Harvest a fresh snapshot from VizioSense cameras into S3 and Miniviz.

    Args:
        viziosense_block: Name of the saved VizioSense Credentials block (an API key is best for schedules).
        s3_bucket_block: Name of the saved prefect-aws S3 Bucket block the originals go to (its folder, if
            any, is put in front of every key); its credentials may carry an endpoint URL.
        miniviz_block: Name of the saved Miniviz Credentials block; empty to skip Miniviz (S3 only).
        groups: VizioSense groups to harvest (one device listing per group); empty for every camera.
        name_pattern: Keep cameras whose name matches, case-insensitive: a glob on the whole name
            (`*parking*`, `Paris ? Cam 0[1-3]`), or a Python regex searched anywhere in it (see
            `name_pattern_syntax`). Empty for every name.
        name_pattern_syntax: `glob` (shell wildcards, whole name) or `regex` (Python `re.search`).
        device_uuids: Only these cameras (still subject to the group and name filters); uuids not found are
            reported as rejected.
        online_only: Ask only cameras listed online; offline ones are reported as skipped. Turn off to ask
            cameras listed offline too (their status may be stale; a refusal is then reported as failed).
        prefix: First part of every key, the `{prefix}` of `key_layout`.
        key_layout: S3 key of each original. Placeholders: `{prefix}`, `{device_uuid}`, `{label_key}`,
            `{YYYY}`, `{MM}`, `{DD}`, `{hh}`, `{mm}`, `{ss}` (request time, UTC), `{timestamp}` (UTC, like
            `20250131T120000.123Z`), `{kind}` (`raw` or `annotated`); it must contain the camera, `{timestamp}`
            and `{kind}`.
        push_kind: Which image is pushed to Miniviz (the other one if it could not be downloaded).
        max_image_bytes: Byte limit the pushed copy is fitted into (Miniviz: 204,800 decoded bytes).
        label_source: What the readable part of each Miniviz `label_key` comes from: the camera's `name`, its
            `client_identifier`, or `none`. A short hash of the uuid always follows, so keys are unique per
            camera and stable; with `name`, renaming a camera starts a new label.
        label_prefix: Put in front of every label key (e.g. `vzs/`); Miniviz characters only, ≤ 32.
        data_events: Send one Miniviz data event per camera (online, bytes, seconds until ready, ...).
        data_event_budget_seconds: How long the run may spend sending data events. Miniviz takes one per
            project every 15 s (Pro) or 60 s (Free): events go out stalest camera first while the next slot
            opens within this budget; the rest are deferred (reported) and go first next run. With the
            project's limit off they all go out at once.
        concurrency: VizioSense requests and downloads in flight at once (also bounds images held in memory).
        fit_workers: Processes re-encoding images for Miniviz (CPU work, off the flow's process); empty for
            one per CPU.
        batch_size: Cameras per task run; batches overlap, so this sets the observability grain, not speed.
        max_cameras_in_flight: Cameras requested but not finished at once (links expire 30 min after the
            request, so huge fleets are taken in waves).
        ready_after_seconds: Wait after a request before fetching (documented: at least 20 s).
        poll_interval_seconds: First wait between fetches of an image not served yet; grows 1.5x up to 5x.
        image_timeout_seconds: Give up on an image this long after its ready time (must end inside the links'
            30 min validity).
        s3_workers: Threads uploading originals to S3.
        link_expiry_seconds: Validity of the presigned links in the links artifact (at most 7 days).
        state: Where the Miniviz pacing state lives: a local JSON file or `s3://bucket/key.json` (through the
            S3 Bucket block's credentials). Default: `.pipeline-state/snapshot-harvest/miniviz-<project>.json`.
            Runs that share a Miniviz project must share it.
        report: Where to write the report (`.csv` or `.parquet`; local or `s3://`). Default:
            `reports/snapshot-harvest-<UTC time>.csv`.
    """
    logger = get_run_logger()
    started = time.monotonic()
    reached: dict[str, tuple[float, float]] = {}  # stage -> (wall, CPU) seconds from the start, for the log
    cpu_started = time.process_time()

    def stage_done(name: str) -> None:
        reached[name] = (round(time.monotonic() - started, 2), round(time.process_time() - cpu_started, 2))

    # Bad parameters fail the run at once, before anything is asked of a camera.
    check_key_layout(key_layout)
    check_label_prefix(label_prefix)
    name_matcher(name_pattern, name_pattern_syntax)
    check_key(snapshot_key(key_layout, prefix=prefix, device_uuid="u", label_key="l",
                           requested_at=datetime.now(UTC), kind="raw"), field="key_layout")  # fmt: skip
    if ready_after_seconds + image_timeout_seconds >= 1800:
        raise InputError(
            "image_timeout_seconds", "ready_after + timeout must end inside the 30 min link validity"
        )

    vizio_credentials = await VizioSenseCredentials.aload(viziosense_block)
    bucket = bucket_ref(await S3Bucket.aload(s3_bucket_block))
    miniviz_credentials = await MinivizCredentials.aload(miniviz_block) if miniviz_block else None
    progress = Progress(f"{FLOW_NAME}-progress", "Cameras harvested")
    await progress.update(0, "listing cameras")

    devices: dict[str, Device] = {}
    for group in groups or [None]:
        for device in await list_viziosense_devices(vizio_credentials, sort="name", group=group):
            devices.setdefault(device.uuid, device)
    rows = select_cameras(
        list(devices.values()),
        name_pattern=name_pattern,
        pattern_syntax=name_pattern_syntax,
        device_uuids=device_uuids,
        online_only=online_only,
        label_source=label_source,
        label_prefix=label_prefix,
    )
    pending = [r for r in rows if r.status == "pending"]
    stage_done("listed")
    logger.info("%d device(s) listed; %d camera(s) to harvest, %d skipped, %d rejected", len(devices),
                len(pending), sum(r.status == "skipped" for r in rows), sum(r.status == "rejected" for r in rows))  # fmt: skip

    pacing: PacingState | None = None
    if miniviz_credentials is not None:
        location = state or default_state_location(miniviz_credentials)
        pacing = PacingState(location, s3_client=bucket.client if location.startswith("s3://") else None)
        await asyncio.to_thread(pacing.load)
        if pacing.load_problem:
            logger.warning("%s", pacing.load_problem)

    settings = HarvestSettings(
        key_layout=key_layout,
        prefix=prefix,
        push_kind=push_kind,
        max_image_bytes=max_image_bytes,
        ready_after=ready_after_seconds,
        poll_interval=poll_interval_seconds,
        image_timeout=image_timeout_seconds,
        concurrency=concurrency,
        fit_workers=fit_workers or os.cpu_count() or 2,
    )
    vizio = vizio_credentials.get_client(
        spread_for(concurrency),
        image_ready_after=ready_after_seconds,
        image_poll_interval=poll_interval_seconds,
        image_timeout=image_timeout_seconds,
    )
    # ONE Miniviz client for the whole run: its pacers (per label, per project) live in the instance.
    miniviz = (
        miniviz_credentials.get_client(spread_for(concurrency), retry_on_429=False)
        if miniviz_credentials
        else None
    )
    if miniviz is not None and pacing is not None:
        pacing.seed(miniviz, (r.label_key for r in rows if r.label_key))
    executor = ThreadPoolExecutor(s3_workers, thread_name_prefix="harvest-s3")
    # Fit workers import Pillow (~0.2 s) while the cameras are asked for snapshots and wait for them.
    fit_pool = FitPool(settings.fit_workers) if miniviz is not None else None
    run = HarvestRun(vizio=vizio, miniviz=miniviz, bucket=bucket, executor=executor, state=pacing,
                     settings=settings, progress=progress, total=len(pending), fit_pool=fit_pool)  # fmt: skip
    await progress.update(5, f"0 of {len(pending)} cameras harvested")
    try:
        if fit_pool is not None:
            await fit_pool.start()
        async with pacing.autoflush() if pacing is not None else contextlib.nullcontext():
            waves = asyncio.Semaphore(max(1, max_cameras_in_flight // batch_size))

            async def batch(cameras: list[CameraResult]) -> list[CameraResult]:
                async with waves:
                    # quote: Prefect would otherwise walk (and copy) every row of the batch it is given
                    return await harvest_camera_batch(run, quote(cameras))

            batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
            results = await asyncio.gather(*(batch(b) for b in batches), return_exceptions=True)
            for cameras, result in zip(batches, results, strict=True):
                if isinstance(result, Exception):  # not expected (cameras never raise): keep the report whole
                    logger.error("a batch of %d cameras failed: %s", len(cameras), error_text(result))
                    for cam in cameras:
                        cam.status, cam.reason = "failed", f"batch task failed: {error_text(result)}"
                    continue
                if isinstance(result, BaseException):
                    raise result
                for row in result:  # tasks may work on copies of their inputs: keep what they return
                    rows[row.index] = row
            stage_done("harvested")
            if miniviz is not None and data_events:
                await progress.update(92, "sending Miniviz data events")
                try:
                    rows = await send_camera_data_events(run, quote(rows), data_event_budget_seconds)
                except Exception as exc:  # not expected either: the harvest itself is done, report it
                    logger.error("Miniviz data events failed: %s", error_text(exc))
                    for cam in rows:
                        if cam.data_event in ("off", "pending"):
                            cam.data_event, cam.data_event_reason = "failed", error_text(exc)
                stage_done("data events")
    finally:
        if pacing is not None and pacing.save_problem:
            logger.warning("%s", pacing.save_problem)
        await vizio.aclose()
        if miniviz is not None:
            await miniviz.aclose()
        executor.shutdown(wait=False)
        if fit_pool is not None:
            await fit_pool.close()
            if fit_pool.problem:
                logger.warning("%s", fit_pool.problem)
            logger.info("fit workers: %.1f CPU s, peak memory %.0f MB in all",
                        fit_pool.workers_cpu_seconds(), fit_pool.workers_peak_rss_mb())  # fmt: skip

    rows.sort(key=lambda r: r.index)
    report_location = report or f"reports/{FLOW_NAME}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    table = pd.DataFrame([r.model_dump(mode="json") for r in rows], columns=REPORT_COLUMNS)
    await asyncio.to_thread(
        write_table, table, report_location, bucket.client if report_location.startswith("s3://") else None
    )
    stage_done("report written")
    summary = _summarise(rows, report_location, pacing.location if pacing else None)
    await _publish(rows, summary, bucket, link_expiry_seconds, time.monotonic() - started)
    await progress.update(100, f"{summary.done + summary.partial} of {len(pending)} cameras harvested")
    stage_done("artifacts published")
    logger.info(
        "snapshot harvest: %d done, %d partial, %d failed, %d skipped, %d rejected; %d image(s) pushed, "
        "%d deferred; %d data event(s) sent, %d deferred; report %s; stages ended at (wall s / this process's "
        "CPU s) %s",
        summary.done, summary.partial, summary.failed, summary.skipped, summary.rejected, summary.images_pushed,
        summary.images_deferred, summary.data_events_sent, summary.data_events_deferred, report_location,
        ", ".join(f"{k} {wall:g}/{cpu:g}" for k, (wall, cpu) in reached.items()),
    )  # fmt: skip
    asked = [r for r in rows if r.status in ("done", "partial", "failed")]
    if asked and all(r.status == "failed" for r in asked):
        raise RuntimeError(
            f"every one of the {len(asked)} camera(s) asked for a snapshot failed (report: {report_location}); "
            f"first error: {asked[0].reason}"
        )
    return summary


def _summarise(rows: list[CameraResult], report: str, state: str | None) -> HarvestSummary:
    status = Counter(r.status for r in rows)
    push = Counter(r.image_push for r in rows)
    data = Counter(r.data_event for r in rows)
    return HarvestSummary(
        cameras=len(rows),
        done=status["done"],
        partial=status["partial"],
        failed=status["failed"],
        skipped=status["skipped"],
        rejected=status["rejected"],
        originals_stored=sum(bool(r.s3_raw_key) + bool(r.s3_annotated_key) for r in rows),
        images_pushed=push["sent"],
        images_deferred=push["deferred"],
        data_events_sent=data["sent"],
        data_events_deferred=data["deferred"],
        report=report,
        state=state,
    )


async def _publish(
    rows: list[CameraResult], summary: HarvestSummary, bucket: BucketRef, expiry: int, seconds: float
) -> None:
    fitted = [r for r in rows if r.bytes_after_fit is not None]
    figures: list[tuple[str, Any]] = [
        *(
            (f"cameras {s}", getattr(summary, s))
            for s in ("done", "partial", "failed", "skipped", "rejected")
        ),
        ("originals stored in S3", summary.originals_stored),
        ("Miniviz images pushed", summary.images_pushed),
        ("Miniviz images deferred (pacing)", summary.images_deferred),
        ("Miniviz data events sent", summary.data_events_sent),
        ("Miniviz data events deferred (pacing)", summary.data_events_deferred),
        ("bytes before fitting", sum(r.bytes_before_fit or 0 for r in fitted)),
        ("bytes after fitting", sum(r.bytes_after_fit or 0 for r in fitted)),
        ("run seconds", round(seconds, 1)),
    ]
    await publish_table(f"{FLOW_NAME}-summary", [{"what": k, "value": v} for k, v in figures],
                        f"Snapshot harvest: {summary.cameras} cameras; report {summary.report}")  # fmt: skip
    table = [{c: _cell(getattr(r, c)) for c in TABLE_COLUMNS} for r in rows[:MAX_TABLE_ROWS]]
    more = (
        f" (first {MAX_TABLE_ROWS} of {len(rows)}; every row is in the report)"
        if len(rows) > MAX_TABLE_ROWS
        else ""
    )
    await publish_table(f"{FLOW_NAME}-cameras", table, f"One row per camera{more}")
    problems = [
        {**r.model_dump(), "problem": r.reason or r.image_push_reason or r.data_event_reason}
        for r in rows
        if r.status in ("failed", "partial", "rejected")
        or r.image_push == "failed"
        or r.data_event == "failed"
    ]
    await publish_markdown(
        f"{FLOW_NAME}-failures",
        failures_markdown("Snapshot harvest: cameras not done", problems,
                          ["device_name", "device_uuid", "status", "problem", "image_push", "data_event"]),
        "Cameras that failed, were only partly harvested or were rejected",
    )  # fmt: skip
    markdown = await asyncio.to_thread(_links_markdown, rows, bucket, expiry)
    await publish_markdown(f"{FLOW_NAME}-links", markdown, "Presigned links to the stored originals")


def _links_markdown(rows: list[CameraResult], bucket: BucketRef, expiry: int) -> str:
    """Markdown table of presigned GET links to each stored original.

    Presigned URLs are credentials (anyone holding one can download the object until it expires): they go in
    this artifact only, never in logs, the report, errors or flow parameters.
    """
    stored = [r for r in rows if r.s3_raw_key or r.s3_annotated_key]
    whole = BucketRef(bucket.client, bucket.bucket)  # the report keys already carry the bucket folder
    lines = [
        "# Snapshot harvest: stored originals",
        "",
        f"{len(stored)} camera(s) in `s3://{bucket.bucket}`. Links expire {expiry // 3600} h {expiry % 3600 // 60} min "
        "after this run; anyone with a link can download the image until then, so share them with care.",
        "",
        "| Camera | City | Raw | Annotated | Miniviz image |",
        "|---|---|---|---|---|",
    ]
    for r in stored[:MAX_LINK_ROWS]:
        links = [
            f"[{kind}]({presigned_get_url(whole, key, expiry)})" if key else "-"
            for kind, key in (("raw", r.s3_raw_key), ("annotated", r.s3_annotated_key))
        ]
        name = _cell(r.device_name or r.device_uuid).replace("|", "\\|")
        city = _cell(", ".join(filter(None, [r.city, r.country]))).replace("|", "\\|")
        lines.append(f"| {name} | {city} | {links[0]} | {links[1]} | {r.image_push} |")
    if len(stored) > MAX_LINK_ROWS:
        lines += ["", f"... and {len(stored) - MAX_LINK_ROWS} more cameras: their keys are in the report."]
    if not stored:
        lines.append("| (none stored) | | | | |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value
