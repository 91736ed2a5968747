"""What every service credentials block shares: connection settings and how blocks are loaded by name."""

from __future__ import annotations

from abc import ABC
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx
from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from pydantic import Field, SecretStr

from clients.session import SessionClient, session_for, session_key
from clients.spread import spread_for
from clients.transport import HttpSettings, RetryPolicy

B = TypeVar("B", bound="ServiceCredentials")
P = ParamSpec("P")
T = TypeVar("T")
# Connections per host a session may open (one per request in flight, opened on first need), times
# ``parallel_connections``: as many as one private client's pool holds (``HttpSettings.max_connections_per_client``).
SESSION_CONNECTIONS = 16
AnyBlock = TypeVar("AnyBlock", bound=Block)


class BlockNotFoundError(ValueError):
    """No saved block of this type carries the name (a misspelled block-name parameter, usually)."""


async def load_block(block_type: type[AnyBlock], name: str) -> AnyBlock:
    """The saved block ``name`` of ``block_type`` (ours, or prefect-aws ``S3Bucket``, ...).

    A missing name raises one ``BlockNotFoundError`` that lists the saved names, instead of Prefect's three
    chained tracebacks (HTTP 404, ObjectNotFound, ValueError).
    """
    try:
        return await block_type.aload(name)
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
    saved = await saved_block_names(block_type)
    raise BlockNotFoundError(
        f"no {block_type.get_block_type_name()} block named {name!r}; saved: {', '.join(saved) or 'none'}"
    ) from None


async def saved_block_names(block_type: type[Block]) -> list[str]:
    """Names of the saved (not anonymous) blocks of ``block_type``; none when the type is not registered."""
    try:
        async with get_client() as client:
            documents = await client.read_block_documents_by_type(
                block_type.get_block_type_slug(), include_secrets=False
            )
    except (ObjectNotFound, PrefectHTTPStatusError):
        return []
    return sorted(d.name for d in documents if d.name and not d.is_anonymous)


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
        description=(
            "Connections per host, in units of 16, each carrying one request at a time. "
            "More help when many requests are in flight."
        ),
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
            return await load_block(cls, block)
        raise TypeError(f"expected a {cls.__name__} or the name of a saved one, got {type(block).__name__}")

    @classmethod
    async def session_call(
        cls: type[B],
        block: B | str,
        method: Callable[Concatenate[Any, P], Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``await method(client, *args, **kwargs)`` with the session client of ``block`` (a block or the name
        of a saved one), on the session's loop: what a thin task does, e.g.
        ``await HautCredentials.session_call("my-haut", HautClient.get_image, image_id)``."""
        creds = await cls.resolve(block)
        return await creds.session().within(method, *args, **kwargs)

    def session(self) -> SessionClient:
        """The process-wide client of this account and configuration, shared by every task and flow.

        Every caller in the process (direct calls, ``.map``, ``asyncio.gather``, any thread or event loop) that
        resolves an equal block gets the same client: one set of pacers, one login, one connection pool
        (``clients/session.py`` says how). Use as ``client = creds.session()`` or
        ``async with creds.session() as client:``; leaving the block does not close it (the process does, at
        exit). ``get_client()`` still gives a private client for callers that want their own.
        """
        return session_for(self.session_key(), self._session_client).view()

    def session_key(self) -> str:
        """This block's session key: its type and settings, its secrets only as a salted hash."""
        settings: dict[str, Any] = {}
        secrets: list[str] = []
        for name, value in self:
            if isinstance(value, SecretStr):
                secrets.append(f"{name}={value.get_secret_value()}")
            else:
                settings[name] = value
        return session_key(self.get_block_type_slug(), settings, secrets)

    def _session_client(self) -> Any:
        """The client a session owns: its requests spread over one-connection pools, opened as needed."""
        return self.get_client(transport=spread_for(SESSION_CONNECTIONS * self.parallel_connections))

    def get_client(self, **kwargs: Any) -> Any:  # pragma: no cover - each service implements it
        raise NotImplementedError
