"""Plain async httpx clients, one module per service. No Prefect imports: usable on their own."""

from .errors import ApiError, AuthError, InputError, NotFoundError, OutcomeUnknownError, RateLimitedError
from .transport import HttpSettings, RetryPolicy

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
