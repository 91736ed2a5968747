"""The per-folder index: which objects are already in a Micrio folder, so no run adds one twice.

It lives beside the journals (``<journal folder>/folders/<folder id>.jsonl``, or ``.../folders/<folder id>/``
for an ``s3://`` journal) and is shared by every run that adds to the folder, keyed by object identity:
``s3://bucket/key#ETag`` for S3 objects, the normalised URL for http(s) sources (``sources.url_identity``).
Its writes are group-committed (``tasks.journal.GroupCommit``), off the event loop.
"""

from __future__ import annotations

import asyncio
import posixpath
from typing import Any

from flows.micrio_migration.items import Item
from tasks.journal import GroupCommit, Journal


def folder_index_location(journal: str, folder_id: str) -> str:
    """``<journal's folder>/folders/<folder id>.jsonl`` (an ``s3://`` journal: ``.../folders/<folder id>/``)."""
    parent = posixpath.dirname(journal.rstrip("/"))
    if journal.startswith("s3://"):
        return f"{parent}/folders/{folder_id}/"
    return posixpath.join(parent or ".", "folders", f"{folder_id}.jsonl")


class FolderIndex:
    """Which objects are in a Micrio folder, added by which run: identity -> (Micrio id, run's source)."""

    def __init__(self, location: str, s3: Any, run: str, source: str) -> None:
        self.journal = Journal(location, s3_client=s3)
        self._commit = GroupCommit(self.journal)
        self.run, self.source = run, source
        self.present: dict[str, tuple[str, str, str]] = {}  # identity -> (micrio id, run journal, source)

    @classmethod
    async def open(cls, folder_id: str, s3: Any, run: str, source: str, items: list[Item]) -> FolderIndex:
        """The index of ``folder_id`` as the run of journal ``run`` sees it, with what that journal added but
        the index missed (a crash in between) recorded."""
        index = cls(folder_index_location(run, folder_id), s3, run, source)
        await asyncio.to_thread(index.load)
        await index.add(
            {
                i.identity: i.micrio_id
                for i in items
                if i.micrio_id and i.identity and i.status != "error" and i.identity not in index.present
            }
        )
        return index

    def load(self) -> None:
        for rec in self.journal.read():
            if rec["t"] == "added":
                for identity, image_id in rec["ids"].items():
                    self.present[identity] = (image_id, rec["run"], rec["source"])
            elif rec["t"] == "gone":
                for identity, image_id in rec["ids"].items():
                    if self.present.get(identity, ("",))[0] == image_id:
                        del self.present[identity]

    def elsewhere(self, identity: str | None) -> str | None:
        """Why ``identity`` is already in the folder by another run's doing, or None."""
        found = self.present.get(identity) if identity else None
        if found is None or found[1] == self.run:
            return None
        return f"already in the folder as Micrio image {found[0]} (added by the run of {found[2]})"

    def skip_present(self, items: list[Item]) -> None:
        """Skip the items not yet added whose object another run already added (once their identity is known)."""
        for item in items:
            if item.micrio_id is None and not item.set_aside() and (why := self.elsewhere(item.identity)):
                item.skipped = why

    async def add(self, ids: dict[str, str]) -> None:
        """Record objects added to the folder (identity -> Micrio id)."""
        if ids:
            self.present.update({i: (m, self.run, self.source) for i, m in ids.items()})
            record = {"t": "added", "run": self.run, "source": self.source, "ids": ids}
            await self._commit.append(record)

    async def gone(self, ids: dict[str, str]) -> None:
        """Forget objects whose image ended in error there: they may be added again."""
        if ids:
            for identity in ids:
                self.present.pop(identity, None)
            await self._commit.append({"t": "gone", "ids": ids})
