"""VizioSenseClient on a mock transport and a fake clock: token session, paging, image waits, validation."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from blocks.viziosense import VizioSenseCredentials
from clients.auth import clear_shared_sessions
from clients.errors import ApiError, AuthError, InputError
from clients.timing import FakeClock
from clients.transport import HttpSettings
from clients.viziosense import (
    ImageExpiredError,
    ImageNotReadyError,
    ImageRequest,
    Tokens,
    VizioSenseClient,
    jpeg_size,
)
from tests.images import jpeg_bytes, png_bytes

BASE = "http://vzs.test"
EMAIL, PASSWORD = "ops@example.com", "pw-secret-123456"
TOKEN_ERROR = {"httpError": 400, "message": "Access token error"}


class FakeVizio:
    """Just enough of the service: tokens that expire on the fake clock, paged devices, scripted image links."""

    def __init__(self, clock: FakeClock, ttl: int = 3600, devices: int = 7) -> None:
        self.clock = clock
        self.ttl = ttl
        self.access: dict[str, float] = {}
        self.refresh_tokens: set[str] = set()
        self.devices = [{"uuid": f"dev-{i}", "name": f"Cam {i}", "is_online": 1} for i in range(devices)]
        self.requests: list[httpx.Request] = []
        self.token_errors = 0  # the service answered 400 Access token error
        self.force_token_error = 0  # answer 400 to the next N API calls whatever the token
        self.status_override: dict[str, int] = {}  # path -> status for API calls
        self.login_status = 200
        self.refresh_ok = True
        self.image_script: list[int | bytes] = []  # per image GET: a status, or the bytes to serve
        self.ignore_page = False

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await asyncio.sleep(0.001)  # real latency, so concurrent calls overlap
        path = request.url.path
        if path == "/api/v1/auth/login":
            if self.login_status != 200:
                return httpx.Response(
                    self.login_status, json={"httpError": 401, "message": "Invalid credentials"}
                )
            return self._issue()
        if path == "/api/v1/auth/refresh":
            refresh = json.loads(request.content)["refresh_token"]
            if not self.refresh_ok or refresh not in self.refresh_tokens:
                return httpx.Response(400, json=TOKEN_ERROR)
            self.refresh_tokens.discard(refresh)
            return self._issue()
        if path.startswith("/api/v1/images/"):
            item = self.image_script.pop(0) if len(self.image_script) > 1 else self.image_script[0]
            if isinstance(item, bytes):
                return httpx.Response(200, content=item, headers={"content-type": "image/jpeg"})
            return httpx.Response(item, json={"httpError": item, "message": f"status {item}"})
        # Authenticated API calls
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.force_token_error or self.clock.monotonic() >= self.access.get(token, -1):
            self.force_token_error = max(0, self.force_token_error - 1)
            self.token_errors += 1
            return httpx.Response(400, json=TOKEN_ERROR)
        if path in self.status_override:
            status = self.status_override[path]
            return httpx.Response(status, json={"httpError": status, "message": "Unauthorized access"})
        if path == "/api/v1/devices":
            return self._page(request)
        if path.endswith("/image"):
            return httpx.Response(
                200,
                json={
                    "data": [f"{BASE}/api/v1/images/x_raw_image", f"{BASE}/api/v1/images/x_annotated_image"]
                },
            )
        return httpx.Response(200, json={"uuid": path.split("/")[4], "is_online": 1})

    def _issue(self) -> httpx.Response:
        access, refresh = secrets.token_hex(8), secrets.token_hex(8)
        self.access[access] = self.clock.monotonic() + self.ttl
        self.refresh_tokens.add(refresh)
        data = {
            "token_type": "Bearer",
            "expires_in": self.ttl,
            "access_token": access,
            "refresh_token": refresh,
        }
        return httpx.Response(200, json={"data": {**data, "user": {"email": EMAIL, "role": ["admin"]}}})

    def _page(self, request: httpx.Request) -> httpx.Response:
        page = 1 if self.ignore_page else int(request.url.params.get("page", 1))
        per_page = int(request.url.params.get("per_page", 15))
        chunk = self.devices[(page - 1) * per_page : page * per_page]
        last = max(1, -(-len(self.devices) // per_page))
        meta = {
            "current_page": page,
            "from": (page - 1) * per_page + 1 if chunk else None,
            "to": (page - 1) * per_page + len(chunk) if chunk else None,
            "last_page": last,
            "total_pages": last,
            "per_page": per_page,
            "total": len(self.devices),
        }
        return httpx.Response(200, json={"data": chunk, "meta": meta})


def make(
    fake: FakeVizio | None = None, clock: FakeClock | None = None, **kw
) -> tuple[VizioSenseClient, FakeVizio]:
    clock = clock or (fake.clock if fake else FakeClock())
    fake = fake or FakeVizio(clock)
    auth = {"api_key": kw.pop("api_key")} if "api_key" in kw else {"email": EMAIL, "password": PASSWORD}
    client = VizioSenseClient(
        BASE, **auth, settings=HttpSettings(transport=httpx.MockTransport(fake)), clock=clock, **kw
    )
    return client, fake


@pytest.fixture(autouse=True)
def _sessions():
    clear_shared_sessions()  # every test has its own fake service: no session carried over
    yield
    clear_shared_sessions()


# --- auth and the token session ------------------------------------------------------------------------
async def test_api_key_is_sent_as_bearer_without_login():
    clock = FakeClock()
    fake = FakeVizio(clock)
    fake.access["vzs-key-abcdef"] = float("inf")
    client, _ = make(fake, api_key="vzs-key-abcdef")
    await client.get_device("dev-1")
    assert fake.count("/api/v1/auth/login") == 0
    assert fake.requests[0].headers["authorization"] == "Bearer vzs-key-abcdef"


async def test_logs_in_once_and_reuses_the_token():
    client, fake = make()
    for _ in range(3):
        await client.get_device("dev-1")
    assert fake.count("/api/v1/auth/login") == 1 and fake.token_errors == 0
    login = fake.requests[0]
    assert login.read() and b'"email":"ops@example.com"' in login.content.replace(b" ", b"")


async def test_token_is_refreshed_before_it_expires():
    client, fake = make(renew_margin=60)
    await client.get_device("dev-1")
    fake.clock.now += 3500  # 100 s left: more than the 60 s margin
    await client.get_device("dev-1")
    assert fake.count("/api/v1/auth/refresh") == 0
    fake.clock.now += 45  # 55 s left: inside the margin, still valid on the service
    await client.get_device("dev-1")
    assert fake.count("/api/v1/auth/refresh") == 1 and fake.count("/api/v1/auth/login") == 1
    assert fake.token_errors == 0  # renewed proactively, never refused
    assert client.session.refreshes == 1 and client.session.logins == 1


async def test_short_lived_token_renews_at_half_its_lifetime():
    fake = FakeVizio(FakeClock(), ttl=60)
    client, _ = make(fake, renew_margin=300)
    await client.get_device("dev-1")
    fake.clock.now += 29
    await client.get_device("dev-1")
    fake.clock.now += 2  # 31 s: past half of 60 s
    await client.get_device("dev-1")
    assert fake.count("/api/v1/auth/refresh") == 1 and fake.token_errors == 0


async def test_concurrent_calls_share_one_login_and_one_refresh():
    client, fake = make()
    await asyncio.gather(*(client.get_device(f"dev-{i}") for i in range(20)))
    assert fake.count("/api/v1/auth/login") == 1
    fake.clock.now += 3590
    await asyncio.gather(*(client.get_device(f"dev-{i}") for i in range(20)))
    assert fake.count("/api/v1/auth/refresh") == 1 and fake.count("/api/v1/auth/login") == 1
    assert fake.token_errors == 0


async def test_failed_refresh_falls_back_to_a_fresh_login():
    client, fake = make()
    await client.get_device("dev-1")
    fake.refresh_ok = False
    fake.clock.now += 3590
    await client.get_device("dev-1")
    assert fake.count("/api/v1/auth/refresh") == 1 and fake.count("/api/v1/auth/login") == 2


async def test_clients_of_one_process_share_the_session():
    fake = FakeVizio(FakeClock())
    clients = [make(fake)[0] for _ in range(3)]
    await asyncio.gather(*(c.get_device(f"dev-{i}") for c in clients for i in range(5)))
    assert fake.count("/api/v1/auth/login") == 1 and fake.token_errors == 0
    other, _ = make(fake, share_session=False)
    await other.get_device("dev-1")
    assert fake.count("/api/v1/auth/login") == 2


async def test_400_access_token_error_renews_and_retries_once():
    client, fake = make()
    await client.get_device("dev-1")
    fake.force_token_error = 1  # e.g. the session was revoked on the service
    device = await client.get_device("dev-2")
    assert device.uuid == "dev-2"
    assert fake.count("/api/v1/devices/dev-2") == 2 and fake.token_errors == 1
    assert client.session.refreshes == 1  # renewed (refresh token first)


async def test_400_token_error_with_dead_refresh_token_logs_in_again():
    client, fake = make()
    await client.get_device("dev-1")
    fake.access.clear()  # service forgot every access token...
    fake.refresh_tokens.clear()  # ...and refresh token
    await client.get_device("dev-2")
    assert fake.count("/api/v1/auth/login") == 2 and fake.count("/api/v1/devices/dev-2") == 2


async def test_token_error_that_persists_is_an_auth_error_after_one_retry():
    client, fake = make()
    await client.get_device("dev-1")
    fake.force_token_error = 100
    with pytest.raises(AuthError) as exc:
        await client.get_device("dev-2")
    assert exc.value.status == 400 and "Access token error" in str(exc.value)
    assert fake.count("/api/v1/devices/dev-2") == 2  # one retry, not a loop


async def test_concurrent_token_errors_renew_only_once():
    client, fake = make()
    await client.get_device("dev-0")
    fake.access.clear()
    await asyncio.gather(*(client.get_device(f"dev-{i}") for i in range(10)))
    assert client.session.refreshes + client.session.logins - 1 == 1  # one renewal for 10 refused calls


async def test_403_is_an_auth_error_without_renewal():
    client, fake = make()
    fake.status_override["/api/v1/devices/dev-9"] = 403
    with pytest.raises(AuthError) as exc:
        await client.get_device("dev-9")
    assert exc.value.status == 403 and "Unauthorized access" in str(exc.value)
    assert fake.count("/api/v1/devices/dev-9") == 1 and fake.count("/api/v1/auth/login") == 1


async def test_wrong_password_fails_once_for_all_concurrent_callers_without_leaking_it():
    client, fake = make()
    fake.login_status = 401
    results = await asyncio.gather(*(client.get_device("dev-1") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, AuthError) and r.status == 401 for r in results)
    assert fake.count("/api/v1/auth/login") == 1
    assert all(PASSWORD not in str(r) for r in results)


def test_credentials_must_be_one_of_api_key_or_email_password():
    with pytest.raises(InputError, match="either api_key or email"):
        VizioSenseClient(BASE)
    with pytest.raises(InputError, match="either api_key or email"):
        VizioSenseClient(BASE, api_key="k" * 10, email=EMAIL, password=PASSWORD)
    with pytest.raises(InputError, match="both be set"):
        VizioSenseClient(BASE, email=EMAIL)


def test_tokens_and_client_reprs_hide_secrets():
    tokens = Tokens(expires_in=3600, access_token="acc-secret-999", refresh_token="ref-secret-999")
    assert "acc-secret-999" not in repr(tokens) and "ref-secret-999" not in repr(tokens)
    client = VizioSenseClient(BASE, email=EMAIL, password=PASSWORD)
    assert PASSWORD not in repr(client)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, r"need api_key, or email \+ password"),
        ({"email": EMAIL}, "need password"),
        ({"password": SecretStr(PASSWORD)}, "need email"),
        ({"api_key": SecretStr("k" * 10), "email": EMAIL, "password": SecretStr(PASSWORD)}, "not both"),
    ],
)
def test_block_requires_one_way_to_log_in(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        VizioSenseCredentials(**kwargs)


def test_block_builds_the_right_client():
    key_client = VizioSenseCredentials(api_key=SecretStr("vzs-key-abcdef")).get_client()
    assert key_client.session is None and key_client.base_url == "https://api.viziosense.com"
    login_client = VizioSenseCredentials(email=EMAIL, password=SecretStr(PASSWORD)).get_client(
        image_ready_after=0.2
    )
    assert login_client.session is not None and login_client.image_ready_after == 0.2


# --- devices -------------------------------------------------------------------------------------------
async def test_all_pages_follow_meta():
    client, fake = make()
    fake.devices = [{"uuid": f"dev-{i}", "name": f"Cam {i}", "is_online": i % 2} for i in range(7)]
    devices = await client.list_all_devices(per_page=3)
    assert [d.uuid for d in devices] == [f"dev-{i}" for i in range(7)]
    pages = [r.url.params["page"] for r in fake.requests if r.url.path == "/api/v1/devices"]
    assert pages == ["1", "2", "3"]
    assert devices[1].online and not devices[0].online


async def test_empty_listing_is_one_request_with_null_from_and_to():
    client, fake = make()
    fake.devices = []
    pages = [p async for p in client.iter_device_pages()]
    assert (
        len(pages) == 1 and pages[0].data == [] and pages[0].meta.from_ is None and pages[0].meta.to is None
    )


async def test_paging_not_honoured_is_an_error_not_an_endless_loop():
    client, fake = make()
    fake.ignore_page = True
    with pytest.raises(ApiError, match="asked for page 2, got page 1"):
        await client.list_all_devices(per_page=3)


async def test_filters_are_sent_as_documented():
    client, fake = make()
    await client.list_devices(2, 5, sort="name", group="yard", is_online=False)
    params = dict(fake.requests[-1].url.params)
    assert params == {"page": "2", "per_page": "5", "sort": "name", "group": "yard", "is_online": "Offline"}
    await client.list_devices(is_online="online")
    assert fake.requests[-1].url.params["is_online"] == "Online"


@pytest.mark.parametrize(
    "call,fragment",
    [
        (
            lambda c: c.list_devices(is_online="maybe"),
            "is_online: 'maybe' is not allowed (Online or Offline)",
        ),
        (lambda c: c.list_devices(page=0), "page: 0 is not allowed"),
        (lambda c: c.update_device("dev-1", {"is_online": 1}), "is_online cannot be updated"),
        (
            lambda c: c.update_device("dev-1", {"uuid": "x", "refreshed": "y"}),
            "refreshed, uuid cannot be updated",
        ),
        (lambda c: c.update_device("dev-1", {}), "at least one field"),
        (lambda c: c.update_device("dev-1", {"name": 5}), "name: must be a string"),
        (lambda c: c.update_device("dev-1", {"name": " "}), "name: must not be empty"),
        (lambda c: c.get_device("a/b"), "device_uuid: 'a/b' is not a valid identifier"),
        (
            lambda c: c.add_webhook("dev-1", "https://h.example/x", "alert"),
            "webhook_type: 'alert' is not allowed",
        ),
        (
            lambda c: c.add_webhook("dev-1", "ftp://h.example/x", "payload"),
            "url: must be an absolute http(s)",
        ),
        (lambda c: c.add_webhook("dev-1", "https://h/x", "payload", status=2), "status: 2 is not allowed"),
        (
            lambda c: c.add_webhook("dev-1", "https://h/x", "payload", status=True),
            "status: True is not allowed",
        ),
        (
            lambda c: c.add_webhook("dev-1", "https://h/x", "payload", headers=[{"name": ""}]),
            "headers[0]: needs a non-empty string name",
        ),
        (lambda c: c.update_webhook("dev-1", 1), "at least one field"),
        (lambda c: c.update_webhook("dev-1", "1", status=0), "webhook_id: '1' is not an integer"),
    ],
)
async def test_constraints_are_checked_before_sending(call, fragment):
    client, fake = make()
    with pytest.raises(InputError) as exc:
        await call(client)
    assert fragment in str(exc.value)
    assert fake.requests == []


async def test_update_device_sends_only_allowed_fields_with_patch():
    client, fake = make()
    await client.update_device("dev-1", {"name": "Gate", "geo_city": "Lyon", "client_identifier": "G-1"})
    request = fake.requests[-1]
    assert request.method == "PATCH" and request.url.path == "/api/v1/devices/dev-1"
    assert request.read() == b'{"name":"Gate","geo_city":"Lyon","client_identifier":"G-1"}'


async def test_webhook_route_is_a_one_line_switch():
    client, fake = make(webhooks_per_device=False)
    fake_hook = {"id": 3, "url": "https://h.example/x", "webhook_type": "payload", "status": 1}
    fake.status_override.clear()
    transport_calls: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/v1/auth"):
            return await fake(request)
        transport_calls.append(request)
        return httpx.Response(200, json={"data": [fake_hook]} if request.method == "GET" else fake_hook)

    client.settings.transport = httpx.MockTransport(handler)
    await client.list_webhooks("dev-1")
    hook = await client.update_webhook("dev-1", 3, status=0, headers={"Authorization": "Token t"})
    assert [(r.method, r.url.path, r.url.params.get("device_uuid")) for r in transport_calls] == [
        ("GET", "/api/v1/webhooks", "dev-1"),
        ("PUT", "/api/v1/webhooks/3", "dev-1"),
    ]
    assert transport_calls[1].read() == (
        b'{"status":0,"data":{"headers":[{"name":"Authorization","value":"Token t"}],"params":[]}}'
    )
    assert hook.id == 3


# --- images --------------------------------------------------------------------------------------------
def image_request(clock: FakeClock, ready_in: float = 20.0, age: float = 0.0) -> ImageRequest:
    now = clock.time()
    return ImageRequest(
        device_uuid="dev-1",
        raw_url=f"{BASE}/api/v1/images/x_raw_image",
        annotated_url=f"{BASE}/api/v1/images/x_annotated_image",
        requested_at=datetime.fromtimestamp(now - age, UTC),
        ready_at=datetime.fromtimestamp(now - age + ready_in, UTC),
        expires_at=datetime.fromtimestamp(now - age + 1800, UTC),
    )


async def test_request_image_returns_both_links_and_documented_times():
    client, fake = make()
    t0 = fake.clock.time()
    request = await client.request_image("dev-1")
    assert request.raw_url.endswith("x_raw_image") and request.annotated_url.endswith("x_annotated_image")
    assert request.requested_at.timestamp() == t0
    assert request.ready_at.timestamp() == t0 + 20 and request.expires_at.timestamp() == t0 + 1800
    assert "x_raw_image" not in repr(request)  # links are pre-signed: kept out of reprs


async def test_links_are_told_apart_by_their_suffix():
    client, fake = make()
    response = httpx.Response(200, json={"data": ["https://s/a_annotated_image", "https://s/a_raw_image"]})
    assert client._image_links(response) == ("https://s/a_raw_image", "https://s/a_annotated_image")


async def test_fetch_waits_for_the_ready_time_then_polls_404_until_served():
    client, fake = make()
    jpeg = jpeg_bytes(1280, 720)
    fake.image_script = [404, 404, jpeg]
    request = image_request(fake.clock, ready_in=20)
    snapshot = await client.fetch_image(request, "raw", poll_interval=2.0)
    assert snapshot.content == jpeg and (snapshot.width, snapshot.height) == (1280, 720)
    assert snapshot.polls == 3 and snapshot.kind == "raw"
    assert fake.clock.sleeps == [20.0, 2.0, 3.0]  # ready time, then backoff 2 s x1.5
    image_gets = [r for r in fake.requests if r.url.path.startswith("/api/v1/images/")]
    assert all("authorization" not in r.headers for r in image_gets)  # pre-signed links: no token
    assert fake.count("/api/v1/auth/login") == 0  # fetching links needs no session


async def test_fetch_of_an_old_request_does_not_wait():
    client, fake = make()
    fake.image_script = [jpeg_bytes()]
    snapshot = await client.fetch_image(image_request(fake.clock, age=60), "annotated")
    assert fake.clock.sleeps == [] and snapshot.kind == "annotated"
    assert fake.requests[-1].url.path.endswith("x_annotated_image")


@pytest.mark.parametrize("status", [410, 403])
async def test_expired_link_is_a_clear_error(status):
    client, fake = make()
    fake.image_script = [status]
    with pytest.raises(ImageExpiredError, match="expired .* valid 30 min: request a new image"):
        await client.fetch_image(image_request(fake.clock, age=25))
    assert len(fake.requests) == 1  # no retry, no re-login on a pre-signed link


async def test_link_past_its_validity_is_not_even_fetched():
    client, fake = make()
    with pytest.raises(ImageExpiredError, match="more than 30 min ago"):
        await client.fetch_image(image_request(fake.clock, age=1801))
    assert fake.requests == []


async def test_image_that_never_appears_times_out():
    client, fake = make()
    fake.image_script = [404]
    with pytest.raises(ImageNotReadyError, match="still not served") as exc:
        await client.fetch_image(image_request(fake.clock), poll_interval=1.0, timeout=10.0)
    assert sum(fake.clock.sleeps) == pytest.approx(30.0)  # 20 s to ready + exactly the 10 s timeout
    assert exc.value.retryable and exc.value.attempts == len(fake.requests)
    assert max(fake.clock.sleeps[1:]) <= 5.0  # backoff capped at 5x the interval


async def test_non_jpeg_bytes_are_rejected():
    client, fake = make()
    fake.image_script = [png_bytes()]
    with pytest.raises(ApiError, match="expected a JPEG, got .* bytes of image/jpeg"):
        await client.fetch_image(image_request(fake.clock, age=30))


async def test_image_links_never_reach_logs_or_errors(caplog):
    client, fake = make()
    link_id, signature = secrets.token_hex(12), secrets.token_hex(16)
    links = [
        f"https://cdn.test/snap/{link_id}{s}?X-Amz-Signature={signature}"
        for s in ("_raw_image", "_annotated_image")
    ]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.test":  # the link has expired; the storage echoes the request
            return httpx.Response(410, json={"message": f"expired: GET {request.url}"})
        if request.url.path.endswith("/image"):
            return httpx.Response(200, json={"data": links})
        return await fake(request)

    client.settings.transport = httpx.MockTransport(handler)
    with caplog.at_level(logging.DEBUG):
        image = await client.request_image("dev-1", ready_after=0)
        with pytest.raises(ImageExpiredError) as exc:
            await client.fetch_image(image, "annotated")
    assert image.annotated_url == links[1]  # handed to the caller unchanged
    assert "HTTP Request: GET https://cdn.test" in caplog.text  # the logs were captured
    assert "expired: GET https://cdn.test" in str(exc.value)
    for text in (caplog.text, str(exc.value)):
        assert link_id not in text and signature not in text


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"image_timeout": 1790}, "timeout: 1790 is not allowed"),
        ({"image_poll_interval": 0}, "poll_interval: 0 is not allowed"),
        ({"image_ready_after": -1}, "ready_after: -1 is not allowed"),
    ],
)
def test_image_wait_settings_must_fit_the_link_validity(kwargs, fragment):
    with pytest.raises(InputError, match=fragment):
        VizioSenseClient(BASE, api_key="k" * 10, **kwargs)


def test_jpeg_size_reads_the_frame_header():
    assert jpeg_size(jpeg_bytes(321, 123)) == (321, 123)
    assert jpeg_size(jpeg_bytes() + b"\0" * 10) == (320, 240)
    with pytest.raises(ValueError, match="end marker"):
        jpeg_size(jpeg_bytes()[:-100])
    with pytest.raises(ValueError, match="start marker"):
        jpeg_size(png_bytes())
