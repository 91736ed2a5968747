"""The dead-letter CSV: rejected rows and failed events, streamed with their reason."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from tasks.state import Location
from tasks.storage import parse_s3_uri

from .spec import SKIPPED_REASONS
from .timestamps import format_ms
from .transform import Event, Rejection

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
    """Streams rejected rows and failed events to a CSV file (a ``tasks.state.Location``, published on close).

    One line per rejected row or bucket (``status=rejected``, the source row as JSON in ``data``; an exact
    duplicate is ``skipped``), per event Miniviz refused as invalid (``rejected``, ``refused_by_service``, its
    reason in ``detail``) and per event that failed to send (``status=failed``: a re-run sends it again).
    Nothing is kept in memory.
    """

    def __init__(self, location: str, s3_client: Any = None) -> None:
        self.location = location
        self.count = 0
        self._file = contextlib.ExitStack()  # written whole on close: a re-run never leaves half a file
        binary = self._file.enter_context(
            Location(location, s3_client, field="dead_letter").writer("text/csv")
        )
        self._fh: io.TextIOWrapper | None = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(DEAD_LETTER_COLUMNS)

    def rejected(self, source: str, rejections: Iterable[Rejection]) -> None:
        for r in rejections:
            self._csv.writerow(
                [
                    source,
                    r.row,
                    r.rows,
                    "skipped" if r.reason in SKIPPED_REASONS else "rejected",
                    r.reason,
                    r.detail,
                    r.label_key or "",
                    "" if r.timestamp is None else r.timestamp,
                    format_ms(r.timestamp),
                    _json(r.data),
                ]
            )
            self.count += 1

    def failed(self, source: str, event: Event, error: str, refused: bool = False) -> None:
        """An event that failed to send, or that Miniviz ``refused`` as invalid (its reason in ``error``)."""
        self._csv.writerow(
            [
                source,
                event.row,
                1,
                "rejected" if refused else "failed",
                "refused_by_service" if refused else "send_failed",
                error,
                event.label_key,
                event.timestamp,
                format_ms(event.timestamp),
                _json(event.payload),
            ]
        )
        self.count += 1

    def append_file(self, location: str, s3_client: Any, rows: int) -> None:
        """Copy in another dead-letter file (a shard's) as it is, after its header line: ``rows`` lines."""
        if not rows or self._fh is None:
            return
        self._fh.flush()
        with _open_binary(location, s3_client) as source:
            source.readline()  # the header: this file has its own
            shutil.copyfileobj(source, self._fh.buffer, 1 << 20)
        self.count += rows

    def close(self) -> str:
        if self._fh is not None:
            self._fh.flush()
            self._fh.detach()  # the binary file is closed by the writer, after it is durable
            self._fh = None
            self._file.close()
        return self.location


def _open_binary(location: str, s3_client: Any) -> Any:
    """A local file, or an S3 object's body read as it arrives."""
    if not location.startswith("s3://"):
        return open(location, "rb")  # noqa: SIM115 - the caller closes it
    bucket, key = parse_s3_uri(location, field="dead_letter")
    return io.BufferedReader(s3_client.get_object(Bucket=bucket, Key=key)["Body"], buffer_size=1 << 20)


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
