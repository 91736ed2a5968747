"""Batch tasks and helpers of the snapshot harvest (VizioSense -> S3 + Miniviz); see flows/snapshot_harvest.py.

One camera goes through: request a snapshot -> wait until it is served -> download raw and annotated -> store
both originals in S3 -> fit a copy into Miniviz's image limit -> push it -> (later) one data event. A batch of
cameras is one task run; inside it cameras run concurrently, bounded by semaphores shared by the whole run
(HTTP calls to VizioSense, cameras holding image bytes, Pillow workers), so memory stays bounded whatever the
fleet size and fitting (CPU) overlaps with downloads.

Miniviz pacing (one image per 60 s per label_key; data one per 15 s per project on Pro) is kept by ONE
``MinivizClient`` for the whole run (its pacers are per instance) and, across runs, by ``PacingState``: a small
JSON file (local, or one S3 object) of when each label last got an image or a data event. Its times seed the
client's pacers at the start of a run, so ``client.image_wait_time(label)`` already knows about the previous
run; a camera whose label must still wait is *deferred* (reported with the reason), never sent to collect a 429.
The client is also told not to retry 429s: if another process pushed in between, the one 429 becomes a
deferral too, never a retry loop.

Helpers here are plain functions (unit-tested without Prefect): label keys, S3 keys and metadata, camera
selection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fnmatch
import functools
import hashlib
import json
import math
import os
import re
import string
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from clients.errors import ApiError, InputError, OutcomeUnknownError, RateLimitedError
from clients.miniviz import LABEL_KEY_RE, MAX_LABEL_KEY, MinivizClient
from clients.redaction import redact
from clients.viziosense import Device, ImageKind, ImageRequest, Snapshot, VizioSenseClient
from tasks.images import FittedImage, fit_to_byte_limit
from tasks.reports import Progress
from tasks.storage import BucketRef, put_bytes

# --- label keys ----------------------------------------------------------------------------------------
LABEL_HASH_CHARS = 13  # base32 of sha256(uuid): 65 bits, so two devices never share one in practice
LABEL_HASH_CHARS_ON_COLLISION = 26  # used for the (astronomically rare) devices whose short hashes collide
LABEL_SLUG_MAX = 64  # readable part; the whole key stays <= 128 (Miniviz)
MAX_LABEL_PREFIX = 32
_TRANSLIT = str.maketrans(
    {"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE", "đ": "d", "Đ": "D",
     "ł": "l", "Ł": "L", "þ": "th", "Þ": "TH", "ð": "d", "Ð": "D", "ı": "i"}
)  # fmt: skip
_SLUG_BAD = re.compile(r"[^a-z0-9._-]+")
_SLUG_DASHES = re.compile(r"-{2,}")

LabelSource = Literal["name", "client_identifier", "none"]


def slugify(text: str | None) -> str:
    """``text`` as lowercase ASCII ``[a-z0-9._-]``: accents dropped (NFKD), other characters become ``-``.

    ``"Caméra Entrée — Zürich"`` -> ``"camera-entree-zurich"``; a name with no Latin letters gives ``""``.
    """
    if not text:
        return ""
    ascii_text = unicodedata.normalize("NFKD", text.translate(_TRANSLIT))
    ascii_text = "".join(c for c in ascii_text if not unicodedata.combining(c)).lower()
    slug = _SLUG_DASHES.sub("-", _SLUG_BAD.sub("-", ascii_text))
    return slug.strip("-._")


def uuid_hash(device_uuid: str, chars: int = LABEL_HASH_CHARS) -> str:
    """The first ``chars`` characters of the lowercase base32 SHA-256 of the uuid (``[a-z2-7]``)."""
    digest = base64.b32encode(hashlib.sha256(device_uuid.encode("utf-8")).digest()).decode("ascii")
    return digest.lower().rstrip("=")[:chars]


def check_label_prefix(prefix: str) -> str:
    """A label prefix (e.g. ``"vzs/"``): allowed Miniviz characters only, at most 32 of them."""
    if prefix and (len(prefix) > MAX_LABEL_PREFIX or not LABEL_KEY_RE.match(prefix)):
        raise InputError(
            "label_prefix",
            f"{prefix!r} is not allowed",
            f"at most {MAX_LABEL_PREFIX} of A-Z a-z 0-9 - _ . : @ /",
        )
    return prefix


def label_key_for(
    device_uuid: str, text: str | None = None, *, prefix: str = "", hash_chars: int = LABEL_HASH_CHARS
) -> str:
    """The Miniviz ``label_key`` of a device: ``{prefix}{slug of text}-{hash of uuid}``.

    Only ``[A-Za-z0-9-_.:@/]`` and at most 128 characters (Miniviz's rules). The hash makes it unique per
    device uuid, so two cameras with the same name never share a label; the slug only makes it readable
    (``cam`` when the text has no usable characters). Stable: the same uuid and text always give the same key.
    Renaming a device changes the key when ``text`` is its name; use ``client_identifier`` (or no text) when
    renames must not start a new series.
    """
    check_label_prefix(prefix)
    digest = uuid_hash(device_uuid, hash_chars)
    room = MAX_LABEL_KEY - len(prefix) - 1 - len(digest)
    slug = slugify(text)[: min(LABEL_SLUG_MAX, room)].strip("-._") or "cam"
    key = f"{prefix}{slug}-{digest}"
    assert len(key) <= MAX_LABEL_KEY and LABEL_KEY_RE.match(key), key
    return key


def assign_label_keys(
    devices: Iterable[Device], source: LabelSource = "name", prefix: str = ""
) -> dict[str, str]:
    """``{device uuid: label_key}`` for every device, guaranteed distinct.

    If two devices' short keys ever collide (same slug and the same 65-bit hash prefix), those devices get a
    26-character hash instead; if that still collides (impossible for distinct uuids short of breaking
    SHA-256) a ``ValueError`` says so rather than mixing two cameras' images.
    """
    texts: dict[str, str | None] = {}
    for device in devices:
        texts[device.uuid] = None if source == "none" else getattr(device, source, None)
    keys = {u: label_key_for(u, t, prefix=prefix) for u, t in texts.items()}
    owners: dict[str, list[str]] = {}
    for u, k in keys.items():
        owners.setdefault(k, []).append(u)
    for uuids in owners.values():
        if len(uuids) > 1:
            for u in uuids:
                keys[u] = label_key_for(u, texts[u], prefix=prefix, hash_chars=LABEL_HASH_CHARS_ON_COLLISION)
    if len(set(keys.values())) != len(keys):
        raise ValueError("label_key collision between distinct device uuids")
    return keys


# --- S3 keys and metadata ------------------------------------------------------------------------------
DEFAULT_KEY_LAYOUT = "{prefix}/{device_uuid}/{YYYY}/{MM}/{DD}/{timestamp}_{kind}.jpg"
LAYOUT_FIELDS = {
    "prefix": "the prefix parameter",
    "device_uuid": "the camera's uuid",
    "label_key": "the camera's Miniviz label_key",
    "YYYY": "year of the request (UTC)",
    "MM": "month, 2 digits",
    "DD": "day, 2 digits",
    "hh": "hour, 2 digits",
    "mm": "minute, 2 digits",
    "ss": "second, 2 digits",
    "timestamp": "request time, UTC, e.g. 20250131T120000.123Z",
    "kind": "raw or annotated",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
METADATA_LIMITS = {"device-name": 600, "geo-city": 300, "geo-country": 300}  # encoded bytes; total <= 2 KB


def utc_stamp(moment: datetime) -> str:
    """``20250131T120000.123Z``: ISO 8601 basic format, UTC, milliseconds (sorts as text, safe in keys)."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S}.{moment.microsecond // 1000:03d}Z"


def check_key_layout(layout: str) -> str:
    """A key layout: ``{placeholders}`` from ``LAYOUT_FIELDS`` only; must name the camera, the time and the kind.

    Keys must be distinct per camera, request time and kind, or one snapshot would overwrite another.
    """
    if not isinstance(layout, str) or not layout.strip():
        raise InputError("key_layout", "must be a non-empty string")
    try:
        parsed = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise InputError("key_layout", f"{layout!r} is not a valid template ({exc})") from None
    names = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in LAYOUT_FIELDS or spec or conversion:
            raise InputError(
                "key_layout", f"unknown placeholder {{{name}}}", f"allowed: {', '.join(LAYOUT_FIELDS)}"
            )
        names.add(name)
    missing = [
        need
        for need, options in (
            ("camera", {"device_uuid", "label_key"}),
            ("time", {"timestamp"}),
            ("kind", {"kind"}),
        )
        if not names & options
    ]
    if missing:
        raise InputError(
            "key_layout",
            f"does not identify the {' and '.join(missing)}",
            "needs {device_uuid} or {label_key}, {timestamp} and {kind}",
        )
    return layout


def snapshot_key(
    layout: str, *, prefix: str, device_uuid: str, label_key: str, requested_at: datetime, kind: str
) -> str:
    """The S3 key of one original under ``layout`` (empty segments, e.g. from an empty prefix, are dropped)."""
    t = requested_at.astimezone(UTC)
    key = layout.format(
        prefix=prefix.strip("/"),
        device_uuid=device_uuid,
        label_key=label_key,
        YYYY=f"{t:%Y}",
        MM=f"{t:%m}",
        DD=f"{t:%d}",
        hh=f"{t:%H}",
        mm=f"{t:%M}",
        ss=f"{t:%S}",
        timestamp=utc_stamp(t),
        kind=kind,
    )
    return "/".join(part for part in key.split("/") if part)


def metadata_value(text: str | None, max_bytes: int = 300) -> str:
    """An S3 user-metadata value (S3 sends metadata as HTTP headers: ASCII only).

    ASCII text is kept as is (control characters become spaces). Text with any non-ASCII character is sent as
    an RFC 2047 encoded word, ``=?UTF-8?B?<base64 of the UTF-8 bytes>?=``, which is also how S3 itself returns
    non-ASCII metadata; decode with ``email.header.decode_header`` or :func:`decode_metadata_value`. Over
    ``max_bytes`` the text is shortened (whole characters) until its encoded form fits.
    """
    text = _CONTROL.sub(" ", text or "").strip()
    while True:
        if text.isascii() and not text.startswith("=?"):
            value = text
        else:
            value = "=?UTF-8?B?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="
        if len(value) <= max_bytes:
            return value
        text = text[: max(0, len(text) - max(1, (len(value) - max_bytes) // 4))]


def decode_metadata_value(value: str) -> str:
    """Inverse of :func:`metadata_value`."""
    if value.startswith("=?UTF-8?B?") and value.endswith("?="):
        return base64.b64decode(value[len("=?UTF-8?B?") : -2]).decode("utf-8")
    return value


def snapshot_metadata(camera: CameraResult, kind: str) -> dict[str, str]:
    """S3 metadata of one original: device uuid, name, city, country, label, request time, kind (ASCII)."""
    return {
        "device-uuid": metadata_value(camera.device_uuid, 128),
        "device-name": metadata_value(camera.device_name, METADATA_LIMITS["device-name"]),
        "geo-city": metadata_value(camera.city, METADATA_LIMITS["geo-city"]),
        "geo-country": metadata_value(camera.country, METADATA_LIMITS["geo-country"]),
        "label-key": camera.label_key or "",
        "requested-at": _iso_ms(camera.requested_at),
        "image-kind": kind,
    }


def _iso_ms(moment: datetime | None) -> str:
    """``2025-01-31T12:00:05.123Z`` (ISO 8601, UTC, milliseconds), or "" for no time."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- camera selection ----------------------------------------------------------------------------------
PatternSyntax = Literal["glob", "regex"]


def name_matcher(pattern: str | None, syntax: PatternSyntax = "glob") -> Callable[[str], bool]:
    """A case-insensitive test on device names.

    ``glob``: shell-style wildcards matched against the WHOLE name (``*parking*``, ``Paris ? Cam 0[1-3]``).
    ``regex``: Python ``re.search`` (anywhere in the name; anchor with ``^``/``$``).
    """
    if not pattern:
        return lambda name: True
    if syntax == "glob":
        folded = pattern.casefold()
        return lambda name: fnmatch.fnmatchcase(name.casefold(), folded)
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise InputError("name_pattern", f"{pattern!r} is not a valid regular expression ({exc})") from None
    return lambda name: compiled.search(name) is not None


class CameraResult(BaseModel):
    """One camera of a harvest: the report row, filled in as it goes through the stages.

    ``status``: ``done`` (originals stored; the Miniviz image pushed, or deferred per pacing), ``partial``
    (something stored, something else failed: see ``reason``), ``failed`` (nothing stored), ``skipped``
    (not asked: offline), ``rejected`` (not a device of this account, or a duplicate in the input).
    ``image_push`` / ``data_event``: ``sent``, ``deferred`` (pacing: reason says when), ``failed``,
    ``rejected``, ``skipped`` or ``off``.
    """

    index: int
    device_uuid: str
    device_name: str | None = None
    label_key: str | None = None
    client_identifier: str | None = None
    city: str | None = None
    country: str | None = None
    online: bool | None = None
    status: str = "pending"
    reason: str | None = None
    s3_bucket: str | None = None
    s3_raw_key: str | None = None
    s3_annotated_key: str | None = None
    image_push: str = "off"
    image_push_reason: str | None = None
    miniviz_image_id: str | None = None
    data_event: str = "off"
    data_event_reason: str | None = None
    miniviz_data_id: str | None = None
    bytes_raw: int | None = None
    bytes_annotated: int | None = None
    bytes_before_fit: int | None = None
    bytes_after_fit: int | None = None
    fit_format: str | None = None
    fit_quality: int | None = None
    fit_width: int | None = None
    fit_height: int | None = None
    requested_at: datetime | None = None
    seconds_until_ready: float | None = None
    seconds_request: float | None = None
    seconds_download: float | None = None
    seconds_store: float | None = None
    seconds_fit: float | None = None
    seconds_push: float | None = None
    seconds_total: float | None = None
    polls: int | None = None

    def add_reason(self, text: str) -> None:
        self.reason = "; ".join(filter(None, [self.reason, text]))


REPORT_COLUMNS = list(CameraResult.model_fields)


def select_cameras(
    devices: Sequence[Device],
    *,
    name_pattern: str | None = None,
    pattern_syntax: PatternSyntax = "glob",
    device_uuids: Sequence[str] | None = None,
    online_only: bool = True,
    label_source: LabelSource = "name",
    label_prefix: str = "",
) -> list[CameraResult]:
    """One row per camera to report, in listing order (explicit uuids that were not found come last).

    Rows to harvest have status ``pending``; cameras listed offline are ``skipped`` when ``online_only``;
    explicit uuids that are not in ``devices`` (unknown, not visible to this account, or outside the group
    filter) and repeated uuids are ``rejected`` with the reason. Label keys are assigned over every listed
    device, so a camera's key does not depend on which filters were used.
    """
    match = name_matcher(name_pattern, pattern_syntax)
    labels = assign_label_keys(devices, label_source, label_prefix)
    wanted: dict[str, int] | None = None
    rows: list[CameraResult] = []
    extra: list[CameraResult] = []
    if device_uuids is not None:
        wanted = {}
        for position, uuid in enumerate(device_uuids):
            uuid = str(uuid).strip()
            if uuid in wanted:
                extra.append(
                    CameraResult(index=0, device_uuid=uuid, status="rejected",
                                 reason=f"duplicate: device_uuids[{position}] repeats device_uuids[{wanted[uuid]}]")
                )  # fmt: skip
            else:
                wanted[uuid] = position
    seen: set[str] = set()
    for device in devices:
        if device.uuid in seen or (wanted is not None and device.uuid not in wanted):
            continue
        if not match(device.name or ""):
            if wanted is not None:  # asked for by uuid, but the name filter excludes it: say so
                extra.append(_row(device, labels, "rejected", f"name does not match {name_pattern!r}"))
                seen.add(device.uuid)
            continue
        seen.add(device.uuid)
        if online_only and not device.online:
            checked = f" (status last checked {device.refreshed})" if device.refreshed else ""
            rows.append(_row(device, labels, "skipped", f"offline{checked}: not asked for a snapshot"))
        else:
            rows.append(_row(device, labels, "pending", None))
    if wanted is not None:
        for uuid in wanted:
            if uuid not in seen:
                extra.append(
                    CameraResult(index=0, device_uuid=uuid, status="rejected",
                                 reason="unknown device: not among the devices this account sees (with the group filter)")
                )  # fmt: skip
    out = rows + extra
    for i, row in enumerate(out):
        row.index = i
    return out


def _row(device: Device, labels: dict[str, str], status: str, reason: str | None) -> CameraResult:
    return CameraResult(
        index=0,
        device_uuid=device.uuid,
        device_name=device.name,
        label_key=labels[device.uuid],
        client_identifier=device.client_identifier,
        city=device.geo_city,
        country=device.geo_country,
        online=device.online,
        status=status,
        reason=reason,
    )


# --- pacing state between runs -------------------------------------------------------------------------
STATE_VERSION = 1
STATE_KEEP_SECONDS = 30 * 86_400  # labels silent for 30 days are dropped from the file


class PacingState:
    """When each Miniviz label last got an image and a data event, and when the project last got data.

    Times are wall-clock UNIX seconds. A send is marked *before* it goes out (a crash right after sending
    still counts it) and re-marked when it finished (the pacers count from there); a send refused before
    reaching the rate limiter is unmarked. Stored as one small JSON document: a local file replaced
    atomically, or an ``s3://bucket/key`` object. The writer must be alone (the deployment's concurrency
    limit of 1 ensures it); concurrent ad-hoc runs may each send once, and a 429 then becomes a deferral.
    """

    def __init__(self, location: str, s3_client: Any = None) -> None:
        self.location = location
        self._s3 = s3_client
        if location.startswith("s3://"):
            if s3_client is None:
                raise InputError("state", f"{location}: s3:// state needs an S3 client (s3_bucket_block)")
            self._bucket, _, self._key = location[5:].partition("/")
            if not self._bucket or not self._key:
                raise InputError("state", f"{location!r} is not s3://bucket/key")
        self.labels: dict[str, dict[str, float]] = {}
        self.project_data_at: float | None = None
        self.dirty = False
        self.load_problem: str | None = None
        self.save_problem: str | None = None
        self._lock = asyncio.Lock()

    # reading and writing (sync: call through asyncio.to_thread)
    def load(self) -> PacingState:
        try:
            text = self._read()
        except Exception as exc:
            self.load_problem = f"could not read pacing state {self.location}: {type(exc).__name__}: {exc}"
            return self
        if not text:
            return self
        try:
            doc = json.loads(text)
            self.labels = {
                str(k): {kind: float(t) for kind, t in v.items() if kind in ("image", "data")}
                for k, v in doc.get("labels", {}).items()
            }
            at = doc.get("project_data_at")
            self.project_data_at = float(at) if at is not None else None
        except (ValueError, TypeError, AttributeError) as exc:
            self.labels, self.project_data_at = {}, None
            self.load_problem = f"pacing state {self.location} is damaged ({exc}); starting without it"
        return self

    def _read(self) -> str:
        if self._s3 is not None:
            try:
                return self._s3.get_object(Bucket=self._bucket, Key=self._key)["Body"].read().decode("utf-8")
            except ClientError as err:
                if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                    return ""
                raise
        path = Path(self.location)
        return path.read_text("utf-8") if path.exists() else ""

    def document(self) -> dict[str, Any]:
        now = time.time()
        labels = {
            k: v
            for k, v in sorted(self.labels.items())
            if max(v.values(), default=0) > now - STATE_KEEP_SECONDS
        }
        return {
            "version": STATE_VERSION,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "project_data_at": self.project_data_at,
            "labels": labels,
        }

    def save(self) -> None:
        payload = json.dumps(self.document(), separators=(",", ":")).encode("utf-8")
        if self._s3 is not None:
            self._s3.put_object(
                Bucket=self._bucket, Key=self._key, Body=payload, ContentType="application/json"
            )
            return
        path = Path(self.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def flush(self) -> None:
        """Write the state if it changed (one writer at a time, off the event loop)."""
        async with self._lock:
            if self.dirty:
                self.dirty = False
                try:
                    await asyncio.to_thread(self.save)
                except BaseException:
                    self.dirty = True
                    raise

    @contextlib.asynccontextmanager
    async def autoflush(self, every: float = 2.0) -> AsyncIterator[None]:
        """Flush every ``every`` seconds while the block runs, and once at its end.

        A write that fails is retried by the next round; if the last one fails too, ``save_problem`` says why
        (not fatal: the next run may then meet a 429, which it turns into a deferral).
        """

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                with contextlib.suppress(Exception):
                    await self.flush()

        flusher = asyncio.create_task(loop())
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            try:
                await self.flush()
                self.save_problem = None
            except Exception as exc:
                self.save_problem = f"could not save pacing state {self.location}: {error_text(exc)}"

    # the values
    def last(self, label: str, kind: Literal["image", "data"]) -> float | None:
        return self.labels.get(label, {}).get(kind)

    def mark(self, label: str, kind: Literal["image", "data"], at: float | None) -> None:
        entry = self.labels.setdefault(label, {})
        if at is None:
            entry.pop(kind, None)
        else:
            entry[kind] = at
            if kind == "data":
                self.project_data_at = max(self.project_data_at or at, at)
        self.dirty = True

    def seed(self, client: MinivizClient, labels: Iterable[str]) -> None:
        """Make the client's pacers wait for what earlier runs sent (so ``image_wait_time`` knows it)."""
        now = time.time()
        for label in labels:
            last = self.last(label, "image")
            if last is not None and (left := last + client.image_pacers.interval - now) > 0:
                client.image_pacers(label).push_back(left)
        if self.project_data_at is not None:
            left = self.project_data_at + client.data_pacer.interval - now
            if left > 0:
                client.data_pacer.push_back(left)


# --- the run: clients and limits shared by every batch -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HarvestSettings:
    key_layout: str = DEFAULT_KEY_LAYOUT
    prefix: str = "snapshots"
    push_kind: ImageKind = "annotated"
    max_image_bytes: int = 204_800
    ready_after: float = 20.0
    poll_interval: float = 2.0
    image_timeout: float = 300.0
    concurrency: int = 16
    fit_workers: int = 2


class HarvestRun:
    """What every batch of one run shares: the clients, the limits, the pacing state, the progress bar.

    ``vizio``: one VizioSense client; ``miniviz``: ONE Miniviz client for the whole run (None = no pushes);
    ``bucket``: where originals go (full keys, the S3Bucket's folder included); ``executor``: threads for S3.
    """

    def __init__(
        self,
        *,
        vizio: VizioSenseClient,
        miniviz: MinivizClient | None,
        bucket: BucketRef,
        executor: ThreadPoolExecutor,
        state: PacingState | None,
        settings: HarvestSettings,
        progress: Progress | None = None,
        total: int = 0,
    ) -> None:
        self.vizio = vizio
        self.miniviz = miniviz
        self.bucket = bucket
        self.executor = executor
        self.state = state
        self.settings = settings
        self.progress = progress
        self.total = total
        self.finished = 0
        self._last_progress = 0.0
        self.http = asyncio.Semaphore(max(1, settings.concurrency))  # VizioSense requests in flight
        # cameras holding image bytes (download -> store/fit -> push): bounds memory, gives backpressure
        self.holding = asyncio.Semaphore(max(2, 2 * max(settings.concurrency, settings.fit_workers)))
        self.fit = asyncio.Semaphore(max(1, settings.fit_workers))  # Pillow threads

    async def camera_finished(self) -> None:
        """Count a finished camera; update the progress artifact at most once a second (never raises)."""
        self.finished += 1
        now = time.monotonic()
        if self.progress is not None and (self.finished == self.total or now - self._last_progress >= 1.0):
            self._last_progress = now
            with contextlib.suppress(Exception):  # a missed progress update is not worth a camera
                await self.progress.update(
                    5 + 85 * self.finished / max(1, self.total),
                    f"{self.finished} of {self.total} cameras harvested",
                )

    async def in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking I/O (boto3) on the run's S3 threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(fn, *args, **kwargs)
        )


def error_text(exc: BaseException) -> str:
    """An error for the report: the clients' messages are already redacted and self-explanatory."""
    if isinstance(exc, ApiError | InputError):
        return redact(exc)
    return f"{type(exc).__name__}: {redact(exc)}"


def step_error(step: str, exc: BaseException) -> str:
    """``error_text`` naming the step, unless the message already does (client errors name the operation)."""
    return error_text(exc) if isinstance(exc, ApiError) else f"{step}: {error_text(exc)}"


def _seconds(start: float) -> float:
    return round(time.monotonic() - start, 3)


# --- one camera ----------------------------------------------------------------------------------------
async def harvest_one(run: HarvestRun, cam: CameraResult) -> CameraResult:
    """Request, wait, download, store, fit and push one camera. Never raises: problems go in the row."""
    started = time.monotonic()
    try:
        request = await _request(run, cam)
        if request is None:
            return cam
        wait = request.ready_at.timestamp() - run.vizio.clock.time()
        if wait > 0:  # the documented floor (20 s): sleep without holding any slot
            await run.vizio.clock.sleep(wait)
        async with run.holding:
            snapshots = await _download(run, cam, request)
            if snapshots:
                await asyncio.gather(_store(run, cam, snapshots), _fit_and_push(run, cam, snapshots))
            _settle(cam)
    except Exception as exc:  # a bug in one camera's path must not take the batch down
        cam.status = "partial" if cam.s3_raw_key or cam.s3_annotated_key else "failed"
        cam.add_reason(f"unexpected error: {error_text(exc)}")
    finally:
        cam.seconds_total = _seconds(started)
        await run.camera_finished()
    return cam


async def _request(run: HarvestRun, cam: CameraResult) -> ImageRequest | None:
    t0 = time.monotonic()
    async with run.http:
        try:
            request = await run.vizio.request_image(cam.device_uuid, ready_after=run.settings.ready_after)
        except Exception as exc:
            cam.status = "failed"
            cam.add_reason(step_error("request_image", exc))
            return None
        finally:
            cam.seconds_request = _seconds(t0)
    cam.requested_at = request.requested_at
    return request


async def _download(run: HarvestRun, cam: CameraResult, request: ImageRequest) -> dict[str, Snapshot]:
    t0 = time.monotonic()

    async def one(kind: ImageKind) -> Snapshot | None:
        async with run.http:
            try:
                return await run.vizio.fetch_image(
                    request,
                    kind,
                    poll_interval=run.settings.poll_interval,
                    timeout=run.settings.image_timeout,
                )
            except Exception as exc:
                cam.add_reason(step_error(f"fetch_image({kind})", exc))
                return None

    raw, annotated = await asyncio.gather(one("raw"), one("annotated"))
    cam.seconds_download = _seconds(t0)
    got = {k: s for k, s in (("raw", raw), ("annotated", annotated)) if s is not None}
    cam.bytes_raw = len(raw.content) if raw else None
    cam.bytes_annotated = len(annotated.content) if annotated else None
    if got:
        first = min(s.fetched_at for s in got.values())
        cam.seconds_until_ready = round((first - request.requested_at).total_seconds(), 3)
        cam.polls = sum(s.polls for s in got.values())
    return got


async def _store(run: HarvestRun, cam: CameraResult, snapshots: dict[str, Snapshot]) -> None:
    t0 = time.monotonic()
    cam.s3_bucket = run.bucket.bucket

    async def one(kind: str, snap: Snapshot) -> None:
        key = snapshot_key(
            run.settings.key_layout,
            prefix=run.settings.prefix,
            device_uuid=cam.device_uuid,
            label_key=cam.label_key or "",
            requested_at=cam.requested_at,
            kind=kind,
        )
        try:
            full_key = await run.in_thread(
                put_bytes, run.bucket, key, snap.content,
                metadata=snapshot_metadata(cam, kind), content_type="image/jpeg",
            )  # fmt: skip
        except Exception as exc:
            cam.add_reason(f"store {kind} in S3: {error_text(exc)}")
            return
        setattr(cam, f"s3_{kind}_key", full_key)

    await asyncio.gather(*(one(kind, snap) for kind, snap in snapshots.items()))
    cam.seconds_store = _seconds(t0)


async def _fit_and_push(run: HarvestRun, cam: CameraResult, snapshots: dict[str, Snapshot]) -> None:
    client = run.miniviz
    if client is None:
        return
    label = cam.label_key or ""
    kind = run.settings.push_kind
    snap = snapshots.get(kind) or next(iter(snapshots.values()))
    if client.plan != "pro":
        cam.image_push, cam.image_push_reason = "skipped", f"the Miniviz {client.plan} plan has no image API"
        return
    wait = client.image_wait_time(label)
    if wait > 0:  # decided before fitting: no CPU spent on an image that may not go out
        cam.image_push, cam.image_push_reason = "deferred", _image_deferral(run, label, wait)
        return
    t0 = time.monotonic()
    try:
        async with run.fit:
            fitted: FittedImage = await asyncio.to_thread(
                fit_to_byte_limit, snap.content, run.settings.max_image_bytes
            )
    except InputError as exc:
        cam.image_push, cam.image_push_reason = "rejected", f"cannot fit the {snap.kind} image: {exc}"
        return
    finally:
        cam.seconds_fit = _seconds(t0)
    cam.bytes_before_fit, cam.bytes_after_fit = fitted.bytes_before, fitted.bytes_after
    cam.fit_format, cam.fit_quality = fitted.format, fitted.quality
    cam.fit_width, cam.fit_height = fitted.width, fitted.height
    ext = "png" if fitted.format == "PNG" else "jpg"
    image_name = f"{cam.device_uuid}_{utc_stamp(cam.requested_at)}_{snap.kind}.{ext}"[-255:]
    timestamp_ms = int(cam.requested_at.timestamp() * 1000)
    await _push_image(run, cam, label, fitted.data, image_name, timestamp_ms)


async def _push_image(
    run: HarvestRun, cam: CameraResult, label: str, data: bytes, image_name: str, timestamp_ms: int
) -> None:
    client, state = run.miniviz, run.state
    assert client is not None
    wait = client.image_wait_time(label)
    if wait > 0:
        cam.image_push, cam.image_push_reason = "deferred", _image_deferral(run, label, wait)
        return
    previous = state.last(label, "image") if state else None
    if state:
        state.mark(label, "image", time.time())  # before sending: a crash right after still counts it
    t0 = time.monotonic()
    try:
        ack = await client.send_image(label, data, image_name, timestamp_ms)
    except RateLimitedError as exc:  # someone else pushed for this label: defer, never retry
        cam.image_push = "deferred"
        cam.image_push_reason = (
            f"Miniviz answered 429 for label {label} (an image was sent for it elsewhere within "
            f"{client.image_pacers.interval:g} s); next run tries again: {error_text(exc)}"
        )
        client.image_pacers(label).push_back(client.image_pacers.interval)
        if state:
            state.mark(label, "image", time.time())
        return
    except Exception as exc:
        sent = isinstance(exc, OutcomeUnknownError) or (
            isinstance(exc, ApiError) and (exc.status is None or exc.status >= 500)
        )
        if state and not sent:  # refused before reaching the limiter: the slot was not used
            state.mark(label, "image", previous)
        cam.image_push = "rejected" if isinstance(exc, InputError) else "failed"
        cam.image_push_reason = error_text(exc)
        return
    finally:
        cam.seconds_push = _seconds(t0)
    if state:
        state.mark(label, "image", time.time())
    cam.image_push, cam.miniviz_image_id = "sent", ack.id


def _image_deferral(run: HarvestRun, label: str, wait: float) -> str:
    assert run.miniviz is not None
    interval = run.miniviz.image_pacers.interval
    last = run.state.last(label, "image") if run.state else None
    ago = f"{time.time() - last:.0f} s ago" if last is not None else "recently"
    return (
        f"harvested too soon: label {label} got an image {ago}; Miniviz accepts one image per label every "
        f"{interval:g} s, next allowed in {math.ceil(wait)} s"
    )


def _settle(cam: CameraResult) -> None:
    """The camera's status from what landed: both originals stored and no push error -> done."""
    stored = [k for k in ("raw", "annotated") if getattr(cam, f"s3_{k}_key")]
    if not stored:
        cam.status = "failed"
        return
    push_failed = cam.image_push in ("failed", "rejected")
    if len(stored) == 2 and not push_failed:
        cam.status = "done"
    else:
        cam.status = "partial"
        if push_failed:
            cam.add_reason(f"Miniviz image push {cam.image_push}: {cam.image_push_reason}")


# --- batch tasks ---------------------------------------------------------------------------------------
@task(name="harvest-camera-batch", cache_policy=NO_CACHE)
async def harvest_camera_batch(run: HarvestRun, cameras: list[CameraResult]) -> list[CameraResult]:
    """Harvest a batch of cameras (rows with status ``pending``) in one task run; returns the same rows, filled.

    Each camera: request a snapshot, sleep until its documented ready time, download raw and annotated
    (polling with backoff if not served yet, up to the image timeout), store both originals in S3 with their
    metadata, and, unless its label must still wait (deferred), fit a copy into Miniviz's limit and push it.
    Never raises for one camera.

    Example:
        ```python
        rows = await harvest_camera_batch(run, [row for row in rows if row.status == "pending"][:100])
        ```
    """
    logger = get_run_logger()
    if run.miniviz is not None:
        for cam in cameras:
            cam.image_push = "pending"
    done = await asyncio.gather(*(harvest_one(run, cam) for cam in cameras))
    for cam in done:
        if cam.image_push == "pending":
            cam.image_push, cam.image_push_reason = "skipped", "no image was harvested"
        if cam.status in ("failed", "partial"):
            logger.warning("camera %s (%s): %s: %s", cam.device_uuid, cam.device_name, cam.status, cam.reason)
    counts = {s: sum(1 for c in done if c.status == s) for s in ("done", "partial", "failed")}
    logger.info("batch of %d cameras: %s", len(done), ", ".join(f"{n} {s}" for s, n in counts.items()))
    return list(done)


@task(name="send-camera-data-events", cache_policy=NO_CACHE)
async def send_camera_data_events(
    run: HarvestRun, cameras: list[CameraResult], budget_seconds: float
) -> list[CameraResult]:
    """One Miniviz data event per camera (``online``, ``bytes``, ``seconds_until_ready``, ...), as pacing allows.

    Miniviz takes one data event per *project* every 15 s (Pro) / 60 s (Free), so a fleet cannot get one
    event per camera per run. Events go out stalest label first (labels that never got one, then the oldest,
    from the pacing state), paced by the run's client, while the next slot opens within ``budget_seconds``
    of the start of this stage; the rest are ``deferred`` with the reason and go first next run. With the
    limit off (interval 0) they are all sent, concurrently. A 429 (someone else sent) stops the stage: the
    rest are deferred, never retried. Rejected rows (not devices) get no event.

    Example:
        ```python
        rows = await send_camera_data_events(run, rows, budget_seconds=60)
        ```
    """
    client, state = run.miniviz, run.state
    assert client is not None
    logger = get_run_logger()
    targets = [c for c in cameras if c.status != "rejected" and c.label_key]
    for cam in cameras:
        if cam.status == "rejected":
            cam.data_event = "skipped"
    order = sorted(
        targets, key=lambda c: ((state.last(c.label_key, "data") if state else None) or -math.inf, c.index)
    )
    pacer = client.data_pacer
    limit = asyncio.Semaphore(max(1, run.settings.concurrency))
    deadline = time.monotonic() + max(0.0, budget_seconds)
    stop: str | None = None

    async def send(cam: CameraResult) -> None:
        nonlocal stop
        label = cam.label_key or ""
        previous = state.last(label, "data") if state else None
        if state:
            state.mark(label, "data", time.time())
        try:
            ack = await client.send_data(label, data_payload(cam), _event_ms(cam))
        except RateLimitedError as exc:
            stop = (
                f"Miniviz answered 429 (a data event was sent for this project elsewhere): {error_text(exc)}"
            )
            cam.data_event, cam.data_event_reason = "deferred", stop
            pacer.push_back(pacer.interval)
            if state:
                state.mark(label, "data", previous)
            return
        except Exception as exc:
            sent = isinstance(exc, OutcomeUnknownError) or (
                isinstance(exc, ApiError) and (exc.status is None or exc.status >= 500)
            )
            if state and not sent:
                state.mark(label, "data", previous)
            cam.data_event = "rejected" if isinstance(exc, InputError) else "failed"
            cam.data_event_reason = error_text(exc)
            return
        if state:
            state.mark(label, "data", time.time())
        cam.data_event, cam.miniviz_data_id = "sent", ack.id

    if pacer.interval == 0 and pacer.wait_time() == 0:

        async def bounded(cam: CameraResult) -> None:
            async with limit:
                await send(cam)

        await asyncio.gather(*(bounded(c) for c in order))
    else:
        for cam in order:
            if stop is None and time.monotonic() + pacer.wait_time() > deadline:
                stop = (
                    f"Miniviz allows one data event per project every {pacer.interval:g} s ({client.plan} plan); "
                    f"this run's data budget of {budget_seconds:g} s was used: stalest cameras go first next run"
                )
            if stop is not None:
                cam.data_event, cam.data_event_reason = "deferred", stop
                continue
            await send(cam)
    sent = sum(1 for c in targets if c.data_event == "sent")
    logger.info("Miniviz data events: %d sent, %d deferred of %d cameras", sent,
                sum(1 for c in targets if c.data_event == "deferred"), len(targets))  # fmt: skip
    return cameras


def data_payload(cam: CameraResult) -> dict[str, int | float]:
    """The camera's data event: numbers only, at most 8 keys (Miniviz rules).

    ``online`` 1/0 (as listed), ``ok`` 1 if an original was stored, ``bytes`` of the raw original,
    ``bytes_fitted`` of the image pushed, ``seconds_until_ready`` from the request to the image being served.
    """
    payload: dict[str, int | float] = {
        "online": 1 if cam.online else 0,
        "ok": 1 if cam.status in ("done", "partial") else 0,
        "bytes": cam.bytes_raw or 0,
    }
    if cam.bytes_after_fit is not None:
        payload["bytes_fitted"] = cam.bytes_after_fit
    if cam.seconds_until_ready is not None:
        payload["seconds_until_ready"] = round(cam.seconds_until_ready, 3)
    return payload


def _event_ms(cam: CameraResult) -> int:
    moment = cam.requested_at.timestamp() if cam.requested_at else time.time()
    return int(moment * 1000)
