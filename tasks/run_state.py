"""The rule every flow ends with: a run's final state tells the truth.

**Completed** only when every item ended ``done`` or was skipped by design (an offline camera, an event deferred
by pacing, a duplicate the user already sent). Anything else ends the run **Failed**: a ``failed`` item, a
``rejected`` item (input the user must fix), an input that could not be read, or a source with nothing in it. The
Failed state carries a one-line message with the counts and the report's location, so the UI, notifications and
automations see a partial delivery; the report and artifacts are written before, and a re-run picks up.

A flow returns ``finish(...)``: the summary itself when the run is complete, otherwise a Failed state whose
result raises :class:`IncompleteRun` (``.summary`` holds the summary) for a caller in Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from prefect.states import Failed, State

T = TypeVar("T")

# The outcome vocabulary of every report; ``skipped`` and ``deferred`` are by design, the rest must be looked at.
OUTCOMES = ("done", "skipped", "deferred", "rejected", "failed")
NOT_DELIVERED = ("rejected", "failed")
MAX_PROBLEMS_IN_MESSAGE = 2


class IncompleteRun(Exception):
    """The run did not deliver every item; ``summary`` is what it did (the report says which item and why)."""

    def __init__(self, message: str, summary: Any = None) -> None:
        super().__init__(message)
        self.summary = summary


def run_message(
    what: str, counts: Mapping[str, int], report: str | None, problems: Sequence[str] = ()
) -> str:
    """``"12 images: 9 done, 2 rejected, 1 failed; report reports/x.csv"``, problems first when there are any."""
    total = sum(counts.values())
    parts = [f"{counts[k]:,} {k}" for k in OUTCOMES if counts.get(k)]
    text = f"{total:,} {what}: {', '.join(parts)}" if parts else f"no {what}"
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_IN_MESSAGE])
        more = (
            f" (+{len(problems) - MAX_PROBLEMS_IN_MESSAGE} more)"
            if len(problems) > MAX_PROBLEMS_IN_MESSAGE
            else ""
        )
        text = f"{shown}{more}. {text}"
    return f"{text}; report {report}" if report else text


def is_complete(counts: Mapping[str, int], problems: Sequence[str] = ()) -> bool:
    """True when nothing failed or was rejected, no input was unreadable, and there was at least one item."""
    unknown = set(counts) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"unknown outcome(s) {sorted(unknown)}; use one of {OUTCOMES}")
    return not problems and sum(counts.values()) > 0 and not any(counts.get(k) for k in NOT_DELIVERED)


def finish(
    summary: T,
    *,
    what: str,
    counts: Mapping[str, int],
    report: str | None,
    problems: Sequence[str] = (),
    logger: Any = None,
) -> T | State:
    """The flow's return value: ``summary`` when the run delivered everything, else a Failed state.

    ``counts`` maps outcomes (``OUTCOMES``) to numbers of items; ``problems`` are input-level errors (a file
    that cannot be read, a source with nothing in it), each one line without secrets. Call it after the
    report and artifacts are written. The message is logged (INFO when complete, ERROR otherwise).
    """
    message = run_message(what, counts, report, problems)
    if is_complete(counts, problems):
        if logger is not None:
            logger.info("Completed: %s", message)
        return summary
    if logger is not None:
        logger.error("Failed: %s", message)
    return Failed(message=message, data=IncompleteRun(message, summary))
