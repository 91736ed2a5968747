"""Where the snapshot harvest stores originals in S3: key layouts, keys and ASCII user metadata.

Plain functions (no network, no Prefect) used by the snapshot harvest.
"""

from __future__ import annotations

import base64
import re
import string
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from clients.errors import InputError

if TYPE_CHECKING:
    from flows.snapshot_harvest.rows import CameraResult

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
