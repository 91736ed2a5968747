"""Fault suite (issue 9): each flow against the emulators with injected faults, every input item accounted for.

Profiles per flow (``faultkit``: inputs, fault placement, accounting; the ``fault_suite`` benchmark uses the
same):

- **mixed**: 5 % 503s, bursts of 429 with Retry-After, 2 s latency spikes, dropped connections and a 30 s
  outage mid-run (emulated seconds: 0.3 s here). Every item must end done, rejected with a reason or failed
  with an error, none lost; no side effect may arrive twice (nothing was processed that the client retried).
- **lost answers**: connections dropped *after* the emulator acted, on the routes that create something.
  Each flow must still account for every item, and keep the duplicates within what its documentation
  states; the resumable flows are then run again without faults and must finish everything.
- **long outage**: longer than the clients' retry budget: items fail with the error, none is lost.
- **refused**: every call that does an item's work answers 500: the run fails and says why.

The emulators' ``/_emulator/received`` counts (accepted, duplicates, injected faults) are the evidence. No
assertion on durations: the machine is shared.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from emulators.common import FaultConfig, ManualClock
from emulators.common.faults import FaultInjector
from emulators.launcher import running_emulators
from tests.conftest import TEST_TIME_SCALE
from tests.reliability.faultkit import (
    CASES,
    EMULATOR_CONFIG,
    SERVICES,
    Accounting,
    RetryCounter,
    clear,
    copy_blocks,
    dumps,
    inject,
    save_blocks,
)

pytestmark = pytest.mark.integration
CLEAR_ERROR = re.compile(r"\b(micrio|viziosense|miniviz|haut|s3)\b.*\S", re.IGNORECASE)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("fault-suite") / "emulators.json"
    config.write_text(json.dumps(EMULATOR_CONFIG))
    with running_emulators(only=SERVICES, time_scale=TEST_TIME_SCALE, config_path=str(config)) as running:
        yield running


@pytest.fixture(scope="module")
async def blocks(emu, prefect_harness):
    return await save_blocks(emu, TEST_TIME_SCALE)


@pytest.fixture(scope="module")
async def short_budget_blocks(blocks):
    """Blocks whose clients give up retrying a call after 1 s: shorter than the long outage."""
    services = ["micrio", "viziosense", "miniviz", "haut"]
    return await copy_blocks(blocks, "faults-short", services, max_retry_seconds=1.0)


def flow_of(case):
    module, name = case.target.split(":")
    return getattr(importlib.import_module(module), name)


async def run_case(case, run):
    """Run the flow in-process; returns (final state, client retries by service)."""
    with RetryCounter() as counter:
        state = await flow_of(case)(**run.args, return_state=True)
    return state, dict(counter.retries)


def assert_accounted(acc: Accounting) -> None:
    report = dumps(acc)
    assert acc.lost == 0 and not acc.problems, report
    assert acc.done + acc.rejected + acc.failed == acc.items, report
    assert acc.duplicate_count <= acc.duplicate_bound, report
    for error in acc.failures:  # a clear error: names the service (and the call) that failed
        assert CLEAR_ERROR.search(error), error


def assert_truthful(state, acc: Accounting) -> None:
    """The final state follows tasks/run_state.py: Completed, or Failed through it (counts and the report in
    the message, the inputs hold deliberately rejected items); a failed item is never behind Completed."""
    assert state.is_completed() or (state.is_failed() and "; report " in state.message), state.message
    if acc.failed:
        assert state.is_failed() and " failed" in state.message, (state.message, dumps(acc))


@pytest.mark.parametrize("name", list(CASES))
async def test_mixed_faults_every_item_accounted_for_and_nothing_twice(name, emu, blocks, tmp_path):
    case = CASES[name]
    clear(emu)
    run = case.prepare(emu, tmp_path, blocks, TEST_TIME_SCALE)
    inject(emu, case.faults())
    state, retries = await run_case(case, run)
    acc = case.account(emu, run)

    assert_truthful(state, acc)
    assert_accounted(acc)
    assert acc.duplicate_count == 0, dumps(acc)  # no answer was lost after processing: nothing may repeat
    assert acc.done >= 1, dumps(acc)
    # The faults really happened (the outage and the 429 bursts land whatever the speed), and were retried.
    assert acc.faults_injected.get("outage", 0) >= 1 and acc.faults_injected.get("429", 0) >= 1, dumps(acc)
    assert sum(retries.values()) >= 1


@pytest.mark.parametrize("name", list(CASES))
async def test_lost_answers_keep_duplicates_within_the_documented_bound(name, emu, blocks, tmp_path):
    case = CASES[name]
    clear(emu)
    run = case.prepare(emu, tmp_path, blocks, TEST_TIME_SCALE)
    inject(emu, case.lost_answer_faults())
    await run_case(case, run)
    acc = case.account(emu, run)
    assert_accounted(acc)
    assert acc.faults_injected.get("drop_after", 0) >= 1, dumps(acc)

    if case.resumable:  # the same input again, no faults: what failed is finished, still within the bound
        for service in case.lost_answer_faults():
            emu[service].control("DELETE", "faults")
        state, _ = await run_case(case, run)
        acc = case.account(emu, run)
        assert_truthful(state, acc)
        assert_accounted(acc)
        assert acc.failed == 0, dumps(acc)


@pytest.mark.parametrize("name", list(CASES))
async def test_outage_past_the_retry_budget_fails_items_with_the_error(
    name, emu, short_budget_blocks, tmp_path
):
    """A 500 s outage (5 s here) against clients that retry a call for 1 s: items fail, none is lost, the
    report is written."""
    case = CASES[name]
    clear(emu)
    run = case.prepare(emu, tmp_path, short_budget_blocks, TEST_TIME_SCALE)
    inject(emu, case.long_outage_faults())
    await run_case(case, run)
    acc = case.account(emu, run)
    assert_accounted(acc)
    assert acc.failed >= 1 and acc.duplicate_count == 0, dumps(acc)


@pytest.mark.parametrize("name", list(CASES))
async def test_a_run_where_every_item_fails_says_why(name, emu, blocks, tmp_path):
    """Every call that does an item's work answers HTTP 500: the run fails, after writing its report, with a
    message that names the failing call."""
    case = CASES[name]
    clear(emu)
    run = case.prepare(emu, tmp_path, blocks, TEST_TIME_SCALE)
    inject(emu, case.refusal_faults())
    state, _ = await run_case(case, run)
    assert state.is_failed(), state.message
    assert re.search(r"HTTP 500", state.message or "") and CLEAR_ERROR.search(state.message), state.message
    assert Path(run.report_path).exists()
    assert case.account(emu, run).done == 0


# --- the injector behaviour the suite relies on (fake clocks, no network) ----------------------------------


def test_outage_can_start_after_a_number_of_requests():
    clock = ManualClock()
    inj = FaultInjector(clock)
    inj.configure(FaultConfig(outage={"start_after_requests": 3, "duration": 30}))
    assert [inj.decide("/x").status for _ in range(3)] == [None, None, None]
    clock.advance(100)  # the window opens at the 4th request, not at configuration time
    fourth = inj.decide("/x")
    assert (fourth.status, fourth.kind, fourth.retry_after) == (503, "outage", 30)
    clock.advance(29)
    assert inj.decide("/x").status == 503
    clock.advance(1)
    assert inj.decide("/x").status is None


def test_429_bursts_repeat_every_n_requests():
    inj = FaultInjector(ManualClock())
    inj.configure(FaultConfig(burst_429=2, burst_429_every=5, retry_after=3, path_pattern="^/api"))
    statuses = [inj.decide("/api").status for _ in range(12)]
    assert statuses == [429, 429, None, None, 429, 429, None, None, None, 429, 429, None]
    assert inj.decide("/_other").status is None  # paths outside the pattern neither count nor fail
    assert inj.state()["matched_requests"] == 12
