"""``make up`` / ``make status`` (demo/stack.py): which part counts as alive, and what ``up`` restarts."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from demo.stack import PARTS, PREFECT_PORT, UpPlan, plan_up, process_state, status_lines

ALL_ALIVE = {part.name: True for part in PARTS}


class FakeProcess:
    def __init__(self, started: float, status: str = psutil.STATUS_SLEEPING) -> None:
        self.started, self._status = started, status

    def create_time(self) -> float:
        return self.started

    def status(self) -> str:
        return self._status


def processes(**by_pid: FakeProcess):
    def lookup(pid: int) -> FakeProcess:
        if f"p{pid}" not in by_pid:
            raise psutil.NoSuchProcess(pid)
        return by_pid[f"p{pid}"]

    return lookup


def test_a_recorded_process_that_runs_is_alive():
    assert process_state({"pid": 7, "started": 100.0}, processes(p7=FakeProcess(100.0))) == "alive"


def test_a_zombie_is_not_alive():
    zombie = FakeProcess(100.0, psutil.STATUS_ZOMBIE)
    assert process_state({"pid": 7, "started": 100.0}, processes(p7=zombie)) == "zombie"


def test_a_reused_pid_is_not_our_process():
    assert process_state({"pid": 7, "started": 100.0}, processes(p7=FakeProcess(250.0))) == "gone"


def test_a_missing_process_or_entry_is_gone():
    assert process_state({"pid": 7, "started": 100.0}, processes()) == "gone"
    assert process_state(None) == "gone"


def test_a_real_exited_child_not_yet_collected_is_a_zombie():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    entry = {"pid": child.pid, "started": psutil.Process(child.pid).create_time()}
    assert process_state(entry) in ("alive", "zombie")
    deadline = time.monotonic() + 30
    while process_state(entry) == "alive" and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert process_state(entry) == "zombie"  # exited, and nobody called wait() yet
    finally:
        child.wait()
    assert process_state(entry) == "gone"


def test_nothing_to_do_when_every_part_runs_and_the_setup_is_current():
    assert plan_up(ALL_ALIVE, setup_current=True) == UpPlan(start=(), setup=False)


def test_a_dead_worker_alone_is_restarted_without_redoing_the_setup():
    assert plan_up({**ALL_ALIVE, "worker": False}, setup_current=True) == UpPlan(
        start=("worker",), setup=False
    )


@pytest.mark.parametrize("dead", ["emulators", "prefect-server"])
def test_a_new_server_or_emulators_redo_the_setup(dead):
    # the emulators keep the sample inputs in memory, a new server may have an empty database
    assert plan_up({**ALL_ALIVE, dead: False}, setup_current=True) == UpPlan(start=(dead,), setup=True)


def test_an_unfinished_setup_is_redone_even_when_everything_runs():
    assert plan_up(ALL_ALIVE, setup_current=False) == UpPlan(start=(), setup=True)


def test_first_up_starts_every_part_in_order():
    assert plan_up({}, setup_current=False) == UpPlan(
        start=("emulators", "prefect-server", "worker"), setup=True
    )


def test_status_shows_each_part_with_pid_liveness_and_address():
    procs = {"emulators": {"pid": 11, "started": 1.0}, "prefect-server": {"pid": 12, "started": 2.0}}
    states = {11: "alive", 12: "zombie"}
    lines = status_lines(procs, state=lambda entry: states[entry["pid"]])
    assert len(lines) == len(PARTS)
    emulators, server, worker = lines
    assert "emulators" in emulators and "11" in emulators and "alive" in emulators and "8701" in emulators
    assert "12" in server and "dead (zombie)" in server and f"http://127.0.0.1:{PREFECT_PORT}" in server
    assert "worker" in worker and "not started" in worker
