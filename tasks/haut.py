"""Prefect tasks for Haut.ai: one per API call, plus the coarse batch tasks of the skin-analysis flow
(``ensure_haut_dataset``, ``ensure_haut_subjects``, ``analyse_haut_batch``).

Every task accepts a ``HautCredentials`` block or the name of a saved one (``ensure_haut_dataset`` also an
open ``HautClient``, left open). A block or block name reaches the process's session for that account
(``blocks.base.ServiceCredentials.session``): one client, one login, one connection pool for every task run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.haut import HautCredentials
from clients.errors import ApiError, InputError, OutcomeUnknownError
from clients.haut import FSM2_TECH_NAME, HautClient, check_text
from clients.haut_models import (
    AlgorithmResult,
    Application,
    AuxImage,
    Dataset,
    ImageRecord,
    PrivateToken,
    Side,
    Subject,
    SubjectSpec,
    UploadTarget,
    V1Analysis,
    V3Analysis,
    V3Results,
    V3Upload,
    Webhook,
    face_scores,
)

Credentials = HautCredentials | str
# Tasks that carry image bytes use NO_CACHE: Prefect's default cache key hashes every input (megabytes of
# images), and an upload must never be answered from a cache anyway.


@contextlib.asynccontextmanager
async def _client(credentials: Credentials | HautClient) -> AsyncIterator[HautClient]:
    """The client given, or the process's session client of a block or block name (both left open)."""
    if isinstance(credentials, HautClient):
        yield credentials
        return
    creds = await HautCredentials.resolve(credentials)
    async with creds.session() as client:
        yield client


# --- auth -----------------------------------------------------------------------------------------------------
@task(name="haut-create-private-token")
async def create_haut_private_token(
    credentials: Credentials, name: str, expiration_time: datetime | str
) -> PrivateToken:
    """Create a private token; its value is ``.data`` (a SecretStr), shown only in this answer.

    Example:
        ```python
        token = await create_haut_private_token("my-haut", "etl backend", "2026-12-31T00:00:00Z")
        ```
    """
    async with _client(credentials) as client:
        return await client.create_private_token(name, expiration_time)


@task(name="haut-list-private-tokens")
async def list_haut_private_tokens(credentials: Credentials) -> list[PrivateToken]:
    """The current user's private tokens (names and expiry, no values).

    Example:
        ```python
        tokens = await list_haut_private_tokens("my-haut")
        ```
    """
    async with _client(credentials) as client:
        return await client.list_private_tokens()


@task(name="haut-revoke-private-token")
async def revoke_haut_private_token(credentials: Credentials, token_id: int) -> None:
    """Revoke a private token.

    Example:
        ```python
        await revoke_haut_private_token("my-haut", token.id)
        ```
    """
    async with _client(credentials) as client:
        await client.revoke_private_token(token_id)


# --- datasets and applications --------------------------------------------------------------------------------
@task(name="haut-create-dataset")
async def create_haut_dataset(credentials: Credentials, name: str, **options: Any) -> Dataset:
    """Create a dataset; ``options`` are ``image_type_id``, ``expire_images_after_days`` (≤ 365), … .

    Example:
        ```python
        dataset = await create_haut_dataset("my-haut", "spring study", expire_images_after_days=30)
        ```
    """
    async with _client(credentials) as client:
        return await client.create_dataset(name, **options)


@task(name="haut-list-datasets")
async def list_haut_datasets(credentials: Credentials, q: str | None = None) -> list[Dataset]:
    """Every dataset of the company (all pages), optionally searched by name.

    Example:
        ```python
        datasets = await list_haut_datasets("my-haut", q="study")
        ```
    """
    async with _client(credentials) as client:
        return await client.list_datasets(q=q)


@task(name="haut-get-dataset")
async def get_haut_dataset(credentials: Credentials, dataset_id: str) -> Dataset:
    """One dataset with its connected applications.

    Example:
        ```python
        dataset = await get_haut_dataset("my-haut", dataset_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.get_dataset(dataset_id)


@task(name="haut-list-applications")
async def list_haut_applications(credentials: Credentials) -> list[Application]:
    """Applications that can be attached to datasets.

    Example:
        ```python
        apps = await list_haut_applications("my-haut")
        ```
    """
    async with _client(credentials) as client:
        return await client.list_applications()


@task(name="haut-attach-application")
async def attach_haut_application(
    credentials: Credentials,
    tech_name: str,
    dataset_id: str,
    enabled_algorithms: list[str] | None = None,
    attach_dependencies: bool = False,
) -> Dataset:
    """Attach an application to a dataset (``attach_dependencies`` also attaches the ones it requires).

    Example:
        ```python
        dataset = await attach_haut_application("my-haut", "face_skin_metrics_2.0", dataset_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.attach_application(
            tech_name,
            dataset_id,
            enabled_algorithms=enabled_algorithms,
            attach_dependencies=attach_dependencies,
        )


@task(name="haut-set-webhook")
async def set_haut_webhook(credentials: Credentials, dataset_id: str, url: str, **options: Any) -> Webhook:
    """Set (or replace) a dataset's results webhook; ``options``: authorization, authorization_key, … .

    Example:
        ```python
        hook = await set_haut_webhook("my-haut", dataset_id, "https://example.org/hook",
                                      authorization="bearer", authorization_key="Authorization",
                                      authorization_value="s3cret")
        ```
    """
    async with _client(credentials) as client:
        return await client.set_webhook(dataset_id, url, **options)


# --- subjects -------------------------------------------------------------------------------------------------
@task(name="haut-create-subject")
async def create_haut_subject(credentials: Credentials, dataset_id: str, subject: SubjectSpec) -> Subject:
    """Create one subject (see ``ensure_haut_subjects`` to reuse existing ones by name).

    Example:
        ```python
        subject = await create_haut_subject("my-haut", dataset_id, SubjectSpec(name="participant-7"))
        ```
    """
    async with _client(credentials) as client:
        return await client.create_subject(dataset_id, **subject.model_dump())


@task(name="haut-list-subjects")
async def list_haut_subjects(
    credentials: Credentials, dataset_id: str, q: str | None = None
) -> list[Subject]:
    """Every subject of a dataset (all pages).

    Example:
        ```python
        subjects = await list_haut_subjects("my-haut", dataset_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.list_subjects(dataset_id, q=q)


@task(name="haut-get-subject")
async def get_haut_subject(credentials: Credentials, dataset_id: str, subject_id: str) -> Subject:
    """One subject.

    Example:
        ```python
        subject = await get_haut_subject("my-haut", dataset_id, subject_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.get_subject(dataset_id, subject_id)


@task(name="haut-update-subject")
async def update_haut_subject(
    credentials: Credentials, dataset_id: str, subject_id: str, changes: dict[str, Any]
) -> Subject:
    """Change some of ``name``, ``birth_date``, ``biological_sex``, ``meta``.

    Example:
        ```python
        subject = await update_haut_subject("my-haut", dataset_id, subject_id, {"meta": {"cohort": "B"}})
        ```
    """
    async with _client(credentials) as client:
        return await client.update_subject(dataset_id, subject_id, **changes)


@task(name="haut-delete-subject")
async def delete_haut_subject(credentials: Credentials, dataset_id: str, subject_id: str) -> None:
    """Delete a subject and its images.

    Example:
        ```python
        await delete_haut_subject("my-haut", dataset_id, subject_id)
        ```
    """
    async with _client(credentials) as client:
        await client.delete_subject(dataset_id, subject_id)


@task(name="haut-delete-subjects")
async def delete_haut_subjects(credentials: Credentials, dataset_id: str, subject_ids: list[str]) -> None:
    """Delete many subjects in one call (all or nothing).

    Example:
        ```python
        await delete_haut_subjects("my-haut", dataset_id, [s1, s2])
        ```
    """
    async with _client(credentials) as client:
        await client.delete_subjects(dataset_id, subject_ids)


@task(name="haut-delete-subject-photos")
async def delete_haut_subject_photos(credentials: Credentials, subject_id: str) -> None:
    """GDPR: delete the subject's image files (records and results stay).

    Example:
        ```python
        await delete_haut_subject_photos("my-haut", subject_id)
        ```
    """
    async with _client(credentials) as client:
        await client.delete_subject_photos(subject_id)


@task(name="haut-clear-subject-metadata")
async def clear_haut_subject_metadata(credentials: Credentials, subject_id: str) -> Subject:
    """GDPR: blank the subject's name, birth date, biological sex and meta.

    Example:
        ```python
        subject = await clear_haut_subject_metadata("my-haut", subject_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.clear_subject_metadata(subject_id)


# --- images: v1 -----------------------------------------------------------------------------------------------
@task(name="haut-request-upload-v1")
async def request_haut_upload_v1(
    credentials: Credentials, subject_id: str, side_id: int = 1, batch_id: str | None = None
) -> ImageRecord:
    """A new image record with its signed ``upload_url`` and ``image_batch_id``.

    Example:
        ```python
        record = await request_haut_upload_v1("my-haut", subject_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.request_upload_v1(subject_id, side_id=side_id, batch_id=batch_id)


@task(name="haut-upload-image", cache_policy=NO_CACHE)
async def upload_haut_image(credentials: Credentials, target: UploadTarget, image: bytes) -> None:
    """PUT image bytes to a signed upload URL (JPEG/PNG, ≥ 256×256 px, ≤ 30 MiB).

    Example:
        ```python
        await upload_haut_image("my-haut", record.upload_url, jpeg_bytes)
        ```
    """
    async with _client(credentials) as client:
        await client.upload(target, image)


@task(name="haut-compute-v1")
async def compute_haut_batch_v1(credentials: Credentials, batch_id: str) -> None:
    """Start processing an uploaded v1 batch.

    Example:
        ```python
        await compute_haut_batch_v1("my-haut", record.image_batch_id)
        ```
    """
    async with _client(credentials) as client:
        await client.compute_v1(batch_id)


@task(name="haut-analyse-image-v1", cache_policy=NO_CACHE)
async def analyse_haut_image_v1(
    credentials: Credentials, subject_id: str, dataset_id: str, image: bytes, side_id: int = 1
) -> V1Analysis:
    """Signed URL, upload and compute for one image; returns the ids to fetch its results.

    Example:
        ```python
        analysis = await analyse_haut_image_v1("my-haut", subject_id, dataset_id, jpeg_bytes)
        ```
    """
    async with _client(credentials) as client:
        return await client.analyse_image_v1(subject_id, dataset_id, image, side_id)


@task(name="haut-get-results-v1")
async def get_haut_results_v1(credentials: Credentials, analysis: V1Analysis) -> list[AlgorithmResult]:
    """An image's algorithm results now (empty while processing).

    Example:
        ```python
        results = await get_haut_results_v1("my-haut", analysis)
        ```
    """
    async with _client(credentials) as client:
        return await client.get_results_v1(
            analysis.dataset_id, analysis.subject_id, analysis.batch_id, analysis.image_id
        )


@task(name="haut-wait-for-results-v1")
async def wait_for_haut_results_v1(credentials: Credentials, analysis: V1Analysis) -> list[AlgorithmResult]:
    """Poll an image's results with backoff until they arrive (timeout from the block).

    Example:
        ```python
        results = await wait_for_haut_results_v1("my-haut", analysis)
        ```
    """
    async with _client(credentials) as client:
        return await client.wait_for_results_v1(analysis)


# --- images: v3 -----------------------------------------------------------------------------------------------
@task(name="haut-request-upload-v3")
async def request_haut_upload_v3(
    credentials: Credentials, subject_id: str, sides: dict[Side, str]
) -> V3Upload:
    """Upload targets for the given sides (side → file name) in one new batch.

    Example:
        ```python
        upload = await request_haut_upload_v3("my-haut", subject_id, {"front": "front.jpg"})
        ```
    """
    async with _client(credentials) as client:
        return await client.request_upload_v3(subject_id, **sides)


@task(name="haut-compute-v3")
async def compute_haut_batch_v3(credentials: Credentials, batch_id: str) -> None:
    """Start processing an uploaded v3 batch.

    Example:
        ```python
        await compute_haut_batch_v3("my-haut", upload.image_batch_id)
        ```
    """
    async with _client(credentials) as client:
        await client.compute_v3(batch_id)


@task(name="haut-analyse-images-v3", cache_policy=NO_CACHE)
async def analyse_haut_images_v3(
    credentials: Credentials, subject_id: str, images: dict[Side, bytes]
) -> V3Analysis:
    """Upload 1–3 sides and compute them as one v3 batch.

    Example:
        ```python
        analysis = await analyse_haut_images_v3("my-haut", subject_id, {"front": jpeg_bytes})
        ```
    """
    async with _client(credentials) as client:
        return await client.analyse_images_v3(subject_id, images)


@task(name="haut-get-results-v3")
async def get_haut_results_v3(credentials: Credentials, batch_id: str) -> V3Results:
    """A v3 batch's results now (``all_algorithms_calculated`` false while processing).

    Example:
        ```python
        results = await get_haut_results_v3("my-haut", analysis.batch_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.get_results_v3(batch_id)


@task(name="haut-wait-for-results-v3")
async def wait_for_haut_results_v3(credentials: Credentials, batch_id: str) -> V3Results:
    """Poll a v3 batch's results with backoff until all algorithms are calculated.

    Example:
        ```python
        results = await wait_for_haut_results_v3("my-haut", analysis.batch_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.wait_for_results_v3(batch_id)


# --- image records --------------------------------------------------------------------------------------------
@task(name="haut-list-subject-images")
async def list_haut_subject_images(credentials: Credentials, subject_id: str) -> list[ImageRecord]:
    """Every image record of a subject, with aux images.

    Example:
        ```python
        images = await list_haut_subject_images("my-haut", subject_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.list_subject_images(subject_id)


@task(name="haut-get-image")
async def get_haut_image(credentials: Credentials, image_id: str) -> ImageRecord:
    """One image record, with aux images.

    Example:
        ```python
        image = await get_haut_image("my-haut", image_id)
        ```
    """
    async with _client(credentials) as client:
        return await client.get_image(image_id)


@task(name="haut-delete-image")
async def delete_haut_image(credentials: Credentials, image_id: str) -> None:
    """Delete an image.

    Example:
        ```python
        await delete_haut_image("my-haut", image_id)
        ```
    """
    async with _client(credentials) as client:
        await client.delete_image(image_id)


@task(name="haut-list-aux-images")
async def list_haut_aux_images(
    credentials: Credentials, image_id: str, algo_app: str | None = None, aux_image_type: str | None = None
) -> list[AuxImage]:
    """Aux images of an image, optionally filtered (e.g. ``algo_app="face"``, ``aux_image_type="restored"``).

    Example:
        ```python
        aux = await list_haut_aux_images("my-haut", image_id, aux_image_type="restored")
        ```
    """
    async with _client(credentials) as client:
        return await client.list_aux_images(image_id, algo_app=algo_app, aux_image_type=aux_image_type)


# --- batch tasks for the skin-analysis flow -------------------------------------------------------------------
@task(name="haut-ensure-dataset", cache_policy=NO_CACHE)  # may take a client, which has no cache key
async def ensure_haut_dataset(
    credentials: Credentials | HautClient,
    name: str,
    applications: list[str] | None = None,
    attach_dependencies: bool = True,
    **options: Any,
) -> Dataset:
    """The dataset named ``name`` (created if missing) with ``applications`` attached (default FSM 2.0).

    Safe to re-run: an existing dataset is reused, attached applications are left alone. ``options`` go to
    ``create_dataset`` when the dataset is new.

    Example:
        ```python
        dataset = await ensure_haut_dataset("my-haut", "selfie study", ["face_skin_metrics_2.0"])
        ```
    """
    check_text(name, "name")
    apps = [FSM2_TECH_NAME] if applications is None else list(applications)
    async with _client(credentials) as client:
        dataset = await client.find_dataset(name)
        if dataset is None:
            try:
                dataset = await client.create_dataset(name, **options)
            except OutcomeUnknownError:
                dataset = await client.find_dataset(name)  # did the create go through?
                if dataset is None:
                    raise
        for tech_name in apps:
            if tech_name not in dataset.application_tech_names:
                dataset = await client.attach_application(
                    tech_name, dataset.id, attach_dependencies=attach_dependencies
                )
        return dataset


@task(name="haut-ensure-subjects")
async def ensure_haut_subjects(
    credentials: Credentials,
    dataset_id: str,
    subjects: list[SubjectSpec | str],
    concurrency: int = 8,
) -> list[Subject]:
    """One subject per spec, in input order: existing subjects are reused by name, missing ones created.

    Lists the dataset's subjects once; never creates a second subject with a name that exists, so re-runs
    create nothing. Names are checked (1–512 characters) before anything is sent.

    Example:
        ```python
        subjects = await ensure_haut_subjects("my-haut", dataset.id, ["participant-1", "participant-2"])
        ```
    """
    specs = [SubjectSpec(name=s) if isinstance(s, str) else s for s in subjects]
    for i, spec in enumerate(specs):
        check_text(spec.name, f"subjects[{i}].name")
    async with _client(credentials) as client:
        by_name: dict[str, Subject] = {}
        for subject in await client.list_subjects(dataset_id):
            by_name.setdefault(subject.name or "", subject)  # oldest first: the service lists by id
        missing: dict[str, SubjectSpec] = {}
        for spec in specs:
            if spec.name not in by_name:
                missing.setdefault(spec.name, spec)  # a name repeated in the input is created once
        unknown: list[str] = []
        limit = asyncio.Semaphore(max(1, concurrency))

        async def create(spec: SubjectSpec) -> None:
            async with limit:
                try:
                    by_name[spec.name] = await client.create_subject(dataset_id, **spec.model_dump())
                except OutcomeUnknownError:
                    unknown.append(spec.name)

        await asyncio.gather(*(create(s) for s in missing.values()))
        if unknown:  # a create whose answer was lost: look once more before calling it failed
            for subject in await client.list_subjects(dataset_id):
                by_name.setdefault(subject.name or "", subject)
            lost = [n for n in unknown if n not in by_name]
            if lost:
                raise ApiError(
                    client.service,
                    "ensure_subjects",
                    f"could not confirm {len(lost)} subject(s) whose create answer was lost",  # names: personal
                    retryable=True,
                )
        return [by_name[s.name] for s in specs]


class HautBatchItem(BaseModel):
    """One analysis of a batch: v1 sends ``image`` as ``side_id``; v3 sends ``images`` (or ``image`` as front)."""

    key: str = Field(description="Caller's identifier, echoed in the outcome (e.g. the source file).")
    subject_id: str
    image: bytes | None = None
    side_id: int = 1
    images: dict[Side, bytes] | None = None
    meta: Any = None


class HautOutcome(BaseModel):
    """What became of one item: ``done`` (results), ``failed`` (error) or ``rejected`` (reason; nothing sent)."""

    key: str
    status: Literal["done", "failed", "rejected"]
    subject_id: str
    batch_id: str | None = None
    image_ids: list[str] = Field(default_factory=list)
    scores: dict[str, Any] = Field(default_factory=dict)
    results: list[AlgorithmResult] | None = None  # v1
    v3_results: V3Results | None = None  # v3
    error: str | None = None


def _v1_outcome(item: HautBatchItem, analysis: V1Analysis, results: list[AlgorithmResult]) -> HautOutcome:
    base = {"key": item.key, "subject_id": item.subject_id, "batch_id": analysis.batch_id}
    failed = [r for r in results if not r.is_ok]
    if len(failed) == len(results):
        problems = sorted({r.problem or "algorithm failed" for r in failed})
        return HautOutcome(
            **base,
            image_ids=[analysis.image_id],
            status="failed",
            results=results,
            error="analysis failed: " + ", ".join(problems),
        )
    return HautOutcome(
        **base, image_ids=[analysis.image_id], status="done", results=results, scores=face_scores(results)
    )


def _v3_outcome(item: HautBatchItem, analysis: V3Analysis, results: V3Results) -> HautOutcome:
    base = {
        "key": item.key,
        "subject_id": item.subject_id,
        "batch_id": analysis.batch_id,
        "image_ids": list(analysis.image_ids.values()),
        "v3_results": results,
    }
    if not results.parameters:
        problems = (results.model_extra or {}).get("problems")
        return HautOutcome(**base, status="failed", error=f"analysis failed: {problems or 'no parameters'}")
    return HautOutcome(**base, status="done", scores=results.scores())


@task(name="haut-analyse-batch", cache_policy=NO_CACHE)
async def analyse_haut_batch(
    credentials: Credentials,
    dataset_id: str,
    items: list[HautBatchItem],
    api_version: Literal["v1", "v3"] = "v1",
    concurrency: int = 8,
    initial_delay: float | None = None,
    max_delay: float | None = None,
    timeout: float | None = None,
) -> list[HautOutcome]:
    """Analyse many images in one task run: upload + compute each (at most ``concurrency`` at once), then
    poll every pending result together with backoff. Returns one outcome per item, in input order.

    Rejected: a documented constraint was broken (too small, too big, not JPEG/PNG): nothing was sent.
    Failed: the service refused, the analysis failed, or results did not arrive within ``timeout`` seconds
    of the last upload (poll settings default to the block's).

    Example:
        ```python
        outcomes = await analyse_haut_batch("my-haut", dataset.id, [
            HautBatchItem(key="a.jpg", subject_id=subject.id, image=jpeg_bytes),
        ])
        ```
    """
    outcomes: list[HautOutcome | None] = [None] * len(items)
    pending: dict[int, V1Analysis | V3Analysis] = {}
    limit = asyncio.Semaphore(max(1, concurrency))

    def finish(i: int, status: str, error: str) -> None:
        outcomes[i] = HautOutcome(
            key=items[i].key, subject_id=items[i].subject_id, status=status, error=error
        )

    async with _client(credentials) as client:

        async def submit(i: int, item: HautBatchItem) -> None:
            async with limit:
                try:
                    if api_version == "v1":
                        if item.image is None:
                            raise InputError("image", "missing", "v1 needs one image")
                        pending[i] = await client.analyse_image_v1(
                            item.subject_id, dataset_id, item.image, item.side_id, meta=item.meta
                        )
                    else:
                        sides = item.images or ({"front": item.image} if item.image is not None else {})
                        pending[i] = await client.analyse_images_v3(item.subject_id, sides, meta=item.meta)
                except InputError as exc:
                    finish(i, "rejected", str(exc))
                except ApiError as exc:
                    finish(i, "failed", str(exc))

        async def check(i: int) -> None:
            analysis = pending[i]
            async with limit:
                try:
                    if isinstance(analysis, V1Analysis):
                        results = await client.get_results_v1(
                            analysis.dataset_id, analysis.subject_id, analysis.batch_id, analysis.image_id
                        )
                        if results:
                            outcomes[i] = _v1_outcome(items[i], analysis, results)
                    else:
                        v3 = await client.get_results_v3(analysis.batch_id)
                        if v3.all_algorithms_calculated:
                            outcomes[i] = _v3_outcome(items[i], analysis, v3)
                except ApiError as exc:
                    if not exc.retryable:  # a transient failure is simply polled again next round
                        finish(i, "failed", str(exc))
            if outcomes[i] is not None:
                del pending[i]

        await asyncio.gather(*(submit(i, item) for i, item in enumerate(items)))
        poll = client.poll_settings(initial_delay=initial_delay, max_delay=max_delay, timeout=timeout)
        delays = poll.delays()
        started = client.clock.monotonic()
        while pending:
            remaining = poll.timeout - (client.clock.monotonic() - started)
            if remaining <= 0:
                for i, analysis in pending.items():
                    ids = (
                        [analysis.image_id]
                        if isinstance(analysis, V1Analysis)
                        else analysis.image_ids.values()
                    )
                    outcomes[i] = HautOutcome(
                        key=items[i].key,
                        subject_id=items[i].subject_id,
                        status="failed",
                        batch_id=analysis.batch_id,
                        image_ids=list(ids),
                        error=f"results not ready after {poll.timeout:g} s; they may still arrive",
                    )
                break
            await client.clock.sleep(min(next(delays), remaining))
            await asyncio.gather(*(check(i) for i in list(pending)))
    assert all(o is not None for o in outcomes), "every item ends as done, failed or rejected"
    return outcomes  # type: ignore[return-value]
