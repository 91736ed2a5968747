"""Haut.ai credentials block."""

from __future__ import annotations

from typing import Self

import httpx
from pydantic import ConfigDict, Field, SecretStr, model_validator

from clients.haut import DEFAULT_BASE_URL, HautClient, PollSettings
from clients.timing import SYSTEM_CLOCK, Clock

from .base import ServiceCredentials


class HautCredentials(ServiceCredentials):
    """Company and credentials for the Haut.ai SaaS API: a private token (recommended) or a login.

    A login is done once and its token refreshed before it expires; the vendor warns that logging in per
    request gets blocked, so prefer a private token for backends.

    Example:
        ```python
        from blocks import HautCredentials

        haut = HautCredentials.load("BLOCK_NAME")
        async with haut.get_client() as client:
            datasets = await client.list_datasets()
        ```
    """

    # Validation errors must not echo the input: it holds the token or password in clear.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Haut Credentials"
    _documentation_url = "https://docs.saas.haut.ai/haut.ai/developers/saas-api-overview/"

    base_url: str = Field(default=DEFAULT_BASE_URL, description="API root URL.")
    company_id: str = Field(description="Company ID (a UUID) that owns the datasets.")
    private_token: SecretStr | None = Field(
        default=None,
        description="Long-lived private token (recommended); leave empty to log in with username and password.",
    )
    username: str | None = Field(
        default=None, description="Login e-mail; only when no private token is given."
    )
    password: SecretStr | None = Field(default=None, description="Login password; only with username.")
    poll_initial_delay_seconds: float = Field(
        default=2.0, ge=0, description="Seconds before the first results poll."
    )
    poll_max_delay_seconds: float = Field(
        default=15.0, gt=0, description="Longest pause between results polls, in seconds."
    )
    results_timeout_seconds: float = Field(
        default=300.0, gt=0, description="How long to wait for analysis results, in seconds."
    )

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> Self:
        has_token = self.private_token is not None and bool(self.private_token.get_secret_value())
        has_login = bool(self.username) or (
            self.password is not None and bool(self.password.get_secret_value())
        )
        if has_token and has_login:
            raise ValueError("give either private_token (recommended) or username and password, not both")
        if not has_token and not has_login:
            raise ValueError("give a private_token (recommended), or a username and a password")
        if has_login and not (self.username and self.password and self.password.get_secret_value()):
            raise ValueError("a login needs both username and password")
        return self

    def get_client(
        self, transport: httpx.AsyncBaseTransport | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> HautClient:
        """A new client; close it with ``await client.aclose()`` or use ``async with``."""
        return HautClient(
            self.company_id,
            self.base_url,
            private_token=self.private_token.get_secret_value() if self.private_token else None,
            username=self.username if self.private_token is None else None,
            password=self.password.get_secret_value() if self.password else None,
            poll=PollSettings(
                initial_delay=self.poll_initial_delay_seconds,
                max_delay=self.poll_max_delay_seconds,
                timeout=self.results_timeout_seconds,
            ),
            settings=self.http_settings(transport),
            clock=clock,
        )
