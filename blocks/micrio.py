"""Micrio credentials block (Server API v2, Enterprise)."""

from __future__ import annotations

import uuid

import httpx
from pydantic import Field, SecretStr, field_validator

from clients.micrio import (
    DEFAULT_MAX_BATCH,
    DEFAULT_STATUS_CONCURRENCY,
    PLACEHOLDER_BASE_URL,
    MicrioClient,
)

from .base import ServiceCredentials


class MicrioCredentials(ServiceCredentials):
    """Organisation ID, API key and endpoint of a Micrio Enterprise account (Server API v2).

    Micrio issues the API key and the API endpoint URL on request; there is no public endpoint, so
    ``base_url`` must be set to the one Micrio gave you (the default is a placeholder that is refused).

    Example:
        ```python
        from blocks import MicrioCredentials

        micrio = MicrioCredentials.load("BLOCK_NAME")
        async with micrio.get_client() as client:
            added = await client.add_images("abcdef", [{"sourceUrl": "https://example.org/a.jpg"}])
        ```
    """

    _block_type_name = "Micrio Credentials"
    _documentation_url = "https://doc.micr.io/server/api/v2"

    organisation_id: str = Field(description="Organisation uuid, as issued by Micrio with the API key.")
    api_key: SecretStr = Field(description="API key (a uuid); sent in the JSON body of every call.")
    base_url: str = Field(
        default=PLACEHOLDER_BASE_URL,
        description=(
            "API endpoint URL that Micrio issued to your organisation (not public; request it from Micrio). "
            "The default is a placeholder and must be replaced."
        ),
    )
    user_email: str | None = Field(
        default=None, description="Email recorded as the uploader of added images; empty uses tiler@micr.io."
    )
    max_images_per_add: int = Field(
        default=DEFAULT_MAX_BATCH,
        ge=1,
        description="Most images sent in one images/add call (Micrio documents no limit; 1000 is assumed).",
    )
    status_concurrency: int = Field(
        default=DEFAULT_STATUS_CONCURRENCY,
        ge=1,
        le=32,
        description="image/status calls (of up to 100 ids each) in flight at once when polling many images.",
    )

    @field_validator("organisation_id")
    @classmethod
    def _organisation_id_is_a_uuid(cls, value: str) -> str:
        try:
            uuid.UUID(value)
        except ValueError:
            raise ValueError("organisation_id must be the uuid Micrio issued") from None
        return value

    def get_client(self, transport: httpx.AsyncBaseTransport | None = None) -> MicrioClient:
        """A new client; close it with ``await client.aclose()`` or use ``async with``."""
        return MicrioClient(
            self.organisation_id,
            self.api_key.get_secret_value(),
            self.base_url,
            user_email=self.user_email or None,
            max_batch=self.max_images_per_add,
            status_concurrency=self.status_concurrency,
            settings=self.http_settings(transport),
        )
