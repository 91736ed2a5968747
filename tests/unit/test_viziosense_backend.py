"""VizioSense emulator backend: tokens, role filtering, pagination, updates, the image state machine, webhooks.

All time-based behaviour runs on a ManualClock, so the 20 s / 30 min / 3600 s boundaries are exact.
"""

from __future__ import annotations

import copy
import io
from datetime import datetime

import pytest
from PIL import Image, ImageChops

from emulators.common import ManualClock, ServiceError
from emulators.viziosense import DEFAULT_CONFIG, credentials, error_body
from emulators.viziosense.backend import VizioSenseBackend, device_uuid, iso_utc
from emulators.viziosense.images import MCU, ImageRenderer

ADMIN = "Bearer vzs-demo-admin-api-key"
OPERATOR = "Bearer vzs-demo-operator-api-key"
START = 1_750_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
def backend(clock: ManualClock):
    b = VizioSenseBackend(copy.deepcopy(DEFAULT_CONFIG), clock, "http://emu.test")
    yield b
    b.close()


def rejected(fn, *args) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        fn(*args)
    return info.value


def login(b: VizioSenseBackend, email="admin@viziosense.example", password="vzs-admin-demo") -> dict:
    return b.login({"email": email, "password": password})["data"]


def uuids(page: dict) -> list[str]:
    return [d["uuid"] for d in page["data"]]


# --- auth ---------------------------------------------------------------------------------------------
def test_login_returns_documented_shape(backend):
    data = login(backend)
    assert set(data) == {"user", "token_type", "expires_in", "access_token", "refresh_token"}
    assert data["user"] == {
        "type": "integrator",
        "name": "Demo Admin",
        "email": "admin@viziosense.example",
        "role": ["admin"],
    }
    assert data["token_type"] == "Bearer" and data["expires_in"] == 3600
    assert data["access_token"] != data["refresh_token"]
    assert backend.authenticate(f"Bearer {data['access_token']}").email == "admin@viziosense.example"


def test_login_rejections(backend):
    bad = rejected(backend.login, {"email": "admin@viziosense.example", "password": "wrong"})
    assert (bad.status, bad.body) == (401, {"httpError": 401, "message": "Invalid credentials"})
    unknown = rejected(backend.login, {"email": "nobody@example.com", "password": "x"})
    assert unknown.status == 401
    missing = rejected(backend.login, {"email": ""})
    assert (missing.status, missing.body) == (
        422,
        {"error": ["The email field is required.", "The password field is required."]},
    )
    assert rejected(backend.login, ["not", "an", "object"]).status == 422


def test_access_token_expires_exactly_after_expires_in(backend, clock):
    token = login(backend)["access_token"]
    clock.advance(3599.999)
    assert backend.authenticate(f"Bearer {token}").email == "admin@viziosense.example"
    clock.advance(0.001)
    err = rejected(backend.authenticate, f"Bearer {token}")
    assert (err.status, err.body) == (400, {"httpError": 400, "message": "Access token error"})
    assert err.reason == "access token expired"


def test_token_lifetime_is_configurable(clock):
    b = VizioSenseBackend({**copy.deepcopy(DEFAULT_CONFIG), "access_token_ttl": 60}, clock, "http://emu.test")
    data = login(b)
    assert data["expires_in"] == 60
    clock.advance(60)
    assert rejected(b.authenticate, f"Bearer {data['access_token']}").status == 400
    b.close()


def test_refresh_issues_new_tokens_once(backend, clock):
    first = login(backend)
    clock.advance(3600)  # the access token is dead, the refresh token is not
    second = backend.refresh_token({"refresh_token": first["refresh_token"]})["data"]
    assert second["access_token"] not in (first["access_token"], first["refresh_token"])
    assert second["user"]["email"] == "admin@viziosense.example"
    assert backend.authenticate(f"Bearer {second['access_token']}").is_admin
    reused = rejected(backend.refresh_token, {"refresh_token": first["refresh_token"]})
    assert reused.body == {"httpError": 400, "message": "Access token error"}
    assert rejected(backend.refresh_token, {}).status == 422


def test_refresh_token_expires(backend, clock):
    token = login(backend)["refresh_token"]
    clock.advance(30 * 86_400)
    assert rejected(backend.refresh_token, {"refresh_token": token}).reason == "refresh token expired"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-token"]
)
def test_bad_authorization_is_access_token_error(backend, header):
    err = rejected(backend.authenticate, header)
    assert (err.status, err.body) == (400, {"httpError": 400, "message": "Access token error"})


def test_api_keys_act_as_their_user_and_never_expire(backend, clock):
    clock.advance(10 * 365 * 86_400)
    assert backend.authenticate(ADMIN).is_admin
    operator = backend.authenticate("bearer vzs-demo-operator-api-key")  # scheme is case-insensitive
    assert operator.email == "operator@viziosense.example" and not operator.is_admin


def test_api_key_for_unknown_user_is_a_config_error(clock):
    cfg = {**copy.deepcopy(DEFAULT_CONFIG), "api_keys": {"k": "ghost@example.com"}}
    with pytest.raises(ValueError, match="unknown user"):
        VizioSenseBackend(cfg, clock, "http://emu.test")


# --- devices: fleet, roles, filters, pages --------------------------------------------------------------
def test_fleet_is_deterministic_and_realistic(clock):
    a = VizioSenseBackend(copy.deepcopy(DEFAULT_CONFIG), clock, "http://a")
    b = VizioSenseBackend(copy.deepcopy(DEFAULT_CONFIG), ManualClock(start=START + 999), "http://b")
    assert list(a.devices) == list(b.devices)
    assert len(a.devices) == 13  # 1 explicit + 12 generated
    assert [d.name for d in a.devices.values()] == [d.name for d in b.devices.values()]
    fleet = list(a.devices.values())[1:]
    assert fleet[0].uuid == device_uuid("demo", "0") == credentials(DEFAULT_CONFIG)["sample_device_uuid"]
    assert [i + 1 for i, d in enumerate(fleet) if not d.is_online] == [5, 10]  # offline_every: 5
    assert all(
        d.geo_city and d.geo_country and d.name.endswith(f"Cam {i + 1:02d}") for i, d in enumerate(fleet)
    )
    a.close()
    b.close()


def test_growing_the_fleet_keeps_existing_devices(clock):
    small = VizioSenseBackend(copy.deepcopy(DEFAULT_CONFIG), clock, "http://a")
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["fleet"]["count"] = 500
    big = VizioSenseBackend(cfg, clock, "http://a")
    assert len(big.devices) == 501
    for uuid_, device in small.devices.items():
        assert big.devices[uuid_].name == device.name
    small.close()
    big.close()


def test_admin_sees_all_and_operator_only_its_groups_and_devices(backend):
    admin = backend.authenticate(ADMIN)
    operator = backend.authenticate(OPERATOR)
    assert backend.list_devices(admin, {"per_page": "100"})["meta"]["total"] == 13
    seen = backend.list_devices(operator, {"per_page": "100"})["data"]
    by_uuid = {d.uuid: d for d in backend.devices.values()}
    assert {by_uuid[d["uuid"]].group for d in seen} == {"parking", "lobby"}
    assert len(seen) == 4 + 1  # parking = fleet devices 1, 4, 7, 10; plus LOBBY-0001 by client identifier
    yard = next(d for d in backend.devices.values() if d.group == "yard")
    err = rejected(backend.get_device, operator, yard.uuid)
    assert (err.status, err.body) == (403, {"httpError": 403, "message": "Unauthorized access"})
    assert backend.get_device(admin, yard.uuid)["uuid"] == yard.uuid
    missing = rejected(backend.get_device, admin, "00000000-0000-0000-0000-000000000000")
    assert (missing.status, missing.body) == (404, {"httpError": 404, "message": "Device not found"})


@pytest.mark.parametrize(
    ("page", "per_page", "expected"),  # expected: current_page, from, to, last_page (= total_pages), per_page
    [
        ("1", "5", (1, 1, 5, 3, 5)),
        ("2", "5", (2, 6, 10, 3, 5)),
        ("3", "5", (3, 11, 13, 3, 5)),
        ("4", "5", (4, None, None, 3, 5)),  # past the end: empty page, Laravel's null from/to
        (None, None, (1, 1, 13, 1, 15)),  # default per_page 15
        ("1", "13", (1, 1, 13, 1, 13)),
        ("2", "12", (2, 13, 13, 2, 12)),
    ],
)
def test_pagination_meta(backend, page, per_page, expected):
    query = {k: v for k, v in {"page": page, "per_page": per_page}.items() if v is not None}
    result = backend.list_devices(backend.authenticate(ADMIN), query)
    current, first, last, last_page, size = expected
    assert result["meta"] == {
        "current_page": current,
        "from": first,
        "last_page": last_page,
        "per_page": size,
        "total": 13,
        "to": last,
        "total_pages": last_page,
    }
    assert len(result["data"]) == (0 if first is None else last - first + 1)


def test_pages_cover_every_device_once(backend):
    admin = backend.authenticate(ADMIN)
    seen = []
    for page in (1, 2, 3):
        seen += uuids(backend.list_devices(admin, {"page": str(page), "per_page": "5", "sort": "name"}))
    assert sorted(seen) == sorted(backend.devices) and len(set(seen)) == 13


def test_empty_result_meta(backend):
    result = backend.list_devices(backend.authenticate(ADMIN), {"group": "no-such-group"})
    assert result == {
        "data": [],
        "meta": {
            "current_page": 1,
            "from": None,
            "last_page": 1,
            "per_page": 15,
            "total": 0,
            "to": None,
            "total_pages": 1,
        },
    }


def test_filters_and_sort(backend):
    admin = backend.authenticate(ADMIN)
    page = {"per_page": "100"}
    online = backend.list_devices(admin, {**page, "is_online": "Online"})["data"]
    offline = backend.list_devices(admin, {**page, "is_online": "Offline"})["data"]
    assert (len(online), len(offline)) == (11, 2)
    assert {d["is_online"] for d in online} == {1} and {d["is_online"] for d in offline} == {0}
    yard = backend.list_devices(admin, {**page, "group": "yard"})["data"]
    assert len(yard) == 4 and all(backend.devices[d["uuid"]].group == "yard" for d in yard)
    both = backend.list_devices(admin, {**page, "group": "yard", "is_online": "Offline"})["data"]
    assert len(both) == 1 and both[0]["is_online"] == 0  # fleet device 5 is in "yard" and offline
    names = [d["name"] for d in backend.list_devices(admin, {**page, "sort": "name"})["data"]]
    assert names == sorted(names, key=str.casefold)
    desc = [d["name"] for d in backend.list_devices(admin, {**page, "sort": "-name"})["data"]]
    assert desc == names[::-1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"is_online": "yes"}, "The selected is_online is invalid. Use Online or Offline."),
        ({"sort": "city"}, "The selected sort is invalid. Use name or -name."),
        ({"page": "0"}, "The page field must be at least 1."),
        ({"page": "two"}, "The page field must be an integer."),
        ({"per_page": "101"}, "The per_page field must be between 1 and 100."),
        ({"per_page": "0"}, "The per_page field must be between 1 and 100."),
    ],
)
def test_invalid_list_parameters(backend, query, message):
    err = rejected(backend.list_devices, backend.authenticate(ADMIN), query)
    assert (err.status, err.body) == (422, {"error": [message]})


# --- device update and refresh -------------------------------------------------------------------------
def test_update_changes_only_the_updatable_fields(backend, clock):
    admin = backend.authenticate(ADMIN)
    uuid_ = next(iter(backend.devices))
    before = backend.get_device(admin, uuid_)
    body = {
        "name": "Renamed",
        "geo_city": "Lyon",
        "geo_country": "France",
        "client_identifier": "MY-ID-1",
        "uuid": "hijack",
        "is_online": 0,
        "refreshed": "1999-01-01T00:00:00Z",
        "group": "yard",
        "unknown": True,
    }
    after = backend.update_device(admin, uuid_, body)
    assert after == {
        **before,
        "name": "Renamed",
        "geo_city": "Lyon",
        "geo_country": "France",
        "client_identifier": "MY-ID-1",
    }
    assert backend.devices[uuid_].group == "lobby"
    assert backend.get_device(admin, uuid_) == after
    assert backend.update_device(admin, uuid_, {"name": "Again"})["geo_city"] == "Lyon"  # partial update


def test_update_validation(backend):
    admin = backend.authenticate(ADMIN)
    uuid_ = next(iter(backend.devices))
    err = rejected(backend.update_device, admin, uuid_, {"name": "", "geo_city": 5, "geo_country": "x" * 256})
    assert err.status == 422
    assert err.body == {
        "error": [
            "The name field must not be empty.",
            "The geo_city field must be a string.",
            "The geo_country field must not be greater than 255 characters.",
        ]
    }
    assert backend.devices[uuid_].name == "HQ Lobby Camera"  # nothing applied


def test_operator_cannot_update_foreign_device(backend):
    yard = next(d for d in backend.devices.values() if d.group == "yard")
    err = rejected(backend.update_device, backend.authenticate(OPERATOR), yard.uuid, {"name": "x"})
    assert err.status == 403 and yard.name != "x"


def test_repeated_update_is_counted_as_duplicate(backend):
    admin = backend.authenticate(ADMIN)
    uuid_ = next(iter(backend.devices))
    backend.update_device(admin, uuid_, {"name": "Same"})
    backend.update_device(admin, uuid_, {"name": "Same"})
    assert backend.received.snapshot()["duplicates"] == {"update_device": 1}


def test_refresh_sets_refreshed_from_the_clock(backend, clock):
    admin = backend.authenticate(ADMIN)
    uuid_ = next(iter(backend.devices))
    clock.advance(42.5)
    device = backend.refresh_device(admin, uuid_)
    assert device["refreshed"] == iso_utc(START + 42.5)
    parsed = datetime.fromisoformat(device["refreshed"])
    assert parsed.timestamp() == START + 42.5 and parsed.utcoffset().total_seconds() == 0


# --- images -----------------------------------------------------------------------------------------------
def online_uuid(b: VizioSenseBackend) -> str:
    return next(d.uuid for d in b.devices.values() if d.is_online)


async def test_image_not_ready_then_ready_then_expired_at_exact_boundaries(backend, clock):
    raw, annotated = backend.request_image(backend.authenticate(ADMIN), online_uuid(backend))
    assert raw.endswith("_raw_image") and annotated.endswith("_annotated_image")
    assert raw[: -len("_raw_image")] == annotated[: -len("_annotated_image")]
    clock.advance(19.999)
    with pytest.raises(ServiceError) as info:
        await backend.fetch_image(raw)
    assert (info.value.status, info.value.body) == (404, {"httpError": 404, "message": "Image not ready yet"})
    clock.advance(0.001)  # exactly 20 s
    assert (await backend.fetch_image(raw))[:3] == b"\xff\xd8\xff"
    clock.advance(1800 - 20 - 0.001)  # last instant of the 30 min
    assert (await backend.fetch_image(annotated))[:3] == b"\xff\xd8\xff"
    clock.advance(0.001)
    for name in (raw, annotated):
        with pytest.raises(ServiceError) as info:
            await backend.fetch_image(name)
        assert (info.value.status, info.value.body) == (
            410,
            {"httpError": 410, "message": "Image link expired"},
        )
    state = backend.inspect()
    assert state["image_links_live"] == 0 and state["image_stamp_bytes"] == 0  # memory freed
    assert (state["images_served"], state["not_ready_fetches"], state["expired_fetches"]) == (2, 1, 2)


async def test_image_timings_are_configurable(clock):
    cfg = {**copy.deepcopy(DEFAULT_CONFIG), "image_ready_after": 2, "image_link_ttl": 10}
    b = VizioSenseBackend(cfg, clock, "http://emu.test")
    raw, _ = b.request_image(b.authenticate(ADMIN), online_uuid(b))
    clock.advance(2)
    assert await b.fetch_image(raw)
    clock.advance(8)
    with pytest.raises(ServiceError, match="410"):
        await b.fetch_image(raw)
    b.close()


async def test_images_are_real_large_stamped_jpegs(backend, clock):
    admin = backend.authenticate(ADMIN)
    uuid_ = online_uuid(backend)
    raw_name, annotated_name = backend.request_image(admin, uuid_)
    clock.advance(20)
    raw_bytes = await backend.fetch_image(raw_name)
    annotated_bytes = await backend.fetch_image(annotated_name)
    for data in (raw_bytes, annotated_bytes):
        assert len(data) > 204_800  # bigger than Miniviz's image limit, as real frames are
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "JPEG" and image.size == (1280, 720)
    raw = Image.open(io.BytesIO(raw_bytes)).convert("RGB")
    annotated = Image.open(io.BytesIO(annotated_bytes)).convert("RGB")
    band = raw.crop((0, 0, 1280, 100)).convert("L")
    assert band.getextrema() == (0, 255) or max(band.getdata()) > 200  # white text on the black band
    assert ImageChops.difference(raw, annotated).getbbox() is not None  # annotations drawn
    # A second request stamps a different time: the band differs, the scene below it does not.
    clock.advance(1)
    second_name, _ = backend.request_image(admin, uuid_)
    clock.advance(20)
    second = Image.open(io.BytesIO(await backend.fetch_image(second_name))).convert("RGB")
    diff = ImageChops.difference(raw, second).getbbox()
    assert diff is not None and diff[3] <= 200


def test_spliced_jpeg_matches_the_scene_pixel_for_pixel():
    """The band is spliced at block-row boundaries: every pixel below it decodes exactly as the scene."""
    renderer = ImageRenderer(width=800, height=480, quality=80, variants=2)
    stamp = renderer.stamp(1, "Title", ["line one", "line two"])
    frame = renderer._scene(1)[0]
    scene = Image.open(io.BytesIO(frame.header + frame.coded)).convert("RGB")
    composed = Image.open(io.BytesIO(renderer.compose(1, stamp, annotated=False))).convert("RGB")
    below = (0, (stamp.rows + 1) * MCU, 800, 480)  # one block row of margin: chroma upsampling blends edges
    assert composed.size == (800, 480)
    assert ImageChops.difference(scene.crop(below), composed.crop(below)).getbbox() is None
    assert max(composed.crop((0, 0, 800, stamp.rows * MCU - 4)).convert("L").getdata()) > 200


def test_image_size_and_quality_are_configurable(clock):
    cfg = {**copy.deepcopy(DEFAULT_CONFIG), "image": {"width": 1920, "height": 1080, "quality": 90}}
    b = VizioSenseBackend(cfg, clock, "http://emu.test")
    assert (b.renderer.width, b.renderer.height, b.renderer.quality) == (1920, 1080, 90)
    b.close()
    with pytest.raises(ValueError, match="quality"):
        ImageRenderer(quality=0)


def test_offline_device_refuses_image_requests(backend):
    offline = next(d.uuid for d in backend.devices.values() if not d.is_online)
    err = rejected(backend.request_image, backend.authenticate(ADMIN), offline)
    assert (err.status, err.body) == (409, {"httpError": 409, "message": "Device is offline"})
    assert backend.inspect()["image_requests"] == 0


def test_image_request_needs_access_to_the_device(backend):
    yard = next(d for d in backend.devices.values() if d.group == "yard" and d.is_online)
    assert rejected(backend.request_image, backend.authenticate(OPERATOR), yard.uuid).status == 403


async def test_unknown_image_link_is_404(backend):
    for name in ("nothing", "0123_raw_image", "abc_annotated_image"):
        with pytest.raises(ServiceError) as info:
            await backend.fetch_image(name)
        assert info.value.body == {"httpError": 404, "message": "Image not found"}


def test_second_request_before_ready_counts_as_duplicate(backend, clock):
    admin = backend.authenticate(ADMIN)
    uuid_ = online_uuid(backend)
    backend.request_image(admin, uuid_)
    clock.advance(5)
    backend.request_image(admin, uuid_)  # previous one still pending: a retry, most likely
    clock.advance(15)
    backend.request_image(admin, uuid_)  # 20 s after the first: a fresh snapshot
    snap = backend.received.snapshot()
    assert snap["accepted"]["request_image"] == 3 and snap["duplicates"] == {"request_image": 1}


# --- webhooks ---------------------------------------------------------------------------------------------
WEBHOOK = {
    "url": "https://hooks.example.com/vizio",
    "webhook_type": "payload",
    "status": 1,
    "actions": "payload_transfer",
    "data": {
        "headers": [{"name": "Authorization", "value": "Token abc"}],
        "params": [{"name": "param1", "value": "value1"}],
    },
}


def test_webhook_add_list_update(backend):
    admin = backend.authenticate(ADMIN)
    uuid_ = online_uuid(backend)
    hook = backend.add_webhook(admin, uuid_, WEBHOOK)
    assert hook == {"id": 1, **WEBHOOK}
    keepalive = backend.add_webhook(
        admin, uuid_, {"url": "http://ping.example.com/", "webhook_type": "keepalive"}
    )
    assert keepalive == {
        "id": 2,
        "url": "http://ping.example.com/",
        "webhook_type": "keepalive",
        "status": 1,
        "actions": "",
        "data": {"headers": [], "params": []},
    }
    assert backend.list_webhooks(admin, uuid_) == {"data": [hook, keepalive]}
    other = next(u for u in backend.devices if u != uuid_)
    assert backend.list_webhooks(admin, other) == {"data": []}
    updated = backend.update_webhook(admin, uuid_, "1", {"status": 0})
    assert updated == {**hook, "status": 0}
    assert backend.list_webhooks(admin, uuid_)["data"][0]["status"] == 0


def test_webhook_validation_reports_every_problem(backend):
    admin = backend.authenticate(ADMIN)
    body = {
        "url": "ftp://x",
        "webhook_type": "alert",
        "status": True,
        "actions": 3,
        "data": {"headers": [{"name": "", "value": 1}], "params": "a=b"},
    }
    err = rejected(backend.add_webhook, admin, online_uuid(backend), body)
    assert err.status == 422
    assert err.body == {
        "error": [
            "The url field must be a valid URL.",
            "The selected webhook type is invalid. Use payload or keepalive.",
            "The status field must be 0 or 1.",
            "The actions field must be a string.",
            "The data.headers.0.name field is required.",
            "The data.headers.0.value field must be a string.",
            "The data.params field must be a list.",
        ]
    }
    missing = rejected(backend.add_webhook, admin, online_uuid(backend), {})
    assert missing.body == {"error": ["The url field is required.", "The webhook type field is required."]}
    assert backend.webhooks == {}


def test_webhook_update_errors(backend):
    admin = backend.authenticate(ADMIN)
    uuid_ = online_uuid(backend)
    backend.add_webhook(admin, uuid_, WEBHOOK)
    other = next(u for u in backend.devices if u != uuid_)
    for device, hook_id in ((uuid_, "99"), (uuid_, "abc"), (other, "1")):
        err = rejected(backend.update_webhook, admin, device, hook_id, {"status": 0})
        assert (err.status, err.body) == (404, {"httpError": 404, "message": "Webhook not found"})
    assert rejected(backend.update_webhook, admin, uuid_, "1", {"webhook_type": "x"}).status == 422


def test_same_webhook_twice_is_a_duplicate(backend):
    admin = backend.authenticate(ADMIN)
    uuid_ = online_uuid(backend)
    backend.add_webhook(admin, uuid_, WEBHOOK)
    backend.add_webhook(admin, uuid_, WEBHOOK)
    backend.add_webhook(admin, uuid_, {**WEBHOOK, "webhook_type": "keepalive"})
    assert backend.received.snapshot()["duplicates"] == {"add_webhook": 1}
    assert len(backend.webhooks) == 3  # accepted, like the real API presumably does; just counted


# --- reset, inspect, error shapes -------------------------------------------------------------------------
def test_reset_restores_config_state(backend):
    admin = backend.authenticate(ADMIN)
    uuid_ = online_uuid(backend)
    token = login(backend)["access_token"]
    backend.update_device(admin, uuid_, {"name": "Changed"})
    backend.add_webhook(admin, uuid_, WEBHOOK)
    backend.request_image(admin, uuid_)
    backend.reset()
    assert backend.devices[uuid_].name == "HQ Lobby Camera"
    assert backend.webhooks == {} and backend.inspect()["image_requests"] == 0
    assert rejected(backend.authenticate, f"Bearer {token}").status == 400
    assert backend.received.snapshot()["accepted"] == {}


def test_inspect_counts(backend):
    state = backend.inspect()
    assert {k: state[k] for k in ("devices", "devices_online", "devices_offline", "webhooks")} == {
        "devices": 13,
        "devices_online": 11,
        "devices_offline": 2,
        "webhooks": 0,
    }


def test_error_body_shapes():
    assert error_body(405, "Method Not Allowed") == {"httpError": 405, "message": "Unsupported method"}
    assert error_body(500, "boom") == {"httpError": 500, "message": "Server error"}
    assert error_body(503, "Service Unavailable") == {"httpError": 503, "message": "Service Unavailable"}
    assert error_body(422, "x", [{"attr": "page", "detail": "bad"}]) == {"error": ["page: bad"]}


def test_credentials_list_logins_and_keys():
    creds = credentials(DEFAULT_CONFIG)
    assert creds["email"] == "admin@viziosense.example" and creds["password"] == "vzs-admin-demo"
    assert creds["api_key"] == "vzs-demo-admin-api-key"
    assert {k["key"] for k in creds["api_keys"]} == {"vzs-demo-admin-api-key", "vzs-demo-operator-api-key"}
