"""A big Micrio migration fanned out over three workers, one shard killed with SIGKILL mid-run.

On the fan-out stack (``fan_out_stack``: PostgreSQL, Redis, three workers in three directories, the state root
in S3), the parent run splits 3,000 images into three shards, child flow runs of ``micrio-migration-shard``;
one shard's flow-run process is killed once images are flowing. Its worker marks it Crashed, the parent
starts it again, it resumes from its journal in S3 on whichever worker takes it, and the parent writes one
report of the whole job: every image ready, duplicates within one batch for the kill. Without PostgreSQL or
Redis the test skips (fails under ``.ci/run``).
"""

from __future__ import annotations

import asyncio
import io
import json
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from PIL import Image
from prefect.client.orchestration import PrefectClient
from prefect_aws import S3Bucket
from pydantic import SecretStr

from blocks import MicrioCredentials
from demo.setup import emulator_aws_credentials, s3_client
from emulators.launcher import running_emulators
from tests.reliability.fan_out_stack import kill_a_running_shard, shard_runs, wait_final

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # the first test also starts the stack

IMAGES, SHARD_SIZE, BATCH = 3000, 1000, 100
BUCKET = "demo-bucket"
PARENT, SHARD = "micrio-migration/micrio-migration", "micrio-migration-shard"


def tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((64, 48)).convert("RGB").save(buf, "JPEG", quality=70)
    return buf.getvalue()


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
def stack(fan_out_stack, emu):
    async def save_blocks() -> None:
        aws = emulator_aws_credentials(emu["s3"])
        await S3Bucket(bucket_name=BUCKET, credentials=aws).asave("fan-s3", overwrite=True)
        m = emu["micrio"].credentials
        await MicrioCredentials(
            organisation_id=m["organisation_id"], api_key=SecretStr(m["api_key"]), base_url=emu["micrio"].url
        ).asave("fan-micrio", overwrite=True)

    asyncio.run(fan_out_stack.save(save_blocks, f"s3://{BUCKET}/pipeline-state", "fan-s3"))
    return fan_out_stack


async def test_a_migration_fanned_out_over_three_workers_survives_a_killed_shard(stack, emu):
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
    async with PrefectClient(stack.api_url) as client:
        deployment = await client.read_deployment_by_name(PARENT)
        parent = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        flowing = lambda: micrio.received()["accepted"].get("image", 0) >= BATCH * 3  # noqa: E731
        killed = await kill_a_running_shard(client, SHARD, flowing)
        parent = await wait_final(client, parent.id)
        shards = await shard_runs(client, SHARD)
        killed_run = await client.read_flow_run(killed)

    assert parent.state.is_completed(), f"{parent.state.name}: {parent.state.message}\n{stack.logs()}"
    assert killed_run.state.is_crashed(), killed_run.state
    states = sorted(r.state.name for r in shards)
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
