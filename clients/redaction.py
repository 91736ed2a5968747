"""Keep secrets out of logs and error messages.

Every client registers its secret values here. ``RedactingFilter`` is installed on the client loggers and
on httpx/httpcore (which log request URLs at INFO/DEBUG), replacing any registered secret with ``***``.
"""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

from .errors import ApiError, InputError

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: list[str] = []  # the same, longest first (a secret inside a longer one is masked after it)
# Loggers whose records can carry request details. Filters on a logger only see records created on that
# logger itself, so each child is listed.
WATCHED_LOGGERS = (
    "clients",
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "hpack",
)


def register_secret(value: str | None) -> None:
    """Remember a secret value so it is masked wherever this module redacts. Short values are ignored."""
    if value and len(value) >= 6:
        with _lock:
            if value not in _secrets:  # signed URLs add thousands per batch: no re-sorting
                _secrets.add(value)
                bisect.insort(_ordered, value, key=lambda s: -len(s))


# Query parameters that make a URL a credential (pre-signed GCS/S3/Azure/CloudFront links, token links).
SIGNATURE_PARAMS = frozenset(
    {
        "x-goog-signature",
        "x-amz-signature",
        "x-amz-security-token",
        "x-amz-credential",
        "signature",
        "sig",
        "token",
        "access_token",
    }
)


def register_url_secrets(url: str | None, *, secret_path: bool = False) -> None:
    """Register what makes a signed or pre-signed URL a credential: anyone holding it can read or write the
    object until it expires, so it must never reach a log or an error message.

    Registers the value of each signature-like query parameter (``SIGNATURE_PARAMS``), as sent and decoded.
    ``secret_path``: the unguessable path itself grants access (a capability link), so register it too.
    """
    if not url:
        return
    parts = urlsplit(url)
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name).lower() in SIGNATURE_PARAMS:
            register_secret(value)
            register_secret(unquote_plus(value))
    if secret_path:
        register_secret(parts.path)
        register_secret(unquote(parts.path))


def register_signed_urls_in(value: Any) -> None:
    """``register_url_secrets`` for every http(s) URL with a query string in a decoded JSON answer."""
    if isinstance(value, str):
        if "?" in value and value.startswith(("https://", "http://")):
            register_url_secrets(value)
    elif isinstance(value, dict):
        for item in value.values():
            register_signed_urls_in(item)
    elif isinstance(value, list):
        for item in value:
            register_signed_urls_in(item)


def redact(text: Any) -> str:
    out = str(text)
    with _lock:
        ordered = tuple(_ordered)
    for secret in ordered:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def error_text(exc: BaseException) -> str:
    """An exception as report or log text, secrets masked. Our clients' errors (``ApiError``, ``InputError``)
    already name what failed; any other is prefixed with its type (a bare ``KeyError`` says little alone)."""
    text = redact(exc)
    if isinstance(exc, ApiError | InputError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


_FILTER = RedactingFilter()


def install_log_redaction(*extra_loggers: str) -> None:
    """Idempotent: attach the filter to every watched logger (plus ``extra_loggers``)."""
    for name in (*WATCHED_LOGGERS, *extra_loggers):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
