"""Timestamps of any common shape -> UNIX milliseconds, vectorised, with a reason code for each failure."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from clients.miniviz import MIN_TIMESTAMP_MS

from .spec import EPOCH_MS_PER_UNIT, TimestampUnit

MAX_TIMESTAMP_MS = 10**14  # year 5138: Miniviz (and the emulator) refuse anything later as not ms
_INT_DIVISORS = {"ms": 1, "us": 1000, "ns": 1_000_000}
# An ISO string carries its own offset when a time is followed by Z or +hh[:mm] / -hh[:mm].
_OFFSET_RE = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"


def to_unix_ms(
    values: pd.Series, unit: TimestampUnit = "auto", timezone: str = "UTC"
) -> tuple[np.ndarray, np.ndarray]:
    """UNIX milliseconds (int64) of every value, and a reason code per value (None when it converted).

    Unparseable values give ``timestamp_invalid``, empty ones ``timestamp_missing``, naive times that do not
    exist or are ambiguous in ``timezone`` ``timestamp_local_time``, and results outside Miniviz's range
    (before 10^12 ms, i.e. 2001-09-09, or from 10^14 ms) ``timestamp_out_of_range``.
    """
    s = values.reset_index(drop=True)
    n = len(s)
    ms = np.zeros(n, dtype=np.int64)
    codes = np.full(n, None, dtype=object)
    missing = s.isna().to_numpy(dtype=bool)
    codes[missing] = "timestamp_missing"
    present = np.flatnonzero(~missing)
    if not len(present):
        return ms, codes
    dtype = s.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        values_ms, bad = _datetime_ms(s.iloc[present], timezone)
        ms[present] = values_ms
        codes[present[bad]] = "timestamp_local_time"
    elif pd.api.types.is_bool_dtype(dtype) or (pd.api.types.is_numeric_dtype(dtype) and unit == "iso"):
        codes[present] = "timestamp_invalid"
    elif pd.api.types.is_numeric_dtype(dtype):
        values_ms, bad = _epoch_ms(s.to_numpy()[present], unit)
        ms[present] = values_ms
        codes[present[bad]] = "timestamp_invalid"
    else:
        _objects_into(s.astype(object).to_numpy()[present], present, unit, timezone, ms, codes)
    ok = codes == None  # noqa: E711 - elementwise on an object array
    codes[ok & ((ms < MIN_TIMESTAMP_MS) | (ms >= MAX_TIMESTAMP_MS))] = "timestamp_out_of_range"
    return ms, codes


def _epoch_ms(x: np.ndarray, unit: TimestampUnit) -> tuple[np.ndarray, np.ndarray]:
    """(UNIX ms, invalid mask) of epoch numbers; ``auto`` picks the unit of each value by its magnitude."""
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.int64)  # exact integer arithmetic: ns epochs exceed float precision
        a = np.abs(x)
        if unit == "auto":
            out = np.where(
                a < 10**11, x * 1000, np.where(a < 10**14, x, np.where(a < 10**17, x // 1000, x // 1_000_000))
            )
        elif unit == "s":
            out = x * 1000
        else:
            out = x // _INT_DIVISORS[unit]
        return out.astype(np.int64), np.zeros(len(x), dtype=bool)
    x = x.astype(np.float64)
    finite = np.isfinite(x)
    a = np.abs(x)
    if unit == "auto":
        factor = np.where(a < 1e11, 1000.0, np.where(a < 1e14, 1.0, np.where(a < 1e17, 1e-3, 1e-6)))
    else:
        factor = EPOCH_MS_PER_UNIT[unit]
    scaled = np.clip(np.rint(np.where(finite, x, 0.0) * factor), -(2.0**62), 2.0**62)  # out of range later
    return scaled.astype(np.int64), ~finite


def _datetime_ms(s: pd.Series, timezone: str) -> tuple[np.ndarray, np.ndarray]:
    """(UNIX ms, bad-local-time mask) of datetimes; naive ones are wall times in ``timezone``."""
    if s.dt.tz is None:
        s = s.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    utc = s.dt.tz_convert("UTC")
    bad = utc.isna().to_numpy(dtype=bool)
    out = np.where(bad, 0, utc.dt.as_unit("us").array.asi8 // 1000)
    return out.astype(np.int64), bad


def _objects_into(
    obj: np.ndarray, where: np.ndarray, unit: TimestampUnit, timezone: str, ms: np.ndarray, codes: np.ndarray
) -> None:
    """Text (ISO 8601 or epoch digits) and, rarely, Python numbers or datetimes in an object column."""
    is_str = np.fromiter((isinstance(v, str) for v in obj), dtype=bool, count=len(obj))
    for i in np.flatnonzero(~is_str):  # JSON numbers, datetime objects: one at a time, they are rare
        v = obj[i]
        if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_):
            if unit == "iso":
                codes[where[i]] = "timestamp_invalid"
                continue
            out, bad = _epoch_ms(np.array([v]), unit)
        elif isinstance(v, dt.datetime):
            out, bad = _datetime_ms(pd.Series([pd.Timestamp(v)]), timezone)
            if bad[0]:
                codes[where[i]] = "timestamp_local_time"
                continue
        else:
            codes[where[i]] = "timestamp_invalid"
            continue
        ms[where[i]] = out[0]
        if bad[0]:
            codes[where[i]] = "timestamp_invalid"
    if not is_str.any():
        return
    where = where[is_str]
    text = pd.Series(obj[is_str], dtype=object).str.strip()
    todo = np.ones(len(text), dtype=bool)
    if unit != "iso":
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        numeric = ~np.isnan(numbers)
        digits = numeric.copy()
        if numeric.any():
            digits[numeric] = (
                text[numeric].str.fullmatch(r"[+-]?\d{1,18}").to_numpy(dtype=bool, na_value=False)
            )
        floats = numeric & ~digits
        for subset, raw in ((digits, text[digits].astype(np.int64).to_numpy()), (floats, numbers[floats])):
            if subset.any():
                out, bad = _epoch_ms(raw, unit)
                ms[where[subset]] = out
                codes[where[subset][bad]] = "timestamp_invalid"
        todo = ~numeric
        if unit != "auto":  # an explicit epoch unit: text that is not a number is invalid
            codes[where[todo]] = "timestamp_invalid"
            return
    if not todo.any():
        return
    strings = text[todo].reset_index(drop=True)
    where = where[todo]
    parsed = pd.to_datetime(strings, format="ISO8601", errors="coerce", utc=True)
    unparsed = parsed.isna().to_numpy(dtype=bool)
    codes[where[unparsed]] = "timestamp_invalid"
    ok = ~unparsed
    if timezone == "UTC":  # utc=True already read naive times as UTC
        naive = np.zeros(len(strings), dtype=bool)
    else:
        naive = ok & ~strings.str.contains(_OFFSET_RE, regex=True, na=False).to_numpy(dtype=bool)
    if naive.any():
        local, bad = _datetime_ms(parsed[naive].dt.tz_localize(None), timezone)
        naive_at = np.flatnonzero(naive)
        ms[where[naive_at]] = local
        codes[where[naive_at[bad]]] = "timestamp_local_time"
        ok &= ~naive
    ms[where[ok]] = parsed.dt.as_unit("us").array.asi8[ok] // 1000


def format_ms(ms: int | None) -> str:
    if ms is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return str(ms)
