"""Table helpers (pandas, pyarrow): read CSV, Parquet and JSON Lines in constant-memory chunks, write reports.

A source is a local file or directory, a glob (``data/*.csv``, ``data/**/*.parquet``), ``s3://bucket/key``,
``s3://bucket/prefix/`` (trailing slash) or an S3 glob (``s3://bucket/in/*.csv.gz``). The type comes from the
extension: ``.csv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson``, CSV and JSON Lines optionally ``.gz``.

Memory stays bounded whatever the file size: CSV and JSON Lines are parsed from a stream ``chunksize`` rows at
a time, Parquet is read batch by batch (at most one row group in memory), and S3 objects are streamed (CSV,
JSON Lines) or read with ranged GETs (Parquet), never downloaded whole.

S3 access goes through an explicit boto3 client, an ``S3Bucket`` or ``AwsCredentials`` block (so the endpoint
URL can point at the local emulator), or s3fs-style ``storage_options``; with none, boto3's default chain.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import glob
import gzip
import io
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pyarrow.parquet as pq
from pandas.errors import ParserWarning
from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.errors import InputError
from clients.redaction import error_text

from .state import Location
from .storage import BucketRef, list_keys, not_found_as_error, parse_s3_uri, resolve_s3_client

_SUFFIXES = (
    (".csv", "csv"),
    (".parquet", "parquet"),
    (".pq", "parquet"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
)
_KNOWN = ".csv, .csv.gz, .parquet, .pq, .jsonl, .ndjson, .jsonl.gz, .ndjson.gz"
_WILDCARDS = set("*?[")
_CONTENT_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/x-ndjson",
}
_STORAGE_OPTION_NAMES = {
    "key": "aws_access_key_id",
    "secret": "aws_secret_access_key",
    "token": "aws_session_token",
    "endpoint_url": "endpoint_url",
    "region_name": "region_name",
}


def table_format(name: str, *, field: str = "source") -> tuple[str, bool]:
    """``(kind, gzipped)`` for a file name, kind being "csv", "parquet" or "jsonl"; ``InputError`` if unknown."""
    lower = name.lower()
    gzipped = lower.endswith(".gz")
    base = lower[:-3] if gzipped else lower
    for suffix, kind in _SUFFIXES:
        if base.endswith(suffix) and not (gzipped and kind == "parquet"):
            return kind, gzipped
    raise InputError(field, f"unknown table type {os.path.basename(name) or name!r}", f"one of {_KNOWN}")


def _is_table(name: str) -> bool:
    try:
        table_format(name)
    except InputError:
        return False
    return not os.path.basename(name).startswith(".")  # hidden files, e.g. our own temp files


def _s3(s3_client: Any, storage_options: dict[str, Any] | None) -> Any:
    """A boto3 S3 client: the one given, or built from s3fs-style storage_options (key, secret, endpoint_url...)."""
    if s3_client is not None:
        return resolve_s3_client(s3_client)
    options = dict(storage_options or {})
    kwargs = dict(options.pop("client_kwargs", None) or {})
    for name, boto_name in _STORAGE_OPTION_NAMES.items():
        if name in options:
            kwargs.setdefault(boto_name, options.pop(name))
    if options:
        raise InputError(
            "storage_options",
            f"unsupported keys {sorted(options)}",
            f"{', '.join(_STORAGE_OPTION_NAMES)}, client_kwargs",
        )
    return boto3.client("s3", **kwargs)


def _match(pattern: list[str], parts: list[str]) -> bool:
    """Glob match segment by segment: ``*`` stays inside one segment, ``**`` spans any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _match(pattern[1:], parts[1:])


def list_sources(
    source: str, s3_client: Any = None, *, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Expand ``source`` to the files it names, in sorted order.

    A plain path or S3 key is returned as is (its type is checked when read). A glob returns every match;
    a directory or an S3 prefix (trailing ``/``) returns the table files under it, recursively, leaving out
    other files (``_SUCCESS`` markers, hidden files). A glob or prefix that matches nothing gives ``[]``.
    """
    if source.startswith("s3://"):
        bucket, key = parse_s3_uri(source, field="source", require_key=False)
        wildcard = next((i for i, ch in enumerate(key) if ch in _WILDCARDS), None)
        if wildcard is None and key and not key.endswith("/"):
            return [source]
        client = _s3(s3_client, storage_options)
        listed_prefix = key if wildcard is None else key[: key.rfind("/", 0, wildcard) + 1]
        keys = list_keys(BucketRef(client, bucket), listed_prefix)
        if wildcard is None:
            keys = [k for k in keys if _is_table(k)]
        else:
            keys = [k for k in keys if _match(key.split("/"), k.split("/"))]
        return sorted(f"s3://{bucket}/{k}" for k in keys)
    if any(ch in _WILDCARDS for ch in source):
        return sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
    if os.path.isdir(source):
        return sorted(str(p) for p in Path(source).rglob("*") if p.is_file() and _is_table(p.name))
    return [source]


class _S3RangeReader(io.RawIOBase):
    """Seekable, read-only view of one S3 object: each read is a ranged GET, pinned to the object's ETag
    so an overwrite during the read fails loudly instead of mixing two versions."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        with not_found_as_error("head_object", bucket, key):
            head = client.head_object(Bucket=bucket, Key=key)
        self._size, self._etag, self._pos = head["ContentLength"], head["ETag"], 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._client.get_object(
            Bucket=self._bucket,
            Key=self._key,
            IfMatch=self._etag,
            Range=f"bytes={self._pos}-{self._pos + n - 1}",
        )["Body"].read()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _open_binary(src: str, client: Any) -> io.BufferedIOBase:
    """A streaming binary handle: a local file, or the body of an S3 GET read as it arrives."""
    if not src.startswith("s3://"):
        return open(src, "rb")
    bucket, key = parse_s3_uri(src, field="source")
    with not_found_as_error("get_object", bucket, key):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    return io.BufferedReader(body, buffer_size=1 << 20)


# --- CSV dialect: separator, encoding, decimal mark, detected from the start of each file when "auto" -------

SAMPLE_BYTES = 1 << 16
_SEPARATORS = {",": ",", ";": ";", "tab": "\t", "\t": "\t", "|": "|"}
_SNIFFED = ",;\t|"
_FALLBACK_ENCODING = "cp1252"  # Windows-1252: what spreadsheets on Windows export; latin-1 plus € and quotes
_BAD_LINE_RE = re.compile(r"line (\d+)")


@dataclass(frozen=True)
class CsvDialect:
    """How CSV text is read. Each ``"auto"`` is decided per file from its first 64 KiB:

    - ``sep`` (",", ";", "tab", "|"): Python's csv sniffer over those four; "," when it cannot tell (one column).
    - ``encoding`` (any Python codec name): UTF-8 (a BOM is dropped) when the sample decodes as UTF-8,
      otherwise Windows-1252 (cp1252, a superset of latin-1's letters). A file holding NUL bytes is binary,
      not text. A byte that does not decode later in the file fails the file, naming the encoding to set.
    - ``decimal`` ("." or ","): "," when the separator is ";" (the European spreadsheet export, "12,8"),
      else ".".

    ``bad_lines="report"`` skips lines with more fields than the header and lists them in each chunk's
    ``attrs["bad_lines"]`` as ``(line number, message)``; ``"skip"`` skips them silently (a second pass over
    a file already reported); ``"error"`` (the default) fails the file.
    The default dialect is plain RFC 4180: ",", UTF-8, ".".
    """

    sep: str = ","
    encoding: str = "utf-8"
    decimal: str = "."
    bad_lines: str = "error"

    def check(self) -> CsvDialect:
        if self.sep != "auto" and self.sep not in _SEPARATORS:
            raise InputError("sep", f"{self.sep!r}", 'auto, ",", ";", tab or "|"')
        if self.decimal not in ("auto", ".", ","):
            raise InputError("decimal", f"{self.decimal!r}", 'auto, "." or ","')
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise InputError(
                    "encoding", f"unknown encoding {self.encoding!r}", "e.g. utf-8, latin-1"
                ) from None
        if self.bad_lines not in ("error", "report", "skip"):
            raise InputError("bad_lines", f"{self.bad_lines!r}", "error, report or skip")
        return self

    def resolve(self, sample: bytes, src: str) -> CsvDialect:
        """This dialect with every ``auto`` decided from ``sample``, the first bytes of ``src``."""
        encoding = self.encoding if self.encoding != "auto" else _detect_encoding(sample, src)
        sep = _SEPARATORS[self.sep] if self.sep != "auto" else _sniff_separator(sample, encoding)
        decimal = self.decimal if self.decimal != "auto" else "," if sep == ";" else "."
        if decimal == sep:
            raise InputError("decimal", f"{decimal!r} is also the separator", "set sep or decimal")
        return replace(self, sep=sep, encoding=encoding, decimal=decimal)

    def describe(self, asked: CsvDialect | None = None) -> str:
        """``sep ';' (detected), encoding cp1252 (detected), decimal ','`` for reports and logs."""
        parts = []
        for name in ("sep", "encoding", "decimal"):
            value = getattr(self, name)
            shown = "tab" if value == "\t" else value
            detected = asked is not None and getattr(asked, name) == "auto"
            parts.append(f"{name} {shown!r}" + (" (detected)" if detected else ""))
        return ", ".join(parts)


def _detect_encoding(sample: bytes, src: str) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in sample:
        raise InputError("source", f"{src} cannot be read as CSV: it holds NUL bytes (binary, not text)")
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut_inside_a_character = len(sample) == SAMPLE_BYTES and exc.start >= len(sample) - 3
        if not cut_inside_a_character:
            try:
                sample.decode(_FALLBACK_ENCODING)
            except UnicodeDecodeError:
                raise InputError(
                    "source",
                    f"{src} cannot be read as CSV: neither UTF-8 nor Windows-1252 text",
                    "set encoding",
                ) from None
            return _FALLBACK_ENCODING
    return "utf-8"


def _sniff_separator(sample: bytes, encoding: str) -> str:
    text = sample.decode(encoding, errors="replace")
    lines = text.splitlines()[:50]
    if len(sample) == SAMPLE_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=_SNIFFED).delimiter
    except csv.Error:
        return ","  # one column, or nothing to tell by


def _header(sample: bytes, dialect: CsvDialect) -> list[str]:
    """Column names from the first line of the sample (for messages: the columns a file really has)."""
    text = sample.decode(dialect.encoding, errors="replace").lstrip("\ufeff")
    first = next(csv.reader(io.StringIO(text), delimiter=dialect.sep), [])
    return first


class _Replay(io.RawIOBase):
    """The bytes already read from a stream (the sniffing sample), then the rest of the stream."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head, self._rest = memoryview(head), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def check_columns(
    available: Sequence[str],
    columns: Sequence[str],
    src: str,
    header: Sequence[str] | None = None,
    *,
    field: str = "columns",
) -> None:
    """``InputError`` naming the missing columns and every column the file has (``header`` when the columns
    read are only a selection of them)."""
    missing = [c for c in columns if c not in available]
    if missing:
        available = header if header is not None else available
        hint = f"available: {list(available)}"
        if any(ch in name for name in available for ch in ";\t|"):
            hint += "; the header holds a separator: set sep"
        raise InputError(field, f"{missing} not in {src}", hint)


def _select(
    chunk: pd.DataFrame, columns: Sequence[str] | None, src: str, header: Sequence[str] | None = None
) -> pd.DataFrame:
    if columns is None:
        return chunk
    check_columns(list(chunk.columns), columns, src, header)
    return chunk[list(columns)]


# What a file that is not the table its name says raises while it is parsed (truncated gzip, wrong encoding,
# a malformed CSV line, a Parquet file without its footer, JSON that is not JSON). Network and S3 errors are
# not among them: those may be transient and keep their own types.
_UNREADABLE = (EOFError, zlib.error, gzip.BadGzipFile, ValueError)
_KIND_NAMES = {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON Lines"}


def _read_file(
    src: str, client: Any, chunksize: int, columns: Sequence[str] | None, dialect: CsvDialect
) -> Iterator[pd.DataFrame]:
    """The chunks of one file; content that cannot be parsed raises ``InputError`` naming the file and why."""
    kind, gzipped = table_format(src)
    try:
        yield from _parse_file(src, client, chunksize, columns, kind, gzipped, dialect)
    except InputError:
        raise
    except _UNREADABLE as exc:
        what = ("gzipped " if gzipped else "") + _KIND_NAMES[kind]
        detail = " ".join(error_text(exc).split())  # parser messages may span lines
        hint = " (set encoding, e.g. latin-1)" if isinstance(exc, UnicodeDecodeError) else ""
        raise InputError("source", f"{src} cannot be read as {what}: {detail[:300]}{hint}") from None


def _csv_chunks(
    stream: Any, src: str, chunksize: int, columns: Sequence[str] | None, asked: CsvDialect
) -> Iterator[pd.DataFrame]:
    """CSV chunks in the dialect decided from the first bytes; ``attrs["csv"]`` is that dialect, and with
    ``bad_lines="report"`` ``attrs["bad_lines"]`` the skipped lines read with the chunk."""
    sample = stream.read(SAMPLE_BYTES)
    dialect = asked.resolve(sample, src)
    header = _header(sample, dialect) if sample else None
    # usecols as a predicate keeps memory low; missing columns are reported by _select below
    wanted = set(columns) if columns is not None else None
    reader = pd.read_csv(
        io.BufferedReader(_Replay(sample, stream), buffer_size=1 << 20),
        chunksize=chunksize,
        usecols=(lambda c: c in wanted) if wanted else None,
        sep=dialect.sep,
        encoding=dialect.encoding,
        decimal=dialect.decimal,
        on_bad_lines={"report": "warn"}.get(dialect.bad_lines, dialect.bad_lines),
    )
    with reader:
        last: pd.DataFrame | None = None
        while True:
            if dialect.bad_lines == "report":
                # pandas reports skipped lines as warnings only (a callable needs its slow python engine)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ParserWarning)
                    chunk = next(reader, None)
                bad = _bad_lines(caught)
            else:
                chunk, bad = next(reader, None), []
            final = chunk is None
            if final:
                if not bad:
                    return
                # bad lines after the last good row: an empty chunk carries them
                chunk = last.iloc[0:0] if last is not None else pd.DataFrame(columns=header or [])
            chunk = _select(chunk, columns, src, header)
            chunk.attrs.update(csv=dialect, csv_asked=asked)
            if bad:
                chunk.attrs["bad_lines"] = bad
            yield chunk
            if final:
                return
            last = chunk


def _bad_lines(caught: list[warnings.WarningMessage]) -> list[tuple[int, str]]:
    """The lines pandas skipped (``Skipping line 7: expected 3 fields, saw 5``); other warnings go on."""
    bad = []
    for w in caught:
        text = str(w.message).strip()
        match = _BAD_LINE_RE.search(text) if issubclass(w.category, ParserWarning) else None
        if match:
            for line in text.splitlines():  # one warning may list several lines
                found = _BAD_LINE_RE.search(line)
                if found:
                    bad.append((int(found.group(1)), line.removeprefix("Skipping ").strip()))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return bad


def _parse_file(
    src: str,
    client: Any,
    chunksize: int,
    columns: Sequence[str] | None,
    kind: str,
    gzipped: bool,
    dialect: CsvDialect,
) -> Iterator[pd.DataFrame]:
    if kind == "parquet":
        with contextlib.ExitStack() as stack:
            handle: Any = src
            if src.startswith("s3://"):
                # unbuffered on purpose: pyarrow asks for whole column chunks, so each read is exactly one
                # ranged GET of the columns wanted; a read buffer would drag in the columns in between
                handle = stack.enter_context(_S3RangeReader(client, *parse_s3_uri(src, field="source")))
            # pre_buffer=False: pyarrow would otherwise fetch every row group up front (memory ~ file size)
            parquet = stack.enter_context(pq.ParquetFile(handle, pre_buffer=False))
            if columns is not None:
                check_columns(parquet.schema_arrow.names, columns, src)  # fail before reading any data
            for batch in parquet.iter_batches(
                batch_size=chunksize, columns=list(columns) if columns else None
            ):
                yield batch.to_pandas()
        return
    with contextlib.ExitStack() as stack:
        stream: Any = stack.enter_context(_open_binary(src, client))
        if gzipped:
            stream = stack.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))
        if kind == "csv":
            yield from _csv_chunks(stream, src, chunksize, columns, dialect)
            return
        reader = pd.read_json(stream, lines=True, chunksize=chunksize)
        with reader:
            for chunk in reader:
                yield _select(chunk, columns, src)


def iter_table_chunks(
    source: str,
    *,
    chunksize: int = 50_000,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    s3_client: Any = None,
    csv_dialect: CsvDialect | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield DataFrames of ``chunksize`` rows (the last chunk of each file may be shorter), file by file.

    Files come from ``list_sources(source)`` in sorted order; each chunk's ``attrs["source"]`` names its file.
    ``columns`` selects and orders columns (``InputError`` if one is missing). ``s3_client`` is a boto3 S3
    client or an ``S3Bucket``/``AwsCredentials`` block; ``storage_options`` (s3fs-style: key, secret, token,
    endpoint_url, region_name, client_kwargs) builds one instead. A file whose content cannot be parsed as
    its type (a malformed CSV line, a truncated gzip, a Parquet file without its footer) raises ``InputError``
    naming it. CSV dtypes are inferred per chunk, so a column can change dtype between chunks; cast where it
    matters. ``csv_dialect`` says how CSV text is read (separator, encoding, decimal mark, ragged lines; see
    ``CsvDialect``); CSV chunks carry the dialect used in ``attrs["csv"]``.

    Example:
        for chunk in iter_table_chunks("s3://demo-bucket/measurements/", s3_client=bucket_block):
            backfill(chunk)
    """
    if chunksize < 1:
        raise InputError("chunksize", f"{chunksize}", "at least 1")
    dialect = (csv_dialect or CsvDialect()).check()
    client = None
    for src in list_sources(source, s3_client, storage_options=storage_options):
        if src.startswith("s3://") and client is None:
            client = _s3(s3_client, storage_options)
        for chunk in _read_file(src, client, chunksize, columns, dialect):
            chunk.attrs["source"] = src
            yield chunk


def _serialize(df: pd.DataFrame, kind: str, gzipped: bool, fh: Any) -> None:
    with contextlib.ExitStack() as stack:
        if gzipped:
            fh = stack.enter_context(gzip.GzipFile(fileobj=fh, mode="wb", mtime=0))
        if kind == "parquet":
            df.to_parquet(fh, index=False)
        elif kind == "csv":
            # CRLF rows (RFC 4180): the csv writer quotes a field only if it holds a character of the line
            # terminator, so with "\n" a lone "\r" in a value (a file name, a device name) went out unquoted
            # and every reader split the row there
            df.to_csv(fh, index=False, lineterminator="\r\n")
        else:
            df.to_json(fh, orient="records", lines=True, date_format="iso")


def write_table(
    df: pd.DataFrame,
    destination: str,
    s3_client: Any = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write ``df`` (without its index) as CSV, Parquet or JSON Lines by extension; return ``destination``.

    Written whole (``tasks.state.Location``): readers never see half a report. Parent directories are created.
    """
    kind, gzipped = table_format(destination, field="destination")
    client = _s3(s3_client, storage_options) if destination.startswith("s3://") else None
    content_type = "application/gzip" if gzipped else _CONTENT_TYPES[kind]
    with Location(destination, client, field="destination").writer(content_type) as fh:
        _serialize(df, kind, gzipped, fh)
    return destination


@task(name="load-table", cache_policy=NO_CACHE)
def load_table(
    source: str,
    *,
    columns: Sequence[str] | None = None,
    s3_client: Any = None,
    max_rows: int = 1_000_000,
) -> pd.DataFrame:
    """Read a whole (small) table from ``source`` into one DataFrame; ``InputError`` past ``max_rows`` rows.

    For bigger inputs iterate ``iter_table_chunks`` in the flow and hand each chunk to a batch task.

    Example:
        cameras = load_table("s3://demo-bucket/config/cameras.csv", s3_client=bucket_block)
    """
    chunks, rows = [], 0
    for chunk in iter_table_chunks(source, columns=columns, s3_client=s3_client):
        rows += len(chunk)
        if rows > max_rows:
            raise InputError("source", f"{source} has more than {max_rows:,} rows", "use iter_table_chunks")
        chunks.append(chunk)
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=list(columns or []))


@task(name="save-table", cache_policy=NO_CACHE)
def save_table(df: pd.DataFrame, destination: str, *, s3_client: Any = None) -> str:
    """Write a report table (CSV/Parquet/JSON Lines by extension, local or ``s3://``); see ``write_table``.

    Example:
        save_table(report_df, "s3://demo-bucket/reports/miniviz-backfill.parquet", s3_client=bucket_block)
    """
    return write_table(df, destination, s3_client)
