"""The snapshot harvest's helpers without network or Prefect (flows/snapshot_harvest/): label keys, S3 keys and
metadata, selection, pacing state, the credentials gate, and Miniviz sends that defer on a 429."""

from __future__ import annotations

import asyncio
import dataclasses
import email.header
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

import flows.snapshot_harvest.labels as labels
from blocks import MinivizCredentials
from clients.errors import AuthError, InputError, RateLimitedError
from clients.miniviz import LABEL_KEY_RE, MAX_LABEL_KEY, MinivizClient
from clients.viziosense import Device
from flows.snapshot_harvest.cameras import CredentialsGate, NotSent, data_payload
from flows.snapshot_harvest.keys import (
    DEFAULT_KEY_LAYOUT,
    check_key_layout,
    decode_metadata_value,
    metadata_value,
    snapshot_key,
    snapshot_metadata,
    utc_stamp,
)
from flows.snapshot_harvest.labels import assign_label_keys, check_label_prefix, label_key_for, slugify
from flows.snapshot_harvest.pacing import PacingState
from flows.snapshot_harvest.rows import CameraResult, name_matcher, select_cameras, settle_outcome


def device(uuid: str, name: str | None, online: int = 1, **kw) -> Device:
    return Device(uuid=uuid, name=name, is_online=online, **kw)


# --- label keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, slug",
    [
        ("Montreal Parking P1 Cam 01", "montreal-parking-p1-cam-01"),
        ("Caméra Entrée Nord — Zürich", "camera-entree-nord-zurich"),
        ("Straße/Øresund  Æble", "strasse-oresund-aeble"),
        ("東京 カメラ", ""),
        ("  --a..b__c--  ", "a..b__c"),
        (None, ""),
    ],
)
def test_slugify(text, slug):
    assert slugify(text) == slug


@pytest.mark.parametrize(
    "name",
    [
        "Montreal Parking P1 Cam 01",
        "Caméra Entrée Nord — Zürich 東京",
        "東京 カメラ",
        "x" * 500,
        "",
        None,
        "a/b:c@d",
    ],
)
def test_label_key_is_allowed_bounded_and_stable(name):
    key = label_key_for("5e2b1c7a-0000-4000-8000-000000000001", name)
    assert LABEL_KEY_RE.match(key) and len(key) <= MAX_LABEL_KEY
    assert key == label_key_for("5e2b1c7a-0000-4000-8000-000000000001", name)  # stable
    with_prefix = label_key_for("5e2b1c7a-0000-4000-8000-000000000001", name, prefix="vzs/" + "p" * 28)
    assert LABEL_KEY_RE.match(with_prefix) and len(with_prefix) <= MAX_LABEL_KEY


def test_label_keys_examples():
    assert label_key_for("u-1", "Caméra Entrée — Zürich").startswith("camera-entree-zurich-")
    assert label_key_for("u-1", "東京").startswith("cam-")  # no usable characters: a generic slug + the hash
    long = label_key_for("u-1", "Very long camera name " * 20)
    assert len(long.rsplit("-", 1)[0]) <= 64  # the readable part is capped, the hash is always there


def test_same_names_never_share_a_label_key():
    devices = [device(f"uuid-{i}", "Parking P1 Cam") for i in range(2000)]
    keys = assign_label_keys(devices)
    assert len(set(keys.values())) == 2000
    assert all(k.startswith("parking-p1-cam-") for k in keys.values())


def test_a_short_hash_collision_is_resolved_with_a_longer_hash(monkeypatch):
    real = labels.uuid_hash
    monkeypatch.setattr(
        labels, "uuid_hash", lambda u, chars=13: "samehash" if chars == 13 else real(u, chars)
    )
    keys = assign_label_keys([device("a", "Cam"), device("b", "Cam"), device("c", "Other")])
    assert keys["a"] != keys["b"] and len(keys["a"]) == len("cam-") + 26
    assert keys["c"] == "other-samehash"  # no collision: the short form


def test_label_source_and_prefix():
    d = device("u-9", "Renamed Every Week", client_identifier="YARD-0009")
    assert assign_label_keys([d], "client_identifier")["u-9"].startswith("yard-0009-")
    assert assign_label_keys([d], "none", "vzs/")["u-9"].startswith("vzs/cam-")
    with pytest.raises(InputError, match="label_prefix"):
        check_label_prefix("bad prefix!")


# --- S3 keys and metadata ------------------------------------------------------------------------------
def test_default_key_layout():
    at = datetime(2025, 1, 31, 12, 0, 5, 123456, tzinfo=UTC)
    key = snapshot_key(DEFAULT_KEY_LAYOUT, prefix="snapshots", device_uuid="u-1", label_key="l", requested_at=at,
                       kind="raw")  # fmt: skip
    assert key == "snapshots/u-1/2025/01/31/20250131T120005.123Z_raw.jpg"
    assert utc_stamp(at) == "20250131T120005.123Z"
    # an empty prefix leaves no empty segment
    assert snapshot_key(DEFAULT_KEY_LAYOUT, prefix="", device_uuid="u", label_key="l", requested_at=at,
                        kind="annotated").startswith("u/2025/")  # fmt: skip


@pytest.mark.parametrize(
    "layout, problem",
    [
        ("{prefix}/{device_uuid}/{timestamp}.jpg", "kind"),
        ("{prefix}/{YYYY}/{timestamp}_{kind}.jpg", "camera"),
        ("{prefix}/{device_uuid}/{kind}.jpg", "time"),
        ("{prefix}/{camera}/{timestamp}_{kind}.jpg", "unknown placeholder"),
        ("{prefix}/{device_uuid!r}/{timestamp}_{kind}", "unknown placeholder"),
        ("{prefix/{device_uuid}", "not a valid template"),
        ("", "non-empty"),
    ],
)
def test_bad_key_layouts(layout, problem):
    with pytest.raises(InputError, match=problem):
        check_key_layout(layout)


def test_metadata_values_are_ascii_and_reversible():
    assert metadata_value("Montreal") == "Montreal"
    name = "Caméra Entrée Nord — Zürich 東京"
    encoded = metadata_value(name)
    assert encoded.isascii() and encoded.startswith("=?UTF-8?B?")
    assert decode_metadata_value(encoded) == name
    assert str(email.header.make_header(email.header.decode_header(encoded))) == name  # standard RFC 2047
    assert metadata_value("line\nbreak\x00") == "line break"
    assert decode_metadata_value(metadata_value("=?looks encoded?=")) == "=?looks encoded?="
    long = metadata_value("é" * 1000, 300)
    assert len(long) <= 300 and decode_metadata_value(long) == "é" * len(decode_metadata_value(long))


def test_snapshot_metadata_stays_within_s3_limits():
    cam = CameraResult(index=0, device_uuid="u-1", device_name="名" * 1000, city="Zürich" * 100,
                       country="Ελλάδα" * 100, label_key="l", requested_at=datetime.now(UTC))  # fmt: skip
    meta = snapshot_metadata(cam, "raw")
    assert all(v.isascii() for v in meta.values())
    assert sum(len(k) + len(v) for k, v in meta.items()) <= 2048


# --- selection -----------------------------------------------------------------------------------------
FLEET = [
    device("u-1", "Paris Parking P1 Cam 01"),
    device("u-2", "Paris North Gate Cam 02", online=0, refreshed="2025-01-01T00:00:00Z"),
    device("u-3", "Lyon Parking P2 Cam 03"),
    device("u-4", "Lyon Truck Yard Cam 04"),
]


def test_glob_and_regex_name_patterns():
    assert name_matcher("*parking*")("Lyon Parking P2 Cam 03")
    assert not name_matcher("parking")("Lyon Parking P2")  # a glob matches the whole name
    assert name_matcher("parking", "regex")("Lyon Parking P2")  # a regex searches
    assert not name_matcher("^parking", "regex")("Lyon Parking P2")
    with pytest.raises(InputError, match="not a valid regular expression"):
        name_matcher("(", "regex")


def test_select_online_by_default_and_report_offline():
    rows = select_cameras(FLEET)
    assert [(r.device_uuid, r.outcome) for r in rows] == [
        ("u-1", "pending"), ("u-2", "skipped"), ("u-3", "pending"), ("u-4", "pending")]  # fmt: skip
    assert "offline" in rows[1].reason and "2025-01-01" in rows[1].reason
    assert [r.outcome for r in select_cameras(FLEET, online_only=False)] == ["pending"] * 4


def test_select_by_pattern_and_uuids_reports_unknown_and_duplicates():
    rows = select_cameras(FLEET, name_pattern="*parking*", device_uuids=["u-3", "u-4", "nope", "u-3"])
    by = {(r.device_uuid, r.outcome): r.reason for r in rows}
    assert ("u-3", "pending") in by
    assert "does not match" in by[("u-4", "rejected")]
    assert "unknown device" in by[("nope", "rejected")]
    assert "duplicate" in by[("u-3", "skipped")]  # asked once: the repeat is skipped by design
    assert [r.index for r in rows] == list(range(len(rows)))


def test_label_keys_do_not_depend_on_the_filters():
    everything = {r.device_uuid: r.label_key for r in select_cameras(FLEET, online_only=False)}
    some = select_cameras(FLEET, device_uuids=["u-3"])
    assert some[0].label_key == everything["u-3"]


def test_data_payload_is_small_and_numeric():
    cam = CameraResult(index=0, device_uuid="u", online=True, s3_raw_key="k", bytes_raw=280_000,
                       bytes_after_fit=200_000, seconds_until_ready=20.4)  # fmt: skip
    payload = data_payload(cam)
    assert payload == {
        "online": 1,
        "ok": 1,
        "bytes": 280_000,
        "bytes_fitted": 200_000,
        "seconds_until_ready": 20.4,
    }
    assert data_payload(CameraResult(index=0, device_uuid="u", online=False, outcome="skipped")) == {
        "online": 0, "ok": 0, "bytes": 0}  # fmt: skip


# --- outcomes ------------------------------------------------------------------------------------------
STORED = {"originals": "stored", "s3_raw_key": "r", "s3_annotated_key": "a"}


@pytest.mark.parametrize(
    ("row", "outcome", "reason_has"),
    [
        ({**STORED, "image_push": "sent", "data_event": "sent"}, "done", None),
        ({**STORED, "image_push": "off", "data_event": "off"}, "done", None),  # S3 only
        ({**STORED, "image_push": "sent", "data_event": "deferred", "data_event_reason": "budget used"},
         "deferred", "Miniviz data event deferred: budget used"),
        # stored in S3 but refused by Miniviz: a partial delivery is not done
        ({**STORED, "image_push": "failed", "image_push_reason": "HTTP 403", "data_event": "sent"},
         "failed", "Miniviz image failed: HTTP 403"),
        ({**STORED, "image_push": "rejected", "image_push_reason": "cannot fit"}, "failed", "cannot fit"),
        ({**STORED, "image_push": "sent", "data_event": "failed", "data_event_reason": "HTTP 400"},
         "failed", "data event failed"),
        ({"originals": "failed", "s3_raw_key": "r", "reason": "fetch_image(annotated): HTTP 500",
          "image_push": "sent"}, "failed", "fetch_image(annotated)"),
        ({"outcome": "skipped", "reason": "offline", "data_event": "sent"}, "skipped", "offline"),
        ({"outcome": "skipped", "reason": "offline", "data_event": "failed", "data_event_reason": "HTTP 403"},
         "failed", "HTTP 403"),
        ({"outcome": "rejected", "reason": "unknown device"}, "rejected", "unknown device"),
    ],
)  # fmt: skip
def test_camera_outcome_from_its_deliveries(row, outcome, reason_has):
    cam = settle_outcome(CameraResult(index=0, device_uuid="u", **row))
    assert cam.outcome == outcome
    assert (cam.reason is None) if reason_has is None else (reason_has in cam.reason)


def refusal() -> AuthError:
    return AuthError("miniviz", "send_image", "HTTP 403: Invalid token for this project", status=403)


async def test_credentials_gate_sends_one_call_when_miniviz_refuses_the_token():
    gate, calls = CredentialsGate("image pushes"), []

    async def send(i: int) -> str:
        calls.append(i)
        await asyncio.sleep(0)
        raise refusal()

    results = await asyncio.gather(
        *(gate.call(lambda i=i: send(i)) for i in range(5)), return_exceptions=True
    )
    assert calls == [0]  # the others waited for the first answer, then were not sent
    assert isinstance(results[0], AuthError)
    assert all(isinstance(r, NotSent) for r in results[1:])
    assert "Invalid token" in gate.error and str(results[1]) == gate.refused
    assert gate.refused.startswith("not sent: Miniviz refused this run's image pushes")


async def test_credentials_gate_lets_everything_through_after_another_answer():
    gate = CredentialsGate("data events")

    async def send(i: int) -> int:
        if i == 0:
            raise InputError("payload", "too big")  # not about the credentials
        return i

    results = await asyncio.gather(
        *(gate.call(lambda i=i: send(i)) for i in range(3)), return_exceptions=True
    )
    assert isinstance(results[0], InputError) and results[1:] == [1, 2] and gate.refused is None


# --- pacing state --------------------------------------------------------------------------------------
def test_pacing_state_round_trip_and_seeding(tmp_path):
    path = tmp_path / "state" / "miniviz.json"
    state = PacingState(str(path)).load()
    assert state.labels == {} and state.load_problem is None
    now = time.time()
    state.mark("cam-a", "image", now - 10)  # 10 s ago: must wait 50 more
    state.mark("cam-b", "image", now - 120)  # long ago: free
    state.mark("cam-a", "data", now - 5)
    state.save()
    again = PacingState(str(path)).load()
    assert again.last("cam-a", "image") == pytest.approx(now - 10)
    assert again.project_data_at == pytest.approx(now - 5)
    client = MinivizClient("p", "t", "http://127.0.0.1:9", plan="pro")
    again.seed(client, ["cam-a", "cam-b", "cam-new"])
    assert 49 < client.image_wait_time("cam-a") <= 50
    assert client.image_wait_time("cam-b") == 0 and client.image_wait_time("cam-new") == 0
    assert 9 < client.data_pacer.wait_time() <= 10  # Pro: 15 s per project


def test_damaged_state_is_reported_not_fatal(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    state = PacingState(str(path)).load()
    assert state.labels == {} and "damaged" in state.load_problem
    path.write_text(json.dumps({"labels": {"x": {"image": 1.0}}}))
    assert PacingState(str(path)).load().last("x", "image") == 1.0


async def test_a_send_without_429_retries_raises_the_429_at_once_and_still_retries_a_503():
    """The harvest's sends (``retry_on_429=False``) turn a 429 into a deferral, on the process's shared client."""
    answers = [httpx.Response(429, json={"detail": "too soon"}, headers={"Retry-After": "30"}),
               httpx.Response(503), httpx.Response(200, json={"id": "e1"})]  # fmt: skip
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers[len(sent) - 1]

    client = MinivizCredentials(
        project_id="p", token=SecretStr("t"), base_url="http://miniviz.test", data_interval_seconds=0
    ).get_client(httpx.MockTransport(answer))
    client.settings.retry = dataclasses.replace(client.settings.retry, base_delay=0.001)
    async with client:
        with pytest.raises(RateLimitedError):
            await client.send_data("cam", {"ok": 1}, retry_on_429=False)
        assert len(sent) == 1  # not retried, not waited for
        assert (await client.send_data("cam", {"ok": 1}, retry_on_429=False)).id == "e1"  # 503 retried
    assert len(sent) == 3


# --- fan-out: uuid ranges, a shard's journal, the parent's one report --------------------------------------
def fleet_rows(n: int = 10) -> list[CameraResult]:
    """n cameras (every 4th offline), plus an unknown uuid asked for (rejected)."""
    devices = [device(f"uuid-{i:03d}", f"Cam {i}", online=int(i % 4 != 3)) for i in range(n)]
    return select_cameras(devices, device_uuids=[d.uuid for d in devices] + ["uuid-zzz"], online_only=True)


def plan_camera_shards(rows, size, parameters, root, parent):
    """The shards a parent plans for these rows: uuid ranges of the cameras to harvest."""
    from flows.snapshot_harvest.parameters import FLOW_NAME
    from tasks.fan_out import key_ranges, plan_shards

    pending = [r.device_uuid for r in rows if r.outcome == "pending"]
    return plan_shards(FLOW_NAME, key_ranges(pending, size), parameters, root, parent)


def test_shards_split_the_cameras_by_uuid_range_and_cover_every_row_once(tmp_path):
    from flows.snapshot_harvest.shards import take_shard
    from tasks.state import StateRoot

    rows = fleet_rows(10)
    parameters = {"outputs": {"state": "s3://b/pacing.json"}, "fan_out": {"shard_size": 3}}
    shards = plan_camera_shards(rows, 3, parameters, StateRoot(str(tmp_path)), "parent-1")
    pending = [r for r in rows if r.outcome == "pending"]
    assert len(shards) == 3 and len(pending) == 8  # 3 + 3 + 2 cameras to harvest
    taken = [take_shard(rows, s.range) for s in shards]
    assert sorted(r.device_uuid for part in taken for r in part) == sorted(r.device_uuid for r in rows)
    assert [sum(r.outcome == "pending" for r in part) for part in taken] == [3, 3, 2]
    first = shards[0].parameters
    assert first["fan_out"]["shard_size"] == 0 and first["fan_out"]["shard"]["number"] == 1
    assert first["outputs"] == {"state": "s3://b/pacing.json", "report": shards[0].report}
    assert shards[0].report.endswith("/reports/snapshot-harvest-shards/parent-1/shard-1.parquet")
    assert len({s.report for s in shards}) == 3


async def test_a_shard_resumes_the_cameras_its_journal_stored(tmp_path):
    import logging

    from flows.snapshot_harvest.shards import journal_location, open_shard
    from tasks.fan_out import ShardRange
    from tasks.journal import Journal
    from tasks.storage import BucketRef

    rows, report = fleet_rows(6), str(tmp_path / "shard-1.parquet")
    shard = ShardRange(number=1, of=1, parent="p")
    stored = rows[0].model_copy(
        update={"originals": "stored", "s3_raw_key": "k/raw", "s3_annotated_key": "k/a"}
    )
    Journal(journal_location(report)).append(stored.model_dump(mode="json"))
    bucket = BucketRef(None, "b")
    again, journal = await open_shard(rows, shard, report, bucket, logging.getLogger("t"))
    assert journal is not None and again[0].outcome == "done" and again[0].s3_raw_key == "k/raw"
    assert [r.outcome for r in again[1:]] == [r.outcome for r in rows[1:]]  # the others: as listed
    same, none = await open_shard(rows, ShardRange(), report, bucket, logging.getLogger("t"))
    assert same is rows and none is None  # not a shard: no journal


def test_the_parent_gathers_one_row_per_camera_and_fails_an_unfinished_shard(tmp_path):
    import pandas as pd

    from flows.snapshot_harvest.rows import REPORT_COLUMNS
    from flows.snapshot_harvest.shards import gather
    from tasks.fan_out import ShardRun
    from tasks.state import StateRoot

    rows = fleet_rows(10)
    shards = plan_camera_shards(rows, 4, {}, StateRoot(str(tmp_path)), "p")
    done = [r.model_copy(update={"originals": "stored", "s3_raw_key": "r", "s3_annotated_key": "a",
                                 "requested_at": datetime(2025, 1, 1, tzinfo=UTC)})
            for r in rows if shards[0].range.holds_key(r.device_uuid)]  # fmt: skip
    for r in done:
        settle_outcome(r)
    frame = pd.DataFrame([r.model_dump(mode="json") for r in done], columns=REPORT_COLUMNS)
    runs = [ShardRun(shards[0], "Completed", report=frame, summary={"problems": ["a problem"]}),
            ShardRun(shards[1], "Crashed", runs=3)]  # fmt: skip
    problems: list[str] = []
    out = gather(rows, runs, problems)
    assert sorted(r.device_uuid for r in out) == sorted(r.device_uuid for r in rows)
    lost = [r for r in out if shards[1].range.holds_key(r.device_uuid) and r.originals == "failed"]
    assert lost and all("shard 2 of 2 did not finish" in (r.reason or "") for r in lost)
    assert problems[0] == "a problem" and "Crashed after 3 runs" in problems[1]
    for r in out:  # settled again by the parent: same outcome, no reason written twice
        before = (r.outcome, r.reason)
        if r.outcome != "pending":
            assert settle_outcome(r).outcome == before[0] and r.reason == before[1]


def test_pacing_marks_merge_keeping_the_latest(tmp_path):
    project, shard = PacingState(str(tmp_path / "p.json")), PacingState(str(tmp_path / "s.json"))
    project.mark("a", "image", 100.0)
    project.mark("b", "data", 50.0)
    shard.mark("a", "image", 90.0)
    shard.mark("c", "image", 120.0)
    shard.mark("b", "data", 70.0)
    project.merge(shard)
    assert project.last("a", "image") == 100.0 and project.last("c", "image") == 120.0
    assert project.last("b", "data") == 70.0 and project.project_data_at == 70.0
