"""One skin-analysis run between reading its inputs and writing its reports: its inputs, the batches sent
through the account's Haut session, and the GDPR photo deletion as subjects finish."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from blocks.haut import HautCredentials
from clients.errors import ApiError, InputError
from clients.haut import HautClient
from clients.haut_models import SubjectSpec
from tasks.haut import analyse_haut_batch
from tasks.haut_batch import JournalState, SendingBatches, SubjectResolver, UnitOutcome
from tasks.journal import GroupCommit
from tasks.reports import Progress

from .inputs import SkinInputs, SkinUnit, collect_skin_inputs, is_manifest
from .options import PollingOptions, PrivacyOptions, UploadOptions
from .outputs import ARTIFACT
from .tables import ReportBuilder


async def read_inputs(source: str, s3: Any) -> tuple[SkinInputs, list[str]]:
    """The source's images, and the problems that make the run Failed whatever else happens: a source that
    cannot be read, or holds no image. Logs counts only (names and paths are personal data)."""
    try:
        inputs = await collect_skin_inputs(source, s3)
    except InputError as exc:
        return SkinInputs(images=[]), [f"the source cannot be read: {exc}"]
    images = inputs.images
    get_run_logger().info(
        "%d image(s) of %d subject(s) (%d other file(s) left out, %d refused as input)",
        len(images),
        len({i.subject for i in images if i.rejected is None and i.subject}),
        inputs.ignored_files,
        sum(1 for i in images if i.rejected),
    )
    if images:
        return inputs, []
    others = f" ({inputs.ignored_files} other file(s) left out)" if inputs.ignored_files else ""
    kind = (
        "manifest lists"
        if is_manifest(source)
        else "prefix holds"
        if source.startswith("s3://")
        else "folder holds"
    )
    return inputs, [f"the source {kind} no image{others}"]


class SkinRun:
    """The analyses of one run, sent in coarse batches through the account's Haut session.

    ``parallel_batches`` batches read and upload at once (a subject's analyses together, so its photos can be
    deleted sooner); each batch is one task run of ``tasks.haut.analyse_haut_batch``. A batch that fails as a whole fails
    its analyses, not the run. With ``delete_photos``, a subject's photos are deleted once all its analyses
    of the run have results.
    """

    def __init__(
        self,
        units: Sequence[SkinUnit],
        state: JournalState,
        journal: GroupCommit,
        api_version: str,
        upload: UploadOptions,
        polling: PollingOptions,
        privacy: PrivacyOptions,
        report: ReportBuilder,
        s3: Any = None,
    ) -> None:
        self.units, self.state, self.journal, self.api_version = units, state, journal, api_version
        self.upload, self.polling, self.privacy, self.s3 = upload, polling, privacy, s3
        self.report = report  # each finished batch adds its rows
        self.outcomes: dict[int, UnitOutcome] = {}
        self.progress = Progress(f"{ARTIFACT}-progress", f"Analyses finished of {len(units)} ({api_version})")
        self.deleted: set[str] = set()  # subjects whose photos this run deleted
        self._remaining = Counter(u.subject for u in units)  # analyses not finished yet, per subject name
        self._subject_id_of: dict[str, str] = {}
        self._has_photos: set[str] = set()  # photo files in Haut (this run, or an earlier unfinished one)
        self._waiting_results: set[str] = set()
        order = sorted(units, key=lambda u: (u.subject, u.unit))
        size = upload.batch_size
        self.batches = [order[i : i + size] for i in range(0, len(order), size)]

    async def analyse(
        self, credentials: HautCredentials, dataset_id: str, subjects: Mapping[str, SubjectSpec]
    ) -> None:
        """Send every batch (``parallel_batches`` at once) and collect their outcomes."""
        resolver = SubjectResolver(credentials.session(), dataset_id, subjects)
        gate = asyncio.Semaphore(self.upload.parallel_batches)  # batches reading and uploading at once
        senders = SendingBatches()  # result polls make way for batches that are sending
        await asyncio.gather(
            *(
                self._batch(credentials, dataset_id, number, batch, resolver, gate, senders)
                for number, batch in enumerate(self.batches, 1)
            )
        )

    async def _batch(
        self,
        credentials: HautCredentials,
        dataset_id: str,
        number: int,
        batch: list[SkinUnit],
        resolver: SubjectResolver,
        gate: asyncio.Semaphore,
        senders: SendingBatches,
    ) -> None:
        logger = get_run_logger()
        try:
            results = await analyse_haut_batch(
                credentials,
                dataset_id,
                quote(batch),
                api_version=self.api_version,
                concurrency=self.upload.concurrency,
                max_side=self.upload.max_side or None,
                s3_client=self.s3,
                poll_initial_delay=self.polling.initial_delay or None,
                poll_max_delay=self.polling.max_delay or None,
                results_timeout=self.polling.results_timeout or None,
                journal=self.journal,
                state=self.state,
                subjects=resolver,
                gate=gate,
                senders=senders,
            )
        except Exception as exc:  # a batch-wide failure fails its analyses, not the run
            logger.error(
                "batch %d of %d failed as a whole: %s", number, len(self.batches), type(exc).__name__
            )
            results = [UnitOutcome(unit=u.unit, status="failed", error=f"batch failed: {exc}") for u in batch]
        self._record(batch, results)
        counts = Counter(o.status for o in results)
        logger.info(
            "batch %d of %d: %d analysed, %d from earlier runs, %d failed, %d rejected",
            number,
            len(self.batches),
            sum(1 for o in results if o.status == "done" and not o.resumed),
            sum(1 for o in results if o.resumed),
            counts["failed"],
            counts["rejected"],
        )
        done, total = len(self.outcomes), len(self.units)
        await asyncio.gather(
            self.report.run(self.report.add, batch, {o.unit: o for o in results}),  # its report rows
            self._delete_finished_photos(credentials, batch),
            self.progress.update(100.0 * done / max(1, total), f"{done} of {total} analyses finished"),
        )

    def _record(self, batch: list[SkinUnit], results: list[UnitOutcome]) -> None:
        for unit, outcome in zip(batch, results, strict=True):
            self.outcomes[outcome.unit] = outcome
            self._remaining[unit.subject] -= 1
            if outcome.subject_id:
                self._subject_id_of[unit.subject] = outcome.subject_id
                if outcome.uploaded or self.state.photos_pending(outcome.subject_id):
                    self._has_photos.add(unit.subject)
            if outcome.pending:
                self._waiting_results.add(unit.subject)

    async def _delete_finished_photos(self, credentials: HautCredentials, batch: list[SkinUnit]) -> None:
        """GDPR: photos of the batch's subjects whose analyses all have results (none still waiting)."""
        if not self.privacy.delete_photos:
            return
        kept = self._waiting_results | self.deleted
        ready = [
            name
            for name in dict.fromkeys(u.subject for u in batch)
            if self._remaining[name] == 0 and name in self._has_photos and name not in kept
        ]
        if not ready:
            return
        ids = {name: self._subject_id_of[name] for name in ready}
        errors = await delete_skin_photos(
            credentials, list(ids.values()), self.journal, concurrency=self.upload.concurrency
        )
        self.deleted.update(name for name, sid in ids.items() if errors.get(sid) is None)
        failed = sum(map(bool, errors.values()))
        if failed:
            get_run_logger().warning("GDPR: photos of %d subject(s) could not be deleted", failed)

    @property
    def pending(self) -> set[int]:
        """Analyses computed whose results were not in by the timeout (a re-run collects them)."""
        return {n for n, o in self.outcomes.items() if o.pending}


@task(name="skin-delete-photos", cache_policy=NO_CACHE)
async def delete_skin_photos(
    credentials: HautCredentials | str, subject_ids: list[str], journal: GroupCommit, concurrency: int = 8
) -> dict[str, str | None]:
    """GDPR: delete the photo files of these subjects (records and results stay); ``{id: error or None}``.

    Each success is journalled (``photos_deleted``) so a re-run does not delete again. Runs on the event loop
    of the account's session, as the batches that write to the same journal do.

    Example:
        ```python
        errors = await delete_skin_photos("my-haut", [subject_id], writer)
        ```
    """
    creds = await HautCredentials.resolve(credentials)
    return await creds.session().within(_delete_photos, subject_ids, journal, concurrency)


async def _delete_photos(
    client: HautClient, subject_ids: list[str], journal: GroupCommit, concurrency: int
) -> dict[str, str | None]:
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
