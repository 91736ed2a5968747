"""A big Micrio migration fanned out over three workers, one shard killed with SIGKILL mid-run.

On the fan-out stack (``fan_out_stack``: PostgreSQL, Redis, three workers in three directories, the state root
in S3), the parent run splits 3,000 images into three shards, child flow runs of ``micrio-migration-shard``;
one shard's flow-run process is killed once images are flowing. Its worker marks it Crashed, the parent
starts it again, it resumes from its journal in S3 on whichever worker takes it, and the parent writes one
report of the whole job: every image ready, duplicates within one batch for the kill. Without PostgreSQL or
Redis the test skips (fails under ``.ci/run``).
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from PIL import Image
from pydantic import SecretStr

from blocks import MicrioCredentials
from demo.setup import s3_client
from emulators.launcher import running_emulators
from tests.reliability.fan_out_stack import kill_a_running_shard

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
    m = emu["micrio"].credentials
    micrio = MicrioCredentials(
        organisation_id=m["organisation_id"], api_key=SecretStr(m["api_key"]), base_url=emu["micrio"].url
    )
    fan_out_stack.save({"fan-micrio": micrio}, emu["s3"], BUCKET, "fan-s3")
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
    flowing = lambda: micrio.received()["accepted"].get("image", 0) >= BATCH * 3  # noqa: E731
    await stack.run_killing_one_shard(
        PARENT, SHARD, parameters, lambda c: kill_a_running_shard(c, SHARD, flowing)
    )

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
