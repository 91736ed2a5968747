"""Reading a migration's sources (a manifest or an S3 prefix) and checking S3 objects by content.

Each source becomes an ``Item``: rejected (input to fix), skipped (by design) or to be added. S3 objects are
looked at before they are sent (their first bytes must be an original Micrio accepts), chunk by chunk in the
background (``ContentCheck``) so that the first batch goes out before the last object is checked.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pandas as pd

from clients.errors import InputError
from flows.micrio_migration.items import Item
from tasks.fan_out import ShardRange
from tasks.micrio import SNIFF_BYTES, micrio_format_problem
from tasks.storage import (
    BucketRef,
    list_objects,
    parse_s3_uri,
    presigned_get_url,
    read_object_heads,
)
from tasks.tables import iter_table_chunks, table_format

# Names that claim an image: such an object whose content is not one is rejected, not skipped.
IMAGE_EXTENSIONS = (
    *(".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".psd", ".psb", ".gif"),
    *(".heic", ".heif", ".avif", ".dng", ".nef", ".cr2", ".arw"),
)
LEFT_OUT = "left out of the prefix"
CHECK_THREADS = 8  # ranged GETs at once (botocore's default pool holds 10 connections)
PRESIGN_PARAMS = {"awsaccesskeyid", "signature", "expires"}  # plus every x-amz-* (SigV4)


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


def _s3_object_items(s3: Any, prefix_uri: str, shard: ShardRange) -> list[Item]:
    """The objects under the prefix; a shard lists only its key range, numbered from its first row."""
    bucket, prefix = parse_s3_uri(prefix_uri, field="source", require_key=False)
    in_bucket = f"s3://{bucket}/"
    listed = list_objects(  # folder markers left out
        BucketRef(s3, bucket), prefix, first_key=shard.first_key.removeprefix(in_bucket),
        stop_key=shard.stop_key.removeprefix(in_bucket),
    )  # fmt: skip
    items = []
    for row, obj in enumerate(listed, shard.first_row or 1):
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


@dataclass
class Sources:
    """What a source holds: its items in row order (rejected and skipped ones carry the reason), and the
    problems that fail the run whatever else happens (an unreadable manifest, nothing in it)."""

    kind: Literal["prefix", "manifest"]
    where: str  # the manifest, or the prefix with its trailing slash
    items: list[Item] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def read_as(self) -> str:
        return f"the S3 prefix {self.where}" if self.kind == "prefix" else f"a manifest ({self.where})"

    def holds_no_image(self) -> bool:
        """A prefix whose every object was left out as not an image."""
        return bool(self.items) and all((i.skipped or "").endswith(LEFT_OUT) for i in self.items)


def read_sources(source: str, s3: Any, shard: ShardRange | None = None) -> Sources:
    """Every source item with its row number (a shard's: those of its range); synchronous (it lists or reads
    S3): run it off the event loop."""
    sources = Sources(*source_kind(source))
    shard = shard or ShardRange()
    try:
        if sources.kind == "prefix":
            sources.items = _s3_object_items(s3, sources.where, shard)
        else:
            sources.items = [i for i in _manifest_items(sources.where, s3) if shard.holds_row(i.row)]
    except Exception as exc:  # any unreadable input: one clear problem, the run still reports and fails
        sources.problems.append(f"{source} cannot be read as {sources.read_as}: {exc}")
        return sources
    if not sources.items:
        empty = "holds no objects" if sources.kind == "prefix" else "has no rows"
        sources.problems.append(f"{sources.read_as} {empty}: nothing to migrate")
    return sources


class Presigner:
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
    for 10k ranged GETs before its first ``images/add``. ``generation`` counts the chunks checked; leaving
    ``async with`` stops the checking."""

    def __init__(
        self,
        items: list[Item],
        s3: Any,
        chunk: int,
        prefix_mode: bool,
        on_checked: Callable[[list[Item]], Any],
    ) -> None:
        self._chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
        self._s3, self._prefix_mode, self._on_checked = s3, prefix_mode, on_checked
        self._changed = asyncio.Condition()
        self.generation = 0
        self.finished = not self._chunks
        self._task = asyncio.create_task(self._run()) if self._chunks else None

    @classmethod
    def of(
        cls,
        sources: Sources,
        s3: Any,
        chunk: int,
        max_attempts: int,
        on_checked: Callable[[list[Item]], Any],
    ) -> ContentCheck:
        """Check the S3 objects still to be added; ``on_checked`` sees every item once its content is known
        (the ones known already, at once)."""
        items = sources.items
        on_checked([i for i in items if i.checked])
        to_check = [i for i in items if not i.checked and i.needs_add(max_attempts)]
        for item in items:  # already added, or failed for good: nothing to check
            item.checked = item.checked or not item.needs_add(max_attempts)
        return cls(to_check, s3, chunk, sources.kind == "prefix", on_checked)

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

    async def next_chunk(self) -> None:
        """Until one more chunk is checked, or all are. Re-raises the checker's error."""
        seen = self.generation
        async with self._changed:
            await self._changed.wait_for(lambda: self.generation > seen or self.finished)
        if self._task is not None and self._task.done():
            self._task.result()

    async def __aenter__(self) -> ContentCheck:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
