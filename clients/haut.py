"""Haut.ai SaaS API client: auth and private tokens, datasets and applications, subjects, the v1 and v3 image
flows, results, aux images and webhooks (docs/service-api-facts.md §4).

Authentication: a **private token** (recommended: no login at all) or username + password. With a login,
the client keeps the access token and refreshes it shortly before it expires (60 min, DOC); it never logs in
per call, because the vendor warns that login is rate-limited by Firebase. Sessions are shared between
client instances of one process (same base URL, username and password; ``clients.auth.LoginSession``), so
one-call-per-client code (Prefect tasks) logs in once too.

Uploads go to the signed storage URL the API returns, with exactly the headers it returns and never the Haut
``Authorization`` header (in production that URL is on storage.googleapis.com, another host). Signed URLs
(uploads, result images) are credentials: their signatures are registered for redaction as they arrive.

Every documented constraint is checked before sending (image ≥ 256×256 px, ≤ 30 MiB, JPEG/PNG; names
1–512 characters; expiry ≤ 365 days; webhook fields), raising ``InputError`` that names field, problem and
limit. Service errors (drf-standardized-errors bodies) become ``ApiError`` messages naming each error's code
and field; the parsed items are on ``err.errors``.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import BaseModel

from . import auth
from .auth import clear_shared_sessions
from .errors import ApiError, InputError, NotFoundError, check_known
from .haut_models import (
    SIDE_IDS,
    AlgorithmResult,
    Application,
    AuxImage,
    Dataset,
    ImageRecord,
    LoginInfo,
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
from .redaction import register_secret, register_signed_urls_in, register_url_secrets
from .timing import SYSTEM_CLOCK, Clock
from .transport import HttpService, HttpSettings

__all__ = [
    "HautClient",
    "ImageInfo",
    "PollSettings",
    "ResultsTimeoutError",
    "check_image",
    "clear_shared_sessions",
]

DEFAULT_BASE_URL = "https://saas.haut.ai"

# --- paths: DOC (or INF where noted) -------------------------------------------------------------------------
V1 = "/api/v1"
COMPANY = V1 + "/companies/{company_id}"
DATASET = COMPANY + "/datasets/{dataset_id}"
LOGIN_PATH = V1 + "/auth/login/"
REFRESH_PATH = V1 + "/auth/refresh/"  # DOC path; body {"refresh_token": ...} ASSUMED
PRIVATE_TOKENS_PATH = V1 + "/auth/private_tokens/"
PRIVATE_TOKEN_PATH = V1 + "/auth/private_tokens/{token_id}/"
IMAGE_TYPES_PATH = V1 + "/dicts/image_types/"
ALGORITHMS_PATH = V1 + "/dicts/algorithms/"  # no auth (DOC FAQ); path INF
DATASETS_PATH = COMPANY + "/datasets/"
DATASET_PATH = DATASET + "/"  # INF
APPLICATIONS_PATH = COMPANY + "/applications/"
ATTACH_PATH = COMPANY + "/applications/{tech_name}/attach-to-dataset/"
WEBHOOKS_PATH = DATASET + "/webhooks/"
SUBJECTS_PATH = DATASET + "/subjects/"
SUBJECT_PATH = DATASET + "/subjects/{subject_id}/"  # PATCH DOC; GET and DELETE ASSUMED
SIGNED_UPLOAD_URL_PATH = COMPANY + "/subjects/{subject_id}/signed_upload_url/"
COMPUTE_V1_PATH = COMPANY + "/batches/{batch_id}/compute/"
RESULTS_V1_PATH = DATASET + "/subjects/{subject_id}/batches/{batch_id}/images/{image_id}/results/"
AUX_IMAGES_PATH = COMPANY + "/images/{image_id}/aux_images/"
V3_UPLOAD_PATH = "/api/v3/companies/{company_id}/subjects/{subject_id}/upload/"
V3_COMPUTE_PATH = "/api/v3/companies/{company_id}/batches/{batch_id}/compute/"
V3_RESULTS_PATH = "/api/v3/companies/{company_id}/batches/{batch_id}/results/"
SVG_MASKS_PATH = "/service/rasterisation/v5/svg_masks/"  # DOC; ?company_id=<uuid>

# --- paths and names: ASSUMED (docs/service-api-facts.md §4.14; the emulator uses the same) ------------------------------------
SIDES_PATH = V1 + "/dicts/sides/"
LIGHTS_PATH = V1 + "/dicts/lights/"
ATTACH_DEPENDENCIES_PARAM = "attach_dependencies"  # ?attach_dependencies=true
SUBJECTS_BULK_DELETE_PATH = DATASET + "/subjects/bulk_delete/"  # {"ids": [...]}
DELETE_PHOTOS_PATH = COMPANY + "/subjects/{subject_id}/delete_photos/"
CLEAR_METADATA_PATH = COMPANY + "/subjects/{subject_id}/clear_metadata/"
SUBJECT_IMAGES_PATH = COMPANY + "/subjects/{subject_id}/images/"
IMAGE_PATH = COMPANY + "/images/{image_id}/"

# --- documented limits -----------------------------------------------------------------------------------------
MIN_IMAGE_SIDE = 256
MAX_IMAGE_BYTES = 31_457_280  # X-Goog-Content-Length-Range: 1,31457280 (30 MiB)
IMAGE_FORMATS = ("JPEG", "PNG")
MAX_NAME = 512  # dataset and subject names
MAX_FILE_NAME = 255  # v3 side file names
MAX_EXPIRE_DAYS = 365
MAX_WEBHOOK_FIELD = 128
WEBHOOK_AUTHORIZATION = ("query", "basic", "bearer")
WEBHOOK_METHODS = ("post", "get")
TECH_NAME_RE = re.compile(r"^[\w.]+$")
FSM2_TECH_NAME = "face_skin_metrics_2.0"  # DOC: Face Skin Metrics 2.0
FS3_TECH_NAME = "face_skin_metrics_3.0"  # ASSUMED (by analogy with the documented face_skin_metrics_2.0)
ACCESS_TOKEN_SECONDS = 3600.0  # DOC FAQ: login tokens live 60 min
REFRESH_MARGIN_SECONDS = 300.0
PAGE_SIZE = 100
MAX_PAGES = 10_000

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class ResultsTimeoutError(ApiError):
    """Results were not ready within the polling timeout (retryable: they may still arrive)."""


@dataclass(frozen=True)
class PollSettings:
    """How to wait for results: sleep ``initial_delay``, poll, then sleep ``factor`` times longer each time,
    never more than ``max_delay``, and give up after ``timeout`` seconds (INF: processing takes tens of s)."""

    initial_delay: float = 2.0
    factor: float = 1.5
    max_delay: float = 15.0
    timeout: float = 300.0

    def delays(self) -> Iterator[float]:
        """The successive pauses: initial_delay, then times factor, capped at max_delay."""
        delay = max(0.0, self.initial_delay)
        while True:
            yield delay
            delay = min(self.max_delay, max(delay, 1e-3) * max(1.0, self.factor))


class DatasetOptions(TypedDict, total=False):
    """What ``create_dataset`` may set besides the name (None = the service's default)."""

    image_type_id: int | None
    expire_images_after_days: int | None  # 1 to 365
    expire_metadata_after_days: int | None  # 1 to 365
    clean_images_as_soon_as_ready: bool | None
    custom_branding: int | None


class PollOverrides(TypedDict, total=False):
    """``PollSettings`` values for one wait (None keeps the client's)."""

    initial_delay: float | None
    factor: float | None
    max_delay: float | None
    timeout: float | None


# --- validation: documented constraints, checked before sending ----------------------------------------------
@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    size: int


def check_image(data: Any, field: str = "image") -> ImageInfo:
    """A decodable JPEG/PNG of at least 256×256 px and at most 31,457,280 bytes; reads only the header."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(field, f"must be bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise InputError(field, "is empty", f"1 to {MAX_IMAGE_BYTES:,} bytes")
    if size > MAX_IMAGE_BYTES:
        raise InputError(field, f"is {size:,} bytes", f"at most {MAX_IMAGE_BYTES:,} bytes (30 MiB)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as img:
                width, height, fmt = img.width, img.height, img.format or "unknown"
    except Image.DecompressionBombError:
        # Over Pillow's pixel guard, so far above 256 px; Haut sets no maximum resolution. Judge the format
        # by its signature instead.
        head = bytes(data[:8])
        fmt = "JPEG" if head.startswith(b"\xff\xd8\xff") else "PNG" if head == b"\x89PNG\r\n\x1a\n" else None
        if fmt is None:
            raise InputError(field, "is a very large image that is not JPEG or PNG", "JPEG or PNG") from None
        return ImageInfo(0, 0, fmt, size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(field, f"is not a decodable image ({type(exc).__name__})", "JPEG or PNG") from None
    if fmt not in IMAGE_FORMATS:
        raise InputError(field, f"is a {fmt} image", "JPEG or PNG")
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise InputError(field, f"is {width}×{height} px", f"at least {MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE} px")
    return ImageInfo(width, height, fmt, size)


def check_text(value: Any, field: str, max_length: int = MAX_NAME) -> str:
    if not isinstance(value, str):
        raise InputError(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InputError(field, "is blank", f"1 to {max_length} characters")
    if "\x00" in value:  # Haut refuses null characters with a 400
        raise InputError(field, "contains a null character")
    if len(value) > max_length:
        raise InputError(field, f"is {len(value)} characters long", f"at most {max_length}")
    return value


def check_expire_days(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(field, f"must be an integer number of days, got {type(value).__name__}")
    if not 1 <= value <= MAX_EXPIRE_DAYS:
        raise InputError(field, f"is {value} days", f"1 to {MAX_EXPIRE_DAYS}")
    return value


def check_id(value: Any, field: str) -> str:
    """An id that goes into a URL path: non-empty, no path or query characters."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else None
    if not text or any(c in text for c in "/?#%\\ ") or text in (".", ".."):
        raise InputError(field, f"{value!r} is not a valid id")
    return text


def check_choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputError(field, f"{value!r} is not allowed", "one of " + ", ".join(choices))
    return value


def check_webhook(
    url: Any, authorization: Any, authorization_key: Any, authorization_value: Any, method: Any
) -> None:
    """docs/service-api-facts.md §4.11: url (http/https URI), authorization query|basic|bearer, key/value 1–128, method post|get."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError("url", "is not an absolute http(s) URL")
    check_text(url, "url", 2048)
    check_choice(authorization, "authorization", WEBHOOK_AUTHORIZATION)
    check_text(authorization_key, "authorization_key", MAX_WEBHOOK_FIELD)
    check_text(authorization_value, "authorization_value", MAX_WEBHOOK_FIELD)
    check_choice(method, "method", WEBHOOK_METHODS)


def _given(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that are set: a body or query leaves out what is None."""
    return {k: v for k, v in fields.items() if v is not None}


def _iso(value: datetime | str, field: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and value:
        return value
    raise InputError(field, "must be a datetime or an ISO 8601 string")


def _timestamp(value: datetime | str) -> float | None:
    try:
        dt = value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _json(raw: bytes) -> Any:
    """A JSON answer decoded by orjson (~3× faster than ``json`` on a 25 kB v1 result), or by ``json`` when
    orjson refuses the text (NaN, integers beyond 64 bits, UTF-16): the same values either way."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _may_hold_urls(raw: bytes) -> bool:
    """Whether a JSON answer can hold a URL string. In UTF-8 JSON a decoded string starts with ``http`` only if
    the text has those letters literally or as ``\\u`` escapes (UTF-16/32 JSON has NUL bytes: walked too), so
    answers with none of these (e.g. v1 results, ~25 kB of metrics) skip walking every value."""
    return b"http" in raw or b"\\u" in raw or b"\x00" in raw


# --- errors ---------------------------------------------------------------------------------------------------
_XML_FIELD = re.compile(r"<(Code|Message|Details)>(.*?)</\1>", re.S)


def error_items(body: Any) -> list[dict[str, Any]]:
    """The ``errors`` of a drf-standardized-errors body (empty when the body has another shape)."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return [e for e in body["errors"] if isinstance(e, dict)]
    return []


def describe_errors(body: Any) -> str | None:
    """``validation_error: name [max_length] Ensure …; [missing_dependencies] Missing dependencies. {…}``."""
    items = error_items(body)
    if not items:
        return None
    parts = []
    for e in items:
        text = f"{e['attr']} " if e.get("attr") else ""
        text += f"[{e.get('code') or 'error'}] {e.get('detail') or ''}".rstrip()
        if e.get("extra"):
            text += " " + json.dumps(e["extra"], separators=(",", ":"), default=str)[:300]
        parts.append(text)
    return f"{body.get('type') or 'error'}: " + "; ".join(parts)


class HautClient(HttpService):
    """Async client of one Haut.ai company.

    Give ``private_token`` (recommended) or ``username`` + ``password``. ``token_lifetime`` is the assumed
    life of a login token when it carries no ``exp`` (DOC: 60 min); it is refreshed ``refresh_margin``
    seconds before (at most half its lifetime). With ``share_session`` the login session is shared by the
    clients of this process with the same base URL, username and password. ``poll`` holds the default
    waiting schedule of ``wait_for_results_*``.
    """

    service = "haut"
    page_size = PAGE_SIZE  # items per page when listing (the service may cap it)

    def __init__(
        self,
        company_id: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        private_token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        token_lifetime: float = ACCESS_TOKEN_SECONDS,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
        share_session: bool = True,
        poll: PollSettings | None = None,
        settings: HttpSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(base_url, settings=settings, clock=clock, secrets=(private_token, password))
        if not private_token and not (username and password):
            raise InputError("credentials", "need a private_token, or a username and a password")
        self.company_id = check_id(company_id, "company_id")
        self._private_token = private_token or None
        self._username = username
        self._password = password
        self.token_lifetime = token_lifetime
        self.refresh_margin = refresh_margin
        self.poll = poll or PollSettings()
        self.session: auth.LoginSession | None = None
        if self._private_token is None and username and password:
            key = auth.share_key(self.base_url, username.lower(), secret=password) if share_session else None
            self.session = auth.LoginSession(
                self._login, self._refresh, clock=clock, renew_margin=refresh_margin, share_key=key
            )

    # --- auth ---------------------------------------------------------------------------------------------
    @property
    def uses_login(self) -> bool:
        return self._private_token is None

    async def _login(self) -> auth.Tokens:
        body = {"username": self._username, "password": self._password}
        # idempotent: a repeated login only issues another token
        response, sent = await self._token_request(LOGIN_PATH, "login", body, idempotent=True)
        return self._tokens(response.json(), "login", sent, None)

    async def _refresh(self, refresh_token: str) -> auth.Tokens:
        body = {"refresh_token": refresh_token}
        response, sent = await self._token_request(REFRESH_PATH, "refresh", body, idempotent=True)
        return self._tokens(response.json(), "refresh", sent, refresh_token)

    def _tokens(self, body: Any, operation: str, sent: float, refresh_token: str | None) -> auth.Tokens:
        """Session tokens from a login/refresh answer: JWT ``exp``, else ``token_lifetime`` from sending."""
        if not isinstance(body, dict):
            raise ApiError(self.service, operation, "unexpected answer (not a JSON object)")
        access = body.get("access_token") or body.get("token_access")
        if not access or not isinstance(access, str):
            raise ApiError(self.service, operation, "the answer carries no access token")
        return auth.Tokens(
            access=access,
            refresh=body.get("refresh_token") or refresh_token,
            expires_at=auth.jwt_expiry(access) or sent + self.token_lifetime,
            info=LoginInfo.model_validate(body),
        )

    async def _auth_headers(self) -> dict[str, str]:
        token = self._private_token if self.session is None else await self.session.access_token()
        return {"Authorization": f"Bearer {token}"}

    async def _on_auth_failure(self, response: httpx.Response) -> bool:
        """A 401 with a login token: the token died early (revoked, clock skew). Renew once and retry."""
        scheme, _, token = response.request.headers.get("authorization", "").partition(" ")
        if response.status_code != 401 or self.session is None or scheme != "Bearer" or not token:
            return False  # private token refused, a permission problem, or a storage URL
        self.session.invalidate(token)
        return True

    def _session_or_error(self, action: str) -> auth.LoginSession:
        if self.session is None:
            raise InputError("credentials", f"this client uses a private token; there is nothing to {action}")
        return self.session

    async def login(self) -> LoginInfo:
        """Log in now (normally not needed: calls log in lazily, once, and refresh before expiry)."""
        return (await self._session_or_error("log in").login()).info

    async def refresh(self) -> LoginInfo:
        """Renew the access token now: with the refresh token, or by logging in if there is none (or it
        is refused)."""
        return (await self._session_or_error("refresh").refresh()).info

    # --- errors -------------------------------------------------------------------------------------------
    def _error_detail(self, response: httpx.Response) -> Any:
        text = response.text
        if "<Error>" in text:  # signed storage URL (GCS XML error document)
            fields = dict(_XML_FIELD.findall(text))
            return (
                f"storage {fields.get('Code', 'error')}: {fields.get('Details') or fields.get('Message', '')}"
            )
        try:
            body = response.json()
        except ValueError:
            return text[:500]
        return describe_errors(body) or body

    def _error(
        self, response: httpx.Response, operation: str, attempts: int, retry_after: float | None = None
    ) -> ApiError:
        err = super()._error(response, operation, attempts, retry_after)
        try:
            err.errors = error_items(response.json())  # type: ignore[attr-defined]
        except ValueError:
            err.errors = []  # type: ignore[attr-defined]
        return err

    # --- request helpers ----------------------------------------------------------------------------------
    def _path(self, template: str, **ids: Any) -> str:
        values = {name: check_id(value, name) for name, value in ids.items()}
        return template.format(company_id=self.company_id, **values)

    async def _call(self, method: str, path: str, operation: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, operation, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            body = _json(response.content)
        except ValueError:
            raise ApiError(
                self.service, operation, f"HTTP {response.status_code}: answer is not JSON"
            ) from None
        if _may_hold_urls(response.content):  # upload targets, result and aux image URLs: bearer credentials
            register_signed_urls_in(body)
        return body

    def _relative(self, url: str) -> str:
        """A ``next`` link as a path on our base URL: pages never leave the API host (nor its scheme)."""
        parts = urlsplit(url)
        base_path = urlsplit(self.base_url).path.rstrip("/")
        path = parts.path
        if base_path and path.startswith(base_path + "/"):
            path = path[len(base_path) :]
        return path + (f"?{parts.query}" if parts.query else "")

    async def iter_pages(
        self, path: str, operation: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[list[Any]]:
        """Every page of a DRF list endpoint, following ``next`` (a plain JSON list is one page)."""
        query = {"page_size": self.page_size, **{k: v for k, v in (params or {}).items() if v is not None}}
        target: str | None = path
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            if target is None:
                return
            body = await self._call("GET", target, operation, params=query)
            if isinstance(body, list):
                yield body
                return
            if not isinstance(body, dict) or not isinstance(body.get("results"), list):
                raise ApiError(self.service, operation, "unexpected list answer (no 'results')")
            yield body["results"]
            nxt = body.get("next")
            target, query = (self._relative(nxt), None) if nxt else (None, None)
            if target is not None and target in seen:
                raise ApiError(self.service, operation, "pagination loops ('next' repeats)")
            if target is not None:
                seen.add(target)
        raise ApiError(self.service, operation, f"more than {MAX_PAGES} pages")

    async def _list(
        self, model: type[M], path: str, operation: str, params: Mapping[str, Any] | None = None
    ) -> list[M]:
        out: list[M] = []
        async for page in self.iter_pages(path, operation, params):
            out.extend(model.model_validate(item) for item in page)
        return out

    async def _poll(
        self,
        fetch: Callable[[], Awaitable[T]],
        ready: Callable[[T], bool],
        operation: str,
        what: str,
        poll: PollSettings,
    ) -> T:
        started = self.clock.monotonic()
        delays = poll.delays()
        polls = 0
        while True:
            remaining = poll.timeout - (self.clock.monotonic() - started)
            if remaining <= 0:
                raise ResultsTimeoutError(
                    self.service,
                    operation,
                    f"{what} not ready after {poll.timeout:g} s ({polls} polls); they may still arrive",
                    attempts=polls,
                    retryable=True,
                )
            await self.clock.sleep(min(next(delays), remaining))
            value = await fetch()
            polls += 1
            if ready(value):
                return value

    def poll_settings(self, **overrides: Unpack[PollOverrides]) -> PollSettings:
        """The client's polling schedule with some values overridden (None keeps the default)."""
        return replace(self.poll, **_given(overrides))

    # --- private tokens -----------------------------------------------------------------------------------
    async def create_private_token(self, name: str, expiration_time: datetime | str) -> PrivateToken:
        """A new long-lived token; its value is in ``.data`` (a SecretStr) and is shown only this once."""
        check_text(name, "name", 255)
        when = _iso(expiration_time, "expiration_time")
        ts = _timestamp(expiration_time)
        if ts is None:
            raise InputError("expiration_time", f"{when!r} is not an ISO 8601 date-time")
        if ts <= self.clock.time():
            raise InputError("expiration_time", f"{when} is in the past", "must be in the future")
        body = await self._call(
            "POST", PRIVATE_TOKENS_PATH, "create_private_token", json={"name": name, "expiration_time": when}
        )
        register_secret(body.get("data") if isinstance(body, dict) else None)
        return PrivateToken.model_validate(body)

    async def list_private_tokens(self, q: str | None = None) -> list[PrivateToken]:
        """The current user's private tokens (without their values)."""
        return await self._list(PrivateToken, PRIVATE_TOKENS_PATH, "list_private_tokens", {"q": q})

    async def revoke_private_token(self, token_id: int, missing_ok: bool = False) -> None:
        """Revoke a private token; calls with it then get 401."""
        await self._delete(
            self._path(PRIVATE_TOKEN_PATH, token_id=token_id), "revoke_private_token", missing_ok
        )

    async def _delete(self, path: str, operation: str, missing_ok: bool) -> None:
        try:
            await self._request("DELETE", path, operation)
        except NotFoundError:
            if not missing_ok:  # a retried DELETE whose first attempt went through also ends here
                raise

    # --- dictionaries -------------------------------------------------------------------------------------
    async def list_image_types(self) -> list[dict[str, Any]]:
        """Image types with their sides and lights (ids for ``image_type_id``, ``side_id``, ``light_id``)."""
        return [dict(i) async for page in self.iter_pages(IMAGE_TYPES_PATH, "list_image_types") for i in page]

    async def list_algorithms(self) -> list[dict[str, Any]]:
        """The algorithm dictionary (no authentication needed, DOC FAQ)."""
        body = await self._call("GET", ALGORITHMS_PATH, "list_algorithms", authenticated=False)
        return body.get("results", []) if isinstance(body, dict) else list(body or [])

    async def list_sides(self) -> list[dict[str, Any]]:
        return [dict(i) async for page in self.iter_pages(SIDES_PATH, "list_sides") for i in page]

    async def list_lights(self) -> list[dict[str, Any]]:
        return [dict(i) async for page in self.iter_pages(LIGHTS_PATH, "list_lights") for i in page]

    # --- datasets and applications ------------------------------------------------------------------------
    async def create_dataset(self, name: str, **options: Unpack[DatasetOptions]) -> Dataset:
        """Create a dataset (one per app or study, not per analysis: DOC guidance)."""
        check_known(options, DatasetOptions.__annotations__, "dataset option")
        body: dict[str, Any] = {"name": check_text(name, "name"), **_given(options)}
        for field in ("expire_images_after_days", "expire_metadata_after_days"):
            check_expire_days(body.get(field), field)
        if "clean_images_as_soon_as_ready" in body:
            body["clean_images_as_soon_as_ready"] = bool(body["clean_images_as_soon_as_ready"])
        return Dataset.model_validate(
            await self._call("POST", self._path(DATASETS_PATH), "create_dataset", json=body)
        )

    async def list_datasets(self, q: str | None = None, ordering: str | None = None) -> list[Dataset]:
        """Every dataset of the company (all pages); ``q`` searches names (contains, case-insensitive)."""
        params = {"q": q, "ordering": ordering}
        return await self._list(Dataset, self._path(DATASETS_PATH), "list_datasets", params)

    async def find_dataset(self, name: str) -> Dataset | None:
        """The oldest dataset named exactly ``name``, or None."""
        found = [d for d in await self.list_datasets(q=name, ordering="creation_time") if d.name == name]
        return found[0] if found else None

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(
            await self._call("GET", self._path(DATASET_PATH, dataset_id=dataset_id), "get_dataset")
        )

    async def list_applications(self, q: str | None = None) -> list[Application]:
        """Applications the company can attach to datasets."""
        return await self._list(Application, self._path(APPLICATIONS_PATH), "list_applications", {"q": q})

    async def attach_application(
        self,
        tech_name: str,
        dataset_id: str,
        *,
        enabled_algorithms: list[str] | None = None,
        algorithms_flags: dict[str, Any] | None = None,
        attach_dependencies: bool = False,
    ) -> Dataset:
        """Connect an application (e.g. ``face_skin_metrics_2.0``) to a dataset; returns the dataset.

        A missing required application fails with ``missing_dependencies`` unless ``attach_dependencies``.
        """
        if not isinstance(tech_name, str) or not TECH_NAME_RE.match(tech_name):
            raise InputError("tech_name", f"{tech_name!r} is not a tech name", r"pattern ^[\w.]+$")
        body: dict[str, Any] = {"dataset_id": check_id(dataset_id, "dataset_id")}
        if enabled_algorithms is not None:
            body["enabled_algorithms"] = list(enabled_algorithms)
        if algorithms_flags is not None:
            body["algorithms_flags"] = algorithms_flags
        answer = await self._call(
            "POST",
            self._path(ATTACH_PATH, tech_name=tech_name),
            "attach_application",
            json=body,
            params={ATTACH_DEPENDENCIES_PARAM: "true"} if attach_dependencies else None,
            idempotent=True,  # attaching again replaces the same connection
        )
        if isinstance(answer, dict) and "id" in answer and "name" in answer:
            return Dataset.model_validate(answer)
        return await self.get_dataset(dataset_id)  # answer shape undocumented: read the dataset back

    async def set_webhook(
        self,
        dataset_id: str,
        url: str,
        *,
        authorization: str,
        authorization_key: str,
        authorization_value: str,
        method: str = "post",
        enabled: bool = True,
        add_survey_answers: bool = False,
        merge_webhooks: bool = False,
    ) -> Webhook:
        """Set the dataset's results webhook (one per dataset: calling again replaces it, DOC)."""
        check_webhook(url, authorization, authorization_key, authorization_value, method)
        register_secret(authorization_value)
        body = {
            "url": url,
            "authorization": authorization,
            "authorization_key": authorization_key,
            "authorization_value": authorization_value,
            "method": method,
            "enabled": enabled,
            "add_survey_answers": add_survey_answers,
            "merge_webhooks": merge_webhooks,
        }
        answer = await self._call(
            "POST",
            self._path(WEBHOOKS_PATH, dataset_id=dataset_id),
            "set_webhook",
            json=body,
            idempotent=True,  # re-POST replaces
        )
        if isinstance(answer, dict):
            register_secret(answer.get("secret_key"))
        return Webhook.model_validate(answer)

    # --- subjects -----------------------------------------------------------------------------------------
    async def create_subject(self, dataset_id: str, subject: SubjectSpec | str) -> Subject:
        """Create a subject, given by name or as a ``SubjectSpec`` (names need not be unique:
        ``ensure_haut_subjects`` reuses them by name)."""
        spec = SubjectSpec(name=subject) if isinstance(subject, str) else subject
        body = {**_given(spec.model_dump()), "name": check_text(spec.name, "name")}
        path = self._path(SUBJECTS_PATH, dataset_id=dataset_id)
        return Subject.model_validate(await self._call("POST", path, "create_subject", json=body))

    async def list_subjects(
        self, dataset_id: str, q: str | None = None, ordering: str | None = None
    ) -> list[Subject]:
        """Every subject of a dataset (all pages)."""
        path = self._path(SUBJECTS_PATH, dataset_id=dataset_id)
        return await self._list(Subject, path, "list_subjects", {"q": q, "ordering": ordering})

    async def get_subject(self, dataset_id: str, subject_id: str) -> Subject:
        path = self._path(SUBJECT_PATH, dataset_id=dataset_id, subject_id=subject_id)
        return Subject.model_validate(await self._call("GET", path, "get_subject"))

    async def update_subject(self, dataset_id: str, subject_id: str, **changes: Any) -> Subject:
        """Partial update of ``name``, ``birth_date``, ``biological_sex``, ``meta`` (None clears a field)."""
        check_known(changes, SubjectSpec.model_fields, "subject field")
        if not changes:
            raise InputError("changes", "nothing to update")
        if "name" in changes:
            check_text(changes["name"], "name")
        path = self._path(SUBJECT_PATH, dataset_id=dataset_id, subject_id=subject_id)
        return Subject.model_validate(
            await self._call("PATCH", path, "update_subject", json=changes, idempotent=True)
        )

    async def delete_subject(self, dataset_id: str, subject_id: str, missing_ok: bool = False) -> None:
        """Delete a subject with its images; uploads to it fail afterwards."""
        path = self._path(SUBJECT_PATH, dataset_id=dataset_id, subject_id=subject_id)
        await self._delete(path, "delete_subject", missing_ok)

    async def delete_subjects(self, dataset_id: str, subject_ids: list[str]) -> None:
        """Delete many subjects in one call (all or nothing)."""
        if not subject_ids:
            raise InputError("subject_ids", "is empty", "at least one id")
        ids = [check_id(s, "subject_ids") for s in subject_ids]
        path = self._path(SUBJECTS_BULK_DELETE_PATH, dataset_id=dataset_id)
        await self._call("POST", path, "delete_subjects", json={"ids": ids})

    async def delete_subject_photos(self, subject_id: str) -> None:
        """GDPR: delete the subject's image files now; image records and results stay (DOC)."""
        path = self._path(DELETE_PHOTOS_PATH, subject_id=subject_id)
        await self._call("POST", path, "delete_subject_photos", idempotent=True)

    async def clear_subject_metadata(self, subject_id: str) -> Subject:
        """GDPR: blank the subject's name, birth date, biological sex and meta."""
        path = self._path(CLEAR_METADATA_PATH, subject_id=subject_id)
        return Subject.model_validate(
            await self._call("POST", path, "clear_subject_metadata", idempotent=True)
        )

    # --- images: v1 ---------------------------------------------------------------------------------------
    async def request_upload_v1(
        self,
        subject_id: str,
        *,
        side_id: int | None = None,
        light_id: int | None = None,
        batch_id: str | None = None,
        name: str | None = None,
        meta: Any = None,
        creation_time: str | None = None,
        app_args: Any = None,
    ) -> ImageRecord:
        """A new image record with its signed ``upload_url`` and ``image_batch_id`` (pass ``batch_id`` to add
        another side to an existing batch)."""
        body: dict[str, Any] = {}
        if side_id is not None:
            if isinstance(side_id, bool) or not isinstance(side_id, int) or side_id < 1:
                raise InputError("side_id", f"{side_id!r} is not a side id", "1 front, 2 right, 3 left")
            body["side_id"] = side_id
        if batch_id is not None:
            body["batch_id"] = check_id(batch_id, "batch_id")
        if name is not None:
            body["name"] = check_text(name, "name", MAX_FILE_NAME)
        body |= _given(
            {"light_id": light_id, "meta": meta, "creation_time": creation_time, "app_args": app_args}
        )
        path = self._path(SIGNED_UPLOAD_URL_PATH, subject_id=subject_id)
        record = ImageRecord.model_validate(await self._call("POST", path, "request_upload_v1", json=body))
        if record.upload_url is None or not record.image_batch_id:
            raise ApiError(self.service, "request_upload_v1", "answer has no upload_url or image_batch_id")
        return record

    async def upload(self, target: UploadTarget, data: bytes, *, check: bool = True) -> None:
        """PUT the image bytes to a signed URL with exactly its headers and no Haut credentials."""
        if check:
            check_image(data)
        register_url_secrets(target.url)  # the target may come from another process
        parts = urlsplit(target.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ApiError(self.service, "upload", "the upload URL is not an absolute http(s) URL")
        await self._request(
            target.method.upper(),
            target.url,
            "upload",
            content=bytes(data),
            headers=target.headers,
            authenticated=False,
        )

    async def compute_v1(self, batch_id: str) -> None:
        """Start processing an uploaded batch (nothing is processed without it, DOC)."""
        path = self._path(COMPUTE_V1_PATH, batch_id=batch_id)
        # ASSUMED non-idempotent: a repeat could start (and bill) a second analysis.
        await self._call("POST", path, "compute_v1", json={})

    async def get_results_v1(
        self,
        dataset_id: str,
        subject_id: str,
        batch_id: str,
        image_id: str,
        *,
        application_name: str | None = None,
        application_id: int | str | None = None,
        application_run_id: str | None = None,
    ) -> list[AlgorithmResult]:
        """Per-image algorithm results; empty while the image is still being processed."""
        path = self._path(
            RESULTS_V1_PATH,
            dataset_id=dataset_id,
            subject_id=subject_id,
            batch_id=batch_id,
            image_id=image_id,
        )
        params = _given(
            {
                "application_name": application_name,
                "application_id": application_id,
                "application_run_id": application_run_id,
            }
        )
        body = await self._call("GET", path, "get_results_v1", params=params or None)
        items = body.get("results", []) if isinstance(body, dict) else body or []
        return [AlgorithmResult.model_validate(r) for r in items]

    async def analyse_image_v1(
        self,
        subject_id: str,
        dataset_id: str,
        data: bytes,
        side_id: int = 1,
        *,
        batch_id: str | None = None,
        light_id: int | None = None,
        name: str | None = None,
        meta: Any = None,
        compute: bool = True,
    ) -> V1Analysis:
        """Signed URL → PUT → compute for one image; returns the ids to fetch its results with.

        For a multi-side batch, send the first sides with ``compute=False`` and pass the returned
        ``batch_id`` to the next ones; compute with the last.
        """
        check_image(data)
        record = await self.request_upload_v1(
            subject_id, side_id=side_id, light_id=light_id, batch_id=batch_id, name=name, meta=meta
        )
        assert record.upload_url is not None and record.image_batch_id is not None
        await self.upload(record.upload_url, data, check=False)
        if compute:
            await self.compute_v1(record.image_batch_id)
        return V1Analysis(
            dataset_id=dataset_id,
            subject_id=subject_id,
            batch_id=record.image_batch_id,
            image_id=record.id,
            side_id=side_id,
        )

    async def wait_for_results_v1(
        self,
        analysis: V1Analysis,
        *,
        application_name: str | None = None,
        min_results: int = 1,
        **poll: Unpack[PollOverrides],
    ) -> list[AlgorithmResult]:
        """Poll the image's results with backoff until at least ``min_results`` arrive.

        Raises ``ResultsTimeoutError`` after ``timeout`` seconds. Failed algorithms come back with
        ``is_ok == False`` (see ``AlgorithmResult.problem``).
        """
        return await self._poll(
            lambda: self.get_results_v1(
                analysis.dataset_id,
                analysis.subject_id,
                analysis.batch_id,
                analysis.image_id,
                application_name=application_name,
            ),
            lambda results: len(results) >= max(1, min_results),
            "wait_for_results_v1",
            f"results of image {analysis.image_id}",
            self.poll_settings(**poll),
        )

    # --- images: v3 (Face Skin Analysis 3.0, beta) --------------------------------------------------------
    async def request_upload_v3(
        self,
        subject_id: str,
        sides: Mapping[Side, str],
        *,
        meta: Any = None,
        creation_time: str | None = None,
    ) -> V3Upload:
        """Upload targets for the given sides (side → file name, 1–255 characters) in one new batch."""
        check_known(sides, SIDE_IDS, "side")
        body: dict[str, Any] = {s: check_text(n, s, MAX_FILE_NAME) for s, n in sides.items()}
        if not body:
            raise InputError("sides", "no side given", "at least one of front, left, right")
        body["meta"] = meta if meta is not None else {}
        if creation_time is not None:
            body["creation_time"] = creation_time
        path = self._path(V3_UPLOAD_PATH, subject_id=subject_id)
        return V3Upload.model_validate(await self._call("POST", path, "request_upload_v3", json=body))

    async def compute_v3(self, batch_id: str, app_args: dict[str, Any] | None = None) -> None:
        path = self._path(V3_COMPUTE_PATH, batch_id=batch_id)
        await self._call("POST", path, "compute_v3", json={"app_args": app_args} if app_args else {})

    async def get_results_v3(self, batch_id: str) -> V3Results:
        """The batch's ``face_skin_metrics_3`` results (``all_algorithms_calculated`` false until ready)."""
        body = await self._call("GET", self._path(V3_RESULTS_PATH, batch_id=batch_id), "get_results_v3")
        inner = body.get("face_skin_metrics_3") if isinstance(body, dict) else None
        if not isinstance(inner, dict):
            return V3Results(image_batch_id=batch_id)  # nothing yet (or FSA 3.0 not connected)
        return V3Results.model_validate(inner)

    async def analyse_images_v3(
        self,
        subject_id: str,
        images: Mapping[str, bytes],
        *,
        names: Mapping[str, str] | None = None,
        meta: Any = None,
    ) -> V3Analysis:
        """Upload 1–3 sides (``front``/``left``/``right`` → bytes) and compute them as one batch."""
        if not images:
            raise InputError("images", "no side given", "front, left and/or right")
        infos = {}
        for side, data in images.items():
            check_choice(side, "images", tuple(SIDE_IDS))
            infos[side] = check_image(data, f"images.{side}")
        file_names = {
            side: (names or {}).get(side) or f"{side}.{'png' if info.format == 'PNG' else 'jpg'}"
            for side, info in infos.items()
        }
        upload = await self.request_upload_v3(subject_id, file_names, meta=meta)
        targets = upload.targets()
        missing = sorted(set(images) - set(targets))
        if missing:
            raise ApiError(self.service, "request_upload_v3", f"no upload target for {', '.join(missing)}")
        await asyncio.gather(*(self.upload(targets[s], images[s], check=False) for s in images))
        await self.compute_v3(upload.image_batch_id)
        return V3Analysis(
            subject_id=subject_id,
            batch_id=upload.image_batch_id,
            image_ids={s: targets[s].id or "" for s in images},
        )

    async def wait_for_results_v3(self, batch_id: str, **poll: Unpack[PollOverrides]) -> V3Results:
        """Poll the batch's results with backoff until ``all_algorithms_calculated``."""
        return await self._poll(
            lambda: self.get_results_v3(batch_id),
            lambda r: r.all_algorithms_calculated,
            "wait_for_results_v3",
            f"results of batch {batch_id}",
            self.poll_settings(**poll),
        )

    # --- images: records, aux images, masks ---------------------------------------------------------------
    async def list_subject_images(self, subject_id: str) -> list[ImageRecord]:
        """Every image record of a subject (each with its aux images)."""
        path = self._path(SUBJECT_IMAGES_PATH, subject_id=subject_id)
        return await self._list(ImageRecord, path, "list_subject_images")

    async def get_image(self, image_id: str) -> ImageRecord:
        path = self._path(IMAGE_PATH, image_id=image_id)
        return ImageRecord.model_validate(await self._call("GET", path, "get_image"))

    async def delete_image(self, image_id: str, missing_ok: bool = False) -> None:
        await self._delete(self._path(IMAGE_PATH, image_id=image_id), "delete_image", missing_ok)

    async def list_aux_images(
        self, image_id: str, *, algo_app: str | None = None, aux_image_type: str | None = None
    ) -> list[AuxImage]:
        """Aux images (e.g. the restored face crop); filters match names case-insensitively (contains)."""
        path = self._path(AUX_IMAGES_PATH, image_id=image_id)
        params = {"algo_app": algo_app, "aux_image_type": aux_image_type}
        return await self._list(AuxImage, path, "list_aux_images", params)

    async def get_svg_masks(
        self,
        image_id: str,
        image_type: str,
        algorithm_tech_names: list[str],
        *,
        mask_over_image: bool = False,
    ) -> Any:
        """SVG masks of an image's results (DOC endpoint; the answer is returned as sent)."""
        body = {
            "image_id": check_id(image_id, "image_id"),
            "image_type": check_text(image_type, "image_type", 64),
            "mask_over_image": mask_over_image,
            "masks": [{"algorithm_tech_name": t} for t in algorithm_tech_names],
        }
        response = await self._request(
            "POST",
            SVG_MASKS_PATH,
            "get_svg_masks",
            json=body,
            params={"company_id": self.company_id},
            idempotent=True,  # read-only
        )
        try:
            body = response.json()
        except ValueError:
            return response.text
        register_signed_urls_in(body)
        return body
