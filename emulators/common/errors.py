"""The one exception every emulator backend raises to reject a request."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A rejection with the real service's status code and error body.

    ``reason`` is a short human sentence recorded in ``/_emulator/received``; ``body`` is exactly what the
    real service would send back (each service has its own shape).
    """

    def __init__(
        self,
        status: int,
        body: Any,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.reason = reason or str(body)
        self.headers = headers or {}
        super().__init__(f"{status}: {self.reason}")
