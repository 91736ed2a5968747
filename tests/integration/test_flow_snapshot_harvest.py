"""The snapshot harvest flow against the VizioSense, Miniviz and S3 emulators, with a real Prefect API.

Time scale 0.01: VizioSense's documented 20 s wait is 0.2 s. The Miniviz emulator has two Pro projects: one
with the data limit off (``harvest-fast``) and one with the default Pro data interval (15 s -> 0.15 s). Its
image interval is raised to 3,000 emulated s (30 s real) and the blocks pace at 30 s, so "harvested too soon"
really is too soon for the emulator: a flow that pushed anyway would collect 429s.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import boto3
import httpx
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.states import State
from prefect_aws import S3Bucket
from pydantic import SecretStr

from blocks import MinivizCredentials, VizioSenseCredentials
from clients.miniviz import LABEL_KEY_RE, MAX_IMAGE_BYTES
from clients.session import close_sessions
from demo.setup import emulator_aws_credentials
from emulators.launcher import running_emulators
from flows.snapshot_harvest import fit_pool, harvest_snapshots
from flows.snapshot_harvest.cameras import HarvestRun, HarvestSettings, send_camera_data_events
from flows.snapshot_harvest.keys import decode_metadata_value
from flows.snapshot_harvest.labels import slugify
from flows.snapshot_harvest.pacing import PacingState
from flows.snapshot_harvest.rows import CameraResult
from tasks.run_state import IncompleteRun
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
    close_sessions()  # each test starts with fresh Miniviz pacers, as a new worker process would


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


def run_args(blocks, tmp_path, project: str = "harvest-fast", report_name: str = "report.csv", **groups):
    """Flow arguments: test blocks, scaled waits, a pacing state + report under tmp_path, and parameter groups
    as dicts (as a deployment or the UI passes them); ``project=""``: S3 only."""
    outputs = {"state": str(tmp_path / "pacing.json"), "report": str(tmp_path / report_name)}
    return {
        **blocks,
        "miniviz_block": f"mvz-{project}" if project else "",
        "timing": FAST,
        **groups,
        "outputs": {**outputs, **groups.get("outputs", {})},
    }


async def failed_run(args) -> tuple[State, object]:
    """Run the flow, expect it to end Failed; its state and the summary a caller gets with the error."""
    state = await harvest_snapshots(**args, return_state=True)
    assert state.is_failed(), state.message
    with pytest.raises(IncompleteRun) as raised:
        await state.result()
    assert raised.value.summary is not None
    return state, raised.value.summary


async def fleet(emu) -> dict[str, dict]:
    """The emulator's devices by uuid (every page)."""
    v = emu["viziosense"]
    creds = VizioSenseCredentials(base_url=v.url, api_key=SecretStr(v.credentials["api_key"]))
    async with creds.get_client() as client:
        return {d.uuid: d.model_dump() for d in await client.list_all_devices()}


def report_of(args) -> pd.DataFrame:
    return pd.read_csv(args["outputs"]["report"]).set_index("device_uuid")


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
    assert state.is_completed(), state.message  # offline cameras are skipped by design
    summary = await state.result()
    assert (summary.cameras, summary.done, summary.skipped, summary.failed, summary.deferred) == (
        TOTAL, TOTAL - OFFLINE, OFFLINE, 0, 0)  # fmt: skip
    assert (summary.originals_stored, summary.originals_failed) == (2 * (TOTAL - OFFLINE), 0)
    assert (summary.images_pushed, summary.data_events_sent) == (TOTAL - OFFLINE, TOTAL)  # data limit off
    assert (summary.images_failed, summary.data_events_failed) == (0, 0)

    df = report_of(args)
    assert set(df.index) == set(devices)
    online = df[df.outcome == "done"]
    offline = df[df.outcome == "skipped"]
    assert (online.originals == "stored").all() and (offline.originals == "skipped").all()
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
    paced = {"miniviz_push": {"data_event_budget_seconds": 0.4}, "outputs": {"state": state}}
    first = await harvest_snapshots(**run_args(blocks, tmp_path, "harvest-paced", "r1.csv", **paced))
    assert first.images_pushed == TOTAL - OFFLINE and first.images_deferred == 0 and first.state == state
    saved = json.loads(s3.get_object(Bucket="demo-bucket", Key="pacing/harvest-paced.json")["Body"].read())
    assert sum("image" in times for times in saved["labels"].values()) == TOTAL - OFFLINE
    # Pro data limit (one event per 15 s per project, scaled): some events sent, the rest deferred.
    assert first.data_events_sent >= 1 and first.data_events_deferred >= 1
    assert first.data_events_sent + first.data_events_deferred == TOTAL
    # Deferred by pacing is by design: the run completed (it returned its summary); those cameras say so.
    assert first.failed == 0 and first.deferred >= 1 and first.done + first.deferred == TOTAL - OFFLINE

    second_args = run_args(blocks, tmp_path, "harvest-paced", "r2.csv", **paced)
    second = await harvest_snapshots(**second_args)  # Completed: every push deferred, S3 still done
    assert second.deferred == TOTAL - OFFLINE and second.originals_stored == 2 * (TOTAL - OFFLINE)
    assert second.images_pushed == 0 and second.images_deferred == TOTAL - OFFLINE
    df = report_of(second_args)
    deferred = df[df.image_push == "deferred"]
    assert len(deferred) == TOTAL - OFFLINE
    assert deferred.image_push_reason.str.contains("harvested too soon").all()
    assert deferred.image_push_reason.str.contains(f"one image per label every {IMAGE_INTERVAL:g} s").all()
    assert (deferred.outcome == "deferred").all() and deferred.reason.str.contains(
        "Miniviz image deferred"
    ).all()
    assert empty(deferred.bytes_after_fit).all()  # nothing fitted for an image that cannot go out

    got = emu["miniviz"].received()
    assert got["accepted"]["image"] == TOTAL - OFFLINE  # run 1 only
    assert "429" not in got["rejected_by_status"] and got["rejected_by_status"] == {}
    assert got["accepted"]["data"] == first.data_events_sent + second.data_events_sent
    # Stalest first: run 2's data events went to cameras run 1 had to defer.
    r1 = pd.read_csv(tmp_path / "r1.csv")
    assert not set(r1[r1.data_event == "sent"].label_key) & set(df[df.data_event == "sent"].label_key)


# --- final state: failures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wrong_token_block(emu, blocks):
    MinivizCredentials(
        project_id="harvest-fast",
        token=SecretStr("mvz-not-the-token"),
        base_url=emu["miniviz"].url,
        data_interval_seconds=0.0,
        image_interval_seconds=IMAGE_INTERVAL,
    ).save("mvz-wrong-token", overwrite=True)
    return "mvz-wrong-token"


async def test_a_wrong_miniviz_token_fails_the_run_once_detected_and_s3_still_gets_the_originals(
    emu, s3, blocks, wrong_token_block, tmp_path
):
    args = {**run_args(blocks, tmp_path), "miniviz_block": wrong_token_block}
    state, summary = await failed_run(args)
    message = state.message
    # One refused call per kind of push (the first image, the first data event); the rest were not sent.
    got = emu["miniviz"].received()
    assert got["rejected"] == {"POST /api/project/{project_id}/image": 1, "POST /api/project/{project_id}": 1}
    assert got["rejected_by_status"] == {"403": 2}
    assert got["accepted"] == {}
    assert re.match(r"Miniviz refused this run's image pushes: miniviz send_image: HTTP 403", message)
    assert f"{TOTAL} cameras: {TOTAL} failed; report {args['outputs']['report']}" in message
    assert "mvz-not-the-token" not in message
    assert (summary.originals_stored, summary.originals_failed) == (2 * (TOTAL - OFFLINE), 0)
    assert (summary.images_pushed, summary.images_failed) == (0, TOTAL - OFFLINE)
    assert (summary.data_events_sent, summary.data_events_failed) == (0, TOTAL)

    df = report_of(args)
    assert (df.outcome == "failed").all()
    online = df[df.online]
    assert (online.originals == "stored").all() and (online.image_push == "failed").all()
    for key in online.s3_raw_key:  # the originals really are in S3
        assert s3.head_object(Bucket="demo-bucket", Key=key)["ContentLength"] > 0
    assert online.image_push_reason.str.contains("Invalid token for this project").all()
    assert online.image_push_reason.str.startswith("not sent: Miniviz refused").sum() == len(online) - 1
    assert df.reason.str.contains("Miniviz data event failed").all()
    arts = await artifacts_of(state.state_details.flow_run_id)
    failures = arts["snapshot-harvest-failures"].data
    assert f"{TOTAL} item(s)" in failures and "Invalid token" in failures
    figures = {r["what"]: r["value"] for r in json.loads(arts["snapshot-harvest-summary"].data)}
    assert (
        figures["Miniviz images failed"] == TOTAL - OFFLINE and figures["Miniviz data events failed"] == TOTAL
    )


async def test_a_camera_whose_image_request_fails_fails_the_run_while_the_rest_are_delivered(
    emu, blocks, tmp_path
):
    devices = await fleet(emu)
    broken = next(u for u, d in devices.items() if d["is_online"])
    emu["viziosense"].faults(error_rate=1.0, error_status=500, path_pattern=f"/devices/{broken}/image$")
    args = run_args(blocks, tmp_path)
    state, summary = await failed_run(args)
    message = state.message
    assert message.startswith(f"{TOTAL} cameras: {TOTAL - OFFLINE - 1} done, {OFFLINE} skipped, 1 failed;")
    assert (summary.done, summary.failed, summary.skipped, summary.originals_failed) == (
        TOTAL - OFFLINE - 1, 1, OFFLINE, 2)  # fmt: skip
    row = report_of(args).loc[broken]
    assert row.outcome == "failed" and row.reason.startswith("viziosense request_image: HTTP 500")
    assert row.originals == "failed" and pd.isna(row.s3_raw_key) and row.image_push == "skipped"
    assert row.data_event == "sent"  # the dashboard still hears about it: ok = 0
    assert emu["miniviz"].received()["accepted"]["image"] == TOTAL - OFFLINE - 1


async def test_failed_annotated_downloads_fail_the_cameras_although_the_raw_was_stored_and_pushed(
    emu, blocks, tmp_path
):
    devices = await fleet(emu)
    chosen = [u for u, d in devices.items() if d["is_online"]][:2]
    emu["viziosense"].faults(error_rate=1.0, error_status=500, path_pattern="_annotated_image$")
    args = run_args(blocks, tmp_path, cameras={"device_uuids": chosen})
    state, summary = await failed_run(args)
    message = state.message
    assert message.startswith("2 cameras: 2 failed;")
    assert (summary.failed, summary.originals_stored, summary.originals_failed, summary.images_pushed) == (
        2, 2, 2, 2)  # fmt: skip
    df = report_of(args)
    assert (~empty(df.s3_raw_key)).all() and empty(df.s3_annotated_key).all()
    assert (df.originals == "failed").all()
    assert df.reason.str.contains(r"fetch_image\(annotated\).*HTTP 500").all()


async def test_when_every_camera_fails_the_message_gives_the_first_error(emu, blocks, tmp_path):
    devices = await fleet(emu)
    chosen = [u for u, d in devices.items() if d["is_online"]][:2]
    emu["viziosense"].faults(error_rate=1.0, error_status=500, path_pattern="/image")
    args = run_args(blocks, tmp_path, cameras={"device_uuids": chosen})
    state, _ = await failed_run(args)
    message = state.message
    assert message.startswith("no original stored: every one of the 2 camera(s) asked failed; first error: ")
    assert "HTTP 500" in message and "2 cameras: 2 failed" in message
    df = report_of(args)  # the report is still written
    assert list(df.outcome) == ["failed", "failed"]


async def test_fit_worker_failures_fail_those_cameras_and_the_rest_are_pushed(
    emu, blocks, tmp_path, monkeypatch
):
    # Every fit worker dies on its first image (as one killed for memory would). A camera whose image saw two
    # workers die is reported (push failed, originals stored); once the pool has no workers left to restart,
    # images are fitted in threads, so the later cameras are pushed. Nothing is lost, the run goes on.
    monkeypatch.setattr(fit_pool, "WORKER_ARGS", ("-c", "import sys; sys.stdin.buffer.read(8); sys.exit(3)"))
    args = run_args(blocks, tmp_path, performance={"fit_workers": 1})
    _, summary = await failed_run(args)
    online = report_of(args).query("outcome != 'skipped'")
    assert len(online) == TOTAL - OFFLINE and summary.originals_stored == 2 * len(online)
    assert set(online.image_push) == {"sent", "failed"}
    failed = online[online.image_push == "failed"]
    assert failed.image_push_reason.str.contains(
        r"WorkerDied: image fitting process ended \(exit code 3\)"
    ).all()
    assert (failed.outcome == "failed").all() and (failed.data_event == "sent").all()
    assert (online[online.image_push == "sent"].outcome == "done").all()
    assert summary.images_failed == len(failed)
    assert (
        summary.images_pushed
        == (online.image_push == "sent").sum()
        == emu["miniviz"].received()["accepted"]["image"]
    )


# --- selection -----------------------------------------------------------------------------------------
async def test_selection_by_group_name_pattern_and_uuids(emu, blocks, tmp_path):
    devices = await fleet(emu)
    # group + glob (whole name, case-insensitive); S3 only
    cameras = {"groups": ["parking"], "name_pattern": "*CAM 0[1-7]"}
    args = run_args(blocks, tmp_path, project="", report_name="group.csv", cameras=cameras)
    summary = await harvest_snapshots(**args)
    df = report_of(args)
    # the generated fleet puts device i in group i % 3 ("parking" first), offline every 5th
    expected = {u for u, d in devices.items() if re.fullmatch(r".* Cam 0[1-7]", d["name"])
                and d["client_identifier"].startswith("PARKING-")}  # fmt: skip
    assert set(df.index) == expected and len(expected) >= 2
    assert summary.images_pushed == 0 and (df.image_push == "off").all() and summary.state is None

    # regex + explicit uuids: an unknown uuid is rejected (the run fails), the camera filtered out by name too
    online = sorted(
        u for u, d in devices.items() if d["is_online"] and d["name"].startswith(("Paris", "Lyon"))
    )
    offline = next(u for u, d in devices.items() if not d["is_online"])
    lobby = next(u for u, d in devices.items() if d["name"] == "HQ Lobby Camera")
    cameras = {"name_pattern": r"^(paris|lyon|hq) ", "name_pattern_syntax": "regex",
               "device_uuids": [*online[:2], offline, "no-such-camera", lobby, lobby]}  # fmt: skip
    args = run_args(blocks, tmp_path, project="", report_name="uuids.csv", cameras=cameras)
    state, summary = await failed_run(args)
    message = state.message
    assert "1 rejected" in message or "2 rejected" in message
    df = report_of(args)
    unknown = df.loc["no-such-camera"]
    assert unknown.outcome == "rejected" and "unknown device" in unknown.reason
    assert df.loc[offline].outcome in ("skipped", "rejected")  # skipped if its name matches, else rejected
    assert all(df.loc[u].outcome == "done" for u in online[:2])
    lobby_rows = df.loc[[lobby]]
    assert sorted(lobby_rows.outcome) == ["done", "skipped"]  # listed twice: asked once
    assert summary.failed == 0


async def test_a_filter_that_matches_no_camera_fails_the_run_and_says_so(emu, blocks, tmp_path):
    args = run_args(blocks, tmp_path, cameras={"groups": ["parking"], "name_pattern": "*no such camera*"})
    state, summary = await failed_run(args)
    message = state.message
    assert message.startswith("no camera matched groups=['parking'], name_pattern='*no such camera*' (")
    assert summary.cameras == 0 and report_of(args).empty  # the report is written, with its columns
    assert not [route for route in emu["viziosense"].received()["requests"] if "image" in route]


async def test_cameras_all_offline_complete_as_skipped(emu, blocks, tmp_path):
    devices = await fleet(emu)
    offline = [u for u, d in devices.items() if not d["is_online"]]
    args = run_args(blocks, tmp_path, cameras={"device_uuids": offline})
    state = await harvest_snapshots(**args, return_state=True)
    assert state.is_completed(), state.message
    summary = await state.result()
    assert (summary.cameras, summary.skipped, summary.originals_stored) == (OFFLINE, OFFLINE, 0)
    df = report_of(args)
    assert (df.outcome == "skipped").all() and (df.data_event == "sent").all()  # online = 0 on the dashboard


async def test_unicode_camera_name_gets_encoded_metadata_and_an_ascii_label(emu, s3, blocks, tmp_path):
    devices = await fleet(emu)
    uuid = next(u for u, d in devices.items() if d["is_online"])
    name, city = "Caméra Entrée Nord — Zürich 東京", "Zürich"
    v = emu["viziosense"]
    creds = VizioSenseCredentials(base_url=v.url, api_key=SecretStr(v.credentials["api_key"]))
    async with creds.get_client() as client:
        await client.update_device(uuid, {"name": name, "geo_city": city})
    args = run_args(blocks, tmp_path, cameras={"device_uuids": [uuid]})
    summary = await harvest_snapshots(**args)
    assert summary.done == 1 and summary.images_pushed == 1
    row = report_of(args).loc[uuid]
    assert row.label_key.startswith("camera-entree-nord-zurich-") and LABEL_KEY_RE.match(row.label_key)
    meta = s3.head_object(Bucket="demo-bucket", Key=row.s3_raw_key)["Metadata"]
    assert meta["device-name"].startswith("=?UTF-8?B?") and meta["device-name"].isascii()
    assert (
        decode_metadata_value(meta["device-name"]) == name and decode_metadata_value(meta["geo-city"]) == city
    )


async def test_data_events_task_sends_as_pacing_allows_stalest_label_first_and_defers_the_rest(
    emu, blocks, tmp_path, monkeypatch
):
    """The task on a hand-built run: one data slot per hour, so one event per call and no timing to race."""
    state = PacingState(str(tmp_path / "pacing.json")).load()
    now = time.time()
    state.mark("cam-old", "data", now - 100)
    state.mark("cam-recent", "data", now - 10)
    cameras = [
        CameraResult(index=0, device_uuid="u0", label_key="cam-recent", online=True),
        CameraResult(index=1, device_uuid="u1", label_key="cam-old", online=True),
        CameraResult(index=2, device_uuid="u2", label_key="cam-never", online=True),
        CameraResult(index=3, device_uuid="u3", outcome="rejected"),
    ]
    creds = MinivizCredentials(project_id="harvest-paced", token=SecretStr("mvz-harvest-paced"),
                               base_url=emu["miniviz"].url, data_interval_seconds=3600)  # fmt: skip

    def fresh_run() -> HarvestRun:  # only the Miniviz parts: the task touches nothing else
        close_sessions()  # a new process: a new session client, its data pacer not yet used
        return HarvestRun(viziosense=None, miniviz=creds.session(), bucket=None, executor=None, state=state,
                          settings=HarvestSettings(), fit_pool=None)  # fmt: skip

    def sent_labels() -> list[str]:
        got = emu["miniviz"].control("GET", "events", params={"project_id": "harvest-paced", "limit": 100})
        return [e["label_key"] for e in got["events"]]

    emu["miniviz"].reset()  # earlier tests of the session may have sent to this project
    rows = await send_camera_data_events(fresh_run(), cameras, budget_seconds=60)
    assert [r.data_event for r in rows] == ["deferred", "deferred", "sent", "skipped"]
    assert sent_labels() == ["cam-never"] and rows[2].miniviz_data_id
    for row in rows[:2]:
        assert "one data event per project every 3600 s" in row.data_event_reason
        assert "stalest cameras go first next run" in row.data_event_reason

    # a later run, its slot open (fresh pacing, emulator forgot the send): cam-never is now the freshest,
    # so the older of the two deferred labels goes first
    monkeypatch.setenv("PIPELINES_PACING_DIR", str(tmp_path / "later-pacing"))
    emu["miniviz"].reset()
    cameras = [r.model_copy(update={"data_event": "off", "data_event_reason": None}) for r in rows]
    rows = await send_camera_data_events(fresh_run(), cameras, budget_seconds=60)
    assert [r.data_event for r in rows] == ["deferred", "sent", "deferred", "skipped"]
    assert sent_labels() == ["cam-old"]
