"""A big snapshot harvest fanned out over three workers, one shard killed with SIGKILL mid-run.

On the fan-out stack (``fan_out_stack``: PostgreSQL, Redis, three workers in three directories, the state root
in S3), the parent run splits 60 VizioSense cameras by uuid range into three shards, child flow runs of
``snapshot-harvest-shard``; one shard's flow-run process is killed once originals are flowing into S3. Its
worker marks it Crashed, the parent starts it again, the new run skips the cameras its journal says were
stored, and the parent writes one report of the whole fleet. The shard killed has stored more cameras than
the bound below, so a re-run that asked them again would fail the test. Miniviz limits are off (no pacing deferral by
design), so every camera must end done. A kill stores again at most the cameras in delivery at that moment:
``2 * max(concurrency, fit_workers)``. Without PostgreSQL or Redis the test skips (fails under ``.ci/run``).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections import Counter

import pandas as pd
import pytest
from prefect.client.orchestration import PrefectClient
from pydantic import SecretStr

from blocks import MinivizCredentials, VizioSenseCredentials
from demo.setup import s3_client
from emulators.launcher import running_emulators
from emulators.viziosense.backend import device_uuid
from tasks.fan_out import split_keys
from tests.reliability.fan_out_stack import TIMEOUT, flow_run_processes, shard_runs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # the first test also starts the stack

CAMERAS, SHARD_SIZE, CONCURRENCY, FIT_WORKERS = 60, 20, 4, 1
IN_DELIVERY = 2 * max(CONCURRENCY, FIT_WORKERS)  # cameras holding images at once in a shard: the kill's bound
SCALE = 0.1  # VizioSense's documented 20 s wait is 2 s
BUCKET = "demo-bucket"
PARENT, SHARD = "snapshot-harvest/snapshot-harvest-every-15m", "snapshot-harvest-shard"
PROJECT, TOKEN = "fan-harvest", "mvz-fan-harvest"
UUIDS = [device_uuid("fan", str(i)) for i in range(CAMERAS)]  # the emulator's fleet


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("fan-out-harvest-emulators") / "emulators.json"
    config.write_text(json.dumps({
        "viziosense": {"devices": [], "fleet": {"count": CAMERAS, "offline_every": 0, "seed": "fan"},
                       "image": {"width": 320, "height": 240, "quality": 85, "variants": 2}},
        "miniviz": {"projects": [{"project_id": PROJECT, "token": TOKEN, "plan": "pro", "data_interval": 0}],
                    "image_interval": 0},
    }))  # fmt: skip
    with running_emulators(
        only=["viziosense", "miniviz", "s3"], time_scale=SCALE, config_path=str(config)
    ) as e:
        yield e


@pytest.fixture(scope="module")
def stack(fan_out_stack, emu):
    v = emu["viziosense"]
    blocks = {
        "fan-vzs": VizioSenseCredentials(base_url=v.url, api_key=SecretStr(v.credentials["api_key"])),
        "fan-mvz": MinivizCredentials(project_id=PROJECT, token=SecretStr(TOKEN), base_url=emu["miniviz"].url,
                                      data_interval_seconds=0, image_interval_seconds=0),
    }  # fmt: skip
    fan_out_stack.save(blocks, emu["s3"], BUCKET, "fan-harvest-s3")
    return fan_out_stack


def originals(s3) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="snapshots/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


async def kill_a_shard_that_stored(client: PrefectClient, s3, cameras: int) -> str:
    """SIGKILL the flow-run process of a running shard once ``cameras`` of its range are in S3; its run id."""
    ranges = split_keys(UUIDS, SHARD_SIZE)  # as the parent splits them: shard N takes ranges[N - 1]
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        stored = {key.split("/")[1] for key in originals(s3)}
        for run in await shard_runs(client, SHARD):
            if run.state is None or not run.state.is_running():
                continue
            first, stop = ranges[int(run.name.split("-shard-")[1].split("-")[0]) - 1]
            if sum(first <= u and (not stop or u < stop) for u in stored) >= cameras:
                for proc in flow_run_processes(str(run.id)):
                    os.kill(proc.pid, signal.SIGKILL)
                    return str(run.id)
    raise AssertionError(f"no shard was running with {cameras} cameras stored")


async def test_a_harvest_fanned_out_over_three_workers_survives_a_killed_shard(stack, emu):
    for service in emu.values():
        service.reset()
    s3 = s3_client(emu)
    parameters = {
        "viziosense_block": "fan-vzs",
        "s3_bucket_block": "fan-harvest-s3",
        "miniviz_block": "fan-mvz",
        "timing": {
            "ready_after_seconds": 20 * SCALE,
            "poll_interval_seconds": 0.05,
            "image_timeout_seconds": 60,
        },
        "performance": {"concurrency": CONCURRENCY, "fit_workers": FIT_WORKERS, "batch_size": 10},
        "fan_out": {"shard_size": SHARD_SIZE, "max_reruns": 2},
    }
    kill = lambda client: kill_a_shard_that_stored(client, s3, IN_DELIVERY + 2)  # noqa: E731
    await stack.run_killing_one_shard(PARENT, SHARD, parameters, kill)

    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="pipeline-state/reports/snapshot-harvest-")
    reports = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".csv")]
    assert len(reports) == 1, reports  # one report of the whole fleet
    report = pd.read_csv(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=reports[0])["Body"].read()))
    assert len(report) == CAMERAS and report.device_uuid.nunique() == CAMERAS
    assert set(report.outcome) == {"done"}, report[report.outcome != "done"][["device_uuid", "reason"]]
    assert set(report.image_push) == {"sent"} and set(report.data_event) == {"sent"}

    stored = originals(s3)
    per_camera = Counter(key.split("/")[1] for key in stored)
    assert set(per_camera) == set(report.device_uuid)
    assert set(report.s3_raw_key) | set(report.s3_annotated_key) <= set(stored)
    # cameras stored a second time (a kill between a camera's raw and annotated puts leaves an odd count)
    again = sum(1 for n in per_camera.values() if n > 2)
    assert all(n >= 2 for n in per_camera.values()) and again <= IN_DELIVERY, per_camera

    got = emu["miniviz"].received()
    assert got["rejected_by_status"] == {}, got["rejected_by_status"]  # no 429, no refusal
    assert CAMERAS <= got["accepted"]["image"] <= CAMERAS + IN_DELIVERY, got["accepted"]
