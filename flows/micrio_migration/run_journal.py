"""The run's journal: its records, how a re-run replays them, and the writes the adding makes.

Records, one JSON object each: ``folder`` (the folder the run created), ``intent`` (a batch about to be added:
its keys and identities, written before ``images/add``), ``added`` (the batch's Micrio ids and the keys Micrio
refused, written right after), ``final`` (images that reached ready or error), ``retry`` (``retry_failed``:
forget these keys' failures). A batch with an intent and no ``added`` was in flight at a crash: its outcome
is unknown, so it is added again. Appends are group-committed (``tasks.journal.GroupCommit``), off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from flows.micrio_migration.items import Item
from flows.micrio_migration.parameters import ExistingFolder, NewFolder
from tasks.fan_out import ShardRange
from tasks.journal import GroupCommit, Journal
from tasks.state import StateRoot


@dataclass
class Replayed:
    folder_id: str | None  # the folder an earlier run created
    unknown: list[str]  # keys whose images/add was in flight at a crash: intent written, ids never recorded
    next_batch: int
    had_records: bool = False
    already_added: int = 0  # images an earlier run had added
    resumed: str = ""  # "resumed from <journal>: N already added", or empty for a first run


def replay(records: list[dict[str, Any]], items: dict[str, Item]) -> Replayed:
    """Apply the journal to the items (attempts, Micrio ids, final statuses, retries asked for)."""
    folder_id = None
    open_batches: dict[int, list[str]] = {}
    next_batch = 0
    for rec in records:
        kind = rec["t"]
        if kind == "folder":
            folder_id = rec["id"]
        elif kind == "intent":
            open_batches[rec["batch"]] = rec["keys"]
            next_batch = max(next_batch, rec["batch"] + 1)
            identities = rec.get("identities") or [None] * len(rec["keys"])
            for key, identity in zip(rec["keys"], identities, strict=True):
                if key in items:
                    items[key].attempts += 1
                    items[key].identity = identity or items[key].identity
        elif kind == "added":
            open_batches.pop(rec["batch"], None)
            for key, image_id in rec["ids"].items():
                if key in items:
                    item = items[key]
                    item.micrio_id, item.status, item.error = image_id, "queued", None
            for key, error in rec.get("failed", {}).items():
                if key in items:  # refused by Micrio: nothing was added, the attempt does not count
                    items[key].attempts -= 1
                    items[key].error = error
        elif kind == "final":
            for key, image_id, status, error, width, height, thumbnail in rec["items"]:
                item = items.get(key)
                if item is not None and item.micrio_id == image_id:
                    item.status, item.error = status, error
                    item.width, item.height, item.thumbnail = width, height, thumbnail
        elif kind == "retry":  # retry_failed: the user fixed these sources
            for key in rec["keys"]:
                if key in items:
                    items[key].reset()
    unknown = [key for keys in open_batches.values() for key in keys if key in items]
    for key in unknown:  # a crash is not Micrio refusing the image: the attempt does not count
        items[key].attempts -= 1
    return Replayed(folder_id, unknown, next_batch, bool(records))


def default_journal_location(
    state: StateRoot, where: str, target: ExistingFolder | NewFolder, shard: ShardRange
) -> str:
    """A file under ``<state root>/micrio-migration/`` named after the source, target and shard range, so
    re-running the same input resumes."""
    key = (
        {"folder_id": target.folder_id}
        if isinstance(target, ExistingFolder)
        else {"parent": target.parent_id, "name": target.name, "type": target.type}
    )
    identity = [where, key, shard.model_dump()] if shard.is_shard else [where, key]
    return state.location("micrio-migration", identity)


class RunJournal:
    """The journal of one source and target, at ``location`` (a local file or an ``s3://`` prefix)."""

    def __init__(self, location: str, s3: Any) -> None:
        self.location = location
        self.next_batch = 0  # batches are numbered across runs: an intent's number is never reused
        self._journal = Journal(location, s3_client=s3)
        self._append = GroupCommit(self._journal).append

    async def resume(self, items: list[Item], retry_failed: bool, max_attempts: int, logger: Any) -> Replayed:
        """Apply the journal to ``items``; with ``retry_failed``, make what an earlier run left failed new
        again (journaled). Logs what it found."""
        by_key = {item.key: item for item in items if not item.key.startswith("row:")}
        state = replay(await asyncio.to_thread(self._journal.read), by_key)
        self.next_batch = state.next_batch
        state.already_added = sum(1 for i in items if i.micrio_id is not None)
        if state.had_records:
            state.resumed = f"resumed from {self.location}: {state.already_added} already added"
            ready = sum(1 for i in items if i.status == "ready")
            in_flight = sum(1 for i in items if i.in_flight())
            logger.info("%s (%d ready, %d in flight)", state.resumed, ready, in_flight)
        again = [i for i in items if i.failed_final(max_attempts)] if retry_failed else []
        if again:
            await self._append({"t": "retry", "keys": [i.key for i in again]})
            for item in again:
                item.reset()
            logger.info("retry_failed: %d image(s) an earlier run left failed are added again", len(again))
        if state.unknown:
            logger.warning(
                "%d image(s) were being added when the last run stopped; adding them again "
                "(at most one batch can end up twice in Micrio)",
                len(state.unknown),
            )
        return state

    async def folder(self, folder_id: str) -> None:
        await self._append({"t": "folder", "id": folder_id})

    async def intent(self, batch: list[Item]) -> int:
        """Before ``images/add``: a crash from here on leaves this batch's outcome unknown. Its number."""
        batch_no, self.next_batch = self.next_batch, self.next_batch + 1
        keys, identities = [i.key for i in batch], [i.identity for i in batch]
        await self._append({"t": "intent", "batch": batch_no, "keys": keys, "identities": identities})
        return batch_no

    async def added(self, batch_no: int, ids: dict[str, str], failed: dict[str, str | None]) -> None:
        """After ``images/add``: key -> Micrio id of the added images, key -> error of the refused ones."""
        await self._append({"t": "added", "batch": batch_no, "ids": ids, "failed": failed})

    async def final(self, items: list[Item]) -> None:
        """Images that reached ready or error, with what Micrio said of them."""
        if items:
            rows = [[i.key, i.micrio_id, i.status, i.error, i.width, i.height, i.thumbnail] for i in items]
            await self._append({"t": "final", "items": rows})
