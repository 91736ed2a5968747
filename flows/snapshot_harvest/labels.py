"""Miniviz label keys of VizioSense cameras: readable, unique per device uuid, stable, within Miniviz's rules.

Plain functions (no network, no Prefect) used by the snapshot harvest.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from collections.abc import Iterable
from typing import Literal

from clients.errors import InputError
from clients.miniviz import LABEL_KEY_RE, MAX_LABEL_KEY
from clients.viziosense import Device

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
