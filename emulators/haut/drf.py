"""Django REST Framework conventions of the Haut.ai API: standardized errors, field validation, pagination.

Error bodies follow drf-standardized-errors (docs/service-api-facts.md §4.3): ``{"type": "validation_error" | "client_error" |
"server_error", "errors": [{"code", "detail", "attr", "extra"}]}``. Field messages are DRF's own wording, so a
client sees what the real (Django) service says for the same mistake.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..common import Clock, ServiceError, retry_after_header

MISSING: Any = object()


def error_item(code: str, detail: str, attr: str | None = None, extra: Any = None) -> dict[str, Any]:
    return {"code": code, "detail": detail, "attr": attr, "extra": extra}


def error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return "validation_error" if status == 400 else "client_error"


def validation_error(items: list[dict[str, Any]]) -> ServiceError:
    reason = "; ".join(f"{i['attr']}: {i['detail']}" if i["attr"] else i["detail"] for i in items)
    return ServiceError(400, {"type": "validation_error", "errors": items}, reason)


def field_error(attr: str | None, code: str, detail: str, extra: Any = None) -> ServiceError:
    """One DRF validation error (400)."""
    return validation_error([error_item(code, detail, attr, extra)])


def client_error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> ServiceError:
    return ServiceError(
        status, {"type": "client_error", "errors": [error_item(code, detail)]}, detail, headers
    )


def not_found(detail: str = "Not found.") -> ServiceError:
    return client_error(404, "not_found", detail)


def not_authenticated() -> ServiceError:
    return client_error(
        401,
        "not_authenticated",
        "Authentication credentials were not provided.",
        {"WWW-Authenticate": 'Bearer realm="api"'},
    )


def authentication_failed(detail: str = "Invalid token.") -> ServiceError:
    return client_error(401, "authentication_failed", detail, {"WWW-Authenticate": 'Bearer realm="api"'})


def permission_denied(detail: str = "You do not have permission to perform this action.") -> ServiceError:
    return client_error(403, "permission_denied", detail)


def throttled(clock: Clock, wait: float) -> ServiceError:
    seconds = max(1, math.ceil(wait))
    return client_error(
        429,
        "throttled",
        f"Request was throttled. Expected available in {seconds} seconds.",
        {"Retry-After": retry_after_header(clock, wait)},
    )


def error_body(status: int, message: str, errors: list | None = None) -> dict[str, Any]:
    """Body for errors raised outside the backend (FastAPI validation, unknown route, injected faults)."""
    if status == 400 and errors:
        return {
            "type": "validation_error",
            "errors": [error_item("invalid", e.get("detail", message), e.get("attr")) for e in errors],
        }
    codes = {
        401: "not_authenticated",
        403: "permission_denied",
        404: "not_found",
        405: "method_not_allowed",
        429: "throttled",
    }
    if status >= 500:
        return {"type": "server_error", "errors": [error_item("error", "A server error occurred.")]}
    detail = {404: "Not found."}.get(status, message)
    return {"type": error_type(status), "errors": [error_item(codes.get(status, "invalid"), detail)]}


# --- time -----------------------------------------------------------------------------------------------------
def iso(ts: float) -> str:
    """DRF's DateTimeField output: ISO 8601 in UTC with a ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def plain_time(ts: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` (UTC): the format of ``creation_time`` in results (DOC)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_datetime(value: str) -> float | None:
    """ISO 8601 date-time to UNIX seconds (naive = UTC, as the service runs in UTC); None if invalid."""
    if not isinstance(value, str) or "T" not in value.upper().replace(" ", "T"):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# --- body validation ------------------------------------------------------------------------------------------
class Validator:
    """Checks one request body field by field and reports every problem at once, as DRF serializers do.

    Each method returns the cleaned value, or ``MISSING`` when the field is absent (only possible when not
    required, e.g. on PATCH with ``partial=True``).
    """

    def __init__(self, body: Any, partial: bool = False) -> None:
        self.errors: list[dict[str, Any]] = []
        self.partial = partial
        if not isinstance(body, dict):
            kind = {list: "list", str: "str", int: "int", float: "float", bool: "bool"}.get(
                type(body), "NoneType"
            )
            raise field_error(
                "non_field_errors", "invalid", f"Invalid data. Expected a dictionary, but got {kind}."
            )
        self.body = body

    def fail(self, attr: str | None, code: str, detail: str, extra: Any = None) -> Any:
        self.errors.append(error_item(code, detail, attr, extra))
        return MISSING

    def check(self) -> None:
        """Raise the collected errors as one 400 validation_error."""
        if self.errors:
            raise validation_error(self.errors)

    def _get(self, name: str, required: bool, allow_null: bool, default: Any) -> tuple[bool, Any]:
        if name not in self.body:
            if required and not self.partial:
                return False, self.fail(name, "required", "This field is required.")
            return False, MISSING if self.partial or default is MISSING else default
        value = self.body[name]
        if value is None:
            if allow_null:
                return False, None
            return False, self.fail(name, "null", "This field may not be null.")
        return True, value

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        min_length: int = 1,
        max_length: int | None = None,
        allow_null: bool = False,
        default: Any = MISSING,
    ) -> Any:
        present, value = self._get(name, required, allow_null, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return self.fail(name, "invalid", "Not a valid string.")
        value = str(value)
        if "\x00" in value:  # DRF CharField's ProhibitNullCharactersValidator
            return self.fail(name, "null_characters_not_allowed", "Null characters are not allowed.")
        if not value.strip() and min_length > 0:
            return self.fail(name, "blank", "This field may not be blank.")
        if len(value) < min_length:
            return self.fail(name, "min_length", f"Ensure this field has at least {min_length} characters.")
        if max_length is not None and len(value) > max_length:
            return self.fail(
                name, "max_length", f"Ensure this field has no more than {max_length} characters."
            )
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        min_value: int | None = None,
        max_value: int | None = None,
        allow_null: bool = False,
        default: Any = MISSING,
    ) -> Any:
        present, value = self._get(name, required, allow_null, default)
        if not present:
            return value
        if isinstance(value, bool):
            return self.fail(name, "invalid", "A valid integer is required.")
        try:
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            return self.fail(name, "invalid", "A valid integer is required.")
        if max_value is not None and number > max_value:
            return self.fail(name, "max_value", f"Ensure this value is less than or equal to {max_value}.")
        if min_value is not None and number < min_value:
            return self.fail(name, "min_value", f"Ensure this value is greater than or equal to {min_value}.")
        return number

    def boolean(self, name: str, *, default: Any = MISSING, allow_null: bool = False) -> Any:
        present, value = self._get(name, False, allow_null, default)
        if not present:
            return value
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on", "t", "y"):
            return True
        if text in ("false", "0", "no", "off", "f", "n"):
            return False
        return self.fail(name, "invalid", "Must be a valid boolean.")

    def uuid(self, name: str, *, required: bool = False, allow_null: bool = False) -> Any:
        present, value = self._get(name, required, allow_null, MISSING)
        if not present:
            return value
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            return self.fail(name, "invalid", "Must be a valid UUID.")

    def datetime(self, name: str, *, required: bool = False, allow_null: bool = False) -> Any:
        present, value = self._get(name, required, allow_null, MISSING)
        if not present:
            return value
        ts = parse_datetime(value) if isinstance(value, str) else None
        if ts is None:
            return self.fail(
                name,
                "invalid",
                "Datetime has wrong format. Use one of these formats instead: "
                "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].",
            )
        return ts

    def date(self, name: str, *, allow_null: bool = True) -> Any:
        present, value = self._get(name, False, allow_null, MISSING)
        if not present:
            return value
        try:
            return datetime.strptime(str(value), "%Y-%m-%d").date().isoformat()
        except ValueError:
            return self.fail(
                name, "invalid", "Date has wrong format. Use one of these formats instead: YYYY-MM-DD."
            )

    def choice(
        self, name: str, choices: Iterable[str], *, required: bool = False, default: Any = MISSING
    ) -> Any:
        present, value = self._get(name, required, False, default)
        if not present:
            return value
        if value not in set(choices):
            return self.fail(name, "invalid_choice", f'"{value}" is not a valid choice.')
        return value

    def url(self, name: str, *, required: bool = False) -> Any:
        value = self.string(name, required=required, max_length=2048)
        if value is MISSING:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return self.fail(name, "invalid", "Enter a valid URL.")
        return value

    def anything(self, name: str, *, default: Any = MISSING) -> Any:
        return self.body.get(name, MISSING if self.partial else default)


# --- lists: search, ordering, pagination ----------------------------------------------------------------------
def search_and_order(
    items: list[Any],
    query: Mapping[str, str],
    search: Callable[[Any], str],
    fields: Mapping[str, Callable[[Any], Any]],
    default: str,
) -> list[Any]:
    """DRF SearchFilter (``q``, case-insensitive contains) then OrderingFilter (``ordering=-name,id``).

    Unknown ordering fields are ignored, as DRF's OrderingFilter does.
    """
    q = (query.get("q") or "").strip().lower()
    if q:
        items = [i for i in items if q in search(i).lower()]
    terms = [t.strip() for t in (query.get("ordering") or "").split(",") if t.strip().lstrip("-") in fields]
    for term in reversed(terms or [default]):
        key = fields[term.lstrip("-")]
        items = sorted(items, key=lambda i, k=key: (k(i) is None, k(i)), reverse=term.startswith("-"))
    return items


def _replace_query(url: str, key: str, value: int | None) -> str:
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    if value is not None:
        params.append((key, str(value)))
    return urlunsplit(parts._replace(query=urlencode(params)))


def paginate(
    items: list[Any],
    query: Mapping[str, str],
    request_url: str,
    serialize: Callable[[Any], Any],
    default_size: int,
    max_size: int,
) -> dict[str, Any]:
    """DRF PageNumberPagination: ``{count, next, previous, results}`` with absolute next/previous URLs."""
    size = default_size
    raw_size = query.get("page_size")
    if raw_size and raw_size.isdigit() and int(raw_size) > 0:
        size = min(int(raw_size), max_size)
    raw_page = query.get("page") or "1"
    pages = max(1, math.ceil(len(items) / size))
    page = pages if raw_page == "last" else int(raw_page) if raw_page.isdigit() else 0
    if not 1 <= page <= pages:
        raise not_found("Invalid page.")
    start = (page - 1) * size
    return {
        "count": len(items),
        "next": _replace_query(request_url, "page", page + 1) if page < pages else None,
        "previous": (
            _replace_query(request_url, "page", page - 1 if page > 2 else None) if page > 1 else None
        ),
        "results": [serialize(i) for i in items[start : start + size]],
    }
