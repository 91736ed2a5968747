"""MicrioClient and its block against the Micrio emulator over real HTTP (the tasks: test_micrio_tasks.py).

The originals live in the S3 emulator and are handed to Micrio as presigned GET URLs, as a migration from a
bucket would do; the Micrio emulator really fetches them and reads their dimensions.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import boto3
import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from blocks import MicrioCredentials
from clients.errors import ApiError, AuthError, NotFoundError, OutcomeUnknownError
from clients.micrio import FINAL_ERRORS, ImageStatusReport, MicrioClient
from clients.transport import HttpSettings, RetryPolicy
from emulators.launcher import running_emulators
from tests.conftest import TEST_TIME_SCALE

pytestmark = pytest.mark.integration

PHOTOS = {
    "photos/harbour.jpg": (640, 480),
    "photos/tower.jpg": (300, 500),
    "photos/wide scan.jpg": (1200, 300),
}
UNREACHABLE = "http://127.0.0.1:9/originals/{n}.jpg"  # discard port: connection refused → originalNotFound


def jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def emu():
    with running_emulators(only=["micrio", "s3"], time_scale=TEST_TIME_SCALE) as running:
        yield running


@pytest.fixture(scope="module")
def svc(emu):
    return emu["micrio"]


@pytest.fixture(scope="module")
def urls(emu) -> dict[str, str]:
    """Presigned GET URLs: the photos, a text file and a key that does not exist."""
    c = emu["s3"].credentials
    s3 = boto3.client(
        "s3",
        endpoint_url=emu["s3"].url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )
    for key, size in PHOTOS.items():
        s3.put_object(Bucket=c["bucket"], Key=key, Body=jpeg(size), ContentType="image/jpeg")
    s3.put_object(Bucket=c["bucket"], Key="docs/readme.txt", Body=b"not an image", ContentType="text/plain")
    keys = [*PHOTOS, "docs/readme.txt", "photos/missing.jpg"]
    return {
        key: s3.generate_presigned_url(
            "get_object", Params={"Bucket": c["bucket"], "Key": key}, ExpiresIn=3600
        )
        for key in keys
    }


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()


def creds(svc, **kw) -> MicrioCredentials:
    c = svc.credentials
    return MicrioCredentials(
        organisation_id=c["organisation_id"], api_key=SecretStr(c["api_key"]), base_url=svc.url, **kw
    )


def root(svc) -> str:
    return svc.credentials["root_folder_id"]


def fast_retry_client(svc) -> MicrioClient:
    """A client whose backoff is scaled like the emulator's clock (0.5 s base delay → 5 ms)."""
    c = svc.credentials
    retry = RetryPolicy(base_delay=0.5 * TEST_TIME_SCALE, max_delay=20 * TEST_TIME_SCALE)
    return MicrioClient(c["organisation_id"], c["api_key"], svc.url, settings=HttpSettings(retry=retry))


async def wait_terminal(client: MicrioClient, ids: list[str], timeout: float = 30.0) -> ImageStatusReport:
    """Poll until every id is ready or errored (the emulator runs 100x faster than Micrio)."""
    deadline = time.monotonic() + timeout
    while True:
        report = await client.image_status(ids)
        if report.all_terminal and not report.missing:
            return report
        assert time.monotonic() < deadline, f"still processing: {report.counts()}"
        await asyncio.sleep(0.05)


async def test_added_images_become_ready_with_real_dimensions_and_a_thumbnail(svc, urls):
    sources = [{"sourceUrl": urls[key], "name": f"ID-{n}"} for n, key in enumerate(PHOTOS)]
    async with creds(svc).get_client() as client:
        added = await client.add_images(root(svc), sources)
        assert [(a.name, a.status) for a in added] == [
            ("ID-0", "queued"),
            ("ID-1", "queued"),
            ("ID-2", "queued"),
        ]
        report = await wait_terminal(client, [a.id for a in added])
    assert list(report.statuses) == [a.id for a in added]
    for image, size in zip(report.statuses.values(), PHOTOS.values(), strict=True):
        assert image.status == "ready" and image.error is None
        assert (image.width, image.height) == size
    thumb = httpx.get(report.statuses[added[2].id].thumbnail, timeout=10)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (256, 64)  # 1200x300 scaled to a 256 px long side
    assert svc.received()["accepted"] == {"image": 3}


async def test_a_missing_original_and_a_non_image_end_in_final_errors(svc, urls):
    async with creds(svc).get_client() as client:
        added = await client.add_images(root(svc), [urls["photos/missing.jpg"], urls["docs/readme.txt"]])
        report = await wait_terminal(client, [a.id for a in added])
    # Without a name Micrio uses the URL's file name (DOC); the presigned query is not part of it.
    assert [a.name for a in added] == ["missing.jpg", "readme.txt"]
    errors = [(s.status, s.error) for s in report.statuses.values()]
    assert errors == [("error", "originalNotFound"), ("error", "invalidImage")]
    assert all(s.error in FINAL_ERRORS and not s.transient_error for s in report.statuses.values())
    assert report.statuses[added[1].id].thumbnail is None


async def test_create_folder_then_follow_it_with_folder_status(svc, urls):
    async with creds(svc).get_client() as client:
        album = await client.create_folder(root(svc), type="album")
        named = await client.create_folder(album.id, "Harbour series")
        added = await client.add_images(named.id, [urls["photos/harbour.jpg"], urls["docs/readme.txt"]])
        await wait_terminal(client, [a.id for a in added])
        status = await client.folder_status(named.id)
        empty = await client.folder_status(album.id)
        with pytest.raises(NotFoundError, match=r"HTTP 404: Folder 'zzzzzz' not found"):
            await client.create_folder("zzzzzz", "orphan")
    assert len(album.id) == 6 and (album.name, album.type) == ("album", "album")
    assert (named.parent_id, named.name, named.type) == (album.id, "Harbour series", "folder")
    assert (status.num_total, status.num_complete, status.processing_ids) == (2, 1, [])
    assert status.errored_ids == [added[1].id] and status.finished
    assert (empty.num_total, empty.num_complete) == (0, 0)


async def test_more_than_100_ids_are_polled_in_calls_of_at_most_100(svc):
    sources = [UNREACHABLE.format(n=n) for n in range(150)]
    async with creds(svc).get_client() as client:
        added = await client.add_images(root(svc), sources)
        ids = [a.id for a in added]
        report = await client.image_status([*ids, "nobody", ids[0]])
    assert list(report.statuses) == ids and report.missing == ["nobody"]
    assert svc.received()["requests"]["POST /v2/image/status"] == 2  # 100 + 51


async def test_a_fail_rule_gives_a_transient_upload_error_and_adding_again_succeeds(svc, urls):
    rule = {"match": "^flaky-", "error": "uploadError", "times": 1}
    assert svc.control("POST", "config", json={"fail_rules": [rule]})["fail_rules"] == [rule]
    source = {"sourceUrl": urls["photos/tower.jpg"], "name": "flaky-tower"}
    async with creds(svc).get_client() as client:
        (first,) = await client.add_images(root(svc), [source])
        failed = (await wait_terminal(client, [first.id])).statuses[first.id]
        (second,) = await client.add_images(root(svc), [source])
        retried = (await wait_terminal(client, [second.id])).statuses[second.id]
    assert (failed.status, failed.error, failed.transient_error) == ("error", "uploadError", True)
    assert (retried.status, retried.width, retried.height) == ("ready", 300, 500)


async def test_status_calls_are_retried_through_503_and_429(svc):
    async with fast_retry_client(svc) as client:
        added = await client.add_images(root(svc), [UNREACHABLE.format(n=n) for n in range(5)])
        ids = [a.id for a in added]
        svc.faults(error_rate=0.5, seed=7, path_pattern="^/v2/(image|folder)/status$")
        reports = [await client.image_status(ids) for _ in range(6)]
        folder = await client.folder_status(root(svc))
        svc.faults(burst_429=2, retry_after=10, path_pattern="^/v2/image/status$")
        last = await client.image_status(ids)
    assert all(list(r.statuses) == ids for r in [*reports, last]) and folder.num_total == 5
    faults = svc.received()["faults_injected"]
    assert faults["503"] >= 1 and faults["429"] == 2


async def test_a_dropped_answer_to_images_add_is_unknown_and_never_retried(svc, urls):
    svc.faults(drop_rate=1.0, drop_after_processing=True, path_pattern="^/v2/images/add$")
    async with creds(svc).get_client() as client:
        with pytest.raises(OutcomeUnknownError, match="not retried"):
            await client.add_images(root(svc), [urls["photos/harbour.jpg"], urls["photos/tower.jpg"]])
        folder = await client.folder_status(root(svc))
    got = svc.received()
    assert got["accepted"] == {"image": 2} and got["duplicates"] == {}
    assert got["faults_injected"]["drop_after"] == 1
    assert folder.num_total == 2  # they were added: a journal-keeping flow reconciles instead of re-adding


async def test_the_emulators_own_cap_comes_back_as_its_message(svc):
    async with creds(svc, max_images_per_add=2000).get_client() as client:
        with pytest.raises(ApiError) as exc:
            await client.add_images(root(svc), [UNREACHABLE.format(n=n) for n in range(1001)])
    assert exc.value.status == 400
    assert (
        str(exc.value) == "micrio add_images: HTTP 400: images has 1001 entries; the maximum per call is 1000"
    )


async def test_a_wrong_api_key_is_an_auth_error_without_the_key(svc, caplog):
    wrong = str(uuid.uuid4())
    bad = creds(svc).model_copy(update={"api_key": SecretStr(wrong)})
    async with bad.get_client() as client:
        with pytest.raises(AuthError) as exc:
            await client.folder_status(root(svc))
    assert (
        exc.value.status == 401
        and str(exc.value) == "micrio folder_status: HTTP 401: Invalid organisationId or apiKey"
    )
    assert wrong not in caplog.text and svc.credentials["api_key"] not in caplog.text
