"""The skin-analysis journal: what earlier runs did, per analysis key, so a re-run resumes.

Records (one JSON object each, appended in this order for a key): ``uploading`` (image records created:
subject, batch and image ids; written before any byte is sent), ``computed`` (compute accepted), then
``done`` (metric rows) or ``failed`` (Haut's analysis failed: final). ``photos_deleted`` marks a subject
whose photos were deleted (GDPR) after its last upload. An analysis is keyed by API, dataset, subject, each
side's content hash and the preparation (``analysis_key``), so the same photo is never analysed twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tasks.journal import Journal
from tasks.skin.results import plain


def analysis_key(
    api_version: str, dataset_id: str, subject: str, side_hashes: Mapping[str, str], prep: str
) -> str:
    """Identity of one analysis across runs: API, dataset, subject, each side's content hash, preparation."""
    payload = json.dumps([api_version, dataset_id, subject, sorted(side_hashes.items()), prep])
    return hashlib.sha256(payload.encode()).hexdigest()


def prep_signature(max_side: int | None) -> str:
    return f"exif-upright;max_side={max_side or 0}"


class JournalState:
    """What a journal says about each analysis key and subject (the records: see the module docstring).

    A plain class on purpose: Prefect does not walk it when it is passed to a task.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]] = ()) -> None:
        self.units: dict[str, dict[str, Any]] = {}
        self._photos: dict[str, bool] = {}
        for record in records:
            self.apply(record)

    def apply(self, record: Mapping[str, Any]) -> None:
        kind, key = record.get("t"), record.get("k")
        if kind == "uploading":
            self.units[key] = {
                "phase": "uploading",
                "subject_id": record["subject_id"],
                "batch_id": record["batch_id"],
                "image_ids": dict(record["image_ids"]),
                "sha": dict(record.get("sha") or {}),
            }
            self._photos[record["subject_id"]] = True
        elif kind in ("computed", "done", "failed") and key in self.units:
            unit = self.units[key]
            unit["phase"] = kind
            if kind == "done":
                unit["rows"] = plain(record.get("rows") or [])
                unit["warnings"] = record.get("warnings")
            elif kind == "failed":
                unit["error"] = record.get("error")
        elif kind == "photos_deleted":
            self._photos[record["subject_id"]] = False

    def unit(self, key: str) -> dict[str, Any] | None:
        return self.units.get(key)

    def photos_pending(self, subject_id: str) -> bool:
        """Photos of this subject were uploaded (by any run of this journal) and not deleted since."""
        return self._photos.get(subject_id, False)


class JournalWriter:
    """Appends to a ``Journal`` from the concurrent tasks of one flow run, with group commit.

    ``await append(...)`` returns once its records are durable. Appends that arrive while a write is in
    progress are written together by the next one (one fsync, or one S3 object, for many records), so
    durability per record costs little under load. The write runs off the event loop.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._lock = threading.Lock()
        self._queue: list[tuple[Sequence[dict[str, Any]], asyncio.Future[None]]] = []
        self._writing = False

    @property
    def location(self) -> str:
        return self.journal.location

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self.journal.append(*records)

    async def append(self, *records: dict[str, Any]) -> None:
        if not records:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((records, done))
        if not self._writing:
            self._writing = True
            try:
                while self._queue:
                    group, self._queue = self._queue, []
                    try:
                        await asyncio.to_thread(self._append, [r for recs, _ in group for r in recs])
                    except Exception as exc:
                        for _, fut in group:
                            if not fut.done():
                                fut.set_exception(exc)
                    else:
                        for _, fut in group:
                            if not fut.done():
                                fut.set_result(None)
            finally:
                self._writing = False
        await done
