"""Miniviz pacing kept across harvest runs: when each label last got an image or a data event.

``PacingState`` is a small JSON document (a ``tasks.state.Location``: a local file or one S3 object). Its times
seed a run's ``MinivizClient`` pacers, so a harvest started right after another defers instead of meeting
a 429. Used by the harvest's Miniviz pushes (``cameras``) and its flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from clients.miniviz import MinivizClient
from clients.redaction import error_text
from tasks.state import Location

STATE_VERSION = 1
STATE_KEEP_SECONDS = 30 * 86_400  # labels silent for 30 days are dropped from the file


class PacingState:
    """When each Miniviz label last got an image and a data event, and when the project last got data.

    Times are wall-clock UNIX seconds. A send is marked *before* it goes out (a crash right after sending
    still counts it) and re-marked when it finished (the pacers count from there); a send refused before
    reaching the rate limiter is unmarked. Stored as one small JSON document: a local file replaced
    atomically, or an ``s3://bucket/key`` object. The writer must be alone (the deployment's concurrency
    limit of 1 ensures it); concurrent ad-hoc runs may each send once, and a 429 then becomes a deferral.
    """

    def __init__(self, location: str, s3_client: Any = None) -> None:
        self.location = location
        self._file = Location(location, s3_client, field="state")
        self.labels: dict[str, dict[str, float]] = {}
        self.project_data_at: float | None = None
        self.dirty = False
        self.load_problem: str | None = None
        self.save_problem: str | None = None
        self._lock = asyncio.Lock()

    # reading and writing (sync: call through asyncio.to_thread)
    def load(self) -> PacingState:
        try:
            text = self._read()
        except Exception as exc:
            self.load_problem = f"could not read pacing state {self.location}: {error_text(exc)}"
            return self
        if not text:
            return self
        try:
            doc = json.loads(text)
            self.labels = {
                str(k): {kind: float(t) for kind, t in v.items() if kind in ("image", "data")}
                for k, v in doc.get("labels", {}).items()
            }
            at = doc.get("project_data_at")
            self.project_data_at = float(at) if at is not None else None
        except (ValueError, TypeError, AttributeError) as exc:
            self.labels, self.project_data_at = {}, None
            self.load_problem = f"pacing state {self.location} is damaged ({exc}); starting without it"
        return self

    def _read(self) -> str:
        return (self._file.read_bytes() or b"").decode("utf-8")

    def document(self) -> dict[str, Any]:
        now = time.time()
        labels = {
            k: v
            for k, v in sorted(self.labels.items())
            if max(v.values(), default=0) > now - STATE_KEEP_SECONDS
        }
        return {
            "version": STATE_VERSION,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "project_data_at": self.project_data_at,
            "labels": labels,
        }

    def save(self) -> None:
        self._file.write_bytes(
            json.dumps(self.document(), separators=(",", ":")).encode(), "application/json"
        )

    async def flush(self) -> None:
        """Write the state if it changed (one writer at a time, off the event loop)."""
        async with self._lock:
            if self.dirty:
                self.dirty = False
                try:
                    await asyncio.to_thread(self.save)
                except BaseException:
                    self.dirty = True
                    raise

    @contextlib.asynccontextmanager
    async def autoflush(self, every: float = 2.0) -> AsyncIterator[None]:
        """Flush every ``every`` seconds while the block runs, and once at its end.

        A write that fails is retried by the next round; if the last one fails too, ``save_problem`` says why
        (not fatal: the next run may then meet a 429, which it turns into a deferral).
        """

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                with contextlib.suppress(Exception):
                    await self.flush()

        flusher = asyncio.create_task(loop())
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            try:
                await self.flush()
                self.save_problem = None
            except Exception as exc:
                self.save_problem = f"could not save pacing state {self.location}: {error_text(exc)}"

    # the values
    def last(self, label: str, kind: Literal["image", "data"]) -> float | None:
        return self.labels.get(label, {}).get(kind)

    def mark(self, label: str, kind: Literal["image", "data"], at: float | None) -> None:
        entry = self.labels.setdefault(label, {})
        if at is None:
            entry.pop(kind, None)
        else:
            entry[kind] = at
            if kind == "data":
                self.project_data_at = max(self.project_data_at or at, at)
        self.dirty = True

    def merge(self, other: PacingState) -> None:
        """Take ``other``'s marks where they are later than this one's (a shard's marks into the project's)."""
        for label, entry in other.labels.items():
            mine = self.labels.setdefault(label, {})
            for kind, at in entry.items():
                mine[kind] = max(mine.get(kind, at), at)
        if other.project_data_at is not None:
            self.project_data_at = max(self.project_data_at or other.project_data_at, other.project_data_at)
        self.dirty = True

    def seed(self, client: MinivizClient, labels: Iterable[str]) -> None:
        """Make the client's pacers wait for what earlier runs sent (so ``image_wait_time`` knows it)."""
        now = time.time()
        for label in labels:
            last = self.last(label, "image")
            if last is not None and (left := last + client.image_pacers.interval - now) > 0:
                client.image_pacers(label).push_back(left)
        if self.project_data_at is not None:
            left = self.project_data_at + client.data_pacer.interval - now
            if left > 0:
                client.data_pacer.push_back(left)
