"""The backfill flow's parameters, grouped for the Prefect UI (each model renders as one section)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.state import state_root_field

from .spec import (
    BackfillSpec,
    Decimal,
    EpochUnit,
    Oversize,
    ResampleHow,
    Separator,
    datetime_to_ms,
    resample_milliseconds,
)


class CsvOptions(BaseModel):
    """How CSV files are read (Parquet and JSON Lines carry their own types)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    sep: Separator = "auto"
    """Column separator. auto: detected from the start of each file (a comma when it cannot tell)."""
    encoding: str = "auto"
    """Text encoding, e.g. utf-8, latin-1, cp1252. auto: UTF-8, or Windows-1252 when the start of the file is
    not UTF-8; the report says which was used."""
    decimal: Decimal = "auto"
    """Decimal mark of numbers. auto: a comma when the separator is a semicolon (12,8), else a point."""


class TimestampOptions(BaseModel):
    """Which column holds the time of each row, and how to read it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    column: str = Field("timestamp", min_length=1)
    """Column holding the time of each row."""
    timestamp_format: str = ""
    """strptime codes of text dates, e.g. %b %d %Y for Jan 1 2000, %d/%m/%Y %H:%M, %Y%m%d, or ISO8601. Empty:
    automatic (ISO 8601 text, YYYYMMDD integers such as 19580329, or epoch numbers)."""
    epoch_unit: EpochUnit = "auto"
    """Unit of bare epoch numbers. auto: read from each value's size (right for seconds, and for milliseconds
    after 1973); give the unit for milliseconds near 1970. Setting it also turns off the YYYYMMDD reading."""
    timezone: str = "UTC"
    """Time zone of times without an offset, e.g. Europe/Paris (IANA name)."""
    start: str = ""
    """Send only rows at or after this time, ISO 8601 (1990-01-01 or 1990-01-01T06:00+01:00; without an
    offset: in the time zone above). Empty: from the first row."""
    end: str = ""
    """Send only rows before this time, ISO 8601 like start. Empty: to the last row."""

    @field_validator("start", "end", mode="before")
    @classmethod
    def _iso_text(cls, value: Any) -> Any:
        """A datetime from Python callers becomes its ISO text; text must parse as a time."""
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        if isinstance(value, str) and value.strip():
            try:
                pd.Timestamp(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO 8601 date or time") from None
        return value


class EventOptions(BaseModel):
    """What each row becomes: its label, its metrics, and how rows are aggregated or split."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    label_column: str = "label_key"
    """Column naming the device or place of each row (mapped into Miniviz's characters)."""
    label_key: str = ""
    """One fixed label for every row, instead of the label column. Empty: use the label column."""
    metrics: list[str] = Field(default_factory=list)
    """Columns to send as payload keys. Empty: every column but the time and the label."""
    rename: dict[str, str] = Field(default_factory=dict)
    """Payload key of a column, e.g. temp_c: temperature."""
    resample: str = ""
    """Aggregate each label's rows into fixed buckets, e.g. 15min or 1h, so a backfill fits the rate limit.
    Empty: send every row."""
    resample_how: ResampleHow = "mean"
    """Aggregation of numeric metrics in a bucket (text takes the last value)."""
    oversize: Oversize = "split"
    """Rows over 8 metrics or 400 bytes: split into several events (same label and time), or reject them to
    the dead-letter file."""


class PacingOptions(BaseModel):
    """How fast events are sent, and how much is read and sent at a time."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    data_interval_seconds: float = Field(-1, ge=-1, le=86400)
    """Seconds between events, 0 to 86400. -1: the block's setting, or the plan's documented interval (Pro 15
    s, Free 60 s). 0: no rate limit (self-hosted endpoint, emulator)."""
    concurrency: int = Field(16, ge=1, le=256)
    """Events in flight at once when there is no rate limit, 1 to 256 (paced runs send one at a time); also
    the most events a crash can make a re-run send twice."""
    parallel_connections: int = Field(0, ge=0, le=32)
    """Connections per host in units of 16, each carrying one request at a time, up to 32. 0: the block's
    setting, or more if concurrency needs them."""
    batch_size: int = Field(1000, ge=1, le=100000)
    """Events per send task run."""
    chunk_rows: int = Field(20000, ge=100, le=1000000)
    """Rows read and transformed at a time (memory), 100 to 1000000; part of the resume key when resampling."""


class OutputOptions(BaseModel):
    """Where progress, the report and the rejected rows go (local paths or s3://)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    journal: str = ""
    """Where progress is journaled, a file or an s3://bucket/prefix/. Empty: a file under the state root's
    miniviz-backfill/ folder, named after the source, project and transform."""
    report: str = ""
    """Report per file and label, .csv or .parquet. Empty: reports/miniviz-backfill-{UTC time}.csv (under the state
    root, if set)."""
    dead_letter: str = ""
    """CSV of rejected rows and failed events with the reason. Empty: next to the report, ending in
    -dead-letter.csv."""
    state_root: str = state_root_field()


def build_spec(csv: CsvOptions, timestamps: TimestampOptions, events: EventOptions) -> BackfillSpec:
    """The validated transform spec of the three groups (``InputError`` names the parameter at fault)."""
    label_key = events.label_key or None
    spec = BackfillSpec(
        timestamp_column=timestamps.column,
        epoch_unit=timestamps.epoch_unit,
        timestamp_format=timestamps.timestamp_format,
        timezone=timestamps.timezone,
        label_column=events.label_column if label_key is None else None,
        label_key=label_key,
        metrics=tuple(events.metrics) if events.metrics else None,
        rename=tuple(sorted(events.rename.items())),
        oversize=events.oversize,
        resample_ms=resample_milliseconds(events.resample),
        resample_how=events.resample_how,
        sep=csv.sep,
        encoding=csv.encoding,
        decimal=csv.decimal,
    ).check()  # the time zone first: the time range needs it
    return BackfillSpec(
        **{
            **spec.__dict__,
            "start_ms": datetime_to_ms(timestamps.start or None, timestamps.timezone),
            "end_ms": datetime_to_ms(timestamps.end or None, timestamps.timezone),
        }
    ).check()
