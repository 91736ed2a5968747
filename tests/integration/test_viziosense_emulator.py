"""VizioSense emulator over real HTTP: auth, devices, the 20 s image flow, webhooks, errors, faults.

The vendor page has no curl or code samples; the documented examples (``?sort=name``, ``?is_online=Online``,
the response samples' field sets) are checked here, plus every documented rejection (400/403/405) and the
ASSUMED ones (401 login, 404 device, 409 offline, 410 expired link, 422 validation).
"""

from __future__ import annotations

import io
import json
import subprocess
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import start_service

pytestmark = pytest.mark.integration

DEVICE_FIELDS = {"uuid", "name", "client_identifier", "refreshed", "is_online", "geo_city", "geo_country"}
META_FIELDS = {"current_page", "from", "last_page", "per_page", "total", "to", "total_pages"}
WEBHOOK = {
    "url": "https://hooks.example.com/vizio",
    "webhook_type": "payload",
    "status": 1,
    "actions": "payload_transfer",
    "data": {
        "headers": [{"name": "Authorization", "value": "Token abc"}],
        "params": [{"name": "p", "value": "1"}],
    },
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with start_service("viziosense", tmp_path_factory) as emu:  # time_scale 0.01: 20 s wait = 0.2 s
        yield emu["viziosense"]


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()


@pytest.fixture
def api(svc):
    """An admin client authenticated with the long-lived API key."""
    with httpx.Client(
        base_url=svc.url, headers={"Authorization": f"Bearer {svc.credentials['api_key']}"}, timeout=10
    ) as client:
        yield client


def operator_client(svc) -> httpx.Client:
    key = next(k["key"] for k in svc.credentials["api_keys"] if k["user"].startswith("operator"))
    return httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def all_devices(api: httpx.Client, **params) -> list[dict]:
    return api.get("/api/v1/devices", params={"per_page": 100, **params}).json()["data"]


def wait_for_image(url: str, timeout: float = 5.0) -> httpx.Response:
    """Poll an image link until it stops answering 404 (the 20 s wait, scaled)."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(url, timeout=10)
        if response.status_code != 404 or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


# --- auth -------------------------------------------------------------------------------------------------
def test_login_then_list_devices_with_the_access_token(svc):
    creds = svc.credentials
    response = httpx.post(
        f"{svc.url}/api/v1/auth/login", json={"email": creds["email"], "password": creds["password"]}
    )
    assert response.status_code == 200
    data = response.json()["data"]
    assert set(data) == {"user", "token_type", "expires_in", "access_token", "refresh_token"}
    assert set(data["user"]) == {"type", "name", "email", "role"} and data["user"]["role"] == ["admin"]
    assert (data["token_type"], data["expires_in"]) == ("Bearer", 3600)
    listing = httpx.get(
        f"{svc.url}/api/v1/devices", headers={"Authorization": f"Bearer {data['access_token']}"}
    )
    assert listing.status_code == 200 and listing.json()["meta"]["total"] == 13


def test_curl_login_and_documented_query_examples(svc):
    """Plain curl, as an integrator would try it: login, then ?sort=name and ?is_online=Online."""
    creds = svc.credentials
    login = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{svc.url}/api/v1/auth/login", "-H", "Content-Type: application/json",
         "-d", json.dumps({"email": creds["email"], "password": creds["password"]})],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = json.loads(login.stdout)["data"]["access_token"]
    for query, check in (("sort=name", "sorted"), ("is_online=Online", "online")):
        out = subprocess.run(
            ["curl", "-sS", f"{svc.url}/api/v1/devices?{query}", "-H", f"Authorization: Bearer {token}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        body = json.loads(out.stdout)
        assert set(body) == {"data", "meta"} and set(body["meta"]) == META_FIELDS
        assert all(set(d) == DEVICE_FIELDS for d in body["data"])
        if check == "sorted":
            names = [d["name"] for d in body["data"]]
            assert names == sorted(names, key=str.casefold) and len(names) == 13
        else:
            assert len(body["data"]) == 11 and {d["is_online"] for d in body["data"]} == {1}


def test_bad_login_is_401_and_missing_fields_422(svc):
    wrong = httpx.post(
        f"{svc.url}/api/v1/auth/login", json={"email": svc.credentials["email"], "password": "no"}
    )
    assert (wrong.status_code, wrong.json()) == (401, {"httpError": 401, "message": "Invalid credentials"})
    missing = httpx.post(f"{svc.url}/api/v1/auth/login", json={"email": "a@b.c"})
    assert (missing.status_code, missing.json()) == (422, {"error": ["The password field is required."]})
    garbage = httpx.post(f"{svc.url}/api/v1/auth/login", content=b"{not json")
    assert (garbage.status_code, garbage.json()) == (422, {"error": ["The request body must be valid JSON."]})


def test_refresh_rotates_tokens(svc):
    creds = svc.credentials
    first = httpx.post(
        f"{svc.url}/api/v1/auth/login", json={"email": creds["email"], "password": creds["password"]}
    )
    refresh_token = first.json()["data"]["refresh_token"]
    second = httpx.post(f"{svc.url}/api/v1/auth/refresh", json={"refresh_token": refresh_token})
    assert second.status_code == 200
    data = second.json()["data"]
    assert set(data) == {"user", "token_type", "expires_in", "access_token", "refresh_token"}
    ok = httpx.get(f"{svc.url}/api/v1/devices", headers={"Authorization": f"Bearer {data['access_token']}"})
    assert ok.status_code == 200
    again = httpx.post(f"{svc.url}/api/v1/auth/refresh", json={"refresh_token": refresh_token})
    assert (again.status_code, again.json()) == (400, {"httpError": 400, "message": "Access token error"})


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Token vzs-demo-admin-api-key"}],
    ids=["missing", "unknown-token", "wrong-scheme"],
)
def test_bad_or_missing_token_is_400_access_token_error(svc, headers):
    for method, path in (("GET", "/api/v1/devices"), ("POST", "/api/v1/devices/x/image")):
        response = httpx.request(method, f"{svc.url}{path}", headers=headers)
        assert (response.status_code, response.json()) == (
            400,
            {"httpError": 400, "message": "Access token error"},
        )


# --- devices ----------------------------------------------------------------------------------------------
def test_list_pages_filters_and_sort(api):
    pages = [
        api.get("/api/v1/devices", params={"per_page": 5, "page": p, "sort": "name"}).json()
        for p in (1, 2, 3, 4)
    ]
    assert [p["meta"]["from"] for p in pages] == [1, 6, 11, None]
    assert [p["meta"]["to"] for p in pages] == [5, 10, 13, None]
    assert {(p["meta"]["last_page"], p["meta"]["total_pages"], p["meta"]["total"]) for p in pages} == {
        (3, 3, 13)
    }
    names = [d["name"] for p in pages for d in p["data"]]
    assert names == sorted(names, key=str.casefold) and len(set(names)) == 13
    desc = [d["name"] for d in all_devices(api, sort="-name")]
    assert desc == names[::-1]
    assert api.get("/api/v1/devices").json()["meta"]["per_page"] == 15
    assert len(all_devices(api, is_online="Offline")) == 2
    yard = all_devices(api, group="yard")
    assert len(yard) == 4 and all(d["client_identifier"].startswith("YARD-") for d in yard)
    assert all_devices(api, group="yard", is_online="Offline")[0]["client_identifier"] == "YARD-0005"
    bad = api.get("/api/v1/devices", params={"is_online": "maybe", "per_page": 500})
    assert bad.status_code == 422
    assert bad.json() == {
        "error": [
            "The selected is_online is invalid. Use Online or Offline.",
            "The per_page field must be between 1 and 100.",
        ]
    }


def test_operator_sees_only_its_devices_and_is_forbidden_others(svc, api):
    with operator_client(svc) as operator:
        mine = all_devices(operator)
        assert len(mine) == 5
        assert {d["client_identifier"].split("-")[0] for d in mine} == {"PARKING", "LOBBY"}
        yard = all_devices(api, group="yard")[0]["uuid"]
        for method, path, body in (
            ("GET", f"/api/v1/devices/{yard}", None),
            ("PATCH", f"/api/v1/devices/{yard}", {"name": "x"}),
            ("POST", f"/api/v1/devices/{yard}/image", None),
            ("GET", f"/api/v1/devices/{yard}/webhooks", None),
        ):
            response = operator.request(method, path, json=body)
            assert (response.status_code, response.json()) == (
                403,
                {"httpError": 403, "message": "Unauthorized access"},
            ), path


def test_get_update_and_refresh_device(api, svc):
    uuid_ = svc.credentials["sample_device_uuid"]
    device = api.get(f"/api/v1/devices/{uuid_}").json()
    assert set(device) == DEVICE_FIELDS and device["uuid"] == uuid_
    patched = api.patch(
        f"/api/v1/devices/{uuid_}",
        json={"name": "Gate 7", "geo_city": "Lyon", "geo_country": "France", "is_online": 0, "uuid": "other"},
    )
    assert patched.status_code == 200
    assert patched.json() == {**device, "name": "Gate 7", "geo_city": "Lyon", "geo_country": "France"}
    put = api.put(f"/api/v1/devices/{uuid_}", json={"client_identifier": "MINE-1"})
    assert put.status_code == 200 and put.json()["client_identifier"] == "MINE-1"
    assert api.get(f"/api/v1/devices/{uuid_}").json()["name"] == "Gate 7"
    invalid = api.patch(f"/api/v1/devices/{uuid_}", json={"name": 12})
    assert (invalid.status_code, invalid.json()) == (422, {"error": ["The name field must be a string."]})
    refreshed = api.post(f"/api/v1/devices/{uuid_}/refresh")
    assert refreshed.status_code == 200 and refreshed.json()["refreshed"] > device["refreshed"]
    assert refreshed.json()["refreshed"].endswith("Z")


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/api/v1/devices/00000000-0000-0000-0000-000000000000", 404, "Device not found"),
        ("POST", "/api/v1/devices/00000000-0000-0000-0000-000000000000/image", 404, "Device not found"),
        ("DELETE", "/api/v1/devices/{uuid}", 405, "Unsupported method"),
        ("GET", "/api/v1/devices/{uuid}/image", 405, "Unsupported method"),
        ("POST", "/api/v1/devices", 405, "Unsupported method"),
        ("GET", "/api/v1/auth/login", 405, "Unsupported method"),
        ("DELETE", "/api/v1/devices/{uuid}/webhooks/1", 405, "Unsupported method"),
        ("GET", "/api/v1/nothing-here", 404, "Not Found"),
    ],
)
def test_error_shapes(api, svc, method, path, status, message):
    response = api.request(method, path.format(uuid=svc.credentials["sample_device_uuid"]))
    assert (response.status_code, response.json()) == (status, {"httpError": status, "message": message})


# --- images -----------------------------------------------------------------------------------------------
def test_image_flow_not_ready_then_jpeg(api, svc):
    uuid_ = svc.credentials["sample_device_uuid"]
    response = api.post(f"/api/v1/devices/{uuid_}/image")
    assert response.status_code == 200
    links = response.json()["data"]
    assert len(links) == 2 and links[0].endswith("_raw_image") and links[1].endswith("_annotated_image")
    assert all(link.startswith(svc.url + "/") for link in links)
    early = httpx.get(links[0])  # 20 virtual seconds = 0.2 s have not passed yet
    assert (early.status_code, early.json()) == (404, {"httpError": 404, "message": "Image not ready yet"})
    sizes = []
    for link in links:
        image = wait_for_image(link)  # no Authorization: links are pre-signed
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        decoded = Image.open(io.BytesIO(image.content))
        decoded.load()
        assert decoded.format == "JPEG" and decoded.size[0] >= 1280 and decoded.size[1] >= 720
        assert len(image.content) > 204_800
        sizes.append(len(image.content))
    assert sizes[0] != sizes[1]  # the annotated frame is a different picture
    state = svc.received()["state"]
    assert (state["image_requests"], state["images_served"]) == (1, 2)
    assert state["not_ready_fetches"] >= 1  # the early fetch, plus any polls before 0.2 s


def test_offline_device_refuses_image_request(api):
    offline = all_devices(api, is_online="Offline")[0]["uuid"]
    response = api.post(f"/api/v1/devices/{offline}/image")
    assert (response.status_code, response.json()) == (
        409,
        {"httpError": 409, "message": "Device is offline"},
    )


def test_unknown_image_link_is_404(svc):
    response = httpx.get(f"{svc.url}/api/v1/images/deadbeef_raw_image")
    assert (response.status_code, response.json()) == (404, {"httpError": 404, "message": "Image not found"})


# --- webhooks ---------------------------------------------------------------------------------------------
def test_webhooks_crud_and_validation(api, svc):
    base = f"/api/v1/devices/{svc.credentials['sample_device_uuid']}/webhooks"
    assert api.get(base).json() == {"data": []}
    created = api.post(base, json=WEBHOOK)
    assert created.status_code == 201 and created.json() == {"id": 1, **WEBHOOK}
    updated = api.put(f"{base}/1", json={"status": 0, "url": "https://hooks.example.com/v2"})
    assert updated.status_code == 200
    assert updated.json() == {**WEBHOOK, "id": 1, "status": 0, "url": "https://hooks.example.com/v2"}
    assert api.get(base).json() == {"data": [updated.json()]}
    invalid = api.post(base, json={"url": "not a url", "webhook_type": "alert"})
    assert invalid.status_code == 422
    assert invalid.json() == {
        "error": [
            "The url field must be a valid URL.",
            "The selected webhook type is invalid. Use payload or keepalive.",
        ]
    }
    missing = api.put(f"{base}/42", json={"status": 1})
    assert (missing.status_code, missing.json()) == (404, {"httpError": 404, "message": "Webhook not found"})


# --- emulator control: received, reset, faults ---------------------------------------------------------------
def test_received_shows_accepted_rejected_and_duplicates(api, svc):
    base = f"/api/v1/devices/{svc.credentials['sample_device_uuid']}/webhooks"
    api.post(base, json=WEBHOOK)
    api.post(base, json=WEBHOOK)  # same url + type again
    api.post(base, json={"url": "x"})
    received = svc.received()
    assert received["accepted"] == {"add_webhook": 2}
    assert received["duplicates"] == {"add_webhook": 1}
    assert received["rejected_by_status"] == {"422": 1}
    assert received["state"]["webhooks"] == 2


def test_reset_restores_devices_and_drops_webhooks(api, svc):
    uuid_ = svc.credentials["sample_device_uuid"]
    original = api.get(f"/api/v1/devices/{uuid_}").json()["name"]
    api.patch(f"/api/v1/devices/{uuid_}", json={"name": "Temporary"})
    api.post(f"/api/v1/devices/{uuid_}/webhooks", json=WEBHOOK)
    svc.reset()
    assert api.get(f"/api/v1/devices/{uuid_}").json()["name"] == original
    assert api.get(f"/api/v1/devices/{uuid_}/webhooks").json() == {"data": []}


def test_fault_injection_503_and_429_burst(api, svc):
    svc.faults(error_rate=1)
    failed = api.get("/api/v1/devices")
    assert failed.status_code == 503 and failed.json()["httpError"] == 503
    svc.faults(burst_429=2, retry_after=5)
    limited = [api.get("/api/v1/devices") for _ in range(3)]
    assert [r.status_code for r in limited] == [429, 429, 200]
    assert float(limited[0].headers["retry-after"]) == pytest.approx(0.05)  # 5 virtual s at scale 0.01
    assert limited[0].json() == {"httpError": 429, "message": "Too Many Requests"}
    assert svc.received()["faults_injected"] == {"503": 1, "429": 2}


# --- a second emulator on a much faster clock: 30 min link expiry and 3600 s tokens over HTTP --------------
@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    # 30 virtual minutes = 0.9 s, an hour = 1.8 s, 20 s = 0.01 s.
    with start_service("viziosense", tmp_path_factory, time_scale=0.0005) as emu:
        yield emu["viziosense"]


def test_image_link_expires_after_30_minutes_and_token_after_an_hour(fast):
    creds = fast.credentials
    login = httpx.post(
        f"{fast.url}/api/v1/auth/login", json={"email": creds["email"], "password": creds["password"]}
    )
    token = login.json()["data"]["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    requested = httpx.post(f"{fast.url}/api/v1/devices/{creds['sample_device_uuid']}/image", headers=headers)
    raw = requested.json()["data"][0]
    assert wait_for_image(raw).status_code == 200  # ready after 20 s = 0.01 s
    deadline = time.monotonic() + 5
    while (expired := httpx.get(raw)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (expired.status_code, expired.json()) == (410, {"httpError": 410, "message": "Image link expired"})
    assert fast.received()["state"]["expired_fetches"] >= 1
    deadline = time.monotonic() + 5
    while (late := httpx.get(f"{fast.url}/api/v1/devices", headers=headers)).status_code == 200:
        assert time.monotonic() < deadline, "access token never expired"
        time.sleep(0.05)
    assert (late.status_code, late.json()) == (400, {"httpError": 400, "message": "Access token error"})
    assert httpx.get(
        f"{fast.url}/api/v1/devices", headers={"Authorization": f"Bearer {creds['api_key']}"}
    ).is_success
