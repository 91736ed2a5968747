"""Micrio Server API v2 client (Enterprise): add images from source URLs, poll their tiling, folders (docs/service-api-facts.md §3).

Auth is in the JSON body (``organisationId`` + ``apiKey`` on every call, DOC). Both values are registered
for redaction, and error messages are built from the *response* only, so the key in the request body can
never reach an exception or a log line.

``images/add`` and ``folder/create`` create things: a broken connection after sending raises
``OutcomeUnknownError`` and is never retried, because a second add creates a second image.
``image/status`` and ``folder/status`` are read-only POSTs and are retried like GETs.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ApiError, InputError, OutcomeUnknownError
from .timing import SYSTEM_CLOCK, Clock
from .transport import HttpService, HttpSettings

# DOC paths (all POST with a JSON body; note the singular "image" in image/status).
IMAGES_ADD_PATH = "/v2/images/add"
IMAGE_STATUS_PATH = "/v2/image/status"
FOLDER_STATUS_PATH = "/v2/folder/status"
FOLDER_CREATE_PATH = "/v2/folder/create"

# Micrio hands each Enterprise customer its own endpoint (DOC): there is no public default. Blocks start
# from this placeholder (the reserved .invalid TLD never resolves) and the client refuses it.
PLACEHOLDER_BASE_URL = "https://your-micrio-endpoint.invalid"

FOLDER_ID_LENGTH = 6  # DOC: "The folder ID to put the images in (6 chars)"
MAX_STATUS_IDS = 100  # DOC: image/status takes at most 100 ids
DEFAULT_MAX_BATCH = 1000  # ASSUMED: images/add documents no cap; the emulator answers 400 above 1000
DEFAULT_STATUS_CONCURRENCY = 4  # image/status calls in flight at once when polling many ids

ImageStatusValue = Literal["queued", "downloading", "processing", "tiling", "storing", "ready", "error"]
ErrorCode = Literal["originalNotFound", "invalidImage", "uploadError", "statusUpdateError", "unknown"]
FolderType = Literal["folder", "album", "space"]
FOLDER_TYPES: tuple[str, ...] = ("folder", "album", "space")

TERMINAL_STATUSES = frozenset({"ready", "error"})
# Error codes worth adding the image again for (a server-side hiccup), and those that will fail again
# until the original itself changes. The split is INF from the names; Micrio documents no retry advice.
TRANSIENT_ERRORS = frozenset({"uploadError", "statusUpdateError", "unknown"})
FINAL_ERRORS = frozenset({"originalNotFound", "invalidImage"})

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
_URL_QUERY_RE = re.compile(r"(https?://[^\s?\"'<>]+)\?[^\s\"'<>]*")


# --- models -------------------------------------------------------------------------------------------


class ImageSource(BaseModel):
    """One image to add: the original's URL (reachable by Micrio's servers) and an optional name / your ID.

    Build it as ``ImageSource(source_url=..., name=...)`` or from the API's own ``{"sourceUrl": ...}``.
    """

    model_config = ConfigDict(populate_by_name=True)

    source_url: str = Field(alias="sourceUrl", description="URL of the original, e.g. an S3 presigned URL.")
    name: str | None = Field(
        default=None, description="Image name / your ID; Micrio defaults to the file name."
    )

    def to_api(self) -> dict[str, str]:
        return self.model_dump(by_alias=True, exclude_none=True)


class AddedImage(BaseModel):
    """An image Micrio queued: its Micrio ID (embeddable once ``ready``), name and first status."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    status: ImageStatusValue


class ImageStatus(BaseModel):
    """Processing state of one image (``image/status``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    status: ImageStatusValue
    error: ErrorCode | None = None  # only when status == "error"
    width: int | None = None  # once known
    height: int | None = None
    thumbnail: str | None = None  # only when status == "ready"

    @property
    def terminal(self) -> bool:
        return is_terminal(self.status)

    @property
    def transient_error(self) -> bool:
        """Errored in a way that adding the image again may fix."""
        return self.status == "error" and (self.error is None or self.error in TRANSIENT_ERRORS)


class ImageStatusReport(BaseModel):
    """Statuses of many images, in the order they were asked for (duplicates once).

    ``missing`` lists the ids Micrio did not answer for: it does not know them (or they belong to another
    organisation).
    """

    statuses: dict[str, ImageStatus] = Field(default_factory=dict)
    missing: list[str] = Field(default_factory=list)

    def ids_with(self, *statuses: str) -> list[str]:
        return [i for i, s in self.statuses.items() if s.status in statuses]

    @property
    def pending(self) -> list[str]:
        return [i for i, s in self.statuses.items() if not s.terminal]

    @property
    def all_terminal(self) -> bool:
        return not self.pending

    def counts(self) -> dict[str, int]:
        """Images per status (``missing`` counted as such)."""
        out: dict[str, int] = {}
        for s in self.statuses.values():
            out[s.status] = out.get(s.status, 0) + 1
        if self.missing:
            out["missing"] = len(self.missing)
        return out


class FolderStatus(BaseModel):
    """Progress of a whole folder (``folder/status``): a quick overview of a running migration."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    num_total: int = Field(alias="numTotal")
    num_complete: int = Field(alias="numComplete")
    processing_ids: list[str] = Field(default_factory=list, alias="processingIds")
    errored_ids: list[str] = Field(default_factory=list, alias="erroredIds")

    @property
    def finished(self) -> bool:
        """Nothing queued or processing any more."""
        return not self.processing_ids


class CreatedFolder(BaseModel):
    """A folder, album or space created by ``folder/create`` (``name`` defaults to the type, DOC)."""

    id: str
    parent_id: str
    name: str
    type: FolderType


def is_terminal(status: str | ImageStatus) -> bool:
    """``ready`` or ``error``: the status will not change any more."""
    value = status.status if isinstance(status, ImageStatus) else status
    return value in TERMINAL_STATUSES


# --- validation: documented constraints, checked before anything is sent -------------------------------


def _shown(value: Any, limit: int = 80) -> str:
    """A value for an error message: URL query strings cut (presigned URLs carry credentials), shortened."""
    text = str(value).split("?", 1)[0] + ("?..." if "?" in str(value) else "")
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_folder_id(folder_id: Any, field: str = "folder_id") -> str:
    if not isinstance(folder_id, str) or len(folder_id) != FOLDER_ID_LENGTH:
        got = f"{len(folder_id)} characters" if isinstance(folder_id, str) else type(folder_id).__name__
        raise InputError(field, f"must be a Micrio folder ID, got {got}", f"{FOLDER_ID_LENGTH} characters")
    return folder_id


def check_source(source: Any, index: int) -> ImageSource:
    """One image source: an ``ImageSource``, a mapping with ``sourceUrl``/``source_url``, or a URL string."""
    field = f"images[{index}]"
    if isinstance(source, str):
        source = ImageSource(source_url=source)
    elif isinstance(source, Mapping):
        try:
            source = ImageSource.model_validate(dict(source))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))} {e['msg'].lower()}" for e in exc.errors(include_input=False)
            )
            raise InputError(
                field, f"is not a valid image source ({problems})", "sourceUrl required"
            ) from None
    elif not isinstance(source, ImageSource):
        raise InputError(field, f"must be an ImageSource, a mapping or a URL, got {type(source).__name__}")
    url = source.source_url
    if not isinstance(url, str) or not url.strip():
        raise InputError(f"{field}.sourceUrl", "is empty", "an http(s) URL Micrio's servers can reach")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(
            f"{field}.sourceUrl",
            f"is not an http(s) URL: {_shown(url)}",
            "an http(s) URL Micrio's servers can reach",
        )
    if source.name is not None and (not isinstance(source.name, str) or not source.name.strip()):
        raise InputError(f"{field}.name", "is empty", "a non-empty string, or leave it out for the file name")
    return source


def check_sources(sources: Any, max_batch: int) -> list[ImageSource]:
    if isinstance(sources, str | bytes | Mapping) or not isinstance(sources, Iterable):
        raise InputError("images", f"must be a list of image sources, got {type(sources).__name__}")
    checked = [check_source(s, i) for i, s in enumerate(sources)]
    if not checked:
        raise InputError("images", "is empty", "at least 1 image per call")
    if len(checked) > max_batch:
        raise InputError("images", f"has {len(checked)} entries", f"at most {max_batch} per call")
    return checked


def check_user_email(email: Any) -> str | None:
    if email is None:
        return None
    if not isinstance(email, str) or not _EMAIL_RE.match(email):
        raise InputError("user_email", "is not an email address", "e.g. name@example.org, or None")
    return email


def check_image_ids(image_ids: Any) -> list[str]:
    """Ids as a list without duplicates, in their first-seen order."""
    if isinstance(image_ids, str | bytes) or not isinstance(image_ids, Iterable):
        raise InputError("image_ids", f"must be a list of Micrio image IDs, got {type(image_ids).__name__}")
    ids = list(image_ids)
    for i, image_id in enumerate(ids):
        if not isinstance(image_id, str) or not image_id.strip():
            raise InputError(f"image_ids[{i}]", "must be a non-empty string")
    return list(dict.fromkeys(ids))


def check_uuid(value: Any, field: str) -> str:
    """Micrio's organisation ID and API key are uuids (DOC). The value is never echoed: it is a secret."""
    try:
        uuid.UUID(str(value))
    except ValueError:
        raise InputError(field, "is not a uuid", "the uuid Micrio issued") from None
    return str(value)


M = TypeVar("M", bound=BaseModel)


class MicrioClient(HttpService):
    """Async client of one Micrio organisation's Server API v2 endpoint.

    ``base_url`` is the endpoint Micrio gave you (required: there is no public one). ``user_email`` is sent
    with every add unless a call overrides it (Micrio's default is ``tiler@micr.io``). ``max_batch`` caps
    images per ``images/add`` call (ASSUMED 1000; Micrio documents none). ``status_concurrency`` bounds the
    ``image/status`` calls in flight when many ids are polled.
    """

    service = "micrio"

    def __init__(
        self,
        organisation_id: str,
        api_key: str,
        base_url: str,
        *,
        user_email: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        status_concurrency: int = DEFAULT_STATUS_CONCURRENCY,
        settings: HttpSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        # Register the secrets first, so not even a validation problem below can show them.
        super().__init__(base_url, settings=settings, clock=clock, secrets=(organisation_id, api_key))
        if not base_url or self.base_url == PLACEHOLDER_BASE_URL:
            raise InputError("base_url", "is not set", "the API endpoint URL Micrio gave you")
        self._organisation_id = check_uuid(organisation_id, "organisation_id")
        self._api_key = check_uuid(api_key, "api_key")
        self.user_email = check_user_email(user_email)
        if max_batch < 1:
            raise InputError("max_batch", f"is {max_batch}", "at least 1")
        if status_concurrency < 1:
            raise InputError("status_concurrency", f"is {status_concurrency}", "at least 1")
        self.max_batch = max_batch
        self.status_concurrency = status_concurrency

    # --- plumbing ---------------------------------------------------------------------------------
    def _body(self, **fields: Any) -> dict[str, Any]:
        return {"organisationId": self._organisation_id, "apiKey": self._api_key, **fields}

    def _error_detail(self, response: httpx.Response) -> Any:
        """Micrio's message (ASSUMED ``{"error": ...}``) from the response, never the request body.

        URL query strings are cut, in case a source's presigned URL comes back in the message.
        """
        try:
            body = response.json()
        except ValueError:
            text = response.text[:500]
        else:
            detail = body.get("error", body) if isinstance(body, dict) else body
            text = detail if isinstance(detail, str) else str(detail)[:500]
        return _URL_QUERY_RE.sub(r"\1?...", text)

    async def _call(self, path: str, operation: str, fields: dict[str, Any], *, idempotent: bool) -> Any:
        """POST one call and return the ``result`` of Micrio's ``{"result": ...}`` envelope."""
        response = await self._request(
            "POST", path, operation, json=self._body(**fields), idempotent=idempotent
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "result" not in body:
            raise self._unexpected(operation, response, "no JSON {result: ...} envelope")
        return body["result"]

    def _unexpected(self, operation: str, response: httpx.Response, problem: str) -> ApiError:
        return ApiError(
            self.service, operation, f"unexpected response: {problem}", status=response.status_code
        )

    def _parse(self, model: type[M], data: Any, operation: str, where: str) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            loc = ".".join(map(str, (where, *first["loc"])))
            raise ApiError(self.service, operation, f"unexpected response: {loc}: {first['msg']}") from None

    # --- operations -------------------------------------------------------------------------------
    async def add_images(
        self,
        folder_id: str,
        images: Iterable[ImageSource | Mapping[str, Any] | str],
        user_email: str | None = None,
    ) -> list[AddedImage]:
        """Queue images for download and tiling (``images/add``); returns them in input order.

        Every source is checked first (http(s) ``sourceUrl``, name non-empty if given, 1..``max_batch``
        images). Not retried once sent: ``OutcomeUnknownError`` means the images may have been added.
        If Micrio's answer does not line up with the input (count or names), ``OutcomeUnknownError`` is
        raised too: the images were most likely created, but their ids cannot be trusted to match.
        """
        folder_id = check_folder_id(folder_id)
        sources = check_sources(images, self.max_batch)
        email = check_user_email(user_email) or self.user_email
        fields: dict[str, Any] = {"images": [s.to_api() for s in sources], "folderId": folder_id}
        if email:
            fields["userEmail"] = email
        result = await self._call(IMAGES_ADD_PATH, "add_images", fields, idempotent=False)
        items = result.get("images") if isinstance(result, dict) else None
        if not isinstance(items, list):
            raise ApiError(self.service, "add_images", "unexpected response: result.images is not a list")
        added = [
            self._parse(AddedImage, item, "add_images", f"result.images[{i}]") for i, item in enumerate(items)
        ]
        problem = None
        if len(added) != len(sources):
            problem = f"{len(added)} images answered for {len(sources)} sent"
        else:
            for i, (src, img) in enumerate(zip(sources, added, strict=True)):
                if src.name is not None and img.name is not None and img.name != src.name:
                    problem = f"images[{i}] came back named {_shown(img.name)}, sent as {_shown(src.name)}"
                    break
        if problem:
            raise OutcomeUnknownError(
                self.service,
                "add_images",
                f"answer does not match the input order ({problem}); the images were probably added, "
                "check the folder before adding them again",
                retryable=False,
            )
        return added

    async def image_status(self, image_ids: Iterable[str]) -> ImageStatusReport:
        """Status of any number of images: ``image/status`` calls of ≤ 100 ids, ``status_concurrency`` at once.

        Results keep the input order (duplicates once); ids Micrio does not answer for are in ``missing``.
        """
        ids = check_image_ids(image_ids)
        chunks = [ids[i : i + MAX_STATUS_IDS] for i in range(0, len(ids), MAX_STATUS_IDS)]
        limit = asyncio.Semaphore(self.status_concurrency)

        async def one(chunk: list[str]) -> list[ImageStatus]:
            async with limit:
                result = await self._call(
                    IMAGE_STATUS_PATH, "image_status", {"imageIds": chunk}, idempotent=True
                )
            items = result.get("images") if isinstance(result, dict) else None
            if not isinstance(items, list):
                raise ApiError(
                    self.service, "image_status", "unexpected response: result.images is not a list"
                )
            return [
                self._parse(ImageStatus, it, "image_status", f"result.images[{i}]")
                for i, it in enumerate(items)
            ]

        # Let every chunk finish (they are bounded and read-only), then surface the first failure.
        answers = await asyncio.gather(*(one(c) for c in chunks), return_exceptions=True)
        found: dict[str, ImageStatus] = {}
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            for status in answer:
                found.setdefault(status.id, status)
        report = ImageStatusReport()
        for image_id in ids:
            if image_id in found:
                report.statuses[image_id] = found[image_id]
            else:
                report.missing.append(image_id)
        return report

    async def folder_status(self, folder_id: str) -> FolderStatus:
        """Progress of a folder: totals, completed count, ids still processing and ids in error."""
        fields = {"folderId": check_folder_id(folder_id)}
        result = await self._call(FOLDER_STATUS_PATH, "folder_status", fields, idempotent=True)
        return self._parse(FolderStatus, result, "folder_status", "result")

    async def create_folder(
        self, parent_id: str, name: str | None = None, type: FolderType = "folder"
    ) -> CreatedFolder:
        """Create a folder, album or space (360 tour container) under ``parent_id``. Not retried once sent."""
        fields: dict[str, Any] = {"parentId": check_folder_id(parent_id, "parent_id")}
        if type not in FOLDER_TYPES:
            raise InputError("type", f"is {_shown(type)}", "folder, album or space")
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise InputError("name", "is empty", "a non-empty string, or None for the type's name")
            fields["name"] = name
        fields["type"] = type
        result = await self._call(FOLDER_CREATE_PATH, "create_folder", fields, idempotent=False)
        new_id = result.get("id") if isinstance(result, dict) else None
        if not isinstance(new_id, str) or not new_id:
            raise ApiError(self.service, "create_folder", "unexpected response: result.id is missing")
        return CreatedFolder(id=new_id, parent_id=parent_id, name=name or type, type=type)
