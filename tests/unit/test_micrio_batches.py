"""The migration's batching: the next batch in item order, waiting for the content check, and the images
that go back to be added again (a refused or lost ``images/add``, a transient Micrio error)."""

from __future__ import annotations

import logging

import pytest
from prefect.utilities.annotations import quote

from clients.micrio import ImageStatus, ImageStatusReport
from flows.micrio_migration import batches
from flows.micrio_migration.batches import Migration
from flows.micrio_migration.items import Item
from flows.micrio_migration.parameters import AddingOptions, PollingOptions
from tasks.micrio import AddOutcome


class Recorder:
    """Stands for the run's journal and the folder index: records what the batches write."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    async def intent(self, batch):
        self.records.append(("intent", [i.key for i in batch]))
        return len(self.records)

    async def added(self, batch_no, ids, failed):
        self.records.append(("added", ids, failed))

    async def final(self, items):
        self.records.append(("final", [i.key for i in items]))

    async def add(self, ids):
        pass

    async def gone(self, ids):
        pass


def migration(items: list[Item], batch_size: int = 4) -> Migration:
    recorder = Recorder()
    return Migration(
        None, "fold01", items, recorder, recorder, AddingOptions(batch_size=batch_size, max_attempts=2),
        PollingOptions(), None, logging.getLogger("test"),
    )  # fmt: skip


def sources(n: int, checked: int) -> list[Item]:
    return [Item(row=i, key=f"k{i}", name=None, url=f"https://x/{i}", checked=i < checked) for i in range(n)]


def keys(batch):
    return None if batch is None else [i.key for i in batch]


def test_batches_follow_the_items_and_wait_for_the_content_check():
    items = sources(10, checked=6)
    items[2].rejected = "not an image"
    m = migration(items)
    assert keys(m.next_batch(all_checked=False)) == ["k0", "k1", "k3", "k4"]
    for item in items[:5]:  # as if added
        item.micrio_id, item.status = f"id{item.row}", "queued"
    assert m.next_batch(all_checked=False) is None  # k5 alone: wait for the next checked chunk
    for item in items[6:]:
        item.checked = True
    assert keys(m.next_batch(all_checked=False)) == ["k5", "k6", "k7", "k8"]
    for item in items[5:9]:
        item.micrio_id, item.status = f"id{item.row}", "queued"
    assert keys(m.next_batch(all_checked=True)) == ["k9"]
    items[9].micrio_id, items[9].status = "id9", "queued"
    assert m.next_batch(all_checked=True) == []


async def test_refused_lost_and_transient_errors_are_added_again(monkeypatch):
    items = sources(6, checked=6)
    m = migration(items)

    async def add_batch(credentials, folder_id, sources):
        # k0 added, k1 refused for now, k2 answer lost, k3 added
        return [
            AddOutcome(index=0, status="added", image_id="id0"),
            AddOutcome(index=1, status="failed", error="HTTP 503"),
            AddOutcome(index=2, status="unknown", error="connection broken"),
            AddOutcome(index=3, status="added", image_id="id3"),
        ]

    async def progress(credentials, folder_id, image_ids, **options):
        assert isinstance(image_ids, quote)  # Prefect unquotes for the task without walking every id
        assert sorted(image_ids.unquote()) == ["id0", "id3"]  # what is in flight, nothing else
        return ImageStatusReport(
            statuses={
                "id0": ImageStatus(id="id0", status="ready", width=10, height=10, thumbnail="t"),
                "id3": ImageStatus(id="id3", status="error", error="uploadError"),
            }
        )

    monkeypatch.setattr(batches, "add_micrio_batch", add_batch)
    monkeypatch.setattr(batches, "await_micrio_progress", progress)
    await m.add(m.next_batch(all_checked=True))
    assert keys(m.in_flight()) == ["k0", "k3"]
    assert keys(m.next_batch(all_checked=True)) == ["k1", "k2", "k4", "k5"]  # the ones to redo come first
    await m.poll(deadline=float("inf"))
    assert m.in_flight() == []
    assert items[0].status == "ready" and items[3].error == "uploadError"
    assert keys(m.next_batch(all_checked=True)) == ["k3"]  # a transient error with attempts left
    assert m.next_batch(all_checked=True) == []


@pytest.fixture(autouse=True)
def _no_progress_artifacts(monkeypatch):
    monkeypatch.setattr(batches.Progress, "update", lambda self, *a, **k: _nothing())


async def _nothing():
    return None
