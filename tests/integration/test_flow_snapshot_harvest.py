"""The snapshot harvest flow against the VizioSense, Miniviz and S3 emulators, with a real Prefect API.

Time scale 0.01: VizioSense's documented 20 s wait is 0.2 s. The Miniviz emulator has two Pro projects: one
with the data limit off (``harvest-fast``) and one with the default Pro data interval (15 s -> 0.15 s). Its
image interval is raised to 3,000 emulated s (30 s real) and the blocks pace at 30 s, so "harvested too soon"
really is too soon for the emulator: a flow that pushed anyway would collect 429s.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import boto3
import httpx
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect_aws import S3Bucket
from pydantic import SecretStr

from blocks import MinivizCredentials, VizioSenseCredentials
from clients.miniviz import LABEL_KEY_RE, MAX_IMAGE_BYTES
from demo.setup import emulator_aws_credentials
from emulators.launcher import running_emulators
from flows.snapshot_harvest import harvest_snapshots
from tasks import fit_pool
from tasks.harvest import decode_metadata_value, slugify
from tests.conftest import TEST_TIME_SCALE

pytestmark = pytest.mark.integration

IMAGE_INTERVAL = 30.0  # real seconds, for the emulator and the blocks alike
MINIVIZ_CONFIG = {
    "projects": [
        {"project_id": "harvest-fast", "token": "mvz-harvest-fast", "plan": "pro", "data_interval": 0},
        {"project_id": "harvest-paced", "token": "mvz-harvest-paced", "plan": "pro"},  # Pro: 15 s
    ],
    "image_interval": IMAGE_INTERVAL / TEST_TIME_SCALE,
}
FAST = {
    "ready_after_seconds": 20 * TEST_TIME_SCALE,
    "poll_interval_seconds": 0.02,
    "image_timeout_seconds": 5.0,
}
TOTAL, OFFLINE = 13, 2  # the demo fleet: 1 lobby camera + 12 generated, every 5th offline
FOLDER = "harvest-test"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("harvest-emulators") / "emulators.json"
    config.write_text(json.dumps({"miniviz": MINIVIZ_CONFIG}))
    with running_emulators(
        only=["viziosense", "miniviz", "s3"], time_scale=TEST_TIME_SCALE, config_path=str(config)
    ) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _reset(emu):
    for service in emu.values():
        service.reset()


@pytest.fixture(scope="module")
def s3(emu):
    c = emu["s3"].credentials
    return boto3.client("s3", endpoint_url=emu["s3"].url, aws_access_key_id=c["aws_access_key_id"],
                        aws_secret_access_key=c["aws_secret_access_key"], region_name=c["region_name"])  # fmt: skip


@pytest.fixture(scope="module")
def blocks(emu, prefect_harness):
    """The blocks the flow loads by name, pointing at the emulators (scaled intervals)."""
    v = emu["viziosense"]
    VizioSenseCredentials(base_url=v.url, api_key=SecretStr(v.credentials["api_key"])).save(
        "vzs-harvest-test", overwrite=True
    )
    for project, data_interval in (("harvest-fast", 0.0), ("harvest-paced", 15 * TEST_TIME_SCALE)):
        MinivizCredentials(
            project_id=project,
            token=SecretStr(f"mvz-{project}"),
            base_url=emu["miniviz"].url,
            data_interval_seconds=data_interval,
            image_interval_seconds=IMAGE_INTERVAL,
        ).save(f"mvz-{project}", overwrite=True)
    c = emu["s3"].credentials
    credentials = emulator_aws_credentials(emu["s3"])
    S3Bucket(bucket_name=c["bucket"], credentials=credentials, bucket_folder=FOLDER).save(
        "s3-harvest-test", overwrite=True
    )
    return {"viziosense_block": "vzs-harvest-test", "s3_bucket_block": "s3-harvest-test"}


def run_args(blocks, tmp_path, project: str | None = "harvest-fast", **kw):
    """Flow arguments: test blocks, scaled waits, and a pacing state + report under tmp_path."""
    return {
        **blocks,
        "miniviz_block": f"mvz-{project}" if project else None,
        "state": str(tmp_path / "pacing.json"),
        "report": str(tmp_path / kw.pop("report_name", "report.csv")),
        **FAST,
        **kw,
    }


async def fleet(emu) -> dict[str, dict]:
    """The emulator's devices by uuid (every page)."""
    v = emu["viziosense"]
    creds = VizioSenseCredentials(base_url=v.url, api_key=SecretStr(v.credentials["api_key"]))
    async with creds.get_client() as client:
        return {d.uuid: d.model_dump() for d in await client.list_all_devices()}


def report_of(args) -> pd.DataFrame:
    return pd.read_csv(args["report"]).set_index("device_uuid")


def empty(column: pd.Series) -> pd.Series:
    return column.isna() | (column.astype(str) == "")


async def artifacts_of(flow_run_id) -> dict[str, object]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        progress = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["snapshot-harvest-progress"]))
        )
    by_key = {a.key: a for a in found}
    by_key.update({a.key: a for a in progress if a.flow_run_id == flow_run_id})
    return by_key


# --- the demo fleet ------------------------------------------------------------------------------------
async def test_demo_fleet_harvest_stores_originals_pushes_fitted_images_and_reports(
    emu, s3, blocks, tmp_path
):
    devices = await fleet(emu)
    args = run_args(blocks, tmp_path)
    state = await harvest_snapshots(**args, return_state=True)
    summary = await state.result()
    assert (summary.cameras, summary.done, summary.skipped, summary.failed, summary.partial) == (
        TOTAL, TOTAL - OFFLINE, OFFLINE, 0, 0)  # fmt: skip
    assert summary.originals_stored == 2 * (TOTAL - OFFLINE)
    assert (summary.images_pushed, summary.data_events_sent) == (TOTAL - OFFLINE, TOTAL)  # data limit off

    df = report_of(args)
    assert set(df.index) == set(devices)
    online = df[df.status == "done"]
    offline = df[df.status == "skipped"]
    assert {u for u, d in devices.items() if not d["is_online"]} == set(offline.index)
    assert offline.reason.str.startswith("offline").all() and empty(offline.s3_raw_key).all()

    # Originals: the documented layout (S3Bucket folder first), JPEG bytes, ASCII metadata.
    for uuid, row in online.iterrows():
        at = datetime.fromisoformat(row.requested_at)
        stamp = f"{at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z"
        for kind in ("raw", "annotated"):
            key = row[f"s3_{kind}_key"]
            assert key == f"{FOLDER}/snapshots/{uuid}/{at:%Y/%m/%d}/{stamp}_{kind}.jpg"
            obj = s3.get_object(Bucket="demo-bucket", Key=key)
            body = obj["Body"].read()
            assert body[:3] == b"\xff\xd8\xff" and len(body) == row[f"bytes_{kind}"]
            meta = obj["Metadata"]
            assert meta["device-name"] == devices[uuid]["name"] and meta["device-uuid"] == uuid
            assert meta["geo-city"] == devices[uuid]["geo_city"]
            assert meta["geo-country"] == devices[uuid]["geo_country"]
            assert meta["requested-at"] == f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond // 1000:03d}Z"
            assert meta["image-kind"] == kind
        assert row.seconds_until_ready >= FAST["ready_after_seconds"]
        assert LABEL_KEY_RE.match(row.label_key) and row.label_key.startswith(slugify(row.device_name))

    # Miniviz: one fitted image per online camera (they are ~280 KB: every one had to be fitted).
    assert (online.bytes_before_fit > MAX_IMAGE_BYTES).all() and (
        online.bytes_after_fit <= MAX_IMAGE_BYTES
    ).all()
    assert (online.fit_width == 1280).all()  # quality gave way, resolution did not
    got = emu["miniviz"].received()
    assert got["accepted"] == {"image": TOTAL - OFFLINE, "data": TOTAL}
    assert got["rejected_by_status"] == {} and got["duplicates"] == {}
    pushed = {e["label_key"]: e for e in got["recent_accepted"] if e["op"] == "image"}
    assert set(pushed) == set(online.label_key)
    assert all(e["bytes"] <= MAX_IMAGE_BYTES for e in pushed.values())
    creds = await MinivizCredentials.aload("mvz-harvest-fast")
    async with creds.get_client() as client:
        stored = await client.get_image(online.iloc[0].miniviz_image_id)
    assert len(stored.content) == online.iloc[0].bytes_after_fit
    events = httpx.get(f"{emu['miniviz'].url}/_emulator/events", params={"project_id": "harvest-fast"}).json()
    payloads = {e["label_key"]: e["payload"] for e in events["events"]}
    assert set(payloads) == set(df.label_key)
    first = online.iloc[0]
    assert payloads[first.label_key] == {"online": 1, "ok": 1, "bytes": first.bytes_raw,
                                         "bytes_fitted": first.bytes_after_fit,
                                         "seconds_until_ready": first.seconds_until_ready}  # fmt: skip
    assert payloads[offline.iloc[0].label_key] == {"online": 0, "ok": 0, "bytes": 0}

    # Artifacts: progress, summary, one row per camera, failures, presigned links (only there).
    arts = await artifacts_of(state.state_details.flow_run_id)
    assert {"snapshot-harvest-summary", "snapshot-harvest-cameras", "snapshot-harvest-failures",
            "snapshot-harvest-links", "snapshot-harvest-progress"} <= set(arts)  # fmt: skip
    assert arts["snapshot-harvest-progress"].data == 100.0
    assert len(json.loads(arts["snapshot-harvest-cameras"].data)) == TOTAL
    links = re.findall(r"\[raw\]\((http[^)]+)\)", arts["snapshot-harvest-links"].data)
    assert len(links) == TOTAL - OFFLINE and all("Signature=" in link for link in links)
    assert httpx.get(links[0]).content[:3] == b"\xff\xd8\xff"  # a working presigned GET
    assert "Signature" not in (tmp_path / "report.csv").read_text()  # never in the report


async def test_immediate_second_harvest_defers_every_image_push_without_a_429(emu, s3, blocks, tmp_path):
    """The issue's "done when": run 2 knows what run 1 sent (pacing state, here in S3), so it never pushes
    too soon, although it has a new Miniviz client whose pacers start empty."""
    state = "s3://demo-bucket/pacing/harvest-paced.json"
    first = await harvest_snapshots(
        **run_args(
            blocks,
            tmp_path,
            "harvest-paced",
            data_event_budget_seconds=0.4,
            report_name="r1.csv",
            state=state,
        )  # fmt: skip
    )
    assert first.images_pushed == TOTAL - OFFLINE and first.images_deferred == 0 and first.state == state
    saved = json.loads(s3.get_object(Bucket="demo-bucket", Key="pacing/harvest-paced.json")["Body"].read())
    assert sum("image" in times for times in saved["labels"].values()) == TOTAL - OFFLINE
    # Pro data limit (one event per 15 s per project, scaled): some events sent, the rest deferred.
    assert first.data_events_sent >= 1 and first.data_events_deferred >= 1
    assert first.data_events_sent + first.data_events_deferred == TOTAL

    second_args = run_args(
        blocks, tmp_path, "harvest-paced", data_event_budget_seconds=0.4, report_name="r2.csv", state=state
    )
    second = await harvest_snapshots(**second_args)
    assert second.done == TOTAL - OFFLINE and second.originals_stored == 2 * (
        TOTAL - OFFLINE
    )  # S3 still done
    assert second.images_pushed == 0 and second.images_deferred == TOTAL - OFFLINE
    df = report_of(second_args)
    deferred = df[df.image_push == "deferred"]
    assert len(deferred) == TOTAL - OFFLINE
    assert deferred.image_push_reason.str.contains("harvested too soon").all()
    assert deferred.image_push_reason.str.contains(f"one image per label every {IMAGE_INTERVAL:g} s").all()
    assert empty(deferred.bytes_after_fit).all()  # nothing fitted for an image that cannot go out

    got = emu["miniviz"].received()
    assert got["accepted"]["image"] == TOTAL - OFFLINE  # run 1 only
    assert "429" not in got["rejected_by_status"] and got["rejected_by_status"] == {}
    assert got["accepted"]["data"] == first.data_events_sent + second.data_events_sent
    # Stalest first: run 2's data events went to cameras run 1 had to defer.
    r1 = pd.read_csv(tmp_path / "r1.csv")
    assert not set(r1[r1.data_event == "sent"].label_key) & set(df[df.data_event == "sent"].label_key)


# --- failures ------------------------------------------------------------------------------------------
async def test_a_camera_whose_image_request_fails_is_reported_while_the_rest_succeed(emu, blocks, tmp_path):
    devices = await fleet(emu)
    broken = next(u for u, d in devices.items() if d["is_online"])
    emu["viziosense"].faults(error_rate=1.0, error_status=500, path_pattern=f"/devices/{broken}/image$")
    args = run_args(blocks, tmp_path)
    summary = await harvest_snapshots(**args)
    assert (summary.done, summary.failed, summary.skipped) == (TOTAL - OFFLINE - 1, 1, OFFLINE)
    row = report_of(args).loc[broken]
    assert row.status == "failed" and row.reason.startswith("viziosense request_image: HTTP 500")
    assert pd.isna(row.s3_raw_key) and row.image_push == "skipped"
    assert row.data_event == "sent"  # the dashboard still hears about it: ok = 0
    assert emu["miniviz"].received()["accepted"]["image"] == TOTAL - OFFLINE - 1


async def test_failed_annotated_downloads_leave_partial_cameras_with_the_raw_pushed(emu, blocks, tmp_path):
    devices = await fleet(emu)
    chosen = [u for u, d in devices.items() if d["is_online"]][:2]
    emu["viziosense"].faults(error_rate=1.0, error_status=500, path_pattern="_annotated_image$")
    args = run_args(blocks, tmp_path, device_uuids=chosen)
    summary = await harvest_snapshots(**args)
    assert (summary.cameras, summary.partial, summary.originals_stored, summary.images_pushed) == (2, 2, 2, 2)
    df = report_of(args)
    assert (~empty(df.s3_raw_key)).all() and empty(df.s3_annotated_key).all()
    assert df.reason.str.contains(r"fetch_image\(annotated\).*HTTP 500").all()


async def test_the_run_fails_only_when_every_camera_failed(emu, blocks, tmp_path):
    devices = await fleet(emu)
    chosen = [u for u, d in devices.items() if d["is_online"]][:2]
    emu["viziosense"].faults(error_rate=1.0, error_status=500, path_pattern="/image")
    args = run_args(blocks, tmp_path, device_uuids=chosen)
    state = await harvest_snapshots(**args, return_state=True)
    assert state.is_failed()
    assert "every one of the 2 camera(s)" in state.message
    df = report_of(args)  # the report is still written
    assert list(df.status) == ["failed", "failed"]


async def test_fit_worker_failures_are_reported_per_camera_and_the_rest_are_pushed(
    emu, blocks, tmp_path, monkeypatch
):
    # Every fit worker dies on its first image (as one killed for memory would). A camera whose image saw two
    # workers die is reported (push failed, originals stored); once the pool has no workers left to restart,
    # images are fitted in threads, so the later cameras are pushed. Nothing is lost, the run goes on.
    monkeypatch.setattr(fit_pool, "WORKER_ARGS", ("-c", "import sys; sys.stdin.buffer.read(8); sys.exit(3)"))
    args = run_args(blocks, tmp_path, fit_workers=1)
    summary = await harvest_snapshots(**args)
    online = report_of(args).query("status != 'skipped'")
    assert len(online) == TOTAL - OFFLINE and summary.originals_stored == 2 * len(online)
    assert set(online.image_push) == {"sent", "failed"}
    failed = online[online.image_push == "failed"]
    assert failed.image_push_reason.str.contains(
        r"WorkerDied: image fitting process ended \(exit code 3\)"
    ).all()
    assert (failed.status == "partial").all() and (failed.data_event == "sent").all()
    assert (
        summary.images_pushed
        == (online.image_push == "sent").sum()
        == emu["miniviz"].received()["accepted"]["image"]
    )


# --- selection -----------------------------------------------------------------------------------------
async def test_selection_by_group_name_pattern_and_uuids(emu, blocks, tmp_path):
    devices = await fleet(emu)
    # group + glob (whole name, case-insensitive); S3 only
    args = run_args(blocks, tmp_path, project=None, groups=["parking"], name_pattern="*CAM 0[1-7]",
                    report_name="group.csv")  # fmt: skip
    summary = await harvest_snapshots(**args)
    df = report_of(args)
    # the generated fleet puts device i in group i % 3 ("parking" first), offline every 5th
    expected = {u for u, d in devices.items() if re.fullmatch(r".* Cam 0[1-7]", d["name"])
                and d["client_identifier"].startswith("PARKING-")}  # fmt: skip
    assert set(df.index) == expected and len(expected) >= 2
    assert summary.images_pushed == 0 and (df.image_push == "off").all()

    # regex + explicit uuids: an unknown uuid and a filtered-out one are reported, not errors
    online = sorted(
        u for u, d in devices.items() if d["is_online"] and d["name"].startswith(("Paris", "Lyon"))
    )
    offline = next(u for u, d in devices.items() if not d["is_online"])
    lobby = next(u for u, d in devices.items() if d["name"] == "HQ Lobby Camera")
    args = run_args(blocks, tmp_path, project=None, name_pattern=r"^(paris|lyon|hq) ", name_pattern_syntax="regex",
                    device_uuids=[*online[:2], offline, "no-such-camera", lobby], online_only=True,
                    report_name="uuids.csv")  # fmt: skip
    summary = await harvest_snapshots(**args)
    df = report_of(args)
    assert (
        df.loc["no-such-camera"].status == "rejected" and "unknown device" in df.loc["no-such-camera"].reason
    )
    assert df.loc[offline].status in ("skipped", "rejected")  # skipped if its name matches, else rejected
    assert df.loc[lobby].status == "done" and all(df.loc[u].status == "done" for u in online[:2])
    assert summary.failed == 0


async def test_unicode_camera_name_gets_encoded_metadata_and_an_ascii_label(emu, s3, blocks, tmp_path):
    devices = await fleet(emu)
    uuid = next(u for u, d in devices.items() if d["is_online"])
    name, city = "Caméra Entrée Nord — Zürich 東京", "Zürich"
    v = emu["viziosense"]
    creds = VizioSenseCredentials(base_url=v.url, api_key=SecretStr(v.credentials["api_key"]))
    async with creds.get_client() as client:
        await client.update_device(uuid, {"name": name, "geo_city": city})
    args = run_args(blocks, tmp_path, device_uuids=[uuid])
    summary = await harvest_snapshots(**args)
    assert summary.done == 1 and summary.images_pushed == 1
    row = report_of(args).loc[uuid]
    assert row.label_key.startswith("camera-entree-nord-zurich-") and LABEL_KEY_RE.match(row.label_key)
    meta = s3.head_object(Bucket="demo-bucket", Key=row.s3_raw_key)["Metadata"]
    assert meta["device-name"].startswith("=?UTF-8?B?") and meta["device-name"].isascii()
    assert (
        decode_metadata_value(meta["device-name"]) == name and decode_metadata_value(meta["geo-city"]) == city
    )
