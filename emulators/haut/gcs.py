"""A fake Google Cloud Storage for Haut.ai's signed upload and result URLs.

The real service hands out GCS V4 signed URLs (docs/service-api-facts.md §4.7). The emulator serves them itself under
``/gcs/<bucket>/<object>`` (not under ``/_emulator``, so fault injection applies to uploads too) and answers
like GCS does: XML error documents, ``SignatureDoesNotMatch`` (403) when the method, a query parameter or a
signed header (``Content-Type``, ``X-Goog-Content-Length-Range``) differs from what was signed,
``ExpiredToken`` (400) after ``X-Goog-Expires``, ``EntityTooSmall``/``EntityTooLarge`` (400) when the body is
outside the declared length range, ``NoSuchKey`` (404) for a missing object.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape

GCS_PREFIX = "/gcs"
UPLOAD_BUCKET = "haut-uploads"
RESULTS_BUCKET = "haut-results"
UPLOAD_CONTENT_TYPE = "application/octet-stream"
MAX_UPLOAD_BYTES = 31_457_280  # DOC: X-Goog-Content-Length-Range: 1,31457280
LENGTH_RANGE = f"1,{MAX_UPLOAD_BYTES}"
UPLOAD_SIGNED_HEADERS = "content-type;host;x-goog-content-length-range"
CREDENTIAL_EMAIL = "saas-uploads@haut-emulator.iam.gserviceaccount.com"


class GcsError(Exception):
    """A GCS XML API error document."""

    def __init__(self, status: int, code: str, message: str, details: str | None = None) -> None:
        self.status, self.code, self.message, self.details = status, code, message, details
        super().__init__(f"{status} {code}: {details or message}")

    def xml(self) -> bytes:
        details = f"<Details>{escape(self.details)}</Details>" if self.details else ""
        return (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{self.code}</Code>"
            f"<Message>{escape(self.message)}</Message>{details}</Error>"
        ).encode()


def signature_mismatch(details: str) -> GcsError:
    return GcsError(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the "
        "signature you provided. Check your Google secret key and signing method.",
        details,
    )


def no_such_key() -> GcsError:
    return GcsError(404, "NoSuchKey", "The specified key does not exist.")


class UrlSigner:
    """Makes and checks V4-style signed URLs (HMAC-SHA256 with an emulator secret instead of RSA)."""

    def __init__(self, secret: str, base_url: str) -> None:
        self._secret = secret.encode()
        self.base_url = base_url.rstrip("/")

    def _signature(self, method: str, path: str, date: str, expires: str, signed_headers: str) -> str:
        message = f"{method}\n{path}\n{date}\n{expires}\n{signed_headers}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(
        self, method: str, bucket: str, key: str, now: float, expires: int, signed_headers: str = "host"
    ) -> str:
        """Absolute URL for ``method`` on ``bucket/key`` valid for ``expires`` virtual seconds from ``now``."""
        stamp = datetime.fromtimestamp(now, UTC)
        date = stamp.strftime("%Y%m%dT%H%M%SZ")
        path = f"{GCS_PREFIX}/{bucket}/{quote(key)}"
        query = {
            "X-Goog-Algorithm": "GOOG4-RSA-SHA256",
            "X-Goog-Credential": f"{CREDENTIAL_EMAIL}/{stamp:%Y%m%d}/auto/storage/goog4_request",
            "X-Goog-Date": date,
            "X-Goog-Expires": str(expires),
            "X-Goog-SignedHeaders": signed_headers,
            "X-Goog-Signature": self._signature(method, path, date, str(expires), signed_headers),
        }
        return f"{self.base_url}{path}?{urlencode(query)}"

    def verify(self, method: str, bucket: str, key: str, query: Mapping[str, str], now: float) -> str:
        """Check signature and expiry; returns the signed header list. Raises :class:`GcsError`."""
        date, expires = query.get("X-Goog-Date", ""), query.get("X-Goog-Expires", "")
        signature, signed_headers = query.get("X-Goog-Signature"), query.get("X-Goog-SignedHeaders", "")
        if not signature:
            raise GcsError(
                403,
                "AccessDenied",
                "Access denied.",
                "Anonymous caller does not have "
                f"storage.objects.{'create' if method == 'PUT' else 'get'} access to the "
                f"Google Cloud Storage object. Permission denied on resource {bucket}/{key}.",
            )
        path = f"{GCS_PREFIX}/{bucket}/{quote(key)}"
        expected = self._signature(method, path, date, expires, signed_headers)
        if not hmac.compare_digest(signature, expected):
            raise signature_mismatch(
                f"Signed for a different method, object or query (request: {method} {path})."
            )
        signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        expires_at = signed_at + int(expires)
        if now > expires_at:
            raise GcsError(
                400, "ExpiredToken", "Invalid argument.", f"Request has expired: {int(expires_at)}"
            )
        return signed_headers


def parse_length_range(value: str | None) -> tuple[int, int] | None:
    try:
        low, high = (int(part) for part in (value or "").split(","))
    except ValueError:
        return None
    return (low, high) if 0 <= low <= high else None


class BlobStore:
    """Object bytes kept in memory, at most ``max_bytes`` in total; the oldest objects are evicted first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._objects: OrderedDict[str, bytes] = OrderedDict()
        self.total = 0
        self.evicted = 0

    def put(self, key: str, data: bytes) -> None:
        self.delete(key)
        if len(data) > self.max_bytes:
            self.evicted += 1
            return
        while self._objects and self.total + len(data) > self.max_bytes:
            _, old = self._objects.popitem(last=False)
            self.total -= len(old)
            self.evicted += 1
        self._objects[key] = data
        self.total += len(data)

    def get(self, key: str) -> bytes | None:
        return self._objects.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._objects

    def delete(self, key: str) -> bool:
        data = self._objects.pop(key, None)
        if data is None:
            return False
        self.total -= len(data)
        return True

    def __len__(self) -> int:
        return len(self._objects)
