"""Miniviz client: data events, image events (Pro plan) and image retrieval (docs/service-api-facts.md §1).

Every documented constraint is checked before sending, and both documented rate limits are paced in
process and across the processes of the machine (data: one event per interval per project; images: one per
60 s per label_key), so callers on one machine never see a 429 of their own making.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict

from .errors import InputError
from .shared_pacing import default_pacing, shared_slot
from .timing import SYSTEM_CLOCK, Clock, KeyedPacer, Pacer
from .transport import HttpService, HttpSettings
from .wire import time_the_wire

DEFAULT_BASE_URL = "https://api.miniviz.net"
DATA_PATH = "/api/project/{project_id}"
IMAGE_PATH = "/api/project/{project_id}/image"
IMAGE_GET_PATH = "/api/project/{project_id}/image/{event_id}"

Plan = Literal["free", "pro"]
DATA_INTERVAL_S: dict[str, float] = {"free": 60.0, "pro": 15.0}
IMAGE_INTERVAL_S = 60.0
# A paced request is let into httpx this long before its slot, so httpx builds it while the pacer waits; the
# wire holds its first byte until the slot (clients/wire.py). Covers httpx's work even on a busy machine.
WIRE_LEAD_S = 0.005
MAX_LABEL_KEY = 128
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9\-_.:@/]+$")
MAX_PAYLOAD_KEYS = 8
MAX_PAYLOAD_BYTES = 400
MAX_IMAGE_BYTES = 204_800
MAX_IMAGE_NAME = 255

# Bodies are encoded with orjson (the same compact JSON httpx writes, in a fraction of its CPU) and acks
# validated straight from the bytes: both run once per event.
JSON_BODY = {"Content-Type": "application/json"}

PayloadValue = str | int | float
DEFAULT: Any = object()  # pacing_dir: where the machine's shared pacing lives (clients.shared_pacing)


class EventAck(BaseModel):
    """What Miniviz answers for an accepted event (only ``id`` is evidenced by the vendor sample)."""

    model_config = ConfigDict(extra="allow")
    id: str


class StoredImage(BaseModel):
    content: bytes
    content_type: str


# --- validation: the documented rules, with messages that name field, problem and limit ----------------


def check_label_key(label_key: Any) -> str:
    if not isinstance(label_key, str) or not label_key:
        raise InputError("label_key", "must be a non-empty string")
    if len(label_key) > MAX_LABEL_KEY:
        raise InputError("label_key", f"is {len(label_key)} characters long", f"at most {MAX_LABEL_KEY}")
    if not LABEL_KEY_RE.match(label_key):
        bad = sorted({c for c in label_key if not LABEL_KEY_RE.match(c)})
        raise InputError("label_key", f"contains {''.join(bad)!r}", "allowed: A-Z a-z 0-9 - _ . : @ /")
    return label_key


def check_timestamp_ms(timestamp_ms: Any) -> int:
    """An integer count of UNIX milliseconds: all Miniviz documents (no lower or upper bound, so dates before
    1970 are negative and historical data before 2001 is accepted; docs/service-api-facts.md). A value the service refuses
    comes back as its own 400 error."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int):
        raise InputError(
            "timestamp", f"must be an integer, got {type(timestamp_ms).__name__}", "UNIX time in ms"
        )
    return timestamp_ms


def payload_bytes(payload: dict[str, Any]) -> int:
    """Size the 400-byte limit applies to: the payload as compact UTF-8 JSON."""
    return len(orjson.dumps(payload))


def check_payload(payload: Any) -> dict[str, PayloadValue]:
    if not isinstance(payload, dict):
        raise InputError("payload", f"must be a flat object, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_KEYS:
        raise InputError("payload", f"has {len(payload)} keys", f"at most {MAX_PAYLOAD_KEYS}")
    for key, value in payload.items():
        if not isinstance(key, str):
            raise InputError(f"payload.{key}", "key must be a string")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            kind = "null" if value is None else type(value).__name__
            raise InputError(
                f"payload.{key}", f"{kind} value not allowed", "string or number only; send booleans as 1/0"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"payload.{key}", f"{value} is not a finite number")
    size = payload_bytes(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise InputError("payload", f"is {size} bytes as JSON", f"at most {MAX_PAYLOAD_BYTES}")
    return payload


def json_bytes(body: dict[str, Any]) -> bytes:
    """``body`` as the compact UTF-8 JSON httpx would send; orjson unless a value is beyond it (an integer
    over 64 bits, which the client lets through for Miniviz to judge)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def image_content_type(data: bytes) -> str:
    """JPEG or PNG, judged by content (magic bytes), never by file name."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    raise InputError("image", "is neither JPEG nor PNG", "JPEG and PNG only")


def check_image(data: bytes, image_name: str) -> str:
    if not isinstance(image_name, str) or not image_name:
        raise InputError("image_name", "must be a non-empty string")
    if len(image_name) > MAX_IMAGE_NAME:
        raise InputError("image_name", f"is {len(image_name)} characters long", f"at most {MAX_IMAGE_NAME}")
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError("image", f"is {len(data):,} bytes", f"at most {MAX_IMAGE_BYTES:,} bytes decoded")
    return image_content_type(data)


class _QueryTokenTransport(httpx.AsyncBaseTransport):
    """Legacy auth: adds ``?token=`` below httpx, so httpx's own log lines never show the token."""

    def __init__(self, inner: httpx.AsyncBaseTransport, token: str) -> None:
        self.inner = inner
        self.token = token

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_merge_params({"token": self.token})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class MinivizClient(HttpService):
    """Async client of one Miniviz project.

    ``data_interval`` defaults to the plan's documented interval (Free 60 s, Pro 15 s); 0 disables pacing
    (a self-hosted endpoint or the emulator with limits off). ``auth_mode="query"`` uses the legacy
    ``?token=`` parameter; the default sends ``Authorization: Bearer``.

    Pacing is shared with every other client of the same project on this machine, in this process or another
    (``clients.shared_pacing``: lock files under ``pacing_dir``, by default ``$PIPELINES_PACING_DIR`` or
    ``.pipeline-state/pacing``), or on every machine using one Redis (``pacing_dir`` a ``redis://`` URL, by
    default ``$PIPELINES_PACING_URL``); ``pacing_dir=None`` paces this client alone. A fake clock paces alone
    too.
    """

    service = "miniviz"

    def __init__(
        self,
        project_id: str,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        plan: Plan = "pro",
        data_interval: float | None = None,
        image_interval: float = IMAGE_INTERVAL_S,
        auth_mode: Literal["header", "query"] = "header",
        settings: HttpSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        pacing_dir: Path | str | None = DEFAULT,
    ) -> None:
        super().__init__(base_url, settings=settings, clock=clock, secrets=(token,))
        if plan not in DATA_INTERVAL_S:
            raise InputError("plan", f"unknown plan {plan!r}", "free or pro")
        self.project_id = project_id
        self.plan = plan
        self._token = token
        self.auth_mode = auth_mode
        interval = DATA_INTERVAL_S[plan] if data_interval is None else data_interval
        # the limits are the project's: every process of the machine sending to it paces with the others
        shared_dir = default_pacing() if pacing_dir is DEFAULT else pacing_dir
        project = (self.base_url, project_id)
        self.data_pacer = Pacer(
            interval, clock, wire_lead=WIRE_LEAD_S, shared=shared_slot(shared_dir, "miniviz-data", *project)
        )
        self.image_pacers = KeyedPacer(
            image_interval,
            clock,
            wire_lead=WIRE_LEAD_S,
            shared=functools.partial(shared_slot, shared_dir, "miniviz-image", *project),
        )

    def _wrap_transport(self, transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        time_the_wire(transport)  # pacing measured at the socket when the transport allows it
        return _QueryTokenTransport(transport, self._token) if self.auth_mode == "query" else transport

    async def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self.auth_mode == "header" else {}

    def _error_detail(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            return response.text[:500]
        return body.get("detail", body) if isinstance(body, dict) else body

    def _now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    async def send_data(
        self,
        label_key: str,
        payload: dict[str, PayloadValue],
        timestamp_ms: int | None = None,
        *,
        retry_on_429: bool = True,
    ) -> EventAck:
        """Send one data event; waits for the project's pacing slot first.

        ``retry_on_429=False``: a 429 raises ``RateLimitedError`` at once, for callers that defer the event
        rather than wait (the pacing keeps this machine's callers from ever seeing one)."""
        fields = {"payload": check_payload(payload)}
        return await self._send_event(
            DATA_PATH, "send_data", label_key, timestamp_ms, fields, self.data_pacer, retry_on_429
        )

    def image_wait_time(self, label_key: str) -> float:
        """Seconds before an image for ``label_key`` may be sent (0 = now): lets callers defer instead of wait."""
        return self.image_pacers(label_key).wait_time()

    async def send_image(
        self,
        label_key: str,
        image: bytes,
        image_name: str,
        timestamp_ms: int | None = None,
        *,
        retry_on_429: bool = True,
    ) -> EventAck:
        """Send one image event (Pro plan); waits for the label's pacing slot first (``retry_on_429``: as
        ``send_data``)."""
        if self.plan != "pro":
            raise InputError("plan", "the image API is available on the Pro plan only", "Miniviz answers 403")
        check_image(image, image_name)
        pacer = self.image_pacers(check_label_key(label_key))  # one pacer per label key
        fields = {"image_name": image_name, "image_base64": base64.b64encode(image).decode("ascii")}
        return await self._send_event(
            IMAGE_PATH, "send_image", label_key, timestamp_ms, fields, pacer, retry_on_429
        )

    async def _send_event(
        self,
        path: str,
        operation: str,
        label_key: str,
        timestamp_ms: int | None,
        fields: dict[str, Any],
        pacer: Pacer,
        retry_on_429: bool,
    ) -> EventAck:
        """POST one event (its timestamp, label key and ``fields``) once ``pacer`` gives it its turn."""
        body = {
            "timestamp": check_timestamp_ms(self._now_ms() if timestamp_ms is None else timestamp_ms),
            "label_key": check_label_key(label_key),
            **fields,
        }
        response = await self._request(
            "POST",
            path.format(project_id=self.project_id),
            operation,
            content=json_bytes(body),
            headers=JSON_BODY,
            pacer=pacer,
            retry_on_429=retry_on_429,
        )
        return EventAck.model_validate_json(response.content)

    async def get_image(self, event_id: str) -> StoredImage:
        """Fetch the stored image of an image event."""
        response = await self._request(
            "GET", IMAGE_GET_PATH.format(project_id=self.project_id, event_id=event_id), "get_image"
        )
        return StoredImage(content=response.content, content_type=response.headers.get("content-type", ""))
