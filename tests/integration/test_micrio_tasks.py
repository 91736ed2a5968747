"""The Micrio tasks (``tasks/micrio.py``) against the Micrio emulator over real HTTP, every one of them.

Originals are S3 emulator objects handed to Micrio as presigned GET URLs, as the migration does.
"""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from blocks import MicrioCredentials
from demo.setup import s3_client
from emulators.launcher import running_emulators
from tasks.micrio import (
    add_micrio_batch,
    add_micrio_images,
    await_micrio_progress,
    create_micrio_folder,
    get_micrio_folder_status,
    get_micrio_image_status,
)
from tests.conftest import TEST_TIME_SCALE
from tests.images import jpeg_bytes

pytestmark = pytest.mark.integration
FAST = {"poll_initial": 0.02, "poll_max": 0.1}  # real seconds between folder/status rounds


@pytest.fixture(scope="module")
def emu():
    with running_emulators(only=["micrio", "s3"], time_scale=TEST_TIME_SCALE) as running:
        yield running


@pytest.fixture(scope="module")
def urls(emu) -> dict[str, str]:
    """Presigned GET URLs of three JPEGs (``a.jpg`` ...) and a text file (``notes.txt``)."""
    s3, bucket = s3_client(emu), emu["s3"].credentials["bucket"]
    bodies = {"a.jpg": jpeg_bytes(320, 240), "b.jpg": jpeg_bytes(200, 100), "c.jpg": jpeg_bytes(64, 48)}
    for key, body in {**bodies, "notes.txt": b"not an image"}.items():
        s3.put_object(Bucket=bucket, Key=f"tasks/{key}", Body=body)
    return {
        key: s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": f"tasks/{key}"})
        for key in [*bodies, "notes.txt"]
    }


@pytest.fixture()
def micrio(emu):
    """The emulator's Micrio service, reset; and a block for its demo account."""
    svc = emu["micrio"]
    svc.reset()
    c = svc.credentials
    block = MicrioCredentials(
        organisation_id=c["organisation_id"], api_key=SecretStr(c["api_key"]), base_url=svc.url
    )
    return svc, block, c["root_folder_id"]


async def test_single_call_tasks(micrio, urls):
    svc, block, root = micrio
    folder = await create_micrio_folder.fn(block, root, "From tasks", type="space")
    added = await add_micrio_images.fn(block, folder.id, [{"sourceUrl": urls["a.jpg"]}])
    report = await get_micrio_image_status.fn(block, [added[0].id, "nobody"])
    progress = await get_micrio_folder_status.fn(block, folder.id)
    assert folder.type == "space" and added[0].name == "a.jpg"
    assert list(report.statuses) == [added[0].id] and report.missing == ["nobody"]
    assert progress.num_total == 1
    with pytest.raises(ValueError, match="image_ids: has 101 ids"):
        await get_micrio_image_status.fn(block, [f"id{n}" for n in range(101)])


async def test_add_batch_reports_every_source_and_await_progress_follows_them_to_the_end(micrio, urls):
    svc, block, root = micrio
    sources = [
        {"sourceUrl": urls["a.jpg"], "name": "A-1"},
        {"sourceUrl": "ftp://example.org/x.jpg"},
        urls["notes.txt"],
        {"sourceUrl": urls["b.jpg"], "name": "B-1"},
    ]
    outcomes = await add_micrio_batch.fn(block, root, sources)
    assert [(o.index, o.status, o.name) for o in outcomes] == [
        (0, "added", "A-1"),
        (1, "rejected", None),
        (2, "added", "notes.txt"),
        (3, "added", "B-1"),
    ]
    assert "images[1].sourceUrl: is not an http(s) URL" in outcomes[1].error
    ids = [o.image_id for o in outcomes if o.image_id]

    report = await await_micrio_progress.fn(
        block, root, [*ids, "nobody"], min_finished=4, max_wait=30, **FAST
    )
    assert report.ids_with("ready") == [ids[0], ids[2]] and report.statuses[ids[1]].error == "invalidImage"
    assert report.missing == ["nobody"] and not report.pending
    assert (report.statuses[ids[2]].width, report.statuses[ids[2]].height) == (200, 100)
    requests = svc.received()["requests"]
    assert requests["POST /v2/image/status"] == 1  # only the finished ones, once, in one call


async def test_await_progress_returns_at_most_max_finished_and_the_rest_on_the_next_call(micrio, urls):
    svc, block, root = micrio
    added = await add_micrio_images.fn(block, root, [urls[k] for k in ("a.jpg", "b.jpg", "c.jpg")])
    ids = [a.id for a in added]

    first = await await_micrio_progress.fn(
        block, root, ids, min_finished=3, max_wait=30, max_finished=2, **FAST
    )
    rest = [i for i in ids if i not in first.statuses]
    second = await await_micrio_progress.fn(block, root, rest, max_wait=30, max_finished=2, **FAST)
    assert list(first.statuses) == ids[:2] and list(second.statuses) == ids[2:]
    assert {s.status for s in [*first.statuses.values(), *second.statuses.values()]} == {"ready"}


async def test_await_progress_returns_what_finished_when_max_wait_is_over(micrio, urls):
    svc, block, root = micrio
    slow = {"downloading": 0.5, "processing": 1.0, "tiling": 1000.0, "storing": 0.5}  # 10 s real tiling
    httpx.post(f"{svc.url}/_emulator/config", json={"stage_durations": slow}).raise_for_status()
    added = await add_micrio_images.fn(block, root, [urls["c.jpg"]])

    report = await await_micrio_progress.fn(block, root, [added[0].id], max_wait=0.2, **FAST)
    assert report.statuses == {} and report.missing == []  # nothing finished: nothing asked with image/status
    assert svc.received()["requests"].get("POST /v2/image/status", 0) == 0


async def test_add_batch_separates_lost_answers_from_refused_calls(micrio, urls):
    svc, block, root = micrio
    svc.faults(drop_rate=1.0, drop_after_processing=True, path_pattern="^/v2/images/add$")
    lost = await add_micrio_batch.fn(block, root, [urls["b.jpg"]])
    svc.faults(error_rate=1.0, path_pattern="^/v2/images/add$")
    refused = await add_micrio_batch.fn(block.model_copy(update={"max_attempts": 2}), root, [urls["b.jpg"]])
    assert [o.status for o in lost] == ["unknown"] and "may or may not have taken effect" in lost[0].error
    assert [o.status for o in refused] == ["failed"] and "HTTP 503" in refused[0].error
    assert svc.received()["faults_injected"]["503"] == 2  # max_attempts=2: retried once, then reported
    assert [o.status for o in await add_micrio_batch.fn(block, "nope", [urls["a.jpg"]])] == ["rejected"]
