"""Micrio Server API v2 backend: organisations, folders, images and the tiling pipeline.

Facts from docs/service-api-facts.md §3 (DOC unless noted). Error bodies are ASSUMED ``{"error": "<message>"}``.

Each added image really fetches its ``sourceUrl`` and walks ``queued → downloading → processing → tiling →
storing → ready`` on the emulator's clock. A pool of ``max_concurrent`` worker tasks consumes one FIFO queue,
so images beyond that wait in ``queued`` like on Micrio's processing servers, and 10,000 queued images cost
no timers or polling: only the images being processed sleep.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import logging
import random
import re
import string
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from ..common import Clock, EmulatorBackend, ServiceError

log = logging.getLogger(__name__)

FOLDER_ID_LENGTH = 6  # DOC: "The folder ID to put the images in (6 chars)"
IMAGE_ID_LENGTH = 6  # ASSUMED: Micrio ids are short random strings; we use 6 letters like folder ids
ID_ALPHABET = string.ascii_letters
FOLDER_TYPES = ("folder", "album", "space")  # DOC
DEFAULT_USER_EMAIL = "tiler@micr.io"  # DOC
STAGES = ("downloading", "processing", "tiling", "storing")  # DOC values; order INF from the naming
STATUSES = ("queued", *STAGES, "ready", "error")
PENDING = frozenset(("queued", *STAGES))
ERROR_CODES = ("originalNotFound", "invalidImage", "uploadError", "statusUpdateError", "unknown")  # DOC
# Only these can be injected; originalNotFound / invalidImage come from really fetching the source.
TRANSIENT_ERRORS = ("uploadError", "statusUpdateError", "unknown")
# Stage at which an injected error shows up unless a rule names one (ASSUMED, from what each name suggests).
DEFAULT_ERROR_STAGE = {"uploadError": "storing", "statusUpdateError": "storing", "unknown": "tiling"}
SPOOL_BYTES = 2 * 1024 * 1024  # downloads larger than this go to a temp file, so memory stays bounded
CLIENT_SHARE = 8  # workers per pooled fetch client
MAX_CLIENTS = 16
# Settings that POST /_emulator/config may change at run time (until the next reset).
RUNTIME_KEYS = frozenset(
    (
        "stage_durations",
        "tiling_per_megapixel",
        "max_concurrent",
        "max_images_per_add",
        "fail_rules",
        "transient_error_rate",
        "transient_errors",
        "seed",
        "fetch_timeout_seconds",
    )
)


def error(status: int, message: str) -> ServiceError:
    """A rejection in Micrio's (ASSUMED) error envelope."""
    return ServiceError(status, {"error": message}, message)


def default_name(source_url: str) -> str:
    """DOC: the name defaults to the URL's file name (last path segment, percent-decoded, no query)."""
    parts = urlsplit(source_url)
    segment = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    return segment or parts.netloc or source_url


def without_query(url: str) -> str:
    """The URL for inspection output: presigned query strings carry credentials, so they are cut."""
    base, sep, _ = url.partition("?")
    return f"{base}?..." if sep else base


_SIGNING_PARAMS = ("x-amz-", "x-goog-", "awsaccesskeyid", "signature", "expires")


def source_identity(url: str) -> str:
    """The source a URL names, without presigning parameters: the same object presigned twice is one source,
    so adding it twice counts as a duplicate."""
    parts = urlsplit(url)
    kept = [pair for pair in parts.query.split("&") if pair and not pair.lower().startswith(_SIGNING_PARAMS)]
    return parts._replace(query="&".join(kept), fragment="").geturl()


def identify(data: io.IOBase | bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the image header, or None when Pillow cannot identify it (Micrio: invalidImage)."""
    fp = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        with Image.open(fp) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def render_thumbnail(width: int, height: int, key: str, max_side: int = 256) -> bytes:
    """A real JPEG with the image's aspect ratio, rendered on demand so nothing is stored per image."""
    scale = max_side / max(width, height, 1)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digest = hashlib.sha1(key.encode()).digest()
    im = Image.new("RGB", size, tuple(digest[:3]))
    # A second colour in the lower half so the thumbnail is not a flat block (and differs per image).
    im.paste(tuple(digest[3:6]), (0, size[1] // 2, size[0], size[1]))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=80)
    return out.getvalue()


@dataclass(slots=True)
class FetchResult:
    """Outcome of downloading an original: dimensions, or the Micrio error code."""

    width: int | None = None
    height: int | None = None
    error: str | None = None
    nbytes: int = 0


Fetcher = Callable[[str], Awaitable[FetchResult]]


@dataclass(slots=True)
class Folder:
    id: str
    organisation_id: str
    parent_id: str | None
    name: str
    type: str
    # Per-folder indexes, so folder/status never scans images: insertion-ordered sets of ids.
    total: int = 0
    ready: int = 0
    pending: dict[str, None] = field(default_factory=dict)
    errored: dict[str, None] = field(default_factory=dict)


@dataclass(slots=True)
class MicrioImage:
    id: str
    organisation_id: str
    folder_id: str
    name: str
    source_url: str
    user_email: str
    added_at: float
    status: str = "queued"
    error: str | None = None
    width: int | None = None
    height: int | None = None
    ready_at: float | None = None


@dataclass(slots=True)
class FailRule:
    pattern: re.Pattern[str]
    error: str
    stage: str
    times: int | None  # None: every attempt fails


@dataclass(slots=True)
class Organisation:
    id: str
    api_key: str


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class MicrioBackend(EmulatorBackend):
    service = "micrio"

    def __init__(self, config: dict[str, Any], clock: Clock, base_url: str, *, thumbnail_path: str) -> None:
        self._startup_config = copy.deepcopy(config)
        self.thumbnail_path = thumbnail_path
        # Injectable download step (unit tests stub it); the default really GETs the URL.
        self.fetcher: Fetcher = self.fetch_source
        self._http: list[httpx.AsyncClient] = []
        self._next_client = 0
        self._workers: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[MicrioImage] | None = None
        super().__init__(config, clock, base_url)

    # --- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self._stop_workers()
        self.config = copy.deepcopy(self._startup_config)
        self.organisations: dict[str, Organisation] = {}
        self.folders: dict[str, Folder] = {}
        self.images: dict[str, MicrioImage] = {}
        for org in self.config["organisations"]:
            org_id, key = org["organisation_id"], org["api_key"]
            if not (_is_uuid(org_id) and _is_uuid(key)):
                raise ValueError(f"micrio organisation {org_id!r}: organisation_id and api_key must be uuids")
            org_id = str(uuid.UUID(org_id))  # canonical form: uuids compare case-insensitively
            self.organisations[org_id] = Organisation(org_id, str(uuid.UUID(key)))
            for f in org.get("folders", []):
                kind = f.get("type", "folder")
                self._add_folder(f["id"], org_id, None, f.get("name", kind), kind)
        self.status_counts: Counter[str] = Counter()
        self.error_counts: Counter[str] = Counter()
        self.first_added_at: tuple[float, float] | None = None  # (virtual, real monotonic)
        self.last_ready_at: tuple[float, float] | None = None
        self.fetch_stats: Counter[str] = Counter()
        self._apply_runtime_config()
        self._rng = random.Random(self.config.get("seed"))
        self._attempts: Counter[tuple[int, str]] = Counter()  # (rule index, sourceUrl) -> attempts so far

    def _add_folder(self, folder_id: str, org_id: str, parent: str | None, name: str, kind: str) -> Folder:
        if len(folder_id) != FOLDER_ID_LENGTH or folder_id in self.folders:
            raise ValueError(f"micrio folder id {folder_id!r} must be {FOLDER_ID_LENGTH} chars and unique")
        if kind not in FOLDER_TYPES:
            raise ValueError(f"micrio folder {folder_id!r}: type must be one of {FOLDER_TYPES}")
        folder = Folder(folder_id, org_id, parent, name, kind)
        self.folders[folder_id] = folder
        return folder

    def _apply_runtime_config(self) -> None:
        """(Re)build what the tunables drive: fail rules, random source, per-stage durations."""
        cfg = self.config
        durations = cfg["stage_durations"]
        missing = [s for s in STAGES if s not in durations]
        if missing:
            raise ValueError(f"micrio stage_durations: missing {missing}")
        self.stage_durations = {s: float(durations[s]) for s in STAGES}
        if int(cfg["max_concurrent"]) < 1:
            raise ValueError("micrio max_concurrent must be >= 1")
        if int(cfg["max_images_per_add"]) < 1 or float(cfg["fetch_timeout_seconds"]) <= 0:
            raise ValueError("micrio max_images_per_add and fetch_timeout_seconds must be positive")
        if not 0 <= float(cfg.get("transient_error_rate") or 0) <= 1:
            raise ValueError("micrio transient_error_rate must be between 0 and 1")
        float(cfg.get("tiling_per_megapixel") or 0)  # must be a number
        self.rules: list[FailRule] = []
        for rule in cfg.get("fail_rules") or []:
            code = rule.get("error", "uploadError")
            if code not in TRANSIENT_ERRORS:
                raise ValueError(f"micrio fail rule error must be one of {TRANSIENT_ERRORS}, got {code!r}")
            stage = rule.get("stage", DEFAULT_ERROR_STAGE[code])
            if stage not in STAGES:
                raise ValueError(f"micrio fail rule stage must be one of {STAGES}, got {stage!r}")
            times = rule.get("times")
            self.rules.append(
                FailRule(re.compile(rule["match"]), code, stage, None if times is None else int(times))
            )
        errors = cfg.get("transient_errors") or list(TRANSIENT_ERRORS)
        if any(e not in TRANSIENT_ERRORS for e in errors):
            raise ValueError(f"micrio transient_errors must be a subset of {TRANSIENT_ERRORS}")
        self.transient_errors = list(errors)

    def update_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change processing tunables at run time (until the next reset); returns them."""
        unknown = set(changes) - RUNTIME_KEYS
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)} at run time; allowed: {sorted(RUNTIME_KEYS)}")
        previous = self.config
        self.config = {**previous, **changes}
        if isinstance(changes.get("stage_durations"), dict):  # a partial update keeps the other stages
            self.config["stage_durations"] = {**previous["stage_durations"], **changes["stage_durations"]}
        try:
            self._apply_runtime_config()
        except (ValueError, KeyError, TypeError, AttributeError, re.error) as exc:
            self.config = previous
            self._apply_runtime_config()
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc
        if "seed" in changes:
            self._rng = random.Random(self.config.get("seed"))
        if "fail_rules" in changes:
            self._attempts.clear()  # new rules count attempts from zero
        self._top_up_workers()
        return self.runtime_config()

    def runtime_config(self) -> dict[str, Any]:
        return {k: self.config.get(k) for k in sorted(RUNTIME_KEYS)}

    # --- request validation -----------------------------------------------------------------------
    @staticmethod
    def _require_object(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise error(400, "Request body must be a JSON object")
        return body

    def authenticate(self, body: Any) -> tuple[dict[str, Any], Organisation]:
        """Body auth (DOC): ``organisationId`` + ``apiKey``, both uuids. Malformed → 400, wrong → 401."""
        body = self._require_object(body)
        for key in ("organisationId", "apiKey"):
            if key not in body or body[key] in (None, ""):
                raise error(400, f"{key} is required")
            if not _is_uuid(body[key]):
                raise error(400, f"{key} must be a uuid")
        org = self.organisations.get(str(uuid.UUID(body["organisationId"])))
        if org is None or str(uuid.UUID(body["apiKey"])) != org.api_key:
            raise error(401, "Invalid organisationId or apiKey")
        return body, org

    @staticmethod
    def _folder_id(body: dict[str, Any], key: str) -> str:
        value = body.get(key)
        if value is None or value == "":
            raise error(400, f"{key} is required")
        if not isinstance(value, str) or len(value) != FOLDER_ID_LENGTH:
            raise error(400, f"{key} must be a string of {FOLDER_ID_LENGTH} characters")
        return value

    def _folder(self, org: Organisation, folder_id: str) -> Folder:
        folder = self.folders.get(folder_id)
        if folder is None or folder.organisation_id != org.id:  # another organisation's folder is not yours
            raise error(404, f"Folder {folder_id!r} not found")
        return folder

    def _new_id(self) -> str:
        while True:
            new = "".join(self._rng.choices(ID_ALPHABET, k=IMAGE_ID_LENGTH))
            if new not in self.images and new not in self.folders:
                return new

    # --- operations -------------------------------------------------------------------------------
    def add_images(self, body: Any) -> dict[str, Any]:
        """``POST /v2/images/add``: queue images; ids come back in input order with status ``queued``."""
        body, org = self.authenticate(body)
        images = body.get("images")
        if images is None:
            raise error(400, "images is required")
        if not isinstance(images, list):
            raise error(400, "images must be an array")
        if not images:
            raise error(400, "images must contain at least one image")  # ASSUMED
        cap = int(self.config["max_images_per_add"])
        if len(images) > cap:
            # ASSUMED cap: Micrio documents none (config max_images_per_add)
            raise error(400, f"images has {len(images)} entries; the maximum per call is {cap}")
        parsed: list[tuple[str, str]] = []
        for i, item in enumerate(images):
            if not isinstance(item, dict):
                raise error(400, f"images[{i}] must be an object")
            src = item.get("sourceUrl")
            if not isinstance(src, str) or not src.strip():
                raise error(400, f"images[{i}].sourceUrl is required (a URL string)")
            name = item.get("name")
            if name is not None and not isinstance(name, str):
                raise error(400, f"images[{i}].name must be a string")
            parsed.append((name or default_name(src), src))
        folder_id = self._folder_id(body, "folderId")
        email = body.get("userEmail", DEFAULT_USER_EMAIL)
        if email is not None and not isinstance(email, str):
            raise error(400, "userEmail must be a string")
        folder = self._folder(org, folder_id)

        now = self.clock.now()
        if self.first_added_at is None:
            self.first_added_at = (now, time.monotonic())
        self._ensure_workers()
        out = []
        for name, src in parsed:
            image = MicrioImage(
                self._new_id(), org.id, folder.id, name, src, email or DEFAULT_USER_EMAIL, now
            )
            self.images[image.id] = image
            folder.total += 1
            folder.pending[image.id] = None
            self.status_counts["queued"] += 1
            if self._queue is not None:
                self._queue.put_nowait(image)
            # Micrio creates a second image for the same source (ASSUMED); count it as a duplicate.
            self.received.accepted(
                "image",
                {"id": image.id, "folderId": folder.id, "name": name, "sourceUrl": without_query(src)},
                dedup_key=(folder.id, source_identity(src)),
            )
            out.append({"id": image.id, "name": name, "status": "queued"})
        return {"images": out}

    def image_status(self, body: Any) -> dict[str, Any]:
        """``POST /v2/image/status``: at most 100 ids (DOC). Unknown ids are left out (ASSUMED)."""
        body, org = self.authenticate(body)
        ids = body.get("imageIds")
        if ids is None:
            raise error(400, "imageIds is required")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise error(400, "imageIds must be an array of strings")
        limit = int(self.config["max_status_ids"])
        if len(ids) > limit:
            raise error(400, f"imageIds has {len(ids)} entries; the maximum is {limit}")
        out = []
        for image_id in dict.fromkeys(ids):
            image = self.images.get(image_id)
            if image is not None and image.organisation_id == org.id:
                out.append(self.describe(image))
        return {"images": out}

    def describe(self, image: MicrioImage) -> dict[str, Any]:
        """One image as ``image/status`` shows it: optional fields only when they apply (DOC)."""
        item: dict[str, Any] = {"id": image.id, "name": image.name, "status": image.status}
        if image.status == "error":
            item["error"] = image.error
        if image.width is not None:
            item["width"] = image.width
            item["height"] = image.height
        if image.status == "ready":
            item["thumbnail"] = self.base_url + self.thumbnail_path.format(image_id=image.id)
        return item

    def folder_status(self, body: Any) -> dict[str, Any]:
        """``POST /v2/folder/status``: counts and id lists from the folder's own indexes."""
        body, org = self.authenticate(body)
        folder = self._folder(org, self._folder_id(body, "folderId"))
        return {
            "numTotal": folder.total,
            "numComplete": folder.ready,
            "processingIds": list(folder.pending),
            "erroredIds": list(folder.errored),
        }

    def create_folder(self, body: Any) -> dict[str, Any]:
        """``POST /v2/folder/create``: a folder, album or space (360 tour) under an existing folder."""
        body, org = self.authenticate(body)
        parent_id = self._folder_id(body, "parentId")
        kind = body.get("type")
        if kind is None:
            kind = "folder"
        if kind not in FOLDER_TYPES:
            raise error(400, f"type must be one of {', '.join(FOLDER_TYPES)}")
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise error(400, "name must be a string")
        parent = self._folder(org, parent_id)
        name = name or kind  # DOC: defaults to the type of the folder
        folder = self._add_folder(self._new_id(), org.id, parent.id, name, kind)
        self.received.accepted(
            "folder",
            {"id": folder.id, "parentId": parent.id, "name": name, "type": kind},
            dedup_key=(parent.id, kind, name),
        )
        return {"id": folder.id}

    def thumbnail(self, image_id: str) -> tuple[int, int, str] | None:
        """What ``render_thumbnail`` needs for a ready image, else None."""
        image = self.images.get(image_id)
        if image is None or image.status != "ready" or image.width is None:
            return None
        return image.width, image.height, image.id

    # --- processing -------------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        """Start the queue and worker pool inside the running loop (first add), never in ``__init__``."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (synchronous unit test): images stay queued
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._top_up_workers()

    def _top_up_workers(self) -> None:
        if self._queue is None:
            return
        while len(self._workers) < int(self.config["max_concurrent"]):
            task = asyncio.get_running_loop().create_task(self._worker(self._queue))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _stop_workers(self) -> None:
        for task in list(self._workers):
            task.cancel()
        self._workers = set()
        self._queue = None

    async def _worker(self, queue: asyncio.Queue[MicrioImage]) -> None:
        me = asyncio.current_task()
        while True:
            image = await queue.get()
            try:
                await self._process(image)
            except Exception:  # a bug must not kill the pool: the image ends as Micrio's "unknown"
                log.exception("micrio emulator: processing %s failed", image.id)
                if image.status in PENDING:
                    self._fail(image, "unknown")
            # Shrink the pool after max_concurrent was lowered at run time.
            if len(self._workers) > int(self.config["max_concurrent"]):
                self._workers.discard(me)
                return

    def _planned_failure(self, image: MicrioImage) -> tuple[str, str] | None:
        """(stage, error) injected for this attempt: the first matching rule, else the random rate."""
        for i, rule in enumerate(self.rules):
            if rule.pattern.search(image.source_url) or rule.pattern.search(image.name):
                key = (i, source_identity(image.source_url))  # the same object presigned again
                self._attempts[key] += 1
                if rule.times is None or self._attempts[key] <= rule.times:
                    return rule.stage, rule.error
                return None
        rate = float(self.config.get("transient_error_rate") or 0.0)
        if rate and self._rng.random() < rate:
            code = self._rng.choice(self.transient_errors)
            return DEFAULT_ERROR_STAGE[code], code
        return None

    def _set_status(self, image: MicrioImage, status: str) -> None:
        self.status_counts[image.status] -= 1
        self.status_counts[status] += 1
        image.status = status

    def _fail(self, image: MicrioImage, code: str) -> None:
        self._set_status(image, "error")
        image.error = code
        self.error_counts[code] += 1
        folder = self.folders[image.folder_id]
        folder.pending.pop(image.id, None)
        folder.errored[image.id] = None

    def _ready(self, image: MicrioImage) -> None:
        self._set_status(image, "ready")
        image.ready_at = self.clock.now()
        self.last_ready_at = (image.ready_at, time.monotonic())
        folder = self.folders[image.folder_id]
        folder.pending.pop(image.id, None)
        folder.ready += 1

    async def _process(self, image: MicrioImage) -> None:
        """One image through the pipeline; each stage lasts its configured virtual duration."""
        planned = self._planned_failure(image)
        durations = self.stage_durations
        self._set_status(image, "downloading")
        started = self.clock.now()
        fetched = await self.fetcher(image.source_url)
        if fetched.error:
            self._fail(image, fetched.error)
            return
        # The stage lasts at least its configured duration, or as long as the real download took.
        await self.clock.sleep(durations["downloading"] - (self.clock.now() - started))
        if planned and planned[0] == "downloading":
            self._fail(image, planned[1])
            return
        image.width, image.height = fetched.width, fetched.height
        for stage in STAGES[1:]:
            self._set_status(image, stage)
            duration = durations[stage]
            if stage == "tiling" and image.width and image.height:
                per_mpix = float(self.config.get("tiling_per_megapixel") or 0.0)
                duration += per_mpix * image.width * image.height / 1e6
            await self.clock.sleep(duration)
            if planned and planned[0] == stage:
                self._fail(image, planned[1])
                return
        self._ready(image)

    def _client(self) -> httpx.AsyncClient:
        """A fetch client, round-robin over a small pool created lazily in the loop that uses it.

        One httpx client slows down past a handful of requests in flight (docs/performance.md), so the
        pool keeps about ``CLIENT_SHARE`` workers per client.
        """
        wanted = min(MAX_CLIENTS, -(-int(self.config["max_concurrent"]) // CLIENT_SHARE))
        while len(self._http) < wanted:
            self._http.append(
                httpx.AsyncClient(
                    timeout=float(self.config["fetch_timeout_seconds"]),
                    follow_redirects=True,
                    limits=httpx.Limits(
                        max_connections=CLIENT_SHARE * 2, max_keepalive_connections=CLIENT_SHARE * 2
                    ),
                )
            )
        self._next_client = (self._next_client + 1) % wanted
        return self._http[self._next_client]

    async def fetch_source(self, url: str) -> FetchResult:
        """GET the original exactly as given (presigned URLs included) and read its dimensions.

        Not reachable / non-2xx → ``originalNotFound``; not an image Pillow knows → ``invalidImage``.
        """
        self.fetch_stats["fetches"] += 1
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            try:
                async with self._client().stream("GET", url) as response:
                    if not 200 <= response.status_code < 300:
                        self.fetch_stats["not_found"] += 1
                        return FetchResult(error="originalNotFound")
                    async for chunk in response.aiter_bytes():
                        spool.write(chunk)
            except (httpx.HTTPError, httpx.InvalidURL, ValueError):
                self.fetch_stats["not_found"] += 1
                return FetchResult(error="originalNotFound")
            nbytes = spool.tell()
            self.fetch_stats["bytes"] += nbytes
            spool.seek(0)
            # Reading a header from memory takes ~50 us: cheaper inline than a thread hop. Big originals
            # spilled to disk are read in a thread.
            size = identify(spool) if nbytes <= SPOOL_BYTES else await asyncio.to_thread(identify, spool)
        finally:
            spool.close()
        if size is None:
            self.fetch_stats["invalid"] += 1
            return FetchResult(error="invalidImage", nbytes=nbytes)
        return FetchResult(width=size[0], height=size[1], nbytes=nbytes)

    async def aclose(self) -> None:
        """Stop the workers and close the fetch client (tests; the server process just exits)."""
        self._stop_workers()
        clients, self._http = self._http, []
        for client in clients:
            await client.aclose()

    # --- inspection -------------------------------------------------------------------------------
    def inspect(self) -> dict[str, Any]:
        first, last = self.first_added_at, self.last_ready_at
        span = None
        if first and last:
            span = {"virtual_seconds": last[0] - first[0], "real_seconds": last[1] - first[1]}
        return {
            "images_total": len(self.images),
            "by_status": {s: self.status_counts[s] for s in STATUSES},
            "errors": dict(self.error_counts),
            "folders": len(self.folders),
            "queued_waiting": self.status_counts["queued"],
            "workers": len(self._workers),
            "max_concurrent": int(self.config["max_concurrent"]),
            "first_added_at": first[0] if first else None,
            "first_added_at_monotonic": first[1] if first else None,
            "last_ready_at": last[0] if last else None,
            "last_ready_at_monotonic": last[1] if last else None,
            "first_added_to_last_ready": span,
            "fetch": dict(self.fetch_stats),
        }
