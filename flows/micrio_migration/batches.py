"""Adding and polling, batch by batch: the migration's work between reading its sources and its report.

Each batch is one task run of the public batch tasks: ``add_micrio_batch`` (one ``images/add`` call) and
``await_micrio_progress`` (wait for about a batch to finish: one ``folder/status`` call a round, then
``image/status`` for the finished ones only). Every batch is journaled before the call and right after, so
the next batch never goes out before the last one is on disk.
"""

from __future__ import annotations

import time
from typing import Any

from prefect.utilities.annotations import quote

from blocks.micrio import MicrioCredentials
from clients.errors import ApiError
from flows.micrio_migration.folder_index import FolderIndex
from flows.micrio_migration.items import Item
from flows.micrio_migration.parameters import AddingOptions, ExistingFolder, NewFolder, PollingOptions
from flows.micrio_migration.run_journal import RunJournal
from flows.micrio_migration.sources import Presigner
from tasks.micrio import add_micrio_batch, await_micrio_progress, create_micrio_folder
from tasks.reports import Progress

MAX_ROUND_SECONDS = 60.0  # a poll returns at least this often, so the progress artifact keeps moving
PROGRESS_EVERY_S = 5.0  # counting the finished images walks every item: not after every poll of a 100k run


async def target_folder(
    target: ExistingFolder | NewFolder,
    created: str | None,
    credentials: MicrioCredentials,
    journal: RunJournal,
    logger: Any,
) -> str:
    """The folder id to add to: the existing one, the one an earlier run created, or a new one (journaled)."""
    if isinstance(target, ExistingFolder):
        return target.folder_id
    if created:
        return created
    folder = await create_micrio_folder(credentials, target.parent_id, target.name or None, target.type)
    await journal.folder(folder.id)
    logger.info("created %s %s under %s", target.type, folder.id, target.parent_id)
    return folder.id


class Migration:
    """The items of one run on their way into one folder: the next batch, adding it, polling what is in flight.

    Adding stops for the run when Micrio refuses a whole batch (``refused``); the images already added are
    still followed. Polling stops when Micrio cannot be reached past the client's retries (``unreachable``).
    A batch or a poll costs its own images, not the whole list: a cursor walks the items once, the images to
    add again and those in flight are kept apart.
    """

    def __init__(
        self,
        credentials: MicrioCredentials,
        folder_id: str,
        items: list[Item],
        journal: RunJournal,
        index: FolderIndex,
        adding: AddingOptions,
        polling: PollingOptions,
        s3: Any,
        logger: Any,
    ) -> None:
        self.credentials, self.folder_id, self.items = credentials, folder_id, items
        self.journal, self.index, self.logger = journal, index, logger
        self.presigner = Presigner(s3, int(adding.presign_hours * 3600))
        self.batch_size, self.max_attempts, self.polling = adding.batch_size, adding.max_attempts, polling
        self.progress = Progress("micrio-migration-progress", f"Images finished in folder {folder_id}")
        self.added_this_run = 0
        self.refused: str | None = None
        self.unreachable: str | None = None
        self._cursor = 0  # items before it were taken into a batch, or did not need adding when passed
        # to add again: an images/add refused or lost, an error Micrio may not repeat
        self._again: list[Item] = []
        self._flying = {i.micrio_id: i for i in items if i.in_flight()}
        self._progress_at = 0.0

    async def run(self, checking: Any, deadline: float) -> None:
        """Add the checked items batch by batch and poll what is in flight, until all are final, the deadline
        passes or Micrio cannot be reached; ``checking`` (``sources.ContentCheck``) checks a chunk ahead."""
        while time.monotonic() < deadline and not self.unreachable:
            batch = self.next_batch(checking.finished)
            if batch is None:
                await checking.next_chunk()  # a full batch once the next chunk is checked
            elif batch:
                await self.add(batch)
            elif self.in_flight():
                await self.poll(deadline)
            else:
                break
        await self.update_progress(force=True)

    def next_batch(self, all_checked: bool) -> list[Item] | None:
        """Up to a batch of checked items to add; None to wait for the content check (less than a batch is
        checked and more is coming); empty when nothing is left to add."""
        if self.refused:
            return []
        again = [i for i in self._again if i.needs_add(self.max_attempts)]
        batch, cursor = again[: self.batch_size], self._cursor
        while len(batch) < self.batch_size and cursor < len(self.items):
            item = self.items[cursor]
            if not item.checked and not all_checked:
                break  # the content check goes in item order: the rest is not checked either
            if item.checked and item.needs_add(self.max_attempts):
                batch.append(item)
            cursor += 1
        if len(batch) < self.batch_size and not all_checked:
            self._again = again
            return None
        self._again, self._cursor = again[len(batch) :], cursor
        return batch

    def in_flight(self) -> list[Item]:
        return list(self._flying.values())

    async def add(self, batch: list[Item]) -> None:
        """One ``images/add`` call for ``batch``, journaled before (intent) and after (ids)."""
        batch_no = await self.journal.intent(batch)
        for item in batch:
            item.attempts += 1
        sources = [{"sourceUrl": self.presigner.url(i), "name": i.name} for i in batch]
        outcomes = await add_micrio_batch(self.credentials, self.folder_id, sources)
        ids, failed = {}, {}
        for item, outcome in zip(batch, outcomes, strict=True):
            if outcome.status == "added":
                ids[item.key] = outcome.image_id
                item.micrio_id, item.status, item.error = outcome.image_id, "queued", None
                self._flying[item.micrio_id] = item
            elif outcome.status == "rejected":
                item.rejected = outcome.error
            elif outcome.status == "failed":
                failed[item.key] = outcome.error
                item.attempts -= 1  # nothing was added
                item.error = outcome.error
                self._again.append(item)
            else:  # "unknown": the answer was lost after sending; added again, as after a crash
                item.error = outcome.error
                self._again.append(item)
        await self.journal.added(batch_no, ids, failed)
        await self.index.add({i.identity: i.micrio_id for i in batch if i.key in ids and i.identity})
        if failed and len(failed) == len(batch):
            self.refused = next(iter(failed.values()))
            self.logger.error(
                "Micrio refused a whole batch; no more images are added this run: %s", self.refused
            )
        self.added_this_run += len(ids)

    async def poll(self, deadline: float) -> None:
        """Wait for about a batch of the images in flight to finish; their statuses are applied and journaled
        (transient errors with attempts left are added again by a later batch)."""
        in_flight = self.in_flight()
        try:
            report = await await_micrio_progress(
                self.credentials,
                self.folder_id,
                # quote: Prefect would otherwise walk every id (tens of thousands at the end) on each call
                quote([i.micrio_id for i in in_flight]),
                min_finished=self.batch_size,
                max_wait=min(MAX_ROUND_SECONDS, max(1.0, deadline - time.monotonic())),
                poll_initial=self.polling.initial_seconds,
                poll_max=self.polling.max_seconds,
            )
        except ApiError as exc:  # Micrio unreachable past the retry budget: report what is known, then fail
            self.unreachable = str(exc)
            self.logger.error(
                "polling stopped: %s; %d image(s) left in flight", self.unreachable, len(in_flight)
            )
            return
        finals, gone = [], {}
        for image_id, status in report.statuses.items():
            item = self._flying[image_id]
            item.apply(status)
            if status.terminal:
                finals.append(self._flying.pop(image_id))
                if status.status == "error" and item.identity:
                    gone[item.identity] = image_id
        for image_id in report.missing:
            item = self._flying.pop(image_id)
            item.status, item.error = "error", "unknownToMicrio"
            item.width = item.height = item.thumbnail = None
            finals.append(item)
        # next_batch keeps the ones with attempts left and an error Micrio may not repeat
        self._again.extend(i for i in finals if i.status == "error")
        await self.journal.final(finals)
        await self.index.gone(gone)
        await self.update_progress()

    async def update_progress(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._progress_at < PROGRESS_EVERY_S:
            return
        self._progress_at = time.monotonic()
        live = [i for i in self.items if not i.set_aside()]
        finished = sum(1 for i in live if i.finished(self.max_attempts))
        await self.progress.update(
            100.0 * finished / max(1, len(live)),
            f"{finished} of {len(live)} images finished in folder {self.folder_id}",
        )

    def stopped(self) -> str | None:
        """Why the run stopped before every image finished, when Micrio made it stop."""
        if self.refused:
            return f"Micrio refused a whole batch, so adding stopped: {self.refused}"
        if self.unreachable:
            return f"Micrio could not be polled: {self.unreachable}"
        return None
