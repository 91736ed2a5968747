"""End to end, as a user of the UI meets the project: deployments on a real server, a worker picking up runs
triggered through the Prefect client (what the UI's Run button does), reports and artifacts at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from demo.setup import put_history_sample, put_micrio_samples, put_selfie_samples, save_demo_blocks
from emulators.launcher import running_emulators

pytestmark = pytest.mark.integration
TIME_SCALE = 0.02


def cli(*args: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    out = subprocess.run(
        [sys.executable, "-m", "prefect", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.fixture(scope="module")
def stack(prefect_harness, tmp_path_factory):
    """Emulators, demo blocks and inputs, the work pool, every deployment, and a worker polling every second."""
    with running_emulators(time_scale=TIME_SCALE) as emu:
        import asyncio

        asyncio.run(save_demo_blocks(emu, TIME_SCALE))
        put_micrio_samples(emu, count=6)
        put_selfie_samples(emu, subjects=3)
        put_history_sample(emu, hours=1)
        cli("work-pool", "create", "local-process", "--type", "process", "--overwrite")
        cli("--no-prompt", "deploy", "--all")
        logs = tmp_path_factory.mktemp("worker") / "worker.log"
        env = {
            **os.environ,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        }
        with open(logs, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "local-process"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            yield emu, logs
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)


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
    flow_run = await run(
        "micrio-migration/micrio-migration",
        {
            "journal": str(tmp_path / "journal.jsonl"),
            "report": str(report),
            "poll_initial_seconds": 0.1,
            "poll_max_seconds": 0.5,
        },
        logs,
    )
    text = report.read_text()
    assert text.count(",ready,") == 6 and "invalidImage" in text
    arts = await artifacts_of(flow_run.id)
    assert {"micrio-migration-summary", "micrio-migration-failures", "micrio-migration-progress"} <= set(arts)


async def test_snapshot_harvest_deployment(stack, tmp_path):
    emu, logs = stack
    report = tmp_path / "harvest.csv"
    flow_run = await run(
        "snapshot-harvest/snapshot-harvest-every-15m",
        {
            "ready_after_seconds": 20 * TIME_SCALE,
            "poll_interval_seconds": 0.1,
            "data_event_budget_seconds": 60 * TIME_SCALE,
            "state": str(tmp_path / "pacing.json"),
            "report": str(report),
        },
        logs,
    )
    assert report.read_text().count(",done,") == 11
    assert "snapshot-harvest-summary" in await artifacts_of(flow_run.id)
    assert emu["miniviz"].received()["accepted"]["image"] == 11


async def test_skin_analysis_deployment(stack, tmp_path):
    emu, logs = stack
    report = tmp_path / "skin.csv"
    flow_run = await run(
        "skin-analysis/skin-analysis",
        {
            "poll_initial_delay": 22 * TIME_SCALE,
            "poll_max_delay": 0.2,
            "report": str(report),
            "metrics_report": str(tmp_path / "metrics.csv"),
            "journal": str(tmp_path / "skin.jsonl"),
        },
        logs,
    )
    rows = report.read_text().splitlines()
    assert len(rows) == 1 + 5  # 3 selfies, a thumbnail too small, a file that is not an image
    assert "skin-analysis-summary" in await artifacts_of(flow_run.id)
    assert emu["haut"].received()["duplicates"] == {}


async def test_miniviz_backfill_deployment(stack, tmp_path):
    emu, logs = stack
    report = tmp_path / "backfill.csv"
    flow_run = await run(
        "miniviz-backfill/miniviz-backfill",
        {
            "dry_run": False,
            "journal": str(tmp_path / "backfill.jsonl"),
            "report": str(report),
            "dead_letter": str(tmp_path / "rejected.csv"),
        },
        logs,
    )
    assert report.exists() and (tmp_path / "rejected.csv").read_text().count("\n") >= 2
    assert "miniviz-backfill-summary" in await artifacts_of(flow_run.id)
    got = emu["miniviz"].received()
    assert got["accepted"]["data"] >= 6 and got["duplicates"] == {} and "429" not in got["rejected_by_status"]
