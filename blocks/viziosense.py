"""VizioSense credentials block."""

from __future__ import annotations

from typing import Self

import httpx
from pydantic import Field, SecretStr, model_validator

from clients.viziosense import DEFAULT_BASE_URL, VizioSenseClient

from .base import ServiceCredentials


class VizioSenseCredentials(ServiceCredentials):
    """Access to a VizioSense integrator account: an API key, or an email and password.

    An API key (integrator platform → Developers → API Keys) is recommended for flows: no login is needed.
    With email and password, the clients of one process share one login and renew its token by
    themselves. The
    production API is ``https://api.viziosense.com``; the test environment is
    ``https://api.staging.viziosense.ai``.

    Example:
        ```python
        from blocks import VizioSenseCredentials

        viziosense = VizioSenseCredentials.load("BLOCK_NAME")
        async with viziosense.get_client() as client:
            cameras = await client.list_all_devices(is_online="Online")
        ```
    """

    _block_type_name = "VizioSense Credentials"
    _documentation_url = "https://documentation.viziosense.com/integrator_platform/api_integration"

    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description=(
            "API root URL: production https://api.viziosense.com, staging https://api.staging.viziosense.ai."
        ),
    )
    api_key: SecretStr | None = Field(
        default=None, description="Long-lived API key (recommended); leave empty to use email and password."
    )
    email: str | None = Field(default=None, description="Login email, used when no API key is set.")
    password: SecretStr | None = Field(default=None, description="Login password, used with email.")

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> Self:
        has_key = self.api_key is not None and bool(self.api_key.get_secret_value())
        has_email = bool(self.email)
        has_password = self.password is not None and bool(self.password.get_secret_value())
        if has_key and (has_email or has_password):
            raise ValueError("set either api_key or email + password, not both")
        if not has_key and not (has_email and has_password):
            missing = "password" if has_email else "email" if has_password else "api_key, or email + password"
            raise ValueError(f"VizioSense credentials need {missing}")
        return self

    def get_client(
        self, transport: httpx.AsyncBaseTransport | None = None, **options: float
    ) -> VizioSenseClient:
        """A new client; close it with ``await client.aclose()`` or use ``async with``.

        ``options`` go to the client, e.g. ``image_ready_after``, ``image_poll_interval``, ``image_timeout``.
        """
        return VizioSenseClient(
            self.base_url,
            api_key=self.api_key.get_secret_value() if self.api_key else None,
            email=self.email or None,
            password=self.password.get_secret_value() if self.password else None,
            settings=self.http_settings(transport),
            **options,
        )
