"""Prefect tasks for Micrio: one per API call, plus two coarse batch tasks for large migrations.

Each task accepts a ``MicrioCredentials`` block or the name of a saved one, and calls Micrio through the
block's process-wide session (``creds.session()``): one client, pool and set of retries per account, shared
by every task of the process. The batch tasks keep task runs proportional to batches, not images:
``add_micrio_batch`` adds a batch with one ``images/add`` call and ``await_micrio_progress`` waits for any
number of images to finish in one task run. Keeping a journal and deciding what to add again is the flow's
job (``flows/micrio_migration``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.micrio import MicrioCredentials
from clients.errors import ApiError, InputError, OutcomeUnknownError
from clients.micrio import (
    MAX_STATUS_IDS,
    AddedImage,
    CreatedFolder,
    FolderStatus,
    FolderType,
    ImageSource,
    ImageStatusReport,
    MicrioClient,
    check_folder_id,
    check_image_ids,
    check_source,
)
from tasks.image_io import sniff_image_format

Credentials = MicrioCredentials | str
_call = MicrioCredentials.session_call  # a client method, run with the account's session client
Source = ImageSource | Mapping[str, Any] | str

# The originals Micrio accepts (docs/service-api-facts.md, Micrio): JPEG, PNG, WebP and TIFF; Enterprise also BMP and
# Photoshop PSD/PSB. Camera RAW files built on TIFF (DNG, NEF, CR2, ARW) are recognised as TIFF.
MICRIO_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "PSD")
SNIFF_BYTES = 32  # enough for every signature sniff_image_format knows


def micrio_format_problem(head: bytes) -> str | None:
    """Why the first bytes of a source are not an original Micrio accepts, or None when they are.

    Decided by content (magic bytes), never by the file name: ``photo.jpg`` holding text is refused here,
    before Micrio spends a download on it.
    """
    try:
        fmt = sniff_image_format(head)
    except InputError as exc:
        return f"not an image: {exc.problem}"
    if fmt not in MICRIO_FORMATS:
        return f"{fmt} is not a format Micrio accepts ({', '.join(MICRIO_FORMATS)})"
    return None


@task(name="micrio-add-images")
async def add_micrio_images(
    credentials: Credentials, folder_id: str, images: list[Source], user_email: str | None = None
) -> list[AddedImage]:
    """Queue images (``sourceUrl`` + optional name) in a folder; returns their Micrio ids in input order.

    Raises ``InputError`` for a bad source (nothing sent) and ``OutcomeUnknownError`` when the answer was
    lost after sending (the images may exist: check before adding again).

    Example:
        ```python
        added = await add_micrio_images("my-micrio", "abcdef", [{"sourceUrl": url, "name": "IMG-001"}])
        ```
    """
    return await _call(credentials, MicrioClient.add_images, folder_id, images, user_email)


@task(name="micrio-get-image-status")
async def get_micrio_image_status(credentials: Credentials, image_ids: list[str]) -> ImageStatusReport:
    """Processing status of up to 100 images (one ``image/status`` call); unknown ids are in ``missing``.

    To wait for any number of images to finish, use ``await_micrio_progress``.

    Example:
        ```python
        report = await get_micrio_image_status("my-micrio", [a.id for a in added])
        ```
    """
    ids = check_image_ids(image_ids)
    if len(ids) > MAX_STATUS_IDS:
        raise InputError(
            "image_ids", f"has {len(ids)} ids", f"at most {MAX_STATUS_IDS}; use await_micrio_progress"
        )
    return await _call(credentials, MicrioClient.image_status, ids)


@task(name="micrio-get-folder-status")
async def get_micrio_folder_status(credentials: Credentials, folder_id: str) -> FolderStatus:
    """Progress of a whole folder: total, completed, ids still processing and ids in error."""
    return await _call(credentials, MicrioClient.folder_status, folder_id)


@task(name="micrio-create-folder")
async def create_micrio_folder(
    credentials: Credentials, parent_id: str, name: str | None = None, type: FolderType = "folder"
) -> CreatedFolder:
    """Create a folder, album or space (360 tour container) under ``parent_id``.

    Example:
        ```python
        folder = await create_micrio_folder("my-micrio", "abcdef", "Migration 2025", type="folder")
        ```
    """
    return await _call(credentials, MicrioClient.create_folder, parent_id, name, type)


class AddOutcome(BaseModel):
    """What became of one source of a batch, by its position in the input.

    ``added``: queued, with its Micrio ``image_id``. ``rejected``: the source broke a documented rule and
    was not sent. ``failed``: Micrio refused the call or could not be reached; nothing was added, so it can
    be sent again. ``unknown``: the connection broke after sending; the image may exist, so check (e.g. the
    folder status) before sending it again.
    """

    index: int
    status: Literal["added", "rejected", "failed", "unknown"]
    image_id: str | None = None
    name: str | None = None
    error: str | None = None


@task(name="micrio-add-batch")
async def add_micrio_batch(
    credentials: Credentials, folder_id: str, sources: list[Source], user_email: str | None = None
) -> list[AddOutcome]:
    """Add a batch of sources with one ``images/add`` call (more only above the block's per-call cap).

    Invalid sources are rejected one by one and the rest still go out. Every input ends as one
    ``AddOutcome``, in input order.

    Example:
        ```python
        outcomes = await add_micrio_batch("my-micrio", "abcdef", [{"sourceUrl": u} for u in urls])
        retry_later = [o.index for o in outcomes if o.status == "failed"]
        ```
    """
    creds = await MicrioCredentials.resolve(credentials)
    outcomes: list[AddOutcome | None] = [None] * len(sources)
    try:
        check_folder_id(folder_id)
    except InputError as exc:
        return [AddOutcome(index=i, status="rejected", error=str(exc)) for i in range(len(sources))]
    valid: list[tuple[int, ImageSource]] = []
    for i, source in enumerate(sources):
        try:
            valid.append((i, check_source(source, i)))
        except InputError as exc:
            outcomes[i] = AddOutcome(index=i, status="rejected", error=str(exc))
    async with creds.session() as client:
        for start in range(0, len(valid), client.max_batch):
            chunk = valid[start : start + client.max_batch]
            try:
                added = await client.add_images(folder_id, [s for _, s in chunk], user_email)
            except InputError as exc:  # e.g. user_email: applies to the whole call
                for i, _ in chunk:
                    outcomes[i] = AddOutcome(index=i, status="rejected", error=str(exc))
            except OutcomeUnknownError as exc:
                for i, _ in chunk:
                    outcomes[i] = AddOutcome(index=i, status="unknown", error=str(exc))
            except ApiError as exc:
                for i, _ in chunk:
                    outcomes[i] = AddOutcome(index=i, status="failed", error=str(exc))
            else:
                for (i, _), image in zip(chunk, added, strict=True):
                    outcomes[i] = AddOutcome(index=i, status="added", image_id=image.id, name=image.name)
    return [o for o in outcomes if o is not None]


@task(name="micrio-await-progress", cache_policy=NO_CACHE)  # a poll is never answered from a cache
async def await_micrio_progress(
    credentials: Credentials,
    folder_id: str,
    image_ids: list[str],
    min_finished: int = 100,
    max_wait: float = 60.0,
    poll_initial: float = 2.0,
    poll_max: float = 15.0,
    max_finished: int = 1000,
) -> ImageStatusReport:
    """Wait until at least ``min_finished`` of ``image_ids`` have left processing, then return their statuses
    (at most ``max_finished`` of them: call again for the rest, which returns at once).

    Each round is ONE ``folder/status`` call (the cheap global view); ids no longer in ``processingIds``
    have finished, and only those are asked about with ``image/status`` (≤ 100 ids a call), once each. So
    a migration costs about one status call per 100 images plus one per round. Rounds back off from
    ``poll_initial`` to ``poll_max`` seconds while nothing changes. Returns after ``max_wait`` seconds with
    whatever finished (possibly nothing), so the flow can report progress. ``report.missing`` lists the
    finished ids Micrio does not know. The cap keeps a call's answer small when a whole archive finished
    while the caller was busy adding (a 10k-image migration's first call returned 9,900 statuses). Wrap a
    long id list in ``prefect.utilities.annotations.quote``: Prefect otherwise walks every id on each call to
    record the task's inputs (0.15 s a call for 50,000 ids).

    Example:
        ```python
        report = await await_micrio_progress("my-micrio", "abcdef", quote(in_flight_ids))
        for image_id, status in report.statuses.items(): ...
        ```
    """
    # The whole wait runs on the session's loop: no hop between threads per call.
    return await _call(
        credentials, _await_progress, folder_id, image_ids, min_finished, max_wait, poll_initial, poll_max,
        max_finished,
    )  # fmt: skip


async def _await_progress(
    client: MicrioClient,
    folder_id: str,
    image_ids: list[str],
    min_finished: int,
    max_wait: float,
    poll_initial: float,
    poll_max: float,
    max_finished: int,
) -> ImageStatusReport:
    wanted = set(image_ids)
    needed = max(1, min(min_finished, len(wanted)))
    clock = client.clock
    started = clock.monotonic()
    interval = poll_initial
    finished: set[str] = set()
    while wanted:
        folder = await client.folder_status(folder_id)
        newly = wanted - set(folder.processing_ids) - finished
        finished |= newly
        waited = clock.monotonic() - started
        if len(finished) >= needed or (finished and waited + interval > max_wait):
            break
        if waited + interval > max_wait:
            return ImageStatusReport()
        interval = poll_initial if newly else min(poll_max, interval * 1.5)
        await clock.sleep(interval)
    return await client.image_status([i for i in image_ids if i in finished][: max(1, max_finished)])
