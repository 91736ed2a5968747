"""Miniviz historical backfill: the pandas transform (rows -> events or rejections) and the send batch task.

The transform is pure and deterministic: the same file, read with the same parameters, always yields the same
events in the same order, numbered ``seq`` 0, 1, 2... per file. That is what makes resuming exact (see
``SentIndex`` and ``BackfillSender``). Rules, applied chunk by chunk in constant memory:

- **timestamp** -> UNIX ms. ISO 8601 strings (with an offset, or naive and read in ``timezone``), epoch numbers
  in s / ms / us / ns (``timestamp_unit="auto"`` picks per value by magnitude: < 1e11 s, < 1e14 ms, < 1e17 us,
  else ns), or datetime columns (Parquet). Naive local times that do not exist or are ambiguous at a DST change
  are rejected (never moved silently). Miniviz needs ms >= 10^12 (2001-09-09): earlier times are rejected.
- **time range** ``[start_ms, end_ms)``: rows outside are counted as out of range, not sent, not dead-lettered.
- **label** from ``label_column`` (or one fixed ``label_key``), mapped into Miniviz's characters by
  ``map_label_key`` (stable, at most 128 characters).
- **metrics** (selected columns, renamed): NaN drops that key; booleans become 1/0; numbers and strings pass;
  nested values (lists, arrays, objects), bytes, infinities and other types reject the row with a reason; a
  row with no metric value left is rejected (``no_metrics``).
- **size**: more than 8 keys or more than 400 bytes of compact JSON -> split into several events with the same
  label and timestamp (greedy, in column order: deterministic) or rejected (``oversize="reject"``). A single
  value over 400 bytes cannot be split: rejected.
- **resampling** (optional, fixed buckets such as 15 min, aligned on the UNIX epoch, one event per label and
  bucket stamped at the bucket start): numeric metrics aggregated with ``resample_how``, text metrics take the
  last value. Assumes each label's rows are in time order within a file (labels may interleave): the last
  bucket of every label is held back until a later chunk shows a later bucket, so buckets split between chunks
  stay whole. A row for a bucket that was already emitted is rejected (``out_of_order``). Buckets never span
  two files.
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import datetime as dt
import decimal
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
import time
import unicodedata
import zoneinfo
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.errors import ApiError, AuthError, InputError, NotFoundError, OutcomeUnknownError
from clients.miniviz import (
    LABEL_KEY_RE,
    MAX_LABEL_KEY,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_KEYS,
    MIN_TIMESTAMP_MS,
    check_label_key,
)

from .journal import Journal
from .storage import parse_s3_uri
from .tables import iter_table_chunks

TimestampUnit = Literal["auto", "iso", "s", "ms", "us", "ns"]
ResampleHow = Literal["mean", "median", "min", "max", "sum", "first", "last"]
Oversize = Literal["split", "reject"]

MAX_TIMESTAMP_MS = 10**14  # year 5138: Miniviz (and the emulator) refuse anything later as not ms
_EPOCH_MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
_INT_DIVISORS = {"ms": 1, "us": 1000, "ns": 1_000_000}
# An ISO string carries its own offset when a time is followed by Z or +hh[:mm] / -hh[:mm].
_OFFSET_RE = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
_MAX_JSON_NUMBER = 24  # longest compact JSON of an int64 or a float64, e.g. -1.7976931348623157e+308

REASONS: dict[str, str] = {
    "timestamp_missing": "no timestamp",
    "timestamp_invalid": "timestamp is neither ISO 8601 nor an epoch number",
    "timestamp_local_time": "naive local time that does not exist or is ambiguous (DST change)",
    "timestamp_out_of_range": "timestamp before 2001-09-09 (UNIX ms < 10^12) or after year 5138",
    "label_missing": "no label",
    "value_nested": "a metric holds a nested value (list, array, object)",
    "value_not_finite": "a metric is infinite",
    "value_unsupported": "a metric holds a value that is neither text nor a number",
    "value_too_big": "one metric value alone is over 400 bytes as JSON (cannot be split)",
    "no_metrics": "no metric value (all empty)",
    "too_many_metrics": "more than 8 metrics (oversize=reject)",
    "payload_too_big": "payload over 400 bytes as JSON (oversize=reject)",
    "out_of_order": "its resample bucket was already sent (input not in time order)",
}


# --- parameters of the transform ------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillSpec:
    """What to read and how to turn rows into events. ``check()`` validates it; it is hashable."""

    timestamp_column: str = "timestamp"
    timestamp_unit: TimestampUnit = "auto"
    timezone: str = "UTC"
    label_column: str | None = "label_key"
    label_key: str | None = None  # one fixed label for every row; wins over label_column
    metrics: tuple[str, ...] | None = None  # None: every other column
    rename: tuple[tuple[str, str], ...] = ()
    start_ms: int | None = None
    end_ms: int | None = None
    oversize: Oversize = "split"
    resample_ms: int | None = None
    resample_how: ResampleHow = "mean"

    def check(self) -> BackfillSpec:
        if not self.timestamp_column:
            raise InputError("timestamp_column", "must be a column name")
        if self.timestamp_unit not in ("auto", "iso", *_EPOCH_MS_PER_UNIT):
            raise InputError("timestamp_unit", f"{self.timestamp_unit!r}", "auto, iso, s, ms, us or ns")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InputError(
                "timezone", f"unknown time zone {self.timezone!r}", "an IANA name such as Europe/Paris"
            ) from None
        if self.label_key is not None:
            check_label_key(self.label_key)
        elif not self.label_column:
            raise InputError("label_column", "give a label column or a fixed label_key")
        if self.metrics is not None and not self.metrics:
            raise InputError("metrics", "is empty", "leave it empty (None) to send every other column")
        for column in self.metrics or ():
            if column in (self.timestamp_column, self.label_column if self.label_key is None else None):
                raise InputError("metrics", f"{column!r} is the timestamp or label column")
        if self.start_ms is not None and self.end_ms is not None and self.start_ms >= self.end_ms:
            raise InputError("start", "is not before end")
        if self.oversize not in ("split", "reject"):
            raise InputError("oversize", f"{self.oversize!r}", "split or reject")
        if self.resample_ms is not None and self.resample_ms < 1000:
            raise InputError("resample", f"{self.resample_ms} ms", "at least one second")
        if self.resample_how not in ("mean", "median", "min", "max", "sum", "first", "last"):
            raise InputError(
                "resample_how", f"{self.resample_how!r}", "mean, median, min, max, sum, first, last"
            )
        return self

    @property
    def uses_label_column(self) -> bool:
        return self.label_key is None

    def read_columns(self) -> list[str] | None:
        """Columns to read (None: all of them, when the metrics are 'every other column')."""
        if self.metrics is None:
            return None
        cols = [self.timestamp_column]
        if self.uses_label_column:
            cols.append(self.label_column)
        return list(dict.fromkeys([*cols, *self.metrics]))

    def metric_columns(self, available: Sequence[str]) -> list[str]:
        if self.metrics is not None:
            return list(self.metrics)
        skip = {self.timestamp_column, self.label_column if self.uses_label_column else None}
        return [c for c in available if c not in skip]

    def fingerprint(self) -> str:
        """Stable hash of everything that decides which events a file yields and in which order."""
        data = json.dumps(self.__dict__, sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


def resample_milliseconds(freq: str | None) -> int | None:
    """A fixed pandas frequency ("15min", "1h", "30s") in ms; ``InputError`` for calendar ones ("1M")."""
    if not freq:
        return None
    try:
        ms = int(pd.Timedelta(freq) / pd.Timedelta(1, "ms"))
    except (ValueError, TypeError):
        raise InputError("resample", f"{freq!r} is not a fixed duration", "e.g. 15min, 1h, 30s") from None
    if ms < 1000:
        raise InputError("resample", f"{freq!r} is shorter than one second", "at least 1s")
    return ms


def datetime_to_ms(value: dt.datetime | None, timezone: str) -> int | None:
    """A time-range bound in UNIX ms; a naive datetime is read in ``timezone``."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize(timezone)
    return int(ts.tz_convert("UTC").value // 1_000_000)


# --- timestamps -----------------------------------------------------------------------------------------


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
        factor = _EPOCH_MS_PER_UNIT[unit]
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


# --- labels ---------------------------------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def map_label_key(value: Any) -> str | None:
    """The Miniviz ``label_key`` for a label value, or None when there is no label.

    Stable (a pure function of the value) and always valid: at most 128 characters of ``A-Z a-z 0-9 - _ . :
    @ /``. Valid labels pass unchanged. Otherwise accents are stripped ("Küche" -> "Kuche") and whitespace
    becomes "_" ("Room 1" -> "Room_1"); any other character becomes "_" and an 8-character hash of the
    original is appended ("温度" -> "__-<hash>"), so labels that differ only in such characters stay apart.
    Labels over 128 characters are cut to 119 plus "-" and the hash. Numbers: 17.0 -> "17".
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            value = int(value)
    elif isinstance(value, np.integer):
        value = int(value)
    text = str(value).strip()
    if not text:
        return None
    if len(text) <= MAX_LABEL_KEY and LABEL_KEY_RE.match(text):
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    stripped = re.sub(r"\s+", "_", stripped)
    mapped = re.sub(r"[^A-Za-z0-9\-_.:@/]", "_", stripped)
    lossy = mapped != stripped
    if lossy or len(mapped) > MAX_LABEL_KEY:
        mapped = f"{mapped[: MAX_LABEL_KEY - 9]}-{_short_hash(text)}"
    return mapped


class LabelMapper:
    """``map_label_key`` with a cache, a record of labels it changed, and collisions (two labels, one key)."""

    def __init__(self, max_tracked: int = 100_000) -> None:
        self.max_tracked = max_tracked
        self._cache: dict[Any, str | None] = {}
        self.changed: dict[str, str] = {}  # original -> mapped, for labels that were not valid as given
        self._origin: dict[str, str] = {}  # mapped -> first original
        self.collisions: dict[str, set[str]] = {}

    def __call__(self, value: Any) -> str | None:
        try:
            return self._cache[value]
        except (KeyError, TypeError):
            pass
        mapped = map_label_key(value)
        if len(self._cache) < self.max_tracked:
            try:
                self._cache[value] = mapped
            except TypeError:
                pass
            if mapped is not None:
                original = str(value).strip() if not isinstance(value, float) else mapped
                if original != mapped and len(self.changed) < self.max_tracked:
                    self.changed[original] = mapped
                first = self._origin.setdefault(mapped, original)
                if first != original:
                    self.collisions.setdefault(mapped, {first}).add(original)
        return mapped


# --- metric values --------------------------------------------------------------------------------------


def _object_value(value: Any) -> tuple[Any, str | None]:
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


def clean_metric(series: pd.Series) -> tuple[list[Any], dict[int, str]]:
    """Payload values of one metric column (None where the key is dropped) and reason codes by position."""
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
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return series.to_numpy(dtype=object, na_value=None).tolist(), reasons
    values = []
    for i, v in enumerate(series.to_numpy(dtype=object)):
        out, reason = _object_value(v)
        values.append(out)
        if reason:
            reasons[i] = reason
    return values, reasons


def _item_bytes(key: str, value: Any) -> int:
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
        item = _item_bytes(key, value)
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


# --- the per-file transform -----------------------------------------------------------------------------


@dataclass(slots=True)
class Event:
    """One data event; ``seq`` numbers the events of a file in order, ``row`` is its (first) source row."""

    seq: int
    row: int
    part: int
    label_key: str
    timestamp: int
    payload: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"label_key": self.label_key, "payload": self.payload, "timestamp": self.timestamp}


@dataclass(slots=True)
class Rejection:
    """A source row (or, when resampling, a bucket of ``rows`` rows) that will not be sent, and why."""

    row: int
    reason: str
    detail: str
    data: dict[str, Any]
    label_key: str | None = None
    timestamp: int | None = None
    rows: int = 1


@dataclass
class ChunkResult:
    rows: int = 0
    events: list[Event] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    rows_by_label: Counter[str] = field(default_factory=Counter)
    out_of_range_by_label: Counter[str] = field(default_factory=Counter)

    @property
    def out_of_range(self) -> int:
        return sum(self.out_of_range_by_label.values())


_TS = "__ts"
_LABEL = "__label"
_ROW = "__row"
_BUCKET = "__bucket"
_COUNT = "__rows"


class FileTransform:
    """Turns the chunks of ONE file, fed in order, into events and rejections; call ``finish()`` at the end.

    State between chunks: the row offset, the next ``seq``, and when resampling the held-back last bucket of
    every label plus the last bucket emitted per label. Memory is one chunk plus that carry.
    """

    def __init__(self, spec: BackfillSpec, labels: LabelMapper | None = None) -> None:
        self.spec = spec
        self.labels = labels or LabelMapper()
        self.row_offset = 0
        self.next_seq = 0
        self._metrics: list[str] | None = None
        self._keys: list[str] | None = None
        self._carry: pd.DataFrame | None = None
        self._emitted: dict[str, int] = {}
        self._numeric: dict[str, bool] = {}

    # -- setup from the first chunk
    def _setup(self, columns: Sequence[str]) -> None:
        spec = self.spec
        missing = [
            c
            for c in [spec.timestamp_column] + ([spec.label_column] if spec.uses_label_column else [])
            if c not in columns
        ]
        if missing:
            raise InputError("columns", f"{missing} not in the file", f"available: {list(columns)}")
        metrics = spec.metric_columns(columns)
        absent = [c for c in metrics if c not in columns]
        if absent:
            raise InputError("metrics", f"{absent} not in the file", f"available: {list(columns)}")
        if not metrics:
            raise InputError("metrics", "no metric column left", "the file has only the timestamp and label")
        rename = dict(spec.rename)
        keys = [str(rename.get(c, c)) for c in metrics]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise InputError("rename", f"two columns would become {dupes}", "payload keys must be unique")
        self._metrics, self._keys = metrics, keys

    def feed(self, df: pd.DataFrame) -> ChunkResult:
        if self._metrics is None:
            self._setup(list(df.columns))
        spec = self.spec
        n = len(df)
        first_row = self.row_offset
        self.row_offset += n
        out = ChunkResult(rows=n)
        if n == 0:
            return out
        df = df.reset_index(drop=True)
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        ts, codes = to_unix_ms(df[spec.timestamp_column], spec.timestamp_unit, spec.timezone)
        if spec.uses_label_column:
            codes_l, uniques = pd.factorize(df[spec.label_column], use_na_sentinel=True)
            mapped = np.array([self.labels(u) for u in uniques] + [None], dtype=object)
            labels = mapped[codes_l]  # code -1 picks the trailing None
        else:
            labels = np.full(n, spec.label_key, dtype=object)
        ts_ok = codes == None  # noqa: E711
        in_range = ts_ok.copy()
        if spec.start_ms is not None:
            in_range &= ts >= spec.start_ms
        if spec.end_ms is not None:
            in_range &= ts < spec.end_ms
        out_of_range = ts_ok & ~in_range
        label_names = np.where(labels == None, "", labels)  # noqa: E711
        out.rows_by_label.update(label_names.tolist())
        if out_of_range.any():
            out.out_of_range_by_label.update(label_names[out_of_range].tolist())
        codes[in_range & (labels == None)] = "label_missing"  # noqa: E711
        columns: list[list[Any]] = []
        bounds: list[int | None] = []  # JSON bytes bound per column when its dtype alone proves one
        for column in self._metrics:
            values, reasons = clean_metric(df[column])
            columns.append(values)
            numeric = pd.api.types.is_numeric_dtype(df[column].dtype)  # bool, int, float
            bounds.append(_MAX_JSON_NUMBER if numeric else None)
            for i, reason in reasons.items():
                if in_range[i] and codes[i] is None:
                    codes[i] = reason
        ok = in_range & (codes == None)  # noqa: E711
        # rows whose every metric is empty
        present = np.zeros(n, dtype=np.int64)
        for values in columns:
            present += np.fromiter((v is not None for v in values), dtype=bool, count=n)
        codes[ok & (present == 0)] = "no_metrics"
        ok &= present > 0
        rejected = np.flatnonzero((codes != None) & ~out_of_range)  # noqa: E711
        if len(rejected):
            out.rejections.extend(self._rejections(df, rejected, codes, rows, labels, ts, columns))
        kept = np.flatnonzero(ok)
        if spec.resample_ms:
            self._resample_feed(out, kept, rows, labels, ts, columns)
        else:
            payloads = self._payloads(kept, columns)
            self._emit(
                out,
                check=not self._chunk_fits(columns, bounds),
                items=zip(
                    rows[kept].tolist(),
                    labels[kept].tolist(),
                    ts[kept].tolist(),
                    payloads,
                    [1] * len(kept),
                    strict=True,
                ),
            )
        return out

    def finish(self) -> ChunkResult:
        """Emit what is held back (the last bucket of every label when resampling)."""
        out = ChunkResult()
        if self._carry is not None and len(self._carry):
            self._aggregate_into(out, self._carry)
            self._carry = None
        return out

    # -- pieces
    def _rejections(self, df, positions, codes, rows, labels, ts, columns) -> list[Rejection]:
        records = df.iloc[positions].to_dict("records")
        result = []
        for pos, data in zip(positions.tolist(), records, strict=True):
            code = codes[pos]
            label = labels[pos]
            stamp = (
                int(ts[pos])
                if code not in ("timestamp_missing", "timestamp_invalid", "timestamp_local_time")
                else None
            )
            result.append(
                Rejection(int(rows[pos]), code, self._detail(code, pos, df, columns), data, label, stamp)
            )
        return result

    def _detail(self, code: str, pos: int, df: pd.DataFrame, columns: list[list[Any]]) -> str:
        spec = self.spec
        if code.startswith("timestamp"):
            raw = df[spec.timestamp_column].iat[pos]
            where = f" in {spec.timezone}" if code == "timestamp_local_time" else ""
            return f"{REASONS[code]}: {spec.timestamp_column}={_short_repr(raw)}{where}"
        if code == "label_missing":
            return f"{REASONS[code]}: {spec.label_column} is empty"
        if code.startswith("value_"):
            for column in self._metrics:
                _, reason = _object_value(df[column].iat[pos])
                if reason == code:
                    raw = df[column].iat[pos]
                    return f"{REASONS[code]}: {column}={_short_repr(raw)} ({type(raw).__name__})"
        return REASONS.get(code, code)

    def _payloads(self, kept: np.ndarray, columns: list[list[Any]]) -> list[dict[str, Any]]:
        keys = self._keys
        picked = (
            [[col[i] for i in kept.tolist()] for col in columns] if len(kept) < len(columns[0]) else columns
        )
        return (
            [
                {k: v for k, v in zip(keys, row, strict=True) if v is not None}
                for row in zip(*picked, strict=True)
            ]
            if len(kept)
            else []
        )

    def _chunk_fits(self, columns: list[list[Any]], bounds: list[int | None]) -> bool:
        """True when no row of the chunk can exceed 8 keys or 400 bytes, whatever it holds (saves the
        per-row JSON sizing in the common case: a few numeric or short-text metrics)."""
        if len(self._keys) > MAX_PAYLOAD_KEYS:
            return False
        bound = 2 + len(self._keys) - 1
        for key, values, known in zip(self._keys, columns, bounds, strict=True):
            bound += len(orjson.dumps(key)) + 1 + (known if known is not None else _value_bound(values))
            if bound > MAX_PAYLOAD_BYTES:
                return False
        return True

    def _emit(
        self, out: ChunkResult, items: Iterable[tuple[int, str, int, dict[str, Any], int]], check: bool = True
    ) -> None:
        """Size-check each payload (unless ``check`` is False: proven to fit), split or reject the oversized,
        and number the events."""
        reject = self.spec.oversize == "reject"
        for row, label, stamp, payload, n_rows in items:
            if not check or (len(payload) <= MAX_PAYLOAD_KEYS and _fits(payload)):
                out.events.append(Event(self.next_seq, row, 0, label, stamp, payload))
                self.next_seq += 1
                continue
            if reject:
                code = "too_many_metrics" if len(payload) > MAX_PAYLOAD_KEYS else "payload_too_big"
                size = len(orjson.dumps(payload))
                detail = f"{REASONS[code]}: {len(payload)} keys, {size} bytes"
                out.rejections.append(Rejection(row, code, detail, payload, label, stamp, n_rows))
                continue
            parts = split_payload(payload)
            if isinstance(parts, str):
                big = max(payload, key=lambda k: _item_bytes(k, payload[k]))
                detail = f"{REASONS[parts]}: {big} is {_item_bytes(big, payload[big]) + 2} bytes"
                out.rejections.append(Rejection(row, parts, detail, payload, label, stamp, n_rows))
                continue
            for part, chunk in enumerate(parts):
                out.events.append(Event(self.next_seq, row, part, label, stamp, chunk))
                self.next_seq += 1

    # -- resampling
    def _resample_feed(self, out, kept, rows, labels, ts, columns) -> None:
        step = self.spec.resample_ms
        frame = pd.DataFrame({_ROW: rows[kept], _LABEL: labels[kept], _BUCKET: ts[kept] // step * step})
        for key, values in zip(self._keys, columns, strict=True):
            frame[key] = pd.Series([values[i] for i in kept.tolist()], dtype=object)
        if self._emitted and len(frame):
            done_upto = frame[_LABEL].map(self._emitted)
            late = (frame[_BUCKET] <= done_upto).to_numpy(dtype=bool)
            if late.any():
                for rec in frame[late].to_dict("records"):
                    data = {k: rec[k] for k in self._keys if rec[k] is not None}
                    detail = f"{REASONS['out_of_order']}: bucket {format_ms(rec[_BUCKET])} of {rec[_LABEL]}"
                    out.rejections.append(
                        Rejection(
                            int(rec[_ROW]), "out_of_order", detail, data, rec[_LABEL], int(rec[_BUCKET])
                        )
                    )
                frame = frame[~late]
        if self._carry is not None and len(self._carry):
            frame = pd.concat([self._carry, frame], ignore_index=True)
        if not len(frame):
            self._carry = None
            return
        last = frame.groupby(_LABEL, sort=False)[_BUCKET].transform("max")
        complete = (frame[_BUCKET] < last).to_numpy(dtype=bool)
        self._carry = frame[~complete].reset_index(drop=True)
        if complete.any():
            self._aggregate_into(out, frame[complete])

    def _aggregate_into(self, out: ChunkResult, frame: pd.DataFrame) -> None:
        how = self.spec.resample_how
        agg: dict[str, Any] = {_ROW: "min"}
        prepared = pd.DataFrame(
            {
                _LABEL: frame[_LABEL].to_numpy(),
                _BUCKET: frame[_BUCKET].to_numpy(),
                _ROW: frame[_ROW].to_numpy(),
            }
        )
        prepared[_COUNT] = 1
        agg[_COUNT] = "sum"
        for key in self._keys:
            col = frame[key]
            numbers = pd.to_numeric(col, errors="coerce")
            textual = bool((col.notna() & numbers.isna()).any())
            if textual:
                prepared[key] = col.to_numpy(dtype=object)
                agg[key] = "last"
            else:
                prepared[key] = numbers.to_numpy(dtype=np.float64)
                agg[key] = how
        grouped = prepared.groupby([_LABEL, _BUCKET], sort=False).agg(agg).reset_index()
        grouped = grouped.sort_values([_BUCKET, _LABEL], kind="stable")
        for label, bucket in grouped.groupby(_LABEL, sort=False)[_BUCKET].max().items():
            self._emitted[label] = max(self._emitted.get(label, bucket), bucket)
        columns = []
        for key in self._keys:
            values = grouped[key].to_numpy(dtype=object).tolist()
            columns.append(
                [None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in values]
            )
        keys = self._keys
        payloads = [
            {k: v for k, v in zip(keys, row, strict=True) if v is not None}
            for row in zip(*columns, strict=True)
        ]
        self._emit(
            out,
            zip(
                grouped[_ROW].astype(np.int64).tolist(),
                grouped[_LABEL].tolist(),
                grouped[_BUCKET].astype(np.int64).tolist(),
                payloads,
                grouped[_COUNT].astype(np.int64).tolist(),
                strict=True,
            ),
        )


def _value_bound(values: list[Any]) -> int:
    """Most bytes one value of the column takes as JSON (numbers: at most 24)."""
    texts: set[str] = set()
    numbers = False
    for v in values:
        if isinstance(v, str):
            texts.add(v)
        elif v is not None:
            numbers = True
    bound = max((len(orjson.dumps(t)) for t in texts), default=0)
    return max(bound, _MAX_JSON_NUMBER) if numbers else bound


def _fits(payload: dict[str, Any]) -> bool:
    """True when the payload is within 400 bytes; skips the JSON encoding when a bound already proves it."""
    bound = 2 + len(payload) - 1
    for key, value in payload.items():
        if isinstance(value, str):
            bound = MAX_PAYLOAD_BYTES + 1  # text can be long or escaped: measure
            break
        bound += len(key) * 6 + 3 + _MAX_JSON_NUMBER
    if bound <= MAX_PAYLOAD_BYTES:
        return True
    return len(orjson.dumps(payload)) <= MAX_PAYLOAD_BYTES


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def transform_frame(df: pd.DataFrame, spec: BackfillSpec, chunk_rows: int | None = None) -> ChunkResult:
    """Transform a whole DataFrame (as one file), optionally fed in chunks of ``chunk_rows``: for tests."""
    transform = FileTransform(spec)
    total = ChunkResult()
    step = chunk_rows or max(1, len(df))
    for start in range(0, max(1, len(df)), step):
        _merge(total, transform.feed(df.iloc[start : start + step]))
    _merge(total, transform.finish())
    return total


def _merge(into: ChunkResult, part: ChunkResult) -> None:
    into.rows += part.rows
    into.events.extend(part.events)
    into.rejections.extend(part.rejections)
    into.rows_by_label.update(part.rows_by_label)
    into.out_of_range_by_label.update(part.out_of_range_by_label)


def iter_file_results(
    path: str, spec: BackfillSpec, chunk_rows: int, s3_client: Any = None, labels: LabelMapper | None = None
) -> Iterator[ChunkResult]:
    """The transform of one file, chunk by chunk (the last result flushes the resample carry)."""
    transform = FileTransform(spec, labels)
    for chunk in iter_table_chunks(
        path, chunksize=chunk_rows, columns=spec.read_columns(), s3_client=s3_client
    ):
        yield transform.feed(chunk)
    yield transform.finish()


def file_id(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def file_fingerprint(path: str, s3_client: Any = None) -> dict[str, Any]:
    """What identifies one version of an input file: size and mtime (local) or ETag and size (S3)."""
    if path.startswith("s3://"):
        bucket, key = parse_s3_uri(path, field="source")
        head = s3_client.head_object(Bucket=bucket, Key=key)
        return {"size": head["ContentLength"], "etag": head["ETag"]}
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# --- what was sent: the journal -------------------------------------------------------------------------


def _ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted sequence numbers as half-open ranges: [3, 4, 5, 9] -> [[3, 6], [9, 10]]."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s:
            out[-1][1] = s + 1
        else:
            out.append([s, s + 1])
    return out


class _IntervalSet:
    """Disjoint half-open ranges of sequence numbers, merged as they are added."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self.ends, start)  # first range that ends at or after start
        j = bisect.bisect_right(self.starts, end)  # ranges from i to j-1 touch [start, end)
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.starts, seq) - 1
        return i >= 0 and seq < self.ends[i]

    def count(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends, strict=True))


class SentIndex:
    """What the journal says: per file, which event numbers Miniviz accepted, fingerprints, finished files.

    Journal records (JSON lines, see ``tasks/journal.py``):
    ``{"t": "run", "spec": <fingerprint>, ...}`` at the start of each sending run;
    ``{"t": "file", "f": <file id>, "path": ..., "fp": {...}}`` before the first event of a file is sent;
    ``{"t": "sent", "f": <file id>, "r": [[start, end), ...]}`` after Miniviz acknowledged those events;
    ``{"t": "file_done", "f": <file id>}`` once every event of the file is acknowledged.
    """

    def __init__(self, records: Iterable[dict[str, Any]] = ()) -> None:
        self.sent: dict[str, _IntervalSet] = {}
        self.fingerprints: dict[str, dict[str, Any]] = {}
        self.done: set[str] = set()
        self.specs: set[str] = set()
        for record in records:
            self.apply(record)

    def apply(self, record: dict[str, Any]) -> None:
        kind = record.get("t")
        if kind == "sent":
            target = self.sent.setdefault(record["f"], _IntervalSet())
            for start, end in record["r"]:
                target.add(int(start), int(end))
        elif kind == "file":
            self.fingerprints.setdefault(record["f"], record.get("fp") or {})
        elif kind == "file_done":
            self.done.add(record["f"])
        elif kind == "run" and record.get("spec"):
            self.specs.add(record["spec"])

    def is_sent(self, fid: str, seq: int) -> bool:
        target = self.sent.get(fid)
        return target is not None and seq in target

    def sent_count(self, fid: str) -> int:
        target = self.sent.get(fid)
        return target.count() if target else 0

    @classmethod
    def load(cls, journal: Journal) -> SentIndex:
        """Replay a journal. Local journals are streamed line by line (memory stays flat however long the
        journal); S3 journals are read with ``Journal.read()`` (their appends are fewer: one PUT each)."""
        return cls(journal.records())


# --- dead letters ---------------------------------------------------------------------------------------


DEAD_LETTER_COLUMNS = [
    "source",
    "row",
    "rows",
    "status",
    "reason",
    "detail",
    "label_key",
    "timestamp",
    "timestamp_iso",
    "data",
]


class DeadLetterWriter:
    """Streams rejected rows and failed events to a CSV file (local, or spooled and uploaded to S3 on close).

    One line per rejected row or bucket (``status=rejected``, the source row as JSON in ``data``) and per
    event that failed to send (``status=failed``: a re-run sends it again). Nothing is kept in memory.
    """

    def __init__(self, location: str, s3_client: Any = None) -> None:
        self.location = location
        self.s3_client = s3_client
        self.count = 0
        if location.startswith("s3://"):
            parse_s3_uri(location, field="dead_letter")
            fd, self._path = tempfile.mkstemp(prefix="miniviz-dead-letter-", suffix=".csv")
            os.close(fd)
        else:
            self._path = location
            os.makedirs(os.path.dirname(os.path.abspath(location)), exist_ok=True)
        self._fh: io.TextIOWrapper | None = open(self._path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(DEAD_LETTER_COLUMNS)

    def rejected(self, source: str, rejections: Iterable[Rejection]) -> None:
        for r in rejections:
            self._csv.writerow(
                [
                    source,
                    r.row,
                    r.rows,
                    "rejected",
                    r.reason,
                    r.detail,
                    r.label_key or "",
                    "" if r.timestamp is None else r.timestamp,
                    format_ms(r.timestamp),
                    _json(r.data),
                ]
            )
            self.count += 1
        self._fh.flush()

    def failed(self, source: str, event: Event, error: str) -> None:
        self._csv.writerow(
            [
                source,
                event.row,
                1,
                "failed",
                "send_failed",
                error,
                event.label_key,
                event.timestamp,
                format_ms(event.timestamp),
                _json(event.payload),
            ]
        )
        self.count += 1
        self._fh.flush()

    def close(self) -> str:
        if self._fh is None:
            return self.location
        self._fh.close()
        self._fh = None
        if self.location.startswith("s3://"):
            bucket, key = parse_s3_uri(self.location, field="dead_letter")
            try:
                self.s3_client.upload_file(self._path, bucket, key, ExtraArgs={"ContentType": "text/csv"})
            finally:
                os.unlink(self._path)
        return self.location


def _json(data: Any) -> str:
    return orjson.dumps(
        data, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    ).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # e.g. a Parquet list of strings
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


# --- the plan pass: count everything, write dead letters ------------------------------------------------


class Tally:
    """Counts per (file, label) and per rejection reason; bounded by the number of files x labels."""

    FIELDS = (
        "rows",
        "rejected_rows",
        "out_of_range_rows",
        "events",
        "split_rows",
        "already_sent",
        "sent",
        "failed",
    )

    def __init__(self) -> None:
        self.by_label: dict[tuple[str, str], Counter[str]] = {}
        self.reasons: Counter[str] = Counter()
        self.reason_examples: dict[str, tuple[str, int, str]] = {}
        self.file_errors: dict[str, str] = {}
        self.files: list[str] = []

    def cell(self, source: str, label: str | None) -> Counter[str]:
        key = (source, label or "")
        counter = self.by_label.get(key)
        if counter is None:
            counter = self.by_label[key] = Counter()
        return counter

    def add_chunk(self, source: str, result: ChunkResult, fid: str, sent: SentIndex) -> None:
        for label, n in result.rows_by_label.items():
            self.cell(source, label)["rows"] += n
        for label, n in result.out_of_range_by_label.items():
            self.cell(source, label)["out_of_range_rows"] += n
        for r in result.rejections:
            self.cell(source, r.label_key)["rejected_rows"] += r.rows
            self.reasons[r.reason] += r.rows
            self.reason_examples.setdefault(r.reason, (source, r.row, r.detail))
        for e in result.events:
            c = self.cell(source, e.label_key)
            c["events"] += 1
            if e.part == 1:
                c["split_rows"] += 1
            if sent.is_sent(fid, e.seq):
                c["already_sent"] += 1

    def total(self, name: str) -> int:
        return sum(c[name] for c in self.by_label.values())


class ScanProgress:
    """Counters the flow's progress reporter reads while the scan thread and the sender update them."""

    def __init__(self) -> None:
        self.phase = "scanning"
        self.rows_scanned = 0
        self.to_send = 0
        self.sent = 0
        self.failed = 0
        self.send_started: float | None = None


def scan_source(
    files: Sequence[str],
    spec: BackfillSpec,
    chunk_rows: int,
    sent: SentIndex,
    dead_letters: DeadLetterWriter,
    s3_client: Any = None,
    labels: LabelMapper | None = None,
    progress: ScanProgress | None = None,
) -> tuple[Tally, dict[str, dict[str, Any]]]:
    """Transform every file without sending: counts, dead letters, fingerprints. Returns (tally, fingerprints).

    A file that cannot be read (missing column, unknown type, changed since the journal recorded it) is
    listed in ``tally.file_errors`` and skipped; the other files go on.
    """
    tally = Tally()
    labels = labels or LabelMapper()
    fingerprints: dict[str, dict[str, Any]] = {}
    for path in files:
        tally.files.append(path)
        fid = file_id(path)
        try:
            fingerprint = file_fingerprint(path, s3_client)
            known = sent.fingerprints.get(fid)
            if known and known != fingerprint:
                raise InputError(
                    "source",
                    f"{path} changed since the journal recorded it ({known} -> {fingerprint})",
                    "restore it, or use a new journal to send it again",
                )
            fingerprints[path] = fingerprint
            for result in iter_file_results(path, spec, chunk_rows, s3_client, labels):
                tally.add_chunk(path, result, fid, sent)
                dead_letters.rejected(path, result.rejections)
                if progress is not None:
                    progress.rows_scanned += result.rows
        except (InputError, OSError, ValueError, KeyError) as exc:
            tally.file_errors[path] = f"{type(exc).__name__}: {exc}"
            fingerprints.pop(path, None)
    return tally, fingerprints


@task(name="miniviz-backfill-scan", cache_policy=NO_CACHE)
async def scan_backfill(
    files: list[str],
    spec: BackfillSpec,
    chunk_rows: int,
    sent: SentIndex,
    dead_letters: DeadLetterWriter,
    s3_client: Any = None,
    labels: LabelMapper | None = None,
    progress: ScanProgress | None = None,
) -> tuple[Tally, dict[str, dict[str, Any]]]:
    """The plan pass over every input file (in a worker thread): see ``scan_source``."""
    return await asyncio.to_thread(
        scan_source, files, spec, chunk_rows, sent, dead_letters, s3_client, labels, progress
    )


def iter_pending_batches(
    files: Sequence[str],
    spec: BackfillSpec,
    chunk_rows: int,
    sent: SentIndex,
    batch_size: int,
    s3_client: Any = None,
) -> Iterator[tuple[str, list[Event], bool]]:
    """``(path, events, last_batch_of_file)`` for every event the journal does not show as sent, file by file.

    Re-runs the same deterministic transform as the scan, so event numbers match; at most one chunk and one
    batch are in memory. Every file ends with a (possibly empty) batch flagged ``last_batch_of_file``.
    """
    for path in files:
        fid = file_id(path)
        batch: list[Event] = []
        for result in iter_file_results(path, spec, chunk_rows, s3_client):
            for event in result.events:
                if not sent.is_sent(fid, event.seq):
                    batch.append(event)
                    if len(batch) >= batch_size:
                        yield path, batch, False
                        batch = []
        yield path, batch, True


# --- sending --------------------------------------------------------------------------------------------


class FatalSendError(RuntimeError):
    """Sending cannot go on (bad credentials, unknown project, the service keeps failing): the run stops."""


@dataclass
class BatchOutcome:
    sent_by_label: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[Event, str]] = field(default_factory=list)
    outcome_unknown: int = 0

    @property
    def sent(self) -> int:
        return sum(self.sent_by_label.values())


class BackfillSender:
    """Sends events through ONE shared Miniviz client and journals each acknowledgement durably.

    - Pacing is the client's: with a data interval, one request at a time, the next starting one interval
      after the previous finished (never a 429). With interval 0, up to ``max_in_flight`` run concurrently,
      across however many ``send`` calls run at once (the flow overlaps two batches).
    - An event counts as *in flight* from the moment it is sent until its acknowledgement is in the journal
      (fsynced / written to S3), and at most ``max_in_flight`` are in flight at any time. Acknowledgements are
      group-committed by one background committer: while one journal append runs (in a worker thread), the
      events finishing meanwhile wait and go together in the next one, so the number of appends adapts to
      how fast the disk is.
    - So after a crash at any instant, the events Miniviz accepted but the journal does not show are at most
      ``max_in_flight``: those are the only possible duplicates of a re-run. Nothing acknowledged is lost,
      nothing unacknowledged is marked sent.
    - Failed events (after the client's retries) are reported, not journaled: a re-run tries them again.
      ``AuthError``/``NotFoundError`` (wrong token or project) and ``max_consecutive_failures`` failures in a
      row raise ``FatalSendError``: the run stops, resumable.

    Call ``aclose()`` when done (stops the committer).
    """

    def __init__(
        self,
        client: Any,
        journal: Journal,
        max_in_flight: int = 1,
        *,
        max_consecutive_failures: int = 25,
        progress: ScanProgress | None = None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.max_in_flight = max(1, max_in_flight)
        self.max_consecutive_failures = max_consecutive_failures
        self.progress = progress or ScanProgress()
        self.consecutive_failures = 0
        self.in_flight = 0
        self.journal_appends = 0
        self._slots: asyncio.Semaphore | None = None
        self._pending: list[tuple[str, int]] = []
        self._commit_done: asyncio.Future | None = None
        self._wake: asyncio.Event | None = None
        self._committer: asyncio.Task | None = None
        self._closing = False
        self._broken: BaseException | None = None
        self._journal_lock = threading.Lock()

    def record(self, *records: dict[str, Any]) -> None:
        """Append records to the journal durably (blocking: call from a worker thread in async code).

        Serialized: ``Journal`` is not safe for concurrent appends (S3 segment numbers)."""
        with self._journal_lock:
            self.journal.append(*records)
            self.journal_appends += 1

    async def send(self, fid: str, events: Sequence[Event]) -> BatchOutcome:
        """Send ``events`` of file ``fid``; returns once each is acknowledged and journaled, or failed."""
        self._start()
        outcome = BatchOutcome()
        try:
            async with asyncio.TaskGroup() as group:
                for event in events:
                    group.create_task(self._one(fid, event, outcome))
        except BaseExceptionGroup as group_error:
            raise _first_leaf(group_error) from None
        return outcome

    async def aclose(self) -> None:
        """Stop the committer once everything acknowledged is journaled."""
        if self._committer is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await self._committer
        except Exception:
            if self._broken is None:
                raise  # otherwise every waiter already got the journal error
        finally:
            self._committer = None

    def _start(self) -> None:
        if self._committer is not None:
            return
        loop = asyncio.get_running_loop()
        self._slots = self._slots or asyncio.Semaphore(self.max_in_flight)
        self._wake = asyncio.Event()
        self._commit_done = loop.create_future()
        self._closing = False
        self._committer = loop.create_task(self._commit_loop())

    async def _one(self, fid: str, event: Event, outcome: BatchOutcome) -> None:
        async with self._slots:
            self.in_flight += 1
            try:
                try:
                    await self.client.send_data(event.label_key, event.payload, event.timestamp)
                except (AuthError, NotFoundError) as exc:
                    raise FatalSendError(f"Miniviz refused the project or token: {exc}") from None
                except (ApiError, InputError) as exc:
                    self._failed(outcome, event, exc)
                    return
                self.consecutive_failures = 0
                await self._journaled(fid, event.seq)
                outcome.sent_by_label[event.label_key] += 1
                self.progress.sent += 1
            finally:
                self.in_flight -= 1

    def _failed(self, outcome: BatchOutcome, event: Event, exc: Exception) -> None:
        if isinstance(exc, OutcomeUnknownError):
            outcome.outcome_unknown += 1
        outcome.failed.append((event, str(exc)))
        self.progress.failed += 1
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.max_consecutive_failures:
            raise FatalSendError(
                f"{self.consecutive_failures} events failed in a row (last: {exc}); stopping so a later "
                "re-run can resume"
            )

    async def _journaled(self, fid: str, seq: int) -> None:
        """Wait until the acknowledgement of ``seq`` is durably in the journal."""
        if self._broken is not None:
            raise self._broken
        self._pending.append((fid, seq))
        done = self._commit_done
        self._wake.set()
        await asyncio.shield(done)

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                if self._closing:
                    return
                continue
            batch, self._pending = self._pending, []
            done, self._commit_done = self._commit_done, loop.create_future()
            by_file: dict[str, list[int]] = {}
            for fid, seq in batch:
                by_file.setdefault(fid, []).append(seq)
            records = [{"t": "sent", "f": fid, "r": _ranges(seqs)} for fid, seqs in by_file.items()]
            try:
                await asyncio.to_thread(self.record, *records)  # fsync or S3 PUT: off the event loop
            except BaseException as exc:
                self._broken = exc  # no acknowledgement can be made durable any more: everyone fails
                for future in (done, self._commit_done):
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved: no "never retrieved" warning if nobody waits
                raise
            done.set_result(None)
            if self._pending:
                self._wake.set()


def _first_leaf(error: BaseException) -> BaseException:
    """The exception that matters in a (nested) exception group: a FatalSendError if there is one."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(error)
    fatal = [e for e in leaves if isinstance(e, FatalSendError)]
    return (fatal or leaves)[0]


@task(name="miniviz-backfill-send-batch", cache_policy=NO_CACHE)
async def send_backfill_batch(sender: BackfillSender, fid: str, events: list[Event]) -> BatchOutcome:
    """Send one batch of events of one file (paced by the client, journaled per acknowledgement)."""
    return await sender.send(fid, events)


def estimate_seconds(events: int, interval: float) -> float | None:
    """Time ``events`` take at one per ``interval`` seconds (None when there is no rate limit)."""
    return events * interval if interval > 0 else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def monotonic() -> float:
    return time.monotonic()
