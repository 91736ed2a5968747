"""Unit tests of the Miniviz data sender behind ``send_miniviz_data_batch`` (tasks/miniviz.py): every
acknowledgement journaled, duplicates after a crash bounded by the events in flight, failures reported per
event, not journaled."""

from __future__ import annotations

import asyncio
import pickle
from dataclasses import dataclass

import pytest

from clients.errors import ApiError, AuthError
from tasks.journal import Journal
from tasks.miniviz import MinivizDataSender, SendingStopped, send_miniviz_data_batch, seq_ranges

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


class FakeMiniviz:
    """Accepts every event after a delay; records what it accepted, like the server would."""

    def __init__(self, delay=0.002, fail_labels=(), invalid_labels=(), auth_error=False):
        self.accepted: list[int] = []
        self.delay = delay
        self.fail_labels = set(fail_labels)
        self.invalid_labels = set(invalid_labels)
        self.auth_error = auth_error
        self.max_concurrent = 0
        self._now = 0

    async def send_data(self, label_key, payload, timestamp):
        self._now += 1
        self.max_concurrent = max(self.max_concurrent, self._now)
        try:
            await asyncio.sleep(self.delay)
            if self.auth_error:
                raise AuthError("miniviz", "send_data", "HTTP 403", status=403)
            if label_key in self.fail_labels:
                raise ApiError("miniviz", "send_data", "HTTP 503", status=503)
            if label_key in self.invalid_labels:
                raise ApiError("miniviz", "send_data", "HTTP 400: bad timestamp", status=400)
            self.accepted.append(payload["i"])
            return type("Ack", (), {"id": f"ev-{payload['i']}"})()
        finally:
            self._now -= 1


@dataclass
class Event:
    seq: int
    label_key: str
    timestamp: int
    payload: dict


def events(n, label="s1"):
    return [Event(i, label, T0 + i, {"i": i}) for i in range(n)]


def journaled(journal: Journal, key: str) -> set[int]:
    """The event numbers the journal shows as acknowledged under ``key``."""
    return {
        seq
        for record in journal.records()
        if record["t"] == "sent" and record["f"] == key
        for start, end in record["r"]
        for seq in range(start, end)
    }


async def test_sender_journals_every_acknowledged_event(tmp_path):
    client = FakeMiniviz()
    journal = Journal(str(tmp_path / "j.jsonl"))
    sender = MinivizDataSender(client, 8, journal=journal)
    # two batches at once (as the backfill overlaps them) share the bound, through the public task
    first, second = await asyncio.gather(
        send_miniviz_data_batch.fn(sender, events(200), key="f1"),
        send_miniviz_data_batch.fn(sender, events(100), key="f2"),
    )
    await sender.record({"t": "file_done", "f": "f1"})
    await sender.aclose()
    assert [o.status for o in first + second] == ["done"] * 300 and first[7].event_id == "ev-7"
    assert journaled(journal, "f1") == set(range(200)) and journaled(journal, "f2") == set(range(100))
    assert client.max_concurrent == 8
    assert sender.journal_figures()["journal_commits"] < 300  # group commits
    assert list(journal.records())[-1] == {"t": "file_done", "f": "f1"}  # in order with the acknowledgements


@pytest.mark.parametrize("in_flight", [1, 4, 16])
async def test_a_crash_leaves_at_most_in_flight_events_unjournaled(tmp_path, in_flight):
    client = FakeMiniviz(delay=0.001)
    journal = Journal(str(tmp_path / "j.jsonl"))
    sender = MinivizDataSender(client, in_flight, journal=journal)
    task = asyncio.ensure_future(sender.send(events(400), "f1"))
    while len(client.accepted) < 150:
        if task.done():  # the sender stopped early: show why instead of waiting forever
            pytest.fail(f"the sender stopped after {len(client.accepted)} events: {task.exception()!r}")
        await asyncio.sleep(0.001)
    # the process dies here: what the journal holds now is all a re-run will know
    known = journaled(journal, "f1")
    accepted = set(client.accepted)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sender.aclose()
    assert known <= accepted  # nothing unacknowledged is marked sent
    assert len(accepted - known) <= in_flight  # what a re-run would send twice


async def test_each_event_gets_its_outcome_and_failures_are_not_journaled(tmp_path):
    client = FakeMiniviz(fail_labels={"down"}, invalid_labels={"bad"})
    journal = Journal(str(tmp_path / "j.jsonl"))
    sender = MinivizDataSender(client, 4, journal=journal)
    batch = [*events(3), Event(3, "down", T0, {"i": 3}), Event(4, "bad", T0, {"i": 4}), {"label_key": "s1"}]
    outcomes = await sender.send(batch, "f1")
    await sender.aclose()
    assert [o.status for o in outcomes] == ["done"] * 3 + ["failed", "rejected", "rejected"]
    assert "503" in outcomes[3].error and "400" in outcomes[4].error and "payload" in outcomes[5].error
    assert journaled(journal, "f1") == {0, 1, 2}


async def test_a_refused_token_or_too_many_failures_in_a_row_stop_sending(tmp_path):
    journal = Journal(str(tmp_path / "j.jsonl"))
    refused = MinivizDataSender(FakeMiniviz(auth_error=True), 4, journal=journal)
    with pytest.raises(SendingStopped, match="refused") as stop:
        await refused.send(events(5), "f2")
    await refused.aclose()
    assert [o.status for o in stop.value.outcomes] == ["failed"] * 5  # every event keeps its outcome
    assert pickle.loads(pickle.dumps(stop.value)).outcomes == stop.value.outcomes
    failing = MinivizDataSender(FakeMiniviz(fail_labels={"bad"}), 4, max_consecutive_failures=3)
    with pytest.raises(SendingStopped, match="in a row") as stop:
        await failing.send(events(10, "bad"))
    errors = [o.error for o in stop.value.outcomes]
    assert len(errors) == 10 and sum(e.startswith("not sent: 3 events failed in a row") for e in errors) >= 6
    with pytest.raises(SendingStopped, match="in a row"):  # a stopped sender sends nothing more
        await failing.send(events(2))


async def test_a_journal_that_cannot_be_written_fails_the_batch(tmp_path):
    class BrokenJournal(Journal):
        def append(self, *records):
            raise OSError("disk full")

    sender = MinivizDataSender(FakeMiniviz(), 4, journal=BrokenJournal(str(tmp_path / "j.jsonl")))
    with pytest.raises(OSError, match="disk full"):
        await sender.send(events(10), "f1")
    with pytest.raises(OSError, match="disk full"):  # and every later one: nothing can be made durable
        await sender.send(events(3), "f1")
    await sender.aclose()


def test_seq_ranges():
    assert seq_ranges([5, 3, 4, 9]) == [[3, 6], [9, 10]] and seq_ranges([]) == []
