"""What every service credentials block shares: connection settings and how blocks are loaded by name."""

from __future__ import annotations

from abc import ABC
from typing import Any, TypeVar

import httpx
from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field

from clients.transport import HttpSettings, RetryPolicy

B = TypeVar("B", bound="ServiceCredentials")


class ServiceCredentials(CredentialsBlock, ABC):
    """Connection settings common to the service blocks (abstract: not registered as a block type)."""

    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one HTTP request, in seconds.")
    max_attempts: int = Field(
        default=6, ge=1, le=20, description="Tries per call for connect errors, 429, 502, 503 and 504."
    )
    max_retry_seconds: float = Field(
        default=120.0, gt=0, description="Total time one call may spend retrying, in seconds."
    )
    parallel_connections: int = Field(
        default=1,
        ge=1,
        le=32,
        description="HTTP clients used side by side; more help when many requests are in flight.",
    )

    def http_settings(
        self, transport: httpx.AsyncBaseTransport | None = None, retry_on_429: bool = True
    ) -> HttpSettings:
        """``retry_on_429=False``: a 429 fails at once (for callers that defer instead of waiting)."""
        statuses = RetryPolicy.retry_statuses if retry_on_429 else RetryPolicy.retry_statuses - {429}
        return HttpSettings(
            timeout=httpx.Timeout(self.timeout_seconds, connect=min(10.0, self.timeout_seconds)),
            retry=RetryPolicy(
                max_attempts=self.max_attempts, max_elapsed=self.max_retry_seconds, retry_statuses=statuses
            ),
            pool_size=self.parallel_connections,
            transport=transport,
        )

    @classmethod
    async def resolve(cls: type[B], block: B | str) -> B:
        """Accept a block or the name of a saved one (names are what flow parameters carry)."""
        if isinstance(block, cls):
            return block
        if isinstance(block, str):
            return await cls.aload(block)
        raise TypeError(f"expected a {cls.__name__} or the name of a saved one, got {type(block).__name__}")

    def get_client(self, **kwargs: Any) -> Any:  # pragma: no cover - each service implements it
        raise NotImplementedError
