"""Metric cells -> payload values (or a rejection reason), and payload sizing and splitting (8 keys, 400 bytes)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from typing import Any

import numpy as np
import orjson
import pandas as pd

from clients.miniviz import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_KEYS

MAX_JSON_NUMBER = 24  # longest compact JSON of an int64 or a float64, e.g. -1.7976931348623157e+308


def object_value(value: Any) -> tuple[Any, str | None]:
    """(payload value or None to drop the key, reason code or None) for one cell of an object column."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool | np.bool_):
        return int(bool(value)), None
    if isinstance(value, int | np.integer):
        return int(value), None
    if isinstance(value, float | np.floating | decimal.Decimal):
        f = float(value)
        if math.isnan(f):
            return None, None
        if math.isinf(f):
            return None, "value_not_finite"
        return f, None
    if isinstance(value, dict | list | tuple | set | frozenset | np.ndarray):
        return None, "value_nested"
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date):
        return value.isoformat(), None
    return None, "value_unsupported"


_CSV_NUMBER = re.compile(
    r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|infinity)", re.IGNORECASE
)
_CSV_BOOLEANS = {"true": 1, "false": 0}


def csv_text_value(text: str, decimal: str = ".") -> Any:
    """A CSV cell as pandas reads it in a column of its own type: a number, a boolean (1/0) or the text.

    pandas infers CSV types per chunk, so "1" in a chunk that also holds "abc" stays text; deciding per value
    makes what is sent independent of the chunking. ``decimal=","`` reads "12,8" as 12.8."""
    stripped = text.strip()
    if decimal == "," and "," in stripped and "." not in stripped:
        number = stripped.replace(",", ".", 1)
        return float(number) if _CSV_NUMBER.fullmatch(number) else _CSV_BOOLEANS.get(stripped.lower(), text)
    if _CSV_NUMBER.fullmatch(stripped):
        if stripped.lstrip("+-").isdigit() and -(2**63) <= (whole := int(stripped)) < 2**63:
            return whole
        return float(stripped)  # past int64 JSON readers lose precision anyway, as pandas would
    return _CSV_BOOLEANS.get(stripped.lower(), text)


def clean_metric(
    series: pd.Series, csv: bool = False, decimal: str = "."
) -> tuple[list[Any], dict[int, str]]:
    """Payload values of one metric column (None where the key is dropped) and reason codes by position.

    ``csv``: the column comes from a CSV file, where text cells may be numbers or booleans (``csv_text_value``,
    with the file's ``decimal`` mark).
    """
    dtype = series.dtype
    reasons: dict[int, str] = {}
    if pd.api.types.is_bool_dtype(dtype):
        if dtype == np.bool_:
            return series.to_numpy().astype(np.int64).tolist(), reasons
        return [None if v is None else int(v) for v in series.to_numpy(dtype=object, na_value=None)], reasons
    if pd.api.types.is_integer_dtype(dtype):
        if isinstance(dtype, np.dtype):
            return series.to_numpy().tolist(), reasons
        return [None if v is None else int(v) for v in series.to_numpy(dtype=object, na_value=None)], reasons
    if pd.api.types.is_float_dtype(dtype):
        arr = series.to_numpy(dtype=np.float64, na_value=np.nan)
        values = arr.tolist()
        for i in np.flatnonzero(~np.isfinite(arr)):
            values[i] = None
            if not np.isnan(arr[i]):
                reasons[int(i)] = "value_not_finite"
        return values, reasons
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return [None if pd.isna(v) else v.isoformat() for v in series], reasons
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype) and not csv:
        return series.to_numpy(dtype=object, na_value=None).tolist(), reasons
    values = []
    for i, v in enumerate(series.to_numpy(dtype=object)):
        out, reason = object_value(csv_text_value(v, decimal) if csv and isinstance(v, str) else v)
        values.append(out)
        if reason:
            reasons[i] = reason
    return values, reasons


def item_bytes(key: str, value: Any) -> int:
    """Bytes one ``"key":value`` pair takes inside a compact JSON object."""
    return len(orjson.dumps({key: value})) - 2


def split_payload(
    payload: dict[str, Any], max_keys: int = MAX_PAYLOAD_KEYS, max_bytes: int = MAX_PAYLOAD_BYTES
) -> list[dict[str, Any]] | str:
    """Deterministic split of an oversized payload into parts within both limits, in key order (greedy).

    Returns the parts, or the reason code ``value_too_big`` when one pair alone exceeds ``max_bytes``.
    """
    parts: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    size = 2  # "{}"
    for key, value in payload.items():
        item = item_bytes(key, value)
        if 2 + item > max_bytes:
            return "value_too_big"
        extra = item + (1 if current else 0)
        if current and (len(current) >= max_keys or size + extra > max_bytes):
            parts.append(current)
            current, size, extra = {}, 2, item
        current[key] = value
        size += extra
    if current:
        parts.append(current)
    return parts


def value_bound(values: list[Any]) -> int:
    """Most bytes one value of the column takes as JSON (numbers: at most 24)."""
    texts: set[str] = set()
    numbers = False
    for v in values:
        if isinstance(v, str):
            texts.add(v)
        elif v is not None:
            numbers = True
    bound = max((len(orjson.dumps(t)) for t in texts), default=0)
    return max(bound, MAX_JSON_NUMBER) if numbers else bound


def fits(payload: dict[str, Any]) -> bool:
    """True when the payload is within 400 bytes; skips the JSON encoding when a bound already proves it."""
    bound = 2 + len(payload) - 1
    for key, value in payload.items():
        if isinstance(value, str):
            bound = MAX_PAYLOAD_BYTES + 1  # text can be long or escaped: measure
            break
        bound += len(key) * 6 + 3 + MAX_JSON_NUMBER
    if bound <= MAX_PAYLOAD_BYTES:
        return True
    return len(orjson.dumps(payload)) <= MAX_PAYLOAD_BYTES


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` of a cell as a user reads it: 19580329, not ``np.int64(19580329)``; text keeps its quotes."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date):
        value = value.isoformat()
        return value if len(value) <= limit else value[: limit - 3] + "..."
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
