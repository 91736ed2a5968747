"""VizioSense integrator API client: devices, snapshot images and webhooks (docs/service-api-facts.md §2).

Auth is either a long-lived API key (recommended for machine-to-machine use) or email + password: the
client then logs in once, renews the access token shortly before it expires (refresh token first, a fresh
login if that fails; one renewal at a time however many calls are in flight) and retries a call once when
the service rejects its token. Clients of one process with the same account share that session
(``clients.auth.LoginSession``), so one-call-per-client code (Prefect tasks) logs in once too. The vendor's token error is ``400 {"httpError": 400, "message": "Access token
error"}``, so that 400 counts as an auth failure, not a validation error.

Snapshots: ``request_image`` answers at once with two links (raw and annotated frame); the images are served
from at least 20 s after the request and the links are valid 30 min (DOC). ``fetch_image`` waits until the
ready time, then polls (404 = not ready yet) with backoff, and checks that the bytes are a JPEG. The links
are credentials (anyone holding one gets the image): they are registered for redaction and kept out of reprs.

Every path is ASSUMED (the vendor publishes none): they are the constants below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, Unpack
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from . import auth
from .errors import ApiError, InputError
from .redaction import redact, register_url_secrets
from .timing import SYSTEM_CLOCK, Clock
from .transport import HttpService, HttpSettings

DEFAULT_BASE_URL = "https://api.viziosense.com"  # DOC: production (.com)
STAGING_BASE_URL = "https://api.staging.viziosense.ai"  # DOC: test environment (.ai)
PREFIX = "/api/v1"  # DOC
LOGIN_PATH = f"{PREFIX}/auth/login"
REFRESH_PATH = f"{PREFIX}/auth/refresh"
DEVICES_PATH = f"{PREFIX}/devices"
DEVICE_PATH = f"{PREFIX}/devices/{{device_uuid}}"
DEVICE_REFRESH_PATH = f"{PREFIX}/devices/{{device_uuid}}/refresh"
DEVICE_IMAGE_PATH = f"{PREFIX}/devices/{{device_uuid}}/image"
# Webhooks per device (path segment) or global with a ``?device_uuid=`` filter: docs/service-api-facts.md §2.3 leaves it open.
WEBHOOKS_PER_DEVICE = True  # ASSUMED: flip to False for /api/v1/webhooks?device_uuid=...
DEVICE_WEBHOOKS_PATH = f"{PREFIX}/devices/{{device_uuid}}/webhooks"
DEVICE_WEBHOOK_PATH = f"{PREFIX}/devices/{{device_uuid}}/webhooks/{{webhook_id}}"
GLOBAL_WEBHOOKS_PATH = f"{PREFIX}/webhooks"
GLOBAL_WEBHOOK_PATH = f"{PREFIX}/webhooks/{{webhook_id}}"

TOKEN_ERROR_MESSAGE = "access token error"  # DOC: 400 / 4000
# DOC: name, geo_city, geo_country; client_identifier ASSUMED.
UPDATABLE_DEVICE_FIELDS = ("name", "geo_city", "geo_country", "client_identifier")
WEBHOOK_TYPES = ("payload", "keepalive")  # DOC
IS_ONLINE_VALUES = ("Online", "Offline")  # DOC
IMAGE_READY_AFTER_S = 20.0  # DOC: "available after at least 20 s"
IMAGE_LINK_VALIDITY_S = 1800.0  # DOC: "the link is valid 30 min"
DEFAULT_POLL_INTERVAL_S = 2.0
DEFAULT_IMAGE_TIMEOUT_S = 120.0  # keep polling this long past the ready time: far inside the 30 min
ALL_PAGES_PER_PAGE = 100  # ASSUMED page size when iterating every page (Laravel-style cap)

ImageKind = Literal["raw", "annotated"]


# --- models --------------------------------------------------------------------------------------------
class TokenUser(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str | None = None
    name: str | None = None
    email: str | None = None
    role: list[str] = Field(default_factory=list)


class Tokens(BaseModel):
    """The ``data`` of a login or refresh answer. Token values are SecretStr: hidden in reprs."""

    model_config = ConfigDict(extra="allow")
    token_type: str = "Bearer"
    expires_in: float
    access_token: SecretStr
    refresh_token: SecretStr | None = None
    user: TokenUser | None = None


class Device(BaseModel):
    """A camera or sensor. ``refreshed`` is the last status check (format undocumented; kept as text)."""

    model_config = ConfigDict(extra="allow")
    uuid: str
    name: str | None = None
    client_identifier: str | None = None
    refreshed: str | None = None
    is_online: int = 0
    geo_city: str | None = None
    geo_country: str | None = None

    @property
    def online(self) -> bool:
        return bool(self.is_online)


class PageMeta(BaseModel):
    """Laravel-style paging block; ``from``/``to`` are null on an empty page."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    current_page: int
    from_: int | None = Field(default=None, alias="from")
    last_page: int | None = None
    per_page: int | None = None
    total: int | None = None
    to: int | None = None
    total_pages: int | None = None


class DevicePage(BaseModel):
    data: list[Device]
    meta: PageMeta


class NameValue(BaseModel):
    """A header or query parameter sent with a webhook. The value may be a secret: not in the repr."""

    name: str
    value: str = Field(repr=False)


class WebhookData(BaseModel):
    model_config = ConfigDict(extra="allow")
    headers: list[NameValue] = Field(default_factory=list)
    params: list[NameValue] = Field(default_factory=list)


class Webhook(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    url: str
    webhook_type: str
    status: int = 1
    actions: str | None = None
    data: WebhookData = Field(default_factory=WebhookData)


class ImageRequest(BaseModel):
    """A snapshot request: its two links and when they can be fetched.

    ``requested_at`` is when the request was sent; ``ready_at`` is ``ready_after`` seconds after the answer
    arrived (never earlier than the service's own timer); ``expires_at`` is 30 min after sending (never later).
    """

    device_uuid: str
    raw_url: str = Field(repr=False)
    annotated_url: str = Field(repr=False)
    requested_at: datetime
    ready_at: datetime
    expires_at: datetime

    def url(self, kind: ImageKind) -> str:
        return self.raw_url if kind == "raw" else self.annotated_url


class Snapshot(BaseModel):
    """One downloaded image: JPEG bytes, their dimensions, and how many requests it took."""

    kind: ImageKind
    content: bytes = Field(repr=False)
    content_type: str
    width: int
    height: int
    fetched_at: datetime
    polls: int


class ImageNotReadyError(ApiError):
    """The image link still answered 404 when the wait ran out."""


class ImageExpiredError(ApiError):
    """The image link has expired (410/403, or past its 30 min validity): request a new image."""


# --- validation (before sending) -----------------------------------------------------------------------
def check_device_uuid(device_uuid: Any) -> str:
    if not isinstance(device_uuid, str) or not device_uuid.strip():
        raise InputError("device_uuid", "must be a non-empty string")
    if any(c in device_uuid for c in "/?#") or device_uuid != device_uuid.strip():
        raise InputError("device_uuid", f"{device_uuid!r} is not a valid identifier", "no '/', '?', '#'")
    return device_uuid


def check_device_changes(changes: Any) -> dict[str, str]:
    if not isinstance(changes, Mapping) or not changes:
        raise InputError("fields", "give at least one field to change", ", ".join(UPDATABLE_DEVICE_FIELDS))
    unknown = sorted(str(k) for k in changes if k not in UPDATABLE_DEVICE_FIELDS)
    if unknown:
        raise InputError(
            "fields", f"{', '.join(unknown)} cannot be updated", f"only {', '.join(UPDATABLE_DEVICE_FIELDS)}"
        )
    for key, value in changes.items():
        if not isinstance(value, str):
            raise InputError(key, f"must be a string, got {type(value).__name__}")
    if "name" in changes and not changes["name"].strip():
        raise InputError("name", "must not be empty")
    return dict(changes)


def check_is_online(value: Any) -> str | None:
    """``Online``/``Offline`` (DOC), case-insensitive; booleans are accepted too."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "Online" if value else "Offline"
    if isinstance(value, str):
        for allowed in IS_ONLINE_VALUES:
            if value.strip().lower() == allowed.lower():
                return allowed
    raise InputError("is_online", f"{value!r} is not allowed", "Online or Offline")


def check_page(page: Any, per_page: Any) -> None:
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise InputError("page", f"{page!r} is not allowed", "an integer ≥ 1")
    if per_page is not None and (isinstance(per_page, bool) or not isinstance(per_page, int) or per_page < 1):
        raise InputError("per_page", f"{per_page!r} is not allowed", "an integer ≥ 1")


def check_webhook_url(url: Any) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError("url", "must be an absolute http(s) URL")
    return url


def check_webhook_type(webhook_type: Any) -> str:
    if webhook_type not in WEBHOOK_TYPES:
        raise InputError("webhook_type", f"{webhook_type!r} is not allowed", " or ".join(WEBHOOK_TYPES))
    return webhook_type


def check_webhook_status(status: Any) -> int:
    if isinstance(status, bool) or status not in (0, 1):
        raise InputError("status", f"{status!r} is not allowed", "1 = active, 0 = inactive")
    return int(status)


def _name_values(field: str, items: Any) -> list[dict[str, str]]:
    """Headers/params as ``[{name, value}]``, from a mapping or a list of pairs."""
    if isinstance(items, Mapping):
        items = [{"name": k, "value": v} for k, v in items.items()]
    if not isinstance(items, list):
        raise InputError(field, "must be a mapping or a list of {name, value}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, NameValue):
            item = item.model_dump()
        name, value = (item.get("name"), item.get("value")) if isinstance(item, dict) else (None, None)
        if not isinstance(name, str) or not name.strip() or not isinstance(value, str):
            raise InputError(f"{field}[{i}]", "needs a non-empty string name and a string value")
        out.append({"name": name, "value": value})
    return out


class WebhookOptions(TypedDict, total=False):
    """What a webhook may carry besides its url and type (``None`` = not given)."""

    status: int | None  # 1 active, 0 inactive
    actions: str | None
    headers: Mapping[str, str] | list | None  # a mapping, or [{name, value}]: sent with every delivery
    params: Mapping[str, str] | list | None


class WebhookFields(WebhookOptions, total=False):
    """Every field of a webhook: what ``update_webhook`` may change."""

    url: str | None
    webhook_type: str | None


def check_webhook_actions(actions: Any) -> str:
    if not isinstance(actions, str):
        raise InputError("actions", f"must be a string, got {type(actions).__name__}")
    return actions


_WEBHOOK_CHECKS = {
    "url": check_webhook_url,
    "webhook_type": check_webhook_type,
    "status": check_webhook_status,
    "actions": check_webhook_actions,
}


def webhook_body(**fields: Unpack[WebhookFields]) -> dict[str, Any]:
    """The JSON body of add/update webhook from the given (non-None) fields, validated."""
    unknown = sorted(fields.keys() - WebhookFields.__optional_keys__)
    if unknown:
        raise InputError(unknown[0], "is not a webhook field", ", ".join(WebhookFields.__annotations__))
    given: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    body: dict[str, Any] = {n: check(given[n]) for n, check in _WEBHOOK_CHECKS.items() if n in given}
    if "headers" in given or "params" in given:
        body["data"] = {
            "headers": _name_values("headers", given.get("headers", [])),
            "params": _name_values("params", given.get("params", [])),
        }
    return body


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a JPEG's frame header; ValueError if ``data`` is not a complete JPEG."""
    if not data.startswith(b"\xff\xd8\xff"):
        raise ValueError("no JPEG start marker")
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise ValueError("no JPEG end marker (truncated?)")
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"bad JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end before any frame header
            break
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    raise ValueError("no JPEG frame header")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# --- the client ----------------------------------------------------------------------------------------
class VizioSenseClient(HttpService):
    """Async client of the VizioSense integrator API.

    Give ``api_key`` (long-lived, no login) or ``email`` + ``password``; the login token is renewed
    ``renew_margin`` seconds before it expires (at most half its lifetime), and with ``share_session`` the
    session is shared by the clients of this process with the same base URL, email and password.
    ``image_ready_after``,
    ``image_poll_interval`` and ``image_timeout`` are the snapshot defaults (documented 20 s wait; the
    timeout counts from the ready time and must end inside the 30 min link validity).
    """

    service = "viziosense"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        email: str | None = None,
        password: str | None = None,
        renew_margin: float = 60.0,
        share_session: bool = True,
        image_ready_after: float = IMAGE_READY_AFTER_S,
        image_poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        image_timeout: float = DEFAULT_IMAGE_TIMEOUT_S,
        webhooks_per_device: bool = WEBHOOKS_PER_DEVICE,
        settings: HttpSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if bool(api_key) == bool(email or password):
            raise InputError(
                "credentials", "give either api_key or email and password", "exactly one of them"
            )
        if not api_key and not (email and password):
            raise InputError("credentials", "email and password must both be set")
        super().__init__(base_url, settings=settings, clock=clock, secrets=(api_key, password))
        self._api_key = api_key
        self._email = email
        self._password = password
        self.session: auth.LoginSession | None = None
        if email and password:
            key = auth.share_key(self.base_url, email.lower(), secret=password) if share_session else None
            self.session = auth.LoginSession(
                self._login, self._refresh, clock=clock, renew_margin=renew_margin, share_key=key
            )
        check_image_wait(image_ready_after, image_poll_interval, image_timeout)
        self.image_ready_after = image_ready_after
        self.image_poll_interval = image_poll_interval
        self.image_timeout = image_timeout
        self.webhooks_per_device = webhooks_per_device

    # --- auth hooks -------------------------------------------------------------------------------------
    async def _auth_headers(self) -> dict[str, str]:
        token = self._api_key if self.session is None else await self.session.access_token()
        return {"Authorization": f"Bearer {token}"}

    def _error_detail(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            return response.text[:500]
        if isinstance(body, dict):
            if isinstance(body.get("error"), list):  # validation shape of the webhook samples
                return "; ".join(str(e) for e in body["error"]) or "validation error"
            if body.get("message"):  # documented {"httpError", "message"}
                return str(body["message"])
        return body

    def _is_auth_failure(self, response: httpx.Response) -> bool:
        return response.status_code in (401, 403) or _is_token_error(response)

    async def _on_auth_failure(self, response: httpx.Response) -> bool:
        """Renew the session token and retry once, if the refused request carried one (not for 403)."""
        if self.session is None or response.status_code == 403:
            return False
        scheme, _, token = response.request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return False  # login, refresh and image links carry no session token
        self.logger.debug("viziosense: access token refused (HTTP %s); renewing", response.status_code)
        self.session.invalidate(token)
        return True

    async def _login(self) -> auth.Tokens:
        body = {"email": self._email, "password": self._password}
        # idempotent: a second login is harmless
        response, sent = await self._token_request(LOGIN_PATH, "login", body, idempotent=True)
        return self._tokens(response, "login", sent)

    async def _refresh(self, refresh_token: str) -> auth.Tokens:
        body = {"refresh_token": refresh_token}
        response, sent = await self._token_request(REFRESH_PATH, "refresh_token", body, idempotent=False)
        return self._tokens(response, "refresh_token", sent)

    def _tokens(self, response: httpx.Response, operation: str, sent: float) -> auth.Tokens:
        """The session's tokens from a login/refresh answer; the lifetime counts from when it was sent."""
        body = response.json()
        try:
            tokens = Tokens.model_validate(body.get("data", body) if isinstance(body, dict) else body)
        except ValidationError as exc:  # its message would quote the tokens
            fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})) or "body"
            raise ApiError(self.service, operation, f"unexpected answer (check {fields})") from None
        return auth.Tokens(
            access=tokens.access_token.get_secret_value(),
            refresh=tokens.refresh_token.get_secret_value() if tokens.refresh_token else None,
            expires_at=sent + max(0.0, float(tokens.expires_in)),
            info=tokens.user,
        )

    # --- devices ----------------------------------------------------------------------------------------
    async def list_devices(
        self,
        page: int = 1,
        per_page: int | None = None,
        *,
        sort: str | None = None,
        group: str | None = None,
        is_online: str | bool | None = None,
    ) -> DevicePage:
        """One page of the devices this account may see. ``is_online``: ``Online``/``Offline`` (or a bool);
        ``sort``: a field name such as ``name`` (``-name`` descending); ``group``: a group name."""
        check_page(page, per_page)
        params: dict[str, Any] = {"page": page}
        if per_page is not None:
            params["per_page"] = per_page
        if sort:
            params["sort"] = sort
        if group:
            params["group"] = group
        online = check_is_online(is_online)
        if online:
            params["is_online"] = online
        response = await self._request("GET", DEVICES_PATH, "list_devices", params=params)
        return DevicePage.model_validate(response.json())

    async def iter_device_pages(
        self,
        *,
        per_page: int = ALL_PAGES_PER_PAGE,
        sort: str | None = None,
        group: str | None = None,
        is_online: str | bool | None = None,
    ) -> AsyncIterator[DevicePage]:
        """Every page in turn, following ``meta`` until ``current_page`` reaches ``last_page``."""
        page = 1
        while True:
            result = await self.list_devices(page, per_page, sort=sort, group=group, is_online=is_online)
            if result.meta.current_page != page:
                raise ApiError(
                    self.service,
                    "list_devices",
                    f"asked for page {page}, got page {result.meta.current_page}: paging not honoured",
                )
            yield result
            last = result.meta.last_page or result.meta.total_pages or page
            if not result.data or page >= last:
                return
            page += 1

    async def list_all_devices(self, **filters: Any) -> list[Device]:
        """All matching devices across pages (a device seen twice while pages shift is kept once);
        ``filters``: those of ``iter_device_pages`` (per_page, sort, group, is_online)."""
        seen: dict[str, Device] = {}
        async for result in self.iter_device_pages(**filters):
            for device in result.data:
                seen.setdefault(device.uuid, device)
        return list(seen.values())

    async def get_device(self, device_uuid: str) -> Device:
        path = DEVICE_PATH.format(device_uuid=check_device_uuid(device_uuid))
        return Device.model_validate((await self._request("GET", path, "get_device")).json())

    async def update_device(self, device_uuid: str, fields: Mapping[str, str]) -> Device:
        """Change ``name``, ``geo_city``, ``geo_country`` and/or ``client_identifier`` (nothing else can be)."""
        path = DEVICE_PATH.format(device_uuid=check_device_uuid(device_uuid))
        body = check_device_changes(fields)
        # Setting fields to values is idempotent, so a broken connection may be retried.
        response = await self._request("PATCH", path, "update_device", json=body, idempotent=True)
        return Device.model_validate(response.json())

    async def refresh_device(self, device_uuid: str) -> Device:
        """Have the service re-check the device's status (updates ``refreshed``/``is_online``)."""
        path = DEVICE_REFRESH_PATH.format(device_uuid=check_device_uuid(device_uuid))
        response = await self._request("POST", path, "refresh_device", idempotent=True)
        return Device.model_validate(response.json())

    # --- images -----------------------------------------------------------------------------------------
    async def request_image(self, device_uuid: str, *, ready_after: float | None = None) -> ImageRequest:
        """Ask the camera for a new snapshot. Not retried on a broken connection (it may have been taken):
        ``OutcomeUnknownError``. An offline device answers an error (409 on the emulator)."""
        ready_after = self.image_ready_after if ready_after is None else ready_after
        check_image_wait(ready_after, self.image_poll_interval, self.image_timeout)
        path = DEVICE_IMAGE_PATH.format(device_uuid=check_device_uuid(device_uuid))
        sent = self.clock.time()
        response = await self._request("POST", path, "request_image")
        answered = self.clock.time()
        raw, annotated = self._image_links(response)
        for link in (raw, annotated):
            register_url_secrets(link, secret_path=True)
        return ImageRequest(
            device_uuid=device_uuid,
            raw_url=raw,
            annotated_url=annotated,
            requested_at=_utc(sent),
            ready_at=_utc(answered + ready_after),
            expires_at=_utc(sent + IMAGE_LINK_VALIDITY_S),
        )

    def _image_links(self, response: httpx.Response) -> tuple[str, str]:
        """``{"data": [raw, annotated]}``; told apart by the sample's name suffixes, else by position."""
        body = response.json()
        links = body.get("data") if isinstance(body, dict) else None
        if not isinstance(links, list) or len(links) != 2 or not all(isinstance(u, str) for u in links):
            raise ApiError(self.service, "request_image", "expected two image links in data")
        raw, annotated = links
        if "_annotated_image" in urlsplit(raw).path and "_raw_image" in urlsplit(annotated).path:
            raw, annotated = annotated, raw
        return raw, annotated

    async def fetch_image(
        self,
        image: ImageRequest,
        kind: ImageKind = "raw",
        *,
        poll_interval: float | None = None,
        timeout: float | None = None,
    ) -> Snapshot:
        """Download one of a request's images, waiting until it is served.

        Sleeps until ``image.ready_at``, then GETs the link (pre-signed: no Authorization header); 404 means
        not ready yet, so it polls again after ``poll_interval`` growing by 1.5x (up to 5x), for at most
        ``timeout`` seconds past the ready time and never past the link's expiry. 410/403 raise
        ``ImageExpiredError``; running out of time raises ``ImageNotReadyError``; non-JPEG bytes ``ApiError``.
        """
        if kind not in ("raw", "annotated"):
            raise InputError("kind", f"{kind!r} is not allowed", "raw or annotated")
        poll_interval = self.image_poll_interval if poll_interval is None else poll_interval
        timeout = self.image_timeout if timeout is None else timeout
        check_image_wait(0.0, poll_interval, timeout)
        operation = f"fetch_image({kind})"
        register_url_secrets(image.url(kind), secret_path=True)  # the request may come from another process
        ready, expires = image.ready_at.timestamp(), image.expires_at.timestamp()
        deadline = min(ready + timeout, expires)
        if self.clock.time() >= expires:
            raise self._expired(operation, "requested more than 30 min ago")
        if (wait := ready - self.clock.time()) > 0:
            await self.clock.sleep(wait)
        delay, polls = poll_interval, 0
        while True:
            polls += 1
            response = await self._request(
                "GET",
                image.url(kind),
                operation,
                authenticated=False,
                ok=lambda r: r.is_success or r.status_code in (403, 404, 410),
            )
            if response.is_success:
                return self._snapshot(response, kind, operation, polls)
            if response.status_code in (403, 410):
                detail = redact(self._error_detail(response))
                raise self._expired(operation, f"HTTP {response.status_code}: {detail}")
            now = self.clock.time()
            if now >= deadline:
                raise ImageNotReadyError(
                    self.service,
                    operation,
                    f"image still not served (HTTP 404) {now - ready:.1f}s after its ready time "
                    f"({polls} polls); gave up",
                    status=404,
                    attempts=polls,
                    retryable=now < expires,
                )
            self.logger.debug("viziosense %s: not ready yet; polling again in %.2fs", operation, delay)
            await self.clock.sleep(min(delay, deadline - now))
            delay = min(delay * 1.5, poll_interval * 5)

    def _expired(self, operation: str, why: str) -> ImageExpiredError:
        return ImageExpiredError(
            self.service,
            operation,
            f"image link expired ({why}); links are valid 30 min: request a new image",
        )

    def _snapshot(self, response: httpx.Response, kind: ImageKind, operation: str, polls: int) -> Snapshot:
        data = response.content
        content_type = response.headers.get("content-type", "")
        try:
            width, height = jpeg_size(data)
        except ValueError as exc:
            raise ApiError(
                self.service,
                operation,
                f"expected a JPEG, got {len(data):,} bytes of {content_type or 'unknown type'} ({exc})",
                status=response.status_code,
            ) from None
        return Snapshot(
            kind=kind,
            content=data,
            content_type=content_type or "image/jpeg",
            width=width,
            height=height,
            fetched_at=_utc(self.clock.time()),
            polls=polls,
        )

    # --- webhooks ---------------------------------------------------------------------------------------
    def _webhooks_route(self, device_uuid: str, webhook_id: int | None = None) -> tuple[str, dict[str, str]]:
        """Path and query of the webhook endpoints: per device, or global filtered by ``device_uuid``."""
        check_device_uuid(device_uuid)
        if webhook_id is not None and (isinstance(webhook_id, bool) or not isinstance(webhook_id, int)):
            raise InputError("webhook_id", f"{webhook_id!r} is not an integer id")
        if self.webhooks_per_device:
            if webhook_id is None:
                return DEVICE_WEBHOOKS_PATH.format(device_uuid=device_uuid), {}
            return DEVICE_WEBHOOK_PATH.format(device_uuid=device_uuid, webhook_id=webhook_id), {}
        path = (
            GLOBAL_WEBHOOKS_PATH if webhook_id is None else GLOBAL_WEBHOOK_PATH.format(webhook_id=webhook_id)
        )
        return path, {"device_uuid": device_uuid}

    async def list_webhooks(self, device_uuid: str) -> list[Webhook]:
        path, params = self._webhooks_route(device_uuid)
        response = await self._request("GET", path, "list_webhooks", params=params)
        return [Webhook.model_validate(w) for w in response.json().get("data", [])]

    async def add_webhook(
        self, device_uuid: str, url: str, webhook_type: str, **options: Unpack[WebhookOptions]
    ) -> Webhook:
        """Add a webhook: ``webhook_type`` payload or keepalive, ``status`` 1 (active, the default) or 0;
        ``headers`` and ``params`` (mapping or ``[{name, value}]``) are sent with every delivery."""
        body = webhook_body(url=url, webhook_type=webhook_type, **{"status": 1, **options})
        if "url" not in body or "webhook_type" not in body:
            raise InputError("webhook", "url and webhook_type are required")
        path, query = self._webhooks_route(device_uuid)
        response = await self._request("POST", path, "add_webhook", json=body, params=query)
        return Webhook.model_validate(response.json())

    async def update_webhook(
        self, device_uuid: str, webhook_id: int, **changes: Unpack[WebhookFields]
    ) -> Webhook:
        """Change the given fields of a webhook (``None`` = unchanged; e.g. ``status=0`` deactivates it)."""
        body = webhook_body(**changes)
        if not body:
            raise InputError("webhook", "give at least one field to change")
        path, query = self._webhooks_route(device_uuid, webhook_id)
        response = await self._request("PUT", path, "update_webhook", json=body, params=query)
        return Webhook.model_validate(response.json())


def _is_token_error(response: httpx.Response) -> bool:
    """The vendor's ``400 {"httpError": 400, "message": "Access token error"}``."""
    if response.status_code != 400:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and str(body.get("message", "")).strip().lower() == TOKEN_ERROR_MESSAGE


def check_image_wait(ready_after: float, poll_interval: float, timeout: float) -> None:
    """The snapshot wait settings: non-negative wait, positive poll interval, done within the link validity."""
    if not ready_after >= 0:
        raise InputError("ready_after", f"{ready_after!r} is not allowed", "≥ 0 seconds")
    if not poll_interval > 0:
        raise InputError("poll_interval", f"{poll_interval!r} is not allowed", "> 0 seconds")
    if not timeout > 0 or ready_after + timeout >= IMAGE_LINK_VALIDITY_S:
        raise InputError(
            "timeout",
            f"{timeout!r} is not allowed",
            f"> 0 and ready_after + timeout < {IMAGE_LINK_VALIDITY_S:.0f} s (the link validity)",
        )
