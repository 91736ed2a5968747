"""Keep secrets out of logs and error messages.

Every client registers its secret values here. ``RedactingFilter`` is installed on the client loggers and
on httpx/httpcore (which log request URLs at INFO/DEBUG), replacing any registered secret with ``***``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()
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
            _secrets.add(value)


def redact(text: Any) -> str:
    out = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


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
