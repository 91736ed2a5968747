"""Bulk migration of images into Micrio, with status polling, that resumes safely after any crash.

Micrio's own CLI keeps no journal and aborts a whole run on one bad image. This flow:

1. reads the sources: a manifest (CSV, Parquet or JSON lines with ``source_url`` and optional ``name``; local
   or ``s3://``), or an S3 prefix (an ``s3://`` URI that names no table file, with or without the trailing
   slash: ``s3://bucket/photos`` is read as ``s3://bucket/photos/``). The log says which it was read as;
2. checks every S3 source by content before sending it: the first bytes (one ranged GET each, in threads,
   batch by batch ahead of the adding) must be an original Micrio accepts (``tasks.micrio.MICRIO_FORMATS``).
   http(s) manifest URLs are not fetched here: Micrio fetches them, and one that is missing or not an image
   ends failed with Micrio's final error (``originalNotFound``, ``invalidImage``);
3. adds them with ``images/add`` in batches, writing every batch to a durable journal *before* the call
   (intent) and its Micrio ids right after (added), so the next batch never goes out before the last one is
   on disk;
4. polls: one ``folder/status`` call per round for the global view, ``image/status`` only for images that
   left processing (≤ 100 ids a call); transient errors (``uploadError``, ``statusUpdateError``, ``unknown``)
   are added again up to ``max_attempts``; ``originalNotFound`` and ``invalidImage`` are final;
5. writes a report with one row per source, and artifacts: progress, a summary table, the failures; then
   ends Completed only when every source is done or skipped by design, otherwise Failed with the counts.

Outcomes. ``skipped`` (by design, the run can still complete): a manifest row repeating an earlier one, a
folder marker, an object of a prefix that is not an image and is not named like one (a sidecar ``.xmp``,
``notes.txt``), an object already in the target folder (below). ``rejected`` (input to fix, the run fails):
an empty or malformed URL, an S3 key that cannot be presigned safely, a missing S3 object ("no such object"),
content that is not an image although the name or the manifest says it is, an image format Micrio does not
accept (GIF, HEIC, AVIF). ``failed``: Micrio's errors, and what the run could not finish.

Duplicates across runs: each target folder has an index next to the journal (``<journal folder>/folders/
<folder id>.jsonl``, or ``.../folders/<folder id>/`` for an ``s3://`` journal) of the objects added to it by
any run, keyed by object identity: ``s3://bucket/key#ETag`` for S3 objects (the same bytes at the same key:
an object overwritten with new content is a new image) and the normalised URL for http(s) sources (scheme
and host lower-cased, default port and fragment dropped, presigning parameters removed). An object already
in the folder, added by another run (say a prefix run, then a manifest naming the same objects), is skipped
with the Micrio id it has; one whose image ended in error there may be added again.

Re-running with the same source and target resumes from the journal ("resumed from <journal>: N already
added"): nothing already added is added again, images in flight are polled to the end. ``retry_failed=True``
also adds again the images an earlier run left failed (after the source was fixed). After a ``kill -9`` at
any moment, at most the one batch whose ``images/add`` was in flight can be added twice (its outcome is
unknown, so it is sent again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pandas as pd
from prefect import flow, get_run_logger
from prefect_aws import S3Bucket
from pydantic import BaseModel, ConfigDict, Field

from blocks.base import load_block
from blocks.micrio import MicrioCredentials
from clients.errors import ApiError, InputError
from clients.micrio import FINAL_ERRORS, TRANSIENT_ERRORS, ImageStatus
from tasks.journal import Journal
from tasks.micrio import (
    SNIFF_BYTES,
    add_micrio_batch,
    await_micrio_progress,
    create_micrio_folder,
    micrio_format_problem,
)
from tasks.reports import Progress, counts_table, failures_markdown, publish_markdown, publish_table
from tasks.run_state import finish
from tasks.storage import (
    BucketRef,
    list_objects,
    parse_s3_uri,
    presigned_get_url,
    read_object_heads,
    s3_client_from_block,
)
from tasks.tables import iter_table_chunks, table_format, write_table

# Names that claim an image: such an object whose content is not one is rejected, not skipped.
IMAGE_EXTENSIONS = (
    *(".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".psd", ".psb", ".gif"),
    *(".heic", ".heif", ".avif", ".dng", ".nef", ".cr2", ".arw"),
)
LEFT_OUT = "left out of the prefix"
STATE_DIR = ".pipeline-state/micrio-migration"
CHECK_THREADS = 8  # ranged GETs at once (botocore's default pool holds 10 connections)
PRESIGN_PARAMS = {"awsaccesskeyid", "signature", "expires"}  # plus every x-amz-* (SigV4)
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


# --- parameters ---------------------------------------------------------------------------------------------


class ExistingFolder(BaseModel):
    """Add the images to a folder that exists."""

    model_config = ConfigDict(title="Existing folder", extra="forbid")

    kind: Literal["existing"] = "existing"
    folder_id: str = Field(
        min_length=6, max_length=6, description="Id of the Micrio folder, 6 characters (e.g. dmRoot)."
    )


class NewFolder(BaseModel):
    """Create a folder, album or space once, and add the images to it (a re-run reuses it)."""

    model_config = ConfigDict(title="New folder", extra="forbid")

    kind: Literal["new"] = "new"
    parent_id: str = Field(
        min_length=6, max_length=6, description="Id of the folder to create it in, 6 characters."
    )
    name: str = Field("", max_length=500, description="Name of the new folder. Empty: its type.")
    type: Literal["folder", "album", "space"] = Field(
        "folder", description="What to create: a folder, an album, or a space (360 tour container)."
    )


class AddingOptions(BaseModel):
    """How images are sent to Micrio."""

    batch_size: int = Field(
        100,
        ge=1,
        le=1000,
        description="Images per images/add call, 1 to 1000. At most one batch can be added twice after a crash.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Adds per image when Micrio reports a transient error (uploadError, statusUpdateError, "
        "unknown), 1 to 10.",
    )
    presign_hours: float = Field(
        168,
        gt=0,
        le=168,
        description="Validity of the presigned URLs Micrio downloads S3 objects with, in hours, up to 168 (7 days).",
    )


class PollingOptions(BaseModel):
    """How the tiling is followed."""

    initial_seconds: float = Field(
        2.0,
        gt=0,
        le=600,
        description="First wait between status rounds in seconds, up to 600; it grows while nothing changes.",
    )
    max_seconds: float = Field(
        15.0, gt=0, le=3600, description="Longest wait between status rounds in seconds, up to 3600."
    )
    timeout_minutes: float = Field(
        24 * 60,
        gt=0,
        le=7 * 24 * 60,
        description="Stop after this many minutes, up to 10080 (7 days); images still processing are reported "
        "failed (in flight) and a re-run picks them up.",
    )


class OutputOptions(BaseModel):
    """Where the report and the journal go (local paths or s3:// URIs)."""

    report: str = Field(
        "", description="Report, .csv or .parquet. Empty: reports/micrio-migration-{UTC time}.csv."
    )
    journal: str = Field(
        "",
        description="Journal: a file, or an s3:// prefix. Empty: a file under .pipeline-state/micrio-migration/ "
        "named after the source and target, so re-running the same input resumes. The per-folder index of "
        "added objects (no duplicates across sources) lives in the folders/ folder beside it.",
    )


class MigrationSummary(BaseModel):
    """What a run did: item counts by outcome, and where the report and journal are."""

    folder_id: str | None
    read_as: str = Field(description="How the source was read: a manifest, or an S3 prefix.")
    total: int
    done: int
    skipped: int = Field(
        description="Skipped by design: duplicate rows, non-image files, already in the folder."
    )
    failed: int = Field(description="Failed, the in_flight ones excluded.")
    rejected: int
    in_flight: int = Field(description="Still processing when the run stopped; a re-run polls them.")
    added_this_run: int
    already_added: int = Field(description="Images an earlier run of this journal had added.")
    resumed: str = Field(description="'resumed from <journal>: N already added', or empty for a first run.")
    problems: list[str] = Field(default_factory=list, description="Why the run is Failed beyond the counts.")
    report: str | None
    journal: str


# --- items --------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One source. ``key`` identifies it in the journal (the manifest URL or the S3 object), ``url`` is sent,
    ``source`` is the source as given (echoed in the report), ``identity`` keys the per-folder index."""

    row: int
    key: str
    name: str | None
    url: str | None = field(default=None, repr=False)
    source: str | None = None
    identity: str | None = None
    checked: bool = True  # False until an S3 object's first bytes were looked at
    attempts: int = 0
    micrio_id: str | None = None
    status: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: str | None = None
    rejected: str | None = None
    skipped: str | None = None
    unreadable: str | None = None  # the content check could not read it (not the user's fault): failed

    def set_aside(self) -> bool:
        return self.rejected is not None or self.skipped is not None or self.unreadable is not None

    def needs_add(self, max_attempts: int) -> bool:
        """Never added, or failed transiently, with attempts left."""
        retryable = self.micrio_id is None or (self.status == "error" and self.error in TRANSIENT_ERRORS)
        return not self.set_aside() and retryable and self.attempts < max_attempts

    def in_flight(self) -> bool:
        return self.micrio_id is not None and self.status not in ("ready", "error") and not self.set_aside()

    def finished(self, max_attempts: int) -> bool:
        return not self.in_flight() and not self.needs_add(max_attempts)

    def failed_final(self, max_attempts: int) -> bool:
        """Left failed for good by a run: Micrio's final error, or out of attempts."""
        return not self.set_aside() and self.status != "ready" and self.finished(max_attempts)

    def reset(self) -> None:
        """Forget an earlier failure, so the image is checked and added again (retry_failed)."""
        self.attempts, self.micrio_id, self.status, self.error = 0, None, None, None
        self.width = self.height = self.thumbnail = None
        self.identity = None if self.key.startswith("s3://") else self.identity
        self.checked = not self.key.startswith("s3://")


# --- reading the sources ------------------------------------------------------------------------------------


def source_kind(source: str) -> tuple[Literal["prefix", "manifest"], str]:
    """``("prefix", "s3://bucket/photos/")`` for an s3:// URI that names no table file (a slash is added),
    else ``("manifest", source)``."""
    if not source.startswith("s3://"):
        return "manifest", source
    if not source.endswith("/"):
        try:
            table_format(source)
            return "manifest", source
        except InputError:
            pass
    bucket_and_key = source[len("s3://") :].rstrip("/")
    return "prefix", f"s3://{bucket_and_key}/"


def _claims_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _s3_object_items(s3: Any, prefix_uri: str) -> list[Item]:
    bucket, prefix = parse_s3_uri(prefix_uri, field="source", require_key=False)
    items = []
    for row, obj in enumerate(list_objects(BucketRef(s3, bucket), prefix), 1):  # folder markers left out
        uri = f"s3://{bucket}/{obj.key}"
        item = Item(row=row, key=uri, source=uri, name=posixpath.basename(obj.key) or None)
        if problem := _uri_problem(uri):  # S3 stores keys our presigning refuses (traversal, control chars)
            item.rejected = problem
        elif obj.size == 0:
            _judge_content(item, "not an image: empty (0 bytes)", prefix_mode=True)
        else:
            item.checked = False
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
    given = None if url is None or (isinstance(url, float) and pd.isna(url)) else str(url)
    item = Item(row=row, key=f"row:{row}", name=name, source=given)
    if not isinstance(url, str) or not url.strip():
        item.rejected = "source_url is empty" if not given or not given.strip() else "source_url is not text"
        return item
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "s3") or not parts.netloc:
        item.rejected = "source_url must be an http(s) URL or an s3:// URI"
    elif any(c.isspace() for c in url):
        item.rejected = "source_url contains whitespace"
    elif url in seen:
        item.skipped = f"duplicate of row {seen[url]}"
    elif parts.scheme == "s3" and (problem := _uri_problem(url)):
        item.rejected = problem
    else:
        seen[url] = row
        item.key = url
        if parts.scheme == "s3":
            item.checked = False
        else:
            item.url, item.identity = url, url_identity(url)
    return item


def _uri_problem(uri: str) -> str | None:
    try:
        parse_s3_uri(uri, field="source_url")
    except InputError as exc:
        return str(exc)
    return None


def url_identity(url: str) -> str:
    """An http(s) URL as the per-folder index knows it: scheme and host lower-cased, default port and fragment
    dropped, presigning parameters removed (a re-signed link to the same object is the same source)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if parts.port in (None, default) else f"{host}:{parts.port}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in PRESIGN_PARAMS and not k.lower().startswith("x-amz-")
    ]
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", urlencode(query), ""))


def read_sources(source: str, s3: Any) -> tuple[str, list[Item], list[str]]:
    """How the source was read, every source item with its row number, and the problems that fail the run
    whatever else happens (an unreadable manifest, nothing in it). Rejected and skipped items carry the reason."""
    kind, where = source_kind(source)
    read_as = f"the S3 prefix {where}" if kind == "prefix" else f"a manifest ({where})"
    try:
        items = _s3_object_items(s3, where) if kind == "prefix" else _manifest_items(where, s3)
    except Exception as exc:  # any unreadable input: one clear problem, the run still reports and fails
        return read_as, [], [f"{source} cannot be read as {read_as}: {exc}"]
    if not items:
        empty = "holds no objects" if kind == "prefix" else "has no rows"
        return read_as, [], [f"{read_as} {empty}: nothing to migrate"]
    return read_as, items, []


# --- checking S3 sources by content -------------------------------------------------------------------------


def _judge_content(item: Item, problem: str | None, *, prefix_mode: bool) -> None:
    """Reject (or, for a prefix's non-image files, skip) an object whose first bytes Micrio would refuse."""
    if problem is None:
        return
    if prefix_mode and problem.startswith("not an image") and not _claims_image(item.key):
        item.skipped = f"{problem}; {LEFT_OUT}"
    else:
        named = " although named like an image" if prefix_mode and _claims_image(item.key) else ""
        item.rejected = f"{problem}{named}"


def check_contents(items: Sequence[Item], s3: Any, prefix_mode: bool) -> None:
    """Read the first bytes of each S3 object (ranged GETs in threads) and judge them; synchronous (threads):
    run it off the event loop. Sets ``identity`` (bucket, key and ETag) of the ones that pass."""
    by_bucket: dict[str, list[tuple[Item, str]]] = {}
    for item in items:
        bucket, key = parse_s3_uri(item.key)
        by_bucket.setdefault(bucket, []).append((item, key))
    for bucket, pairs in by_bucket.items():
        heads = read_object_heads(
            BucketRef(s3, bucket), [k for _, k in pairs], SNIFF_BYTES, max_workers=CHECK_THREADS
        )
        for item, key in pairs:
            item.checked = True
            head = heads.done.get(key)
            if head is None:
                error = heads.failed.get(key, "not read")
                if error.startswith("NotFoundError"):
                    item.rejected = "no such object"
                else:
                    item.unreadable = f"could not read its first bytes: {error}"
                continue
            _judge_content(item, micrio_format_problem(head.head), prefix_mode=prefix_mode)
            item.identity = f"{item.key}#{head.etag}"


class ContentCheck:
    """Checks S3 sources chunk by chunk in the background, ahead of the adding, so a 10k prefix does not wait
    for 10k ranged GETs before its first ``images/add``. ``generation`` counts the chunks checked."""

    def __init__(self, items: list[Item], s3: Any, chunk: int, prefix_mode: bool, on_checked: Any) -> None:
        self._chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
        self._s3, self._prefix_mode, self._on_checked = s3, prefix_mode, on_checked
        self._changed = asyncio.Condition()
        self.generation = 0
        self.finished = not self._chunks
        self._task = asyncio.create_task(self._run()) if self._chunks else None

    async def _run(self) -> None:
        try:
            for chunk in self._chunks:
                await asyncio.to_thread(check_contents, chunk, self._s3, self._prefix_mode)
                self._on_checked(chunk)
                async with self._changed:
                    self.generation += 1
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self.finished = True
                self._changed.notify_all()

    async def wait(self, seen: int) -> None:
        """Until a chunk after generation ``seen`` is checked, or all are. Re-raises the checker's error."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.generation > seen or self.finished)
        if self._task is not None and self._task.done():
            self._task.result()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


# --- the journal and the per-folder index --------------------------------------------------------------------


@dataclass
class Replayed:
    folder_id: str | None  # the folder an earlier run created
    unknown: list[str]  # keys whose images/add was in flight at a crash: intent written, ids never recorded
    next_batch: int
    had_records: bool = False


def replay(records: list[dict[str, Any]], items: dict[str, Item]) -> Replayed:
    """Apply the journal to the items (attempts, Micrio ids, final statuses, retries asked for)."""
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
            identities = rec.get("identities") or [None] * len(rec["keys"])
            for key, identity in zip(rec["keys"], identities, strict=True):
                if key in items:
                    items[key].attempts += 1
                    items[key].identity = identity or items[key].identity
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
        elif kind == "retry":  # retry_failed: the user fixed these sources
            for key in rec["keys"]:
                if key in items:
                    items[key].reset()
    unknown = [key for keys in open_batches.values() for key in keys if key in items]
    for key in unknown:  # a crash is not Micrio refusing the image: the attempt does not count
        items[key].attempts -= 1
    return Replayed(folder_id, unknown, next_batch, bool(records))


def default_state_name(source: str, target: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps([source, target], sort_keys=True).encode()).hexdigest()[:16]
    return f"{STATE_DIR}/{digest}"


def folder_index_location(journal: str, folder_id: str) -> str:
    """``<journal's folder>/folders/<folder id>.jsonl`` (an ``s3://`` journal: ``.../folders/<folder id>/``)."""
    parent = posixpath.dirname(journal.rstrip("/"))
    if journal.startswith("s3://"):
        return f"{parent}/folders/{folder_id}/"
    return posixpath.join(parent or ".", "folders", f"{folder_id}.jsonl")


class FolderIndex:
    """Which objects are in a Micrio folder, added by which run: identity -> (Micrio id, run's source)."""

    def __init__(self, location: str, s3: Any, run: str, source: str) -> None:
        self.journal = Journal(location, s3_client=s3)
        self.run, self.source = run, source
        self.present: dict[str, tuple[str, str, str]] = {}  # identity -> (micrio id, run journal, source)

    def load(self) -> None:
        for rec in self.journal.read():
            if rec["t"] == "added":
                for identity, image_id in rec["ids"].items():
                    self.present[identity] = (image_id, rec["run"], rec["source"])
            elif rec["t"] == "gone":
                for identity, image_id in rec["ids"].items():
                    if self.present.get(identity, ("",))[0] == image_id:
                        del self.present[identity]

    def elsewhere(self, identity: str | None) -> str | None:
        """Why ``identity`` is already in the folder by another run's doing, or None."""
        found = self.present.get(identity) if identity else None
        if found is None or found[1] == self.run:
            return None
        return f"already in the folder as Micrio image {found[0]} (added by the run of {found[2]})"

    def add(self, ids: dict[str, str]) -> None:
        if ids:
            self.journal.append({"t": "added", "run": self.run, "source": self.source, "ids": ids})
            self.present.update({i: (m, self.run, self.source) for i, m in ids.items()})

    def gone(self, ids: dict[str, str]) -> None:
        if ids:
            self.journal.append({"t": "gone", "ids": ids})
            for identity in ids:
                self.present.pop(identity, None)


# --- the flow -----------------------------------------------------------------------------------------------


@flow(name="micrio-migration")
async def migrate_to_micrio(
    source: str,
    target: ExistingFolder | NewFolder,
    micrio_block: str = "micrio-demo",
    s3_bucket_block: str = "",
    retry_failed: bool = False,
    adding: AddingOptions = AddingOptions(),  # noqa: B008 (a pydantic model, read only)
    polling: PollingOptions = PollingOptions(),  # noqa: B008 (a pydantic model, read only)
    outputs: OutputOptions = OutputOptions(),  # noqa: B008 (a pydantic model, read only)
) -> MigrationSummary:
    """Add images to Micrio and follow their tiling to the end; resumable.

    Completed only when every source is done or skipped by design; rejected or failed sources, an empty
    prefix or manifest, or a source that cannot be read end the run Failed with the counts and the report's
    location (the module's docstring says what is rejected and what is skipped).

    Args:
        source: A manifest (CSV, Parquet or JSON lines with a source_url column and an optional name), as a
            local path or s3://bucket/key.csv; or an S3 prefix (s3://bucket/photos or s3://bucket/photos/),
            whose image objects are presigned for Micrio to fetch. S3 sources are checked by content first.
        target: An existing folder (its 6-character id), or a new folder, album or space to create under a
            parent folder (created once: a re-run reuses it).
        micrio_block: Name of the saved Micrio Credentials block.
        s3_bucket_block: Name of a saved prefect-aws S3 Bucket block, needed for s3:// sources, journals or
            reports (its credentials may carry an endpoint URL). Empty: local files and http(s) URLs only.
        retry_failed: Add again the images an earlier run of the same source and target left failed (after
            you fixed the source). Off: they stay failed, and so does the run.
        adding: Batch size, attempts per image, presigned URL validity.
        polling: Waits between status rounds and when to stop.
        outputs: Report and journal locations (empty: defaults, see each field).
    """
    logger = get_run_logger()
    started = time.monotonic()
    batch_size, max_attempts = adding.batch_size, adding.max_attempts
    credentials = await MicrioCredentials.resolve(micrio_block)
    s3 = s3_client_from_block(await load_block(S3Bucket, s3_bucket_block)) if s3_bucket_block else None
    if s3 is None and any(x.startswith("s3://") for x in (source, outputs.journal, outputs.report)):
        raise ValueError("s3:// sources, journals and reports need s3_bucket_block")

    kind, where = source_kind(source)
    target_key = (
        {"folder_id": target.folder_id}
        if isinstance(target, ExistingFolder)
        else {"parent": target.parent_id, "name": target.name, "type": target.type}
    )
    journal_location = outputs.journal or default_state_name(where, target_key) + ".jsonl"
    log = Journal(journal_location, s3_client=s3)

    read_as, items_list, problems = await asyncio.to_thread(read_sources, source, s3)
    logger.info("read %s as %s: %d source(s)", source, read_as, len(items_list))
    items = {item.key: item for item in items_list if not item.key.startswith("row:")}
    state = replay(await asyncio.to_thread(log.read), items)
    already_added = sum(1 for i in items_list if i.micrio_id is not None)
    resumed = f"resumed from {journal_location}: {already_added} already added" if state.had_records else ""
    if resumed:
        logger.info(
            "%s (%d ready, %d in flight)",
            resumed,
            sum(1 for i in items_list if i.status == "ready"),
            sum(1 for i in items_list if i.in_flight()),
        )
    if retry_failed:
        again = [i for i in items_list if i.failed_final(max_attempts)]
        if again:
            log.append({"t": "retry", "keys": [i.key for i in again]})
            for item in again:
                item.reset()
            logger.info("retry_failed: %d image(s) an earlier run left failed are added again", len(again))
    if state.unknown:
        logger.warning(
            "%d image(s) were being added when the last run stopped; adding them again "
            "(at most one batch can end up twice in Micrio)",
            len(state.unknown),
        )

    target_folder = await _target_folder(target, state.folder_id, credentials, log, logger)
    index = FolderIndex(folder_index_location(journal_location, target_folder), s3, journal_location, where)
    await asyncio.to_thread(index.load)
    _sync_index(index, items_list)

    def not_twice(checked: list[Item]) -> None:  # dedupe across runs, once an item's identity is known
        for item in checked:
            if item.micrio_id is None and not item.set_aside() and (why := index.elsewhere(item.identity)):
                item.skipped = why

    not_twice([i for i in items_list if i.checked])
    to_check = [i for i in items_list if not i.checked and i.needs_add(max_attempts)]
    for item in items_list:  # already added, or failed for good: nothing to check
        item.checked = item.checked or not item.needs_add(max_attempts)
    checker = ContentCheck(to_check, s3, batch_size, kind == "prefix", not_twice)

    presigner = _Presigner(s3, int(adding.presign_hours * 3600))
    progress = Progress("micrio-migration-progress", f"Images finished in folder {target_folder}")
    candidates = items_list
    batch_no = state.next_batch
    added_this_run = 0
    deadline = started + polling.timeout_minutes * 60
    refused: str | None = None  # Micrio refused a whole batch (after retries): stop adding, finish the rest
    unreachable: str | None = None  # polling failed after its retries: stop, report, fail the run

    async def progress_update() -> None:
        live = [i for i in candidates if not i.set_aside()]
        finished = sum(1 for i in live if i.finished(max_attempts))
        await progress.update(
            100.0 * finished / max(1, len(live)),
            f"{finished} of {len(live)} images finished in folder {target_folder}",
        )

    try:
        while time.monotonic() < deadline:
            seen = checker.generation
            pending = [] if refused else [i for i in candidates if i.checked and i.needs_add(max_attempts)]
            if not refused and len(pending) < batch_size and not checker.finished:
                await checker.wait(seen)  # a full batch once the next chunk is checked
                continue
            if pending:
                batch = pending[:batch_size]
                log.append(
                    {
                        "t": "intent",
                        "batch": batch_no,
                        "keys": [i.key for i in batch],
                        "identities": [i.identity for i in batch],
                    }
                )
                for item in batch:
                    item.attempts += 1
                outcomes = await add_micrio_batch(
                    credentials,
                    target_folder,
                    [{"sourceUrl": presigner.url(i), "name": i.name} for i in batch],
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
                index.add({items[k].identity: v for k, v in ids.items() if items[k].identity})
                if failed and len(failed) == len(batch):
                    refused = next(iter(failed.values()))
                    logger.error(
                        "Micrio refused a whole batch; no more images are added this run: %s", refused
                    )
                added_this_run += len(ids)
                batch_no += 1
                continue
            in_flight = [i for i in candidates if i.in_flight()]
            if not in_flight:
                break
            try:
                await _poll_round(
                    credentials, target_folder, in_flight, log, index, batch_size, polling, deadline
                )
            except (
                ApiError
            ) as exc:  # Micrio unreachable past the retry budget: report what is known, then fail
                unreachable = str(exc)
                logger.error("polling stopped: %s; %d image(s) left in flight", unreachable, len(in_flight))
                break
            await progress_update()
    finally:
        checker.cancel()

    await progress_update()
    stopped = None
    if refused:
        stopped = f"Micrio refused a whole batch, so adding stopped: {refused}"
        problems.append(stopped)
    elif unreachable:
        stopped = f"Micrio could not be polled: {unreachable}"
        problems.append(f"{stopped}; a re-run resumes the images in flight")
    in_flight_count = sum(1 for i in items_list if i.in_flight())
    if items_list and all((i.skipped or "").endswith(LEFT_OUT) for i in items_list):
        problems.append(f"{read_as} holds no image: {len(items_list)} other file(s) {LEFT_OUT}")
    if in_flight_count and not stopped:
        problems.append(f"{in_flight_count} image(s) still processing after the timeout: a re-run polls them")
    rows = [_report_row(i, max_attempts, stopped) for i in items_list]
    report_location = outputs.report or f"reports/micrio-migration-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    await asyncio.to_thread(write_table, _report_frame(rows), report_location, s3)
    outcomes_count = Counter(r["outcome"] for r in rows)
    summary = MigrationSummary(
        folder_id=target_folder,
        read_as=read_as,
        total=len(rows),
        done=outcomes_count["done"],
        skipped=outcomes_count["skipped"],
        failed=outcomes_count["failed"] - in_flight_count,
        rejected=outcomes_count["rejected"],
        in_flight=in_flight_count,
        added_this_run=added_this_run,
        already_added=already_added,
        resumed=resumed,
        problems=problems,
        report=report_location,
        journal=journal_location,
    )
    await _publish(rows, summary)
    if resumed:
        logger.info("%s; this run added %d", resumed, added_this_run)
    return finish(
        summary,
        what="images",
        counts=dict(outcomes_count),
        report=report_location,
        problems=problems,
        logger=logger,
    )


async def _target_folder(
    target: ExistingFolder | NewFolder, created: str | None, credentials: Any, log: Journal, logger: Any
) -> str:
    """The folder id to add to: the existing one, the one an earlier run created, or a new one (journaled)."""
    if isinstance(target, ExistingFolder):
        return target.folder_id
    if created:
        return created
    folder = await create_micrio_folder(credentials, target.parent_id, target.name or None, target.type)
    log.append({"t": "folder", "id": folder.id})
    logger.info("created %s %s under %s", target.type, folder.id, target.parent_id)
    return folder.id


def _sync_index(index: FolderIndex, items: list[Item]) -> None:
    """Record in the folder index what this run's journal added but the index missed (a crash in between)."""
    missing = {
        i.identity: i.micrio_id
        for i in items
        if i.micrio_id and i.identity and i.status != "error" and i.identity not in index.present
    }
    index.add(missing)


async def _poll_round(
    credentials: Any,
    folder: str,
    in_flight: list[Item],
    log: Journal,
    index: FolderIndex,
    batch_size: int,
    polling: PollingOptions,
    deadline: float,
) -> None:
    """One wait for about a batch of images to finish; their statuses are applied and journaled."""
    report = await await_micrio_progress(
        credentials,
        folder,
        [i.micrio_id for i in in_flight],
        min_finished=batch_size,
        max_wait=min(60.0, max(1.0, deadline - time.monotonic())),
        poll_initial=polling.initial_seconds,
        poll_max=polling.max_seconds,
    )
    by_id = {i.micrio_id: i for i in in_flight}
    finals, gone = [], {}
    for image_id, status in report.statuses.items():
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
            if status.status == "error" and item.identity:
                gone[item.identity] = image_id
    for image_id in report.missing:
        item = by_id[image_id]
        item.status, item.error = "error", "unknownToMicrio"
        finals.append([item.key, image_id, "error", item.error, None, None, None])
    if finals:
        log.append({"t": "final", "items": finals})
    index.gone(gone)


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
    elif item.skipped is not None:
        outcome, status, error = "skipped", "skipped", item.skipped
    elif item.unreadable is not None:
        outcome, status, error = "failed", "not_checked", f"{item.unreadable}; re-run to try again"
    elif item.status == "ready":
        outcome, status, error = "done", "ready", None
    elif item.status == "error":
        outcome, status = "failed", "error"
        error = item.error + (
            " (final)" if item.error in FINAL_ERRORS else f" (after {item.attempts} attempts)"
        )
    elif item.micrio_id is None and item.attempts == 0 and item.error is None and stopped:
        outcome, status, error = "failed", "not_added", f"not sent: {stopped}; re-run to add it"
    elif item.micrio_id is None and not item.checked:
        outcome, status, error = (
            "failed",
            "not_checked",
            "not checked before the run stopped; re-run to add it",
        )
    elif item.micrio_id is None:
        outcome, status = "failed", "not_added"
        error = f"could not be added after {item.attempts} attempt(s): {item.error or 'unknown reason'}"
    else:  # in flight: still processing when the run stopped
        outcome, status = "failed", item.status or "queued"
        why = f" ({stopped})" if stopped else ""
        error = f"still processing when the run stopped{why}; re-run to resume"
    return {
        "row": item.row,
        "name": item.name,
        "source": item.source,
        "micrio_id": item.micrio_id,
        "status": status,
        "outcome": outcome,
        "error": error,
        "width": item.width,
        "height": item.height,
        "thumbnail": item.thumbnail,
        "attempts": item.attempts,
    }


def _report_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The report, its counts as integers (nullable: an image without a size stays empty, never 1024.0)."""
    df = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    return df.astype({"row": "Int64", "width": "Int64", "height": "Int64", "attempts": "Int64"})


async def _publish(rows: list[dict[str, Any]], summary: MigrationSummary) -> None:
    counts = Counter((r["status"], (r["error"] or "").split(" (")[0]) for r in rows)
    await publish_table(
        "micrio-migration-summary",
        counts_table(counts),
        f"Images by final status and error code (folder {summary.folder_id})",
    )
    failures = [r for r in rows if r["outcome"] not in ("done", "skipped")]
    await publish_markdown(
        "micrio-migration-failures",
        failures_markdown(
            "Micrio migration: images not done",
            failures,
            ["row", "name", "source", "status", "error", "attempts"],
        ),
        "Sources that were rejected, failed or are still in flight",
    )
