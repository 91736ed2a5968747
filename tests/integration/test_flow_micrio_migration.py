"""The Micrio migration flow against the Micrio and S3 emulators, with a real Prefect API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pandas as pd
import pytest
import skimage
from prefect.settings import PREFECT_API_URL
from prefect_aws import S3Bucket
from pydantic import SecretStr

from blocks import MicrioCredentials
from demo.setup import emulator_aws_credentials
from emulators.launcher import running_emulators
from flows.micrio_migration import migrate_to_micrio
from tasks.journal import Journal
from tasks.run_state import IncompleteRun
from tests.conftest import TEST_TIME_SCALE
from tests.images import jpeg_bytes
from tests.logs import Collect

pytestmark = pytest.mark.integration
FAST_POLL = {"polling": {"initial_seconds": 0.05, "max_seconds": 0.2}}
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="module")
def emu():
    with running_emulators(only=["micrio", "s3"], time_scale=TEST_TIME_SCALE) as emu:
        yield emu


@pytest.fixture(scope="module")
def s3(emu):
    c = emu["s3"].credentials
    return boto3.client(
        "s3",
        endpoint_url=emu["s3"].url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )


@pytest.fixture(scope="module")
def blocks_saved(emu, prefect_harness):
    m = emu["micrio"].credentials
    MicrioCredentials(
        organisation_id=m["organisation_id"],
        api_key=SecretStr(m["api_key"]),
        base_url=emu["micrio"].url,
        max_attempts=4,
    ).save("micrio-test", overwrite=True)
    c = emu["s3"].credentials
    creds = emulator_aws_credentials(emu["s3"])
    S3Bucket(bucket_name=c["bucket"], credentials=creds).save("s3-test", overwrite=True)
    return {"micrio_block": "micrio-test", "s3_bucket_block": "s3-test"}


@pytest.fixture(autouse=True)
def _reset(emu):
    emu["micrio"].reset()


def configure_micrio(emu, **config):
    httpx.post(f"{emu['micrio'].url}/_emulator/config", json=config).raise_for_status()


def put_images(s3, prefix: str, n: int) -> list[str]:
    keys = []
    for i in range(n):
        key = f"{prefix}/img-{i:03d}.jpg"
        s3.put_object(Bucket="demo-bucket", Key=key, Body=jpeg_bytes(64 + i, 48, text=str(i)))
        keys.append(key)
    return keys


# Real photographs shipped by scikit-image (not written here), with their sizes as Micrio will report them.
PHOTOS = {
    "astronaut.png": (512, 512),
    "coffee.png": (600, 400),
    "rocket.jpg": (640, 427),
    "chelsea.png": (451, 300),
}


def put_photos(s3, prefix: str) -> list[str]:
    keys = []
    for name in PHOTOS:
        key = f"{prefix}/{name}"
        s3.put_object(Bucket="demo-bucket", Key=key, Body=(SKIMAGE_DATA / name).read_bytes())
        keys.append(key)
    return keys


async def run(**params):
    """(final state, summary, log text); a Failed run's summary is the one its IncompleteRun carries."""
    with Collect() as collected:
        state = await migrate_to_micrio(**params, return_state=True)
    try:
        summary = await state.aresult()
    except IncompleteRun as exc:
        summary = exc.summary
    return state, summary, "\n".join(collected.messages)


def params(emu, blocks_saved, tmp_path, source, *, name="run", batch_size=4, **extra):
    return {
        "source": source,
        "target": {"folder_id": emu["micrio"].credentials["root_folder_id"]},
        "adding": {"batch_size": batch_size, **extra.pop("adding", {})},
        "outputs": {"journal": str(tmp_path / f"{name}.jsonl"), "report": str(tmp_path / f"{name}.csv")},
        **blocks_saved,
        **FAST_POLL,
        **extra,
    }


async def test_manifest_checks_s3_sources_by_content_and_reports_every_row(emu, s3, blocks_saved, tmp_path):
    keys = put_photos(s3, "manifest-run")
    s3.put_object(Bucket="demo-bucket", Key="manifest-run/readme.jpg", Body=b"not an image, named like one")
    configure_micrio(emu, fail_rules=[{"match": "coffee", "error": "uploadError", "times": 1}])
    rows = [{"source_url": f"s3://demo-bucket/{k}", "name": f"photo {i}"} for i, k in enumerate(keys)]
    rows += [
        {"source_url": "s3://demo-bucket/manifest-run/readme.jpg", "name": "readme"},  # text under .jpg
        {"source_url": "s3://demo-bucket/manifest-run/missing.jpg", "name": "missing"},  # no such key
        {"source_url": f"s3://demo-bucket/{keys[0]}", "name": "again"},  # the same row twice: skipped
        {"source_url": "ftp://example.org/x.jpg", "name": "ftp"},  # malformed
        {"source_url": "", "name": "empty"},
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    args = params(emu, blocks_saved, tmp_path, str(manifest), name="m")
    state, summary, logs = await run(**args)

    assert state.is_failed()
    assert "4 done, 1 skipped, 4 rejected" in state.message and str(tmp_path / "m.csv") in state.message
    assert (summary.total, summary.done, summary.skipped, summary.rejected, summary.failed) == (9, 4, 1, 4, 0)
    assert f"as a manifest ({manifest})" in logs
    report_text = (tmp_path / "m.csv").read_text()
    assert ",512,512," in report_text and ".0," not in report_text  # sizes are integers
    df = pd.read_csv(tmp_path / "m.csv", dtype={"width": "Int64", "height": "Int64"}).set_index("row")
    for row, (name, (width, height)) in enumerate(PHOTOS.items(), 1):
        assert (df.loc[row, "status"], df.loc[row, "width"], df.loc[row, "height"]) == (
            "ready",
            width,
            height,
        ), name
    assert df.loc[2, "attempts"] == 2  # uploadError on the first attempt, added again
    assert df.loc[5, "outcome"] == "rejected" and df.loc[5, "error"].startswith("not an image")
    assert df.loc[5, "source"] == "s3://demo-bucket/manifest-run/readme.jpg"
    assert (df.loc[6, "outcome"], df.loc[6, "error"]) == ("rejected", "no such object")
    assert df.loc[6, "source"] == "s3://demo-bucket/manifest-run/missing.jpg"
    assert (df.loc[7, "outcome"], df.loc[7, "error"]) == ("skipped", "duplicate of row 1")
    assert (
        df.loc[8, "source"] == "ftp://example.org/x.jpg"
        and "http(s) URL or an s3:// URI" in df.loc[8, "error"]
    )
    assert df.loc[9, "error"] == "source_url is empty"
    assert "X-Amz" not in report_text and "Signature" not in report_text  # no presigned URLs
    got = emu["micrio"].received()
    # only the 4 photos went to Micrio (coffee twice, after its uploadError): nothing sent that would fail there
    assert got["accepted"]["image"] == 5 and got["duplicates"] == {"image": 1}

    # Same input again: it says it resumed, everything is known from the journal, nothing is added.
    args["outputs"]["report"] = str(tmp_path / "m2.csv")
    state, again, logs = await run(**args)
    assert state.is_failed()  # the same rejected rows
    assert again.resumed == f"resumed from {tmp_path / 'm.jsonl'}: 4 already added"
    assert again.resumed in logs and again.added_this_run == 0 and again.done == 4
    assert emu["micrio"].received()["accepted"]["image"] == 5


async def test_prefix_without_slash_is_read_as_a_prefix_and_checked_by_content(
    emu, s3, blocks_saved, tmp_path
):
    put_photos(s3, "prefix-run/photos")
    put_photos(s3, "prefix-run/photos-old")  # shares the string prefix, not the folder
    s3.put_object(Bucket="demo-bucket", Key="prefix-run/photos/fake.jpg", Body=b"<html>not an image</html>")
    s3.put_object(Bucket="demo-bucket", Key="prefix-run/photos/notes.txt", Body=b"sidecar notes")
    gif = SKIMAGE_DATA / "no_time_for_that_tiny.gif"
    s3.put_object(Bucket="demo-bucket", Key="prefix-run/photos/anim.gif", Body=gif.read_bytes())
    root = emu["micrio"].credentials["root_folder_id"]
    args = params(emu, blocks_saved, tmp_path, "s3://demo-bucket/prefix-run/photos", name="p")
    args["target"] = {"parent_id": root, "name": "Archive", "type": "album"}
    args["outputs"]["report"] = str(tmp_path / "p.parquet")
    state, summary, logs = await run(**args)

    assert "as the S3 prefix s3://demo-bucket/prefix-run/photos/" in logs
    assert state.is_failed() and "4 done, 1 skipped, 2 rejected" in state.message
    assert (
        summary.folder_id != root and summary.read_as == "the S3 prefix s3://demo-bucket/prefix-run/photos/"
    )
    df = pd.read_parquet(tmp_path / "p.parquet").set_index("name")
    assert str(df["width"].dtype) == "Int64" and df.loc["rocket.jpg", "width"] == 640
    assert set(df[df.outcome == "done"].index) == set(PHOTOS)
    assert df.loc["fake.jpg", "outcome"] == "rejected"
    assert (
        df.loc["fake.jpg", "error"].startswith("not an image")
        and "named like an image" in df.loc["fake.jpg", "error"]
    )
    assert df.loc["fake.jpg", "source"] == "s3://demo-bucket/prefix-run/photos/fake.jpg"
    assert (
        df.loc["anim.gif", "outcome"] == "rejected"
        and "GIF is not a format Micrio accepts" in df.loc["anim.gif", "error"]
    )
    assert (
        df.loc["notes.txt", "outcome"] == "skipped"
        and "left out of the prefix" in df.loc["notes.txt", "error"]
    )
    assert emu["micrio"].received()["accepted"] == {"folder": 1, "image": 4}

    args["source"] = "s3://demo-bucket/prefix-run/photos/"  # the same prefix, written with the slash
    state, again, logs = await run(**args)
    assert again.folder_id == summary.folder_id and again.added_this_run == 0
    assert again.resumed == f"resumed from {tmp_path / 'p.jsonl'}: 4 already added" and again.resumed in logs
    assert emu["micrio"].received()["accepted"] == {"folder": 1, "image": 4}


async def test_an_empty_prefix_or_manifest_fails_the_run(emu, s3, blocks_saved, tmp_path):
    state, summary, _ = await run(**params(emu, blocks_saved, tmp_path, "s3://demo-bucket/nothing-here/"))
    assert state.is_failed() and "holds no objects" in state.message and summary.total == 0
    assert pd.read_csv(tmp_path / "run.csv").empty  # the report is written all the same

    manifest = tmp_path / "empty.csv"
    manifest.write_text("source_url,name\n")
    state, summary, _ = await run(**params(emu, blocks_saved, tmp_path, str(manifest), name="e"))
    assert state.is_failed() and "has no rows" in state.message and summary.problems

    s3.put_object(Bucket="demo-bucket", Key="only-notes/notes.txt", Body=b"no image here")
    state, summary, _ = await run(
        **params(emu, blocks_saved, tmp_path, "s3://demo-bucket/only-notes", name="n")
    )
    assert state.is_failed() and "holds no image" in state.message and summary.skipped == 1
    assert emu["micrio"].received()["accepted"].get("image", 0) == 0


async def test_the_same_objects_through_a_prefix_then_a_manifest_are_added_once(
    emu, s3, blocks_saved, tmp_path
):
    keys = put_photos(s3, "dedupe")
    state, first, _ = await run(
        **params(emu, blocks_saved, tmp_path, "s3://demo-bucket/dedupe/", name="prefix")
    )
    assert state.is_completed() and first.done == 4

    extra = "dedupe-more/extra.jpg"
    s3.put_object(Bucket="demo-bucket", Key=extra, Body=(SKIMAGE_DATA / "retina.jpg").read_bytes())
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        "".join(json.dumps({"source_url": f"s3://demo-bucket/{k}"}) + "\n" for k in [*keys, extra])
    )
    state, second, _ = await run(**params(emu, blocks_saved, tmp_path, str(manifest), name="manifest"))

    assert state.is_completed(), state.message  # already there is skipped by design
    assert (second.done, second.skipped, second.added_this_run) == (1, 4, 1)
    df = pd.read_csv(tmp_path / "manifest.csv").set_index("row")
    first_ids = pd.read_csv(tmp_path / "prefix.csv").set_index("source")["micrio_id"]
    for row, key in enumerate(keys, 1):
        assert df.loc[row, "outcome"] == "skipped"
        assert f"as Micrio image {first_ids[f's3://demo-bucket/{key}']}" in df.loc[row, "error"]
    assert emu["micrio"].received()["accepted"]["image"] == 5 and not emu["micrio"].received()["duplicates"]
    assert (tmp_path / "folders" / f"{first.folder_id}.jsonl").exists()  # the index lives beside the journals


async def test_retry_failed_adds_again_what_an_earlier_run_left_failed(emu, s3, blocks_saved, tmp_path):
    keys = put_photos(s3, "retry")
    configure_micrio(emu, fail_rules=[{"match": "chelsea", "error": "uploadError", "times": 1}])
    args = params(emu, blocks_saved, tmp_path, "s3://demo-bucket/retry/", adding={"max_attempts": 1})
    state, summary, _ = await run(**args)
    assert state.is_failed() and "3 done, 1 failed" in state.message
    df = pd.read_csv(tmp_path / "run.csv").set_index("name")
    assert df.loc["chelsea.png", "error"] == "uploadError (after 1 attempts)"

    state, summary, _ = await run(**args)  # default: what failed stays failed, nothing is sent
    assert state.is_failed() and summary.failed == 1 and summary.added_this_run == 0
    assert emu["micrio"].received()["accepted"]["image"] == 4

    state, summary, logs = await run(**args, retry_failed=True)
    assert state.is_completed() and summary.done == 4 and summary.added_this_run == 1
    assert "1 image(s) an earlier run left failed are added again" in logs
    assert emu["micrio"].received()["accepted"]["image"] == 5 and len(keys) == 4


async def test_artifacts_are_published(emu, s3, blocks_saved, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    put_images(s3, "artifacts-run", 2)
    state, summary, _ = await run(**params(emu, blocks_saved, tmp_path, "s3://demo-bucket/artifacts-run/"))
    assert state.is_completed() and summary.done == 2
    async with get_client() as client:
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    by_key = {a.key: a for a in arts}
    assert {"micrio-migration-summary", "micrio-migration-failures", "micrio-migration-progress"} <= set(
        by_key
    )
    assert "ready" in str(by_key["micrio-migration-summary"].data)
    assert by_key["micrio-migration-progress"].data == 100.0


KILL_SCRIPT = """
import asyncio, json, sys
from flows.micrio_migration import migrate_to_micrio
summary = asyncio.run(migrate_to_micrio(**json.loads(sys.argv[1])))
print("SUMMARY " + summary.model_dump_json())
"""


def test_kill_9_at_any_moment_then_resume_loses_nothing(emu, s3, blocks_saved, tmp_path):
    """kill -9 the flow process at several points; re-run; every image ends ready, duplicates ≤ one batch each."""
    keys = put_images(s3, "kill-run", 40)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"source_url": f"s3://demo-bucket/{k}"}) + "\n" for k in keys))
    journal = tmp_path / "journal.jsonl"
    batch_size = 5
    # Processing slowed down so kills land while batches are being added and while images are in flight.
    configure_micrio(emu, max_concurrent=4)
    args = {
        "source": str(manifest),
        "target": {"folder_id": emu["micrio"].credentials["root_folder_id"]},
        "adding": {"batch_size": batch_size},
        "outputs": {"journal": str(journal), "report": str(tmp_path / "report.csv")},
        **blocks_saved,
        **FAST_POLL,
    }
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path.cwd())}
    kills = 0
    for wanted_intents in (1, 3, 5, 8):  # kill once the journal shows this many batches started
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, json.dumps(args)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            records = Journal(str(journal)).read() if journal.exists() else []
            if sum(r["t"] == "intent" for r in records) >= wanted_intents:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        proc.wait()
    assert kills >= 3
    final = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert final.returncode == 0, final.stderr[-2000:]
    summary = json.loads(final.stdout.split("SUMMARY ", 1)[1])
    assert summary["done"] == 40 and summary["failed"] == 0 and summary["in_flight"] == 0
    report = pd.read_csv(tmp_path / "report.csv")
    assert (report["status"] == "ready").sum() == 40
    duplicates = emu["micrio"].received()["duplicates"].get("image", 0)
    assert duplicates <= kills * batch_size  # at most the one in-flight batch per kill
