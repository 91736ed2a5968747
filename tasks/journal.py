"""A durable, append-only journal of JSON records: how long flows resume safely after any crash.

Local journals are one JSON-lines file, flushed and fsynced on every append, so a record that ``append``
returned for survives a ``kill -9`` or a power cut. S3 journals write one object per append under a prefix
(S3 has no append); reading lists them in order. Several processes may append to one journal (runs sharing a
folder index): local appends hold an ``flock``, and each S3 writer names its objects with a token of its own
(``<sequence>-<writer>.jsonl``), so no writer overwrites another's and each one's records stay in order. A torn last line (the process died mid-write) is ignored
by readers, and repaired before the next local append so that the new record starts on a line of its own.

``GroupCommit`` is how async code appends: records that arrive while a write is in progress are written
together by the next one (one fsync or one S3 object for many records), in a worker thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Journal:
    """Append-only records at ``location``: a local path or ``s3://bucket/prefix/`` (with ``s3_client``)."""

    def __init__(self, location: str, s3_client: Any = None) -> None:
        self.location = location
        self._s3 = s3_client
        self._seq: int | None = None
        self._writer = secrets.token_hex(4)  # this writer's S3 object names never meet another's
        self._file: Any = None  # a local journal's file, kept open between appends
        if location.startswith("s3://"):
            if s3_client is None:
                raise ValueError(f"journal {location}: an S3 client is needed for s3:// journals")
            bucket, _, prefix = location[5:].partition("/")
            if not bucket:
                raise ValueError(f"journal {location}: expected s3://bucket/prefix/")
            self._bucket, self._prefix = bucket, prefix.rstrip("/") + "/"
        else:
            Path(location).parent.mkdir(parents=True, exist_ok=True)

    @property
    def is_s3(self) -> bool:
        return self.location.startswith("s3://")

    def read(self) -> list[dict[str, Any]]:
        """Every complete record, in the order appended."""
        return list(self.records())

    def records(self) -> Iterator[dict[str, Any]]:
        """The records one by one; local journals are streamed, so memory stays flat however long they get."""
        if self.is_s3:
            keys = self._segment_keys()
            self._seq = len(keys)
            for key in keys:
                text = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read().decode("utf-8")
                yield from _parse_lines(text.splitlines(keepends=True), key)
            return
        try:
            fh = open(self.location, encoding="utf-8")  # noqa: SIM115 - closed below, generator-safe
        except FileNotFoundError:
            return
        with fh:
            yield from _parse_lines(fh, self.location)

    def append(self, *records: dict[str, Any]) -> None:
        """Write records durably; returns only once they would survive a crash."""
        if not records:
            return
        payload = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records)
        if self.is_s3:
            if self._seq is None:
                self._seq = len(self._segment_keys())
            key = f"{self._prefix}{self._seq:09d}-{self._writer}.jsonl"
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=payload.encode("utf-8"))
            self._seq += 1
            return
        if self._file is None:
            self._file = open(self.location, "a+b")  # noqa: SIM115 - kept open: one open per journal, not per append
        fh = self._file
        fcntl.flock(fh, fcntl.LOCK_EX)  # another process's append is whole before this one starts
        try:
            _repair_tail(fh, self.location)
            fh.write(payload.encode("utf-8"))
            fh.flush()
            os.fdatasync(fh.fileno())  # the data and the file's new size; not its times
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close a local journal's file (appending again reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _segment_keys(self) -> list[str]:
        keys: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix
        ):
            keys.extend(o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".jsonl"))
        return sorted(keys)


class GroupCommit:
    """Durable appends to a ``Journal`` from the concurrent coroutines of one event loop, with group commit.

    ``await append(...)`` returns once its records are durable (or raises the write's error). Appends that
    arrive while a write is in progress are written together by the next one, in order, after ``pack`` (which
    may merge records of one group). The writes run in a task of their own, so a caller that is cancelled
    never strands the others waiting for the same write. ``journal=None`` keeps nothing (a batch that need not
    resume).
    """

    def __init__(
        self,
        journal: Journal | None,
        pack: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.journal = journal
        self._pack = pack
        self._queue: list[tuple[Sequence[dict[str, Any]], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._lock = threading.Lock()  # one write at a time, whatever thread it runs in
        self.commits = 0
        self.commit_seconds = 0.0
        self.commit_seconds_max = 0.0

    @property
    def location(self) -> str:
        return self.journal.location if self.journal else ""

    async def append(self, *records: dict[str, Any]) -> None:
        if not records or self.journal is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((records, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_queued())
        await asyncio.shield(done)

    async def aclose(self) -> None:
        """Wait for the write in progress, if any."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    def figures(self) -> dict[str, float]:
        """How the group commits went: how many, mean and slowest (ms)."""
        n = max(1, self.commits)
        return {
            "journal_commits": self.commits,
            "mean_commit_ms": round(self.commit_seconds / n * 1000, 3),
            "max_commit_ms": round(self.commit_seconds_max * 1000, 3),
        }

    async def _write_queued(self) -> None:
        while self._queue:
            group, self._queue = self._queue, []
            records = [r for recs, _ in group for r in recs]
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._write, self._pack(records) if self._pack else records)
            except Exception as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                    done.exception()  # retrieved: no "never retrieved" warning when its caller is gone
                continue
            took = time.perf_counter() - started
            self.commits += 1
            self.commit_seconds += took
            self.commit_seconds_max = max(self.commit_seconds_max, took)
            for _, done in group:
                done.set_result(None)

    def _write(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            self.journal.append(*records)


def _repair_tail(fh: Any, where: str) -> None:
    """Make the file end with a newline before appending. A last line without one was cut by a crash (a
    ``kill -9`` can cut a write of more than a page; so can a power cut or a full disk): readers keep it if it is
    complete JSON (only its newline is missing) and ignore it otherwise, so it is completed or cut off
    accordingly. Without this, the next record would be glued to the torn one and lost with it."""
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        return
    fh.seek(end - 1)
    if fh.read(1) == b"\n":
        return
    start = end
    while start > 0:  # find the start of the last line, a block at a time from the end
        block_start = max(0, start - 65536)
        fh.seek(block_start)
        newline = fh.read(start - block_start).rfind(b"\n")
        if newline >= 0:
            start = block_start + newline + 1
            break
        start = block_start
    fh.seek(start)
    try:
        json.loads(fh.read(end - start))
    except ValueError:  # torn: that append never returned, so nobody was told it was durable
        logger.warning("journal %s: cutting off a torn last record before appending", where)
        fh.truncate(start)
    else:
        fh.write(b"\n")


def _parse_lines(lines: Iterable[str], where: str) -> Iterator[dict[str, Any]]:
    """Records from JSON lines. Only the last line can be torn by a crash (that append never returned), so a
    bad last line is skipped with a warning; a bad line anywhere else means the journal was damaged."""
    previous: tuple[int, str] | None = None
    for number, line in enumerate(lines, 1):
        if previous is not None:
            yield _load(*previous, where)
        previous = (number, line) if line.strip() else None
    if previous is not None:
        try:
            yield json.loads(previous[1])
        except json.JSONDecodeError:
            logger.warning("journal %s: ignoring a torn last record (the writer stopped mid-line)", where)


def _load(number: int, line: str, where: str) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(
            f"journal {where}: line {number} is not JSON; the file was edited or damaged"
        ) from None
