"""Miniviz backend: projects, plans, validation and per-project / per-label rate limits.

Facts from docs/service-api-facts.md §1 (DOC unless noted). Error bodies are ASSUMED ``{"detail": "<message>"}``.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..common import EmulatorBackend, ServiceError, retry_after_header

LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9\-_.:@/]+$")
MAX_LABEL_KEY = 128
MAX_PAYLOAD_KEYS = 8
MAX_PAYLOAD_BYTES = 400
MAX_IMAGE_NAME = 255
# Miniviz documents UNIX milliseconds and no bound: any integer is accepted (before 1970: negative). The
# emulator's store holds 64-bit integers, hence the only limit.
MIN_TIMESTAMP_MS = -(2**63)
MAX_TIMESTAMP_MS = 2**63
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DAY = 86_400.0


def error(status: int, message: str, headers: dict[str, str] | None = None) -> ServiceError:
    return ServiceError(status, {"detail": message}, message, headers)


def payload_size(payload: dict[str, Any]) -> int:
    """Bytes of the payload as compact UTF-8 JSON (ASSUMED to be how the 400-byte limit is measured)."""
    return len(orjson.dumps(payload))


@dataclass
class Project:
    project_id: str
    token: str
    plan: str
    data_interval: float
    last_data_at: float | None = None
    last_image_at: dict[str, float] = field(default_factory=dict)
    data_events: list[tuple[str, int, str, str, float]] = field(
        default_factory=list
    )  # id, ts, label, payload, at
    images: dict[str, dict[str, Any]] = field(default_factory=dict)


class MinivizBackend(EmulatorBackend):
    service = "miniviz"

    def reset(self) -> None:
        super().reset()
        intervals = self.config["data_interval"]
        self.projects: dict[str, Project] = {}
        for p in self.config["projects"]:
            plan = p.get("plan", "free")
            if plan not in ("free", "pro"):
                raise ValueError(f"miniviz project {p['project_id']!r}: plan must be 'free' or 'pro'")
            interval = float(p.get("data_interval", intervals[plan]))
            self.projects[p["project_id"]] = Project(p["project_id"], p["token"], plan, interval)

    # --- auth -------------------------------------------------------------------------------------
    def authenticate(self, project_id: str, token: str | None) -> Project:
        project = self.projects.get(project_id)
        if project is None:
            raise error(404, f"Project {project_id!r} not found")
        if not token or token != project.token:
            raise error(403, "Invalid token for this project")
        return project

    # --- validation -------------------------------------------------------------------------------
    @staticmethod
    def _require_object(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise error(400, "Request body must be a JSON object")
        return body

    @staticmethod
    def _check_timestamp(body: dict[str, Any]) -> int:
        ts = body.get("timestamp")
        if ts is None:
            raise error(400, "timestamp is required (UNIX time in milliseconds)")
        if (
            isinstance(ts, bool)
            or not isinstance(ts, int | float)
            or (isinstance(ts, float) and not ts.is_integer())
        ):
            raise error(400, "timestamp must be an integer: UNIX time in milliseconds")
        ts = int(ts)
        if not MIN_TIMESTAMP_MS <= ts < MAX_TIMESTAMP_MS:
            raise error(400, f"timestamp {ts} is out of range (a 64-bit integer of UNIX milliseconds)")
        return ts

    @staticmethod
    def _check_label_key(body: dict[str, Any]) -> str:
        label = body.get("label_key")
        if label is None:
            raise error(400, "label_key is required")
        if not isinstance(label, str) or not label:
            raise error(400, "label_key must be a non-empty string")
        if len(label) > MAX_LABEL_KEY:
            raise error(400, f"label_key is {len(label)} characters; the maximum is {MAX_LABEL_KEY}")
        if not LABEL_KEY_RE.match(label):
            raise error(400, "label_key may only contain A-Z a-z 0-9 - _ . : @ /")
        return label

    @staticmethod
    def _check_payload(body: dict[str, Any]) -> dict[str, Any]:
        payload = body.get("payload")
        if payload is None:
            raise error(400, "payload is required")
        if not isinstance(payload, dict):
            raise error(400, "payload must be a flat JSON object")
        if len(payload) > MAX_PAYLOAD_KEYS:
            raise error(400, f"payload has {len(payload)} keys; the maximum is {MAX_PAYLOAD_KEYS}")
        for key, value in payload.items():
            if isinstance(value, bool) or value is None or isinstance(value, dict | list):
                kind = (
                    "null"
                    if value is None
                    else type(value).__name__.replace("dict", "object").replace("list", "array")
                )
                raise error(400, f"payload.{key}: {kind} values are not allowed (string or number only)")
            if not isinstance(value, str | int | float):
                raise error(400, f"payload.{key}: only string or number values are allowed")
            if isinstance(value, float) and not math.isfinite(value):
                raise error(400, f"payload.{key}: number must be finite")
        size = payload_size(payload)
        if size > MAX_PAYLOAD_BYTES:
            raise error(400, f"payload is {size} bytes as JSON; the maximum is {MAX_PAYLOAD_BYTES}")
        return payload

    def _check_image(self, body: dict[str, Any]) -> tuple[str, bytes, str]:
        name = body.get("image_name")
        if not isinstance(name, str) or not name:
            raise error(400, "image_name is required (a non-empty string)")
        if len(name) > MAX_IMAGE_NAME:
            raise error(400, f"image_name is {len(name)} characters; the maximum is {MAX_IMAGE_NAME}")
        encoded = body.get("image_base64")
        if not isinstance(encoded, str) or not encoded:
            raise error(400, "image_base64 is required (base64 of a JPEG or PNG)")
        limit = int(self.config["max_image_bytes"])
        if self.config["image_size_mode"] == "base64" and len(encoded) > limit:
            raise error(
                400, f"image_base64 is {len(encoded)} bytes; the maximum is {limit} after base64 encoding"
            )
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise error(400, "image_base64 is not valid base64") from None
        if self.config["image_size_mode"] == "decoded" and len(data) > limit:
            raise error(400, f"image is {len(data)} bytes decoded; the maximum is {limit} bytes")
        if data.startswith(JPEG_MAGIC):
            content_type = "image/jpeg"
        elif data.startswith(PNG_MAGIC):
            content_type = "image/png"
        else:
            raise error(400, "image must be JPEG or PNG")
        return name, data, content_type

    def _rate_limited(self, last: float | None, interval: float, what: str) -> None:
        if not interval or last is None:
            return
        remaining = last + interval - self.clock.now()
        if remaining > 0:
            raise error(
                429,
                f"Too Many Requests: {what} allowed once every {interval:g} s",
                {"Retry-After": retry_after_header(self.clock, remaining)},
            )

    # --- operations -------------------------------------------------------------------------------
    def send_data(self, project_id: str, token: str | None, body: Any) -> dict[str, Any]:
        project = self.authenticate(project_id, token)
        body = self._require_object(body)
        ts = self._check_timestamp(body)
        label = self._check_label_key(body)
        payload = self._check_payload(body)
        self._rate_limited(project.last_data_at, project.data_interval, "data")
        now = self.clock.now()
        project.last_data_at = now
        event_id = str(uuid.uuid4())
        payload_json = orjson.dumps(payload).decode()
        if len(project.data_events) < int(self.config["max_stored_events"]):
            project.data_events.append((event_id, ts, label, payload_json, now))
        self.received.accepted(
            "data",
            {"project_id": project_id, "label_key": label, "timestamp": ts},
            dedup_key=hash((project_id, label, ts, payload_json)),
        )
        return {"id": event_id, "project_id": project_id, "label_key": label, "timestamp": ts}

    def send_image(self, project_id: str, token: str | None, body: Any) -> dict[str, Any]:
        project = self.authenticate(project_id, token)
        if project.plan != "pro":
            raise error(403, "The image API is available on the Pro plan only")
        body = self._require_object(body)
        ts = self._check_timestamp(body)
        label = self._check_label_key(body)
        name, data, content_type = self._check_image(body)
        self._rate_limited(
            project.last_image_at.get(label),
            float(self.config["image_interval"]),
            f"one image per label_key {label!r}",
        )
        now = self.clock.now()
        project.last_image_at[label] = now
        event_id = str(uuid.uuid4())
        project.images[event_id] = {
            "label_key": label,
            "timestamp": ts,
            "image_name": name,
            "content_type": content_type,
            "data": data,
            "received_at": now,
        }
        self.received.accepted(
            "image",
            {
                "project_id": project_id,
                "label_key": label,
                "timestamp": ts,
                "image_name": name,
                "bytes": len(data),
            },
            dedup_key=hash((project_id, label, ts, data)),
        )
        return {
            "id": event_id,
            "project_id": project_id,
            "label_key": label,
            "timestamp": ts,
            "image_name": name,
        }

    def get_image(self, project_id: str, token: str | None, event_id: str) -> tuple[bytes, str]:
        project = self.authenticate(project_id, token)
        image = project.images.get(event_id)
        retention = float(self.config["image_retention_days"]) * DAY
        if image is None or self.clock.now() - image["received_at"] > retention:
            raise error(404, f"Image event {event_id!r} not found")
        return image["data"], image["content_type"]

    # --- inspection -------------------------------------------------------------------------------
    def events(self, project_id: str, label_key: str | None, offset: int, limit: int) -> dict[str, Any]:
        project = self.projects.get(project_id)
        if project is None:
            raise error(404, f"Project {project_id!r} not found")
        rows = project.data_events
        if label_key is not None:
            rows = [r for r in rows if r[2] == label_key]
        page = rows[offset : offset + limit]
        return {
            "total": len(rows),
            "events": [
                {"id": i, "timestamp": ts, "label_key": lbl, "payload": orjson.loads(p), "received_at": at}
                for i, ts, lbl, p, at in page
            ],
        }

    def inspect(self) -> dict[str, Any]:
        return {
            "projects": {
                pid: {
                    "plan": p.plan,
                    "data_interval": p.data_interval,
                    "data_events": len(p.data_events),
                    "images": len(p.images),
                }
                for pid, p in self.projects.items()
            }
        }
