"""What was sent, from the journal: event numbers per file, file fingerprints, finished files.

A file is known by ``file_id`` (a hash of its path) and pinned by ``file_fingerprint`` (size and mtime, or S3
ETag): a re-run refuses a file that changed rather than resume it with numbers that no longer match.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Iterable
from typing import Any

from tasks.journal import Journal
from tasks.storage import parse_s3_uri


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


class IntervalSet:
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
    ``{"t": "sent", "f": <file id>, "r": [[start, end), ...]}`` after Miniviz acknowledged those events
    (written by ``tasks.miniviz.MinivizDataSender``, the file id as its batch key);
    ``{"t": "file_done", "f": <file id>}`` once every event of the file is acknowledged.
    """

    def __init__(self, records: Iterable[dict[str, Any]] = ()) -> None:
        self.sent: dict[str, IntervalSet] = {}
        self.fingerprints: dict[str, dict[str, Any]] = {}
        self.done: set[str] = set()
        self.specs: set[str] = set()
        for record in records:
            self.apply(record)

    def apply(self, record: dict[str, Any]) -> None:
        kind = record.get("t")
        if kind == "sent":
            target = self.sent.setdefault(record["f"], IntervalSet())
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
