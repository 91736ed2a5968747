"""Timestamps of any common shape -> UNIX milliseconds, vectorised, with a reason code for each failure.

How a value is read (``to_unix_ms``):

- a datetime column (Parquet): as it is; naive times are wall times in ``timezone``;
- with ``timestamp_format`` (strptime codes, e.g. ``%b %d %Y`` for "Jan 1 2000", ``%d/%m/%Y %H:%M``, or
  ``ISO8601``): every value is read as text in that format (a number as its digits, so ``%Y%m%d`` reads
  19580329);
- otherwise (automatic): ISO 8601 text, **YYYYMMDD** integers, or epoch numbers in ``epoch_unit``.

YYYYMMDD rule (automatic format and ``epoch_unit="auto"`` only): an integer, or text of digits, from 10000101
to 29991231 that is a real calendar date (month 01-12, a day the month has) is a date at midnight in
``timezone``: 19580329 is 1958-03-29. The only epoch numbers that also look like that are seconds between
1970-04-26 and 1970-12-16 (10^7 to 3 x 10^7 s) and milliseconds within the first 9 hours of 1970; to read
those as epochs, give the unit (``epoch_unit="s"``, ...), which turns the rule off.

Epoch numbers with ``epoch_unit="auto"``: the unit of each value is read from its magnitude (|x| < 10^11: s,
< 10^14: ms, < 10^17: us, else ns), right for seconds of any date up to year 5138 and for milliseconds
from 1973-03-03 on (or before 1966-10-31). Millisecond columns close to 1970, and any column whose unit is
known, should say it.

Miniviz takes any integer of UNIX ms (before 1970: negative). Results outside the years 1-9999 cannot be
a calendar date (e.g. milliseconds read as seconds): ``timestamp_out_of_range``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from .spec import EPOCH_MS_PER_UNIT, EpochUnit

MIN_TIMESTAMP_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z (exclusive)
ISO8601 = "ISO8601"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INT_DIVISORS = {"ms": 1, "us": 1000, "ns": 1_000_000}
_YYYYMMDD = (10000101, 29991231)
# An ISO string carries its own offset when a time is followed by Z or +hh[:mm] / -hh[:mm].
_OFFSET_RE = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"


def to_unix_ms(
    values: pd.Series, epoch_unit: EpochUnit = "auto", timezone: str = "UTC", timestamp_format: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """UNIX milliseconds (int64) of every value, and a reason code per value (None when it converted).

    Unparseable values give ``timestamp_invalid``, empty ones ``timestamp_missing``, naive times that do not
    exist or are ambiguous in ``timezone`` ``timestamp_local_time``, results outside the years 1-9999
    ``timestamp_out_of_range``. See the module docstring for the rules.
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
    elif pd.api.types.is_bool_dtype(dtype):
        codes[present] = "timestamp_invalid"
    elif timestamp_format:
        _text_into(_as_text(s.iloc[present]), present, timestamp_format, timezone, ms, codes)
    elif pd.api.types.is_numeric_dtype(dtype):
        _numbers_into(s.to_numpy()[present], present, epoch_unit, timezone, ms, codes)
    else:
        _objects_into(s.astype(object).to_numpy()[present], present, epoch_unit, timezone, ms, codes)
    ok = codes == None  # noqa: E711 - elementwise on an object array
    codes[ok & ((ms < MIN_TIMESTAMP_MS) | (ms >= MAX_TIMESTAMP_MS))] = "timestamp_out_of_range"
    return ms, codes


def _as_text(s: pd.Series) -> pd.Series:
    """Values as text for a format: numbers as their digits (19580329.0 -> "19580329"), text stripped."""
    if pd.api.types.is_float_dtype(s.dtype):
        whole = np.isfinite(s) & (s == np.floor(s))
        return pd.Series(
            [str(int(v)) if w else str(v) for v, w in zip(s.tolist(), whole.tolist(), strict=True)],
            dtype=object,
        )
    return pd.Series([str(v).strip() for v in s.tolist()], dtype=object)


def _numbers_into(
    x: np.ndarray, where: np.ndarray, unit: EpochUnit, timezone: str, ms: np.ndarray, codes: np.ndarray
) -> None:
    """Numbers: YYYYMMDD dates (automatic unit only), else epochs."""
    dates = np.zeros(len(x), dtype=bool)
    if unit == "auto":
        dates = _yyyymmdd_into(x, where, timezone, ms, codes)
    rest = ~dates
    if rest.any():
        out, bad = _epoch_ms(x[rest], unit)
        ms[where[rest]] = out
        codes[where[rest][bad]] = "timestamp_invalid"


def _yyyymmdd_into(
    x: np.ndarray, where: np.ndarray, timezone: str, ms: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """Convert the values that are YYYYMMDD dates (see the module docstring); returns their mask."""
    with np.errstate(invalid="ignore"):
        candidate = (x >= _YYYYMMDD[0]) & (x <= _YYYYMMDD[1])
        if np.issubdtype(x.dtype, np.floating):
            candidate &= x == np.floor(x)
    if not candidate.any():
        return candidate
    digits = pd.Series(x[candidate].astype(np.int64).astype(str))
    parsed = pd.to_datetime(digits, format="%Y%m%d", errors="coerce")
    real = parsed.notna().to_numpy(dtype=bool)
    at = np.flatnonzero(candidate)[real]
    values_ms, bad = _datetime_ms(parsed[real], timezone)
    ms[where[at]] = values_ms
    codes[where[at[bad]]] = "timestamp_local_time"
    dates = np.zeros(len(x), dtype=bool)
    dates[at] = True
    return dates


def _epoch_ms(x: np.ndarray, unit: EpochUnit) -> tuple[np.ndarray, np.ndarray]:
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
    obj: np.ndarray, where: np.ndarray, unit: EpochUnit, timezone: str, ms: np.ndarray, codes: np.ndarray
) -> None:
    """Text (ISO 8601, YYYYMMDD or epoch digits) and, rarely, Python numbers or datetimes in an object column."""
    is_str = np.fromiter((isinstance(v, str) for v in obj), dtype=bool, count=len(obj))
    for i in np.flatnonzero(~is_str):  # JSON numbers, datetime objects: one at a time, they are rare
        v = obj[i]
        if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_):
            _numbers_into(np.array([v]), where[i : i + 1], unit, timezone, ms, codes)
        elif isinstance(v, dt.datetime):
            out, bad = _datetime_ms(pd.Series([pd.Timestamp(v)]), timezone)
            ms[where[i]] = out[0]
            if bad[0]:
                codes[where[i]] = "timestamp_local_time"
        else:
            codes[where[i]] = "timestamp_invalid"
    if not is_str.any():
        return
    where = where[is_str]
    text = pd.Series(obj[is_str], dtype=object).str.strip()
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    numeric = ~np.isnan(numbers)
    digits = numeric.copy()
    if numeric.any():
        digits[numeric] = text[numeric].str.fullmatch(r"[+-]?\d{1,18}").to_numpy(dtype=bool, na_value=False)
    floats = numeric & ~digits
    for subset, raw in ((digits, text[digits].astype(np.int64).to_numpy()), (floats, numbers[floats])):
        if subset.any():
            _numbers_into(raw, where[subset], unit, timezone, ms, codes)
    todo = ~numeric
    if unit != "auto":  # an explicit epoch unit: text that is not a number is invalid
        codes[where[todo]] = "timestamp_invalid"
        return
    if todo.any():
        _text_into(text[todo], where[todo], ISO8601, timezone, ms, codes)


def _text_into(
    text: pd.Series, where: np.ndarray, fmt: str, timezone: str, ms: np.ndarray, codes: np.ndarray
) -> None:
    """Text in ``fmt`` (``ISO8601`` or strptime codes); times without an offset are read in ``timezone``."""
    strings = text.reset_index(drop=True)
    parsed = pd.to_datetime(strings, format=fmt, errors="coerce", utc=True)
    unparsed = parsed.isna().to_numpy(dtype=bool)
    codes[where[unparsed]] = "timestamp_invalid"
    ok = ~unparsed
    if timezone == "UTC":  # utc=True already read naive times as UTC
        naive = np.zeros(len(strings), dtype=bool)
    elif fmt == ISO8601:
        naive = ok & ~strings.str.contains(_OFFSET_RE, regex=True, na=False).to_numpy(dtype=bool)
    else:
        naive = ok if "%z" not in fmt and "%Z" not in fmt else np.zeros(len(strings), dtype=bool)
    if naive.any():
        local, bad = _datetime_ms(parsed[naive].dt.tz_localize(None), timezone)
        naive_at = np.flatnonzero(naive)
        ms[where[naive_at]] = local
        codes[where[naive_at[bad]]] = "timestamp_local_time"
        ok &= ~naive
    ms[where[ok]] = parsed.dt.as_unit("us").array.asi8[ok] // 1000


def format_ms(ms: int | None) -> str:
    """ISO 8601 (UTC, ``Z``) of UNIX ms, before 1970 too; the number itself when it is no calendar date."""
    if ms is None:
        return ""
    try:
        return (_EPOCH + dt.timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return str(ms)
