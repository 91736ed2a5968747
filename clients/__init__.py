"""Plain async httpx clients, one module per service. No Prefect imports: usable on their own."""

from typing import Any

from .errors import ApiError, AuthError, InputError, NotFoundError, OutcomeUnknownError, RateLimitedError

__all__ = [
    "ApiError",
    "AuthError",
    "HttpSettings",
    "InputError",
    "NotFoundError",
    "OutcomeUnknownError",
    "RateLimitedError",
    "RetryPolicy",
]


def __getattr__(name: str) -> Any:
    """The transport (httpx and its friends) is imported on first use: processes that only need the errors,
    such as the image-fitting workers, start without it."""
    if name in ("HttpSettings", "RetryPolicy"):
        from . import transport

        return getattr(transport, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
