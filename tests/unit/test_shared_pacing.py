"""Pacing shared by the processes of one machine (clients/shared_pacing.py), without Prefect or a network: two
processes pace one limit through lock files under ``tmp_path`` and record when each call held its slot."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from clients.miniviz import MinivizClient
from clients.shared_pacing import SharedSlot, shared_slot
from clients.timing import FakeClock, Pacer

INTERVAL = 0.05
CALLS = 6


def _paced_calls(where: str | None, start_at: float, out: str, key: str = "limit") -> None:
    """A process making ``CALLS`` paced calls; writes (start, end) of each, on the machine's monotonic clock.
    ``where``: a pacing directory or a Redis URL (None: pacing alone)."""

    async def main() -> list[tuple[float, float]]:
        pacer = Pacer(INTERVAL, shared=shared_slot(where, key))
        while time.monotonic() < start_at:  # both processes start together
            await asyncio.sleep(0.001)
        calls = []
        for _ in range(CALLS):
            async with pacer.slot():
                start = time.monotonic()
                await asyncio.sleep(0.002)  # the call's round trip
                calls.append((start, time.monotonic()))
        return calls

    Path(out).write_text(json.dumps(asyncio.run(main())))


def _two_processes(tmp_path: Path, where: Path | str | None, key: str = "limit") -> list[tuple[float, float]]:
    ctx = multiprocessing.get_context("spawn")
    start_at = time.monotonic() + 3.0  # after both interpreters are up
    outs = [tmp_path / f"calls-{n}.json" for n in range(2)]
    procs = [
        ctx.Process(target=_paced_calls, args=(str(where) if where else None, start_at, str(out), key))
        for out in outs
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    return sorted(tuple(call) for out in outs for call in json.loads(out.read_text()))


def _too_close(calls: list[tuple[float, float]]) -> list[float]:
    """Gaps between one call's end and the next call's start that are shorter than the interval."""
    return [
        later[0] - earlier[1]
        for earlier, later in zip(calls, calls[1:], strict=False)
        if later[0] - earlier[1] < INTERVAL
    ]


def test_two_processes_sharing_the_slot_never_call_within_the_interval(tmp_path):
    calls = _two_processes(tmp_path, tmp_path / "pacing")
    assert len(calls) == 2 * CALLS
    assert _too_close(calls) == []


def test_paced_per_process_two_processes_call_within_the_interval(tmp_path):
    """What the shared slot prevents: each process paces alone, so their calls interleave too closely."""
    calls = _two_processes(tmp_path, None)
    assert len(_too_close(calls)) >= CALLS - 1


async def test_a_push_back_reaches_every_pacer_of_the_limit(tmp_path):
    first = Pacer(15.0, shared=shared_slot(tmp_path, "project"))
    second = Pacer(15.0, shared=shared_slot(tmp_path, "project"))  # another client, as another process has
    other = Pacer(15.0, shared=shared_slot(tmp_path, "another project"))
    first.push_back(30)
    assert 29 < second.wait_time() <= 30 and other.wait_time() == 0


async def test_a_call_in_flight_elsewhere_makes_the_next_slot_an_interval_away(tmp_path):
    holder = Pacer(15.0, shared=shared_slot(tmp_path, "project"))
    waiter = Pacer(15.0, shared=shared_slot(tmp_path, "project"))
    assert waiter.wait_time() == 0
    async with holder.slot():
        assert 14 < waiter.wait_time() <= 15  # its answer, still to come, starts the interval
    assert 14 < waiter.wait_time() <= 15


def _hold_forever(directory: str) -> None:
    async def main() -> None:
        slot = SharedSlot(Path(directory), "project")
        await slot.acquire(lambda deadline: asyncio.sleep(0))
        Path(directory, "held").touch()
        await asyncio.sleep(600)

    asyncio.run(main())


async def test_a_process_killed_while_holding_the_slot_does_not_block_the_others(tmp_path):
    proc = multiprocessing.get_context("spawn").Process(target=_hold_forever, args=(str(tmp_path),))
    proc.start()
    try:
        for _ in range(600):
            if (tmp_path / "held").exists():
                break
            await asyncio.sleep(0.05)
        slot = SharedSlot(tmp_path, "project")
        assert slot.busy()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert not slot.busy()  # the kernel let go of the dead process's lock
    finally:
        if proc.is_alive():
            proc.kill()


def test_a_next_slot_from_another_boot_is_ignored(tmp_path):
    slot = SharedSlot(tmp_path, "project")
    slot.next_path.write_text(f"another-boot {time.monotonic() + 1e6!r}\n")
    assert slot.next_allowed() == float("-inf")
    slot.push_next(time.monotonic() + 5)
    assert 4 < slot.next_allowed() - time.monotonic() <= 5


def test_miniviz_clients_of_one_project_share_their_limits_and_no_others(tmp_path):
    def client(project: str = "p1", **kwargs) -> MinivizClient:
        return MinivizClient(project, "token", "http://miniviz.test", **{"pacing_dir": tmp_path, **kwargs})

    a, b, c = client(), client(), client("p2")
    a.data_pacer.push_back(10)
    a.image_pacers("cam").push_back(50)
    assert 9 < b.data_pacer.wait_time() <= 10 and c.data_pacer.wait_time() == 0
    assert 49 < b.image_wait_time("cam") <= 50 and b.image_wait_time("other") == 0
    assert client(pacing_dir=None).data_pacer.shared is None  # pacing alone, on request
    assert client(clock=FakeClock()).data_pacer.shared is None  # a fake clock means nothing elsewhere
    assert client(data_interval=0).data_pacer.shared is None  # no limit, nothing to share


@pytest.mark.parametrize("value", ["off", ""])
def test_the_shared_pacing_can_be_turned_off(monkeypatch, value):
    monkeypatch.setenv("PIPELINES_PACING_DIR", value)
    assert MinivizClient("p1", "token", "http://miniviz.test").data_pacer.shared is None
