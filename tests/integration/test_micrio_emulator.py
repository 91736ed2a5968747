"""Micrio Server API v2 emulator over real HTTP: the documented calls, every rejection, real source fetches
(a local file server and S3 presigned URLs), processing limits, injected failures and the control API."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import httpx
import pytest
from PIL import Image

from emulators.launcher import running_emulators
from tests.conftest import TEST_TIME_SCALE

pytestmark = pytest.mark.integration

STAGES_TOTAL = 4.5  # virtual seconds of the default stage durations


def picture(fmt: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 80, 20)).save(out, fmt)
    return out.getvalue()


FILES = {
    "/photo.jpg": ("image/jpeg", picture("JPEG", (640, 480))),
    "/scan.png": ("image/png", picture("PNG", (300, 200))),
    "/notes.txt": ("text/plain", b"this is not an image"),
}


class _Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = self.path.split("?", 1)[0]
        name = "/" + path.rsplit("/", 1)[-1]
        if name not in FILES:
            self.send_error(404)
            return
        content_type, data = FILES[name]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    """A tiny HTTP server for sourceUrls: /photo.jpg, /scan.png, /notes.txt (not an image); anything else 404."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def emu():
    with running_emulators(only=["micrio", "s3"], time_scale=TEST_TIME_SCALE) as running:
        yield running


@pytest.fixture(scope="module")
def svc(emu):
    return emu["micrio"]


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()


def auth(svc) -> dict[str, str]:
    return {"organisationId": svc.credentials["organisation_id"], "apiKey": svc.credentials["api_key"]}


def root(svc) -> str:
    return svc.credentials["root_folder_id"]


def call(svc, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{svc.url}{path}", json=body, timeout=30)


def ok(svc, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = call(svc, path, {**auth(svc), **body})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert list(payload) == ["result"]
    return payload["result"]


def add(svc, *sources: str | dict[str, str], folder: str | None = None) -> list[dict[str, Any]]:
    images = [s if isinstance(s, dict) else {"sourceUrl": s} for s in sources]
    return ok(svc, "/v2/images/add", {"folderId": folder or root(svc), "images": images})["images"]


def image_status(svc, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in ok(svc, "/v2/image/status", {"imageIds": ids})["images"]}


def wait_done(svc, ids: list[str], timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    """Poll image/status until every id is ready or errored."""
    deadline = time.monotonic() + timeout
    while True:
        got = image_status(svc, ids)
        if all(got[i]["status"] in ("ready", "error") for i in ids):
            return got
        assert time.monotonic() < deadline, f"not done in {timeout}s: {got}"
        time.sleep(0.02)


# --- contract: the documented calls --------------------------------------------------------------


def test_curl_images_add_as_documented(svc, files) -> None:
    """The documented body of /v2/images/add, sent with curl."""
    body = {
        **auth(svc),
        "images": [
            {"sourceUrl": f"{files}/photo.jpg"},
            {"name": "inventory-0042", "sourceUrl": f"{files}/scan.png"},
        ],
        "folderId": root(svc),
        "userEmail": "tiler@micr.io",
    }
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{svc.url}/v2/images/add",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            "-w",
            "\n%{http_code}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    text, code = out.rsplit("\n", 1)
    assert code == "200"
    images = json.loads(text)["result"]["images"]
    assert [(i["name"], i["status"]) for i in images] == [
        ("photo.jpg", "queued"),
        ("inventory-0042", "queued"),
    ]
    assert all(len(i["id"]) == 6 for i in images)


def test_images_are_fetched_processed_and_get_dimensions_and_thumbnails(svc, files) -> None:
    added = add(svc, f"{files}/photo.jpg", {"sourceUrl": f"{files}/scan.png", "name": "my-id-1"})
    ids = [i["id"] for i in added]
    done = wait_done(svc, ids)
    photo, scan = done[ids[0]], done[ids[1]]
    assert photo["status"] == scan["status"] == "ready"
    assert (photo["name"], photo["width"], photo["height"]) == ("photo.jpg", 640, 480)
    assert (scan["name"], scan["width"], scan["height"]) == ("my-id-1", 300, 200)
    assert "error" not in photo
    thumb = httpx.get(photo["thumbnail"], timeout=10)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (256, 192)
    folder = ok(svc, "/v2/folder/status", {"folderId": root(svc)})
    assert folder == {"numTotal": 2, "numComplete": 2, "processingIds": [], "erroredIds": []}


def test_status_moves_through_the_stages(svc, files) -> None:
    svc.control(
        "POST",
        "config",
        json={"stage_durations": {"downloading": 30, "processing": 30, "tiling": 30, "storing": 30}},
    )
    (image,) = add(svc, f"{files}/photo.jpg")
    seen = []
    deadline = time.monotonic() + 15
    while not seen or seen[-1] != "ready":
        status = image_status(svc, [image["id"]])[image["id"]]
        if not seen or seen[-1] != status["status"]:
            seen.append(status["status"])
        if status["status"] in ("processing", "tiling", "storing"):
            assert (status["width"], status["height"]) == (640, 480)
        assert "thumbnail" not in status or status["status"] == "ready"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert image["status"] == "queued"
    assert seen == ["downloading", "processing", "tiling", "storing", "ready"] or seen == [
        "queued",
        "downloading",
        "processing",
        "tiling",
        "storing",
        "ready",
    ]


@pytest.mark.parametrize(
    ("path", "code"),
    [("/notes.txt", "invalidImage"), ("/missing.jpg", "originalNotFound"), (None, "originalNotFound")],
)
def test_source_problems_end_in_documented_errors(svc, files, path, code) -> None:
    url = f"{files}{path}" if path else "http://127.0.0.1:9/unreachable.jpg"
    (image,) = add(svc, url)
    got = wait_done(svc, [image["id"]])[image["id"]]
    assert got["status"] == "error" and got["error"] == code
    assert "thumbnail" not in got and "width" not in got
    folder = ok(svc, "/v2/folder/status", {"folderId": root(svc)})
    assert folder["erroredIds"] == [image["id"]] and folder["numComplete"] == 0
    assert httpx.get(f"{svc.url}/thumbs/{image['id']}.jpg").status_code == 404


def test_s3_presigned_urls_are_fetched_as_given(emu, svc) -> None:
    s3creds = emu["s3"].credentials
    s3 = boto3.client(
        "s3",
        endpoint_url=emu["s3"].url,
        aws_access_key_id=s3creds["aws_access_key_id"],
        aws_secret_access_key=s3creds["aws_secret_access_key"],
        region_name=s3creds["region_name"],
    )
    s3.put_object(Bucket=s3creds["bucket"], Key="originals/big scan+1.jpg", Body=picture("JPEG", (1024, 768)))
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": s3creds["bucket"], "Key": "originals/big scan+1.jpg"}, ExpiresIn=600
    )
    assert "X-Amz-Signature=" in url or "Signature=" in url
    (image,) = add(svc, url)
    assert image["name"] == "big scan+1.jpg"
    got = wait_done(svc, [image["id"]])[image["id"]]
    assert (got["status"], got["width"], got["height"]) == ("ready", 1024, 768)


# --- rejections ----------------------------------------------------------------------------------

WRONG_KEY = "00000000-0000-4000-8000-000000000000"


def _cases() -> list[tuple[str, str, Any, int, str]]:
    """(id, path, body-maker, status, message fragment); the body maker gets (auth, root folder)."""
    img = [{"sourceUrl": "http://127.0.0.1:9/a.jpg"}]
    return [
        (
            "add-no-org",
            "/v2/images/add",
            lambda a, r: {"apiKey": a["apiKey"], "folderId": r, "images": img},
            400,
            "organisationId is required",
        ),
        (
            "add-no-key",
            "/v2/images/add",
            lambda a, r: {"organisationId": a["organisationId"], "folderId": r, "images": img},
            400,
            "apiKey is required",
        ),
        (
            "add-key-not-uuid",
            "/v2/images/add",
            lambda a, r: {**a, "apiKey": "abc", "folderId": r, "images": img},
            400,
            "apiKey must be a uuid",
        ),
        (
            "add-wrong-key",
            "/v2/images/add",
            lambda a, r: {**a, "apiKey": WRONG_KEY, "folderId": r, "images": img},
            401,
            "Invalid organisationId or apiKey",
        ),
        (
            "add-unknown-org",
            "/v2/images/add",
            lambda a, r: {**a, "organisationId": WRONG_KEY, "folderId": r, "images": img},
            401,
            "Invalid",
        ),
        ("add-no-images", "/v2/images/add", lambda a, r: {**a, "folderId": r}, 400, "images is required"),
        (
            "add-images-not-array",
            "/v2/images/add",
            lambda a, r: {**a, "folderId": r, "images": "x"},
            400,
            "images must be an array",
        ),
        (
            "add-empty-images",
            "/v2/images/add",
            lambda a, r: {**a, "folderId": r, "images": []},
            400,
            "at least one image",
        ),
        (
            "add-no-source",
            "/v2/images/add",
            lambda a, r: {**a, "folderId": r, "images": [{"name": "x"}]},
            400,
            "images[0].sourceUrl is required",
        ),
        ("add-no-folder", "/v2/images/add", lambda a, r: {**a, "images": img}, 400, "folderId is required"),
        (
            "add-folder-5-chars",
            "/v2/images/add",
            lambda a, r: {**a, "folderId": "abcde", "images": img},
            400,
            "6 characters",
        ),
        (
            "add-unknown-folder",
            "/v2/images/add",
            lambda a, r: {**a, "folderId": "zzzzzz", "images": img},
            404,
            "not found",
        ),
        (
            "add-too-many",
            "/v2/images/add",
            lambda a, r: {**a, "folderId": r, "images": img * 1001},
            400,
            "maximum per call is 1000",
        ),
        (
            "status-101-ids",
            "/v2/image/status",
            lambda a, r: {**a, "imageIds": ["abcdef"] * 101},
            400,
            "maximum is 100",
        ),
        ("status-no-ids", "/v2/image/status", lambda a, r: {**a}, 400, "imageIds is required"),
        (
            "status-wrong-key",
            "/v2/image/status",
            lambda a, r: {**a, "apiKey": WRONG_KEY, "imageIds": []},
            401,
            "Invalid",
        ),
        (
            "folder-status-unknown",
            "/v2/folder/status",
            lambda a, r: {**a, "folderId": "zzzzzz"},
            404,
            "not found",
        ),
        ("folder-status-no-id", "/v2/folder/status", lambda a, r: {**a}, 400, "folderId is required"),
        (
            "folder-status-wrong-key",
            "/v2/folder/status",
            lambda a, r: {**a, "apiKey": WRONG_KEY, "folderId": r},
            401,
            "Invalid",
        ),
        ("create-no-parent", "/v2/folder/create", lambda a, r: {**a}, 400, "parentId is required"),
        (
            "create-unknown-parent",
            "/v2/folder/create",
            lambda a, r: {**a, "parentId": "zzzzzz"},
            404,
            "not found",
        ),
        (
            "create-bad-type",
            "/v2/folder/create",
            lambda a, r: {**a, "parentId": r, "type": "tour"},
            400,
            "type must be one of folder, album, space",
        ),
        (
            "create-wrong-key",
            "/v2/folder/create",
            lambda a, r: {**a, "apiKey": WRONG_KEY, "parentId": r},
            401,
            "Invalid",
        ),
        ("body-not-object", "/v2/folder/status", lambda a, r: [a], 400, "JSON object"),
    ]


@pytest.mark.parametrize(
    ("case", "path", "make_body", "status", "needle"), _cases(), ids=[c[0] for c in _cases()]
)
def test_documented_rejections(svc, case, path, make_body, status, needle) -> None:
    response = call(svc, path, make_body(auth(svc), root(svc)))
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and needle in body["error"]


def test_malformed_json_and_wrong_method_use_the_error_envelope(svc) -> None:
    bad = httpx.post(
        f"{svc.url}/v2/images/add", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json() == {"error": "Request body is not valid JSON"}
    wrong = httpx.get(f"{svc.url}/v2/folder/status")
    assert wrong.status_code == 405 and list(wrong.json()) == ["error"]
    missing = httpx.post(f"{svc.url}/v2/images/list", json=auth(svc))
    assert missing.status_code == 404 and list(missing.json()) == ["error"]


def test_image_status_takes_100_ids_and_leaves_unknown_ones_out(svc, files) -> None:
    (image,) = add(svc, f"{files}/photo.jpg")
    ids = [image["id"], *[f"zz{n:04d}" for n in range(99)]]
    got = ok(svc, "/v2/image/status", {"imageIds": ids})["images"]
    assert [i["id"] for i in got] == [image["id"]]


# --- folders -------------------------------------------------------------------------------------


def test_folder_create_and_status(svc, files) -> None:
    folder = ok(svc, "/v2/folder/create", {"parentId": root(svc)})["id"]
    album = ok(svc, "/v2/folder/create", {"parentId": folder, "type": "album", "name": "Prints"})["id"]
    space = ok(svc, "/v2/folder/create", {"parentId": root(svc), "type": "space"})["id"]
    assert len({folder, album, space}) == 3 and all(len(f) == 6 for f in (folder, album, space))
    empty = {"numTotal": 0, "numComplete": 0, "processingIds": [], "erroredIds": []}
    assert ok(svc, "/v2/folder/status", {"folderId": album}) == empty
    added = add(svc, f"{files}/photo.jpg", f"{files}/notes.txt", folder=album)
    right_after = ok(svc, "/v2/folder/status", {"folderId": album})
    assert right_after["numTotal"] == 2 and set(right_after["processingIds"]) <= {i["id"] for i in added}
    wait_done(svc, [i["id"] for i in added])
    assert ok(svc, "/v2/folder/status", {"folderId": album}) == {
        "numTotal": 2,
        "numComplete": 1,
        "processingIds": [],
        "erroredIds": [added[1]["id"]],
    }
    assert (
        ok(svc, "/v2/folder/status", {"folderId": root(svc)}) == empty
    )  # subfolders are counted on their own


# --- processing limits and injected failures -----------------------------------------------------


def test_images_beyond_max_concurrent_wait_in_queued(svc, files) -> None:
    svc.control(
        "POST",
        "config",
        json={
            "max_concurrent": 2,
            "stage_durations": {"downloading": 10, "processing": 10, "tiling": 10, "storing": 10},
        },
    )
    ids = [i["id"] for i in add(svc, *[f"{files}/photo.jpg"] * 5)]
    time.sleep(0.05)
    statuses = [s["status"] for s in image_status(svc, ids).values()]
    assert statuses.count("queued") == 3, statuses
    state = svc.received()["state"]
    assert state["by_status"]["queued"] == 3 and state["max_concurrent"] == 2
    done = wait_done(svc, ids)
    assert all(s["status"] == "ready" for s in done.values())
    state = svc.received()["state"]
    span = state["first_added_to_last_ready"]
    # 5 images, 2 at a time, 40 virtual seconds each: the last is ready after 3 rounds, 120 s virtual
    # (less a timer's resolution: event loops may wake a sleeper up to a millisecond early).
    assert span["virtual_seconds"] >= 115
    assert state["last_ready_at_monotonic"] > state["first_added_at_monotonic"]


def test_fail_rules_make_first_attempts_fail_then_re_adds_succeed(svc, files) -> None:
    svc.control(
        "POST",
        "config",
        json={
            "fail_rules": [
                {"match": "scan", "error": "uploadError", "times": 1},
                {"match": "photo", "error": "statusUpdateError", "times": 2},
            ]
        },
    )
    first = add(svc, f"{files}/scan.png", f"{files}/photo.jpg")
    done = wait_done(svc, [i["id"] for i in first])
    assert [done[i["id"]]["error"] for i in first] == ["uploadError", "statusUpdateError"]
    second = add(svc, f"{files}/scan.png", f"{files}/photo.jpg")
    done = wait_done(svc, [i["id"] for i in second])
    assert [done[i["id"]]["status"] for i in second] == ["ready", "error"]
    (third,) = add(svc, f"{files}/photo.jpg")
    assert wait_done(svc, [third["id"]])[third["id"]]["status"] == "ready"
    assert svc.received()["state"]["errors"] == {"uploadError": 1, "statusUpdateError": 2}


def test_transient_error_rate(svc, files) -> None:
    svc.control(
        "POST", "config", json={"transient_error_rate": 1.0, "transient_errors": ["unknown"], "seed": 1}
    )
    ids = [i["id"] for i in add(svc, f"{files}/photo.jpg", f"{files}/scan.png")]
    assert {s["error"] for s in wait_done(svc, ids).values()} == {"unknown"}


def test_bad_emulator_config_is_rejected(svc) -> None:
    response = httpx.post(
        f"{svc.url}/_emulator/config", json={"fail_rules": [{"match": "x", "error": "nope"}]}
    )
    assert response.status_code == 400 and "must be one of" in response.json()["error"]
    assert httpx.get(f"{svc.url}/_emulator/config").json()["fail_rules"] == []


# --- control API: received, duplicates, faults, reset --------------------------------------------


def test_received_counts_accepted_rejected_and_duplicates(svc, files) -> None:
    add(svc, f"{files}/photo.jpg")
    add(svc, f"{files}/photo.jpg", f"{files}/scan.png")
    call(svc, "/v2/images/add", {**auth(svc), "apiKey": WRONG_KEY, "folderId": root(svc), "images": []})
    got = svc.received()
    assert got["accepted"]["image"] == 3
    assert got["duplicates"] == {"image": 1}
    assert got["recent_duplicates"][0]["sourceUrl"] == f"{files}/photo.jpg"
    assert got["rejected"] == {"POST /v2/images/add": 1} and got["rejected_by_status"] == {"401": 1}
    assert got["requests"]["POST /v2/images/add"] == 3
    assert got["state"]["images_total"] == 3
    assert svc.credentials["api_key"] not in json.dumps(got)


def test_fault_injection_503_and_429(svc) -> None:
    svc.faults(error_rate=1)
    failed = call(svc, "/v2/folder/status", {**auth(svc), "folderId": root(svc)})
    assert failed.status_code == 503 and list(failed.json()) == ["error"]
    svc.faults(burst_429=2, retry_after=50)
    limited = [call(svc, "/v2/folder/status", {**auth(svc), "folderId": root(svc)}) for _ in range(3)]
    assert [r.status_code for r in limited] == [429, 429, 200]
    assert float(limited[0].headers["Retry-After"]) == pytest.approx(50 * TEST_TIME_SCALE)
    assert svc.received()["faults_injected"] == {"503": 1, "429": 2}


def test_reset_forgets_images_folders_and_settings(svc, files) -> None:
    svc.control("POST", "config", json={"max_concurrent": 1})
    (image,) = add(svc, f"{files}/photo.jpg")
    folder = ok(svc, "/v2/folder/create", {"parentId": root(svc)})["id"]
    svc.reset()
    assert ok(svc, "/v2/image/status", {"imageIds": [image["id"]]}) == {"images": []}
    assert call(svc, "/v2/folder/status", {**auth(svc), "folderId": folder}).status_code == 404
    assert svc.received()["state"]["images_total"] == 0
    assert httpx.get(f"{svc.url}/_emulator/config").json()["max_concurrent"] == 8
