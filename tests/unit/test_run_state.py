"""The final-state rule shared by every flow (tasks/run_state.py)."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.states import State

from tasks.run_state import IncompleteRun, finish, is_complete, run_message


@pytest.mark.parametrize(
    ("counts", "problems", "complete"),
    [
        ({"done": 3}, (), True),
        ({"done": 3, "skipped": 1, "deferred": 2}, (), True),
        ({"skipped": 2}, (), True),  # every camera offline: nothing to do, by design
        ({"done": 3, "failed": 1}, (), False),
        ({"done": 3, "rejected": 1}, (), False),
        ({"rejected": 4}, (), False),
        ({}, (), False),  # an empty source is not a success
        ({"done": 0}, (), False),
        ({"done": 3}, ("data/a.csv: unreadable",), False),
    ],
)
def test_complete_only_when_everything_was_delivered(counts, problems, complete):
    assert is_complete(counts, problems) is complete


def test_unknown_outcome_is_a_programming_error():
    with pytest.raises(ValueError, match="partial"):
        is_complete({"partial": 1})


def test_message_gives_counts_problems_and_report():
    message = run_message(
        "images", {"done": 1200, "rejected": 2, "failed": 1}, "reports/x.csv", ["a: bad", "b: bad", "c: bad"]
    )
    assert message == (
        "a: bad; b: bad (+1 more). 1,203 images: 1,200 done, 2 rejected, 1 failed; report reports/x.csv"
    )
    assert run_message("files", {}, None) == "no files"


def test_finish_returns_the_summary_when_complete():
    assert finish({"n": 1}, what="items", counts={"done": 1}, report="r.csv") == {"n": 1}


def test_finish_returns_a_failed_state_carrying_the_summary():
    state = finish({"n": 1}, what="items", counts={"done": 1, "failed": 1}, report="r.csv")
    assert isinstance(state, State) and state.is_failed()
    assert state.message == "2 items: 1 done, 1 failed; report r.csv"


def test_a_flow_ends_failed_and_the_caller_gets_the_summary(prefect_harness):
    @flow
    def partial() -> dict:
        return finish({"sent": 1}, what="events", counts={"done": 1, "rejected": 1}, report="r.csv")

    state = partial(return_state=True)
    assert state.is_failed() and state.message == "2 events: 1 done, 1 rejected; report r.csv"
    with pytest.raises(IncompleteRun) as raised:
        partial()
    assert raised.value.summary == {"sent": 1}
