"""End to end, as a user of the UI meets the project: deployments on a real server, a worker picking up runs
triggered through the Prefect client (what the UI's Run button does), reports and artifacts at the end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment

from tests.e2e.conftest import TIME_SCALE
from tests.reliability.prefect_stack import ROOT

# The `stack` fixture (tests/e2e/conftest.py): a Prefect server with its UI, the emulators, the demo blocks and
# inputs, every deployment of prefect.yaml, and one worker; shared with test_ui_forms.py.
pytestmark = pytest.mark.integration


async def artifacts_of(flow_run_id) -> dict[str, object]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


async def run(name: str, parameters: dict, logs: Path):
    flow_run = await run_deployment(name, parameters=parameters, timeout=240, poll_interval=1)
    assert flow_run.state.is_completed(), f"{name}: {flow_run.state}\n{logs.read_text()[-3000:]}"
    return flow_run


async def test_micrio_migration_deployment(stack, tmp_path):
    emu, logs = stack
    report = tmp_path / "micrio.csv"
    parameters = {
        "outputs": {"journal": str(tmp_path / "journal.jsonl"), "report": str(report)},
        "polling": {"initial_seconds": 0.1, "max_seconds": 0.5},
    }
    flow_run = await run_deployment(
        "micrio-migration/micrio-migration", parameters=parameters, timeout=240, poll_interval=1
    )
    # The demo prefix holds a text file named .jpg on purpose: rejected by content, so the run says Failed.
    message = flow_run.state.message or ""
    assert flow_run.state.is_failed() and "6 done, 1 rejected" in message, (
        f"{flow_run.state}\n{logs.read_text()[-3000:]}"
    )
    text = report.read_text()
    assert text.count(",ready,") == 6 and "not an image" in text and str(report) in message
    arts = await artifacts_of(flow_run.id)
    assert {"micrio-migration-summary", "micrio-migration-failures", "micrio-migration-progress"} <= set(arts)


async def test_snapshot_harvest_deployment(stack, tmp_path):
    emu, logs = stack
    report = tmp_path / "harvest.csv"
    flow_run = await run(
        "snapshot-harvest/snapshot-harvest-every-15m",
        {
            "timing": {"ready_after_seconds": 20 * TIME_SCALE, "poll_interval_seconds": 0.1},
            "miniviz_push": {"data_event_budget_seconds": 60 * TIME_SCALE},
            "outputs": {"state": str(tmp_path / "pacing.json"), "report": str(report)},
        },
        logs,
    )
    # Delivered: done, or deferred when the camera's data event waits for Miniviz's 15 s project slot.
    outcomes = pd.read_csv(report).outcome.value_counts().to_dict()
    assert outcomes.get("done", 0) + outcomes.get("deferred", 0) == 11 and outcomes["skipped"] == 2
    assert "snapshot-harvest-summary" in await artifacts_of(flow_run.id)
    assert emu["miniviz"].received()["accepted"]["image"] == 11


async def test_skin_analysis_deployment(stack, tmp_path):
    emu, logs = stack
    report = tmp_path / "skin.csv"
    parameters = {
        "polling": {"initial_delay": 22 * TIME_SCALE, "max_delay": 0.2},
        "outputs": {
            "report": str(report),
            "metrics_report": str(tmp_path / "metrics.csv"),
            "journal": str(tmp_path / "skin.jsonl"),
        },
    }
    flow_run = await run_deployment(
        "skin-analysis/skin-analysis", parameters=parameters, timeout=240, poll_interval=1
    )
    # The samples hold two unusable files on purpose: the run says so (Failed), after reporting every image.
    state = flow_run.state
    assert state.is_failed(), f"{state}\n{logs.read_text()[-3000:]}"
    assert state.message == f"5 images: 3 done, 2 rejected; report {report}", state.message
    rows = report.read_text().splitlines()
    assert len(rows) == 1 + 5  # 3 selfies, a thumbnail too small, a file that is not an image
    assert "skin-analysis-summary" in await artifacts_of(flow_run.id)
    assert emu["haut"].received()["duplicates"] == {}


async def test_miniviz_backfill_deployment(stack, tmp_path):
    emu, logs = stack
    report = tmp_path / "backfill.csv"
    parameters = {
        "dry_run": False,
        "outputs": {
            "journal": str(tmp_path / "backfill.jsonl"),
            "report": str(report),
            "dead_letter": str(tmp_path / "rejected.csv"),
        },
    }
    flow_run = await run_deployment(
        "miniviz-backfill/miniviz-backfill", parameters=parameters, timeout=240, poll_interval=1
    )
    # The demo history holds a row whose timestamp is "not a time" on purpose: rejected, so the run says Failed.
    message = flow_run.state.message or ""
    assert flow_run.state.is_failed() and "1 rejected" in message and str(report) in message, (
        f"{flow_run.state}\n{logs.read_text()[-3000:]}"
    )
    assert report.exists() and (tmp_path / "rejected.csv").read_text().count("\n") >= 2
    assert "miniviz-backfill-summary" in await artifacts_of(flow_run.id)
    got = emu["miniviz"].received()
    assert got["accepted"]["data"] >= 6 and got["duplicates"] == {} and "429" not in got["rejected_by_status"]


async def test_worker_outside_the_checkout_keeps_state_where_it_started(stack, worker_dir):
    """The worker was started in a temporary directory (tests/e2e/conftest.py): the deployment imports the flow
    from the installed package, and a run that names no outputs writes its report under the pool's working_dir
    (set as `make up` sets it), not under the checkout nor in a throw-away directory of the worker's."""
    emu, logs = stack
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("snapshot-harvest/snapshot-harvest-every-15m")
    assert deployment.entrypoint == "flows.snapshot_harvest.flow.harvest_snapshots"
    in_checkout = set((ROOT / "reports").glob("snapshot-harvest-*.csv"))
    await run(
        "snapshot-harvest/snapshot-harvest-every-15m",
        {
            "timing": {"ready_after_seconds": 20 * TIME_SCALE, "poll_interval_seconds": 0.1},
            "miniviz_push": {"data_event_budget_seconds": 60 * TIME_SCALE},
        },
        logs,
    )
    reports = list((worker_dir / "reports").glob("snapshot-harvest-*.csv"))
    assert len(reports) == 1, f"{reports}\n{logs.read_text()[-3000:]}"
    assert len(pd.read_csv(reports[0])) == 13  # every camera of the demo fleet: 11 delivered, 2 skipped
    assert set((ROOT / "reports").glob("snapshot-harvest-*.csv")) == in_checkout
