"""Haut subjects of a skin-analysis run, found by name or created once; and the GDPR photo deletion."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.errors import ApiError, InputError, OutcomeUnknownError
from clients.haut import HautClient
from clients.haut_models import SubjectSpec
from tasks.skin.journal import JournalWriter


class SubjectResolver:
    """Subject ids by name for the analyses of one run.

    The dataset's subjects are listed once, on first need; a name not among them is created once, when an
    analysis first needs it (only subjects with a usable image: no name is sent to Haut for nothing).
    Concurrent analyses of one subject share its creation, and different subjects are created concurrently
    (bounded by the callers' own request limits). A name that exists is never created again, so re-runs
    create nothing; a create whose answer was lost is checked by listing again before it counts as failed.

    Failures that concern one subject (refused fields, an invalid name) are kept: its later analyses fail
    with the same error without another request. Transient and credential failures are not kept: a later
    analysis tries again. A plain class on purpose: Prefect does not walk it when it is passed to a task.
    """

    def __init__(self, client: HautClient, dataset_id: str, specs: Mapping[str, SubjectSpec]) -> None:
        self.client, self.dataset_id = client, dataset_id
        self.specs = dict(specs)
        self._ids: dict[str, str] = {}
        self._failed: dict[str, Exception] = {}
        self._creating: dict[str, asyncio.Future[str]] = {}
        self._listed = False
        self._lists_started = 0
        self._list_lock = asyncio.Lock()

    async def id_of(self, name: str) -> str:
        """The id of the subject ``name``; raises ``ApiError`` / ``InputError`` if it cannot be had."""
        if name in self._ids:
            return self._ids[name]
        if name in self._failed:
            raise self._failed[name]
        if not self._listed:
            async with self._list_lock:
                if not self._listed:
                    await self._list()
            if name in self._ids:
                return self._ids[name]
        creating = self._creating.get(name)
        if creating is None:
            creating = self._creating[name] = asyncio.ensure_future(self._create(name))
        # Shielded: one caller's cancellation must not cancel a creation others are waiting for.
        return await asyncio.shield(creating)

    async def _list(self) -> None:
        self._lists_started += 1
        for subject in await self.client.list_subjects(self.dataset_id):
            self._ids.setdefault(subject.name or "", subject.id)  # oldest first: the service lists by id
        self._listed = True

    async def _create(self, name: str) -> str:
        spec = self.specs.get(name) or SubjectSpec(name=name)
        try:
            try:
                subject = await self.client.create_subject(self.dataset_id, **spec.model_dump())
                self._ids[name] = subject.id
            except OutcomeUnknownError:
                # The create may have gone through: look (once more) before calling it failed.
                lists_before = self._lists_started
                async with self._list_lock:
                    if self._lists_started == lists_before:  # no listing began after the lost answer
                        await self._list()
                if name not in self._ids:
                    raise ApiError(
                        self.client.service,
                        "create_subject",
                        "the answer to creating the subject was lost and it is not listed (yet)",
                        retryable=True,
                    ) from None
            return self._ids[name]
        except (ApiError, InputError) as exc:
            transient = isinstance(exc, ApiError) and (exc.retryable or exc.status in (401, 403))
            if not transient:
                self._failed[name] = exc
            raise
        finally:
            del self._creating[name]


@task(name="skin-delete-photos", cache_policy=NO_CACHE)
async def delete_skin_photos(
    client: HautClient, subject_ids: list[str], journal: JournalWriter, concurrency: int = 8
) -> dict[str, str | None]:
    """GDPR: delete the photo files of these subjects (records and results stay); ``{id: error or None}``.

    Each success is journalled (``photos_deleted``) so a re-run does not delete again.

    Example:
        ```python
        errors = await delete_skin_photos(client, [subject_id], writer)
        ```
    """
    limit = asyncio.Semaphore(max(1, concurrency))
    out: dict[str, str | None] = {}

    async def delete(sid: str) -> None:
        async with limit:
            try:
                await client.delete_subject_photos(sid)
                out[sid] = None
            except ApiError as exc:
                out[sid] = str(exc)

    await asyncio.gather(*(delete(s) for s in dict.fromkeys(subject_ids)))
    await journal.append(*({"t": "photos_deleted", "subject_id": s} for s, e in out.items() if e is None))
    return out
