"""The Miniviz backfill flow for real: Prefect server (session harness) + Miniviz emulator at time scale 0.01.

Two emulator projects: ``fast`` (rate limit off) and ``paced`` (Pro: 15 s, i.e. 0.15 s here). What lands in
Miniviz is read back from ``/_emulator/events`` (content) and ``/_emulator/received`` (counts, duplicates,
429s).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import boto3
import pandas as pd
import prefect.deployments
import pytest
import statsmodels.datasets.co2
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed
from prefect.variables import Variable
from prefect_aws import S3Bucket
from pydantic import SecretStr
from vega_datasets import local_data

from blocks import MinivizCredentials
from clients.errors import InputError
from demo.setup import emulator_aws_credentials
from emulators.launcher import running_emulators
from flows.miniviz_backfill import miniviz_backfill
from tasks.miniviz import SendingStopped
from tasks.run_state import IncompleteRun
from tasks.state import STATE_VARIABLE
from tests.conftest import TEST_TIME_SCALE

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PACED = 15 * TEST_TIME_SCALE  # the Pro interval on the emulator's scaled clock
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MIN = 60_000
PROJECTS = [
    {"project_id": "fast", "token": "mvz-fast-token", "plan": "pro", "data_interval": 0},
    {"project_id": "paced", "token": "mvz-paced-token", "plan": "pro"},
    {"project_id": "free", "token": "mvz-free-token", "plan": "free"},
]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("miniviz-config") / "emulators.json"
    config.write_text(
        json.dumps({"miniviz": {"projects": PROJECTS, "data_interval": {"free": 60, "pro": 15}}})
    )
    with running_emulators(
        only=["miniviz", "s3"], time_scale=TEST_TIME_SCALE, config_path=str(config)
    ) as emu:
        yield emu


@pytest.fixture(scope="module")
def svc(emu):
    return emu["miniviz"]


@pytest.fixture(scope="module")
def s3(emu):
    c = emu["s3"].credentials
    return boto3.client(
        "s3",
        endpoint_url=emu["s3"].url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )


@pytest.fixture(scope="module")
def blocks(emu, svc, prefect_harness):
    c = emu["s3"].credentials
    aws = emulator_aws_credentials(emu["s3"])
    S3Bucket(bucket_name=c["bucket"], credentials=aws).save("backfill-s3", overwrite=True)
    common = {"base_url": svc.url, "max_retry_seconds": 30}
    MinivizCredentials(
        project_id="fast", token=SecretStr("mvz-fast-token"), data_interval_seconds=0, **common
    ).save("backfill-fast", overwrite=True)
    MinivizCredentials(
        project_id="paced", token=SecretStr("mvz-paced-token"), data_interval_seconds=PACED, **common
    ).save("backfill-paced", overwrite=True)
    # no interval set: the plan's documented one (Free: 60 s)
    MinivizCredentials(project_id="free", token=SecretStr("mvz-free-token"), plan="free", **common).save(
        "backfill-free", overwrite=True
    )


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()


GROUPS = {
    "csv": ("sep", "encoding", "decimal"),
    "timestamps": ("timestamp_column", "timestamp_format", "epoch_unit", "timezone", "start", "end"),
    "events": ("label_column", "label_key", "metrics", "rename", "resample", "resample_how", "oversize"),
    "pacing": ("data_interval_seconds", "concurrency", "parallel_connections", "batch_size", "chunk_rows"),
    "outputs": ("journal", "report", "dead_letter", "state_root"),
}


def grouped(**flat):
    """The flow's parameters from flat names (timestamp_column -> timestamps.column, ...)."""
    params = {}
    for name, value in flat.items():
        group = next((g for g, names in GROUPS.items() if name in names), None)
        if group is None:
            params[name] = value
        else:
            field = "column" if name == "timestamp_column" else name
            params.setdefault(group, {})[field] = value
    return params


async def run_state(tmp_path: Path, **flat):
    """Run the flow; return (final state, summary, flow run id), the summary also of a Failed run."""
    flat.setdefault("journal", str(tmp_path / "journal.jsonl"))
    flat.setdefault("report", str(tmp_path / "report.csv"))
    state = await miniviz_backfill(**grouped(**flat), return_state=True)
    result = await state.result(raise_on_failure=False)
    summary = result.summary if isinstance(result, IncompleteRun) else result
    return state, summary, state.state_details.flow_run_id


async def run(tmp_path: Path, **flat):
    """Run the flow, expecting it Completed; return (summary, flow run id)."""
    state, summary, run_id = await run_state(tmp_path, **flat)
    assert state.is_completed(), state.message
    return summary, run_id


async def run_failed(tmp_path: Path, **flat):
    """Run the flow, expecting it Failed; return (message, summary)."""
    state, summary, _ = await run_state(tmp_path, **flat)
    assert state.is_failed(), "the run should have ended Failed"
    return state.message, summary


def stored_events(svc, project_id: str) -> list[tuple[str, int, str]]:
    got = svc.control("GET", "events", params={"project_id": project_id, "limit": 100_000})
    return sorted(
        (e["label_key"], e["timestamp"], json.dumps(e["payload"], sort_keys=True)) for e in got["events"]
    )


def key(label: str, ts: int, payload: dict) -> tuple[str, int, str]:
    return (label, ts, json.dumps(payload, sort_keys=True))


async def artifact(flow_run_id, name: str):
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[name])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    assert found, f"no artifact {name}"
    return found[-1]


# --- a CSV: time zones, labels, booleans, NaN, rejected rows --------------------------------------------


def history_csv(path: Path) -> list[tuple[str, int, str]]:
    """40 good rows (naive Paris times, two rooms) and 4 bad ones; returns the events Miniviz should hold."""
    paris = ZoneInfo("Europe/Paris")
    rows, expected = [], []
    for i in range(40):
        local = dt.datetime(2024, 1, 15, 8, 0) + dt.timedelta(minutes=i)
        temp = None if i % 7 == 0 else round(20 + i / 10, 1)
        row = {"time": local.isoformat(), "room": f"Room {1 + i % 2}", "temp_c": temp, "door": i % 3 == 0}
        row["status"] = "ok" if i % 5 else None
        rows.append(row)
        payload = {"door_open": int(i % 3 == 0)}
        if temp is not None:
            payload["temperature"] = temp
        if row["status"]:
            payload["status"] = "ok"
        ms = int(local.replace(tzinfo=paris).timestamp() * 1000)
        expected.append(key(f"Room_{1 + i % 2}", ms, payload))
    rows += [
        {"time": "not a time", "room": "Room 1", "temp_c": 1.0, "door": False, "status": "ok"},
        {"time": "2024-01-15T09:00:00", "room": None, "temp_c": 1.0, "door": False, "status": "ok"},
        {"time": "2024-01-15T09:01:00", "room": "Room 1", "temp_c": None, "door": None, "status": None},
        {"time": "2024-01-15T09:02:00", "room": "Room 1", "temp_c": 1.0, "door": True, "status": "x" * 450},
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return sorted(expected)


async def test_csv_backfill_lands_every_event_exactly_once(svc, blocks, tmp_path):
    expected = history_csv(tmp_path / "history.csv")
    state, summary, run_id = await run_state(
        tmp_path,
        source=str(tmp_path / "history.csv"),
        miniviz_block="backfill-fast",
        timestamp_column="time",
        timezone="Europe/Paris",
        label_column="room",
        metrics=["temp_c", "door", "status"],
        rename={"temp_c": "temperature", "door": "door_open"},
        concurrency=8,
        batch_size=16,
    )
    assert stored_events(svc, "fast") == expected  # content, and each exactly once
    got = svc.received()
    assert got["accepted"] == {"data": 40} and got["duplicates"] == {} and got["rejected_by_status"] == {}
    assert (summary.rows, summary.events, summary.events_sent, summary.events_failed) == (44, 40, 40, 0)
    assert summary.rejected_by_reason == {
        "timestamp_invalid": 1,
        "label_missing": 1,
        "no_metrics": 1,
        "value_too_big": 1,
    }
    # three rows the user must fix: the run says so; the row without any value is a gap, skipped
    assert state.is_failed() and (summary.rows_rejected, summary.rows_skipped) == (3, 1)
    assert state.message == (
        "44 items (events sent or planned, rows skipped or rejected): 40 done, 1 skipped, 3 rejected; "
        f"report {summary.report}, dead letters {summary.dead_letter}"
    )

    dead = pd.read_csv(summary.dead_letter)
    assert dead[["row", "status", "reason"]].values.tolist() == [
        [40, "rejected", "timestamp_invalid"],
        [41, "rejected", "label_missing"],
        [42, "skipped", "no_metrics"],
        [43, "rejected", "value_too_big"],
    ]
    assert "'not a time'" in dead.detail[0] and json.loads(dead.data[0])["time"] == "not a time"

    report = pd.read_csv(summary.report, keep_default_na=False)
    by_label = {r["label_key"]: r for r in report.to_dict("records")}
    assert by_label["Room_1"]["status"] == by_label["Room_2"]["status"] == "done"
    assert by_label["Room_1"]["sent"] + by_label["Room_2"]["sent"] == 40
    plan = await artifact(run_id, "miniviz-backfill-plan")
    assert "Room 1" in plan.data and "`Room_1`" in plan.data  # the label mapping is reported
    table = await artifact(run_id, "miniviz-backfill-summary")
    assert sum(row["sent"] for row in json.loads(table.data)) == 40
    progress = await artifact(run_id, "miniviz-backfill-progress")
    assert progress.data == 100.0

    # a second run finds everything in the journal: nothing is sent again (the bad rows are still there)
    _, again = await run_failed(
        tmp_path,
        source=str(tmp_path / "history.csv"),
        miniviz_block="backfill-fast",
        timestamp_column="time",
        timezone="Europe/Paris",
        label_column="room",
        metrics=["temp_c", "door", "status"],
        rename={"temp_c": "temperature", "door": "door_open"},
        report=str(tmp_path / "again.csv"),
    )
    assert (again.events_already_sent, again.events_sent) == (40, 0)
    assert svc.received()["accepted"] == {"data": 40}


# --- Parquet glob: epoch ms, fixed label, nested values, splitting -------------------------------------


async def test_parquet_glob_splits_wide_rows_and_rejects_nested_values(svc, blocks, tmp_path):
    expected = []
    for part in range(2):
        n = 30
        df = pd.DataFrame({"ts": [T0 + (part * n + i) * MIN for i in range(n)]})
        for k in range(10):
            df[f"m{k}"] = [float(part * 1000 + i * 10 + k) for i in range(n)]
        df["tags"] = [["a", "b"] if i % 10 == 3 else None for i in range(n)]  # a list: cannot be sent
        (tmp_path / "pq").mkdir(exist_ok=True)
        df.to_parquet(tmp_path / "pq" / f"part-{part}.parquet", index=False)
        for i in range(n):
            if i % 10 == 3:
                continue
            values = {f"m{k}": float(part * 1000 + i * 10 + k) for k in range(10)}
            first = {f"m{k}": values[f"m{k}"] for k in range(8)}
            expected += [
                key("greenhouse-1", T0 + (part * n + i) * MIN, first),
                key("greenhouse-1", T0 + (part * n + i) * MIN, {"m8": values["m8"], "m9": values["m9"]}),
            ]
    message, summary = await run_failed(
        tmp_path,
        source=str(tmp_path / "pq" / "*.parquet"),
        miniviz_block="backfill-fast",
        timestamp_column="ts",
        label_key="greenhouse-1",
        batch_size=25,
    )
    assert stored_events(svc, "fast") == sorted(expected)
    got = svc.received()
    assert got["accepted"] == {"data": 108} and got["duplicates"] == {}
    assert (summary.files, summary.rows, summary.rows_split, summary.events_sent) == (2, 60, 54, 108)
    assert summary.rejected_by_reason == {"value_nested": 6}
    assert "108 done, 6 rejected" in message
    dead = pd.read_csv(summary.dead_letter)
    assert set(dead.reason) == {"value_nested"} and sorted(dead.row) == [3, 3, 13, 13, 23, 23]
    assert json.loads(dead.data[0])["tags"] == ["a", "b"] and "tags=" in dead.detail[0]


# --- S3: input prefix, journal, report and dead letters ------------------------------------------------


async def test_s3_prefix_in_s3_journal_and_reports_out(svc, s3, blocks, tmp_path):
    bucket = "demo-bucket"
    s3.put_object(Bucket=bucket, Key="bf/history/_SUCCESS", Body=b"")  # not a table: left out
    expected = []
    for day in range(2):
        df = pd.DataFrame(
            {
                "timestamp": [T0 + (day * 10 + i) * MIN for i in range(10)],
                "label_key": "s3-sensor",
                "v": range(10),
            }
        )
        df.loc[4, "v"] = None  # the only metric empty: rejected
        s3.put_object(Bucket=bucket, Key=f"bf/history/day-{day}.csv", Body=df.to_csv(index=False).encode())
        expected += [
            key("s3-sensor", T0 + (day * 10 + i) * MIN, {"v": float(i)}) for i in range(10) if i != 4
        ]
    params = dict(
        source=f"s3://{bucket}/bf/history/",
        miniviz_block="backfill-fast",
        s3_bucket_block="backfill-s3",
        journal=f"s3://{bucket}/bf/state/",
        report=f"s3://{bucket}/bf/reports/backfill.parquet",
    )
    summary = await miniviz_backfill(**grouped(**params))  # Completed: the two empty rows are gaps, skipped
    assert stored_events(svc, "fast") == sorted(expected)
    assert (summary.files, summary.events_sent, summary.rows_rejected, summary.rows_skipped) == (2, 18, 0, 2)
    assert summary.dead_letter == f"s3://{bucket}/bf/reports/backfill-dead-letter.csv"
    report = pd.read_parquet(
        io.BytesIO(s3.get_object(Bucket=bucket, Key="bf/reports/backfill.parquet")["Body"].read())
    )
    assert report.sent.sum() == 18 and set(report.status) == {"done"}
    dead = pd.read_csv(
        io.BytesIO(s3.get_object(Bucket=bucket, Key="bf/reports/backfill-dead-letter.csv")["Body"].read())
    )
    assert list(dead.reason) == ["no_metrics", "no_metrics"]
    # the journal lives in S3: a second run resumes from it and sends nothing
    again = await miniviz_backfill(**grouped(**{**params, "report": f"s3://{bucket}/bf/reports/again.csv"}))
    assert (again.events_already_sent, again.events_sent) == (18, 0)
    assert svc.received()["accepted"] == {"data": 18}


# --- the state root: one setting for where every run keeps its state ---------------------------------------


@pytest.fixture
async def state_variable(prefect_harness):
    """Sets the ``pipelines_state`` Prefect variable for one test, and removes it after."""

    async def set_to(value: dict) -> None:
        await Variable.aset(STATE_VARIABLE, value, overwrite=True)

    yield set_to
    await Variable.aunset(STATE_VARIABLE)


async def test_a_state_root_in_s3_lets_a_run_resume_on_a_worker_in_another_directory(
    svc, blocks, s3, emu, tmp_path, monkeypatch, state_variable
):
    bucket = emu["s3"].credentials["bucket"]
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame(
        {"timestamp": [T0 + i * MIN for i in range(12)], "label_key": "root-sensor", "v": range(12)}
    ).to_csv(data / "history.csv", index=False)
    await state_variable(
        {"root": f"s3://{bucket}/root", "s3_bucket_block": "backfill-s3", "local_root": str(data)}
    )
    params = dict(source=str(data / "history.csv"), miniviz_block="backfill-fast")

    for worker in ("worker-a", "worker-b"):  # two workers, each started in its own directory
        (tmp_path / worker).mkdir()
        monkeypatch.chdir(tmp_path / worker)
        summary = await miniviz_backfill(**params)
        assert summary.journal.startswith(f"s3://{bucket}/root/miniviz-backfill/"), summary.journal
        assert summary.report.startswith(f"s3://{bucket}/root/reports/miniviz-backfill-"), summary.report
        assert not list((tmp_path / worker).iterdir())  # nothing written to the worker's disk
    assert (summary.events_already_sent, summary.events_sent) == (12, 0)  # worker-b resumed from S3
    assert svc.received()["accepted"] == {"data": 12}

    outside = tmp_path / "elsewhere.csv"  # a UI user cannot make the worker read or write other files
    for flat, parameter in (
        ({"source": str(outside)}, "source"),
        ({"report": "/etc/cron.d/x.csv"}, "outputs"),
    ):
        with pytest.raises(
            InputError, match=f"{parameter}.*outside the folders runs may use.*allowed: {data}"
        ):
            await miniviz_backfill(**grouped(**{**params, **flat}))


async def test_a_state_variable_that_is_not_valid_is_refused_with_its_name(blocks, tmp_path, state_variable):
    await state_variable({"root": "s3://b/p", "colour": "blue"})
    with pytest.raises(InputError, match="pipelines_state.*colour"):
        await miniviz_backfill(source=str(tmp_path / "x.csv"), miniviz_block="backfill-fast")


# --- resampling across chunk boundaries ----------------------------------------------------------------


async def test_resampled_backfill_keeps_buckets_whole_across_chunks(svc, blocks, tmp_path):
    labels = ["north", "south", "east"]
    rows = [
        {"epoch_s": (T0 + i * MIN) // 1000, "site": label, "t": float(i * 3 + j), "n": i % 4}
        for i in range(120)
        for j, label in enumerate(labels)
    ]
    df = pd.DataFrame(rows)
    df.to_csv(tmp_path / "minutes.csv", index=False)
    summary, _ = await run(
        tmp_path,
        source=str(tmp_path / "minutes.csv"),
        miniviz_block="backfill-fast",
        timestamp_column="epoch_s",
        label_column="site",
        resample="15min",
        chunk_rows=100,  # 15-minute buckets of 45 rows straddle every chunk boundary
    )
    df["bucket"] = df.epoch_s * 1000 // (15 * MIN) * (15 * MIN)
    means = df.groupby(["site", "bucket"])[["t", "n"]].mean()
    expected = sorted(key(site, int(bucket), {"t": m.t, "n": m.n}) for (site, bucket), m in means.iterrows())
    assert len(expected) == 3 * 8
    assert stored_events(svc, "fast") == expected
    assert svc.received()["duplicates"] == {} and summary.events_sent == 24 and not summary.rejected_by_reason


# --- pacing and plan mode -------------------------------------------------------------------------------


async def test_paced_backfill_never_gets_a_429(svc, blocks, tmp_path):
    df = pd.DataFrame({"timestamp": [T0 + i * MIN for i in range(8)], "v": range(8)})
    df.to_csv(tmp_path / "few.csv", index=False)
    summary, _ = await run(
        tmp_path,
        source=str(tmp_path / "few.csv"),
        miniviz_block="backfill-paced",
        label_key="meter-7",
        batch_size=3,
    )
    got = svc.received()
    assert got["accepted"] == {"data": 8} and got["rejected_by_status"] == {} and got["duplicates"] == {}
    assert summary.events_sent == 8 and summary.interval_seconds == pytest.approx(PACED)
    # every request was spaced at the socket (first byte out, first byte of the answer in)
    assert summary.send_timing["calls"] == 8 and summary.send_timing["wire_timed_calls"] == 8
    assert [e[1] for e in stored_events(svc, "paced")] == [T0 + i * MIN for i in range(8)]


async def test_plan_mode_sends_nothing_and_estimates_the_time(svc, blocks, tmp_path):
    history_csv(tmp_path / "history.csv")
    params = dict(
        source=str(tmp_path / "history.csv"),
        timestamp_column="time",
        timezone="Europe/Paris",
        label_column="room",
        dry_run=True,
    )
    # the dry run ends as the real run would: Failed, three rows need fixing
    state, summary, run_id = await run_state(tmp_path, miniviz_block="backfill-paced", **params)
    assert state.is_failed() and "1 skipped, 40 deferred, 3 rejected" in state.message
    assert svc.received()["requests"] == {}  # nothing sent
    assert (summary.events, summary.events_to_send, summary.events_sent) == (40, 40, 0)
    assert summary.estimated_seconds == pytest.approx(40 * PACED)
    assert summary.rejected_by_reason["timestamp_invalid"] == 1
    plan = await artifact(run_id, "miniviz-backfill-plan")
    assert "dry run: nothing sent" in plan.data and "**events to send** | **40**" in plan.data
    assert "| **estimated time** | **0:00:06** (6 s) |" in plan.data  # 40 x 0.15 s
    assert "at the Pro plan limit (15 s) | 0:10:00" in plan.data and "(60 s) | 0:40:00" in plan.data
    assert "`timestamp_invalid`" in plan.data
    assert len(pd.read_csv(summary.dead_letter)) == 4  # the plan already lists what would be rejected

    # a block without an interval: the plan's documented rate (Free: one event per 60 s)
    _, free, run_id = await run_state(tmp_path, miniviz_block="backfill-free", **params)
    assert free.estimated_seconds == 40 * 60 and free.interval_seconds == 60
    assert "one event per 60 s (free plan)" in (await artifact(run_id, "miniviz-backfill-plan")).data
    assert svc.received()["requests"] == {}


# --- failures: reported, dead-lettered, sent by the next run; a refused token stops the run -------------


async def test_failed_events_are_reported_and_sent_by_the_next_run(svc, blocks, tmp_path):
    await MinivizCredentials(
        project_id="fast",
        token=SecretStr("mvz-fast-token"),
        base_url=svc.url,
        data_interval_seconds=0,
        max_attempts=1,  # no retry: a 503 is a failed event
    ).asave("backfill-fast-noretry", overwrite=True)
    df = pd.DataFrame({"timestamp": [T0 + i * MIN for i in range(20)], "v": range(20)})
    df.to_csv(tmp_path / "flaky.csv", index=False)
    params = dict(
        source=str(tmp_path / "flaky.csv"), miniviz_block="backfill-fast-noretry", label_key="flaky"
    )
    svc.faults(error_rate=0.3, error_status=503, seed=7)
    message, first = await run_failed(tmp_path, **params)
    assert f"{first.events_failed} failed" in message and str(tmp_path / "report.csv") in message
    assert first.events_failed > 0 and first.events_sent + first.events_failed == 20
    dead = pd.read_csv(first.dead_letter)
    assert (dead.status == "failed").sum() == first.events_failed and dead.detail.str.contains("503").all()
    assert set(pd.read_csv(first.report).status) == {"partial"}
    svc.faults()
    second, _ = await run(tmp_path, **params, report=str(tmp_path / "second.csv"))
    assert (second.events_already_sent, second.events_sent, second.events_failed) == (
        first.events_sent,
        first.events_failed,
        0,
    )
    assert [e[1] for e in stored_events(svc, "fast")] == [T0 + i * MIN for i in range(20)]  # each once
    assert svc.received()["duplicates"] == {}


async def test_a_refused_token_fails_the_run_and_still_writes_the_report(svc, blocks, tmp_path):
    await MinivizCredentials(project_id="fast", token=SecretStr("wrong-token-123"), base_url=svc.url).asave(
        "backfill-wrong", overwrite=True
    )
    pd.DataFrame({"timestamp": [T0], "v": [1]}).to_csv(tmp_path / "one.csv", index=False)
    state = await miniviz_backfill(
        **grouped(
            source=str(tmp_path / "one.csv"),
            miniviz_block="backfill-wrong",
            label_key="x",
            data_interval_seconds=0,
            journal=str(tmp_path / "j.jsonl"),
            report=str(tmp_path / "r.csv"),
        ),
        return_state=True,
    )
    assert state.is_failed()
    error = await state.result(raise_on_failure=False)
    assert isinstance(error, SendingStopped) and "refused the project or token" in str(error)
    assert "403" in str(error) and "wrong-token-123" not in str(error) + str(state.message)
    report = pd.read_csv(tmp_path / "r.csv")
    assert report.status.tolist() == ["partial"] and report.failed.tolist() == [report.events[0]]
    assert "the run stopped early" in report.error[0]  # every event failed, with the reason


# --- real-world historical files: the run's final state tells the truth --------------------------------------

CO2 = os.path.join(os.path.dirname(statsmodels.datasets.co2.__file__), "co2.csv")
MS_1958_03_29 = -371_174_400_000


async def test_co2_from_1958_lands_whole_and_completes(svc, blocks, tmp_path):
    """YYYYMMDD integers from 1958: dates before 1970 (negative ms) and 2001; the 59 gaps are skipped."""
    state, summary, _ = await run_state(
        tmp_path, source=CO2, miniviz_block="backfill-fast", timestamp_column="date", label_key="mauna-loa"
    )
    assert state.is_completed()
    assert (summary.events_sent, summary.rows_skipped, summary.rows_rejected) == (2225, 59, 0)
    stamps = [e[1] for e in stored_events(svc, "fast")]
    assert min(stamps) == MS_1958_03_29 and len(stamps) == 2225 and svc.received()["duplicates"] == {}


async def test_textual_months_need_a_format_or_every_row_is_rejected(svc, blocks, tmp_path):
    params = dict(
        source=local_data.stocks.filepath,
        miniviz_block="backfill-fast",
        timestamp_column="date",
        label_column="symbol",
        dry_run=True,
    )
    message, summary = await run_failed(tmp_path, **params)
    assert summary.rejected_by_reason == {"timestamp_invalid": 560}
    assert message.startswith("560 items (events sent or planned, rows skipped or rejected): 560 rejected")
    dead = pd.read_csv(summary.dead_letter)
    assert dead.detail[0].endswith("date='Jan 1 2000'") and set(dead.status) == {"rejected"}
    planned, _ = await run(tmp_path, **params, timestamp_format="%b %d %Y", report=str(tmp_path / "ok.csv"))
    assert (planned.events_to_send, planned.rows_rejected) == (560, 0)
    assert svc.received()["requests"] == {}


def european_co2(path: Path, rows: int = 30) -> Path:
    """co2 as a European spreadsheet exports it: semicolons, decimal commas, latin-1 accents."""
    df = pd.read_csv(CO2).head(rows).dropna()
    df["site"] = "Mauna Loa, Hawaï"
    path.write_bytes(df.to_csv(index=False, sep=";", decimal=",").encode("latin-1"))
    return path


async def test_semicolons_decimal_commas_and_latin1_are_detected_and_sent(svc, blocks, tmp_path):
    src = european_co2(tmp_path / "co2-eu.csv")
    summary, _ = await run(
        tmp_path, source=str(src), miniviz_block="backfill-fast", timestamp_column="date", label_key="ml"
    )
    first = stored_events(svc, "fast")[0]
    assert first[1] == MS_1958_03_29 and json.loads(first[2]) == {"co2": 316.1, "site": "Mauna Loa, Hawaï"}
    report = pd.read_csv(summary.report)
    assert report.read_as[0] == "sep ';' (detected), encoding 'cp1252' (detected), decimal ',' (detected)"


async def test_unreadable_or_unmappable_files_end_the_run_failed(svc, blocks, tmp_path):
    src = european_co2(tmp_path / "co2-eu.csv")
    base = dict(source=str(src), miniviz_block="backfill-fast", timestamp_column="date", label_key="ml")
    cases = [
        ({"encoding": "utf-8"}, "cannot be read as CSV: UnicodeDecodeError"),
        ({"sep": ",", "decimal": "."}, "available: ['date;co2;site']; the header holds a separator: set sep"),
        ({"metrics": ["c02"]}, "['c02'] not in"),
        ({"label_key": "", "label_column": "station"}, "['station'] not in the file"),
    ]
    for i, (change, fragment) in enumerate(cases):
        report = tmp_path / f"r{i}.csv"
        message, summary = await run_failed(tmp_path, **{**base, **change}, report=str(report))
        assert fragment in message and f"report {report}" in message, message
        assert summary.events_sent == 0 and summary.files_failed == 1
        row = pd.read_csv(report).iloc[0]
        assert row.status == "failed" and fragment in row.error
    message, _ = await run_failed(tmp_path, **{**base, "metrics": ["c02"]}, report=str(tmp_path / "m.csv"))
    assert "available: ['date', 'co2', 'site']" in message  # the file's real columns
    assert svc.received()["requests"] == {}


async def test_ragged_rows_are_rejected_with_their_line_and_the_rest_is_sent(svc, blocks, tmp_path):
    src = tmp_path / "ragged.csv"
    src.write_text("date,co2\n19580329,316.1\n19580405,317.3,oops\n19580412,317.6\n")
    message, summary = await run_failed(
        tmp_path, source=str(src), miniviz_block="backfill-fast", timestamp_column="date", label_key="ml"
    )
    assert "2 done, 1 rejected" in message and summary.rejected_by_reason == {"bad_line": 1}
    dead = pd.read_csv(summary.dead_letter)
    assert dead.reason.tolist() == ["bad_line"] and "line 3: expected 2 fields, saw 3" in dead.detail[0]
    assert len(stored_events(svc, "fast")) == 2


async def test_empty_sources_end_the_run_failed(svc, blocks, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "header-only.csv").write_text("timestamp,label_key,v\n")
    message, summary = await run_failed(tmp_path, source=str(folder), miniviz_block="backfill-fast")
    assert message.startswith("nothing to send in 1 file(s). 1 items") and summary.events == 0
    (folder / "zero-bytes.csv").write_bytes(b"")
    message, _ = await run_failed(tmp_path, source=str(folder), miniviz_block="backfill-fast")
    assert "zero-bytes.csv: cannot be read as CSV" in message and "No columns to parse" in message


# --- fan-out: shards of the source's files, gathered into one report ------------------------------------


def stock_files(folder: Path) -> dict[str, Path]:
    """vega_datasets' monthly stock prices (2000-2010), one CSV per symbol; AAPL's holds one exact duplicate
    row (skipped by design, listed in the dead letters)."""
    folder.mkdir()
    stocks = pd.read_csv(local_data.stocks.filepath)
    files = {}
    for symbol, rows in stocks.groupby("symbol"):
        if symbol == "AAPL":
            rows = pd.concat([rows, rows.tail(1)])
        rows.to_csv(folder / f"{symbol}.csv", index=False)
        files[symbol] = folder / f"{symbol}.csv"
    return files


def shards_in_this_process(monkeypatch, crashing: set[int]) -> Counter:
    """``run_deployment`` as the parent calls it, running each shard's flow here; the shards in ``crashing``
    crash every time (their worker dies). Returns the runs per shard number."""
    runs: Counter = Counter()

    async def run_deployment(name: str, parameters: dict, **_):
        assert name == "miniviz-backfill/miniviz-backfill-shard"
        number = parameters["fan_out"]["shard"]["number"]
        runs[number] += 1
        if number in crashing:
            return SimpleNamespace(state=Crashed(message="the worker died"))
        return SimpleNamespace(state=await miniviz_backfill(**parameters, return_state=True))

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    return runs


def stock_params(tmp_path: Path, report: str) -> dict:
    return dict(
        source=str(tmp_path / "stocks" / "*.csv"),
        miniviz_block="backfill-fast",
        timestamp_column="date",
        timestamp_format="%b %d %Y",
        label_column="symbol",
        concurrency=8,
        journal=str(tmp_path / "state" / "journal.jsonl"),
        report=str(tmp_path / report),
        state_root=str(tmp_path / "state"),
        fan_out={"shard_size": 2, "max_reruns": 1},
    )


async def test_a_fanned_out_backfill_writes_one_report_and_one_dead_letter_file(
    svc, blocks, tmp_path, monkeypatch
):
    files = stock_files(tmp_path / "stocks")
    runs = shards_in_this_process(monkeypatch, crashing=set())

    summary = await miniviz_backfill(
        **grouped(**stock_params(tmp_path, "report.csv"))
    )  # Completed, or it raises

    assert runs == {1: 1, 2: 1, 3: 1}  # 5 files, 2 per shard: AAPL AMZN | GOOG IBM | MSFT
    got = svc.received()
    assert got["accepted"] == {"data": 560} and got["duplicates"] == {} and got["rejected_by_status"] == {}
    assert (summary.files, summary.events, summary.events_sent, summary.rows_skipped) == (5, 560, 560, 1)
    report = pd.read_csv(summary.report, keep_default_na=False)
    assert sorted(report.source) == sorted(map(str, files.values())) and set(report.status) == {"done"}
    assert dict(zip(report.label_key, report.sent, strict=True)) == {
        "AAPL": 123, "AMZN": 123, "GOOG": 68, "IBM": 123, "MSFT": 123
    }  # fmt: skip
    dead = pd.read_csv(summary.dead_letter)  # the job's one file, from the shards' own
    assert dead[["source", "status", "reason"]].values.tolist() == [
        [str(files["AAPL"]), "skipped", "duplicate"]
    ]
    shard_reports = sorted(p.name for p in (tmp_path / "state" / "reports").rglob("shard-*.parquet"))
    assert shard_reports == ["shard-1.parquet", "shard-2.parquet", "shard-3.parquet"]


async def test_a_shard_that_never_finished_fails_the_run_and_a_re_run_resumes_it(
    svc, blocks, tmp_path, monkeypatch
):
    files = stock_files(tmp_path / "stocks")
    crashing = {2}
    runs = shards_in_this_process(monkeypatch, crashing)

    message, summary = await run_failed(tmp_path, **stock_params(tmp_path, "report.csv"))

    assert runs == {1: 1, 2: 2, 3: 1}  # shard 2 started again once (max_reruns), then given up
    why = "shard 2 of 3 did not finish (its last run ended Crashed after 2 runs): the worker died"
    assert message.startswith(f"{files['GOOG']}: {why}; a re-run resumes it; {files['IBM']}: {why}")
    assert message.endswith(f"370 items (events sent or planned, rows skipped or rejected): 369 done, "
                            f"1 skipped; report {summary.report}, dead letters {summary.dead_letter}")  # fmt: skip
    report = pd.read_csv(summary.report, keep_default_na=False).set_index("source")
    for symbol in ("GOOG", "IBM"):  # its files failed, with the reason; the others sent
        assert report.loc[str(files[symbol]), "status"] == "failed"
        assert report.loc[str(files[symbol]), "error"] == f"{why}; a re-run resumes it"
    assert set(report.status.drop([str(files["GOOG"]), str(files["IBM"])])) == {"done"}
    assert svc.received()["accepted"] == {"data": 369}

    runs.clear()
    crashing.clear()
    again = await miniviz_backfill(
        **grouped(**stock_params(tmp_path, "again.csv"))
    )  # no crash now: Completed
    assert runs == {1: 1, 2: 1, 3: 1}
    assert (again.events_already_sent, again.events_sent) == (369, 191)  # the shards' one journal
    got = svc.received()
    assert got["accepted"] == {"data": 560} and got["duplicates"] == {}


# --- kill -9 mid-run, then resume -----------------------------------------------------------------------

KILL_SCRIPT = """
import asyncio, json, sys
from flows.miniviz_backfill import miniviz_backfill
asyncio.run(miniviz_backfill(**json.loads(sys.argv[1])))
"""


def test_kill_9_mid_run_then_resume_loses_nothing(svc, blocks, tmp_path):
    """kill -9 the flow in a subprocess after Miniviz accepted some events, re-run: every row arrives, and
    the re-run sends again at most the events that were in flight (``concurrency``)."""
    n, concurrency = 600, 8
    df = pd.DataFrame(
        {
            "timestamp": [T0 + i * 1000 for i in range(n)],
            "label_key": [f"dev_{i % 5}" for i in range(n)],
            "v": range(n),
        }
    )
    df.to_csv(tmp_path / "big.csv", index=False)
    expected = sorted(key(f"dev_{i % 5}", T0 + i * 1000, {"v": i}) for i in range(n))
    params = grouped(
        source=str(tmp_path / "big.csv"),
        miniviz_block="backfill-fast",
        concurrency=concurrency,
        batch_size=100,
        journal=str(tmp_path / "journal.jsonl"),
        report=str(tmp_path / "killed.csv"),
    )
    svc.faults(latency=3)  # 30 ms per request: the run lasts long enough to be killed mid-way
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(params)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if svc.received()["accepted"].get("data", 0) >= 170:  # inside the second batch
                break
            assert proc.poll() is None, "the flow ended before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("Miniviz never accepted 170 events")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    accepted_at_kill = svc.received()["accepted"]["data"]
    assert accepted_at_kill < n, "the kill came too late to test anything"
    svc.faults()

    params["outputs"]["report"] = str(tmp_path / "resumed.csv")
    summary = asyncio.run(miniviz_backfill(**params))
    got = svc.received()
    duplicates = got["duplicates"].get("data", 0)
    assert sorted(set(stored_events(svc, "fast"))) == expected  # no row lost
    assert duplicates <= concurrency  # the bound: events in flight (sent, not yet journaled) at the kill
    assert got["accepted"]["data"] == n + duplicates
    assert summary.events_already_sent + summary.events_sent == n and summary.events_failed == 0
    assert summary.events_already_sent >= accepted_at_kill - concurrency
    report = pd.read_csv(summary.report)
    assert set(report.status) == {"done"}
