"""Haut.ai emulator backend on a ManualClock: tokens, scoping, pagination, the image state machine, results."""

from __future__ import annotations

import copy
import io
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from PIL import Image as PILImage

from emulators.common import ManualClock, ServiceError
from emulators.haut import DEFAULT_CONFIG
from emulators.haut.backend import HautBackend
from emulators.haut.gcs import BlobStore, GcsError
from emulators.haut.results import analyse_image, band, metric_scores, v3_parameters

TOKEN = "Bearer haut-demo-private-token"
T0 = 1_700_000_000.0
OTHER_COMPANY = "0b6c9d5e-8f4a-4e1b-9c2d-7a3e5f6b8c90"


def jpeg(width: int = 320, height: int = 320, color: tuple[int, int, int] = (200, 150, 120)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=T0)


def make_backend(clock: ManualClock, **overrides: Any) -> HautBackend:
    return HautBackend({**copy.deepcopy(DEFAULT_CONFIG), **overrides}, clock, "http://emu.test")


@pytest.fixture
def backend(clock: ManualClock) -> HautBackend:
    return make_backend(clock)


@pytest.fixture
def user(backend: HautBackend):
    return backend.authenticate(TOKEN)


@pytest.fixture
def cid() -> str:
    return DEFAULT_CONFIG["companies"][0]["id"]


def errors_of(exc: pytest.ExceptionInfo[ServiceError]) -> list[dict[str, Any]]:
    return exc.value.body["errors"]


def new_dataset(backend, user, cid, apps=("face_skin_metrics_2.0",), **fields) -> dict[str, Any]:
    ds = backend.create_dataset(user, cid, {"name": "study", **fields})
    for app in apps:
        backend.attach_application(user, cid, app, {"dataset_id": ds["id"]}, attach_dependencies=True)
    return ds


def split_url(url: str) -> tuple[str, str, dict[str, str]]:
    parts = urlsplit(url)
    bucket, key = unquote(parts.path).removeprefix("/gcs/").split("/", 1)
    return bucket, key, dict(parse_qsl(parts.query))


async def upload(backend: HautBackend, url: str, data: bytes) -> dict[str, str]:
    bucket, key, query = split_url(url)
    backend.check_upload(bucket, key, query, "application/octet-stream", "1,31457280")
    return await backend.put_object(key, data)


def results_path(ds, subject, image) -> tuple[str, str, str, str]:
    return ds["id"], subject["id"], image["image_batch_id"], image["id"]


# --- auth ---------------------------------------------------------------------------------------------------------
def test_login_token_lives_60_virtual_minutes(backend, clock):
    out = backend.login({"username": "DEMO@haut-emulator.local", "password": "demo-password"})
    assert out["token_access"] == out["access_token"] and out["refresh_token"]
    assert out["company_id"] == DEFAULT_CONFIG["companies"][0]["id"] and out["profile"]["feature_flags"] == {}
    clock.advance(3599)
    assert backend.authenticate(f"Bearer {out['access_token']}").id == 1
    clock.advance(1)
    with pytest.raises(ServiceError) as exc:
        backend.authenticate(f"Bearer {out['access_token']}")
    assert exc.value.status == 401 and errors_of(exc)[0]["detail"] == "Token has expired."
    fresh = backend.refresh({"refresh_token": out["refresh_token"]})
    assert (
        backend.authenticate(None, f"Bearer {fresh['access_token']}").id == 1
    )  # doc's "Authentication:" header
    with pytest.raises(ServiceError) as exc:
        backend.authenticate(f"Bearer {out['refresh_token']}")  # a refresh token is not an access token
    assert exc.value.status == 401


@pytest.mark.parametrize(
    ("body", "status", "code", "attr"),
    [
        ({}, 400, "required", "username"),
        ({"username": "demo@haut-emulator.local", "password": ""}, 400, "blank", "password"),
        ({"username": "demo", "password": "demo-password"}, 400, "invalid", "username"),
        ({"username": "demo@haut-emulator.local", "password": "wrong"}, 401, "authentication_failed", None),
        ({"username": "nobody@x.io", "password": "demo-password"}, 401, "authentication_failed", None),
        ({"username": "mfa@haut-emulator.local", "password": "demo-password"}, 400, "mfa_enabled", None),
    ],
)
def test_login_rejections(backend, body, status, code, attr):
    with pytest.raises(ServiceError) as exc:
        backend.login(body)
    assert exc.value.status == status
    assert exc.value.body["type"] == ("validation_error" if status == 400 else "client_error")
    assert errors_of(exc)[0]["code"] == code and errors_of(exc)[0]["attr"] == attr


def test_login_rate_limit_mirrors_firebase_blocking(clock):
    backend = make_backend(clock, login_rate_limit_per_minute=3)
    body = {"username": "demo@haut-emulator.local", "password": "demo-password"}
    for _ in range(3):
        backend.login(body)
        clock.advance(10)
    with pytest.raises(ServiceError) as exc:
        backend.login(body)
    assert exc.value.status == 429 and errors_of(exc)[0]["code"] == "throttled"
    # The first attempt leaves the window 30 virtual seconds from now (Retry-After itself is in real seconds).
    assert errors_of(exc)[0]["detail"] == "Request was throttled. Expected available in 30 seconds."
    assert "Retry-After" in exc.value.headers
    clock.advance(30)
    assert backend.login(body)["access_token"]


def test_missing_and_malformed_auth(backend):
    for header, code in (
        (None, "not_authenticated"),
        ("Token abc", "authentication_failed"),
        ("Bearer nope", "authentication_failed"),
    ):
        with pytest.raises(ServiceError) as exc:
            backend.authenticate(header)
        assert exc.value.status == 401 and errors_of(exc)[0]["code"] == code


def test_private_token_create_list_revoke_expire(backend, user, clock):
    created = backend.create_private_token(user, {"name": "ci", "expiration_time": "2023-11-14T23:00:00Z"})
    assert set(created) == {"id", "name", "expiration_time", "data"} and created["data"].startswith(
        "haut-pt-"
    )
    listed = backend.list_private_tokens(user, {}, "http://emu.test/api/v1/auth/private_tokens/")
    assert listed["count"] == 2 and all("data" not in t and "token" not in t for t in listed["results"])
    assert backend.authenticate(f"Bearer {created['data']}").id == 1
    clock.advance(100)  # 2023-11-14T22:13:20Z + 100 s is still before 23:00
    assert backend.authenticate(f"Bearer {created['data']}").id == 1
    clock.advance(3600)
    with pytest.raises(ServiceError) as exc:
        backend.authenticate(f"Bearer {created['data']}")
    assert exc.value.status == 401
    backend.revoke_private_token(user, "1")
    with pytest.raises(ServiceError) as exc:
        backend.authenticate(TOKEN)
    assert exc.value.status == 401 and errors_of(exc)[0]["detail"] == "Invalid token."
    with pytest.raises(ServiceError) as exc:
        backend.revoke_private_token(user, "1")
    assert exc.value.status == 404


@pytest.mark.parametrize(
    ("body", "attr", "code"),
    [
        ({"expiration_time": "2030-01-01T00:00:00Z"}, "name", "required"),
        ({"name": "x"}, "expiration_time", "required"),
        ({"name": "x", "expiration_time": "tomorrow"}, "expiration_time", "invalid"),
        ({"name": "x", "expiration_time": "2001-01-01T00:00:00Z"}, "expiration_time", "invalid"),
    ],
)
def test_private_token_rejections(backend, user, body, attr, code):
    with pytest.raises(ServiceError) as exc:
        backend.create_private_token(user, body)
    assert exc.value.status == 400 and errors_of(exc)[0]["attr"] == attr and errors_of(exc)[0]["code"] == code


# --- datasets, scoping, pagination ----------------------------------------------------------------------------------
def test_dataset_validation_reports_every_field(backend, user, cid):
    with pytest.raises(ServiceError) as exc:
        backend.create_dataset(
            user, cid, {"name": "x" * 513, "image_type_id": 99, "expire_images_after_days": 366}
        )
    assert {(e["attr"], e["code"]) for e in errors_of(exc)} == {
        ("name", "max_length"),
        ("image_type_id", "does_not_exist"),
        ("expire_images_after_days", "max_value"),
    }


def test_company_scoping(clock, cid):
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["companies"].append({"id": OTHER_COMPANY, "name": "Other"})
    config["users"].append({"id": 3, "email": "other@x.io", "password": "pw", "company_ids": [OTHER_COMPANY]})
    config["private_tokens"].append(
        {
            "id": 2,
            "user_id": 3,
            "name": "o",
            "token": "other-token",
            "expiration_time": "2099-01-01T00:00:00Z",
        }
    )
    backend = HautBackend(config, clock, "http://emu.test")
    demo, other = backend.authenticate(TOKEN), backend.authenticate("Bearer other-token")
    ds = backend.create_dataset(demo, cid, {"name": "mine"})
    with pytest.raises(ServiceError) as exc:
        backend.list_datasets(other, cid, {}, "http://emu.test/x/")
    assert exc.value.status == 403 and errors_of(exc)[0]["code"] == "permission_denied"
    with pytest.raises(ServiceError) as exc:
        backend.get_dataset(other, OTHER_COMPANY, ds["id"])  # someone else's id under your own company
    assert exc.value.status == 404
    with pytest.raises(ServiceError) as exc:
        backend.get_dataset(demo, "not-a-uuid", ds["id"])
    assert exc.value.status == 404


def test_pagination_search_and_ordering(backend, user, cid):
    for i in range(25):
        backend.create_dataset(user, cid, {"name": f"study-{i:02d}"})
    url = f"http://emu.test/api/v1/companies/{cid}/datasets/?page_size=10"
    first = backend.list_datasets(user, cid, {"page_size": "10"}, url)
    assert first["count"] == 25 and len(first["results"]) == 10 and first["previous"] is None
    assert first["next"] == f"http://emu.test/api/v1/companies/{cid}/datasets/?page_size=10&page=2"
    third = backend.list_datasets(user, cid, {"page_size": "10", "page": "3"}, url + "&page=3")
    assert [d["name"] for d in third["results"]] == [f"study-{i}" for i in range(20, 25)]
    assert third["next"] is None and third["previous"].endswith("page_size=10&page=2")
    second = backend.list_datasets(user, cid, {"page_size": "10", "page": "2"}, url + "&page=2")
    assert second["previous"] == url  # DRF drops page=1 from the link
    with pytest.raises(ServiceError) as exc:
        backend.list_datasets(user, cid, {"page": "4", "page_size": "10"}, url)
    assert exc.value.status == 404 and errors_of(exc)[0]["detail"] == "Invalid page."
    found = backend.list_datasets(user, cid, {"q": "STUDY-1", "ordering": "-name"}, url)
    assert [d["name"] for d in found["results"]] == [f"study-{i}" for i in range(19, 9, -1)]


def test_attach_requires_dependencies(backend, user, cid):
    ds = backend.create_dataset(user, cid, {"name": "recs"})
    with pytest.raises(ServiceError) as exc:
        backend.attach_application(user, cid, "recommendation_engine", {"dataset_id": ds["id"]}, False)
    err = errors_of(exc)[0]
    assert exc.value.status == 400 and err["code"] == "missing_dependencies"
    assert err["extra"]["missing_application_tech_names"] == ["face_skin_metrics_2.0"]
    out = backend.attach_application(user, cid, "recommendation_engine", {"dataset_id": ds["id"]}, True)
    assert [a["tech_name"] for a in out["connected_applications"]] == [
        "face_skin_metrics_2.0",
        "recommendation_engine",
    ]
    with pytest.raises(ServiceError) as exc:
        backend.attach_application(user, cid, "no_such_app", {"dataset_id": ds["id"]}, False)
    assert exc.value.status == 404


async def test_only_enabled_algorithms_produce_results(backend, user, cid, clock):
    ds = backend.create_dataset(user, cid, {"name": "pores only"})
    body = {"dataset_id": ds["id"], "enabled_algorithms": ["selfie_v2.pores", "selfie_v2.lines"]}
    backend.attach_application(user, cid, "face_skin_metrics_2.0", body, False)
    subject = backend.create_subject(user, cid, ds["id"], {"name": "p"})
    image = backend.signed_upload_url(user, cid, subject["id"], {})
    await upload(backend, image["upload_url"]["url"], jpeg())
    backend.compute(user, cid, image["image_batch_id"], {})
    clock.advance(22)
    results = backend.image_results(user, cid, *results_path(ds, subject, image), {})
    assert [r["algorithm_family_tech_name"] for r in results] == ["selfie_v2.pores", "selfie_v2.lines"]


# --- images: state machine and results ------------------------------------------------------------------------------
async def test_image_state_machine_and_results_match_bytes(backend, user, cid, clock):
    ds = new_dataset(backend, user, cid)
    subject = backend.create_subject(user, cid, ds["id"], {"name": "alice"})
    image = backend.signed_upload_url(user, cid, subject["id"], {})
    assert image["status"] == "created" and image["upload_url"]["method"] == "PUT"
    assert image["upload_url"]["headers"] == {
        "Content-Type": "application/octet-stream",
        "X-Goog-Content-Length-Range": "1,31457280",
    }
    with pytest.raises(ServiceError) as exc:  # compute before upload
        backend.compute(user, cid, image["image_batch_id"], {})
    assert exc.value.status == 400 and errors_of(exc)[0]["code"] == "images_not_uploaded"
    data = jpeg()
    await upload(backend, image["upload_url"]["url"], data)
    state = lambda: backend.get_image(user, cid, image["id"])["status"]  # noqa: E731
    assert state() == "uploaded"
    args = results_path(ds, subject, image)
    assert backend.image_results(user, cid, *args, {}) == []
    backend.compute(user, cid, image["image_batch_id"], {})
    assert state() == "queued"
    clock.advance(2)
    assert state() == "processing"
    clock.advance(19.9)
    assert state() == "processing" and backend.image_results(user, cid, *args, {}) == []
    clock.advance(0.1)
    assert state() == "done"
    results = backend.image_results(user, cid, *args, {})
    assert len(results) == 12 and all(
        r["is_ok"] and r["application_name"] == "Face Skin Metrics 2.0" for r in results
    )
    face = {
        r["algorithm_family_tech_name"].split(".")[1]: r["result"]["area_results"][0]["main_metric"]
        for r in results
        if r["result"]["area_results"][0]["main_metric"]["widget_type"] == "bad_good_line"
    }
    for family, value in metric_scores(data).items():
        assert face[family]["value"] == value and face[family]["widget_meta"]["tag"] == band(value)
    pores = next(r for r in results if r["algorithm_family_tech_name"] == "selfie_v2.pores")
    assert [m["tech_name"] for m in pores["result"]["area_results"][0]["sub_metrics"]] == [
        "pores_number",
        "pores_density",
    ]
    only = backend.image_results(user, cid, *args, {"application_name": "face skin metrics 2.0"})
    assert len(only) == 12
    assert backend.inspect()["image_states"]["done"] == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (jpeg(200, 400), "image_resolution_too_low"),
        (b"definitely not an image", "image_not_decodable"),
        (jpeg()[:300], "image_not_decodable"),
    ],
)
async def test_bad_images_give_failed_results_not_http_errors(backend, user, cid, clock, data, problem):
    ds = new_dataset(backend, user, cid)
    subject = backend.create_subject(user, cid, ds["id"], {"name": "bob"})
    image = backend.signed_upload_url(user, cid, subject["id"], {})
    await upload(backend, image["upload_url"]["url"], data)
    backend.compute(user, cid, image["image_batch_id"], None)
    clock.advance(22)
    record = backend.get_image(user, cid, image["id"])
    assert (
        record["status"] == "failed"
        and record["problems"] == [problem]
        and record["quality_issues"] == [problem]
    )
    results = backend.image_results(user, cid, *results_path(ds, subject, image), {})
    assert results and all(not r["is_ok"] and r["result"]["error"]["code"] == problem for r in results)


def test_metrics_are_deterministic_and_banded():
    a, b = jpeg(color=(1, 2, 3)), jpeg(color=(200, 100, 50))
    assert metric_scores(a) == metric_scores(bytes(a)) and metric_scores(a) != metric_scores(b)
    assert all(0 <= v <= 100 for v in metric_scores(a).values())
    assert [band(x) for x in (100, 90.5, 90, 80, 75, 70, 51, 50, 31, 30, 0)] == [
        "Excellent",
        "Excellent",
        "Great",
        "Good",
        "Good",
        "Average",
        "Average",
        "Poor",
        "Poor",
        "Bad",
        "Bad",
    ]
    analysis = analyse_image(a)
    assert analysis.ok and (analysis.width, analysis.height, analysis.format) == (320, 320, "JPEG")
    assert v3_parameters(analysis.sha256)["breakouts"]["score"] == metric_scores(a)["acne"]


async def test_compute_needs_an_application_and_multi_side_batches_share_the_id(backend, user, cid, clock):
    ds = new_dataset(backend, user, cid, apps=())
    subject = backend.create_subject(user, cid, ds["id"], {"name": "carol"})
    front = backend.signed_upload_url(user, cid, subject["id"], {})
    right = backend.signed_upload_url(
        user, cid, subject["id"], {"batch_id": front["image_batch_id"], "side_id": 2}
    )
    assert right["image_batch_id"] == front["image_batch_id"] and right["side_tech_name"] == "right"
    await upload(backend, front["upload_url"]["url"], jpeg())
    with pytest.raises(ServiceError) as exc:
        backend.compute(user, cid, front["image_batch_id"], {})
    assert errors_of(exc)[0]["extra"]["image_ids"] == [right["id"]]
    await upload(backend, right["upload_url"]["url"], jpeg(color=(9, 9, 9)))
    with pytest.raises(ServiceError) as exc:
        backend.compute(user, cid, front["image_batch_id"], {})
    assert errors_of(exc)[0]["code"] == "no_applications"
    with pytest.raises(ServiceError) as exc:
        backend.signed_upload_url(user, cid, subject["id"], {"side_id": 7})
    assert errors_of(exc)[0]["attr"] == "side_id"


async def test_v3_flow_and_result_url_expiry(backend, user, cid, clock):
    ds = new_dataset(backend, user, cid, apps=("face_skin_metrics_3.0",))
    subject = backend.create_subject(user, cid, ds["id"], {"name": "dana"})
    out = backend.v3_upload(user, cid, subject["id"], {"front": "front.jpg", "left": "left.jpg"})
    assert set(out) == {"front", "left", "image_batch_id"} and out["front"]["headers"]["Host"] == "emu.test"
    data = jpeg()
    await upload(backend, out["front"]["url"], data)
    await upload(backend, out["left"]["url"], jpeg(color=(5, 6, 7)))
    batch = out["image_batch_id"]
    assert backend.v3_results(user, cid, batch)["face_skin_metrics_3"]["all_algorithms_calculated"] is False
    backend.compute(user, cid, batch, {}, v3=True)
    clock.advance(21)
    assert backend.v3_results(user, cid, batch)["face_skin_metrics_3"]["all_algorithms_calculated"] is False
    clock.advance(1)
    fs3 = backend.v3_results(user, cid, batch)["face_skin_metrics_3"]
    assert (
        fs3["all_algorithms_calculated"] is True
        and fs3["parameters"]["lines"]["score"] == metric_scores(data)["lines"]
    )
    url = fs3["predicted_images"]["front"]["original"]
    assert "X-Goog-Expires=3600" in url
    assert backend.get_object(*split_url(url))[0] == data
    clock.advance(3601)
    with pytest.raises(GcsError) as exc:
        backend.get_object(*split_url(url))
    assert (exc.value.status, exc.value.code) == (400, "ExpiredToken")


async def test_v3_compute_requires_fsa3(backend, user, cid):
    ds = new_dataset(backend, user, cid)
    subject = backend.create_subject(user, cid, ds["id"], {"name": "erin"})
    out = backend.v3_upload(user, cid, subject["id"], {"front": "f.jpg"})
    await upload(backend, out["front"]["url"], jpeg())
    with pytest.raises(ServiceError) as exc:
        backend.compute(user, cid, out["image_batch_id"], {}, v3=True)
    assert errors_of(exc)[0]["code"] == "application_not_connected"
    assert backend.v3_results(user, cid, out["image_batch_id"]) == {}
    with pytest.raises(ServiceError) as exc:
        backend.v3_upload(user, cid, subject["id"], {})
    assert errors_of(exc)[0]["attr"] == "non_field_errors"


def test_signed_upload_url_checks(backend, user, cid, clock):
    ds = new_dataset(backend, user, cid)
    subject = backend.create_subject(user, cid, ds["id"], {"name": "frank"})
    url = backend.signed_upload_url(user, cid, subject["id"], {})["upload_url"]["url"]
    bucket, key, query = split_url(url)
    for ctype, length_range in (
        ("image/jpeg", "1,31457280"),
        ("application/octet-stream", None),
        ("application/octet-stream", "1,10"),
    ):
        with pytest.raises(GcsError) as exc:
            backend.check_upload(bucket, key, query, ctype, length_range)
        assert (exc.value.status, exc.value.code) == (403, "SignatureDoesNotMatch")
    with pytest.raises(GcsError) as exc:
        backend.check_upload(bucket, key + "x", query, "application/octet-stream", "1,31457280")
    assert exc.value.status == 403
    assert backend.check_upload(bucket, key, query, "application/octet-stream", "1, 31457280") == (
        1,
        31_457_280,
    )
    clock.advance(3601)
    with pytest.raises(GcsError) as exc:
        backend.check_upload(bucket, key, query, "application/octet-stream", "1,31457280")
    assert (exc.value.status, exc.value.code) == (400, "ExpiredToken")


# --- subjects: lifecycle and GDPR ---------------------------------------------------------------------------------
async def test_deleted_subject_rejects_uploads_and_gdpr_photo_delete_keeps_results(backend, user, cid, clock):
    ds = new_dataset(backend, user, cid)
    subject = backend.create_subject(
        user,
        cid,
        ds["id"],
        {"name": "gina", "biological_sex": "female", "birth_date": "1990-05-01", "meta": {"k": 1}},
    )
    assert subject["biological_sex"]["tech_name"] == "female"
    image = backend.signed_upload_url(user, cid, subject["id"], {})
    data = jpeg()
    await upload(backend, image["upload_url"]["url"], data)
    backend.compute(user, cid, image["image_batch_id"], {})
    clock.advance(30)
    original = backend.get_image(user, cid, image["id"])["urls"]["original"]
    assert backend.get_object(*split_url(original))[0] == data
    backend.delete_subject_photos(user, cid, subject["id"])
    record = backend.get_image(user, cid, image["id"])
    assert record["urls"]["original"] is None and record["status"] == "done"
    assert len(backend.image_results(user, cid, *results_path(ds, subject, image), {})) == 12
    with pytest.raises(GcsError) as exc:
        backend.get_object(*split_url(original))
    assert (exc.value.status, exc.value.code) == (404, "NoSuchKey")
    cleared = backend.clear_subject_metadata(user, cid, subject["id"])
    assert (cleared["name"], cleared["birth_date"], cleared["biological_sex"], cleared["meta"]) == (
        "",
        None,
        None,
        None,
    )
    backend.delete_subject(user, cid, ds["id"], subject["id"])
    for call in (
        lambda: backend.signed_upload_url(user, cid, subject["id"], {}),
        lambda: backend.v3_upload(user, cid, subject["id"], {"front": "f.jpg"}),
        lambda: backend.compute(user, cid, image["image_batch_id"], {}),
    ):
        with pytest.raises(ServiceError) as exc:
            call()
        assert exc.value.status == 404
    assert backend.inspect()["stored_bytes"] == 0


def test_duplicate_subject_names_are_allowed_but_counted(backend, user, cid):
    ds = new_dataset(backend, user, cid)
    a = backend.create_subject(user, cid, ds["id"], {"name": "same"})
    b = backend.create_subject(user, cid, ds["id"], {"name": "same"})
    assert a["id"] != b["id"]
    assert backend.inspect()["duplicate_subject_names"] == 1
    backend.bulk_delete_subjects(user, cid, ds["id"], {"ids": [a["id"], b["id"]]})
    assert backend.list_subjects(user, cid, ds["id"], {}, "http://emu.test/s/")["count"] == 0
    with pytest.raises(ServiceError) as exc:
        backend.bulk_delete_subjects(user, cid, ds["id"], {"ids": [a["id"]]})
    assert exc.value.status == 400 and errors_of(exc)[0]["extra"]["missing_ids"] == [a["id"]]


async def test_clean_as_soon_as_ready_and_expiry_drop_bytes(backend, user, cid, clock):
    clean = new_dataset(backend, user, cid, clean_images_as_soon_as_ready=True)
    expiring = new_dataset(backend, user, cid, expire_images_after_days=1, expire_metadata_after_days=2)
    for ds in (clean, expiring):
        subject = backend.create_subject(user, cid, ds["id"], {"name": "h", "meta": {"a": 1}})
        image = backend.signed_upload_url(user, cid, subject["id"], {})
        await upload(backend, image["upload_url"]["url"], jpeg())
        backend.compute(user, cid, image["image_batch_id"], {})
    assert backend.inspect()["stored_objects"] == 2
    clock.advance(22)
    backend.authenticate(TOKEN)  # any request runs the due clean-ups
    assert backend.inspect()["stored_objects"] == 1 and backend.inspect()["bytes_dropped"] == {"clean": 1}
    clock.advance(86_400)
    backend.authenticate(TOKEN)
    assert backend.inspect()["stored_objects"] == 0 and backend.inspect()["bytes_dropped"]["expired"] == 1
    clock.advance(86_400)
    subject = backend.list_subjects(user, cid, expiring["id"], {}, "http://emu.test/s/")["results"][0]
    assert subject["meta"] is None and subject["name"] == ""


def test_blob_store_is_bounded():
    store = BlobStore(max_bytes=10)
    store.put("a", b"1234")
    store.put("b", b"5678")
    store.put("c", b"90ab")  # evicts "a"
    assert "a" not in store and store.get("c") == b"90ab" and store.total == 8 and store.evicted == 1
    store.put("big", b"x" * 11)
    assert "big" not in store and store.total == 8


def test_webhook_validation_and_overwrite(backend, user, cid):
    ds = new_dataset(backend, user, cid)
    with pytest.raises(ServiceError) as exc:
        backend.set_webhook(
            user,
            cid,
            ds["id"],
            {"url": "ftp://x", "authorization": "token", "method": "put", "authorization_key": "k" * 129},
        )
    assert {e["attr"] for e in errors_of(exc)} == {
        "url",
        "authorization",
        "method",
        "authorization_key",
        "authorization_value",
    }
    body = {
        "url": "https://hooks.example/haut",
        "authorization": "bearer",
        "authorization_key": "Authorization",
        "authorization_value": "Bearer s3cret",
        "method": "post",
    }
    first = backend.set_webhook(user, cid, ds["id"], body)
    second = backend.set_webhook(user, cid, ds["id"], {**body, "url": "https://hooks.example/v2"})
    assert first["secret_key"] == second["secret_key"] and second["url"].endswith("/v2")
    assert backend.inspect()["webhooks"] == 1
