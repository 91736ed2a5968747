"""Fan-out: a big job split into shards, each a child flow run of a deployment on the work pool.

Prefect is the distributed engine: a shard is an ordinary run of the flow (``run_deployment``), with the same
parameters as its parent except which part of the input it takes (``ShardRange``) and where its report goes.
Any worker of the pool runs it; its journal lives under the state root (``tasks.state``), so a shard whose
worker died is started again by the parent and resumes from its journal on whichever worker takes it. The
parent waits for every shard, reads their reports back and writes one report of the whole job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python

from clients.errors import InputError
from tasks.state import Location, StateRoot
from tasks.tables import iter_table_chunks

POLL_SECONDS = 1.0  # how often the parent looks at its shards' states


class ShardRange(BaseModel):
    """Which part of the input one shard takes: rows from first_row up to (not including) stop_row, or keys
    (S3 keys, camera ids, file names) from first_key up to stop_key; an empty or 0 end is open. Set by the
    parent on each shard: leave it empty."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    number: int = Field(0, ge=0)
    """This shard's number, from 1 (0: not a shard)."""
    of: int = Field(0, ge=0)
    """How many shards the job has."""
    first_row: int = Field(0, ge=0)
    stop_row: int = Field(0, ge=0)
    first_key: str = ""
    stop_key: str = ""
    parent: str = ""
    """The parent flow run's name."""

    @property
    def is_shard(self) -> bool:
        return self.number > 0

    def holds_row(self, row: int) -> bool:
        return row >= self.first_row and (not self.stop_row or row < self.stop_row)

    def holds_key(self, key: str) -> bool:
        return key >= self.first_key and (not self.stop_key or key < self.stop_key)

    def label(self) -> str:
        return f"shard {self.number} of {self.of}"


class FanOut(BaseModel):
    """Splitting a big job over the work pool's workers."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    shard_size: int = Field(0, ge=0, le=10_000_000)
    """Items per shard. A bigger job runs as shards, each a child flow run of the shard deployment on the
    work pool with its own journal under the state root (an s3:// root, or a folder every worker shares). 0:
    the whole job in this run."""
    deployment: str = ""
    """The deployment shards run as (flow-name/deployment-name). Empty: the flow's shard deployment."""
    max_reruns: int = Field(2, ge=0, le=10)
    """Times a shard whose run crashed or was cancelled (its worker died) is started again; it resumes from
    its journal."""
    shard: ShardRange = Field(ShardRange(), title="Shard")  # titled: the run form labels it so
    """Set by the parent run on each shard: leave it empty."""


def split_rows(total: int, size: int) -> list[tuple[int, int]]:
    """Row ranges ``[first, stop)`` of ``size`` over rows 1..total; the last one open (0)."""
    starts = list(range(1, total + 1, size))
    return [(start, starts[i + 1] if i + 1 < len(starts) else 0) for i, start in enumerate(starts)]


def split_keys(keys: Sequence[str], size: int) -> list[tuple[str, str]]:
    """Key ranges ``[first, stop)`` of ``size`` sorted keys each; the first opens at "", the last is open
    (""), so a key that appears later still belongs to exactly one shard."""
    ordered = sorted(keys)
    bounds = ordered[size::size]
    firsts = ["", *bounds]
    return list(zip(firsts, [*bounds, ""], strict=True))


def row_ranges(total: int, size: int) -> list[dict[str, int]]:
    return [{"first_row": a, "stop_row": b} for a, b in split_rows(total, size)]


def key_ranges(keys: Sequence[str], size: int) -> list[dict[str, str]]:
    return [{"first_key": a, "stop_key": b} for a, b in split_keys(keys, size)]


def check_fan_out(root: StateRoot) -> None:
    """Shards read and write under the state root: every worker must reach it."""
    if not (root.root.startswith("s3://") or root.root.startswith("/")):
        raise InputError(
            "fan_out",
            f"the state root {root.root!r} is on this worker's disk, where other workers cannot see it",
            "set the pipelines_state variable (or outputs.state_root) to s3://bucket/prefix or a shared folder",
        )


@dataclass
class Shard:
    """One shard to run: its range, its parameters, and where it leaves its report and summary."""

    range: ShardRange
    parameters: dict[str, Any]
    report: str

    @property
    def summary(self) -> str:
        return summary_location(self.report)


@dataclass
class ShardRun:
    """How a shard ended: its last flow run's state, how many runs it took, and (when it wrote them) its report
    and summary."""

    shard: Shard
    state: str
    message: str = ""
    runs: int = 1
    report: pd.DataFrame | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.report is not None

    def why_unfinished(self) -> str:
        return f"{self.shard.range.label()} did not finish (its last run ended {self.state} after {self.runs} runs)"

    def rows(self) -> list[dict[str, Any]]:
        """The shard's report as plain dicts (missing values as None)."""
        if self.report is None or self.report.empty:
            return []
        return self.report.astype(object).where(self.report.notna(), None).to_dict("records")


def summary_location(report: str) -> str:
    return f"{report}.summary.json"


def write_shard_summary(report: str, summary: BaseModel, s3_client: Any) -> None:
    """What a shard returns, beside its report, for its parent to read (results need no shared storage)."""
    Location(summary_location(report), s3_client).write_bytes(
        summary.model_dump_json().encode(), "application/json"
    )


def shard_report_folder(root: StateRoot, flow: str, parent: str) -> str:
    """Where a parent's shards write their reports: one folder per parent run."""
    return f"{root.root}/reports/{flow}-shards/{parent}"


def this_run() -> tuple[str, dict[str, Any]]:
    """The running flow run's name (with its id's start, unique) and its parameters as JSON values."""
    from prefect.runtime import flow_run

    return f"{flow_run.name or 'ad-hoc'}-{str(flow_run.id or '')[:8]}", to_jsonable_python(
        flow_run.parameters
    )


def plan_shards(
    flow: str,
    ranges: list[dict[str, Any]],
    parameters: dict[str, Any],
    root: StateRoot,
    parent: str,
    outputs: dict[str, Any] | None = None,
    **overrides: Any,
) -> list[Shard]:
    """One shard per range (``ShardRange`` fields): the parent's parameters with ``overrides``, the range,
    ``outputs`` merged into the parent's, and a report of its own in the parent's shard folder."""
    folder = shard_report_folder(root, flow, parent)
    shards = []
    for number, bounds in enumerate(ranges, 1):
        shard = ShardRange(number=number, of=len(ranges), parent=parent, **bounds)
        report = f"{folder}/shard-{number}.parquet"
        params = {
            **parameters,
            **overrides,
            "fan_out": {"shard_size": 0, "shard": shard.model_dump()},
            "outputs": {**parameters.get("outputs", {}), **(outputs or {}), "report": report},
        }
        shards.append(Shard(shard, params, report))
    return shards


async def run_shards(
    deployment: str, shards: list[Shard], max_reruns: int, s3_client: Any, logger: Any
) -> list[ShardRun]:
    """Run every shard as a child flow run of ``deployment`` at once and wait for them; a shard whose run
    crashed or was cancelled runs again, up to ``max_reruns`` times. Then read each one's report back."""
    from prefect.deployments import run_deployment  # here: clients of this module need no Prefect

    async def one(shard: Shard) -> ShardRun:
        for run_number in range(1, max_reruns + 2):
            flow_run = await run_deployment(
                deployment,
                parameters=shard.parameters,
                flow_run_name=f"{shard.range.parent}-shard-{shard.range.number}-of-{shard.range.of}",
                timeout=None,
                poll_interval=POLL_SECONDS,
                as_subflow=True,
            )
            state = flow_run.state
            if state is not None and (state.is_completed() or state.is_failed()):
                break
            name = state.name if state is not None else "unknown"
            if run_number <= max_reruns:
                logger.warning(
                    "%s ended %s (its worker may have died); starting it again: it resumes from its journal",
                    shard.range.label(),
                    name,
                )
        result = ShardRun(
            shard, state.name if state else "unknown", (state.message or "") if state else "", run_number
        )
        await asyncio.to_thread(_read_back, result, s3_client)
        return result

    return list(await asyncio.gather(*(one(s) for s in shards)))


async def fan_out_job(
    flow: str,
    ranges: list[dict[str, Any]],
    fan_out: FanOut,
    root: StateRoot,
    s3_client: Any,
    logger: Any,
    what: str,
    outputs: dict[str, Any] | None = None,
    **overrides: Any,
) -> list[ShardRun]:
    """What a parent run does with its ranges: check that every worker reaches the state root, plan a shard per
    range from this run's parameters (``plan_shards``), run them on ``fan_out.deployment`` (default: the flow's
    ``<flow>-shard`` deployment) and wait for them (``run_shards``). ``what`` says what is split, for the log."""
    check_fan_out(root)
    parent, parameters = this_run()
    shards = plan_shards(flow, ranges, parameters, root, parent, outputs, **overrides)
    deployment = fan_out.deployment or f"{flow}/{flow}-shard"
    logger.info("%s in %d shards on %s", what, len(shards), deployment)
    return await run_shards(deployment, shards, fan_out.max_reruns, s3_client, logger)


def shard_problems(runs: list[ShardRun]) -> list[str]:
    """The finished shards' problems (each once), then a line for each shard that never finished."""
    problems: list[str] = []
    for run in runs:
        problems += [p for p in run.summary.get("problems", []) if p not in problems]
    return problems + [f"{r.why_unfinished()}: a re-run resumes it" for r in runs if not r.finished]


def _read_back(result: ShardRun, s3_client: Any) -> None:
    """The shard's report and summary, if it got as far as writing them."""
    summary = Location(result.shard.summary, s3_client).read_bytes()
    if summary is None:
        return
    result.summary = json.loads(summary)
    chunks = list(iter_table_chunks(result.shard.report, s3_client=s3_client))
    result.report = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
