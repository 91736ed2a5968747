"""Bulk migration of images into Micrio, with status polling, that resumes safely after any crash.

Micrio's own CLI keeps no journal and aborts a whole run on one bad image. This flow:

1. reads the sources: a manifest (CSV, Parquet or JSON lines with ``source_url`` and optional ``name``; local
   or ``s3://``) or an S3 prefix (``s3://bucket/prefix/``, each object presigned when it is added);
   duplicate and malformed rows are reported, never sent;
2. adds them with ``images/add`` in batches, writing every batch to a durable journal *before* the call
   (intent) and its Micrio ids right after (added), so the next batch never goes out before the last one is
   on disk;
3. polls: one ``folder/status`` call per round for the global view, ``image/status`` only for images that
   left processing (≤ 100 ids a call); transient errors (``uploadError``, ``statusUpdateError``, ``unknown``)
   are added again up to ``max_attempts``; ``originalNotFound`` and ``invalidImage`` are final;
4. writes a report with one row per source, and artifacts: progress, a summary table, the failures.

Re-running with the same source and target resumes from the journal: nothing already added is added again,
images in flight are polled to the end. After a ``kill -9`` at any moment, at most the one batch whose
``images/add`` was in flight can be added twice (its outcome is unknown, so it is sent again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pandas as pd
from prefect import flow, get_run_logger
from prefect_aws import S3Bucket
from pydantic import BaseModel, Field

from blocks.micrio import MicrioCredentials
from clients.errors import ApiError, InputError
from clients.micrio import FINAL_ERRORS, TRANSIENT_ERRORS, ImageStatus
from tasks.journal import Journal
from tasks.micrio import add_micrio_batch, await_micrio_progress, create_micrio_folder
from tasks.reports import Progress, counts_table, failures_markdown, publish_markdown, publish_table
from tasks.storage import BucketRef, list_keys, parse_s3_uri, presigned_get_url, s3_client_from_block
from tasks.tables import iter_table_chunks, write_table

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".psd", ".psb")
STATE_DIR = ".pipeline-state/micrio-migration"
REPORT_COLUMNS = [
    "row",
    "name",
    "source",
    "micrio_id",
    "status",
    "outcome",
    "error",
    "width",
    "height",
    "thumbnail",
    "attempts",
]


class MigrationSummary(BaseModel):
    """What a run did: item counts by outcome, and where the report and journal are."""

    folder_id: str | None
    total: int
    done: int
    failed: int
    rejected: int
    in_flight: int
    added_this_run: int
    report: str | None
    journal: str


@dataclass
class Item:
    """One source. ``key`` identifies it across runs (the manifest URL or the S3 object), ``url`` is sent."""

    row: int
    key: str
    name: str | None
    url: str | None = field(default=None, repr=False)
    attempts: int = 0
    micrio_id: str | None = None
    status: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: str | None = None
    rejected: str | None = None

    def needs_add(self, max_attempts: int) -> bool:
        """Never added, or failed transiently, with attempts left."""
        retryable = self.micrio_id is None or (self.status == "error" and self.error in TRANSIENT_ERRORS)
        return self.rejected is None and retryable and self.attempts < max_attempts

    def in_flight(self) -> bool:
        return self.micrio_id is not None and self.status not in ("ready", "error")

    def finished(self, max_attempts: int) -> bool:
        return not self.in_flight() and not self.needs_add(max_attempts)


# --- reading the sources ----------------------------------------------------------------------------------


def _s3_object_items(s3: Any, uri: str) -> list[Item]:
    bucket, prefix = parse_s3_uri(uri, field="source", require_key=False)
    items = []
    for row, key in enumerate(list_keys(BucketRef(s3, bucket), prefix), 1):
        item = Item(row=row, key=f"s3://{bucket}/{key}", name=posixpath.basename(key) or None)
        if key.endswith("/"):
            item.rejected = "folder marker, not an object"
        elif not key.lower().endswith(IMAGE_EXTENSIONS):
            item.rejected = f"not an image file extension ({', '.join(IMAGE_EXTENSIONS)})"
        else:  # S3 stores keys our presigning refuses (traversal, control characters): reject them here
            item.rejected = _uri_problem(item.key)
        items.append(item)
    return items


def _manifest_items(source: str, s3: Any) -> list[Item]:
    items: list[Item] = []
    seen: dict[str, int] = {}
    row = 0
    for chunk in iter_table_chunks(source, chunksize=20_000, s3_client=s3):
        if "source_url" not in chunk.columns:
            raise ValueError(
                f"{source}: the manifest needs a 'source_url' column (found: {', '.join(map(str, chunk.columns))})"
            )
        names = (
            chunk["name"] if "name" in chunk.columns else pd.Series([None] * len(chunk), index=chunk.index)
        )
        for url, name in zip(chunk["source_url"], names, strict=True):
            row += 1
            items.append(_manifest_item(row, url, name, seen))
    return items


def _manifest_item(row: int, url: Any, name: Any, seen: dict[str, int]) -> Item:
    name = None if name is None or (isinstance(name, float) and pd.isna(name)) else str(name).strip() or None
    if not isinstance(url, str) or not url.strip():
        return Item(row=row, key=f"row:{row}", name=name, rejected="source_url is empty")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "s3") or not parts.netloc:
        return Item(
            row=row, key=f"row:{row}", name=name, rejected="source_url must be an http(s) URL or an s3:// URI"
        )
    if any(c.isspace() for c in url):
        return Item(row=row, key=f"row:{row}", name=name, rejected="source_url contains whitespace")
    if url in seen:
        return Item(row=row, key=f"row:{row}", name=name, rejected=f"duplicate of row {seen[url]}")
    if parts.scheme == "s3" and (problem := _uri_problem(url)):
        return Item(row=row, key=f"row:{row}", name=name, rejected=problem)
    seen[url] = row
    return Item(row=row, key=url, name=name, url=None if parts.scheme == "s3" else url)


def _uri_problem(uri: str) -> str | None:
    try:
        parse_s3_uri(uri, field="source_url")
    except InputError as exc:
        return str(exc)
    return None


def read_sources(source: str, s3: Any) -> list[Item]:
    """Every source with its row number; rejected ones carry the reason."""
    if source.startswith("s3://") and source.endswith("/"):
        return _s3_object_items(s3, source)
    return _manifest_items(source, s3)


# --- the journal ------------------------------------------------------------------------------------------


@dataclass
class Replayed:
    folder_id: str | None  # the folder an earlier run created
    unknown: list[str]  # keys whose images/add was in flight at a crash: intent written, ids never recorded
    next_batch: int


def replay(records: list[dict[str, Any]], items: dict[str, Item]) -> Replayed:
    """Apply the journal to the items (attempts, Micrio ids, final statuses)."""
    folder_id = None
    open_batches: dict[int, list[str]] = {}
    next_batch = 0
    for rec in records:
        kind = rec["t"]
        if kind == "folder":
            folder_id = rec["id"]
        elif kind == "intent":
            open_batches[rec["batch"]] = rec["keys"]
            next_batch = max(next_batch, rec["batch"] + 1)
            for key in rec["keys"]:
                if key in items:
                    items[key].attempts += 1
        elif kind == "added":
            open_batches.pop(rec["batch"], None)
            for key, image_id in rec["ids"].items():
                if key in items:
                    item = items[key]
                    item.micrio_id, item.status, item.error = image_id, "queued", None
            for key, error in rec.get("failed", {}).items():
                if key in items:  # refused by Micrio: nothing was added, the attempt does not count
                    items[key].attempts -= 1
                    items[key].error = error
        elif kind == "final":
            for key, image_id, status, error, width, height, thumbnail in rec["items"]:
                item = items.get(key)
                if item is not None and item.micrio_id == image_id:
                    item.status, item.error = status, error
                    item.width, item.height, item.thumbnail = width, height, thumbnail
    unknown = [key for keys in open_batches.values() for key in keys if key in items]
    for key in unknown:  # a crash is not Micrio refusing the image: the attempt does not count
        items[key].attempts -= 1
    return Replayed(folder_id, unknown, next_batch)


def default_state_name(source: str, target: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps([source, target], sort_keys=True).encode()).hexdigest()[:16]
    return f"{STATE_DIR}/{digest}"


# --- the flow ---------------------------------------------------------------------------------------------


@flow(name="micrio-migration")
async def migrate_to_micrio(
    source: str,
    micrio_block: str = "micrio-demo",
    folder_id: str | None = None,
    create_folder_under: str | None = None,
    new_folder_name: str | None = None,
    new_folder_type: Literal["folder", "album", "space"] = "folder",
    s3_bucket_block: str | None = None,
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100,
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3,
    presign_hours: Annotated[float, Field(gt=0, le=168)] = 168,
    poll_initial_seconds: Annotated[float, Field(gt=0)] = 2.0,
    poll_max_seconds: Annotated[float, Field(gt=0)] = 15.0,
    timeout_minutes: Annotated[float, Field(gt=0)] = 24 * 60,
    journal: str | None = None,
    report: str | None = None,
) -> MigrationSummary:
    """Add images to Micrio and follow their tiling to the end; resumable.

    Args:
        source: A manifest (CSV, Parquet or JSON lines with a `source_url` column and an optional `name`), as a
            local path or `s3://bucket/key`; or an S3 prefix ending in `/` (`s3://bucket/photos/`), whose image
            objects are presigned for Micrio to fetch.
        micrio_block: Name of the saved Micrio Credentials block.
        folder_id: Existing Micrio folder (6 characters) to add the images to.
        create_folder_under: Instead of `folder_id`: create a new folder, album or space under this parent
            folder id (once: a re-run reuses it).
        new_folder_name: Name of the folder to create (default: its type).
        new_folder_type: What to create under `create_folder_under`.
        s3_bucket_block: Name of a saved prefect-aws S3 Bucket block, needed for `s3://` sources and for
            `s3://` journals or reports; its credentials may carry an endpoint URL.
        batch_size: Images per `images/add` call. At most one batch can be added twice after a crash.
        max_attempts: How many times an image may be added when Micrio reports a transient error
            (`uploadError`, `statusUpdateError`, `unknown`).
        presign_hours: Validity of the presigned URLs given to Micrio for S3 objects (at most 7 days).
        poll_initial_seconds: First wait between status rounds; it grows while nothing changes.
        poll_max_seconds: Longest wait between status rounds.
        timeout_minutes: Stop polling after this long; images still processing are reported as in flight and
            a re-run picks them up.
        journal: Where to keep the journal: a local path or an `s3://` prefix. Default: a file under
            `.pipeline-state/micrio-migration/` named after the source and target, so re-running the same
            input resumes.
        report: Where to write the report (`.csv` or `.parquet`; local or `s3://`). Default:
            `reports/micrio-migration-<UTC time>.csv`.
    """
    logger = get_run_logger()
    started = time.monotonic()
    if bool(folder_id) == bool(create_folder_under):
        raise ValueError(
            "give exactly one of folder_id (an existing folder) or create_folder_under (a parent id)"
        )
    credentials = await MicrioCredentials.aload(micrio_block)
    s3 = s3_client_from_block(await S3Bucket.aload(s3_bucket_block)) if s3_bucket_block else None
    if s3 is None and any(x and x.startswith("s3://") for x in (source, journal, report)):
        raise ValueError("s3:// sources, journals and reports need s3_bucket_block")

    target = (
        {"folder_id": folder_id}
        if folder_id
        else {"parent": create_folder_under, "name": new_folder_name, "type": new_folder_type}
    )
    journal_location = journal or default_state_name(source, target) + ".jsonl"
    log = Journal(journal_location, s3_client=s3)

    items_list = await asyncio.to_thread(read_sources, source, s3)
    items = {item.key: item for item in items_list}
    state = replay(await asyncio.to_thread(log.read), items)
    created_folder = state.folder_id
    if state.unknown:
        logger.warning(
            "%d image(s) were being added when the last run stopped; adding them again "
            "(at most one batch can end up twice in Micrio)",
            len(state.unknown),
        )
    if create_folder_under and not created_folder:
        folder = await create_micrio_folder(
            credentials, create_folder_under, new_folder_name, new_folder_type
        )
        created_folder = folder.id
        log.append({"t": "folder", "id": folder.id})
        logger.info("created %s %s under %s", new_folder_type, folder.id, create_folder_under)
    target_folder = folder_id or created_folder

    presigner = _Presigner(s3, int(presign_hours * 3600))
    progress = Progress("micrio-migration-progress", f"Images finished in folder {target_folder}")
    candidates = [i for i in items_list if i.rejected is None]
    batch_no = state.next_batch
    added_this_run = 0
    deadline = started + timeout_minutes * 60
    refused: str | None = None  # Micrio refused a whole batch (after retries): stop adding, finish the rest
    unreachable: str | None = None  # polling failed after its retries: stop, report, fail the run

    async def progress_update() -> None:
        finished = sum(1 for i in candidates if i.finished(max_attempts))
        await progress.update(
            100.0 * finished / max(1, len(candidates)),
            f"{finished} of {len(candidates)} images finished in folder {target_folder}",
        )

    while time.monotonic() < deadline:
        pending = [] if refused else [i for i in candidates if i.needs_add(max_attempts)]
        if pending:
            batch = pending[:batch_size]
            log.append({"t": "intent", "batch": batch_no, "keys": [i.key for i in batch]})
            for item in batch:
                item.attempts += 1
            outcomes = await add_micrio_batch(
                credentials, target_folder, [{"sourceUrl": presigner.url(i), "name": i.name} for i in batch]
            )
            ids, failed = {}, {}
            for item, outcome in zip(batch, outcomes, strict=True):
                if outcome.status == "added":
                    ids[item.key] = outcome.image_id
                    item.micrio_id, item.status, item.error = outcome.image_id, "queued", None
                elif outcome.status == "rejected":
                    item.rejected = outcome.error
                elif outcome.status == "failed":
                    failed[item.key] = outcome.error
                    item.attempts -= 1  # nothing was added
                    item.error = outcome.error
                else:  # "unknown": the answer was lost after sending; added again, as after a crash
                    item.error = outcome.error
            log.append({"t": "added", "batch": batch_no, "ids": ids, "failed": failed})
            if failed and len(failed) == len(batch):
                refused = next(iter(failed.values()))
                logger.error("Micrio refused a whole batch; no more images are added this run: %s", refused)
            added_this_run += len(ids)
            batch_no += 1
            continue
        in_flight = [i for i in candidates if i.in_flight()]
        if not in_flight:
            break
        try:
            report_ = await await_micrio_progress(
                credentials,
                target_folder,
                [i.micrio_id for i in in_flight],
                min_finished=batch_size,
                max_wait=min(60.0, max(1.0, deadline - time.monotonic())),
                poll_initial=poll_initial_seconds,
                poll_max=poll_max_seconds,
            )
        except ApiError as exc:  # Micrio unreachable past the retry budget: report what is known, then fail
            unreachable = str(exc)
            logger.error("polling stopped: %s; %d image(s) left in flight", unreachable, len(in_flight))
            break
        by_id = {i.micrio_id: i for i in in_flight}
        finals = []
        for image_id, status in report_.statuses.items():
            item = by_id[image_id]
            _apply_status(item, status)
            if status.terminal:  # transient errors with attempts left are added again by the next batch
                finals.append(
                    [
                        item.key,
                        image_id,
                        status.status,
                        status.error,
                        status.width,
                        status.height,
                        status.thumbnail,
                    ]
                )
        for image_id in report_.missing:
            item = by_id[image_id]
            item.status, item.error = "error", "unknownToMicrio"
            finals.append([item.key, image_id, "error", item.error, None, None, None])
        if finals:
            log.append({"t": "final", "items": finals})
        await progress_update()

    await progress_update()
    stopped = None
    if refused:
        stopped = f"Micrio refused a whole batch, so adding stopped: {refused}"
    elif unreachable:
        stopped = f"Micrio could not be polled: {unreachable}"
    rows = [_report_row(i, max_attempts, stopped) for i in items_list]
    report_location = report or f"reports/micrio-migration-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    await asyncio.to_thread(write_table, pd.DataFrame(rows, columns=REPORT_COLUMNS), report_location, s3)
    summary = _summarise(rows, target_folder, added_this_run, report_location, journal_location)
    await _publish(rows, summary)
    if refused:
        raise RuntimeError(
            f"Micrio refused a whole batch, so the run stopped adding (report: {report_location}): {refused}"
        )
    if unreachable:
        raise RuntimeError(
            f"Micrio could not be polled, so the run stopped with {summary.in_flight} image(s) in flight; "
            f"a re-run resumes them (report: {report_location}): {unreachable}"
        )
    logger.info(
        "micrio migration: %d done, %d failed, %d rejected, %d in flight; report %s",
        summary.done,
        summary.failed,
        summary.rejected,
        summary.in_flight,
        report_location,
    )
    return summary


class _Presigner:
    """Presigned GET URLs for ``s3://`` sources, made just before they are added (so validity counts from then)."""

    def __init__(self, s3: Any, seconds: int) -> None:
        self.s3, self.seconds = s3, seconds

    def url(self, item: Item) -> str:
        if item.url:
            return item.url
        if self.s3 is None:
            raise ValueError("s3:// sources need s3_bucket_block")
        bucket, key = parse_s3_uri(item.key)
        return presigned_get_url(BucketRef(self.s3, bucket), key, self.seconds)


def _apply_status(item: Item, status: ImageStatus) -> None:
    item.status, item.error = status.status, status.error
    item.width, item.height, item.thumbnail = status.width, status.height, status.thumbnail


def _report_row(item: Item, max_attempts: int, stopped: str | None = None) -> dict[str, Any]:
    """One report row; ``stopped`` says why the run ended early (for images it left unfinished)."""
    if item.rejected is not None:
        outcome, status, error = "rejected", "rejected", item.rejected
    elif item.status == "ready":
        outcome, status, error = "done", "ready", None
    elif item.status == "error":
        outcome, status = "failed", "error"
        error = item.error + (
            " (final)" if item.error in FINAL_ERRORS else f" (after {item.attempts} attempts)"
        )
    elif item.micrio_id is None and item.attempts == 0 and item.error is None and stopped:
        outcome, status, error = "failed", "not_added", f"not sent: {stopped}; re-run to add it"
    elif item.micrio_id is None:
        outcome, status = "failed", "not_added"
        error = f"could not be added after {item.attempts} attempt(s): {item.error or 'unknown reason'}"
    else:
        outcome, status = "in_flight", item.status or "queued"
        why = f" ({stopped})" if stopped else ""
        error = f"still processing when the run stopped{why}; re-run to resume"
    return {
        "row": item.row,
        "name": item.name,
        "source": item.key if not item.key.startswith("row:") else None,
        "micrio_id": item.micrio_id,
        "status": status,
        "outcome": outcome,
        "error": error,
        "width": item.width,
        "height": item.height,
        "thumbnail": item.thumbnail,
        "attempts": item.attempts,
    }


def _summarise(
    rows: list[dict[str, Any]], folder: str | None, added: int, report: str, journal: str
) -> MigrationSummary:
    outcomes = Counter(r["outcome"] for r in rows)
    return MigrationSummary(
        folder_id=folder,
        total=len(rows),
        done=outcomes["done"],
        failed=outcomes["failed"],
        rejected=outcomes["rejected"],
        in_flight=outcomes["in_flight"],
        added_this_run=added,
        report=report,
        journal=journal,
    )


async def _publish(rows: list[dict[str, Any]], summary: MigrationSummary) -> None:
    counts = Counter((r["status"], (r["error"] or "").split(" (")[0]) for r in rows)
    await publish_table(
        "micrio-migration-summary",
        counts_table(counts),
        f"Images by final status and error code (folder {summary.folder_id})",
    )
    failures = [r for r in rows if r["outcome"] != "done"]
    await publish_markdown(
        "micrio-migration-failures",
        failures_markdown(
            "Micrio migration: images not done",
            failures,
            ["row", "name", "source", "status", "error", "attempts"],
        ),
        "Sources that were rejected, failed or are still in flight",
    )
