"""HautClient on a mock transport and a fake clock: tokens, errors, pagination, checks, uploads, polling."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import zlib

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr, ValidationError

from blocks import HautCredentials
from clients.errors import ApiError, AuthError, InputError, OutcomeUnknownError
from clients.haut import HautClient, PollSettings, ResultsTimeoutError, check_image, clear_shared_sessions
from clients.haut_models import UploadTarget, V1Analysis
from clients.redaction import redact, register_url_secrets
from clients.timing import FakeClock
from clients.transport import HttpSettings, RetryPolicy

BASE = "https://haut.test"
CID = "6f1e9a52-3c1d-4b7e-9a0f-2d5c8e4b7a10"
DS = "11111111-1111-4111-8111-111111111111"
DATASETS = f"/api/v1/companies/{CID}/datasets/"


def image(width: int = 300, height: int = 300, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 150, 120)).save(buf, fmt)
    return buf.getvalue()


class FakeHaut:
    """A scripted Haut.ai: login/refresh issue numbered tokens; other routes answer from ``routes``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.issued = 0
        self.valid: set[str] = set()
        self.routes: dict[tuple[str, str], object] = {}

    def tokens(self) -> dict:
        self.issued += 1
        token = f"access-token-{self.issued:04d}"
        self.valid.add(token)
        return {
            "id": 1,
            "email": "u@x.org",
            "company_id": CID,
            "access_token": token,
            "refresh_token": "rt-0001",
        }

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await asyncio.sleep(0)  # let concurrent callers interleave
        path = request.url.path
        route = self.routes.get((request.method, path))
        if callable(route):
            return route(request)
        if path == "/api/v1/auth/login/":
            return httpx.Response(200, json=self.tokens())
        if path == "/api/v1/auth/refresh/":
            if json.loads(request.content)["refresh_token"] != "rt-0001":
                return httpx.Response(401, json=drf(401, "authentication_failed", "Token is invalid."))
            return httpx.Response(200, json=self.tokens())
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.valid | {
            "pt-secret-123"
        }:
            return httpx.Response(401, json=drf(401, "authentication_failed", "Invalid token."))
        if route is None:
            return httpx.Response(200, json={"count": 0, "next": None, "previous": None, "results": []})
        return route if isinstance(route, httpx.Response) else httpx.Response(200, json=route)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def drf(status: int, code: str, detail: str, attr: str | None = None, extra=None) -> dict:
    kind = "validation_error" if status == 400 else "client_error"
    return {"type": kind, "errors": [{"code": code, "detail": detail, "attr": attr, "extra": extra}]}


def make(fake: FakeHaut, clock: FakeClock | None = None, login: bool = False, **kw) -> HautClient:
    auth = {"username": "u@x.org", "password": "pw-secret-9"} if login else {"private_token": "pt-secret-123"}
    settings = HttpSettings(transport=httpx.MockTransport(fake), retry=RetryPolicy(max_attempts=4))
    return HautClient(
        CID, BASE, settings=settings, clock=clock or FakeClock(), share_session=False, **auth, **kw
    )


@pytest.fixture(autouse=True)
def _sessions():
    clear_shared_sessions()
    yield
    clear_shared_sessions()


# --- tokens -----------------------------------------------------------------------------------------------------
async def test_private_token_never_logs_in():
    fake = FakeHaut()
    async with make(fake) as c:
        await c.list_datasets()
        await c.get_results_v3("b1")
    assert not any("/auth/" in p for p in fake.paths())
    assert {r.headers["authorization"] for r in fake.requests} == {"Bearer pt-secret-123"}


async def test_login_once_then_refresh_shortly_before_expiry():
    fake, clock = FakeHaut(), FakeClock(start=0)
    async with make(fake, clock, login=True) as c:  # tokens: 3600 s, refreshed 300 s before
        await c.list_datasets()
        clock.now = 3000
        await c.list_datasets()
        clock.now = 3350
        await c.list_datasets()
    assert fake.paths() == [
        "POST /api/v1/auth/login/",
        f"GET {DATASETS}",
        f"GET {DATASETS}",
        "POST /api/v1/auth/refresh/",
        f"GET {DATASETS}",
    ]
    assert fake.requests[-1].headers["authorization"] == "Bearer access-token-0002"


async def test_concurrent_calls_share_a_single_login():
    fake = FakeHaut()
    async with make(fake, login=True) as c:
        await asyncio.gather(*(c.list_datasets() for _ in range(10)))
    assert fake.paths().count("POST /api/v1/auth/login/") == 1 and fake.issued == 1


async def test_clients_of_one_process_share_the_session():
    fake = FakeHaut()
    settings = HttpSettings(transport=httpx.MockTransport(fake))
    for _ in range(3):
        async with HautClient(CID, BASE, username="u@x.org", password="pw-secret-9", settings=settings) as c:
            await c.list_datasets()
    assert fake.paths().count("POST /api/v1/auth/login/") == 1


async def test_401_refreshes_once_and_retries():
    fake = FakeHaut()
    async with make(fake, login=True) as c:
        await c.list_datasets()
        fake.valid.clear()  # the service dropped the token early
        await c.list_datasets()
    assert fake.paths()[2:] == [f"GET {DATASETS}", "POST /api/v1/auth/refresh/", f"GET {DATASETS}"]


async def test_refused_refresh_falls_back_to_login():
    fake, clock = FakeHaut(), FakeClock(start=0)
    async with make(fake, clock, login=True) as c:
        await c.list_datasets()
        fake.routes[("POST", "/api/v1/auth/refresh/")] = lambda r: httpx.Response(
            401, json=drf(401, "authentication_failed", "Token is invalid or expired.")
        )
        clock.now = 3500
        await c.list_datasets()
    assert fake.paths().count("POST /api/v1/auth/login/") == 2


async def test_refused_login_is_an_auth_error_without_secrets():
    fake = FakeHaut()
    async with make(fake, login=True) as c:
        fake.routes[("POST", "/api/v1/auth/login/")] = lambda r: httpx.Response(
            401, json=drf(401, "authentication_failed", "Incorrect authentication credentials.")
        )
        with pytest.raises(AuthError) as exc:
            await c.list_datasets()
    assert "[authentication_failed]" in str(exc.value) and "pw-secret-9" not in str(exc.value)
    assert "pw-secret-9" not in repr(c)


# --- errors and pagination ----------------------------------------------------------------------------------------
async def test_drf_error_message_names_code_attr_and_detail():
    fake = FakeHaut()
    fake.routes[("POST", DATASETS)] = httpx.Response(
        400, json=drf(400, "max_length", "Ensure this field has no more than 512 characters.", "name")
    )
    async with make(fake) as c:
        with pytest.raises(ApiError) as exc:
            await c.create_dataset("fine")
    message = str(exc.value)
    assert message.startswith("haut create_dataset: HTTP 400: validation_error: name [max_length] Ensure")
    assert exc.value.errors == [
        {
            "code": "max_length",
            "detail": "Ensure this field has no more than 512 characters.",
            "attr": "name",
            "extra": None,
        }
    ]


async def test_pagination_follows_next_but_stays_on_the_api_host():
    fake = FakeHaut()
    pages = {
        None: {
            "count": 5,
            "next": f"{BASE}{DATASETS}?page=2&page_size=2",
            "results": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
        },
        "2": {
            "count": 5,
            "next": f"http://elsewhere.example{DATASETS}?page=3&page_size=2",
            "results": [{"id": "c", "name": "C"}, {"id": "d", "name": "D"}],
        },
        "3": {"count": 5, "next": None, "results": [{"id": "e", "name": "E"}]},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("page")])

    fake.routes[("GET", DATASETS)] = answer
    async with make(fake) as c:
        datasets = await c.list_datasets(q="x")
    assert [d.id for d in datasets] == ["a", "b", "c", "d", "e"]
    assert {r.url.host for r in fake.requests} == {"haut.test"}
    assert [r.url.params.get("page") for r in fake.requests] == [None, "2", "3"]
    assert fake.requests[0].url.params["q"] == "x" and fake.requests[0].url.params["page_size"] == "100"


# --- documented constraints -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data,fragment",
    [
        (image(255, 400), "image: is 255×400 px (at least 256×256 px)"),
        (image(300, 300, "GIF"), "image: is a GIF image (JPEG or PNG)"),
        (b"", "image: is empty"),
        (b"\x89PNG\r\n\x1a\n garbage", "image: is not a decodable image"),
        (b"\xff\xd8\xff" + b"\0" * 31_457_280, "is 31,457,283 bytes (at most 31,457,280 bytes (30 MiB))"),
    ],
)
def test_check_image_names_problem_and_limit(data, fragment):
    with pytest.raises(InputError) as exc:
        check_image(data)
    assert fragment in str(exc.value)


def test_check_image_accepts_a_huge_png_without_decoding_it():
    # 20000 x 20000 px declared in the header: over Pillow's pixel guard, but Haut has no maximum resolution.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    assert check_image(data).format == "PNG"


def test_check_image_accepts_jpeg_and_png_at_the_minimum():
    assert check_image(image(256, 256)).format == "JPEG"
    assert check_image(image(256, 1000, "PNG")).height == 1000


@pytest.mark.parametrize(
    "call,fragment",
    [
        (lambda c: c.create_subject(DS, "x" * 513), "name: is 513 characters long (at most 512)"),
        (lambda c: c.create_subject(DS, "  "), "name: is blank"),
        (lambda c: c.create_dataset("d", expire_metadata_after_days=400), "is 400 days (1 to 365)"),
        (lambda c: c.get_subject(DS, "../x"), "subject_id: '../x' is not a valid id"),
        (lambda c: c.attach_application("bad name", DS), "tech_name: 'bad name' is not a tech name"),
        (lambda c: c.request_upload_v3("s", {}), "no side given"),
        (lambda c: c.analyse_images_v3("s", {"top": image()}), "images: 'top' is not allowed"),
        (
            lambda c: c.set_webhook(
                DS, "ftp://x", authorization="query", authorization_key="k", authorization_value="v"
            ),
            "url: is not an absolute http(s) URL",
        ),
        (
            lambda c: c.set_webhook(
                DS, "https://x.org", authorization="query", authorization_key="", authorization_value="v"
            ),
            "authorization_key: is blank",
        ),
        (
            lambda c: c.set_webhook(
                DS,
                "https://x.org",
                authorization="query",
                authorization_key="k",
                authorization_value="v",
                method="put",
            ),
            "method: 'put' is not allowed (one of post, get)",
        ),
    ],
)
async def test_constraints_are_checked_before_sending(call, fragment):
    fake = FakeHaut()
    async with make(fake) as c:
        with pytest.raises(InputError) as exc:
            await call(c)
    assert fragment in str(exc.value) and fake.requests == []


# --- upload ---------------------------------------------------------------------------------------------------------
def signed_url_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        201,
        json={
            "id": "img-1",
            "image_batch_id": "batch-1",
            "upload_url": {
                "url": "https://storage.googleapis.com/bucket/obj?X-Goog-Signature=abc",
                "method": "PUT",
                "headers": {
                    "Content-Type": "application/octet-stream",
                    "X-Goog-Content-Length-Range": "1,31457280",
                },
            },
        },
    )


async def test_v1_analysis_puts_bytes_with_exactly_the_signed_headers_and_no_credentials():
    fake = FakeHaut()
    subject_path = f"/api/v1/companies/{CID}/subjects/s-1/signed_upload_url/"
    fake.routes[("POST", subject_path)] = signed_url_answer
    fake.routes[("PUT", "/bucket/obj")] = lambda r: httpx.Response(200)
    fake.routes[("POST", f"/api/v1/companies/{CID}/batches/batch-1/compute/")] = lambda r: httpx.Response(204)
    data = image()
    async with make(fake) as c:
        analysis = await c.analyse_image_v1("s-1", DS, data, side_id=2)
    assert analysis == V1Analysis(
        dataset_id=DS, subject_id="s-1", batch_id="batch-1", image_id="img-1", side_id=2
    )
    post, put, compute = fake.requests
    assert json.loads(post.content) == {"side_id": 2}
    assert put.url.host == "storage.googleapis.com" and put.content == data
    assert put.headers["content-type"] == "application/octet-stream"
    assert put.headers["x-goog-content-length-range"] == "1,31457280"
    assert "authorization" not in put.headers
    assert compute.headers["authorization"] == "Bearer pt-secret-123"


async def test_storage_errors_are_readable_and_never_trigger_a_relogin():
    fake = FakeHaut()
    fake.routes[("PUT", "/bucket/obj")] = lambda r: httpx.Response(
        403,
        text="<?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code><Message>m</Message>"
        "<Details>Content-Type was signed as 'application/octet-stream'</Details></Error>",
    )
    target = UploadTarget(
        url="https://storage.googleapis.com/bucket/obj?sig=1", headers={"Content-Type": "x"}
    )
    async with make(fake, login=True) as c:
        with pytest.raises(ApiError, match="storage SignatureDoesNotMatch: Content-Type was signed"):
            await c.upload(target, image())
    assert fake.paths() == ["PUT /bucket/obj"]


async def test_dropped_connection_after_the_signed_url_post_is_outcome_unknown():
    fake = FakeHaut()

    def drop(request):
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    fake.routes[("POST", f"/api/v1/companies/{CID}/subjects/s-1/signed_upload_url/")] = drop
    async with make(fake) as c:
        with pytest.raises(OutcomeUnknownError, match="request_upload_v1"):
            await c.analyse_image_v1("s-1", DS, image())
    assert len(fake.requests) == 1  # not retried: a retry could create a second image record


# --- signed URLs are credentials -------------------------------------------------------------------------------
SIGNATURE = "5f0a9c2e7b3d41a8" * 8
SIGNED_URL = (
    "https://storage.googleapis.com/bucket/obj?X-Goog-Algorithm=GOOG4-RSA-SHA256"
    "&X-Goog-Credential=svc%40proj.iam.gserviceaccount.com%2F20250101%2Fauto%2Fstorage%2Fgoog4_request"
    f"&X-Goog-Expires=3600&X-Goog-SignedHeaders=host&X-Goog-Signature={SIGNATURE}"
)


def test_register_url_secrets_masks_signatures_encoded_and_decoded():
    token = "sv-session/token+with=chars"
    register_url_secrets(
        "https://bucket.s3.amazonaws.com/k.jpg?X-Amz-Date=20250101T000000Z"
        "&X-Amz-Security-Token=sv-session%2Ftoken%2Bwith%3Dchars&X-Amz-Signature=a1b2c3d4e5f6a7b8"
    )
    assert redact("...&X-Amz-Signature=a1b2c3d4e5f6a7b8") == "...&X-Amz-Signature=***"
    assert redact(f"token {token} / sv-session%2Ftoken%2Bwith%3Dchars") == "token *** / ***"
    assert redact("X-Amz-Date=20250101T000000Z") == "X-Amz-Date=20250101T000000Z"  # not a credential
    register_url_secrets("https://cdn.example/i/8d3f5c0b2a7e_raw.jpg", secret_path=True)
    assert redact("GET https://cdn.example/i/8d3f5c0b2a7e_raw.jpg") == "GET https://cdn.example***"


async def test_signed_upload_url_never_reaches_logs_or_errors(caplog):
    fake = FakeHaut()
    subject_path = f"/api/v1/companies/{CID}/subjects/s-1/signed_upload_url/"
    fake.routes[("POST", subject_path)] = lambda r: httpx.Response(
        201, json={"id": "img-1", "image_batch_id": "b-1", "upload_url": {"url": SIGNED_URL}}
    )
    fake.routes[("PUT", "/bucket/obj")] = lambda r: httpx.Response(
        403,
        text="<Error><Code>AccessDenied</Code><Message>m</Message>"
        f"<Details>Request was: PUT {r.url}</Details></Error>",
    )
    async with make(fake) as c:
        record = await c.request_upload_v1("s-1")
        with caplog.at_level(logging.DEBUG), pytest.raises(ApiError) as exc:
            await c.upload(record.upload_url, image())
    assert fake.requests[-1].url.params["X-Goog-Signature"] == SIGNATURE  # sent as signed
    assert "storage AccessDenied: Request was: PUT https://storage.googleapis.com/bucket/obj" in str(
        exc.value
    )
    assert "HTTP Request: PUT https://storage.googleapis.com/bucket/obj" in caplog.text  # logs captured
    for text in (str(exc.value), caplog.text):
        assert SIGNATURE not in text and "X-Goog-Signature=***" in text


async def test_result_image_urls_are_registered_as_they_arrive():
    signature = "c0ffee11" * 8
    url = f"https://storage.googleapis.com/results/front.jpg?X-Goog-Expires=3600&X-Goog-Signature={signature}"
    fake = FakeHaut()
    fake.routes[("GET", f"/api/v3/companies/{CID}/batches/b/results/")] = {
        "face_skin_metrics_3": {
            "all_algorithms_calculated": True,
            "predicted_images": {"front": {"original": url}},
            "parameters": {"pores": {"score": 70, "masks": {"front": {"original": url.replace("c0", "d0")}}}},
        }
    }
    async with make(fake) as c:
        results = await c.get_results_v3("b")
    assert results.predicted_images["front"]["original"] == url  # handed to the caller unchanged
    assert redact(url) == url.replace(signature, "***")
    assert signature.replace("c0", "d0") not in redact(f"mask {url.replace('c0', 'd0')}")


async def test_urls_written_with_json_escapes_are_registered_too():
    # Answers with no URL skip the walk over their values; a URL hidden behind JSON escapes must not.
    signatures = ["e5cape01" * 8, "e5cape02" * 8]
    urls = [
        f"https://storage.googleapis.com/r/{n}.jpg?X-Goog-Signature={s}" for n, s in enumerate(signatures)
    ]
    bodies = [
        json.dumps({"original": urls[0]}).replace("/", "\\/"),  # https:\/\/...
        '{"original": "\\u0068' + urls[1][1:] + '"}',  # \u0068ttps://... : no "http" in the bytes
    ]
    path = f"/api/v1/companies/{CID}/images/i/"
    fake = FakeHaut()
    async with make(fake) as c:
        for url, signature, body in zip(urls, signatures, bodies, strict=True):
            fake.routes[("GET", path)] = lambda r, body=body: httpx.Response(
                200, content=body.encode(), headers={"content-type": "application/json"}
            )
            record = await c._call("GET", path, "get_image")
            assert record == {"original": url}  # decoded as the URL it is
            assert redact(f"GET {url}") == f"GET {url.replace(signature, '***')}"


# --- polling --------------------------------------------------------------------------------------------------------
RESULTS = f"/api/v1/companies/{CID}/datasets/{DS}/subjects/s/batches/b/images/i/results/"
ANALYSIS = V1Analysis(dataset_id=DS, subject_id="s", batch_id="b", image_id="i", side_id=1)
RESULT = {
    "id": "r1",
    "is_ok": True,
    "image_id": "i",
    "algorithm_family_tech_name": "selfie_v2.pores",
    "result": {
        "area_results": [
            {"area_name": "face", "main_metric": {"value": 64, "tech_name": "pores_score"}, "sub_metrics": []}
        ]
    },
}


async def test_wait_for_results_v1_backs_off_until_results_arrive():
    fake, clock = FakeHaut(), FakeClock(start=0)
    answers = iter([[], [], (503, []), [], [RESULT]])

    def results(request):
        item = next(answers)
        status, body = item if isinstance(item, tuple) else (200, item)
        return httpx.Response(status, json=body, headers={"Retry-After": "1"} if status == 503 else {})

    fake.routes[("GET", RESULTS)] = results
    async with make(fake, clock, poll=PollSettings(initial_delay=2, factor=2, max_delay=5, timeout=60)) as c:
        got = await c.wait_for_results_v1(ANALYSIS)
    assert (
        got[0].main_metric("face").value == 64
        and got[0].area_results[0].main_metric.tech_name == "pores_score"
    )
    assert clock.sleeps == [2, 4, 5, 1, 5]  # backoff 2, 4, capped 5; the 503 retried after its Retry-After


async def test_wait_for_results_times_out_clearly():
    fake, clock = FakeHaut(), FakeClock(start=0)
    fake.routes[("GET", RESULTS)] = []
    async with make(fake, clock) as c:
        with pytest.raises(ResultsTimeoutError) as exc:
            await c.wait_for_results_v1(ANALYSIS, initial_delay=1, factor=3, max_delay=4, timeout=10)
    assert clock.sleeps == [1, 3, 4, 2] and sum(clock.sleeps) == 10
    assert "results of image i not ready after 10 s (4 polls)" in str(exc.value) and exc.value.retryable


async def test_wait_for_results_v3_until_all_algorithms_calculated():
    fake, clock = FakeHaut(), FakeClock(start=0)
    answers = iter(
        [
            {},
            {
                "face_skin_metrics_3": {
                    "image_batch_id": "b",
                    "all_algorithms_calculated": False,
                    "parameters": None,
                }
            },
            {
                "face_skin_metrics_3": {
                    "image_batch_id": "b",
                    "all_algorithms_calculated": True,
                    "parameters": {"pores": {"score": 71}, "age": {"age": 30}},
                }
            },
        ]
    )
    fake.routes[("GET", f"/api/v3/companies/{CID}/batches/b/results/")] = lambda r: httpx.Response(
        200, json=next(answers)
    )
    async with make(fake, clock) as c:
        got = await c.wait_for_results_v3("b", initial_delay=1, factor=1)
    assert got.scores() == {"pores": 71} and clock.sleeps == [1, 1, 1]


async def test_svg_masks_is_a_read_only_post_with_the_company_in_the_query():
    fake = FakeHaut()
    calls = iter([httpx.Response(503), httpx.Response(200, json={"masks": ["<svg/>"]})])
    fake.routes[("POST", "/service/rasterisation/v5/svg_masks/")] = lambda r: next(calls)
    async with make(fake) as c:
        got = await c.get_svg_masks("img-1", "restored", ["selfie_v2.pores"])
    assert got == {"masks": ["<svg/>"]} and len(fake.requests) == 2  # retried: it changes nothing
    assert fake.requests[0].url.params["company_id"] == CID
    assert json.loads(fake.requests[0].content) == {
        "image_id": "img-1",
        "image_type": "restored",
        "mask_over_image": False,
        "masks": [{"algorithm_tech_name": "selfie_v2.pores"}],
    }


# --- block ----------------------------------------------------------------------------------------------------------
def test_block_needs_exactly_one_way_to_authenticate():
    with pytest.raises(ValidationError, match="give a private_token"):
        HautCredentials(company_id=CID)
    with pytest.raises(ValidationError, match="not both") as exc:
        HautCredentials(company_id=CID, private_token="tok-abcdef", username="u@x.org", password="pw-abcdef")
    assert "tok-abcdef" not in str(exc.value) and "pw-abcdef" not in str(exc.value)
    with pytest.raises(ValidationError, match="needs both username and password"):
        HautCredentials(company_id=CID, username="u@x.org")
    block = HautCredentials(company_id=CID, username="u@x.org", password=SecretStr("pw-abcdef"))
    client = block.get_client()
    assert client.uses_login and client.base_url == "https://saas.haut.ai" and client.poll.timeout == 300
