"""Contract tests for the Haut.ai emulator over real HTTP: the vendor's upload example, the v1 and v3 flows end to
end, every documented rejection, fault injection and the inspection endpoint."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from emulators.haut.results import band, metric_scores
from tests.conftest import start_service

pytestmark = pytest.mark.integration
OTHER_COMPANY = "0b6c9d5e-8f4a-4e1b-9c2d-7a3e5f6b8c90"
UPLOAD_HEADERS = {"Content-Type": "application/octet-stream", "X-Goog-Content-Length-Range": "1,31457280"}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with start_service("haut", tmp_path_factory) as emu:
        yield emu["haut"]


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()


@pytest.fixture
def api(svc):
    with httpx.Client(
        base_url=svc.url, headers={"Authorization": f"Bearer {svc.credentials['private_token']}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def cid(svc) -> str:
    return svc.credentials["company_id"]


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    """A 512 x 512 face-like selfie: skin-toned oval, eyes, brows, nose and mouth on a plain background."""
    img = Image.new("RGB", (512, 512), (225, 230, 235))
    draw = ImageDraw.Draw(img)
    draw.ellipse((106, 56, 406, 456), fill=(224, 172, 138))
    for x in (190, 322):
        draw.ellipse((x - 28, 200, x + 28, 232), fill=(255, 255, 255))
        draw.ellipse((x - 10, 206, x + 10, 226), fill=(70, 45, 30))
        draw.line((x - 34, 180, x + 34, 174), fill=(90, 60, 40), width=6)
    draw.polygon([(256, 230), (236, 310), (276, 310)], fill=(205, 150, 120))
    draw.arc((196, 320, 316, 390), 20, 160, fill=(170, 60, 70), width=8)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def errors(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert set(body) == {"type", "errors"} and all(
        set(e) == {"code", "detail", "attr", "extra"} for e in body["errors"]
    )
    return body["errors"]


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def dataset(api, cid, apps=("face_skin_metrics_2.0",), **fields) -> dict[str, Any]:
    r = api.post(f"/api/v1/companies/{cid}/datasets/", json={"name": "contract study", **fields})
    assert r.status_code == 201, r.text
    ds = r.json()
    for app in apps:
        r = api.post(
            f"/api/v1/companies/{cid}/applications/{app}/attach-to-dataset/",
            params={"attach_dependencies": "true"},
            json={"dataset_id": ds["id"]},
        )
        assert r.status_code == 200, r.text
        ds = r.json()
    return ds


def subject(api, cid, ds, name="alice") -> dict[str, Any]:
    r = api.post(f"/api/v1/companies/{cid}/datasets/{ds['id']}/subjects/", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


def signed_upload(api, cid, subj, **body) -> dict[str, Any]:
    r = api.post(f"/api/v1/companies/{cid}/subjects/{subj['id']}/signed_upload_url/", json=body or None)
    assert r.status_code == 201, r.text
    return r.json()


def results_url(cid, ds, subj, image) -> str:
    return (
        f"/api/v1/companies/{cid}/datasets/{ds['id']}/subjects/{subj['id']}/batches/{image['image_batch_id']}"
        f"/images/{image['id']}/results/"
    )


# --- the vendor's own example and the full flows --------------------------------------------------------------------
def test_v1_flow_with_vendor_curl_upload(svc, api, cid, face_jpeg, tmp_path):
    ds = dataset(api, cid)
    subj = subject(api, cid, ds)
    image = signed_upload(api, cid, subj)
    assert image["upload_url"]["method"] == "PUT" and image["upload_url"]["headers"] == UPLOAD_HEADERS
    assert (
        "X-Goog-Signature=" in image["upload_url"]["url"] and "/_emulator" not in image["upload_url"]["url"]
    )
    file_name = tmp_path / "selfie.jpg"
    file_name.write_bytes(face_jpeg)
    # Haut.ai's "API for Images" page (docs/service-api-facts.md §4.7), verbatim apart from the URL and file name
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            image["upload_url"]["url"],
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "X-Goog-Content-Length-Range: 1,31457280",
            "--upload-file",
            str(file_name),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "200"
    r = api.post(f"/api/v1/companies/{cid}/batches/{image['image_batch_id']}/compute/")
    assert r.status_code == 204
    url = results_url(cid, ds, subj, image)
    assert api.get(url).json() == []  # processing takes 22 virtual seconds
    results = wait_for(lambda: api.get(url).json(), bool)
    assert len(results) == 12 and {r["application_name"] for r in results} == {"Face Skin Metrics 2.0"}
    by_family = {r["algorithm_family_tech_name"]: r for r in results}
    for family, value in metric_scores(face_jpeg).items():
        main = by_family[f"selfie_v2.{family}"]["result"]["area_results"][0]["main_metric"]
        assert (main["value"], main["widget_type"], main["widget_meta"]["tag"]) == (
            value,
            "bad_good_line",
            band(value),
        )
    record = api.get(f"/api/v1/companies/{cid}/images/{image['id']}/").json()
    assert record["status"] == "done" and record["width"] == 512 and record["problems"] == []
    assert httpx.get(record["urls"]["original"]).content == face_jpeg
    aux = api.get(
        f"/api/v1/companies/{cid}/images/{image['id']}/aux_images/",
        params={"algo_app": "FACE", "aux_image_type": "restored"},
    ).json()
    assert (
        aux["count"] == 1
        and aux["results"][0]["aux_image_type"]["tech_name"] == "selfie_front_face_restored_rgba"
    )
    none = api.get(
        f"/api/v1/companies/{cid}/images/{image['id']}/aux_images/", params={"aux_image_type": "mask"}
    )
    assert none.json()["count"] == 0
    listed = api.get(f"/api/v1/companies/{cid}/subjects/{subj['id']}/images/").json()
    assert [i["id"] for i in listed["results"]] == [image["id"]]
    assert api.delete(f"/api/v1/companies/{cid}/images/{image['id']}/").status_code == 204
    assert api.get(f"/api/v1/companies/{cid}/images/{image['id']}/").status_code == 404
    state = svc.received()["state"]
    assert (state["uploads"], state["computes"], state["results_served"]) == (1, 1, 1)


def test_v3_flow_end_to_end(api, cid, face_jpeg):
    ds = dataset(api, cid, apps=("face_skin_metrics_3.0",))
    subj = subject(api, cid, ds, "v3 subject")
    r = api.post(
        f"/api/v3/companies/{cid}/subjects/{subj['id']}/upload/", json={"front": "front.jpg", "meta": {}}
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"front", "image_batch_id"}
    front = body["front"]
    assert front["method"] == "PUT" and front["content_type"] == "application/octet-stream" and front["id"]
    put = httpx.put(
        front["url"], content=face_jpeg, headers=front["headers"]
    )  # Host header included, as documented
    assert put.status_code == 200 and put.headers["etag"]
    batch = body["image_batch_id"]
    assert (
        api.post(f"/api/v3/companies/{cid}/batches/{batch}/compute/", json={"app_args": {}}).status_code
        == 204
    )
    url = f"/api/v3/companies/{cid}/batches/{batch}/results/"
    first = api.get(url).json()["face_skin_metrics_3"]
    assert first["all_algorithms_calculated"] is False and first["parameters"] == {}
    fs3 = wait_for(
        lambda: api.get(url).json()["face_skin_metrics_3"], lambda b: b["all_algorithms_calculated"]
    )
    assert fs3["all_algorithms_calculated"] is True and fs3["image_batch_id"] == batch
    expected = metric_scores(face_jpeg)
    assert fs3["parameters"]["pores"]["score"] == expected["pores"]
    assert fs3["parameters"]["breakouts"]["tag"] == band(expected["acne"])
    original = fs3["predicted_images"]["front"]["original"]
    assert "X-Goog-Expires=3600" in original and httpx.get(original).content == face_jpeg


def test_tiny_image_gives_failed_result_not_http_error(api, cid):
    ds = dataset(api, cid)
    subj = subject(api, cid, ds)
    image = signed_upload(api, cid, subj)
    buf = io.BytesIO()
    Image.new("RGB", (100, 100), (200, 160, 140)).save(buf, "JPEG")
    assert (
        httpx.put(image["upload_url"]["url"], content=buf.getvalue(), headers=UPLOAD_HEADERS).status_code
        == 200
    )
    assert api.post(f"/api/v1/companies/{cid}/batches/{image['image_batch_id']}/compute/").status_code == 204
    results = wait_for(lambda: api.get(results_url(cid, ds, subj, image)).json(), bool)
    assert results and all(r["is_ok"] is False for r in results)
    assert results[0]["result"]["error"]["code"] == "image_resolution_too_low"
    record = api.get(f"/api/v1/companies/{cid}/images/{image['id']}/").json()
    assert record["status"] == "failed" and record["quality_issues"] == ["image_resolution_too_low"]


# --- auth -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/auth/login/", "/api/v1/login/"])
def test_login_and_use_the_token(svc, path, cid):
    creds = svc.credentials
    r = httpx.post(svc.url + path, json={"username": creds["username"], "password": creds["password"]})
    assert r.status_code == 200
    body = r.json()
    assert {
        "id",
        "email",
        "username",
        "company_id",
        "token_access",
        "access_token",
        "refresh_token",
        "is_verified",
        "profile",
    } <= set(body)
    assert body["company_id"] == cid
    listed = httpx.get(
        f"{svc.url}/api/v1/companies/{cid}/datasets/",
        headers={"Authentication": f"Bearer {body['token_access']}"},
    )  # the doc's header spelling
    assert listed.status_code == 200 and listed.json() == {
        "count": 0,
        "next": None,
        "previous": None,
        "results": [],
    }
    refreshed = httpx.post(f"{svc.url}/api/v1/auth/refresh/", json={"refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200 and refreshed.json()["access_token"] != body["access_token"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"username": "demo@haut-emulator.local"}, 400, "required"),
        ({"username": "demo@haut-emulator.local", "password": "wrong"}, 401, "authentication_failed"),
        ({"username": "mfa@haut-emulator.local", "password": "demo-password"}, 400, "mfa_enabled"),
    ],
)
def test_login_rejections(svc, body, status, code):
    r = httpx.post(f"{svc.url}/api/v1/auth/login/", json=body)
    assert r.status_code == status and errors(r)[0]["code"] == code
    assert r.json()["type"] == ("validation_error" if status == 400 else "client_error")


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "not_authenticated"), ({"Authorization": "Bearer wrong"}, "authentication_failed")],
)
def test_unauthenticated_requests_get_401(svc, cid, headers, code):
    r = httpx.get(f"{svc.url}/api/v1/companies/{cid}/datasets/", headers=headers)
    assert r.status_code == 401 and errors(r)[0]["code"] == code and "www-authenticate" in r.headers


def test_private_token_lifecycle(svc, api):
    bad = api.post("/api/v1/auth/private_tokens/", json={"name": "ci"})
    assert bad.status_code == 400 and errors(bad)[0]["attr"] == "expiration_time"
    r = api.post(
        "/api/v1/auth/private_tokens/", json={"name": "ci", "expiration_time": "2099-01-01T00:00:00Z"}
    )
    assert r.status_code == 201
    created = r.json()
    listed = api.get("/api/v1/auth/private_tokens/", params={"ordering": "-id"}).json()
    assert listed["count"] == 2 and listed["results"][0] == {
        k: created[k] for k in ("id", "name", "expiration_time")
    }
    auth = {"Authorization": f"Bearer {created['data']}"}
    assert httpx.get(f"{svc.url}/api/v1/dicts/image_types/", headers=auth).status_code == 200
    assert api.delete(f"/api/v1/auth/private_tokens/{created['id']}/").status_code == 204
    r = httpx.get(f"{svc.url}/api/v1/dicts/image_types/", headers=auth)
    assert r.status_code == 401 and errors(r)[0]["detail"] == "Invalid token."


# --- scoping, dictionaries, pagination --------------------------------------------------------------------------------
def test_other_company_is_403_and_unknown_ids_404(api, cid):
    r = api.get(f"/api/v1/companies/{OTHER_COMPANY}/datasets/")
    assert r.status_code == 403 and errors(r)[0]["code"] == "permission_denied"
    r = api.get(f"/api/v1/companies/{cid}/datasets/{OTHER_COMPANY}/")
    assert r.status_code == 404 and errors(r)[0] == {
        "code": "not_found",
        "detail": "Not found.",
        "attr": None,
        "extra": None,
    }
    r = api.get("/api/v1/no/such/route/")
    assert r.status_code == 404 and errors(r)[0]["code"] == "not_found"


def test_dictionaries(svc, api):
    types = api.get("/api/v1/dicts/image_types/").json()
    selfie = next(t for t in types if t["tech_name"] == "selfie")
    assert [(s["id"], s["tech_name"]) for s in selfie["sides"]] == [(1, "front"), (2, "right"), (3, "left")]
    assert selfie["lights"] == [{"id": 1, "name": "Regular", "tech_name": "regular"}]
    algorithms = httpx.get(f"{svc.url}/api/v1/dicts/algorithms/")  # no auth required (DOC FAQ)
    assert algorithms.status_code == 200
    assert "selfie_v2.pores" in {a["algorithm_family"]["tech_name"] for a in algorithms.json()}
    assert [s["id"] for s in api.get("/api/v1/dicts/sides/").json()] == [1, 2, 3]
    assert api.get("/api/v1/dicts/lights/").json()[0]["tech_name"] == "regular"


def test_pagination_links_are_absolute_and_followable(api, cid):
    ds = dataset(api, cid, apps=())
    for i in range(5):
        subject(api, cid, ds, f"subject-{i}")
    page = api.get(f"/api/v1/companies/{cid}/datasets/{ds['id']}/subjects/", params={"page_size": 2}).json()
    names = [s["name"] for s in page["results"]]
    while page["next"]:
        assert page["next"].startswith("http://")
        page = api.get(page["next"]).json()
        names += [s["name"] for s in page["results"]]
    assert names == [f"subject-{i}" for i in range(5)] and page["count"] == 5 and page["previous"]
    found = api.get(
        f"/api/v1/companies/{cid}/datasets/{ds['id']}/subjects/", params={"q": "subject-3"}
    ).json()
    assert [s["name"] for s in found["results"]] == ["subject-3"]


def test_dataset_and_attach_rejections(api, cid):
    r = api.post(f"/api/v1/companies/{cid}/datasets/", json={"name": "", "expire_images_after_days": 400})
    assert r.status_code == 400
    assert {(e["attr"], e["code"]) for e in errors(r)} == {
        ("name", "blank"),
        ("expire_images_after_days", "max_value"),
    }
    ds = api.post(f"/api/v1/companies/{cid}/datasets/", json={"name": "recs"}).json()
    path = f"/api/v1/companies/{cid}/applications/recommendation_engine/attach-to-dataset/"
    r = api.post(path, json={"dataset_id": ds["id"]})
    assert r.status_code == 400
    assert errors(r)[0]["code"] == "missing_dependencies"
    assert errors(r)[0]["extra"]["missing_application_tech_names"] == ["face_skin_metrics_2.0"]
    r = api.post(path, params={"attach_dependencies": "true"}, json={"dataset_id": ds["id"]})
    assert r.status_code == 200 and len(r.json()["connected_applications"]) == 2
    r = api.post(
        f"/api/v1/companies/{cid}/datasets/",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and errors(r)[0]["code"] == "parse_error"


# --- images: rejections ---------------------------------------------------------------------------------------------
def test_upload_to_deleted_subject_is_rejected(api, cid):
    ds = dataset(api, cid)
    subj = subject(api, cid, ds)
    assert (
        api.delete(f"/api/v1/companies/{cid}/datasets/{ds['id']}/subjects/{subj['id']}/").status_code == 204
    )
    r = api.post(f"/api/v1/companies/{cid}/subjects/{subj['id']}/signed_upload_url/", json={})
    assert r.status_code == 404 and errors(r)[0]["code"] == "not_found"
    r = api.post(f"/api/v3/companies/{cid}/subjects/{subj['id']}/upload/", json={"front": "f.jpg"})
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        (
            {"Content-Type": "image/jpeg", "X-Goog-Content-Length-Range": "1,31457280"},
            b"abc",
            403,
            "SignatureDoesNotMatch",
        ),
        ({"Content-Type": "application/octet-stream"}, b"abc", 403, "SignatureDoesNotMatch"),
        (UPLOAD_HEADERS, b"", 400, "EntityTooSmall"),
        (UPLOAD_HEADERS, b"\0" * 31_457_281, 400, "EntityTooLarge"),
    ],
    ids=["wrong-content-type", "no-length-range-header", "empty-body", "over-30-MiB"],
)
def test_gcs_put_rejections(svc, api, cid, headers, body, status, code):
    ds = dataset(api, cid)
    image = signed_upload(api, cid, subject(api, cid, ds))
    r = httpx.put(image["upload_url"]["url"], content=body, headers=headers, timeout=60)
    assert r.status_code == status and r.headers["content-type"].startswith("application/xml")
    assert f"<Code>{code}</Code>" in r.text
    record = api.get(f"/api/v1/companies/{cid}/images/{image['id']}/").json()
    assert record["status"] == "created"
    assert svc.received()["rejected_by_status"][str(status)] >= 1


def test_tampered_upload_url_is_403(api, cid):
    image = signed_upload(api, cid, subject(api, cid, dataset(api, cid)))
    url = image["upload_url"]["url"].replace("X-Goog-Expires=3600", "X-Goog-Expires=999999")
    r = httpx.put(url, content=b"abc", headers=UPLOAD_HEADERS)
    assert r.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in r.text


def test_compute_before_upload_is_rejected(api, cid):
    image = signed_upload(api, cid, subject(api, cid, dataset(api, cid)))
    r = api.post(f"/api/v1/companies/{cid}/batches/{image['image_batch_id']}/compute/")
    assert r.status_code == 400 and r.json()["type"] == "validation_error"
    assert errors(r)[0]["code"] == "images_not_uploaded" and errors(r)[0]["extra"]["image_ids"] == [
        image["id"]
    ]
    r = api.post(f"/api/v1/companies/{cid}/batches/{OTHER_COMPANY}/compute/")
    assert r.status_code == 404


def test_gdpr_delete_photos_keeps_records(api, cid, face_jpeg):
    ds = dataset(api, cid)
    subj = subject(api, cid, ds)
    image = signed_upload(api, cid, subj)
    assert httpx.put(image["upload_url"]["url"], content=face_jpeg, headers=UPLOAD_HEADERS).status_code == 200
    original = api.get(f"/api/v1/companies/{cid}/images/{image['id']}/").json()["urls"]["original"]
    assert httpx.get(original).status_code == 200
    assert api.post(f"/api/v1/companies/{cid}/subjects/{subj['id']}/delete_photos/").status_code == 204
    record = api.get(f"/api/v1/companies/{cid}/images/{image['id']}/")
    assert record.status_code == 200 and record.json()["urls"]["original"] is None
    gone = httpx.get(original)
    assert gone.status_code == 404 and "<Code>NoSuchKey</Code>" in gone.text


# --- faults, inspection, reset --------------------------------------------------------------------------------------
def test_fault_injection_503_and_429(svc, api, cid):
    svc.faults(error_rate=1.0)
    r = api.get(f"/api/v1/companies/{cid}/datasets/")
    assert r.status_code == 503 and r.json()["type"] == "server_error"
    svc.faults(burst_429=2, retry_after=5)
    for _ in range(2):
        r = api.get(f"/api/v1/companies/{cid}/datasets/")
        assert r.status_code == 429 and float(r.headers["retry-after"]) == pytest.approx(0.05)
        assert errors(r)[0]["code"] == "throttled"
    assert api.get(f"/api/v1/companies/{cid}/datasets/").status_code == 200
    svc.faults(error_rate=1.0, path_pattern="^/gcs/")  # faults reach the fake GCS upload endpoint too
    image = signed_upload(api, cid, subject(api, cid, dataset(api, cid)))
    assert httpx.put(image["upload_url"]["url"], content=b"x", headers=UPLOAD_HEADERS).status_code == 503
    assert svc.received()["faults_injected"] == {"503": 2, "429": 2}


def test_received_counts_duplicates_and_reset_clears(svc, api, cid):
    ds = dataset(api, cid, apps=())
    subject(api, cid, ds, "twin")
    subject(api, cid, ds, "twin")  # allowed (names are not unique) but counted
    api.get(f"/api/v1/companies/{OTHER_COMPANY}/datasets/")
    received = svc.received()
    assert received["accepted"]["create_subject"] == 2 and received["duplicates"] == {"create_subject": 1}
    assert received["rejected_by_status"] == {"403": 1}
    assert received["state"]["subjects"] == 2 and received["state"]["duplicate_subject_names"] == 1
    svc.reset()
    after = svc.received()
    assert after["accepted"] == {} and after["state"]["subjects"] == 0 and after["state"]["datasets"] == 0
