"""Errors raised by every client. Messages name the service, the operation and the problem; never a secret."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ApiError(Exception):
    """A call failed: the service answered with an error, or could not be reached within the retry budget.

    ``status`` is the HTTP status (None when no response arrived), ``detail`` the service's own message
    (redacted), ``attempts`` how many tries were made, ``retryable`` whether trying again later may help.
    """

    def __init__(
        self,
        service: str,
        operation: str,
        message: str,
        *,
        status: int | None = None,
        detail: Any = None,
        attempts: int = 1,
        retryable: bool = False,
    ) -> None:
        self.service = service
        self.operation = operation
        self.status = status
        self.detail = detail
        self.attempts = attempts
        self.retryable = retryable
        super().__init__(f"{service} {operation}: {message}")

    def __reduce__(self):  # picklable, so Prefect can persist failed states
        return (_rebuild, (type(self), self.__dict__.copy(), self.args))


def _rebuild(cls: type, state: dict[str, Any], args: tuple) -> ApiError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class NotFoundError(ApiError):
    """The service answered 404 for this resource."""


class AuthError(ApiError):
    """The credentials were refused (401/403, or the service's own token error)."""


class RateLimitedError(ApiError):
    """429 after the retry budget; ``retry_after`` is the wait the service asked for, in seconds."""

    retry_after: float | None = None


class OutcomeUnknownError(ApiError):
    """The connection broke after a non-idempotent request was sent: it may or may not have taken effect.

    Not retried automatically, because a retry could create a duplicate; callers that keep a journal
    can check the service's state and decide.
    """


class InputError(ValueError):
    """A documented constraint was violated before anything was sent.

    The message names the field, the problem and the limit, e.g.
    ``payload: 9 keys, at most 8 allowed``.
    """

    def __init__(self, field: str, problem: str, limit: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.limit = limit
        super().__init__(f"{field}: {problem}" + (f" ({limit})" if limit else ""))

    def __reduce__(self):
        return (type(self), (self.field, self.problem, self.limit))


def check_known(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Refuse the first name of ``given`` that is not ``known`` (a misspelled keyword, say) before sending:
    ``InputError("height", "is not a subject field", "name, birth_date, …")``."""
    known = list(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InputError(unknown[0], f"is not a {what}", ", ".join(known))
