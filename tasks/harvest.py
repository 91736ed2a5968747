"""Batch tasks of the snapshot harvest (VizioSense -> S3 + Miniviz); see flows/snapshot_harvest.py.

One camera goes through: request a snapshot -> wait until it is served -> download raw and annotated -> store
both originals in S3 -> fit a copy into Miniviz's image limit -> push it -> (later) one data event. A batch of
cameras is one task run; inside it cameras run concurrently, bounded by semaphores shared by the whole run
(HTTP calls to VizioSense, cameras holding image bytes, images handed to the fit worker processes), so memory
stays bounded whatever the fleet size and fitting (CPU, in ``tasks.fit_pool`` processes) overlaps with the
downloads and uploads.

Miniviz pacing (one image per 60 s per label_key; data one per 15 s per project on Pro) is kept by ONE
``MinivizClient`` for the whole run (its pacers are per instance) and, across runs, by ``PacingState``
(``tasks.harvest_pacing``). Its times seed the client's pacers at the start of a run, so
``client.image_wait_time(label)`` already knows about the previous run; a camera whose label must still wait
is *deferred* (reported with the reason), never sent to collect a 429. The client is also told not to retry
429s: if another process pushed in between, the one 429 becomes a deferral too, never a retry loop.

The plain helpers (unit-tested without Prefect) live next door and are re-exported here: label keys
(``tasks.harvest_labels``), S3 keys and metadata (``tasks.harvest_keys``), report rows and camera selection
(``tasks.harvest_rows``), the pacing state (``tasks.harvest_pacing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from clients.errors import ApiError, AuthError, InputError, OutcomeUnknownError, RateLimitedError
from clients.miniviz import MinivizClient
from clients.viziosense import ImageKind, ImageRequest, Snapshot, VizioSenseClient
from tasks.fit_pool import FitPool
from tasks.harvest_keys import (
    DEFAULT_KEY_LAYOUT,
    LAYOUT_FIELDS,
    METADATA_LIMITS,
    check_key_layout,
    decode_metadata_value,
    metadata_value,
    snapshot_key,
    snapshot_metadata,
    utc_stamp,
)
from tasks.harvest_labels import (
    LABEL_HASH_CHARS,
    LabelSource,
    assign_label_keys,
    check_label_prefix,
    label_key_for,
    slugify,
    uuid_hash,
)
from tasks.harvest_pacing import PacingState
from tasks.harvest_rows import (
    NOT_DELIVERED,
    REPORT_COLUMNS,
    CameraResult,
    PatternSyntax,
    error_text,
    name_matcher,
    select_cameras,
    settle_outcome,
    step_error,
)
from tasks.reports import Progress
from tasks.storage import BucketRef, put_bytes

__all__ = [  # this module's own names, then the helpers it re-exports
    "CredentialsGate",
    "HarvestRun",
    "HarvestSettings",
    "NotSent",
    "data_payload",
    "harvest_camera_batch",
    "harvest_one",
    "send_camera_data_events",
    "DEFAULT_KEY_LAYOUT",
    "LABEL_HASH_CHARS",
    "LAYOUT_FIELDS",
    "METADATA_LIMITS",
    "REPORT_COLUMNS",
    "CameraResult",
    "LabelSource",
    "PacingState",
    "PatternSyntax",
    "assign_label_keys",
    "check_key_layout",
    "check_label_prefix",
    "decode_metadata_value",
    "error_text",
    "label_key_for",
    "metadata_value",
    "name_matcher",
    "select_cameras",
    "settle_outcome",
    "slugify",
    "snapshot_key",
    "snapshot_metadata",
    "step_error",
    "utc_stamp",
    "uuid_hash",
]


# --- the run: clients and limits shared by every batch -------------------------------------------------
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


class HarvestRun:
    """What every batch of one run shares: the clients, the limits, the pacing state, the progress bar.

    ``vizio``: one VizioSense client; ``miniviz``: ONE Miniviz client for the whole run (None = no pushes);
    ``bucket``: where originals go (full keys, the S3Bucket's folder included); ``executor``: threads for S3;
    ``fit_pool``: worker processes that fit images for Miniviz (one per run: ``FitPool(settings.fit_workers)``
    made here when not given; whoever made it closes it).
    """

    def __init__(
        self,
        *,
        vizio: VizioSenseClient,
        miniviz: MinivizClient | None,
        bucket: BucketRef,
        executor: ThreadPoolExecutor,
        state: PacingState | None,
        settings: HarvestSettings,
        progress: Progress | None = None,
        total: int = 0,
        fit_pool: FitPool | None = None,
    ) -> None:
        self.vizio = vizio
        self.miniviz = miniviz
        self.bucket = bucket
        self.executor = executor
        self.state = state
        self.settings = settings
        self.progress = progress
        self.total = total
        self.finished = 0
        self._last_progress = 0.0
        self.http = asyncio.Semaphore(max(1, settings.concurrency))  # VizioSense requests in flight
        # cameras holding image bytes (download -> store/fit -> push): bounds memory, gives backpressure
        self.holding = asyncio.Semaphore(max(2, 2 * max(settings.concurrency, settings.fit_workers)))
        self.fit_pool = fit_pool or FitPool(settings.fit_workers)
        # images handed to the pool at once: one queued per worker, so a worker never idles between two
        self.fit = asyncio.Semaphore(2 * max(1, settings.fit_workers))
        self.last_fit_quality: int | None = None  # where the next quality search starts (frames look alike)
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


def _seconds(start: float) -> float:
    return round(time.monotonic() - start, 3)


# --- one camera ----------------------------------------------------------------------------------------
async def harvest_one(run: HarvestRun, cam: CameraResult) -> CameraResult:
    """Request, wait, download, store, fit and push one camera. Never raises: problems go in the row."""
    started = time.monotonic()
    try:
        request = await _request(run, cam)
        if request is None:
            return cam
        wait = request.ready_at.timestamp() - run.vizio.clock.time()
        if wait > 0:  # the documented floor (20 s): sleep without holding any slot
            await run.vizio.clock.sleep(wait)
        async with run.holding:
            snapshots = await _download(run, cam, request)
            if snapshots:
                await asyncio.gather(_store(run, cam, snapshots), _fit_and_push(run, cam, snapshots))
            _settle_originals(cam)
    except Exception as exc:  # a bug in one camera's path must not take the batch down
        cam.originals = "failed"
        cam.add_reason(f"unexpected error: {error_text(exc)}")
    finally:
        cam.seconds_total = _seconds(started)
        await run.camera_finished()
    return cam


async def _request(run: HarvestRun, cam: CameraResult) -> ImageRequest | None:
    t0 = time.monotonic()
    async with run.http:
        try:
            request = await run.vizio.request_image(cam.device_uuid, ready_after=run.settings.ready_after)
        except Exception as exc:
            cam.originals = "failed"
            cam.add_reason(step_error("request_image", exc))
            return None
        finally:
            cam.seconds_request = _seconds(t0)
    cam.requested_at = request.requested_at
    return request


async def _download(run: HarvestRun, cam: CameraResult, request: ImageRequest) -> dict[str, Snapshot]:
    t0 = time.monotonic()

    async def one(kind: ImageKind) -> Snapshot | None:
        async with run.http:
            try:
                return await run.vizio.fetch_image(
                    request,
                    kind,
                    poll_interval=run.settings.poll_interval,
                    timeout=run.settings.image_timeout,
                )
            except Exception as exc:
                cam.add_reason(step_error(f"fetch_image({kind})", exc))
                return None

    raw, annotated = await asyncio.gather(one("raw"), one("annotated"))
    cam.seconds_download = _seconds(t0)
    got = {k: s for k, s in (("raw", raw), ("annotated", annotated)) if s is not None}
    cam.bytes_raw = len(raw.content) if raw else None
    cam.bytes_annotated = len(annotated.content) if annotated else None
    if got:
        first = min(s.fetched_at for s in got.values())
        cam.seconds_until_ready = round((first - request.requested_at).total_seconds(), 3)
        cam.polls = sum(s.polls for s in got.values())
    return got


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
            full_key = await run.in_thread(
                put_bytes, run.bucket, key, snap.content,
                metadata=snapshot_metadata(cam, kind), content_type="image/jpeg",
            )  # fmt: skip
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
        ack = await run.image_gate.call(lambda: client.send_image(label, data, image_name, timestamp_ms))
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


# --- batch tasks ---------------------------------------------------------------------------------------
@task(name="harvest-camera-batch", cache_policy=NO_CACHE)
async def harvest_camera_batch(run: HarvestRun, cameras: list[CameraResult]) -> list[CameraResult]:
    """Harvest a batch of cameras (rows with outcome ``pending``) in one task run; returns the same rows, filled.

    Each camera: request a snapshot, sleep until its documented ready time, download raw and annotated
    (polling with backoff if not served yet, up to the image timeout), store both originals in S3 with their
    metadata, and, unless its label must still wait (deferred), fit a copy into Miniviz's limit and push it.
    Never raises for one camera.

    Example:
        ```python
        rows = await harvest_camera_batch(run, [row for row in rows if row.outcome == "pending"][:100])
        ```
    """
    logger = get_run_logger()
    if run.miniviz is not None:
        for cam in cameras:
            cam.image_push = "pending"
    done = await asyncio.gather(*(harvest_one(run, cam) for cam in cameras))
    for cam in done:
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
    stored = sum(1 for c in done if c.originals == "stored")
    pushed = Counter(c.image_push for c in done)
    logger.info("batch of %d cameras: originals stored for %d; Miniviz images %s", len(done), stored,
                ", ".join(f"{n} {s}" for s, n in sorted(pushed.items())))  # fmt: skip
    return list(done)


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
            ack = await run.data_gate.call(lambda: client.send_data(label, data_payload(cam), _event_ms(cam)))
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
