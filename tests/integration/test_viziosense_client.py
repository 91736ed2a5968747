"""VizioSenseClient, block and tasks against the VizioSense emulator over real HTTP.

The emulator runs at time scale 0.01: the documented 20 s image wait is 0.2 s, so the tests pass
``ready_after=20 * TEST_TIME_SCALE`` and scaled poll intervals.
"""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from pydantic import SecretStr

from blocks import VizioSenseCredentials
from clients.auth import clear_shared_sessions
from clients.errors import ApiError, AuthError, NotFoundError, OutcomeUnknownError
from clients.transport import HttpSettings, RetryPolicy
from clients.viziosense import VizioSenseClient
from tasks.viziosense import (
    SnapshotLimits,
    SnapshotOutcome,
    add_viziosense_webhook,
    fetch_viziosense_image,
    get_viziosense_device,
    harvest_viziosense_snapshots,
    list_viziosense_devices,
    list_viziosense_webhooks,
    refresh_viziosense_device,
    request_viziosense_image,
    update_viziosense_device,
    update_viziosense_webhook,
)
from tests.conftest import TEST_TIME_SCALE, start_service

pytestmark = pytest.mark.integration

READY_AFTER = 20 * TEST_TIME_SCALE  # the documented 20 s, scaled
WAIT = {"poll_interval": 0.02, "timeout": 5.0}  # real seconds; far inside the scaled 30 min (18 s)
TOTAL_DEVICES, OFFLINE_DEVICES = 13, 2  # DEFAULT_CONFIG: 1 lobby camera + 12 generated, every 5th offline


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with start_service("viziosense", tmp_path_factory) as emu:
        yield emu["viziosense"]


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()
    clear_shared_sessions()  # the reset emulator forgot every token


def login_creds(svc, **kw) -> VizioSenseCredentials:
    c = svc.credentials
    return VizioSenseCredentials(base_url=svc.url, email=c["email"], password=SecretStr(c["password"]), **kw)


def key_creds(svc, user: str = "admin", **kw) -> VizioSenseCredentials:
    key = next(k["key"] for k in svc.credentials["api_keys"] if k["user"].startswith(user))
    return VizioSenseCredentials(base_url=svc.url, api_key=SecretStr(key), **kw)


def client_of(creds: VizioSenseCredentials) -> VizioSenseClient:
    return creds.get_client(image_ready_after=READY_AFTER, image_poll_interval=0.02, image_timeout=5.0)


async def uuids(svc, **filters) -> list[str]:
    async with client_of(key_creds(svc)) as client:
        return [d.uuid for d in await client.list_all_devices(**filters)]


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        img.load()
        return img.size


# --- auth and listing ----------------------------------------------------------------------------------
async def test_login_then_every_page_with_each_filter(svc):
    async with client_of(login_creds(svc)) as client:
        pages = [p async for p in client.iter_device_pages(per_page=5, sort="name")]
        assert [(p.meta.current_page, p.meta.from_, p.meta.to) for p in pages] == [
            (1, 1, 5),
            (2, 6, 10),
            (3, 11, 13),
        ]
        names = [d.name for p in pages for d in p.data]
        assert len(names) == TOTAL_DEVICES and names == sorted(names, key=str.casefold)
        desc = await client.list_all_devices(per_page=4, sort="-name")
        assert [d.name for d in desc] == names[::-1]
        offline = await client.list_all_devices(per_page=1, is_online="Offline")
        online = await client.list_all_devices(is_online=True)
        assert len(offline) == OFFLINE_DEVICES and not any(d.online for d in offline)
        assert len(online) == TOTAL_DEVICES - OFFLINE_DEVICES and all(d.online for d in online)
        yard = await client.list_all_devices(per_page=3, group="yard")
        assert len(yard) == 4 and all(d.client_identifier.startswith("YARD-") for d in yard)
        assert client.session.logins == 1 and client.session.refreshes == 0
    got = svc.received()
    assert got["accepted"]["login"] == 1 and got["rejected_by_status"] == {}


async def test_api_key_needs_no_login(svc):
    async with client_of(key_creds(svc)) as client:
        assert client.session is None
        assert len(await client.list_all_devices()) == TOTAL_DEVICES
    assert "login" not in svc.received()["accepted"]


async def test_operator_key_sees_its_devices_and_is_refused_others_without_relogin(svc):
    yard = (await uuids(svc, group="yard"))[0]
    async with client_of(key_creds(svc, user="operator")) as client:
        mine = await client.list_all_devices()
        assert len(mine) == 5
        with pytest.raises(AuthError) as exc:
            await client.get_device(yard)
    assert exc.value.status == 403 and "Unauthorized access" in str(exc.value)


async def test_lost_session_is_renewed_by_a_fresh_login(svc):
    device = (await uuids(svc))[0]
    async with client_of(login_creds(svc)) as client:
        await client.get_device(device)
        svc.reset()  # the service forgets every access and refresh token
        assert (await client.get_device(device)).uuid == device
        assert client.session.refreshes == 1 and client.session.logins == 2
    got = svc.received()
    assert got["accepted"]["login"] == 1 and got["rejected_by_status"] == {"400": 2}  # refused call, refresh


async def test_task_runs_share_one_login(svc):
    device = (await uuids(svc))[0]
    for _ in range(3):  # each task run opens its own client
        assert (await get_viziosense_device.fn(login_creds(svc), device)).uuid == device
    assert svc.received()["accepted"]["login"] == 1


async def test_wrong_password_is_an_auth_error_without_the_password(svc):
    creds = login_creds(svc).model_copy(update={"password": SecretStr("wrong-password-42")})
    async with client_of(creds) as client:
        with pytest.raises(AuthError) as exc:
            await client.list_devices()
    assert exc.value.status == 401 and "Invalid credentials" in str(exc.value)
    assert "wrong-password-42" not in str(exc.value)


# --- devices -------------------------------------------------------------------------------------------
async def test_get_update_and_refresh_a_device(svc):
    device = (await uuids(svc))[0]
    async with client_of(login_creds(svc)) as client:
        before = await client.get_device(device)
        updated = await client.update_device(
            device, {"name": "Gate 7", "geo_city": "Lyon", "geo_country": "France"}
        )
        assert (updated.uuid, updated.name, updated.geo_city, updated.geo_country) == (
            device,
            "Gate 7",
            "Lyon",
            "France",
        )
        assert updated.client_identifier == before.client_identifier
        assert (await client.get_device(device)).name == "Gate 7"
        refreshed = await client.refresh_device(device)
        assert refreshed.refreshed > before.refreshed  # ISO 8601 UTC strings sort by time
        with pytest.raises(NotFoundError):
            await client.get_device("no-such-device")
        with pytest.raises(ApiError, match="name field must not be greater than 255") as exc:
            await client.update_device(device, {"name": "x" * 300})
    assert exc.value.status == 422


# --- images --------------------------------------------------------------------------------------------
async def test_request_and_fetch_both_images(svc):
    device = (await uuids(svc, is_online="Online"))[0]
    async with client_of(login_creds(svc)) as client:
        request = await client.request_image(device)
        assert (request.ready_at - request.requested_at).total_seconds() >= READY_AFTER
        raw = await client.fetch_image(request, "raw")
        annotated = await client.fetch_image(request, "annotated")
    for snap in (raw, annotated):
        assert (snap.width, snap.height) == jpeg_dimensions(snap.content)
        assert snap.width >= 1280 and snap.height >= 720 and snap.content_type == "image/jpeg"
    assert raw.content != annotated.content
    got = svc.received()
    assert got["accepted"]["request_image"] == 1 and got["duplicates"] == {}


async def test_fetching_too_early_polls_until_served(svc):
    device = (await uuids(svc, is_online="Online"))[0]
    async with client_of(key_creds(svc)) as client:
        request = await client.request_image(device, ready_after=0)  # ignore the documented wait
        snap = await client.fetch_image(request, poll_interval=0.02, timeout=5.0)
    assert snap.polls > 1 and snap.width >= 1280
    assert svc.received()["rejected_by_status"]["404"] == snap.polls - 1


async def test_offline_device_cannot_take_a_picture(svc):
    device = (await uuids(svc, is_online="Offline"))[0]
    async with client_of(key_creds(svc)) as client:
        with pytest.raises(ApiError, match="Device is offline") as exc:
            await client.request_image(device)
    assert exc.value.status == 409 and not exc.value.retryable


# --- webhooks ------------------------------------------------------------------------------------------
async def test_webhooks_add_list_update_and_validation(svc):
    device = (await uuids(svc))[0]
    async with client_of(login_creds(svc)) as client:
        assert await client.list_webhooks(device) == []
        hook = await client.add_webhook(
            device,
            "https://hooks.example.com/vizio",
            "payload",
            actions="payload_transfer",
            headers={"Authorization": "Token abc"},
            params=[{"name": "p", "value": "1"}],
        )
        assert (hook.url, hook.webhook_type, hook.status, hook.actions) == (
            "https://hooks.example.com/vizio",
            "payload",
            1,
            "payload_transfer",
        )
        assert [(h.name, h.value) for h in hook.data.headers] == [("Authorization", "Token abc")]
        assert "Token abc" not in repr(hook)
        off = await client.update_webhook(device, hook.id, status=0, webhook_type="keepalive")
        assert (off.id, off.status, off.webhook_type, off.url) == (hook.id, 0, "keepalive", hook.url)
        listed = await client.list_webhooks(device)
        assert [(w.id, w.status) for w in listed] == [(hook.id, 0)]
        with pytest.raises(ApiError, match="actions field must not be greater than 255") as exc:
            await client.add_webhook(device, "https://hooks.example.com/2", "keepalive", actions="a" * 300)
        assert exc.value.status == 422
        with pytest.raises(NotFoundError, match="Webhook not found"):
            await client.update_webhook(device, 999, status=1)


# --- faults --------------------------------------------------------------------------------------------
async def test_gets_are_retried_through_503s_and_429_with_retry_after(svc):
    fast_backoff = RetryPolicy(base_delay=0.02, max_delay=0.2)  # the transport's backoff, scaled for tests
    svc.faults(error_rate=0.5, seed=7)
    async with VizioSenseClient(
        svc.url,
        email=svc.credentials["email"],
        password=svc.credentials["password"],
        settings=HttpSettings(retry=fast_backoff),
    ) as client:
        for _ in range(4):
            assert len(await client.list_all_devices(per_page=5)) == TOTAL_DEVICES
    svc.faults(burst_429=2, retry_after=5)
    async with client_of(key_creds(svc)) as client:
        assert len(await client.list_all_devices()) == TOTAL_DEVICES
    got = svc.received()
    assert got["faults_injected"]["503"] >= 3 and got["faults_injected"]["429"] == 2


async def test_image_request_lost_after_processing_is_outcome_unknown(svc):
    device = (await uuids(svc, is_online="Online"))[0]
    svc.faults(drop_rate=1.0, drop_after_processing=True, path_pattern=r"/image$")
    async with client_of(key_creds(svc)) as client:
        with pytest.raises(OutcomeUnknownError, match="may or may not have taken effect"):
            await client.request_image(device)
    got = svc.received()
    assert got["accepted"]["request_image"] == 1 and got["duplicates"] == {}  # taken once, not retried


# --- tasks ---------------------------------------------------------------------------------------------
async def test_tasks_run_with_a_block(svc):
    creds = login_creds(svc)
    devices = await list_viziosense_devices.fn(creds, sort="name", is_online="Online", per_page=4)
    assert len(devices) == TOTAL_DEVICES - OFFLINE_DEVICES
    device = devices[0].uuid
    assert (await get_viziosense_device.fn(creds, device)).uuid == device
    assert (
        await update_viziosense_device.fn(creds, device, {"geo_city": "Quebec City"})
    ).geo_city == "Quebec City"
    assert (await refresh_viziosense_device.fn(creds, device)).refreshed
    request = await request_viziosense_image.fn(creds, device, ready_after=READY_AFTER)
    snap = await fetch_viziosense_image.fn(creds, request, "annotated", **WAIT)
    assert snap.kind == "annotated" and jpeg_dimensions(snap.content) >= (1280, 720)
    hook = await add_viziosense_webhook.fn(creds, device, "https://hooks.example.com/k", "keepalive")
    await update_viziosense_webhook.fn(creds, device, hook.id, url="https://hooks.example.com/k2")
    assert [w.url for w in await list_viziosense_webhooks.fn(creds, device)] == [
        "https://hooks.example.com/k2"
    ]


async def test_harvest_task_on_several_devices_including_an_offline_one(svc):
    online = await uuids(svc, is_online="Online")
    offline = (await uuids(svc, is_online="Offline"))[0]
    batch = [*online[:5], offline, online[0], "bad/uuid", None]
    outcomes = await harvest_viziosense_snapshots.fn(
        key_creds(svc), batch, concurrency=3, ready_after=READY_AFTER, **WAIT
    )
    assert [o.device_uuid for o in outcomes] == [str(u) for u in batch]
    assert [o.status for o in outcomes] == ["done"] * 5 + ["failed", "rejected", "rejected", "rejected"]
    for o in outcomes[:5]:
        assert o.error is None and o.seconds >= READY_AFTER
        for snap in (o.raw, o.annotated):
            assert jpeg_dimensions(snap.content) >= (1280, 720)
    failed = outcomes[5]
    assert failed.error_status == 409 and "Device is offline" in failed.error and failed.raw is None
    assert outcomes[6].error == "duplicate of item 0"
    assert "device_uuid: 'bad/uuid' is not a valid identifier" in outcomes[7].error
    assert outcomes[8].error == "device uuid must be a string, got NoneType"
    got = svc.received()
    assert got["accepted"]["request_image"] == 5 and got["duplicates"] == {}
    assert got["state"]["images_served"] == 10


async def test_harvest_task_hands_each_camera_to_on_snapshot_and_keeps_no_image(svc):
    """The snapshot harvest's way: each camera handed over once its images are in (or its request failed),
    images dropped afterwards, a failing consumer failing its camera only, bounds shared by two batches."""
    online = await uuids(svc, is_online="Online")
    offline = (await uuids(svc, is_online="Offline"))[0]
    limits = SnapshotLimits(concurrency=2, holding=1)  # one camera holds images at a time, across batches
    handed: dict[str, tuple[int, int]] = {}
    holding = []

    async def consume(outcome: SnapshotOutcome) -> None:
        holding.append(outcome.device_uuid)
        assert len(holding) == 1  # the shared holding bound
        await asyncio.sleep(0.01)
        handed[outcome.device_uuid] = (len(outcome.raw.content) if outcome.raw else 0, outcome.polls)
        holding.remove(outcome.device_uuid)
        if outcome.device_uuid == online[1]:
            raise RuntimeError("disk full")

    batches = [[online[0], online[1], offline], [online[2], online[3]]]
    first, second = await asyncio.gather(
        *(
            harvest_viziosense_snapshots.fn(
                key_creds(svc), batch, ready_after=READY_AFTER, on_snapshot=consume, limits=limits, **WAIT
            )
            for batch in batches
        )
    )
    assert set(handed) == {*online[:4], offline}  # every camera asked, the offline one too (its error)
    assert all(size > 0 and polls >= 2 for uuid, (size, polls) in handed.items() if uuid != offline)
    assert [o.status for o in first + second] == ["done", "failed", "failed", "done", "done"]
    assert first[1].error == "on_snapshot: RuntimeError: disk full"
    assert first[2].error_status == 409 and first[2].seconds_request is not None
    assert all(o.raw is None and o.annotated is None for o in first + second)
    assert all(o.seconds >= READY_AFTER and o.seconds_download is not None for o in (first[0], *second))
    assert svc.received()["accepted"]["request_image"] == 4
