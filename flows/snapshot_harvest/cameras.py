"""The snapshot harvest's camera pipeline: each camera's originals to S3, a fitted copy and a data event to Miniviz.

A batch of cameras is one run of the public task ``tasks.viziosense.harvest_viziosense_snapshots`` (request,
wait for the documented ready time, download raw and annotated); it hands each camera to ``deliver`` as soon as
its images are in, which stores both originals in S3 and, unless its label must still wait (deferred), fits a
copy into Miniviz's image limit (in ``fit_pool`` worker processes) and pushes it. The bounds are shared by
every batch of the run (``SnapshotLimits``: VizioSense calls in flight, cameras holding image bytes; images
handed to the fit workers), so memory stays bounded whatever the fleet size and the fitting (CPU) overlaps with
the downloads and uploads.

Miniviz pacing (one image per 60 s per label_key; data one per 15 s per project on Pro) is kept by the
process's session of the Miniviz account (``creds.session()``: its pacers are shared by every task of the
process) and, across runs, by ``PacingState`` (``pacing``), whose times seed those pacers at the start of a
run, so ``client.image_wait_time(label)`` already knows about the previous run; a camera whose label must still
wait is *deferred* (reported with the reason), never sent to collect a 429. The sends ask the client not to
retry a 429 (``retry_on_429=False``): if another process pushed in between, the one 429 becomes a deferral
too, never a wait or a retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from blocks.miniviz import MinivizCredentials
from blocks.viziosense import VizioSenseCredentials
from clients.errors import ApiError, AuthError, InputError, OutcomeUnknownError, RateLimitedError
from clients.redaction import error_text
from clients.session import SessionClient
from clients.viziosense import ImageKind, Snapshot
from flows.snapshot_harvest.fit_pool import FitPool
from flows.snapshot_harvest.keys import DEFAULT_KEY_LAYOUT, snapshot_key, snapshot_metadata, utc_stamp
from flows.snapshot_harvest.pacing import PacingState
from flows.snapshot_harvest.parameters import MinivizPush, Performance, S3Layout, Timing
from flows.snapshot_harvest.rows import NOT_DELIVERED, CameraResult
from tasks.journal import GroupCommit
from tasks.reports import Progress
from tasks.s3_async import AsyncS3Writer
from tasks.storage import BucketRef
from tasks.viziosense import SnapshotLimits, SnapshotOutcome, harvest_viziosense_snapshots


# --- the run: sessions and limits shared by every batch ------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HarvestSettings:
    key_layout: str = DEFAULT_KEY_LAYOUT
    prefix: str = "snapshots"
    push_kind: ImageKind = "annotated"
    max_image_bytes: int = 204_800
    ready_after: float = 20.0
    poll_interval: float = 2.0
    image_timeout: float = 300.0
    concurrency: int = 16
    fit_workers: int = 2
    batch_size: int = 100
    max_cameras_in_flight: int = 2000
    s3_workers: int = 8

    @classmethod
    def of(cls, s3_layout: S3Layout, push: MinivizPush, timing: Timing, perf: Performance) -> HarvestSettings:
        """The settings of a run, from the flow's parameter groups."""
        return cls(
            key_layout=s3_layout.key_layout, prefix=s3_layout.prefix, push_kind=push.push_kind,
            max_image_bytes=push.max_image_bytes, ready_after=timing.ready_after_seconds,
            poll_interval=timing.poll_interval_seconds, image_timeout=timing.image_timeout_seconds,
            concurrency=perf.concurrency, fit_workers=perf.fit_workers or os.cpu_count() or 2,
            batch_size=perf.batch_size, max_cameras_in_flight=perf.max_cameras_in_flight,
            s3_workers=perf.s3_workers,
        )  # fmt: skip


class NotSent(Exception):
    """A Miniviz call not made because Miniviz refused this run's credentials for that kind of call earlier."""


class CredentialsGate:
    """Detects refused Miniviz credentials once per run and kind of call (image pushes, data events).

    The first call goes alone; the others wait for its answer. If Miniviz refuses it (401/403: a wrong
    token, or images on a Free project), every later call of that kind raises ``NotSent`` with the same
    reason instead of collecting one refusal per camera. Any other answer lets the rest through; a refusal
    later in the run (a token revoked meanwhile) closes the gate from then on.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.error: str | None = None  # Miniviz's answer to the refused call
        self.refused: str | None = None  # the reason given to the calls not sent
        self._first_taken = False
        self._first_answered = asyncio.Event()

    async def call(self, send: Callable[[], Awaitable[Any]]) -> Any:
        if not self._first_taken:
            self._first_taken = True
        else:
            await self._first_answered.wait()
        if self.refused is not None:
            raise NotSent(self.refused)
        try:
            return await send()
        except AuthError as exc:
            if self.error is None:
                self.error = error_text(exc)
                self.refused = (
                    f"not sent: Miniviz refused this run's {self.what} ({self.error}); check the Miniviz "
                    "block's token, project and plan"
                )
            raise
        finally:
            self._first_answered.set()


@dataclasses.dataclass(kw_only=True, eq=False)
class HarvestRun:
    """What every batch of one run shares: the accounts, the limits, the pacing state, the progress bar.

    ``viziosense``: the VizioSense block (its session does the calls); ``miniviz``: the Miniviz account's
    session client (None = no pushes); ``bucket``: where originals go (full keys, the S3Bucket's folder
    included); ``executor``: threads for boto3 (S3 calls the async writer ``s3`` hands back); ``s3``: the
    originals' uploads (``tasks.s3_async``); ``fit_pool``: worker processes that fit images for Miniviz
    (whoever made it starts and closes it); ``journal``: a shard's record of the cameras it stored (a re-run
    of the shard does not ask them again), None outside shards.
    """

    viziosense: VizioSenseCredentials
    miniviz: SessionClient | None
    bucket: BucketRef
    executor: ThreadPoolExecutor
    state: PacingState | None
    settings: HarvestSettings
    fit_pool: FitPool
    progress: Progress | None = None
    total: int = 0
    journal: GroupCommit | None = None
    finished: int = dataclasses.field(default=0, init=False)
    last_fit_quality: int | None = dataclasses.field(
        default=None, init=False
    )  # frames look alike: start there

    def __post_init__(self) -> None:
        self.s3 = AsyncS3Writer(
            self.bucket, connections=self.settings.s3_workers, run_in_thread=self.in_thread
        )
        self._last_progress = 0.0
        # VizioSense calls in flight; cameras holding image bytes (download -> store/fit -> push)
        holding = 2 * max(self.settings.concurrency, self.settings.fit_workers)
        self.limits = SnapshotLimits(self.settings.concurrency, holding)
        # images handed to the pool at once: one queued per worker, so a worker never idles between two
        self.fit = asyncio.Semaphore(2 * max(1, self.settings.fit_workers))
        self.image_gate = CredentialsGate("image pushes")
        self.data_gate = CredentialsGate("data events")

    async def camera_finished(self) -> None:
        """Count a finished camera; update the progress artifact at most once a second (never raises)."""
        self.finished += 1
        now = time.monotonic()
        if self.progress is not None and (self.finished == self.total or now - self._last_progress >= 1.0):
            self._last_progress = now
            with contextlib.suppress(Exception):  # a missed progress update is not worth a camera
                await self.progress.update(
                    5 + 85 * self.finished / max(1, self.total),
                    f"{self.finished} of {self.total} cameras harvested",
                )

    async def in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking I/O (boto3) on the run's S3 threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(fn, *args, **kwargs)
        )


@contextlib.asynccontextmanager
async def open_run(
    *,
    viziosense: VizioSenseCredentials,
    miniviz: MinivizCredentials | None,
    bucket: BucketRef,
    state: PacingState | None,
    settings: HarvestSettings,
    progress: Progress,
    cameras: list[CameraResult],
    journal: GroupCommit | None = None,
) -> AsyncIterator[HarvestRun]:
    """The run's shared parts for the harvest of ``cameras`` (rows of every camera listed), closed at the end.

    The Miniviz session's pacers are seeded from the pacing state; fit workers start (only when there are
    images to push) while the first cameras are asked for snapshots; the pacing state is flushed as the run
    goes and at its end. Problems closing them are logged, not raised.
    """
    logger = get_run_logger()
    client = miniviz.session() if miniviz is not None else None
    if client is not None and state is not None:
        state.seed(client, (r.label_key for r in cameras if r.label_key))
    total = sum(r.outcome == "pending" for r in cameras)
    run = HarvestRun(viziosense=viziosense, miniviz=client, bucket=bucket, state=state, settings=settings,
                     executor=ThreadPoolExecutor(settings.s3_workers, thread_name_prefix="harvest-s3"),
                     fit_pool=FitPool(settings.fit_workers), progress=progress, total=total,
                     journal=journal)  # fmt: skip
    try:
        if client is not None and total:
            await run.fit_pool.start()  # workers import Pillow (~0.2 s) while the cameras are asked
        async with state.autoflush() if state is not None else contextlib.nullcontext():
            yield run
    finally:
        if journal is not None:
            await journal.aclose()
        if state is not None and state.save_problem:
            logger.warning("%s", state.save_problem)
        await run.s3.aclose()
        if run.s3.fast_path_problem:
            logger.warning("%s", run.s3.fast_path_problem)
        run.executor.shutdown(wait=False)
        await run.fit_pool.close()
        if run.fit_pool.problem:
            logger.warning("%s", run.fit_pool.problem)
        if run.fit_pool.workers_cpu_seconds():
            logger.info("fit workers: %.1f CPU s, peak memory %.0f MB in all",
                        run.fit_pool.workers_cpu_seconds(), run.fit_pool.workers_peak_rss_mb())  # fmt: skip


def _seconds(start: float) -> float:
    return round(time.monotonic() - start, 3)


# --- the cameras, in batches; each camera once its images are in --------------------------------------
async def harvest_cameras(run: HarvestRun, cameras: list[CameraResult]) -> None:
    """Harvest ``cameras`` (rows ``pending``) in batches of ``batch_size``, one task run each, overlapping up to
    ``max_cameras_in_flight`` cameras (snapshot links expire 30 min after the request). Fills the rows."""
    size = run.settings.batch_size
    waves = asyncio.Semaphore(max(1, run.settings.max_cameras_in_flight // size))

    async def batch(chunk: list[CameraResult]) -> None:
        async with waves:
            try:
                await harvest_batch(run, chunk)
            except Exception as exc:  # not expected (cameras never raise): keep the report whole
                get_run_logger().error("a batch of %d cameras failed: %s", len(chunk), error_text(exc))
                for cam in chunk:
                    cam.originals, cam.reason = "failed", f"batch task failed: {error_text(exc)}"

    await asyncio.gather(*(batch(cameras[i : i + size]) for i in range(0, len(cameras), size)))


async def harvest_batch(run: HarvestRun, cameras: list[CameraResult]) -> None:
    """Harvest a batch of cameras (rows ``pending``) in one run of ``harvest_viziosense_snapshots``; each
    camera is stored and pushed by ``deliver`` as soon as its images are in. Fills the rows; never raises for
    one camera."""
    started = time.monotonic()
    if run.miniviz is not None:
        for cam in cameras:
            cam.image_push = "pending"
    s = run.settings
    # quote(): Prefect would otherwise walk (and copy) the block, the uuids and the limits on every batch
    await harvest_viziosense_snapshots(
        quote(run.viziosense), quote([cam.device_uuid for cam in cameras]), ready_after=s.ready_after,
        poll_interval=s.poll_interval, timeout=s.image_timeout, limits=quote(run.limits),
        on_snapshot=functools.partial(deliver, run, cameras, started),
    )  # fmt: skip
    _log_batch(run, cameras)


async def deliver(run: HarvestRun, cameras: list[CameraResult], started: float, got: SnapshotOutcome) -> None:
    """Store the camera's originals in S3 and fit and push a copy to Miniviz. Never raises: problems go in
    the row."""
    cam = cameras[got.index]
    try:
        cam.requested_at, cam.seconds_request, cam.seconds_download = (
            got.requested_at, got.seconds_request, got.seconds_download,
        )  # fmt: skip
        if got.error:
            cam.add_reason(got.error)
        snapshots = {s.kind: s for s in (got.raw, got.annotated) if s is not None}
        cam.bytes_raw = len(got.raw.content) if got.raw else None
        cam.bytes_annotated = len(got.annotated.content) if got.annotated else None
        if snapshots:
            first = min(s.fetched_at for s in snapshots.values())
            cam.seconds_until_ready = round((first - got.requested_at).total_seconds(), 3)
            cam.polls = got.polls
            await asyncio.gather(_store(run, cam, snapshots), _fit_and_push(run, cam, snapshots))
        _settle_originals(cam)
    except Exception as exc:  # a bug in one camera's path must not take the batch down
        cam.originals = "failed"
        cam.add_reason(f"unexpected error: {error_text(exc)}")
    else:
        await _journal(run, cam)
    finally:
        cam.seconds_total = _seconds(started)
        await run.camera_finished()


async def _journal(run: HarvestRun, cam: CameraResult) -> None:
    """A shard records each camera stored, still holding its slot: a kill loses at most the cameras in
    delivery. A record not written only means a re-run of the shard asks that camera again."""
    if run.journal is None or cam.originals != "stored":
        return
    try:
        await run.journal.append(cam.model_dump(mode="json"))
    except Exception as exc:
        get_run_logger().warning("journal of camera %s not written: %s", cam.device_uuid, error_text(exc))


def _log_batch(run: HarvestRun, cameras: list[CameraResult]) -> None:
    logger = get_run_logger()
    for cam in cameras:
        if cam.image_push == "pending":
            cam.image_push, cam.image_push_reason = "skipped", "no image was harvested"
        refused = cam.image_push_reason is not None and cam.image_push_reason == run.image_gate.refused
        if cam.originals == "failed" or (cam.image_push in NOT_DELIVERED and not refused):  # refusal: once
            problem = "; ".join(filter(None, [cam.reason, cam.image_push_reason]))
            logger.warning("camera %s (%s): %s", cam.device_uuid, cam.device_name, problem)
    if run.image_gate.refused:
        logger.error(
            "Miniviz refused this run's image pushes (%s): the others are not sent", run.image_gate.error
        )
    stored = sum(1 for c in cameras if c.originals == "stored")
    pushed = Counter(c.image_push for c in cameras)
    logger.info("batch of %d cameras: originals stored for %d; Miniviz images %s", len(cameras), stored,
                ", ".join(f"{n} {s}" for s, n in sorted(pushed.items())))  # fmt: skip


async def _store(run: HarvestRun, cam: CameraResult, snapshots: dict[str, Snapshot]) -> None:
    t0 = time.monotonic()
    cam.s3_bucket = run.bucket.bucket

    async def one(kind: str, snap: Snapshot) -> None:
        key = snapshot_key(
            run.settings.key_layout,
            prefix=run.settings.prefix,
            device_uuid=cam.device_uuid,
            label_key=cam.label_key or "",
            requested_at=cam.requested_at,
            kind=kind,
        )
        try:
            full_key = await run.s3.put(
                key, snap.content, metadata=snapshot_metadata(cam, kind), content_type="image/jpeg"
            )
        except Exception as exc:
            cam.add_reason(f"store {kind} in S3: {error_text(exc)}")
            return
        setattr(cam, f"s3_{kind}_key", full_key)

    await asyncio.gather(*(one(kind, snap) for kind, snap in snapshots.items()))
    cam.seconds_store = _seconds(t0)


async def _fit_and_push(run: HarvestRun, cam: CameraResult, snapshots: dict[str, Snapshot]) -> None:
    client = run.miniviz
    if client is None:
        return
    label = cam.label_key or ""
    kind = run.settings.push_kind
    snap = snapshots.get(kind) or next(iter(snapshots.values()))
    if client.plan != "pro":
        cam.image_push, cam.image_push_reason = "skipped", f"the Miniviz {client.plan} plan has no image API"
        return
    if run.image_gate.refused is not None:  # decided before fitting, as the deferral below
        cam.image_push, cam.image_push_reason = "failed", run.image_gate.refused
        return
    wait = client.image_wait_time(label)
    if wait > 0:  # decided before fitting: no CPU spent on an image that may not go out
        cam.image_push, cam.image_push_reason = "deferred", _image_deferral(run, label, wait)
        return
    t0 = time.monotonic()
    async with run.fit:
        queued = time.monotonic() - t0
        try:
            result = await run.fit_pool.fit(
                snap.content, run.settings.max_image_bytes, quality_hint=run.last_fit_quality
            )
        except Exception as exc:  # not the image's fault (a worker died twice on it, a Pillow bug): report
            cam.image_push, cam.image_push_reason = (
                "failed",
                f"fitting the {snap.kind} image: {error_text(exc)}",
            )
            return
    # seconds_fit: the fit itself, in its worker; seconds_fit_wait: the wait for a worker before it
    cam.seconds_fit, cam.seconds_fit_wait = result.seconds, round(queued + result.waited, 3)
    fitted = result.fitted
    if fitted is None:
        cam.image_push, cam.image_push_reason = (
            "rejected",
            f"cannot fit the {snap.kind} image: {result.error}",
        )
        return
    if fitted.quality is not None:
        run.last_fit_quality = fitted.quality
    cam.bytes_before_fit, cam.bytes_after_fit = fitted.bytes_before, fitted.bytes_after
    cam.fit_format, cam.fit_quality = fitted.format, fitted.quality
    cam.fit_width, cam.fit_height = fitted.width, fitted.height
    ext = "png" if fitted.format == "PNG" else "jpg"
    image_name = f"{cam.device_uuid}_{utc_stamp(cam.requested_at)}_{snap.kind}.{ext}"[-255:]
    timestamp_ms = int(cam.requested_at.timestamp() * 1000)
    await _push_image(run, cam, label, fitted.data, image_name, timestamp_ms)


async def _push_image(
    run: HarvestRun, cam: CameraResult, label: str, data: bytes, image_name: str, timestamp_ms: int
) -> None:
    client, state = run.miniviz, run.state
    assert client is not None
    wait = client.image_wait_time(label)
    if wait > 0:
        cam.image_push, cam.image_push_reason = "deferred", _image_deferral(run, label, wait)
        return
    previous = state.last(label, "image") if state else None
    if state:
        state.mark(label, "image", time.time())  # before sending: a crash right after still counts it
    t0 = time.monotonic()
    try:
        ack = await run.image_gate.call(
            lambda: client.send_image(label, data, image_name, timestamp_ms, retry_on_429=False)
        )
    except NotSent as exc:
        if state:
            state.mark(label, "image", previous)
        cam.image_push, cam.image_push_reason = "failed", str(exc)
        return
    except RateLimitedError as exc:  # someone else pushed for this label: defer, never retry
        cam.image_push = "deferred"
        cam.image_push_reason = (
            f"Miniviz answered 429 for label {label} (an image was sent for it elsewhere within "
            f"{client.image_pacers.interval:g} s); next run tries again: {error_text(exc)}"
        )
        client.image_pacers(label).push_back(client.image_pacers.interval)
        if state:
            state.mark(label, "image", time.time())
        return
    except Exception as exc:
        sent = isinstance(exc, OutcomeUnknownError) or (
            isinstance(exc, ApiError) and (exc.status is None or exc.status >= 500)
        )
        if state and not sent:  # refused before reaching the limiter: the slot was not used
            state.mark(label, "image", previous)
        cam.image_push = "rejected" if isinstance(exc, InputError) else "failed"
        cam.image_push_reason = error_text(exc)
        return
    finally:
        cam.seconds_push = _seconds(t0)
    if state:
        state.mark(label, "image", time.time())
    cam.image_push, cam.miniviz_image_id = "sent", ack.id


def _image_deferral(run: HarvestRun, label: str, wait: float) -> str:
    assert run.miniviz is not None
    interval = run.miniviz.image_pacers.interval
    last = run.state.last(label, "image") if run.state else None
    ago = f"{time.time() - last:.0f} s ago" if last is not None else "recently"
    return (
        f"harvested too soon: label {label} got an image {ago}; Miniviz accepts one image per label every "
        f"{interval:g} s, next allowed in {math.ceil(wait)} s"
    )


def _settle_originals(cam: CameraResult) -> None:
    """``stored`` when both originals are in S3, else ``failed`` (the reason says which step failed)."""
    cam.originals = "stored" if cam.s3_raw_key and cam.s3_annotated_key else "failed"


# --- data events -------------------------------------------------------------------------------------
async def send_data_events(run: HarvestRun, cameras: list[CameraResult], budget_seconds: float) -> None:
    """``send_camera_data_events`` on every row; if it fails as a whole (not expected: the harvest itself is
    done), the events not sent are reported failed with its error."""
    try:
        cameras[:] = await send_camera_data_events(run, quote(cameras), budget_seconds)
    except Exception as exc:
        get_run_logger().error("Miniviz data events failed: %s", error_text(exc))
        for cam in cameras:
            if cam.data_event in ("off", "pending"):
                cam.data_event, cam.data_event_reason = "failed", error_text(exc)


@task(name="send-camera-data-events", cache_policy=NO_CACHE)
async def send_camera_data_events(
    run: HarvestRun, cameras: list[CameraResult], budget_seconds: float
) -> list[CameraResult]:
    """One Miniviz data event per camera (``online``, ``bytes``, ``seconds_until_ready``, ...), as pacing allows.

    Miniviz takes one data event per *project* every 15 s (Pro) / 60 s (Free), so a fleet cannot get one
    event per camera per run. Events go out stalest label first (labels that never got one, then the oldest,
    from the pacing state), paced by the run's client, while the next slot opens within ``budget_seconds``
    of the start of this stage; the rest are ``deferred`` with the reason and go first next run. With the
    limit off (interval 0) they are all sent, concurrently. A 429 (someone else sent) stops the stage: the
    rest are deferred, never retried. If Miniviz refuses the first event's credentials (401/403), the rest
    fail with the same reason without being sent (``CredentialsGate``). Rejected rows (not devices) get no
    event.

    Example:
        ```python
        rows = await send_camera_data_events(run, rows, budget_seconds=60)
        ```
    """
    client, state = run.miniviz, run.state
    assert client is not None
    logger = get_run_logger()
    targets = [c for c in cameras if c.outcome != "rejected" and c.label_key]
    for cam in cameras:
        if cam.outcome == "rejected":
            cam.data_event = "skipped"
    order = sorted(
        targets, key=lambda c: ((state.last(c.label_key, "data") if state else None) or -math.inf, c.index)
    )
    pacer = client.data_pacer
    limit = asyncio.Semaphore(max(1, run.settings.concurrency))
    deadline = time.monotonic() + max(0.0, budget_seconds)
    stop: str | None = None

    async def send(cam: CameraResult) -> None:
        nonlocal stop
        label = cam.label_key or ""
        previous = state.last(label, "data") if state else None
        if state:
            state.mark(label, "data", time.time())
        try:
            ack = await run.data_gate.call(
                lambda: client.send_data(label, data_payload(cam), _event_ms(cam), retry_on_429=False)
            )
        except NotSent as exc:
            if state:
                state.mark(label, "data", previous)
            cam.data_event, cam.data_event_reason = "failed", str(exc)
            return
        except RateLimitedError as exc:
            stop = (
                f"Miniviz answered 429 (a data event was sent for this project elsewhere): {error_text(exc)}"
            )
            cam.data_event, cam.data_event_reason = "deferred", stop
            pacer.push_back(pacer.interval)
            if state:
                state.mark(label, "data", previous)
            return
        except Exception as exc:
            sent = isinstance(exc, OutcomeUnknownError) or (
                isinstance(exc, ApiError) and (exc.status is None or exc.status >= 500)
            )
            if state and not sent:
                state.mark(label, "data", previous)
            cam.data_event = "rejected" if isinstance(exc, InputError) else "failed"
            cam.data_event_reason = error_text(exc)
            return
        if state:
            state.mark(label, "data", time.time())
        cam.data_event, cam.miniviz_data_id = "sent", ack.id

    if pacer.interval == 0 and pacer.wait_time() == 0:

        async def bounded(cam: CameraResult) -> None:
            async with limit:
                await send(cam)

        await asyncio.gather(*(bounded(c) for c in order))
    else:
        for cam in order:
            if run.data_gate.refused is not None:  # a wrong token: failed, not waiting for a slot
                cam.data_event, cam.data_event_reason = "failed", run.data_gate.refused
                continue
            if stop is None and time.monotonic() + pacer.wait_time() > deadline:
                stop = (
                    f"Miniviz allows one data event per project every {pacer.interval:g} s ({client.plan} plan); "
                    f"this run's data budget of {budget_seconds:g} s was used: stalest cameras go first next run"
                )
            if stop is not None:
                cam.data_event, cam.data_event_reason = "deferred", stop
                continue
            await send(cam)
    counts = Counter(c.data_event for c in targets)
    logger.info("Miniviz data events: %d sent, %d deferred, %d failed of %d cameras", counts["sent"],
                counts["deferred"], counts["failed"] + counts["rejected"], len(targets))  # fmt: skip
    return cameras


def data_payload(cam: CameraResult) -> dict[str, int | float]:
    """The camera's data event: numbers only, at most 8 keys (Miniviz rules).

    ``online`` 1/0 (as listed), ``ok`` 1 if an original was stored, ``bytes`` of the raw original,
    ``bytes_fitted`` of the image pushed, ``seconds_until_ready`` from the request to the image being served.
    """
    payload: dict[str, int | float] = {
        "online": 1 if cam.online else 0,
        "ok": 1 if cam.s3_raw_key or cam.s3_annotated_key else 0,
        "bytes": cam.bytes_raw or 0,
    }
    if cam.bytes_after_fit is not None:
        payload["bytes_fitted"] = cam.bytes_after_fit
    if cam.seconds_until_ready is not None:
        payload["seconds_until_ready"] = round(cam.seconds_until_ready, 3)
    return payload


def _event_ms(cam: CameraResult) -> int:
    moment = cam.requested_at.timestamp() if cam.requested_at else time.time()
    return int(moment * 1000)
