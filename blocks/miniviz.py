"""Miniviz credentials block."""

from __future__ import annotations

from typing import Literal

import httpx
from pydantic import Field, SecretStr

from clients.miniviz import DEFAULT_BASE_URL, MinivizClient

from .base import ServiceCredentials


class MinivizCredentials(ServiceCredentials):
    """Project ID and token of one Miniviz project, and how to reach it.

    Example:
        ```python
        from blocks import MinivizCredentials

        miniviz = MinivizCredentials.load("BLOCK_NAME")
        async with miniviz.get_client() as client:
            await client.send_data("sensor_1", {"temperature": 21.5})
        ```
    """

    _block_type_name = "Miniviz Credentials"
    _documentation_url = "https://miniviz.net/docs/api_endpoint/api_reference"

    project_id: str = Field(description="Project ID, copied from the project screen (token icon).")
    token: SecretStr = Field(description="Project token; sent as an Authorization Bearer header.")
    plan: Literal["free", "pro"] = Field(
        default="pro",
        description="Plan of the project: sets the data interval and whether images are allowed.",
    )
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API root URL.")
    data_interval_seconds: float | None = Field(
        default=None,
        ge=0,
        description="Seconds between data events; empty uses the plan's documented interval, 0 disables pacing.",
    )
    image_interval_seconds: float = Field(
        default=60.0, ge=0, description="Seconds between images per label key."
    )
    auth_mode: Literal["header", "query"] = Field(
        default="header", description="Token in the Authorization header, or the legacy ?token= parameter."
    )

    def get_client(
        self, transport: httpx.AsyncBaseTransport | None = None, retry_on_429: bool = True
    ) -> MinivizClient:
        """A new client; close it with ``await client.aclose()`` or use ``async with``.

        ``retry_on_429=False`` makes a 429 raise ``RateLimitedError`` at once, for callers that defer the item
        rather than wait (the in-process pacing already keeps a lone client from ever seeing one).
        """
        return MinivizClient(
            self.project_id,
            self.token.get_secret_value(),
            self.base_url,
            plan=self.plan,
            data_interval=self.data_interval_seconds,
            image_interval=self.image_interval_seconds,
            auth_mode=self.auth_mode,
            settings=self.http_settings(transport, retry_on_429),
        )
