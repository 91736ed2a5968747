"""Prefect tasks for VizioSense: one per API call, plus the batch task that takes snapshots from many cameras
(``harvest_viziosense_snapshots``, what the snapshot harvest flow runs per batch of cameras).

Each task accepts a ``VizioSenseCredentials`` block or the name of a saved one. With email + password
credentials the task runs of one process share one login; an API key needs no login and is the better
choice for flows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.viziosense import VizioSenseCredentials
from clients.errors import ApiError, InputError
from clients.redaction import error_text
from clients.viziosense import (
    DEFAULT_IMAGE_TIMEOUT_S,
    DEFAULT_POLL_INTERVAL_S,
    IMAGE_READY_AFTER_S,
    Device,
    ImageKind,
    ImageRequest,
    Snapshot,
    VizioSenseClient,
    Webhook,
    check_image_wait,
)

_call = VizioSenseCredentials.session_call  # a client method, run with the account's session client


@task(name="viziosense-list-devices")
async def list_viziosense_devices(
    credentials: VizioSenseCredentials | str,
    sort: str | None = None,
    group: str | None = None,
    is_online: Literal["Online", "Offline"] | bool | None = None,
    per_page: int = 100,
) -> list[Device]:
    """Every device the account may see (all pages), optionally filtered by group and online status.

    Example:
        ```python
        cameras = await list_viziosense_devices("my-viziosense", group="parking", is_online="Online")
        ```
    """
    return await _call(
        credentials,
        VizioSenseClient.list_all_devices,
        per_page=per_page,
        sort=sort,
        group=group,
        is_online=is_online,
    )


@task(name="viziosense-get-device")
async def get_viziosense_device(credentials: VizioSenseCredentials | str, device_uuid: str) -> Device:
    """One device by uuid."""
    return await _call(credentials, VizioSenseClient.get_device, device_uuid)


@task(name="viziosense-update-device")
async def update_viziosense_device(
    credentials: VizioSenseCredentials | str, device_uuid: str, fields: Mapping[str, str]
) -> Device:
    """Change a device's ``name``, ``geo_city``, ``geo_country`` and/or ``client_identifier``.

    Example:
        ```python
        device = await update_viziosense_device("my-viziosense", uuid, {"name": "Gate 2", "geo_city": "Lyon"})
        ```
    """
    return await _call(credentials, VizioSenseClient.update_device, device_uuid, fields)


@task(name="viziosense-refresh-device")
async def refresh_viziosense_device(credentials: VizioSenseCredentials | str, device_uuid: str) -> Device:
    """Have VizioSense re-check a device's status; returns the device with its new ``refreshed`` time."""
    return await _call(credentials, VizioSenseClient.refresh_device, device_uuid)


@task(name="viziosense-request-image")
async def request_viziosense_image(
    credentials: VizioSenseCredentials | str, device_uuid: str, ready_after: float = IMAGE_READY_AFTER_S
) -> ImageRequest:
    """Ask a camera for a snapshot; returns its raw and annotated links and when they can be fetched.

    Example:
        ```python
        request = await request_viziosense_image("my-viziosense", uuid)
        snapshot = await fetch_viziosense_image("my-viziosense", request, "annotated")
        ```
    """
    return await _call(credentials, VizioSenseClient.request_image, device_uuid, ready_after=ready_after)


@task(name="viziosense-fetch-image")
async def fetch_viziosense_image(
    credentials: VizioSenseCredentials | str,
    image: ImageRequest,
    kind: ImageKind = "raw",
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    timeout: float = DEFAULT_IMAGE_TIMEOUT_S,
) -> Snapshot:
    """Download the raw or annotated image of a request, waiting until it is served (JPEG checked).

    Example:
        ```python
        snapshot = await fetch_viziosense_image("my-viziosense", request, "raw")
        print(snapshot.width, snapshot.height, len(snapshot.content))
        ```
    """
    return await _call(
        credentials, VizioSenseClient.fetch_image, image, kind, poll_interval=poll_interval, timeout=timeout
    )


@task(name="viziosense-list-webhooks")
async def list_viziosense_webhooks(
    credentials: VizioSenseCredentials | str, device_uuid: str
) -> list[Webhook]:
    """The webhooks of a device."""
    return await _call(credentials, VizioSenseClient.list_webhooks, device_uuid)


@task(name="viziosense-add-webhook")
async def add_viziosense_webhook(
    credentials: VizioSenseCredentials | str,
    device_uuid: str,
    url: str,
    webhook_type: Literal["payload", "keepalive"],
    status: int = 1,
    actions: str | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Webhook:
    """Add a webhook to a device (``status`` 1 active, 0 inactive; headers/params sent with each delivery).

    Example:
        ```python
        hook = await add_viziosense_webhook(
            "my-viziosense", uuid, "https://hooks.example.com/vizio", "payload",
            headers={"Authorization": "Token ..."},
        )
        ```
    """
    return await _call(
        credentials,
        VizioSenseClient.add_webhook,
        device_uuid,
        url,
        webhook_type,
        status=status,
        actions=actions,
        headers=headers,
        params=params,
    )


@task(name="viziosense-update-webhook")
async def update_viziosense_webhook(
    credentials: VizioSenseCredentials | str,
    device_uuid: str,
    webhook_id: int,
    url: str | None = None,
    webhook_type: Literal["payload", "keepalive"] | None = None,
    status: int | None = None,
    actions: str | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Webhook:
    """Change the given fields of a webhook (``None`` = unchanged; ``status=0`` deactivates it)."""
    return await _call(
        credentials,
        VizioSenseClient.update_webhook,
        device_uuid,
        webhook_id,
        url=url,
        webhook_type=webhook_type,
        status=status,
        actions=actions,
        headers=headers,
        params=params,
    )


# --- batch: snapshots from many cameras in one task run ------------------------------------------------
class SnapshotOutcome(BaseModel):
    """What became of one camera of a harvest.

    ``done``: every requested image downloaded (``raw``/``annotated`` hold the bytes and their timings).
    ``rejected``: bad input, nothing sent. ``failed``: the request or a download failed (``error``,
    ``error_status`` e.g. 409 for an offline device, ``retryable``); images already downloaded are kept.
    """

    index: int
    device_uuid: str
    status: Literal["done", "rejected", "failed"]
    raw: Snapshot | None = None
    annotated: Snapshot | None = None
    requested_at: datetime | None = None
    ready_at: datetime | None = None
    seconds: float | None = None  # from sending the request to the last image's arrival
    seconds_request: float | None = None  # the image request call itself
    seconds_download: float | None = None  # the downloads, from the ready time (polls included)
    polls: int = 0  # image fetches made (one per image when it was served at the first try)
    error: str | None = None
    error_status: int | None = None
    retryable: bool = False


class SnapshotLimits:
    """Bounds shared by every batch of one run, from the run's event loop: ``calls`` VizioSense requests and
    downloads in flight, ``holding`` cameras holding image bytes (from download to the end of ``on_snapshot``,
    so memory stays bounded and a slow consumer slows the downloads down)."""

    def __init__(self, concurrency: int = 16, holding: int | None = None) -> None:
        self.calls = asyncio.Semaphore(max(1, concurrency))
        self.holding = asyncio.Semaphore(max(1, holding or 2 * concurrency))


def _fail(outcome: SnapshotOutcome, exc: Exception, what: str) -> None:
    """Record a failure (both images may fail: messages are joined); ``what`` names the step unless the
    client's error already does."""
    text = error_text(exc)
    text = text if isinstance(exc, ApiError) else f"{what}: {text}"
    outcome.status = "rejected" if isinstance(exc, InputError) else "failed"
    outcome.error = "; ".join(filter(None, [outcome.error, text]))
    outcome.error_status = outcome.error_status or getattr(exc, "status", None)
    outcome.retryable = outcome.retryable or bool(getattr(exc, "retryable", False))


@task(name="viziosense-harvest-snapshots", cache_policy=NO_CACHE)
async def harvest_viziosense_snapshots(
    credentials: VizioSenseCredentials | str,
    device_uuids: list[str],
    concurrency: int = 16,
    kinds: list[ImageKind] | None = None,
    ready_after: float = IMAGE_READY_AFTER_S,
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    timeout: float = DEFAULT_IMAGE_TIMEOUT_S,
    on_snapshot: Callable[[SnapshotOutcome], Awaitable[None]] | None = None,
    limits: SnapshotLimits | None = None,
) -> list[SnapshotOutcome]:
    """Take a snapshot on many cameras and download the images, in one task run, on the account's session.

    Each camera, concurrently: request an image (``concurrency`` calls in flight), sleep until its documented
    ready time (``ready_after``, 20 s), download ``kinds`` (default raw and annotated), polling a link not
    served yet (``poll_interval``, up to ``timeout`` past the ready time).

    Returns one outcome per input uuid, in input order; never raises for a single camera. Without
    ``on_snapshot`` the images stay in the outcomes (~0.3 MB each at 1280x720): split large fleets into
    batches of a few hundred cameras. With it, each camera asked is handed to ``await on_snapshot(outcome)``
    as soon as it is finished with VizioSense (its images, or the error), and its images are dropped from the
    outcome afterwards: a pipeline stores or pushes each camera while the others download, with at most
    ``2 * concurrency`` cameras holding images. ``limits`` (``SnapshotLimits``) replaces ``concurrency`` to
    share the bounds between batches run at once. An exception in ``on_snapshot`` fails that camera only.

    Example:
        ```python
        outcomes = await harvest_viziosense_snapshots("my-viziosense", [d.uuid for d in cameras])
        done = [o for o in outcomes if o.status == "done"]
        ```
    """
    kinds = list(kinds or ["raw", "annotated"])
    if not set(kinds) <= {"raw", "annotated"}:
        raise InputError("kinds", f"{kinds} not allowed", "raw and/or annotated")
    check_image_wait(ready_after, poll_interval, timeout)
    creds = await VizioSenseCredentials.resolve(credentials)
    limits = limits or SnapshotLimits(concurrency)
    outcomes = [
        SnapshotOutcome(index=i, device_uuid=str(u), status="done") for i, u in enumerate(device_uuids)
    ]
    first_index: dict[str, int] = {}
    todo: list[SnapshotOutcome] = []
    for outcome, uuid in zip(outcomes, device_uuids, strict=True):
        if not isinstance(uuid, str):
            outcome.status, outcome.error = (
                "rejected",
                f"device uuid must be a string, got {type(uuid).__name__}",
            )
        elif uuid in first_index:
            outcome.status, outcome.error = "rejected", f"duplicate of item {first_index[uuid]}"
        else:
            first_index[uuid] = outcome.index
            todo.append(outcome)

    client = creds.session()

    async def camera(outcome: SnapshotOutcome) -> None:
        request = await _request_one(client, outcome, limits.calls, ready_after)
        if request is not None:
            wait = request.ready_at.timestamp() - client.clock.time()
            if wait > 0:  # the documented floor: sleep without holding any slot
                await client.clock.sleep(wait)
        async with limits.holding:
            if request is not None:
                await _download(client, outcome, request, kinds, limits.calls, poll_interval, timeout)
            if on_snapshot is not None:
                try:
                    await on_snapshot(outcome)
                except Exception as exc:  # the consumer's problem with one camera: that camera fails
                    _fail(outcome, exc, "on_snapshot")
                outcome.raw = outcome.annotated = None

    await asyncio.gather(*(camera(o) for o in todo))
    return outcomes


async def _request_one(
    client: VizioSenseClient,
    outcome: SnapshotOutcome,
    limit: asyncio.Semaphore,
    ready_after: float,
) -> ImageRequest | None:
    started = time.monotonic()
    async with limit:
        try:
            request = await client.request_image(outcome.device_uuid, ready_after=ready_after)
        except Exception as exc:  # one camera's problem never fails the batch
            _fail(outcome, exc, "request_image")
            return None
        finally:
            outcome.seconds_request = round(time.monotonic() - started, 3)
    outcome.requested_at, outcome.ready_at = request.requested_at, request.ready_at
    return request


async def _download(
    client: VizioSenseClient,
    outcome: SnapshotOutcome,
    request: ImageRequest,
    kinds: list[ImageKind],
    limit: asyncio.Semaphore,
    poll_interval: float,
    timeout: float,
) -> None:
    started = time.monotonic()

    async def one(kind: ImageKind) -> None:
        async with limit:
            try:
                snapshot = await client.fetch_image(
                    request, kind, poll_interval=poll_interval, timeout=timeout
                )
            except Exception as exc:
                _fail(outcome, exc, f"fetch_image({kind})")
                return
        setattr(outcome, kind, snapshot)

    await asyncio.gather(*(one(kind) for kind in kinds))
    outcome.seconds_download = round(time.monotonic() - started, 3)
    snapshots = [s for s in (outcome.raw, outcome.annotated) if s is not None]
    outcome.polls = sum(s.polls for s in snapshots)
    if snapshots:
        outcome.seconds = (max(s.fetched_at for s in snapshots) - request.requested_at).total_seconds()
