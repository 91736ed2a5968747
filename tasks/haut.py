"""Prefect tasks for Haut.ai: one per API call, plus the coarse batch tasks the skin-analysis flow calls
(``ensure_haut_dataset``, ``ensure_haut_subjects``, ``analyse_haut_batch``: its engine is ``tasks.haut_batch``).

Every task accepts a ``HautCredentials`` block or the name of a saved one (``ensure_haut_dataset`` also an
open ``HautClient``, left open). A block or block name reaches the process's session for that account
(``blocks.base.ServiceCredentials.session``): one client, one login, one connection pool for every task run.

Example (one image through v1, each step a task; the tasks below show their specific arguments):
    ```python
    dataset = await ensure_haut_dataset("my-haut", "selfie study")
    subject = await create_haut_subject("my-haut", dataset.id, SubjectSpec(name="participant-7"))
    analysis = await analyse_haut_image_v1("my-haut", subject.id, dataset.id, jpeg_bytes)
    results = await wait_for_haut_results_v1("my-haut", analysis)
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.haut import HautCredentials
from clients.errors import OutcomeUnknownError
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
)
from tasks.haut_batch import (
    AnalysisUnit,
    JournalState,
    SendingBatches,
    SubjectResolver,
    UnitOutcome,
    run_logger,
    submit_batch,
    wait_for_results,
)
from tasks.journal import GroupCommit

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


_call = HautCredentials.session_call  # a client method, run with the account's session client


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
    return await _call(credentials, HautClient.create_private_token, name, expiration_time)


@task(name="haut-list-private-tokens")
async def list_haut_private_tokens(credentials: Credentials) -> list[PrivateToken]:
    """The current user's private tokens (names and expiry, no values)."""
    return await _call(credentials, HautClient.list_private_tokens)


@task(name="haut-revoke-private-token")
async def revoke_haut_private_token(credentials: Credentials, token_id: int) -> None:
    """Revoke a private token (``token.id``); calls with it then get 401."""
    await _call(credentials, HautClient.revoke_private_token, token_id)


# --- datasets and applications --------------------------------------------------------------------------------
@task(name="haut-create-dataset")
async def create_haut_dataset(credentials: Credentials, name: str, **options: Any) -> Dataset:
    """Create a dataset; ``options``: ``clients.haut.DatasetOptions`` (``expire_images_after_days`` ≤ 365, …).

    Example:
        ```python
        dataset = await create_haut_dataset("my-haut", "spring study", expire_images_after_days=30)
        ```
    """
    return await _call(credentials, HautClient.create_dataset, name, **options)


@task(name="haut-list-datasets")
async def list_haut_datasets(credentials: Credentials, q: str | None = None) -> list[Dataset]:
    """Every dataset of the company (all pages), optionally searched by name."""
    return await _call(credentials, HautClient.list_datasets, q=q)


@task(name="haut-get-dataset")
async def get_haut_dataset(credentials: Credentials, dataset_id: str) -> Dataset:
    """One dataset with its connected applications."""
    return await _call(credentials, HautClient.get_dataset, dataset_id)


@task(name="haut-list-applications")
async def list_haut_applications(credentials: Credentials) -> list[Application]:
    """Applications that can be attached to datasets."""
    return await _call(credentials, HautClient.list_applications)


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
    return await _call(
        credentials,
        HautClient.attach_application,
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
    return await _call(credentials, HautClient.set_webhook, dataset_id, url, **options)


# --- subjects -------------------------------------------------------------------------------------------------
@task(name="haut-create-subject")
async def create_haut_subject(credentials: Credentials, dataset_id: str, subject: SubjectSpec) -> Subject:
    """Create one subject (see ``ensure_haut_subjects`` to reuse existing ones by name).

    Example:
        ```python
        subject = await create_haut_subject("my-haut", dataset_id, SubjectSpec(name="participant-7"))
        ```
    """
    return await _call(credentials, HautClient.create_subject, dataset_id, subject)


@task(name="haut-list-subjects")
async def list_haut_subjects(
    credentials: Credentials, dataset_id: str, q: str | None = None
) -> list[Subject]:
    """Every subject of a dataset (all pages)."""
    return await _call(credentials, HautClient.list_subjects, dataset_id, q=q)


@task(name="haut-get-subject")
async def get_haut_subject(credentials: Credentials, dataset_id: str, subject_id: str) -> Subject:
    """One subject."""
    return await _call(credentials, HautClient.get_subject, dataset_id, subject_id)


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
    return await _call(credentials, HautClient.update_subject, dataset_id, subject_id, **changes)


@task(name="haut-delete-subject")
async def delete_haut_subject(credentials: Credentials, dataset_id: str, subject_id: str) -> None:
    """Delete a subject and its images."""
    await _call(credentials, HautClient.delete_subject, dataset_id, subject_id)


@task(name="haut-delete-subjects")
async def delete_haut_subjects(credentials: Credentials, dataset_id: str, subject_ids: list[str]) -> None:
    """Delete many subjects in one call (all or nothing)."""
    await _call(credentials, HautClient.delete_subjects, dataset_id, subject_ids)


@task(name="haut-delete-subject-photos")
async def delete_haut_subject_photos(credentials: Credentials, subject_id: str) -> None:
    """GDPR: delete the subject's image files (records and results stay)."""
    await _call(credentials, HautClient.delete_subject_photos, subject_id)


@task(name="haut-clear-subject-metadata")
async def clear_haut_subject_metadata(credentials: Credentials, subject_id: str) -> Subject:
    """GDPR: blank the subject's name, birth date, biological sex and meta."""
    return await _call(credentials, HautClient.clear_subject_metadata, subject_id)


# --- images: v1 -----------------------------------------------------------------------------------------------
@task(name="haut-request-upload-v1")
async def request_haut_upload_v1(
    credentials: Credentials, subject_id: str, side_id: int = 1, batch_id: str | None = None
) -> ImageRecord:
    """A new image record with its signed ``upload_url`` and ``image_batch_id``."""
    return await _call(
        credentials, HautClient.request_upload_v1, subject_id, side_id=side_id, batch_id=batch_id
    )


@task(name="haut-upload-image", cache_policy=NO_CACHE)
async def upload_haut_image(credentials: Credentials, target: UploadTarget, image: bytes) -> None:
    """PUT image bytes to a signed upload URL (JPEG/PNG, ≥ 256×256 px, ≤ 30 MiB).

    Example:
        ```python
        await upload_haut_image("my-haut", record.upload_url, jpeg_bytes)
        ```
    """
    await _call(credentials, HautClient.upload, target, image)


@task(name="haut-compute-v1")
async def compute_haut_batch_v1(credentials: Credentials, batch_id: str) -> None:
    """Start processing an uploaded v1 batch (``record.image_batch_id``)."""
    await _call(credentials, HautClient.compute_v1, batch_id)


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
    return await _call(credentials, HautClient.analyse_image_v1, subject_id, dataset_id, image, side_id)


@task(name="haut-get-results-v1")
async def get_haut_results_v1(credentials: Credentials, analysis: V1Analysis) -> list[AlgorithmResult]:
    """An image's algorithm results now (empty while processing); ``analysis``: ``analyse_haut_image_v1``'s."""
    return await _call(
        credentials,
        HautClient.get_results_v1,
        analysis.dataset_id,
        analysis.subject_id,
        analysis.batch_id,
        analysis.image_id,
    )


@task(name="haut-wait-for-results-v1")
async def wait_for_haut_results_v1(credentials: Credentials, analysis: V1Analysis) -> list[AlgorithmResult]:
    """Poll an image's results with backoff until they arrive (timeout from the block)."""
    return await _call(credentials, HautClient.wait_for_results_v1, analysis)


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
    return await _call(credentials, HautClient.request_upload_v3, subject_id, sides)


@task(name="haut-compute-v3")
async def compute_haut_batch_v3(credentials: Credentials, batch_id: str) -> None:
    """Start processing an uploaded v3 batch (``upload.image_batch_id``)."""
    await _call(credentials, HautClient.compute_v3, batch_id)


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
    return await _call(credentials, HautClient.analyse_images_v3, subject_id, images)


@task(name="haut-get-results-v3")
async def get_haut_results_v3(credentials: Credentials, batch_id: str) -> V3Results:
    """A v3 batch's results now (``all_algorithms_calculated`` false while processing)."""
    return await _call(credentials, HautClient.get_results_v3, batch_id)


@task(name="haut-wait-for-results-v3")
async def wait_for_haut_results_v3(credentials: Credentials, batch_id: str) -> V3Results:
    """Poll a v3 batch's results with backoff until all algorithms are calculated."""
    return await _call(credentials, HautClient.wait_for_results_v3, batch_id)


# --- image records --------------------------------------------------------------------------------------------
@task(name="haut-list-subject-images")
async def list_haut_subject_images(credentials: Credentials, subject_id: str) -> list[ImageRecord]:
    """Every image record of a subject, with aux images."""
    return await _call(credentials, HautClient.list_subject_images, subject_id)


@task(name="haut-get-image")
async def get_haut_image(credentials: Credentials, image_id: str) -> ImageRecord:
    """One image record, with aux images."""
    return await _call(credentials, HautClient.get_image, image_id)


@task(name="haut-delete-image")
async def delete_haut_image(credentials: Credentials, image_id: str) -> None:
    """Delete an image."""
    await _call(credentials, HautClient.delete_image, image_id)


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
    return await _call(
        credentials, HautClient.list_aux_images, image_id, algo_app=algo_app, aux_image_type=aux_image_type
    )


# --- batch tasks -------------------------------------------------------------------
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
    first_spec = {s.name: s for s in reversed(specs)}  # a name repeated in the input: its first spec, once
    limit = asyncio.Semaphore(max(1, concurrency))
    async with _client(credentials) as client:
        resolver = SubjectResolver(client, dataset_id, first_spec)

        async def one(name: str) -> Subject:
            async with limit:
                return await resolver.subject(name)

        return list(await asyncio.gather(*(one(s.name) for s in specs)))


@task(name="haut-analyse-batch", cache_policy=NO_CACHE)
async def analyse_haut_batch(
    credentials: Credentials,
    dataset_id: str,
    units: list[AnalysisUnit],
    api_version: Literal["v1", "v3"] = "v1",
    concurrency: int = 8,
    max_side: int | None = None,
    s3_client: Any = None,
    poll_initial_delay: float | None = None,
    poll_max_delay: float | None = None,
    results_timeout: float | None = None,
    journal: GroupCommit | None = None,
    state: JournalState | None = None,
    subjects: SubjectResolver | None = None,
    gate: asyncio.Semaphore | None = None,
    senders: SendingBatches | None = None,
) -> list[UnitOutcome]:
    """Analyse many images in one task run, resumably; one outcome per analysis, in order.

    Each analysis (a v1 image, or a v3 batch of up to three sides of one subject) goes through its steps
    without waiting for the rest of the batch: its images are read (local paths or ``s3://`` URIs, with
    ``s3_client``) and checked against Haut's limits (decodable JPEG/PNG, ≥ 256×256 px, ≤ 30 MiB; EXIF
    orientation applied, shrunk to ``max_side`` if given), its subject is found by name or created once
    (``subjects``, shared by a run's batches), then signed URL(s) → PUT → compute, and its results are
    polled with backoff from the moment it is computed (poll settings default to the block's). At most
    ``concurrency`` requests in flight. The batch runs whole on the event loop of the account's session
    (``credentials.session()``: one client and one login for the process).

    Outcomes: ``done`` (``rows``: the metric rows), ``rejected`` (unusable input, with the reason: nothing
    sent), ``failed`` (the service refused, the analysis failed, or results not in by the timeout:
    ``pending``). Identical analyses of the batch (same subject and bytes) are sent once.

    Resuming: with a ``journal`` (and the ``state`` an earlier run left in it), every step is journalled
    (image records before any byte is sent); analyses done or failed earlier are returned from it without a
    request (``resumed``), computed ones are polled again. ``gate`` bounds how many batches send at once
    (held while sending, not while polling); with ``senders`` (shared by a run's batches), polls make way
    for batches that are sending. A failure while sending raises; one while collecting leaves the computed
    analyses ``failed`` and ``pending`` (a re-run collects them).

    Example:
        ```python
        from tasks.haut_batch import AnalysisImage, AnalysisUnit

        outcomes = await analyse_haut_batch("my-haut", dataset.id, [
            AnalysisUnit(unit=1, subject="participant-1", images=[AnalysisImage(item=1, source="p1.jpg")]),
        ])
        ```
    """
    journal = journal or GroupCommit(None)  # None: nothing kept, nothing resumed
    state = state or JournalState()

    async def on_session(client: HautClient) -> list[UnitOutcome]:  # the session's own client, on its loop
        poll = client.poll_settings(
            initial_delay=poll_initial_delay, max_delay=poll_max_delay, timeout=results_timeout
        )
        limit = asyncio.Semaphore(max(1, concurrency))
        waiting: dict[int, asyncio.Task[UnitOutcome]] = {}
        records: list[dict[str, Any]] = []  # results, journalled together when the batch ends

        def wait(outcome: UnitOutcome) -> None:
            waiting[outcome.unit] = asyncio.ensure_future(
                wait_for_results(
                    client, dataset_id, outcome, journal, poll, limit, api_version, records, senders
                )
            )

        try:
            try:
                async with gate or contextlib.nullcontext():
                    with senders.sending() if senders else contextlib.nullcontext():
                        outcomes = await submit_batch(
                            client,
                            dataset_id,
                            units,
                            journal,
                            state,
                            subjects or SubjectResolver(client, dataset_id, {}),
                            api_version=api_version,
                            max_side=max_side,
                            concurrency=concurrency,
                            s3_client=s3_client,
                            limit=limit,
                            on_submitted=wait,
                        )
            except BaseException:
                for pending in waiting.values():
                    pending.cancel()
                raise
            for outcome in outcomes:  # e.g. a copy of an identical analysis of the batch
                if outcome.status == "submitted" and outcome.unit not in waiting:
                    wait(outcome)
            try:
                finished = dict(zip(waiting, await asyncio.gather(*waiting.values()), strict=True))
            except Exception as exc:  # computed: a re-run collects the results
                for pending in waiting.values():
                    pending.cancel()
                run_logger().error("collecting the results of a batch failed: %s", type(exc).__name__)
                note = f"collecting results failed: {exc}; re-run to collect them"
                return [
                    o.settle("failed", note, pending=True) if o.status == "submitted" else o for o in outcomes
                ]
            return [finished.get(o.unit, o) for o in outcomes]
        finally:
            # One write for the batch's results (a crash before it only means polling those again on a re-run).
            await journal.append(*records)

    return await _call(credentials, on_session)
