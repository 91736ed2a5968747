"""What to read and how rows become events: ``BackfillSpec`` (validated, hashable) and the rejection reasons."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from clients.errors import InputError
from clients.miniviz import check_label_key
from tasks.tables import CsvDialect

EpochUnit = Literal["auto", "s", "ms", "us", "ns"]
Separator = Literal["auto", ",", ";", "tab", "|"]
Decimal = Literal["auto", ".", ","]
ResampleHow = Literal["mean", "median", "min", "max", "sum", "first", "last"]
Oversize = Literal["split", "reject"]

EPOCH_MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}

REASONS: dict[str, str] = {
    "timestamp_missing": "no timestamp",
    "timestamp_invalid": "timestamp is not ISO 8601, YYYYMMDD or an epoch number (or not in timestamp_format)",
    "timestamp_local_time": "naive local time that does not exist or is ambiguous (DST change)",
    "timestamp_out_of_range": "timestamp outside the years 1-9999 (e.g. milliseconds read as seconds)",
    "label_missing": "no label",
    "value_nested": "a metric holds a nested value (list, array, object)",
    "value_not_finite": "a metric is infinite",
    "value_unsupported": "a metric holds a value that is neither text nor a number",
    "value_too_big": "one metric value alone is over 400 bytes as JSON (cannot be split)",
    "no_metrics": "no metric value (all empty)",
    "too_many_metrics": "more than 8 metrics (oversize=reject)",
    "payload_too_big": "payload over 400 bytes as JSON (oversize=reject)",
    "out_of_order": "its resample bucket was already sent (input not in time order)",
    "duplicate": "same label, timestamp and values as an earlier row of the file",
    "bad_line": "the CSV line has more fields than the header (ragged row)",
    "refused_by_service": "Miniviz refused the event as invalid (400): its reason is in the detail",
}
# Row outcomes that are by design: the run still ends Completed. An exact duplicate would be stored twice;
# a row whose every metric is empty is a gap in the measurements (statsmodels' co2 has 59), nothing to send.
# Every other reason is input the user must fix, so it ends the run Failed (tasks/run_state.py).
SKIPPED_REASONS = frozenset({"duplicate", "no_metrics"})


@dataclass(frozen=True)
class BackfillSpec:
    """What to read and how to turn rows into events. ``check()`` validates it; it is hashable."""

    timestamp_column: str = "timestamp"
    epoch_unit: EpochUnit = "auto"
    timestamp_format: str = ""  # strptime codes or ISO8601; empty: automatic (see timestamps.py)
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
    sep: Separator = "auto"  # CSV dialect (see tasks/tables.py CsvDialect)
    encoding: str = "auto"
    decimal: Decimal = "auto"

    def check(self) -> BackfillSpec:
        if not self.timestamp_column:
            raise InputError("timestamp_column", "must be a column name")
        if self.epoch_unit not in ("auto", *EPOCH_MS_PER_UNIT):
            raise InputError("epoch_unit", f"{self.epoch_unit!r}", "auto, s, ms, us or ns")
        if self.timestamp_format and self.timestamp_format != "ISO8601" and "%" not in self.timestamp_format:
            raise InputError(
                "timestamp_format", f"{self.timestamp_format!r} has no % code", "e.g. %b %d %Y, or ISO8601"
            )
        self.dialect()  # checks sep, encoding and decimal
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

    def dialect(self) -> CsvDialect:
        return CsvDialect(sep=self.sep, encoding=self.encoding, decimal=self.decimal).check()

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


def datetime_to_ms(value: dt.datetime | str | None, timezone: str) -> int | None:
    """A time-range bound (a datetime or ISO 8601 text) in UNIX ms; a naive one is read in ``timezone``."""
    if value is None:
        return None
    ts = pd.Timestamp(value.strip() if isinstance(value, str) else value)
    if ts.tzinfo is None:
        ts = ts.tz_localize(timezone)
    return int(ts.tz_convert("UTC").value // 1_000_000)
