"""A Miniviz backfill of many files fanned out over three workers, one shard killed with SIGKILL mid-run.

On the fan-out stack (``fan_out_stack``: PostgreSQL, Redis, three workers in three directories, the state root
in S3), the parent run lists vega_datasets' monthly stock prices, one CSV per symbol in S3 (five files, 560
rows), and splits them two files per shard into three shards, child flow runs of ``miniviz-backfill-shard``.
The project is paced (the emulator answers 429 to a data event sooner than its interval after the last), and
the runs share its limit through Redis (``PIPELINES_PACING_URL``, the job variable ``env`` of both
deployments), as workers on several machines do. Once one running shard has had events accepted, its
flow-run process is killed; its
worker marks it Crashed, the parent starts it again, the new run resumes from the job's journal in S3, and
the parent writes one report of the whole job. Paced, a kill sends again at most the one event in flight.
Without PostgreSQL or Redis the test skips (fails under ``.ci/run``).
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
from prefect.client.schemas.actions import DeploymentUpdate
from pydantic import SecretStr
from vega_datasets import local_data

from blocks import MinivizCredentials
from clients.shared_pacing import PACING_URL_ENV
from demo.setup import s3_client
from emulators.launcher import running_emulators
from tasks.fan_out import split_keys
from tests.reliability.fan_out_stack import TIMEOUT, flow_run_processes, shard_runs
from tests.reliability.prefect_stack import REDIS_HOST, REDIS_PORT, redis_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # the first test also starts the stack

SCALE = 0.01  # the emulator's clock: its 5 s interval is 50 ms
INTERVAL = 5 * SCALE  # one data event per 50 ms for the whole project: 560 events take 28 s at the least
SHARD_SIZE, IN_FLIGHT, KILL_AFTER = 2, 1, 15  # paced: one event in flight, the kill's bound
BUCKET, PREFIX = "demo-bucket", "stocks/"
PARENT, SHARD = "miniviz-backfill/miniviz-backfill", "miniviz-backfill-shard"
PROJECT, TOKEN = "fan-backfill", "mvz-fan-backfill"
STOCKS = pd.read_csv(local_data.stocks.filepath)  # symbol, date ("Jan 1 2000"), price: 5 symbols, 560 rows
FILES = {symbol: f"s3://{BUCKET}/{PREFIX}{symbol}.csv" for symbol in sorted(STOCKS.symbol.unique())}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("fan-out-backfill-emulators") / "emulators.json"
    config.write_text(json.dumps({"miniviz": {"projects": [
        {"project_id": PROJECT, "token": TOKEN, "plan": "pro", "data_interval": INTERVAL / SCALE}]}}))  # fmt: skip
    with running_emulators(only=["miniviz", "s3"], time_scale=SCALE, config_path=str(config)) as e:
        s3 = s3_client(e)
        for symbol, rows in STOCKS.groupby("symbol"):
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}{symbol}.csv", Body=rows.to_csv(index=False).encode())
        yield e


@pytest.fixture(scope="module")
def stack(fan_out_stack, emu):
    miniviz = MinivizCredentials(
        project_id=PROJECT,
        token=SecretStr(TOKEN),
        base_url=emu["miniviz"].url,
        data_interval_seconds=INTERVAL,
    )
    fan_out_stack.save({"fan-backfill-mvz": miniviz}, emu["s3"], BUCKET, "fan-backfill-s3")
    with redis_database() as db:  # the workers' runs pace the project here
        asyncio.run(pace_in(fan_out_stack.api_url, f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"))
        yield fan_out_stack


async def pace_in(api_url: str, url: str) -> None:
    """The backfill deployments' runs get ``PIPELINES_PACING_URL`` (the job variable ``env``)."""
    async with PrefectClient(api_url) as client:
        for name in (PARENT, f"miniviz-backfill/{SHARD}"):
            deployment = await client.read_deployment_by_name(name)
            update = DeploymentUpdate(job_variables={"env": {PACING_URL_ENV: url}})
            await client.update_deployment(deployment.id, update)


def accepted_per_label(miniviz) -> Counter:
    return Counter(e["label_key"] for e in stored(miniviz))


def stored(miniviz) -> list[dict]:
    return miniviz.control("GET", "events", params={"project_id": PROJECT, "limit": 100_000})["events"]


async def kill_a_shard_that_sent(client: PrefectClient, miniviz, events: int) -> str:
    """SIGKILL the flow-run process of a running shard once ``events`` of its files are accepted; its run id."""
    ranges = split_keys(list(FILES.values()), SHARD_SIZE)  # as the parent splits them: shard N, ranges[N - 1]
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        accepted = accepted_per_label(miniviz)
        for run in await shard_runs(client, SHARD):
            if run.state is None or not run.state.is_running():
                continue
            first, stop = ranges[int(run.name.split("-shard-")[1].split("-")[0]) - 1]
            mine = [s for s, path in FILES.items() if first <= path and (not stop or path < stop)]
            if sum(accepted[s] for s in mine) >= events:
                for proc in flow_run_processes(str(run.id)):
                    os.kill(proc.pid, signal.SIGKILL)
                    return str(run.id)
    raise AssertionError(f"no shard was running with {events} events accepted")


async def test_a_backfill_fanned_out_over_three_workers_survives_a_killed_shard(stack, emu):
    miniviz = emu["miniviz"]
    miniviz.reset()
    parameters = {
        "source": f"s3://{BUCKET}/{PREFIX}",
        "miniviz_block": "fan-backfill-mvz",
        "s3_bucket_block": "fan-backfill-s3",
        "dry_run": False,
        "timestamps": {"column": "date", "timestamp_format": "%b %d %Y"},
        "events": {"label_column": "symbol"},  # each month's price as it is (the deployment resamples)
        "fan_out": {"shard_size": SHARD_SIZE, "max_reruns": 2},
    }
    kill = lambda client: kill_a_shard_that_sent(client, miniviz, KILL_AFTER)  # noqa: E731
    await stack.run_killing_one_shard(PARENT, SHARD, parameters, kill)

    got = miniviz.received()
    assert got["rejected_by_status"] == {}, got["recent_rejected"]  # no 429: the shards shared the pace
    duplicates = got["duplicates"].get("data", 0)
    assert duplicates <= IN_FLIGHT, got["recent_duplicates"]  # at most the event in flight at the kill
    assert got["accepted"]["data"] - duplicates == len(STOCKS), got["accepted"]
    expected = Counter(STOCKS.symbol)
    unique = {(e["label_key"], e["timestamp"], json.dumps(e["payload"])) for e in stored(miniviz)}
    assert len(unique) == len(STOCKS) and Counter(label for label, *_ in unique) == expected  # every row

    s3 = s3_client(emu)
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="pipeline-state/reports/miniviz-backfill-")
    keys = [o["Key"] for o in listing.get("Contents", []) if "-shards/" not in o["Key"]]
    reports = [k for k in keys if k.endswith(".csv") and not k.endswith("-dead-letter.csv")]
    assert len(reports) == 1, keys  # one report of the whole job
    report = pd.read_csv(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=reports[0])["Body"].read()))
    assert sorted(report.source) == sorted(FILES.values()) and set(report.status) == {"done"}, report
    assert dict(zip(report.label_key, report.events, strict=True)) == expected
    assert (report.sent + report.already_sent).sum() == len(STOCKS)
    assert report.already_sent.sum() >= KILL_AFTER - IN_FLIGHT  # the killed shard's re-run resumed
