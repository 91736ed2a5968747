"""Unit tests of the backfill sender (tasks/backfill/send.py): every acknowledgement journaled, duplicates after
a crash bounded by the events in flight, failures reported, not journaled."""

from __future__ import annotations

import asyncio

import pytest

from clients.errors import ApiError, AuthError
from tasks.backfill import BackfillSender, Event, FatalSendError, SentIndex
from tasks.journal import Journal

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


# --- the sender: duplicates after a crash are bounded by the events in flight --------------------------


class FakeMiniviz:
    """Accepts every event after a delay; records what it accepted, like the server would."""

    def __init__(self, delay=0.002, fail_labels=(), auth_error=False):
        self.accepted: list[int] = []
        self.delay = delay
        self.fail_labels = set(fail_labels)
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
            self.accepted.append(payload["i"])
        finally:
            self._now -= 1


def events(n, label="s1"):
    return [Event(i, i, 0, label, T0 + i, {"i": i}) for i in range(n)]


async def test_sender_journals_every_acknowledged_event(tmp_path):
    client = FakeMiniviz()
    journal = Journal(str(tmp_path / "j.jsonl"))
    sender = BackfillSender(client, journal, max_in_flight=8)
    # two batches at once (as the flow overlaps them) share the bound
    first, second = await asyncio.gather(sender.send("f1", events(200)), sender.send("f2", events(100)))
    await sender.aclose()
    assert (first.sent, second.sent) == (200, 100) and not first.failed
    index = SentIndex.load(journal)
    assert (index.sent_count("f1"), index.sent_count("f2")) == (200, 100) and client.max_concurrent == 8
    assert sender.journal_appends < 300  # group commits


@pytest.mark.parametrize("in_flight", [1, 4, 16])
async def test_a_crash_leaves_at_most_in_flight_events_unjournaled(tmp_path, in_flight):
    client = FakeMiniviz(delay=0.001)
    journal = Journal(str(tmp_path / "j.jsonl"))
    sender = BackfillSender(client, journal, max_in_flight=in_flight)
    task = asyncio.ensure_future(sender.send("f1", events(400)))
    while len(client.accepted) < 150:
        if task.done():  # the sender stopped early: show why instead of waiting forever
            pytest.fail(f"the sender stopped after {len(client.accepted)} events: {task.exception()!r}")
        await asyncio.sleep(0.001)
    # the process dies here: what the journal holds now is all a re-run will know
    index = SentIndex(list(journal.records()))
    accepted = set(client.accepted)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sender.aclose()
    journaled = {i for i in range(400) if index.is_sent("f1", i)}
    assert journaled <= accepted  # nothing unacknowledged is marked sent
    assert len(accepted - journaled) <= in_flight  # what a re-run would send twice


async def test_failures_are_reported_not_journaled_and_auth_errors_stop_the_run(tmp_path):
    client = FakeMiniviz(fail_labels={"bad"})
    journal = Journal(str(tmp_path / "j.jsonl"))
    sender = BackfillSender(client, journal, max_in_flight=4)
    batch = events(10) + [Event(10, 10, 0, "bad", T0, {"i": 10})]
    outcome = await sender.send("f1", batch)
    await sender.aclose()
    assert outcome.sent == 10 and [e.seq for e, _ in outcome.failed] == [10]
    assert not SentIndex.load(journal).is_sent("f1", 10)
    refused = BackfillSender(FakeMiniviz(auth_error=True), journal, 4)
    with pytest.raises(FatalSendError, match="refused"):
        await refused.send("f2", events(5))
    await refused.aclose()
    failing = BackfillSender(client, journal, 4, max_consecutive_failures=3)
    with pytest.raises(FatalSendError, match="in a row"):
        await failing.send("f3", events(10, "bad"))
    await failing.aclose()


async def test_a_journal_that_cannot_be_written_fails_the_batch(tmp_path):
    class BrokenJournal(Journal):
        def append(self, *records):
            raise OSError("disk full")

    sender = BackfillSender(FakeMiniviz(), BrokenJournal(str(tmp_path / "j.jsonl")), max_in_flight=4)
    with pytest.raises(OSError, match="disk full"):
        await sender.send("f1", events(10))
    with pytest.raises(OSError, match="disk full"):  # and every later one: nothing can be made durable
        await sender.send("f1", events(3))
    await sender.aclose()
