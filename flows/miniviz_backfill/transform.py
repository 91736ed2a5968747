"""The per-file transform: rows -> events (numbered ``seq`` 0, 1, 2... per file) or rejections.

The transform is pure and deterministic: the same file, read with the same parameters, always yields the same
events in the same order, numbered ``seq`` 0, 1, 2... per file. That is what makes resuming exact (see
``SentIndex`` and ``tasks.miniviz.MinivizDataSender``). Rules, applied chunk by chunk in constant memory:

- **timestamp** -> UNIX ms (``timestamps.py``): ISO 8601 strings (with an offset, or naive and read in
  ``timezone``), YYYYMMDD integers, epoch numbers in ``epoch_unit`` (``auto``: by magnitude), text in a
  ``timestamp_format`` ("%b %d %Y"), or datetime columns (Parquet). Any date of the years 1-9999 is sent
  (Miniviz takes any integer of ms; before 1970 negative). Naive local times that do not exist or are
  ambiguous at a DST change are rejected (never moved silently).
- **ragged CSV lines** (more fields than the header) are rejected as ``bad_line`` with their line number.
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

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
import pandas as pd

from clients.errors import InputError
from clients.miniviz import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_KEYS
from tasks.tables import check_columns, iter_table_chunks, table_format

from .labels import LabelMapper
from .spec import REASONS, BackfillSpec
from .timestamps import format_ms, to_unix_ms
from .values import (
    MAX_JSON_NUMBER,
    clean_metric,
    fits,
    item_bytes,
    object_value,
    short_repr,
    split_payload,
    value_bound,
)


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


class SeenRows:
    """8-byte digests of the rows kept so far in one file, so that an exact repeat (same label, timestamp and
    values) is rejected as ``duplicate`` instead of stored twice by Miniviz.

    A sorted numpy array: 8 bytes a row (40 MB for 5M rows) where a Python set would take ten times that; each
    chunk is merged in place in linear time (a stable sort of two sorted runs). A 64-bit digest collision (about 1 in
    10^6 for a 5M-row file) rejects a row as a duplicate: visible in the dead letters, never lost silently.
    """

    def __init__(self) -> None:
        self._digests = np.empty(0, dtype=np.uint64)  # sorted up to _count, then room to grow
        self._count = 0

    def repeats(
        self, labels: np.ndarray, ts: np.ndarray, columns: list[list[Any]], at: np.ndarray
    ) -> np.ndarray:
        """For the rows at positions ``at``: True where the row was seen before (earlier in this chunk too)."""
        if not len(at):
            return np.zeros(0, dtype=bool)
        stamps, names = ts.tolist(), labels.tolist()
        digests = np.fromiter(
            (
                int.from_bytes(
                    hashlib.blake2b(
                        orjson.dumps([names[i], stamps[i], *(col[i] for col in columns)]), digest_size=8
                    ).digest()
                )
                for i in at.tolist()
            ),
            dtype=np.uint64,
            count=len(at),
        )
        unique, first = np.unique(digests, return_index=True)
        repeat = np.ones(len(at), dtype=bool)
        repeat[first] = False
        if self._count:
            seen = self._digests[: self._count]
            repeat |= seen[np.minimum(np.searchsorted(seen, digests), self._count - 1)] == digests
            del seen  # a view: the array may move below
        self._add(unique)
        return repeat

    def _add(self, unique: np.ndarray) -> None:
        """Merge sorted ``unique`` in place. Growing by an eighth through ``realloc`` (a large block is remapped,
        not copied) keeps one array resident, where concatenating held the old and the new one at once."""
        need = self._count + len(unique)
        if need > len(self._digests):
            self._digests.resize(max(need + need // 8, 4096), refcheck=False)
        self._digests[self._count : need] = unique
        self._digests[:need].sort(kind="stable")  # two sorted runs: one linear merge
        self._count = need


class FileTransform:
    """Turns the chunks of ONE file, fed in order, into events and rejections; call ``finish()`` at the end.

    State between chunks: the row offset, the next ``seq``, and when resampling the held-back last bucket of
    every label plus the last bucket emitted per label. Memory is one chunk plus that carry.
    """

    def __init__(self, spec: BackfillSpec, labels: LabelMapper | None = None, csv: bool = False) -> None:
        self.spec = spec
        self.csv = csv  # text cells may hold numbers (see ``csv_text_value``)
        self.decimal = "."  # the CSV file's decimal mark, from the first chunk
        self.labels = labels or LabelMapper()
        self.row_offset = 0
        self.next_seq = 0
        self._metrics: list[str] | None = None
        self._keys: list[str] | None = None
        self._carry: pd.DataFrame | None = None
        self._emitted: dict[str, int] = {}
        self._numeric: dict[str, bool] = {}
        self._seen = SeenRows()

    # -- setup from the first chunk
    def _setup(self, columns: Sequence[str]) -> None:
        spec = self.spec
        check_columns(
            columns,
            [spec.timestamp_column] + ([spec.label_column] if spec.uses_label_column else []),
            "the file",
        )
        metrics = spec.metric_columns(columns)
        check_columns(columns, metrics, "the file", field="metrics")
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
            if "csv" in df.attrs:
                self.decimal = df.attrs["csv"].decimal
        spec = self.spec
        n = len(df)
        first_row = self.row_offset
        self.row_offset += n
        out = ChunkResult(rows=n)
        self._bad_lines_into(out, df.attrs.get("bad_lines", ()))
        if n == 0:
            return out
        df = df.reset_index(drop=True)
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        ts, codes = to_unix_ms(
            df[spec.timestamp_column], spec.epoch_unit, spec.timezone, spec.timestamp_format
        )
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
            values, reasons = clean_metric(df[column], self.csv, self.decimal)
            columns.append(values)
            numeric = pd.api.types.is_numeric_dtype(df[column].dtype)  # bool, int, float
            bounds.append(MAX_JSON_NUMBER if numeric else None)
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
        candidates = np.flatnonzero(ok)
        repeats = candidates[self._seen.repeats(labels, ts, columns, candidates)]
        codes[repeats] = "duplicate"
        ok[repeats] = False
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
    @staticmethod
    def _bad_lines_into(out: ChunkResult, bad_lines: Sequence[tuple[int, str]]) -> None:
        """Ragged CSV lines pandas skipped: rows read and rejected, with the line number (``row`` is the line
        number minus the header line, 0-based like the other rows of a file whose rows hold no line break)."""
        for line, message in bad_lines:
            detail = f"{REASONS['bad_line']}: {message}"
            out.rejections.append(Rejection(line - 2, "bad_line", detail, {"line": line}))
        out.rows += len(bad_lines)
        if bad_lines:
            out.rows_by_label[""] += len(bad_lines)

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
            if code == "timestamp_invalid" and spec.timestamp_format:
                return f"does not match timestamp_format {spec.timestamp_format!r}: {spec.timestamp_column}={short_repr(raw)}"
            return f"{REASONS[code]}: {spec.timestamp_column}={short_repr(raw)}{where}"
        if code == "label_missing":
            return f"{REASONS[code]}: {spec.label_column} is empty"
        if code.startswith("value_"):
            for column in self._metrics:
                _, reason = object_value(df[column].iat[pos])
                if reason == code:
                    raw = df[column].iat[pos]
                    return f"{REASONS[code]}: {column}={short_repr(raw)} ({type(raw).__name__})"
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
            bound += len(orjson.dumps(key)) + 1 + (known if known is not None else value_bound(values))
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
            if not check or (len(payload) <= MAX_PAYLOAD_KEYS and fits(payload)):
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
                big = max(payload, key=lambda k: item_bytes(k, payload[k]))
                detail = f"{REASONS[parts]}: {big} is {item_bytes(big, payload[big]) + 2} bytes"
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
    path: str,
    spec: BackfillSpec,
    chunk_rows: int,
    s3_client: Any = None,
    labels: LabelMapper | None = None,
    *,
    report_bad_lines: bool = True,
    read_as: dict[str, str] | None = None,
) -> Iterator[ChunkResult]:
    """The transform of one file, chunk by chunk (the last result flushes the resample carry).

    ``report_bad_lines``: ragged CSV lines become rejections (the plan pass); else they are skipped the same
    way (the send pass: the same events, numbered alike). ``read_as`` receives how a CSV file was read
    (separator, encoding, decimal mark; what was detected) under the file's path."""
    transform = FileTransform(spec, labels, csv=table_format(path)[0] == "csv")
    dialect = replace(spec.dialect(), bad_lines="report" if report_bad_lines else "skip")
    for chunk in iter_table_chunks(
        path, chunksize=chunk_rows, columns=spec.read_columns(), s3_client=s3_client, csv_dialect=dialect
    ):
        if read_as is not None and path not in read_as and "csv" in chunk.attrs:
            read_as[path] = chunk.attrs["csv"].describe(chunk.attrs["csv_asked"])
        yield transform.feed(chunk)
    yield transform.finish()
