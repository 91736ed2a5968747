"""VizioSense backend: users and tokens, role-filtered devices, the image request state machine, webhooks.

Facts from docs/service-api-facts.md §2 (DOC unless noted). Error bodies:
``{"httpError": <status>, "message": "..."}`` (DOC) and ``{"error": [...]}`` for validation (INF from the
webhook samples; status 422 ASSUMED, as Laravel, which the paginator ``meta`` suggests, answers).

Image requests: ``POST .../image`` answers at once with two links; a link returns 404 until ``image_ready_after``
(20 s, DOC) has passed since the request, then the JPEG, and from ``image_link_ttl`` (30 min, DOC) after the
request on, 410 Gone (ASSUMED). The request's stamp (device name, time) is rendered in a worker thread as soon
as it is requested; a download only joins cached bytes (see images.py), so Pillow never runs on the event loop
or on a download's path.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..common import Clock, EmulatorBackend, ServiceError
from .images import ImageRenderer, Stamp

TOKEN_ERROR = "Access token error"  # DOC: 400 / 4000
FORBIDDEN = "Unauthorized access"  # DOC: 403 / 4003
# DOC: name, geo_city, geo_country; client_identifier ASSUMED.
UPDATABLE_FIELDS = ("name", "client_identifier", "geo_city", "geo_country")
WEBHOOK_TYPES = ("payload", "keepalive")  # DOC
RAW_SUFFIX = "_raw_image"  # the doc sample's link names
ANNOTATED_SUFFIX = "_annotated_image"
MAX_STRING = 255
MAX_URL = 2048
MAX_EXPIRED_LINKS_KEPT = 100_000  # expired links still answer 410 (not 404) until this many are remembered
# Fixed, so generated device uuids are the same after every restart.
UUID_NAMESPACE = uuid.UUID("5b1f3c1e-7a43-4f0e-9a39-7c1d2f6e0b51")

# Realistic demo fleet: (city, country) and camera spots.
CITIES = (
    ("Montreal", "Canada"),
    ("Quebec City", "Canada"),
    ("Toronto", "Canada"),
    ("Paris", "France"),
    ("Lyon", "France"),
    ("Brussels", "Belgium"),
    ("Geneva", "Switzerland"),
    ("Barcelona", "Spain"),
    ("Amsterdam", "Netherlands"),
    ("Boston", "United States"),
    ("Chicago", "United States"),
    ("London", "United Kingdom"),
)
SPOTS = (
    "Parking P1",
    "Parking P2",
    "Main Entrance",
    "Loading Dock",
    "North Gate",
    "Truck Yard",
    "Visitor Lot",
    "Ramp Level -1",
    "Staff Parking",
    "South Gate",
)


def error(status: int, message: str, reason: str | None = None) -> ServiceError:
    """A rejection in the documented ``{"httpError", "message"}`` shape."""
    return ServiceError(status, {"httpError": status, "message": message}, reason or message)


def validation_error(messages: list[str]) -> ServiceError:
    """A validation rejection in the ``{"error": [...]}`` shape of the webhook samples (422 ASSUMED)."""
    return ServiceError(422, {"error": messages}, "; ".join(messages))


def iso_utc(ts: float) -> str:
    """Laravel's default date serialisation: ``2025-01-31T12:00:00.000000Z`` (ISO 8601, UTC)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def device_uuid(seed: str, key: str) -> str:
    """Deterministic device uuid, so a demo fleet has the same ids after every restart."""
    return str(uuid.uuid5(UUID_NAMESPACE, f"{seed}:{key}"))


@dataclass
class User:
    email: str
    password: str
    name: str
    type: str
    roles: list[str]
    groups: frozenset[str]
    devices: frozenset[str]  # device uuids or client identifiers

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def can_see(self, device: Device) -> bool:
        return (
            self.is_admin
            or device.group in self.groups
            or device.uuid in self.devices
            or device.client_identifier in self.devices
        )

    def public(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "email": self.email, "role": list(self.roles)}


@dataclass
class Device:
    uuid: str
    name: str
    client_identifier: str
    refreshed: str
    is_online: int
    geo_city: str
    geo_country: str
    group: str  # used by ?group= and user scopes; not part of the documented Device object

    def public(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "client_identifier": self.client_identifier,
            "refreshed": self.refreshed,
            "is_online": self.is_online,
            "geo_city": self.geo_city,
            "geo_country": self.geo_country,
        }


@dataclass
class Webhook:
    id: int
    device_uuid: str
    url: str
    webhook_type: str
    status: int
    actions: str
    headers: list[dict[str, str]] = field(default_factory=list)
    params: list[dict[str, str]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "webhook_type": self.webhook_type,
            "status": self.status,
            "actions": self.actions,
            "data": {"headers": [dict(h) for h in self.headers], "params": [dict(p) for p in self.params]},
        }


@dataclass(eq=False)
class ImageRequest:
    id: str
    device_uuid: str
    requested_at: float
    ready_at: float
    expires_at: float
    variant: int
    stamp: Future[Stamp]  # rendered in a worker thread; dropped when the link expires


class VizioSenseBackend(EmulatorBackend):
    service = "viziosense"

    def __init__(self, config: dict[str, Any], clock: Clock, base_url: str) -> None:
        image = config.get("image", {})
        self.renderer = ImageRenderer(
            int(image.get("width", 1280)),
            int(image.get("height", 720)),
            int(image.get("quality", 85)),
            int(image.get("variants", 4)),
        )
        # Pillow work never runs on the event loop: a small pool renders while the client waits its 20 s.
        self._executor = ThreadPoolExecutor(
            int(image.get("render_workers", 2)), thread_name_prefix="vzs-render"
        )
        self._executor.submit(self.renderer.warm_up)
        super().__init__(config, clock, base_url)

    # --- state from config --------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        cfg = self.config
        self.access_ttl = float(cfg.get("access_token_ttl", 3600))
        self.refresh_ttl = float(cfg.get("refresh_token_ttl", 30 * 86_400))
        self.ready_after = float(cfg.get("image_ready_after", 20))
        self.link_ttl = float(cfg.get("image_link_ttl", 1800))
        self.per_page_default = int(cfg.get("per_page_default", 15))
        self.per_page_max = int(cfg.get("per_page_max", 100))
        self.users: dict[str, User] = {}
        for u in cfg["users"]:
            roles = u.get("role", ["user"])
            self.users[u["email"].lower()] = User(
                email=u["email"],
                password=u["password"],
                name=u.get("name", u["email"].split("@")[0]),
                type=u.get("type", "integrator"),
                roles=[roles] if isinstance(roles, str) else list(roles),
                groups=frozenset(u.get("groups", ())),
                devices=frozenset(u.get("devices", ())),
            )
        self.api_keys: dict[str, User] = {}
        for key, email in cfg.get("api_keys", {}).items():
            if email.lower() not in self.users:
                raise ValueError(f"viziosense api_keys: key for unknown user {email!r}")
            self.api_keys[key] = self.users[email.lower()]
        self.devices: dict[str, Device] = {}
        for device in self._build_devices():
            if device.uuid in self.devices:
                raise ValueError(f"viziosense devices: duplicate uuid {device.uuid}")
            self.devices[device.uuid] = device
        self._access: dict[str, tuple[User, float]] = {}
        self._refresh: dict[str, tuple[User, float]] = {}
        self.webhooks: dict[int, Webhook] = {}
        self._next_webhook_id = 1
        self._images: OrderedDict[str, ImageRequest] = OrderedDict()  # live links, oldest first
        self._expired: OrderedDict[str, float] = OrderedDict()
        self._pending_window: dict[str, str] = {}  # device uuid -> id of its not-yet-ready request
        self.stats = {"image_requests": 0, "images_served": 0, "not_ready_fetches": 0, "expired_fetches": 0}

    def _build_devices(self) -> list[Device]:
        """Explicit devices first, then the generated fleet (deterministic names, places and uuids)."""
        fleet = self.config.get("fleet", {})
        seed = str(fleet.get("seed", "demo"))
        now = self.clock.now()
        devices: list[Device] = []
        for i, d in enumerate(self.config.get("devices", [])):
            rng = random.Random(f"{seed}:explicit:{d['name']}")
            devices.append(
                Device(
                    uuid=d.get("uuid") or device_uuid(seed, f"explicit:{d['name']}"),
                    name=d["name"],
                    client_identifier=d.get("client_identifier", f"DEV-{i + 1:04d}"),
                    refreshed=iso_utc(now - rng.randint(60, 3600)),
                    is_online=1 if d.get("is_online", 1) else 0,
                    geo_city=d.get("geo_city", ""),
                    geo_country=d.get("geo_country", ""),
                    group=d.get("group", ""),
                )
            )
        groups = list(fleet.get("groups", ["default"])) or ["default"]
        offline_every = int(fleet.get("offline_every", 0))
        for i in range(int(fleet.get("count", 0))):
            rng = random.Random(f"{seed}:{i}")  # per index, so growing the fleet keeps earlier devices
            city, country = rng.choice(CITIES)
            group = groups[i % len(groups)]
            devices.append(
                Device(
                    uuid=device_uuid(seed, str(i)),
                    name=f"{city} {rng.choice(SPOTS)} Cam {i + 1:02d}",
                    client_identifier=f"{group.upper()}-{i + 1:04d}",
                    refreshed=iso_utc(now - rng.randint(60, 3600)),
                    is_online=0 if offline_every and (i + 1) % offline_every == 0 else 1,
                    geo_city=city,
                    geo_country=country,
                    group=group,
                )
            )
        return devices

    # --- auth ---------------------------------------------------------------------------------------
    def login(self, body: Any) -> dict[str, Any]:
        """``POST auth/login``: email + password → tokens (bad credentials: 401, ASSUMED)."""
        body = _require_object(body)
        errors = [
            f"The {key} field is required."
            for key in ("email", "password")
            if not isinstance(body.get(key), str) or not body.get(key)
        ]
        if errors:
            raise validation_error(errors)
        user = self.users.get(body["email"].lower())
        if user is None or not secrets.compare_digest(user.password, body["password"]):
            raise error(401, "Invalid credentials", "login with wrong email or password")
        self.received.accepted("login", {"email": user.email})
        return self._issue_tokens(user)

    def refresh_token(self, body: Any) -> dict[str, Any]:
        """``POST auth/refresh``: a refresh token (single use) → new access and refresh tokens."""
        body = _require_object(body)
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise validation_error(["The refresh token field is required."])
        entry = self._refresh.pop(token, None)
        if entry is None:
            raise error(400, TOKEN_ERROR, "unknown or already used refresh token")
        user, expires_at = entry
        if self.clock.now() >= expires_at:
            raise error(400, TOKEN_ERROR, "refresh token expired")
        self.received.accepted("refresh_token", {"email": user.email})
        return self._issue_tokens(user)

    def _issue_tokens(self, user: User) -> dict[str, Any]:
        now = self.clock.now()
        if len(self._access) > 10_000:  # logins in a loop must not grow memory forever
            self._access = {t: e for t, e in self._access.items() if e[1] > now}
            self._refresh = {t: e for t, e in self._refresh.items() if e[1] > now}
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._access[access] = (user, now + self.access_ttl)
        self._refresh[refresh] = (user, now + self.refresh_ttl)
        return {
            "data": {
                "user": user.public(),
                "token_type": "Bearer",
                "expires_in": int(self.access_ttl),
                "access_token": access,
                "refresh_token": refresh,
            }
        }

    def authenticate(self, authorization: str | None) -> User:
        """The user behind ``Authorization: Bearer <access token or API key>``; else 400 Access token error."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise error(400, TOKEN_ERROR, "missing or malformed Authorization header")
        user = self.api_keys.get(token)
        if user is not None:
            return user
        entry = self._access.get(token)
        if entry is None:
            raise error(400, TOKEN_ERROR, "unknown access token")
        if self.clock.now() >= entry[1]:
            raise error(400, TOKEN_ERROR, "access token expired")
        return entry[0]

    def _device(self, user: User, uuid_: str) -> Device:
        device = self.devices.get(uuid_)
        if device is None:
            raise error(404, "Device not found", f"unknown device {uuid_}")
        if not user.can_see(device):
            raise error(403, FORBIDDEN, f"{user.email} has no access to device {uuid_}")
        return device

    # --- devices ------------------------------------------------------------------------------------
    def list_devices(self, user: User, query: Mapping[str, str]) -> dict[str, Any]:
        """Devices the user may see, filtered by ``group``/``is_online``, sorted, one page of them."""
        errors: list[str] = []
        online: int | None = None
        if query.get("is_online"):
            wanted = query["is_online"].lower()
            if wanted not in ("online", "offline"):
                errors.append("The selected is_online is invalid. Use Online or Offline.")
            online = 1 if wanted == "online" else 0
        sort = query.get("sort") or None
        if sort is not None and sort not in ("name", "-name"):
            errors.append("The selected sort is invalid. Use name or -name.")
        page = _int_param(query, "page", 1, 1, None, errors)
        per_page = _int_param(query, "per_page", self.per_page_default, 1, self.per_page_max, errors)
        if errors:
            raise validation_error(errors)
        group = query.get("group") or None
        rows = [
            d
            for d in self.devices.values()
            if user.can_see(d)
            and (group is None or d.group == group)
            and (online is None or d.is_online == online)
        ]
        if sort:
            rows.sort(key=lambda d: (d.name.casefold(), d.uuid), reverse=sort.startswith("-"))
        total = len(rows)
        last_page = max(1, -(-total // per_page))
        start = (page - 1) * per_page
        chunk = rows[start : start + per_page]
        return {
            "data": [d.public() for d in chunk],
            "meta": {
                "current_page": page,
                "from": start + 1 if chunk else None,  # Laravel: null on an empty page
                "last_page": last_page,
                "per_page": per_page,
                "total": total,
                "to": start + len(chunk) if chunk else None,
                "total_pages": last_page,
            },
        }

    def get_device(self, user: User, uuid_: str) -> dict[str, Any]:
        return self._device(user, uuid_).public()

    def update_device(self, user: User, uuid_: str, body: Any) -> dict[str, Any]:
        """Only name, client_identifier, geo_city and geo_country change; other fields are ignored (DOC)."""
        device = self._device(user, uuid_)
        body = _require_object(body)
        errors: list[str] = []
        changes: dict[str, str] = {}
        for key in UPDATABLE_FIELDS:
            if key not in body:
                continue
            value = body[key]
            if not isinstance(value, str):
                errors.append(f"The {key} field must be a string.")
            elif len(value) > MAX_STRING:
                errors.append(f"The {key} field must not be greater than {MAX_STRING} characters.")
            elif key == "name" and not value.strip():
                errors.append("The name field must not be empty.")
            else:
                changes[key] = value
        if errors:
            raise validation_error(errors)
        for key, value in changes.items():
            setattr(device, key, value)
        self.received.accepted(
            "update_device",
            {"uuid": uuid_, "fields": sorted(changes)},
            dedup_key=(uuid_, tuple(sorted(changes.items()))),
        )
        return device.public()

    def refresh_device(self, user: User, uuid_: str) -> dict[str, Any]:
        """Re-check the device: ``refreshed`` becomes now (ASSUMED purpose of the 4th device operation)."""
        device = self._device(user, uuid_)
        device.refreshed = iso_utc(self.clock.now())
        self.received.accepted("refresh_device", {"uuid": uuid_})
        return device.public()

    # --- images -------------------------------------------------------------------------------------
    def request_image(self, user: User, uuid_: str) -> list[str]:
        """Start a snapshot; returns the two link names ``<id>_raw_image`` and ``<id>_annotated_image``.

        Offline devices cannot take pictures: 409 (ASSUMED). A new request while the device's previous one
        is not ready yet is accepted but counted as a duplicate (a retried POST, most likely).
        """
        device = self._device(user, uuid_)
        if not device.is_online:
            raise error(409, "Device is offline", f"image requested from offline device {uuid_}")
        now = self.clock.now()
        self._sweep(now)
        image_id = uuid.uuid4().hex
        lines = [
            f"Device {device.uuid}",
            f"{device.geo_city}, {device.geo_country}".strip(", "),
            f"Requested {iso_utc(now)}",
        ]
        variant = uuid.uuid5(UUID_NAMESPACE, device.uuid).int % self.renderer.variants
        stamp = self._executor.submit(self.renderer.stamp, variant, device.name, lines)
        record = ImageRequest(
            image_id, device.uuid, now, now + self.ready_after, now + self.link_ttl, variant, stamp
        )
        self._images[image_id] = record
        self.stats["image_requests"] += 1
        pending = self._pending_window.get(device.uuid)
        pending_record = self._images.get(pending) if pending else None
        if pending_record is None or now >= pending_record.ready_at:
            pending = self._pending_window[device.uuid] = image_id
        self.received.accepted(
            "request_image", {"uuid": uuid_, "image_id": image_id}, dedup_key=(uuid_, pending)
        )
        return [image_id + RAW_SUFFIX, image_id + ANNOTATED_SUFFIX]

    async def fetch_image(self, name: str) -> bytes:
        """JPEG bytes of a link: 404 before it is ready or if unknown, 410 once expired (links are pre-signed)."""
        if name.endswith(RAW_SUFFIX):
            image_id, index = name[: -len(RAW_SUFFIX)], 0
        elif name.endswith(ANNOTATED_SUFFIX):
            image_id, index = name[: -len(ANNOTATED_SUFFIX)], 1
        else:
            raise error(404, "Image not found", f"unknown image link {name!r}")
        now = self.clock.now()
        self._sweep(now)
        record = self._images.get(image_id)
        if record is None:
            if image_id in self._expired:
                self.stats["expired_fetches"] += 1
                raise error(410, "Image link expired", "image link older than 30 min")
            raise error(404, "Image not found", f"unknown image link {name!r}")
        if now < record.ready_at:
            self.stats["not_ready_fetches"] += 1
            raise error(404, "Image not ready yet", "image fetched before it was ready")
        try:
            stamp = record.stamp.result() if record.stamp.done() else await asyncio.wrap_future(record.stamp)
        except Exception:
            raise error(500, "Server error", "image rendering failed") from None
        self.stats["images_served"] += 1
        return self.renderer.compose(record.variant, stamp, annotated=index == 1)

    def _sweep(self, now: float) -> None:
        """Free expired links; requests are in expiry order (same TTL), so this only looks at the front."""
        while self._images:
            image_id, record = next(iter(self._images.items()))
            if now < record.expires_at:
                break
            self._images.popitem(last=False)
            self._expired[image_id] = record.expires_at
            if len(self._expired) > MAX_EXPIRED_LINKS_KEPT:
                self._expired.popitem(last=False)

    # --- webhooks -----------------------------------------------------------------------------------
    def list_webhooks(self, user: User, uuid_: str) -> dict[str, Any]:
        self._device(user, uuid_)
        return {"data": [w.public() for w in self.webhooks.values() if w.device_uuid == uuid_]}

    def add_webhook(self, user: User, uuid_: str, body: Any) -> dict[str, Any]:
        """Validate and store a webhook (201). The same url + type added twice is counted as a duplicate."""
        self._device(user, uuid_)
        fields = _webhook_fields(_require_object(body), partial=False)
        hook = Webhook(
            id=self._next_webhook_id,
            device_uuid=uuid_,
            url=fields["url"],
            webhook_type=fields["webhook_type"],
            status=fields.get("status", 1),  # ASSUMED: active unless told otherwise
            actions=fields.get("actions", ""),
            headers=fields.get("headers", []),
            params=fields.get("params", []),
        )
        self._next_webhook_id += 1
        self.webhooks[hook.id] = hook
        self.received.accepted(
            "add_webhook",
            {"uuid": uuid_, "id": hook.id, "webhook_type": hook.webhook_type},
            dedup_key=(uuid_, hook.url, hook.webhook_type),
        )
        return hook.public()

    def update_webhook(self, user: User, uuid_: str, webhook_id: str, body: Any) -> dict[str, Any]:
        """Change the given fields of a device's webhook (fields left out keep their value)."""
        self._device(user, uuid_)
        hook = self.webhooks.get(int(webhook_id)) if webhook_id.isdigit() else None
        if hook is None or hook.device_uuid != uuid_:
            raise error(404, "Webhook not found", f"unknown webhook {webhook_id!r} for device {uuid_}")
        fields = _webhook_fields(_require_object(body), partial=True)
        for key, value in fields.items():
            setattr(hook, key, value)
        self.received.accepted(
            "update_webhook",
            {"uuid": uuid_, "id": hook.id, "fields": sorted(fields)},
            dedup_key=(hook.id, orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)),
        )
        return hook.public()

    # --- inspection ---------------------------------------------------------------------------------
    def inspect(self) -> dict[str, Any]:
        online = sum(d.is_online for d in self.devices.values())
        stamp_bytes = sum(
            len(r.stamp.result().coded)
            for r in self._images.values()
            if r.stamp.done() and not r.stamp.exception()
        )
        return {
            "devices": len(self.devices),
            "devices_online": online,
            "devices_offline": len(self.devices) - online,
            "webhooks": len(self.webhooks),
            **self.stats,
            "image_links_live": len(self._images),
            "image_stamp_bytes": stamp_bytes,  # what live links hold in memory (scenes are shared)
        }

    def close(self) -> None:
        """Stop the render threads (for in-process use; the server process just exits)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise validation_error(["The request body must be a JSON object."])
    return body


def _int_param(
    query: Mapping[str, str], key: str, default: int, low: int, high: int | None, errors: list[str]
) -> int:
    raw = query.get(key)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        errors.append(f"The {key} field must be an integer.")
        return default
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        errors.append(f"The {key} field must be {bound}.")
        return default
    return value


def _webhook_fields(body: dict[str, Any], partial: bool) -> dict[str, Any]:
    """Validated webhook fields from ``body``; all problems reported together as 422 ``{"error": [...]}``."""
    errors: list[str] = []
    out: dict[str, Any] = {}
    if "url" in body:
        url = body["url"]
        parts = urlsplit(url) if isinstance(url, str) else None
        if not isinstance(url, str) or not url:
            errors.append("The url field must be a valid URL.")
        elif len(url) > MAX_URL:
            errors.append(f"The url field must not be greater than {MAX_URL} characters.")
        elif parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            errors.append("The url field must be a valid URL.")
        else:
            out["url"] = url
    elif not partial:
        errors.append("The url field is required.")
    if "webhook_type" in body:
        if body["webhook_type"] not in WEBHOOK_TYPES:
            errors.append("The selected webhook type is invalid. Use payload or keepalive.")
        else:
            out["webhook_type"] = body["webhook_type"]
    elif not partial:
        errors.append("The webhook type field is required.")
    if "status" in body:
        status = body["status"]
        if isinstance(status, bool) or status not in (0, 1):
            errors.append("The status field must be 0 or 1.")
        else:
            out["status"] = int(status)
    if "actions" in body:
        actions = body["actions"]
        if not isinstance(actions, str):
            errors.append("The actions field must be a string.")
        elif len(actions) > MAX_STRING:
            errors.append(f"The actions field must not be greater than {MAX_STRING} characters.")
        else:
            out["actions"] = actions
    if "data" in body:
        data = body["data"]
        if not isinstance(data, dict):
            errors.append("The data field must be an object.")
        else:
            for part in ("headers", "params"):
                pairs = _name_value_list(data.get(part, []), f"data.{part}", errors)
                if pairs is not None:
                    out[part] = pairs
    if errors:
        raise validation_error(errors)
    return out


def _name_value_list(items: Any, where: str, errors: list[str]) -> list[dict[str, str]] | None:
    if not isinstance(items, list):
        errors.append(f"The {where} field must be a list.")
        return None
    pairs: list[dict[str, str]] = []
    ok = True
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(f"The {where}.{i} field must be an object with name and value.")
            ok = False
            continue
        name, value = item.get("name"), item.get("value")
        if not isinstance(name, str) or not name.strip():
            errors.append(f"The {where}.{i}.name field is required.")
            ok = False
        if not isinstance(value, str):
            errors.append(f"The {where}.{i}.value field must be a string.")
            ok = False
        if ok:
            pairs.append({"name": name, "value": value})
    return pairs if ok else None
