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
from prefect.settings import PREFECT_API_URL
from prefect_aws import S3Bucket
from pydantic import SecretStr

from blocks import MicrioCredentials
from demo.setup import emulator_aws_credentials
from emulators.launcher import running_emulators
from flows.micrio_migration import migrate_to_micrio
from tasks.journal import Journal
from tests.conftest import TEST_TIME_SCALE
from tests.images import jpeg_bytes

pytestmark = pytest.mark.integration
FAST_POLL = {"poll_initial_seconds": 0.05, "poll_max_seconds": 0.2}


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


async def test_manifest_migration_reports_every_row(emu, s3, blocks_saved, tmp_path):
    keys = put_images(s3, "manifest-run", 6)
    s3.put_object(Bucket="demo-bucket", Key="manifest-run/readme.txt", Body=b"not an image")
    configure_micrio(emu, fail_rules=[{"match": "img-002", "error": "uploadError", "times": 1}])
    rows = [{"source_url": f"s3://demo-bucket/{k}", "name": f"photo {i}"} for i, k in enumerate(keys)]
    rows += [
        {"source_url": "s3://demo-bucket/manifest-run/readme.txt", "name": "readme"},  # invalidImage
        {"source_url": "s3://demo-bucket/manifest-run/missing.jpg", "name": "missing"},  # originalNotFound
        {"source_url": f"s3://demo-bucket/{keys[0]}", "name": "again"},  # duplicate row
        {"source_url": "ftp://example.org/x.jpg", "name": "ftp"},  # malformed
        {"source_url": "", "name": "empty"},
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    report = tmp_path / "report.csv"
    summary = await migrate_to_micrio(
        source=str(manifest),
        folder_id=emu["micrio"].credentials["root_folder_id"],
        batch_size=4,
        journal=str(tmp_path / "journal.jsonl"),
        report=str(report),
        **blocks_saved,
        **FAST_POLL,
    )

    assert (summary.total, summary.done, summary.failed, summary.rejected, summary.in_flight) == (
        11,
        6,
        2,
        3,
        0,
    )
    df = pd.read_csv(report).set_index("row")
    assert list(df.loc[1:6, "status"]) == ["ready"] * 6
    assert df.loc[1, "width"] == 64 and df.loc[6, "width"] == 69 and df.loc[1, "height"] == 48
    assert df.loc[3, "attempts"] == 2  # uploadError on the first attempt, added again
    assert df.loc[1:6, "thumbnail"].str.contains("/thumbs/").all()
    assert df.loc[7, "error"].startswith("invalidImage") and df.loc[8, "error"].startswith("originalNotFound")
    assert df.loc[9, "error"] == "duplicate of row 1"
    assert (
        "http(s) URL or an s3:// URI" in df.loc[10, "error"] and df.loc[11, "error"] == "source_url is empty"
    )
    assert "X-Amz" not in report.read_text() and "Signature" not in report.read_text()  # no presigned URLs
    got = emu["micrio"].received()
    # 8 sources, plus img-002 added again after its uploadError (the only duplicate of a source)
    assert got["accepted"]["image"] == 9 and got["duplicates"] == {"image": 1}

    # Same input again: everything is known from the journal, nothing is added.
    again = await migrate_to_micrio(
        source=str(manifest),
        folder_id=emu["micrio"].credentials["root_folder_id"],
        batch_size=4,
        journal=str(tmp_path / "journal.jsonl"),
        report=str(tmp_path / "report2.csv"),
        **blocks_saved,
        **FAST_POLL,
    )
    assert again.added_this_run == 0 and again.done == 6
    assert emu["micrio"].received()["accepted"]["image"] == 9


async def test_s3_prefix_into_a_created_album_resumes_into_the_same_album(emu, s3, blocks_saved, tmp_path):
    put_images(s3, "prefix-run/photos", 5)
    s3.put_object(Bucket="demo-bucket", Key="prefix-run/photos/notes.txt", Body=b"x")
    root = emu["micrio"].credentials["root_folder_id"]
    kwargs = dict(
        source="s3://demo-bucket/prefix-run/photos/",
        create_folder_under=root,
        new_folder_name="Archive",
        new_folder_type="album",
        journal=str(tmp_path / "journal.jsonl"),
        report=str(tmp_path / "r.parquet"),
        **blocks_saved,
        **FAST_POLL,
    )
    summary = await migrate_to_micrio(**kwargs)
    assert summary.done == 5 and summary.rejected == 1 and summary.folder_id != root
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert set(df[df.outcome == "done"]["name"]) == {f"img-{i:03d}.jpg" for i in range(5)}
    again = await migrate_to_micrio(**kwargs)
    assert again.folder_id == summary.folder_id and again.added_this_run == 0
    received = emu["micrio"].received()
    assert received["accepted"] == {"folder": 1, "image": 5}


async def test_artifacts_are_published(emu, s3, blocks_saved, tmp_path):
    from prefect.client.orchestration import get_client

    put_images(s3, "artifacts-run", 2)
    summary = await migrate_to_micrio(
        source="s3://demo-bucket/artifacts-run/",
        folder_id=emu["micrio"].credentials["root_folder_id"],
        journal=str(tmp_path / "j.jsonl"),
        report=str(tmp_path / "r.csv"),
        **blocks_saved,
        **FAST_POLL,
    )
    assert summary.done == 2
    async with get_client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(
                    any_=[
                        "micrio-migration-summary",
                        "micrio-migration-failures",
                        "micrio-migration-progress",
                    ]
                )
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
        "folder_id": emu["micrio"].credentials["root_folder_id"],
        "batch_size": batch_size,
        "journal": str(journal),
        "report": str(tmp_path / "report.csv"),
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
