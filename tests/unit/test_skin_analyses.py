"""``SendingBatches``: a due results poll waits while batches are sending, but never longer than allowed."""

from __future__ import annotations

import asyncio

from clients.timing import FakeClock
from tasks.haut_batch import SendingBatches


async def test_polls_make_way_for_sending_batches_for_a_bounded_time():
    senders = SendingBatches()
    await asyncio.wait_for(senders.quiet(60), 1)  # nobody sending: the poll goes at once
    clock = FakeClock()
    with senders.sending(), senders.sending():
        await senders.quiet(5, clock)  # still sending: the poll gives up waiting after 5 s of the clock
        assert clock.sleeps == [5]
        waiter = asyncio.create_task(senders.quiet(60))
        await asyncio.sleep(0.01)
        assert not waiter.done()
    await asyncio.wait_for(waiter, 1)  # the last sending batch is done: the poll goes
    assert senders.count == 0
