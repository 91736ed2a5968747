"""The engine of ``tasks.haut.analyse_haut_batch``: Haut analyses sent and collected in one batch, resumably.

An analysis (``AnalysisUnit``) is a v1 image or a v3 batch of up to three sides of one subject, its images
named by path or ``s3://`` URI. ``submit_batch`` reads, checks and sends a batch's analyses;
``wait_for_results`` polls one analysis's results (the task runs both, holding the caller's gate only while
sending). Resuming after a crash rests on a journal (``tasks.journal.GroupCommit``, ``JournalState``): a record between
"signed URL issued" and "bytes sent" (an uploaded photo is never lost track of), another once the compute is
accepted, the results at the end; analyses an earlier run computed are only polled again. Subjects are found
by name or created once (``SubjectResolver``, also behind ``tasks.haut.ensure_haut_subjects``).

Privacy: subject names travel only inside task inputs and outputs (never persisted by Prefect: the batch
task does not persist results); log lines name counts and error types only; image names in Haut derive
from the analysis key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, Field

from clients.errors import ApiError, InputError, OutcomeUnknownError
from clients.haut import HautClient, PollSettings
from clients.haut_models import SIDE_IDS, AlgorithmResult, Side, Subject, SubjectSpec, V3Results
from clients.timing import SYSTEM_CLOCK, Clock
from tasks.haut_images import Prepared, prepare_image, read_error, read_image_bytes
from tasks.haut_results import Row, flatten_v1, flatten_v3, plain, v1_failure, v3_failure
from tasks.journal import GroupCommit


# --- analyses and their outcomes ------------------------------------------------------------------------------
class AnalysisImage(BaseModel):
    """One image of an analysis: ``item`` numbers it for the caller; ``source`` is a local path or s3:// URI."""

    item: int
    source: str  # never written to a log or an artifact: a path may hold a person's name
    side: Side = "front"


class AnalysisUnit(BaseModel):
    """One analysis: a v1 image, or a v3 batch of up to three sides of one subject (``subject`` is its name;
    ``subject_id`` once known)."""

    unit: int
    subject: str
    subject_id: str | None = None
    images: list[AnalysisImage]


class ImageOutcome(BaseModel):
    item: int
    status: Literal["done", "rejected", "failed", "submitted"]
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None  # of the file as read
    uploaded_sha256: str | None = None  # of the bytes sent (differs after an EXIF rotation or a downscale)
    transform: str | None = None
    image_id: str | None = None


class UnitOutcome(BaseModel):
    """What became of one analysis.

    ``submitted`` (only inside a batch, between sending and results): computed, results to
    collect. ``pending`` on a failed one: computed, results not in before the timeout (a re-run collects them).
    """

    unit: int
    status: Literal["done", "rejected", "failed", "submitted"]
    key: str | None = None
    error: str | None = None
    warnings: str | None = None
    resumed: bool = False  # finished by an earlier run: nothing was sent this time
    pending: bool = False
    uploaded: bool = False  # this run sent image bytes to Haut
    subject_id: str | None = None
    batch_id: str | None = None
    image_ids: dict[str, str] = Field(default_factory=dict)  # side -> Haut image id
    images: list[ImageOutcome] = Field(default_factory=list)
    rows: list[Row] = Field(default_factory=list)  # MetricRow fields, as plain tuples

    def settle(self, status: str, error: str | None = None, **changes: Any) -> UnitOutcome:
        """A copy with a final ``status``; images not rejected on their own share it (and the error)."""
        images = [
            i if i.status == "rejected" else i.model_copy(update={"status": status, "reason": error})
            for i in self.images
        ]
        return self.model_copy(update={"status": status, "error": error, "images": images, **changes})


# --- journal ---------------------------------------------------------------------------------------------------
def analysis_key(
    api_version: str, dataset_id: str, subject: str, side_hashes: Mapping[str, str], prep: str
) -> str:
    """Identity of one analysis across runs: API, dataset, subject, each side's content hash, preparation."""
    payload = json.dumps([api_version, dataset_id, subject, sorted(side_hashes.items()), prep])
    return hashlib.sha256(payload.encode()).hexdigest()


def prep_signature(max_side: int | None) -> str:
    return f"exif-upright;max_side={max_side or 0}"


class JournalState:
    """What a journal says about each analysis key and subject (the records: see the module docstring).

    A plain class on purpose: Prefect does not walk it when it is passed to a task.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]] = ()) -> None:
        self.units: dict[str, dict[str, Any]] = {}
        self._photos: dict[str, bool] = {}
        for record in records:
            self.apply(record)

    def apply(self, record: Mapping[str, Any]) -> None:
        kind, key = record.get("t"), record.get("k")
        if kind == "uploading":
            self.units[key] = {
                "phase": "uploading",
                "subject_id": record["subject_id"],
                "batch_id": record["batch_id"],
                "image_ids": dict(record["image_ids"]),
                "sha": dict(record.get("sha") or {}),
            }
            self._photos[record["subject_id"]] = True
        elif kind in ("computed", "done", "failed") and key in self.units:
            unit = self.units[key]
            unit["phase"] = kind
            if kind == "done":
                unit["rows"] = plain(record.get("rows") or [])
                unit["warnings"] = record.get("warnings")
            elif kind == "failed":
                unit["error"] = record.get("error")
        elif kind == "photos_deleted":
            self._photos[record["subject_id"]] = False

    def unit(self, key: str) -> dict[str, Any] | None:
        return self.units.get(key)

    def photos_pending(self, subject_id: str) -> bool:
        """Photos of this subject were uploaded (by any run of this journal) and not deleted since."""
        return self._photos.get(subject_id, False)


# --- subjects --------------------------------------------------------------------------------------------------
class SubjectResolver:
    """Subjects by name, for the analyses of one run (``id_of``) or ``tasks.haut.ensure_haut_subjects``.

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
        self._subjects: dict[str, Subject] = {}
        self._failed: dict[str, Exception] = {}
        self._creating: dict[str, asyncio.Future[Subject]] = {}
        self._listed = False
        self._lists_started = 0
        self._list_lock = asyncio.Lock()

    async def id_of(self, name: str) -> str:
        """The id of the subject ``name``; raises ``ApiError`` / ``InputError`` if it cannot be had."""
        return (await self.subject(name)).id

    async def subject(self, name: str) -> Subject:
        """The subject ``name``, found or created; raises ``ApiError`` / ``InputError`` if it cannot be had."""
        if name in self._subjects:
            return self._subjects[name]
        if name in self._failed:
            raise self._failed[name]
        if not self._listed:
            async with self._list_lock:
                if not self._listed:
                    await self._list()
            if name in self._subjects:
                return self._subjects[name]
        creating = self._creating.get(name)
        if creating is None:
            creating = self._creating[name] = asyncio.ensure_future(self._create(name))
        # Shielded: one caller's cancellation must not cancel a creation others are waiting for.
        return await asyncio.shield(creating)

    async def _list(self) -> None:
        self._lists_started += 1
        for subject in await self.client.list_subjects(self.dataset_id):
            self._subjects.setdefault(subject.name or "", subject)  # oldest first: the service lists by id
        self._listed = True

    async def _create(self, name: str) -> Subject:
        spec = self.specs.get(name) or SubjectSpec(name=name)
        try:
            try:
                self._subjects[name] = await self.client.create_subject(self.dataset_id, spec)
            except OutcomeUnknownError:
                # The create may have gone through: look (once more) before calling it failed.
                lists_before = self._lists_started
                async with self._list_lock:
                    if self._lists_started == lists_before:  # no listing began after the lost answer
                        await self._list()
                if name not in self._subjects:
                    raise ApiError(
                        self.client.service,
                        "create_subject",
                        "the answer to creating the subject was lost and it is not listed (yet)",
                        retryable=True,
                    ) from None
            return self._subjects[name]
        except (ApiError, InputError) as exc:
            transient = isinstance(exc, ApiError) and (exc.retryable or exc.status in (401, 403))
            if not transient:
                self._failed[name] = exc
            raise
        finally:
            del self._creating[name]


# --- sending and collecting ----------------------------------------------------------------------------------
Api = Literal["v1", "v3"]


class SendingBatches:
    """Batches of a run that are sending right now; due result polls make way for them.

    Sending is the critical path: every photo must be uploaded and computed before Haut can start on it,
    while a finished result keeps. So a poll that falls due while some batch is sending waits until none is,
    but never longer than ``poll_max_delay``: a long run still collects results as it goes, and the backlog
    is polled while Haut processes the last photos. A plain class on purpose: Prefect does not walk it.
    """

    def __init__(self) -> None:
        self.count = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        self.count += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._quiet.set()

    async def quiet(self, at_most: float, clock: Clock = SYSTEM_CLOCK) -> None:
        """Return once no batch is sending, or after ``at_most`` seconds of ``clock``."""
        if not self.count:
            return
        waits = [asyncio.ensure_future(self._quiet.wait()), asyncio.ensure_future(clock.sleep(at_most))]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


class _Work:
    """One analysis while ``submit_batch`` runs."""

    def __init__(self, unit: AnalysisUnit) -> None:
        self.unit = unit
        self.images: dict[int, ImageOutcome] = {
            i.item: ImageOutcome(item=i.item, status="failed") for i in unit.images
        }
        self.ready: dict[str, Prepared] = {}  # side -> prepared bytes
        self.side_item: dict[str, int] = {}
        self.key: str | None = None
        self.batch_id: str | None = None
        self.image_ids: dict[str, str] = {}
        self.targets: dict[str, Any] = {}
        self.outcome: UnitOutcome | None = None
        self.uploaded = False
        self.read_failures: list[str] = []  # transient (not the image's fault): the whole analysis waits

    def finish(self, status: str, error: str | None = None, **extra: Any) -> None:
        item_side = {n: s for s, n in self.side_item.items()}
        for image in self.images.values():
            if image.status != "rejected":
                image.status = status  # type: ignore[assignment]
                image.reason = error if status in ("failed", "rejected") else None
                image.image_id = self.image_ids.get(item_side.get(image.item, ""))
        self.outcome = UnitOutcome(
            unit=self.unit.unit,
            status=status,  # type: ignore[arg-type]
            key=self.key,
            error=error,
            subject_id=self.unit.subject_id,
            batch_id=self.batch_id,
            image_ids=dict(self.image_ids),
            uploaded=self.uploaded,
            images=sorted(self.images.values(), key=lambda i: i.item),
            **extra,
        )


def _read_and_prepare(source: str, s3_client: Any, max_side: int | None) -> Prepared:
    return prepare_image(read_image_bytes(source, s3_client), max_side)  # one trip to a thread, not two


def _file_name(key: str, side: str, fmt: str) -> str:
    """Image name in Haut: derived from the analysis key (no personal data), e.g. ``3f2a…-front.jpg``."""
    return f"{key[:20]}-{side}.{'png' if fmt == 'PNG' else 'jpg'}"


def _is_gone(exc: ApiError) -> bool:
    """The service refused a resumed compute for good (e.g. the images were never uploaded)."""
    return not exc.retryable and exc.status in (400, 404, 409, 410, 422)


async def _results_now(
    client: HautClient, api_version: str, dataset_id: str, outcome: UnitOutcome
) -> list[AlgorithmResult] | V3Results | None:
    """An analysis's results if they are complete, else None."""
    if api_version == "v1":
        image_id = next(iter(outcome.image_ids.values()))
        found = await client.get_results_v1(dataset_id, outcome.subject_id, outcome.batch_id, image_id)  # type: ignore[arg-type]
        return found or None
    v3 = await client.get_results_v3(outcome.batch_id)  # type: ignore[arg-type]
    return v3 if v3.all_algorithms_calculated else None


def _conclude(outcome: UnitOutcome, results: list[AlgorithmResult] | V3Results) -> tuple[UnitOutcome, dict]:
    """The final outcome from complete results, and its journal record."""
    if isinstance(results, V3Results):
        error, warnings, rows = v3_failure(results), None, plain(flatten_v3(results.parameters))
    else:
        (error, warnings), rows = v1_failure(results), plain(flatten_v1(results))
    if error:
        return outcome.settle("failed", error), {"t": "failed", "k": outcome.key, "error": error}
    record = {"t": "done", "k": outcome.key, "rows": rows, "warnings": warnings}  # tuples dump as lists
    return outcome.settle("done", None, rows=rows, warnings=warnings), record


async def submit_batch(
    client: HautClient,
    dataset_id: str,
    units: list[AnalysisUnit],
    journal: GroupCommit,
    state: JournalState,
    subjects: SubjectResolver,
    api_version: Api = "v1",
    max_side: int | None = None,
    concurrency: int = 8,
    s3_client: Any = None,
    limit: asyncio.Semaphore | None = None,
    on_submitted: Callable[[UnitOutcome], None] | None = None,
) -> list[UnitOutcome]:
    """Read, validate and send a batch of analyses; resumable through ``journal``. Results: ``collect_results``.

    Per analysis: read and prepare every image (rejected with the reason if unusable); its key (API, dataset,
    subject, content hashes, preparation) is looked up in ``state``:

    - ``done`` / ``failed`` in an earlier run: returned from the journal (``resumed``), nothing is sent;
    - ``computed``: returned as ``submitted`` (its results are collected again);
    - ``uploading`` (a run stopped between creating the image records and the compute): one results check;
      if none, compute again; if Haut refuses that (the bytes never arrived), a fresh upload;
    - unknown: the subject from ``subjects`` (created on first need), signed URL(s) → journal ``uploading`` →
      PUT → compute → journal ``computed`` → ``submitted``.

    Analyses go through these steps one after the other, ``2 × concurrency`` of them at a time (so the first
    photos are on their way while later ones are still being read), with at most ``concurrency`` reads or
    requests at once (or as many as ``limit``, a semaphore shared with the caller's own requests). Identical
    analyses in one batch (same subject, same bytes) are sent once. ``on_submitted`` is called with each
    analysis as soon as it is ``submitted`` (to start waiting for its results). One outcome per unit, in
    order; image bytes are released once sent.

    Example:
        ```python
        sent = await submit_batch(client, dataset.id, units, writer, state, resolver)
        outcomes = await collect_results(client, dataset.id, sent, writer)
        ```
    """
    limit = limit or asyncio.Semaphore(max(1, concurrency))  # reads and requests in flight
    # Analyses under way: twice the requests in flight, as each spends part of its time reading its image
    # or waiting for the journal; that keeps ``concurrency`` requests going (and bounds the bytes held).
    slots = asyncio.Semaphore(2 * max(1, concurrency))
    prep = prep_signature(max_side)
    work = [_Work(u) for u in units]
    first_of: dict[str, _Work] = {}
    duplicates: list[tuple[_Work, _Work]] = []

    def submitted(w: _Work) -> None:
        w.finish("submitted")
        if on_submitted is not None:
            on_submitted(w.outcome)  # type: ignore[arg-type]

    async def prepare(w: _Work, image: AnalysisImage) -> None:
        async with limit:
            try:
                w.ready[image.side] = await asyncio.to_thread(
                    _read_and_prepare, image.source, s3_client, max_side
                )
                w.side_item[image.side] = image.item
            except Exception as exc:  # one unusable image never stops the batch
                status, reason = read_error(exc, image.source)
                if status == "rejected":
                    w.images[image.item] = ImageOutcome(item=image.item, status="rejected", reason=reason)
                else:
                    w.read_failures.append(reason)

    async def compute(w: _Work) -> None:
        async with limit:
            if api_version == "v1":
                await client.compute_v1(w.batch_id)  # type: ignore[arg-type]
            else:
                await client.compute_v3(w.batch_id)  # type: ignore[arg-type]

    async def resume(w: _Work) -> None:
        """An analysis an earlier run left between "image records created" and "compute accepted"."""
        try:
            w.finish("submitted")
            async with limit:
                results = await _results_now(client, api_version, dataset_id, w.outcome)  # type: ignore[arg-type]
            if results is not None:
                w.outcome, record = _conclude(w.outcome, results)  # type: ignore[arg-type]
                await journal.append(record)
                return
            w.outcome = None
            await compute(w)
        except ApiError as exc:
            if _is_gone(exc):  # the bytes never arrived: start over
                w.outcome, w.batch_id, w.image_ids = None, None, {}
                await send(w)
            else:
                w.finish("failed", str(exc))
            return
        await journal.append({"t": "computed", "k": w.key})
        submitted(w)

    async def create_records(w: _Work) -> None:
        names = {s: _file_name(w.key, s, p.format) for s, p in w.ready.items()}  # type: ignore[arg-type]
        async with limit:
            if api_version == "v1":
                (side,) = names
                record = await client.request_upload_v1(
                    w.unit.subject_id,  # type: ignore[arg-type]
                    side_id=SIDE_IDS[side],
                    name=names[side],
                )
                w.batch_id, w.image_ids = record.image_batch_id, {side: record.id}
                w.targets = {side: record.upload_url}
            else:
                upload = await client.request_upload_v3(w.unit.subject_id, names)  # type: ignore[arg-type]
                w.targets = upload.targets()
                missing = sorted(set(names) - set(w.targets))
                if missing:
                    raise ApiError(client.service, "request_upload_v3", f"no upload target for {missing}")
                w.batch_id = upload.image_batch_id
                w.image_ids = {s: t.id or "" for s, t in w.targets.items()}

    async def put(w: _Work, side: str) -> None:
        async with limit:
            await client.upload(w.targets[side], w.ready[side].data, check=False)
        w.uploaded = True  # from now on Haut holds photo bytes of this subject

    async def send(w: _Work) -> None:
        """A new analysis: image records first (journalled before any byte is sent), then bytes and compute."""
        if w.unit.subject_id is None:
            try:
                async with limit:
                    w.unit.subject_id = await subjects.id_of(w.unit.subject)
            except (ApiError, InputError) as exc:
                w.finish("failed", f"subject could not be created or found: {exc}")
                return
        try:
            await create_records(w)
        except (ApiError, InputError) as exc:
            w.finish("failed" if isinstance(exc, ApiError) else "rejected", str(exc))
            return
        await journal.append(
            {
                "t": "uploading",
                "k": w.key,
                "subject_id": w.unit.subject_id,
                "batch_id": w.batch_id,
                "image_ids": w.image_ids,
                "sha": {s: p.uploaded_sha256 for s, p in w.ready.items()},
            }
        )
        try:
            await asyncio.gather(*(put(w, s) for s in w.ready))
            await compute(w)
        except OutcomeUnknownError as exc:  # the compute may have been accepted: a re-run checks first
            w.finish("failed", f"{exc}; re-run to check and collect its results")
            return
        except ApiError as exc:
            w.finish("failed", str(exc))
            return
        finally:
            w.ready = {s: p._replace(data=b"") for s, p in w.ready.items()}  # free the bytes
        await journal.append({"t": "computed", "k": w.key})
        submitted(w)

    async def analyse(w: _Work) -> None:
        async with slots:
            await asyncio.gather(*(prepare(w, i) for i in w.unit.images))
            for side, p in w.ready.items():
                w.images[w.side_item[side]] = ImageOutcome(
                    item=w.side_item[side],
                    status="failed",
                    width=p.width,
                    height=p.height,
                    sha256=p.sha256,
                    uploaded_sha256=p.uploaded_sha256,
                    transform=p.transform,
                )
            if w.read_failures:  # send nothing now: a re-run sends the analysis with all its sides
                w.finish("failed", "; ".join(sorted(set(w.read_failures))))
                return
            if not w.ready:
                w.finish("rejected", "; ".join(sorted({i.reason or "" for i in w.images.values()})))
                return
            side_hashes = {s: p.sha256 for s, p in w.ready.items()}
            w.key = analysis_key(api_version, dataset_id, w.unit.subject, side_hashes, prep)
            if w.key in first_of:
                duplicates.append((w, first_of[w.key]))
                return
            first_of[w.key] = w
            known = state.unit(w.key)
            if known is None:
                await send(w)
                return
            w.batch_id, w.image_ids = known["batch_id"], dict(known["image_ids"])
            w.unit.subject_id = known["subject_id"]
            if known["phase"] == "done":
                w.finish("done", resumed=True, rows=known["rows"], warnings=known.get("warnings"))
            elif known["phase"] == "failed":
                w.finish("failed", known.get("error"), resumed=True)
            elif known["phase"] == "computed":
                submitted(w)
            else:
                await resume(w)

    await asyncio.gather(*(analyse(w) for w in work))
    for w, original in duplicates:
        assert original.outcome is not None
        w.key, w.batch_id, w.image_ids = original.key, original.batch_id, original.image_ids
        w.unit.subject_id = original.unit.subject_id
        w.finish(original.outcome.status, original.outcome.error, resumed=original.outcome.resumed)
        w.outcome = w.outcome.model_copy(  # type: ignore[union-attr]
            update={
                "rows": original.outcome.rows,
                "warnings": f"same subject and image as analysis {original.unit.unit}",
            }
        )
    assert all(w.outcome is not None for w in work), (
        "every analysis ends as done, failed, rejected or submitted"
    )
    return [w.outcome for w in work]  # type: ignore[misc]


async def wait_for_results(
    client: HautClient,
    dataset_id: str,
    outcome: UnitOutcome,
    journal: GroupCommit,
    poll: PollSettings,
    limit: asyncio.Semaphore,
    api_version: Api = "v1",
    records: list[dict[str, Any]] | None = None,
    senders: SendingBatches | None = None,
) -> UnitOutcome:
    """Poll one ``submitted`` analysis with backoff until its results are complete or ``poll.timeout`` passed;
    journal the end (``done`` with its metric rows, or ``failed`` when Haut's analysis failed), or add that
    record to ``records`` for the caller to journal with others. With ``senders``, a due poll first waits
    (up to ``poll.max_delay``) while batches are sending.

    Results not in by the timeout: ``failed`` with ``pending=True`` (the journal still says ``computed``, so a
    re-run collects them without sending anything). A transient error is simply polled again.
    """
    delays = poll.delays()
    started = client.clock.monotonic()
    while True:
        remaining = poll.timeout - (client.clock.monotonic() - started)
        if remaining <= 0:
            note = (
                f"results not ready after {poll.timeout:g} s; they may still arrive (re-run to collect them)"
            )
            return outcome.settle("failed", note, pending=True)
        await client.clock.sleep(min(next(delays), remaining))
        if senders is not None:
            await senders.quiet(poll.max_delay, client.clock)
        async with limit:
            try:
                results = await _results_now(client, api_version, dataset_id, outcome)
            except ApiError as exc:
                if exc.retryable:
                    continue
                return outcome.settle("failed", str(exc))
        if results is not None:
            final, record = _conclude(outcome, results)
            if records is None:
                await journal.append(record)
            else:
                records.append(record)
            return final


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger, or this module's outside a run (``.fn()``)."""
    try:
        return get_run_logger()
    except MissingContextError:  # called with .fn() outside a run
        return logging.getLogger(__name__)
