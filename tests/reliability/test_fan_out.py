"""A big Micrio migration fanned out over three workers, one shard killed with SIGKILL mid-run.

The production topology as far as one machine allows: a Prefect server on PostgreSQL and Redis, three process
workers each started in a directory of its own (none of them the checkout: the flows come from the installed
package), the state root (``pipelines_state``) in S3. The parent run splits 3,000 images into three shards,
child flow runs of ``micrio-migration-shard`` on the pool; one shard's flow-run process is killed once images
are flowing. Its worker marks it Crashed, the parent starts it again, it resumes from its journal in S3 on
whichever worker takes it, and the parent writes one report of the whole job: every image ready, duplicates
within one batch for the kill. Without PostgreSQL or Redis the test skips (fails under ``.ci/run``).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from PIL import Image
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect_aws import S3Bucket
from pydantic import SecretStr

from blocks import MicrioCredentials
from demo.setup import emulator_aws_credentials, s3_client
from emulators.launcher import running_emulators
from tasks.state import STATE_VARIABLE
from tests.reliability.prefect_stack import (
    ROOT,
    child_env,
    postgres_database,
    prefect_cli,
    process_group,
    production_services,
    production_settings,
    redis_database,
    require_services,
)

pytestmark = pytest.mark.integration

IMAGES, SHARD_SIZE, BATCH = 3000, 1000, 100
POOL, BUCKET = "fan-out", "demo-bucket"
PARENT, SHARD = "micrio-migration/micrio-migration", "micrio-migration/micrio-migration-shard"
TIMEOUT = 600  # a hang guard only


def tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((64, 48)).convert("RGB").save(buf, "JPEG", quality=70)
    return buf.getvalue()


def deployment_file(tmp: Path) -> Path:
    """prefect.yaml's migration and its shard deployment, on the test's pool."""
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    keep = [d for d in project["deployments"] if d["name"] in ("micrio-migration", "micrio-migration-shard")]
    for deployment in keep:
        deployment["work_pool"] = {"name": POOL, "work_queue_name": "default"}
    project["deployments"] = keep
    path = tmp / "prefect-fan-out.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    stage = 0.1  # 0.4 s per image, 200 at once: 3,000 images in about 6 s once added
    config = tmp_path_factory.mktemp("fan-out-emulators") / "emulators.json"
    config.write_text(json.dumps({"micrio": {"max_concurrent": 200, "stage_durations": dict.fromkeys(
        ("downloading", "processing", "tiling", "storing"), stage)}}))  # fmt: skip
    with running_emulators(only=["micrio", "s3"], time_scale=1.0, config_path=str(config)) as e:
        s3, body = s3_client(e), tiny_jpeg()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket=BUCKET, Key=f"fan/img-{i:05d}.jpg", Body=body),
                          range(IMAGES)))  # fmt: skip
        yield e


@pytest.fixture(scope="module")
def stack(emu, tmp_path_factory):
    """The server (PostgreSQL, Redis), three workers in three directories, the deployments, blocks and the
    state root; yields the API URL and the process group."""
    require_services(production_services())
    tmp = tmp_path_factory.mktemp("fan-out")
    with ExitStack() as stack:
        database = stack.enter_context(postgres_database())
        redis_db = stack.enter_context(redis_database())
        group = stack.enter_context(process_group(tmp / "logs"))
        server_env = child_env(tmp / "server-home", **production_settings(database, redis_db))
        (api_url,) = group.start_servers(["api"], server_env)
        client_env = child_env(tmp / "client-home", api_url)
        prefect_cli("work-pool", "create", POOL, "--type", "process", "--overwrite", env=client_env)
        for n in range(1, 4):
            workdir = tmp / f"machine-{n}"
            workdir.mkdir()
            group.start_worker(f"worker-{n}", child_env(tmp / f"worker-{n}-home", api_url), POOL, 3, workdir)
        prefect_cli(
            "--no-prompt", "deploy", "--all", "--prefect-file", str(deployment_file(tmp)), env=client_env
        )
        asyncio.run(_setup(api_url, emu))
        yield api_url, group


async def _setup(api_url: str, emu) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.variables import Variable

    with temporary_settings({PREFECT_API_URL: api_url}):
        aws = emulator_aws_credentials(emu["s3"])
        await S3Bucket(bucket_name=BUCKET, credentials=aws).asave("fan-s3", overwrite=True)
        m = emu["micrio"].credentials
        await MicrioCredentials(
            organisation_id=m["organisation_id"], api_key=SecretStr(m["api_key"]), base_url=emu["micrio"].url
        ).asave("fan-micrio", overwrite=True)
        state = {"root": f"s3://{BUCKET}/pipeline-state", "s3_bucket_block": "fan-s3"}
        await Variable.aset(STATE_VARIABLE, state, overwrite=True)


def shard_processes(flow_run_id: str) -> list[psutil.Process]:
    """The process a worker started for this flow run (its environment names the run)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


async def kill_a_running_shard(client: PrefectClient, micrio) -> str:
    """Once a shard has added images, SIGKILL its flow-run process; its flow run id."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if micrio.received()["accepted"].get("image", 0) < BATCH * 3:
            continue
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state={"type": {"any_": ["RUNNING"]}}),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["micrio-migration-shard"])),
        )
        for run in runs:
            for proc in shard_processes(str(run.id)):
                os.kill(proc.pid, signal.SIGKILL)
                return str(run.id)
    raise AssertionError("no shard was running with images added")


async def test_a_migration_fanned_out_over_three_workers_survives_a_killed_shard(stack, emu):
    api_url, group = stack
    micrio = emu["micrio"]
    micrio.reset()
    parameters = {
        "source": f"s3://{BUCKET}/fan/",
        "target": {"kind": "existing", "folder_id": micrio.credentials["root_folder_id"]},
        "micrio_block": "fan-micrio",
        "s3_bucket_block": "fan-s3",
        "adding": {"batch_size": BATCH},
        "polling": {"initial_seconds": 0.2, "max_seconds": 1.0},
        "fan_out": {"shard_size": SHARD_SIZE, "max_reruns": 2},
    }
    async with PrefectClient(api_url) as client:
        deployment = await client.read_deployment_by_name(PARENT)
        parent = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        killed = await kill_a_running_shard(client, micrio)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            parent = await client.read_flow_run(parent.id)
            if parent.state and parent.state.is_final():
                break
            await asyncio.sleep(1)
        shard_runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["micrio-migration-shard"]))
        )
        killed_run = await client.read_flow_run(killed)

    logs = "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in group.outputs().items())
    assert parent.state.is_completed(), f"{parent.state.name}: {parent.state.message}\n{logs}"
    assert killed_run.state.is_crashed(), killed_run.state
    states = sorted(r.state.name for r in shard_runs)
    assert states.count("Completed") == 3 and states.count("Crashed") == 1, states  # the killed one ran again

    got = micrio.received()
    duplicates = got["duplicates"].get("image", 0)
    assert duplicates <= BATCH, got["duplicates"]  # at most the batch in flight at the kill went twice
    assert got["accepted"]["image"] - duplicates == IMAGES, got["accepted"]
    assert got["state"]["by_status"]["ready"] == got["accepted"]["image"], got["state"]["by_status"]

    s3 = s3_client(emu)
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="pipeline-state/reports/micrio-migration-")
    reports = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".csv")]
    assert len(reports) == 1, reports  # one report of the whole job
    report = pd.read_csv(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=reports[0])["Body"].read()))
    assert len(report) == IMAGES and set(report.outcome) == {"done"}
    assert sorted(report.row) == list(range(1, IMAGES + 1))
