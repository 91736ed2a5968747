"""One production-shaped Prefect stack for the fan-out tests of every flow: a server on PostgreSQL and Redis,
three process workers each started in a directory of its own (none of them the checkout: the flows come from
the installed package), every deployment of prefect.yaml on their pool, and the state root in S3
(``pipelines_state``). Started once per test session, by the first test that needs it; each test module
brings its own emulators and saves its blocks with ``FanOutStack.save``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

from tasks.state import STATE_VARIABLE
from tests.reliability.prefect_stack import (
    ROOT,
    ProcessGroup,
    child_env,
    prefect_cli,
    production_server,
    production_services,
    require_services,
)

POOL = "fan-out"
WORKERS = 3
TIMEOUT = 600  # a hang guard only


def deployment_file(tmp: Path) -> Path:
    """Every deployment of prefect.yaml on the test's pool, schedules left out."""
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in project["deployments"]:
        deployment["work_pool"] = {"name": POOL, "work_queue_name": "default"}
        deployment.pop("schedules", None)
    path = tmp / "prefect-fan-out.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


@dataclass
class FanOutStack:
    api_url: str
    group: ProcessGroup

    def save(self, blocks: dict[str, Block], s3_emulator: Any, bucket: str, s3_block: str) -> None:
        """Save ``blocks`` (by name) and an ``S3Bucket`` named ``s3_block`` on the S3 emulator on this server,
        and point the state root at ``s3://bucket/pipeline-state`` through that block."""
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.variables import Variable
        from prefect_aws import S3Bucket

        from demo.setup import emulator_aws_credentials

        async def save() -> None:
            s3 = S3Bucket(bucket_name=bucket, credentials=emulator_aws_credentials(s3_emulator))
            for name, block in {**blocks, s3_block: s3}.items():
                await block.asave(name, overwrite=True)
            value = {"root": f"s3://{bucket}/pipeline-state", "s3_bucket_block": s3_block}
            await Variable.aset(STATE_VARIABLE, value, overwrite=True)

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            asyncio.run(save())

    async def run_killing_one_shard(
        self,
        parent: str,
        shard: str,
        parameters: dict[str, Any],
        kill: Callable[[PrefectClient], Awaitable[str]],
    ) -> None:
        """Run the ``parent`` deployment with ``parameters``; ``kill(client)`` SIGKILLs one running shard of
        ``shard`` (its flow run id). Then: the parent Completed, the killed run Crashed, three shards Completed
        (the killed one ran again)."""
        async with PrefectClient(self.api_url) as client:
            deployment = await client.read_deployment_by_name(parent)
            run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
            killed = await kill(client)
            run = await wait_final(client, run.id)
            shards = await shard_runs(client, shard)
            killed_run = await client.read_flow_run(killed)
        assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n{self.logs()}"
        assert killed_run.state.is_crashed(), killed_run.state
        states = sorted(r.state.name for r in shards)
        assert states.count("Completed") == 3 and states.count("Crashed") == 1, states

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in self.group.outputs().items())


@pytest.fixture(scope="session")
def fan_out_stack(tmp_path_factory):
    require_services(production_services())
    tmp = tmp_path_factory.mktemp("fan-out")
    with production_server(tmp, POOL) as (api_url, group, client_env):
        for n in range(1, WORKERS + 1):
            workdir = tmp / f"machine-{n}"
            workdir.mkdir()
            group.start_worker(f"worker-{n}", child_env(tmp / f"worker-{n}-home", api_url), POOL, 3, workdir)
        prefect_cli(
            "--no-prompt", "deploy", "--all", "--prefect-file", str(deployment_file(tmp)), env=client_env
        )
        yield FanOutStack(api_url, group)


def flow_run_processes(flow_run_id: str) -> list[psutil.Process]:
    """The process a worker started for this flow run (its environment names the run)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


async def kill_a_running_shard(client: PrefectClient, deployment: str, ready: Callable[[], bool]) -> str:
    """Once ``ready()`` (e.g. a shard's work is flowing), SIGKILL the flow-run process of a running run of
    ``deployment``; its flow run id."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if not ready():
            continue
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state={"type": {"any_": ["RUNNING"]}}),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
        )
        for run in runs:
            for proc in flow_run_processes(str(run.id)):
                os.kill(proc.pid, signal.SIGKILL)
                return str(run.id)
    raise AssertionError(f"no run of {deployment} was running when its work was flowing")


async def wait_final(client: PrefectClient, flow_run_id, timeout: float = TIMEOUT):
    """The flow run once it is in a final state (or as it is at the timeout, a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        run = await client.read_flow_run(flow_run_id)
        if (run.state and run.state.is_final()) or time.monotonic() > deadline:
            return run
        await asyncio.sleep(1)


async def shard_runs(client: PrefectClient, deployment: str) -> list:
    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
    )
