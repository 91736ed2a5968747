"""MicrioClient on a mock transport: body auth, validation, status splitting, retries and secrecy."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from clients.errors import ApiError, AuthError, InputError, OutcomeUnknownError
from clients.micrio import (
    FINAL_ERRORS,
    PLACEHOLDER_BASE_URL,
    TRANSIENT_ERRORS,
    ImageSource,
    ImageStatus,
    MicrioClient,
    is_terminal,
)
from clients.timing import FakeClock
from clients.transport import HttpSettings, RetryPolicy

ORG = "6d1c2b1e-3f4a-4b5c-9d6e-7f8a9b0c1d2e"
KEY = "0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"
FOLDER = "dmRoot"
SIGNED = "https://bucket.s3.test/a.jpg?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=deadbeef1234"


class Api:
    """A scripted Micrio: records JSON bodies per path; ``handler(path, body)`` answers or raises."""

    def __init__(self, handler):
        self.handler = handler
        self.calls: list[tuple[str, dict]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append((request.url.path, body))
        answer = await self.handler(request.url.path, body)
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json={"result": answer})

    def bodies(self, path: str) -> list[dict]:
        return [b for p, b in self.calls if p == path]


def client(api: Api, **kw) -> MicrioClient:
    settings = HttpSettings(transport=httpx.MockTransport(api), retry=RetryPolicy(max_attempts=4))
    return MicrioClient(ORG, KEY, "http://micrio.test", settings=settings, clock=FakeClock(), **kw)


def status_of(image_id: str, status: str = "queued", **extra) -> dict:
    return {"id": image_id, "name": f"n-{image_id}", "status": status, **extra}


async def test_status_of_250_ids_is_split_100_100_50_and_merged_in_input_order():
    async def handler(path, body):
        # Each call answers in reverse order, so only a real merge restores the input order.
        return {"images": [status_of(i, "ready", width=10, height=20) for i in reversed(body["imageIds"])]}

    api = Api(handler)
    ids = [f"img{i:03d}" for i in range(250)]
    async with client(api) as c:
        report = await c.image_status(ids)
    sent = api.bodies("/v2/image/status")
    assert sorted(len(b["imageIds"]) for b in sent) == [50, 100, 100]
    assert sorted(i for b in sent for i in b["imageIds"]) == sorted(ids)  # each id asked exactly once
    assert list(report.statuses) == ids and report.missing == []
    assert report.statuses["img249"].width == 10 and report.all_terminal


async def test_status_calls_run_concurrently_but_bounded():
    in_flight = peak = 0

    async def handler(path, body):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1
        return {"images": [status_of(i) for i in body["imageIds"]]}

    api = Api(handler)
    async with client(api, status_concurrency=2) as c:
        report = await c.image_status([f"i{n}" for n in range(550)])
    assert len(api.calls) == 6 and peak == 2
    assert report.pending == [f"i{n}" for n in range(550)]


async def test_ids_missing_from_the_answer_are_reported_and_duplicates_asked_once():
    async def handler(path, body):
        return {"images": [status_of(i) for i in body["imageIds"] if i != "ghost1"]}

    api = Api(handler)
    async with client(api) as c:
        report = await c.image_status(["a1", "ghost1", "b2", "a1"])
    assert api.bodies("/v2/image/status")[0]["imageIds"] == ["a1", "ghost1", "b2"]
    assert list(report.statuses) == ["a1", "b2"] and report.missing == ["ghost1"]
    assert report.counts() == {"queued": 2, "missing": 1}


async def test_no_ids_means_no_call():
    api = Api(None)
    async with client(api) as c:
        report = await c.image_status([])
    assert api.calls == [] and report.statuses == {} and report.missing == []


async def test_add_sends_body_auth_and_returns_ids_in_input_order():
    async def handler(path, body):
        return {
            "images": [
                {"id": f"id{n}", "name": s.get("name", "x.jpg"), "status": "queued"}
                for n, s in enumerate(body["images"])
            ]
        }

    api = Api(handler)
    sources = [
        ImageSource(source_url="https://h.test/x.jpg"),
        {"sourceUrl": SIGNED, "name": "A-1"},
        "http://h.test/y.png",
    ]
    async with client(api, user_email="ops@example.org") as c:
        added = await c.add_images(FOLDER, sources)
    ((path, body),) = api.calls
    assert path == "/v2/images/add"
    assert body == {
        "organisationId": ORG,
        "apiKey": KEY,
        "images": [
            {"sourceUrl": "https://h.test/x.jpg"},
            {"sourceUrl": SIGNED, "name": "A-1"},
            {"sourceUrl": "http://h.test/y.png"},
        ],
        "folderId": FOLDER,
        "userEmail": "ops@example.org",
    }
    assert [a.id for a in added] == ["id0", "id1", "id2"] and added[1].name == "A-1"


@pytest.mark.parametrize(
    "call,fragment",
    [
        (
            lambda c: c.add_images("abc", ["https://h.test/a.jpg"]),
            "folder_id: must be a Micrio folder ID, got 3 characters (6 characters)",
        ),
        (lambda c: c.add_images(FOLDER, []), "images: is empty (at least 1 image per call)"),
        (lambda c: c.add_images(FOLDER, ["https://h.test/a.jpg", ""]), "images[1].sourceUrl: is empty"),
        (
            lambda c: c.add_images(FOLDER, ["ftp://h.test/a.jpg"]),
            "images[0].sourceUrl: is not an http(s) URL: 'ftp://h.test/a.jpg'",
        ),
        (lambda c: c.add_images(FOLDER, [{"name": "n"}]), "images[0]: is not a valid image source"),
        (
            lambda c: c.add_images(FOLDER, [{"sourceUrl": "https://h.test/a.jpg", "name": " "}]),
            "images[0].name: is empty",
        ),
        (
            lambda c: c.add_images(FOLDER, [42]),
            "images[0]: must be an ImageSource, a mapping or a URL, got int",
        ),
        (lambda c: c.add_images(FOLDER, "https://h.test/a.jpg"), "images: must be a list of image sources"),
        (
            lambda c: c.add_images(FOLDER, ["https://h.test/a.jpg"] * 4),
            "images: has 4 entries (at most 3 per call)",
        ),
        (
            lambda c: c.add_images(FOLDER, ["https://h.test/a.jpg"], user_email="nobody"),
            "user_email: is not an email address",
        ),
        (lambda c: c.image_status(["ok", ""]), "image_ids[1]: must be a non-empty string"),
        (lambda c: c.image_status("abcdef"), "image_ids: must be a list of Micrio image IDs"),
        (lambda c: c.folder_status("toolong"), "folder_id: must be a Micrio folder ID, got 7 characters"),
        (lambda c: c.create_folder("abc"), "parent_id: must be a Micrio folder ID"),
        (lambda c: c.create_folder(FOLDER, type="gallery"), "type: is 'gallery' (folder, album or space)"),
        (lambda c: c.create_folder(FOLDER, name=""), "name: is empty"),
    ],
)
async def test_documented_constraints_are_checked_before_sending(call, fragment):
    api = Api(None)
    async with client(api, max_batch=3) as c:
        with pytest.raises(InputError) as exc:
            await call(c)
    assert fragment in str(exc.value)
    assert api.calls == []


async def test_a_presigned_url_is_never_echoed_by_validation():
    with pytest.raises(InputError) as exc:
        async with client(Api(None)) as c:
            await c.add_images(FOLDER, ["ftp" + SIGNED[5:]])
    assert "deadbeef1234" not in str(exc.value) and "AKIDEXAMPLE" not in str(exc.value)
    assert "ftp://bucket.s3.test/a.jpg?..." in str(exc.value)


@pytest.mark.parametrize("operation", ["add", "create"])
async def test_add_and_create_are_not_retried_after_a_dropped_connection(operation):
    async def handler(path, body):
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    api = Api(handler)
    async with client(api) as c:
        with pytest.raises(OutcomeUnknownError) as exc:
            if operation == "add":
                await c.add_images(FOLDER, ["https://h.test/a.jpg"])
            else:
                await c.create_folder(FOLDER, "sub")
    assert len(api.calls) == 1 and "not retried" in str(exc.value)


async def test_read_only_calls_are_retried_after_drops_and_503():
    script = [httpx.RemoteProtocolError("dropped"), httpx.Response(503, json={"error": "busy"})]

    async def handler(path, body):
        if script:
            item = script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        if path == "/v2/folder/status":
            return {"numTotal": 3, "numComplete": 1, "processingIds": ["a"], "erroredIds": ["b"]}
        return {"images": [status_of(i, "error", error="invalidImage") for i in body["imageIds"]]}

    api = Api(handler)
    async with client(api) as c:
        report = await c.image_status(["b"])
        folder = await c.folder_status(FOLDER)
    assert len(api.bodies("/v2/image/status")) == 3
    assert report.statuses["b"].error == "invalidImage" and not report.statuses["b"].transient_error
    assert (folder.num_total, folder.num_complete, folder.processing_ids, folder.errored_ids) == (
        3,
        1,
        ["a"],
        ["b"],
    )
    assert not folder.finished


@pytest.mark.parametrize(
    "answer,fragment",
    [
        ({"images": [{"id": "i1", "name": "a.jpg", "status": "queued"}]}, "1 images answered for 2 sent"),
        (
            {
                "images": [
                    {"id": "i1", "name": "B", "status": "queued"},
                    {"id": "i2", "name": "A", "status": "queued"},
                ]
            },
            "images[0] came back named 'B', sent as 'A'",
        ),
    ],
)
async def test_an_add_answer_that_does_not_line_up_is_an_unknown_outcome(answer, fragment):
    async def handler(path, body):
        return answer

    async with client(Api(handler)) as c:
        with pytest.raises(OutcomeUnknownError) as exc:
            await c.add_images(
                FOLDER,
                [
                    {"sourceUrl": "https://h.test/a.jpg", "name": "A"},
                    {"sourceUrl": "https://h.test/b.jpg", "name": "B"},
                ],
            )
    assert fragment in str(exc.value) and not exc.value.retryable


@pytest.mark.parametrize(
    "response,fragment",
    [
        (httpx.Response(200, json={"images": []}), "no JSON {result: ...} envelope"),
        (httpx.Response(200, text="<html>"), "no JSON {result: ...} envelope"),
        (
            httpx.Response(200, json={"result": {"images": [{"id": "x", "status": "done"}]}}),
            "result.images[0].status",
        ),
        (httpx.Response(200, json={"result": {"images": {"id": "x"}}}), "result.images is not a list"),
    ],
)
async def test_unexpected_answers_are_clear_errors(response, fragment):
    async def handler(path, body):
        return response

    async with client(Api(handler)) as c:
        with pytest.raises(ApiError) as exc:
            await c.image_status(["x"])
    assert "unexpected response" in str(exc.value) and fragment in str(exc.value)


async def test_error_messages_come_from_the_response_never_the_request_body(caplog):
    echo = {"error": f"Folder 'zzzzzz' not found; source {SIGNED}"}

    async def handler(path, body):
        if path == "/v2/folder/create":
            # A server that echoes the whole request back: only its "error" field may be used.
            return httpx.Response(400, json={**echo, "request": body})
        if path == "/v2/folder/status":
            return httpx.Response(500, text=f"crash while handling {json.dumps(body)}")
        return httpx.Response(401, json={"error": f"Invalid apiKey {body['apiKey']}"})

    with caplog.at_level(logging.DEBUG):
        logging.getLogger("httpx").setLevel(logging.DEBUG)
        async with client(Api(handler)) as c:
            with pytest.raises(ApiError) as bad_request:
                await c.create_folder(FOLDER, "x")
            with pytest.raises(ApiError) as crash:
                await c.folder_status(FOLDER)
            with pytest.raises(AuthError) as auth:
                await c.image_status(["a"])
    assert str(bad_request.value) == (
        "micrio create_folder: HTTP 400: Folder 'zzzzzz' not found; source https://bucket.s3.test/a.jpg?..."
    )
    assert "HTTP 500" in str(crash.value) and "***" in str(crash.value)
    assert auth.value.status == 401 and str(auth.value) == "micrio image_status: HTTP 401: Invalid apiKey ***"
    for text in (str(bad_request.value), str(crash.value), str(auth.value), caplog.text, repr(c)):
        assert KEY not in text and ORG not in text and "deadbeef1234" not in text
    assert "HTTP Request: POST http://micrio.test/v2/folder/create" in caplog.text  # the logs were captured


def test_credentials_and_endpoint_are_checked_without_echoing_them():
    with pytest.raises(InputError, match="base_url: is not set"):
        MicrioClient(ORG, KEY, PLACEHOLDER_BASE_URL)
    with pytest.raises(InputError) as exc:
        MicrioClient(ORG, "not-a-uuid-secret-value", "http://micrio.test")
    assert str(exc.value) == "api_key: is not a uuid (the uuid Micrio issued)"
    assert "not-a-uuid-secret-value" not in repr(exc.value)


async def test_create_folder_defaults_name_to_type():
    async def handler(path, body):
        return {"id": "newFld"}

    api = Api(handler)
    async with client(api) as c:
        folder = await c.create_folder(FOLDER, type="album")
    assert api.calls[0][1] == {"organisationId": ORG, "apiKey": KEY, "parentId": FOLDER, "type": "album"}
    assert folder.model_dump() == {"id": "newFld", "parent_id": FOLDER, "name": "album", "type": "album"}


def test_terminal_statuses_and_error_kinds():
    assert [
        s
        for s in ("queued", "downloading", "processing", "tiling", "storing", "ready", "error")
        if is_terminal(s)
    ] == [
        "ready",
        "error",
    ]
    assert is_terminal(ImageStatus(id="a", status="ready"))
    assert TRANSIENT_ERRORS.isdisjoint(FINAL_ERRORS) and len(TRANSIENT_ERRORS | FINAL_ERRORS) == 5
    assert ImageStatus(id="a", status="error", error="uploadError").transient_error
    assert not ImageStatus(id="a", status="error", error="originalNotFound").transient_error


def test_block_builds_a_client_and_hides_the_key():
    from pydantic import SecretStr, ValidationError

    from blocks import MicrioCredentials

    block = MicrioCredentials(
        organisation_id=ORG, api_key=SecretStr(KEY), base_url="http://micrio.test", max_images_per_add=50
    )
    c = block.get_client()
    assert (c.base_url, c.max_batch, c.user_email) == ("http://micrio.test", 50, None)
    assert KEY not in repr(block) and KEY not in repr(c)
    with pytest.raises(ValidationError, match="organisation_id must be the uuid"):
        MicrioCredentials(organisation_id="acme", api_key=SecretStr(KEY))
    with pytest.raises(InputError, match="base_url"):
        MicrioCredentials(organisation_id=ORG, api_key=SecretStr(KEY)).get_client()
