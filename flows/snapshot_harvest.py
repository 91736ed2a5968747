"""Scheduled camera snapshot harvest: VizioSense cameras -> originals in S3 + a fitted copy and a data event in Miniviz.

1. **Select** cameras: every page of the device list (per group when ``groups`` is given), then the name
   pattern (glob by default, or a regex) and explicit uuids. Online cameras only by default: offline ones are
   ``skipped`` (by design), and so is a uuid listed twice (asked once); explicit uuids that are not found, or
   that the name filter excludes, are ``rejected`` (input to fix). Filters that match no camera at all are a
   problem of the run (it ends Failed, "no camera matched ..."); an account whose cameras are all offline is
   not (Completed, every camera skipped).
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
   whole run, and a small pacing state (``outputs.state``: local JSON file by default, or ``s3://``) remembers when
   each label last got an image, so a harvest started right after another *defers* every image push with the
   reason instead of collecting 429s. Data events are paced per project (Pro: one per 15 s): they go out
   stalest camera first for ``data_event_budget_seconds``; the rest are deferred and go first next run.
4. **Report**: one row per camera as CSV/Parquet and a table artifact: its ``outcome`` and ``reason``, then one
   column per delivery (``originals`` stored/failed/skipped with the S3 keys, ``image_push`` and ``data_event``
   sent/deferred/failed/rejected/skipped/off with their reasons and Miniviz ids), bytes before/after fitting,
   timings; a markdown artifact of presigned links to the originals; a markdown list of the failures.
5. **Final state** (``tasks.run_state.finish``, after the report and artifacts): a camera is ``done`` when
   every delivery was made, ``deferred`` when one waits for its Miniviz pacing slot, ``failed`` when any
   delivery failed (an original not stored, an image or data event Miniviz did not accept): a camera stored
   in S3 but refused by Miniviz is failed, not done. The run is Completed when every camera is done, deferred
   or skipped, else Failed with the counts and the report's location. A Miniviz 401/403 on the first image
   push (or data event) is detected once: the rest of that kind are not sent, fail with the same reason, and
   the originals still go to S3.

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
from typing import Any, Literal

import pandas as pd
from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote
from prefect_aws import S3Bucket
from pydantic import BaseModel, ConfigDict, Field

from blocks.base import load_block
from blocks.miniviz import MinivizCredentials
from blocks.viziosense import VizioSenseCredentials
from clients.errors import InputError
from clients.miniviz import MAX_IMAGE_BYTES
from clients.spread import spread_for
from clients.viziosense import Device
from tasks.fit_pool import FitPool
from tasks.harvest import (
    DEFAULT_KEY_LAYOUT,
    NOT_DELIVERED,
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
    settle_outcome,
    snapshot_key,
)
from tasks.reports import Progress, failures_markdown, publish_markdown, publish_table
from tasks.run_state import OUTCOMES, finish
from tasks.storage import BucketRef, bucket_ref, check_key, presigned_get_url
from tasks.tables import write_table
from tasks.viziosense import list_viziosense_devices

FLOW_NAME = "snapshot-harvest"
STATE_DIR = ".pipeline-state/snapshot-harvest"
MAX_TABLE_ROWS = 1000  # per-camera table artifact; the report file always has every row
MAX_LINK_ROWS = 500  # cameras listed in the links artifact
TABLE_COLUMNS = ["device_name", "device_uuid", "label_key", "outcome", "reason", "originals", "s3_raw_key", "s3_annotated_key",
                 "image_push", "image_push_reason", "miniviz_image_id", "data_event", "miniviz_data_id",
                 "bytes_before_fit", "bytes_after_fit", "seconds_until_ready", "seconds_total"]  # fmt: skip


class CameraFilter(BaseModel):
    """Which cameras to harvest. Every filter left empty: every camera the account sees."""

    model_config = ConfigDict(extra="forbid")

    groups: list[str] = Field(
        default_factory=list,
        description="VizioSense groups to harvest (one device listing per group). Empty: every group.",
    )
    name_pattern: str = Field(
        "",
        description="Keep cameras whose name matches, case-insensitive: a glob on the whole name "
        "(*parking*, Paris ? Cam 0[1-3]) or a regex searched anywhere in it. Empty: every name.",
    )
    name_pattern_syntax: Literal["glob", "regex"] = Field(
        "glob", description="glob: shell wildcards on the whole name. regex: Python re.search."
    )
    device_uuids: list[str] = Field(
        default_factory=list,
        description="Only these cameras (still subject to the group and name filters). A uuid not found is "
        "reported as rejected, a repeated one as skipped. Empty: no uuid filter.",
    )
    online_only: bool = Field(
        True,
        description="Ask only cameras listed online; offline ones are reported as skipped (by design). Off: "
        "ask cameras listed offline too (their status may be stale; a refusal is then a failure).",
    )


class S3Layout(BaseModel):
    """Where the originals go in the S3 Bucket block's bucket (after the block's folder, if any)."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = Field("snapshots", description="First part of every key, the {prefix} of key_layout.")
    key_layout: str = Field(
        DEFAULT_KEY_LAYOUT,
        description="S3 key of each original. Placeholders: {prefix}, {device_uuid}, {label_key}, {YYYY}, "
        "{MM}, {DD}, {hh}, {mm}, {ss} (request time, UTC), {timestamp} (UTC, like 20250131T120000.123Z), "
        "{kind} (raw or annotated). It must contain the camera, {timestamp} and {kind}.",
    )


class MinivizPush(BaseModel):
    """What goes to Miniviz (when a Miniviz block is given): a fitted image and a data event per camera."""

    model_config = ConfigDict(extra="forbid")

    push_kind: Literal["annotated", "raw"] = Field(
        "annotated", description="Which image is pushed (the other one if it could not be downloaded)."
    )
    max_image_bytes: int = Field(
        MAX_IMAGE_BYTES,
        ge=1024,
        le=MAX_IMAGE_BYTES,
        description="Byte limit the pushed copy is fitted into, 1,024 to 204,800 (Miniviz's limit, the default).",
    )
    label_source: Literal["name", "client_identifier", "none"] = Field(
        "name",
        description="What the readable part of each label key comes from. A short hash of the uuid always "
        "follows, so keys are unique and stable; with name, renaming a camera starts a new label.",
    )
    label_prefix: str = Field(
        "",
        description="Put in front of every label key (e.g. vzs/); Miniviz label characters only, at most 32.",
    )
    data_events: bool = Field(
        True, description="Send one data event per camera (online, ok, bytes, seconds until ready)."
    )
    data_event_budget_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Seconds the run may spend sending data events, 0 to 3600. Miniviz takes one per project every 15 s "
        "(Pro) or 60 s (Free): the stalest cameras go first, the rest are deferred (by design) and go first "
        "next run. With the project's limit off they all go out at once.",
    )


class Timing(BaseModel):
    """How long to wait for the cameras' images."""

    model_config = ConfigDict(extra="forbid")

    ready_after_seconds: float = Field(
        20.0,
        ge=0,
        le=600,
        description="Seconds to wait after a request before fetching, 0 to 600 (documented: at least 20).",
    )
    poll_interval_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Seconds between fetches of an image not served yet, up to 60; grows 1.5x up to 5x.",
    )
    image_timeout_seconds: float = Field(
        300.0,
        gt=0,
        le=1500,
        description="Seconds after its ready time to give up on an image, up to 1500. The wait plus this must "
        "stay under the links' 30 min (1800 s) validity.",
    )


class Performance(BaseModel):
    """Concurrency; the defaults suit a fleet of a few thousand cameras."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(
        16,
        ge=1,
        le=256,
        description="VizioSense requests and downloads in flight, 1 to 256 (also bounds images in memory).",
    )
    fit_workers: int = Field(
        0, ge=0, le=64, description="Processes re-encoding images for Miniviz, up to 64. 0: one per CPU."
    )
    batch_size: int = Field(
        100, ge=1, le=1000, description="Cameras per task run, 1 to 1000; batches overlap, so this sets the "
        "observability grain, not the speed.",
    )  # fmt: skip
    max_cameras_in_flight: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Cameras requested but not finished at once, 1 to 100,000 (links expire 30 min after the "
        "request, so huge fleets are taken in waves).",
    )
    s3_workers: int = Field(8, ge=1, le=64, description="Threads uploading originals to S3, 1 to 64.")


class Outputs(BaseModel):
    """Where the report and the pacing state are written."""

    model_config = ConfigDict(extra="forbid")

    report: str = Field(
        "",
        description="Report file (.csv or .parquet; local path or s3://bucket/key). Empty: "
        "reports/snapshot-harvest-{UTC time}.csv.",
    )
    state: str = Field(
        "",
        description="Miniviz pacing state: a local JSON file or s3://bucket/key.json (through the S3 Bucket "
        "block's credentials). Runs that share a Miniviz project must share it. Empty: "
        ".pipeline-state/snapshot-harvest/miniviz-{project}.json.",
    )
    link_expiry_seconds: int = Field(
        86_400,
        ge=60,
        le=604_800,
        description="Seconds the presigned links to the originals (links artifact) stay valid, 60 to 604,800 "
        "(7 days).",
    )


class HarvestSummary(BaseModel):
    """What a run did: cameras by outcome, each delivery's counts, and where the report and state are.

    Originals are counted as objects (two per camera asked); images and data events per camera.
    """

    cameras: int
    done: int
    deferred: int
    skipped: int
    rejected: int
    failed: int
    originals_stored: int
    originals_failed: int
    images_pushed: int
    images_deferred: int
    images_failed: int
    data_events_sent: int
    data_events_deferred: int
    data_events_failed: int
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
    miniviz_block: str = "miniviz-demo",
    cameras: CameraFilter = CameraFilter(),  # noqa: B008 (pydantic models: Prefect renders them as sections)
    s3_layout: S3Layout = S3Layout(),  # noqa: B008
    miniviz_push: MinivizPush = MinivizPush(),  # noqa: B008
    timing: Timing = Timing(),  # noqa: B008
    performance: Performance = Performance(),  # noqa: B008
    outputs: Outputs = Outputs(),  # noqa: B008
) -> HarvestSummary:
    """Harvest a fresh snapshot from VizioSense cameras into S3 and Miniviz.

    From Python, the groups take dicts: harvest_snapshots(miniviz_block="", cameras={"groups": ["parking"]}).
    The run ends Completed when every camera was done, skipped (offline) or deferred (Miniviz pacing), and
    Failed, after writing the report and artifacts, when any camera failed or was rejected, no camera
    matched the filter, or Miniviz refused the credentials.

    Args:
        viziosense_block: Name of the saved VizioSense Credentials block (an API key is best for schedules).
        s3_bucket_block: Name of the saved S3 Bucket block the originals go to (its folder, if any, is put in
            front of every key; its credentials may carry an endpoint URL).
        miniviz_block: Name of the saved Miniviz Credentials block. Empty: S3 only, nothing sent to Miniviz.
        cameras: Which cameras: groups, name pattern, uuids, online only.
        s3_layout: Key prefix and layout of the originals in S3.
        miniviz_push: Image and data event options for Miniviz.
        timing: Waits for the cameras' images.
        performance: Concurrency and batch sizes.
        outputs: Report, pacing state and link expiry.
    """
    logger = get_run_logger()
    started = time.monotonic()
    reached: dict[str, tuple[float, float]] = {}  # stage -> (wall, CPU) seconds from the start, for the log
    cpu_started = time.process_time()

    def stage_done(name: str) -> None:
        reached[name] = (round(time.monotonic() - started, 2), round(time.process_time() - cpu_started, 2))

    # Bad parameters fail the run at once, before anything is asked of a camera.
    _check_parameters(cameras, s3_layout, miniviz_push, timing)

    vizio_credentials = await load_block(VizioSenseCredentials, viziosense_block)
    bucket = bucket_ref(await load_block(S3Bucket, s3_bucket_block))
    miniviz_credentials = await load_block(MinivizCredentials, miniviz_block) if miniviz_block else None
    progress = Progress(f"{FLOW_NAME}-progress", "Cameras harvested")
    await progress.update(0, "listing cameras")

    devices: dict[str, Device] = {}
    for group in cameras.groups or [None]:
        for device in await list_viziosense_devices(vizio_credentials, sort="name", group=group):
            devices.setdefault(device.uuid, device)
    rows = select_cameras(
        list(devices.values()),
        name_pattern=cameras.name_pattern,
        pattern_syntax=cameras.name_pattern_syntax,
        device_uuids=cameras.device_uuids or None,
        online_only=cameras.online_only,
        label_source=miniviz_push.label_source,
        label_prefix=miniviz_push.label_prefix,
    )
    pending = [r for r in rows if r.outcome == "pending"]
    problems = _selection_problems(rows, cameras, len(devices))
    stage_done("listed")
    logger.info("%d device(s) listed; %d camera(s) to harvest, %d skipped, %d rejected", len(devices),
                len(pending), sum(r.outcome == "skipped" for r in rows), sum(r.outcome == "rejected" for r in rows))  # fmt: skip

    pacing: PacingState | None = None
    if miniviz_credentials is not None:
        location = outputs.state or default_state_location(miniviz_credentials)
        pacing = PacingState(location, s3_client=bucket.client if location.startswith("s3://") else None)
        await asyncio.to_thread(pacing.load)
        if pacing.load_problem:
            logger.warning("%s", pacing.load_problem)

    settings = HarvestSettings(
        key_layout=s3_layout.key_layout,
        prefix=s3_layout.prefix,
        push_kind=miniviz_push.push_kind,
        max_image_bytes=miniviz_push.max_image_bytes,
        ready_after=timing.ready_after_seconds,
        poll_interval=timing.poll_interval_seconds,
        image_timeout=timing.image_timeout_seconds,
        concurrency=performance.concurrency,
        fit_workers=performance.fit_workers or os.cpu_count() or 2,
    )
    vizio = vizio_credentials.get_client(
        spread_for(performance.concurrency),
        image_ready_after=timing.ready_after_seconds,
        image_poll_interval=timing.poll_interval_seconds,
        image_timeout=timing.image_timeout_seconds,
    )
    # ONE Miniviz client for the whole run: its pacers (per label, per project) live in the instance.
    miniviz = (
        miniviz_credentials.get_client(spread_for(performance.concurrency), retry_on_429=False)
        if miniviz_credentials
        else None
    )
    if miniviz is not None and pacing is not None:
        pacing.seed(miniviz, (r.label_key for r in rows if r.label_key))
    executor = ThreadPoolExecutor(performance.s3_workers, thread_name_prefix="harvest-s3")
    # Fit workers import Pillow (~0.2 s) while the cameras are asked for snapshots and wait for them.
    fit_pool = FitPool(settings.fit_workers) if miniviz is not None and pending else None
    run = HarvestRun(vizio=vizio, miniviz=miniviz, bucket=bucket, executor=executor, state=pacing,
                     settings=settings, progress=progress, total=len(pending), fit_pool=fit_pool)  # fmt: skip
    await progress.update(5, f"0 of {len(pending)} cameras harvested")
    try:
        if fit_pool is not None:
            await fit_pool.start()
        async with pacing.autoflush() if pacing is not None else contextlib.nullcontext():
            batch_size = performance.batch_size
            waves = asyncio.Semaphore(max(1, performance.max_cameras_in_flight // batch_size))

            async def batch(chunk: list[CameraResult]) -> list[CameraResult]:
                async with waves:
                    # quote: Prefect would otherwise walk (and copy) every row of the batch it is given
                    return await harvest_camera_batch(run, quote(chunk))

            batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
            results = await asyncio.gather(*(batch(b) for b in batches), return_exceptions=True)
            for chunk, result in zip(batches, results, strict=True):
                if isinstance(result, Exception):  # not expected (cameras never raise): keep the report whole
                    logger.error("a batch of %d cameras failed: %s", len(chunk), error_text(result))
                    for cam in chunk:
                        cam.originals, cam.reason = "failed", f"batch task failed: {error_text(result)}"
                    continue
                if isinstance(result, BaseException):
                    raise result
                for row in result:  # tasks may work on copies of their inputs: keep what they return
                    rows[row.index] = row
            stage_done("harvested")
            if miniviz is not None and miniviz_push.data_events and any(r.label_key for r in rows):
                await progress.update(92, "sending Miniviz data events")
                try:
                    rows = await send_camera_data_events(
                        run, quote(rows), miniviz_push.data_event_budget_seconds
                    )
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
    for row in rows:
        settle_outcome(row)
    problems += [f"Miniviz refused this run's {gate.what}: {gate.error}" for gate in
                 (run.image_gate, run.data_gate) if gate.error]  # fmt: skip
    problems += _nothing_stored_problem(rows)
    report_location = outputs.report or f"reports/{FLOW_NAME}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    table = pd.DataFrame([r.model_dump(mode="json") for r in rows], columns=REPORT_COLUMNS)
    await asyncio.to_thread(
        write_table, table, report_location, bucket.client if report_location.startswith("s3://") else None
    )
    stage_done("report written")
    summary = _summarise(rows, report_location, pacing.location if pacing else None)
    await _publish(rows, summary, bucket, outputs.link_expiry_seconds, time.monotonic() - started)
    delivered = summary.done + summary.deferred
    await progress.update(100, f"{delivered} of {len(pending)} cameras harvested")
    stage_done("artifacts published")
    logger.info(
        "snapshot harvest: %d done, %d deferred, %d failed, %d skipped, %d rejected; originals %d stored, "
        "%d failed; Miniviz images %d pushed, %d deferred, %d failed; data events %d sent, %d deferred, %d "
        "failed; report %s; stages ended at (wall s / this process's CPU s) %s",
        summary.done, summary.deferred, summary.failed, summary.skipped, summary.rejected,
        summary.originals_stored, summary.originals_failed, summary.images_pushed, summary.images_deferred,
        summary.images_failed, summary.data_events_sent, summary.data_events_deferred, summary.data_events_failed,
        report_location, ", ".join(f"{k} {wall:g}/{cpu:g}" for k, (wall, cpu) in reached.items()),
    )  # fmt: skip
    counts = {k: getattr(summary, k) for k in OUTCOMES}
    return finish(summary, what="cameras", counts=counts, report=report_location, problems=problems,
                  logger=logger)  # fmt: skip


def _check_parameters(
    cameras: CameraFilter, s3_layout: S3Layout, miniviz_push: MinivizPush, timing: Timing
) -> None:
    """Raise InputError naming the parameter, before anything is asked of a camera."""
    check_key_layout(s3_layout.key_layout)
    check_label_prefix(miniviz_push.label_prefix)
    name_matcher(cameras.name_pattern, cameras.name_pattern_syntax)
    check_key(snapshot_key(s3_layout.key_layout, prefix=s3_layout.prefix, device_uuid="u", label_key="l",
                           requested_at=datetime.now(UTC), kind="raw"), field="key_layout")  # fmt: skip
    if timing.ready_after_seconds + timing.image_timeout_seconds >= 1800:
        raise InputError(
            "image_timeout_seconds", "ready_after + timeout must end inside the 30 min link validity"
        )


def _selection_problems(rows: list[CameraResult], cameras: CameraFilter, listed: int) -> list[str]:
    """``no camera matched ...`` when the filters leave no device of the account (asked or offline)."""
    if any(r.outcome in ("pending", "skipped") and r.label_key for r in rows):
        return []
    filters = {"groups": cameras.groups, "name_pattern": cameras.name_pattern,
               "device_uuids": cameras.device_uuids}  # fmt: skip
    used = ", ".join(f"{k}={_shown(v)}" for k, v in filters.items() if v)
    if not used:
        return ["the VizioSense account lists no camera"]
    return [f"no camera matched {used} ({listed} device(s) listed for this account)"]


def _shown(value: str | list[str], most: int = 3) -> str:
    if isinstance(value, list) and len(value) > most:
        return f"{value[:most]!r}"[:-1] + f", ... ({len(value)} in all)]"
    return repr(value)


def _nothing_stored_problem(rows: list[CameraResult]) -> list[str]:
    """When every camera asked failed to store anything: the first error, so the run's message says why."""
    asked = [r for r in rows if r.originals != "skipped"]
    if not asked or any(r.s3_raw_key or r.s3_annotated_key for r in asked):
        return []
    return [f"no original stored: every one of the {len(asked)} camera(s) asked failed; first error: "
            f"{asked[0].reason}"]  # fmt: skip


def _summarise(rows: list[CameraResult], report: str, state: str | None) -> HarvestSummary:
    outcome = Counter(r.outcome for r in rows)
    push = Counter(r.image_push for r in rows)
    data = Counter(r.data_event for r in rows)
    stored = sum(bool(r.s3_raw_key) + bool(r.s3_annotated_key) for r in rows)
    asked = sum(r.originals != "skipped" for r in rows)
    return HarvestSummary(
        cameras=len(rows),
        **{k: outcome[k] for k in OUTCOMES},
        originals_stored=stored,
        originals_failed=2 * asked - stored,
        images_pushed=push["sent"],
        images_deferred=push["deferred"],
        images_failed=sum(push[k] for k in NOT_DELIVERED),
        data_events_sent=data["sent"],
        data_events_deferred=data["deferred"],
        data_events_failed=sum(data[k] for k in NOT_DELIVERED),
        report=report,
        state=state,
    )


async def _publish(
    rows: list[CameraResult], summary: HarvestSummary, bucket: BucketRef, expiry: int, seconds: float
) -> None:
    fitted = [r for r in rows if r.bytes_after_fit is not None]
    figures: list[tuple[str, Any]] = [
        *((f"cameras {k}", getattr(summary, k)) for k in OUTCOMES),
        ("S3 originals stored", summary.originals_stored),
        ("S3 originals failed", summary.originals_failed),
        ("Miniviz images pushed", summary.images_pushed),
        ("Miniviz images deferred (pacing)", summary.images_deferred),
        ("Miniviz images failed", summary.images_failed),
        ("Miniviz data events sent", summary.data_events_sent),
        ("Miniviz data events deferred (pacing)", summary.data_events_deferred),
        ("Miniviz data events failed", summary.data_events_failed),
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
    problems = [{**r.model_dump(), "problem": r.reason} for r in rows if r.outcome in NOT_DELIVERED]
    await publish_markdown(
        f"{FLOW_NAME}-failures",
        failures_markdown("Snapshot harvest: cameras failed or rejected", problems,
                          ["device_name", "device_uuid", "outcome", "problem", "originals", "image_push",
                           "data_event"]),
        "Cameras with a delivery that failed (S3 original, Miniviz image or data event), or rejected",
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
