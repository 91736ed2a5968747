"""The skin-analysis flow against the Haut.ai emulator (and S3) at time scale 0.01: real flow runs on the
session's Prefect server, real HTTP. Metric values are checked against ``metric_scores`` of the bytes the
emulator received, request counts against ``/_emulator/received``."""

from __future__ import annotations

import asyncio
import hashlib
import io
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
from PIL import Image, ImageDraw
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL
from prefect_aws import AwsCredentials, S3Bucket
from pydantic import SecretStr

from blocks import HautCredentials
from clients.haut import clear_shared_sessions
from emulators.haut.catalog import FSM2_FAMILIES
from emulators.haut.results import V3_KEYS, metric_scores
from emulators.launcher import running_emulators
from flows.skin_analysis import skin_analysis
from flows.skin_analysis.run import delete_skin_photos
from tasks.haut_batch import JournalState
from tasks.journal import GroupCommit, Journal
from tasks.run_state import IncompleteRun
from tests.conftest import TEST_TIME_SCALE, start_service
from tests.logs import Collect

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FAST = {"polling": {"initial_delay": 0.05, "max_delay": 0.2, "results_timeout": 20.0}}
# Distinctive personal data: none of it may show up in logs or artifacts.
SECRET_NAMES = ["zelda-quixote", "yorick-umber", "Xanthe Vellacott", "Wendell Ostrowski", "Quentin Marlowe"]
BIRTH_DATE, META_WORD = "1987-03-14", "orchid-seven"


# --- images ---------------------------------------------------------------------------------------------------
def face(
    seed: int, width: int = 512, height: int | None = None, fmt: str = "JPEG", orientation: int = 1
) -> bytes:
    """A face-like selfie (skin-toned oval, eyes, brows, nose, mouth); ``seed`` varies tones and features."""
    height = height or width
    img = Image.new("RGB", (width, height), (225, 230 - seed, 235))
    d = ImageDraw.Draw(img)
    sx, sy = width / 512, height / 512
    d.ellipse((106 * sx, 56 * sy, 406 * sx, 456 * sy), fill=(224, 172 - 3 * seed, 138))
    for x in (190, 322):
        d.ellipse(((x - 28) * sx, 200 * sy, (x + 28) * sx, 232 * sy), fill=(255, 255, 255))
        d.ellipse(((x - 10) * sx, 206 * sy, (x + 10) * sx, 226 * sy), fill=(70, 45, 30))
        d.line(((x - 34) * sx, 180 * sy, (x + 34) * sx, (174 - seed) * sy), fill=(90, 60, 40), width=6)
    d.polygon([(256 * sx, 230 * sy), (236 * sx, 310 * sy), (276 * sx, 310 * sy)], fill=(205, 150, 120))
    d.chord((196 * sx, 330 * sy, 316 * sx, 400 * sy), 0, 180, fill=(170, 60, 70))
    buf = io.BytesIO()
    extra = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    img.save(buf, fmt, **extra)
    return buf.getvalue()


def write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# --- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emu():
    with running_emulators(only=["haut", "s3"], time_scale=TEST_TIME_SCALE) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(emu):
    emu["haut"].reset()
    emu["s3"].reset()
    clear_shared_sessions()


def haut_block(svc, **overrides) -> HautCredentials:
    c = svc.credentials
    return HautCredentials(
        base_url=svc.url, company_id=c["company_id"], private_token=SecretStr(c["private_token"]), **overrides
    )


@pytest.fixture
async def blocks(emu, prefect_harness):
    await haut_block(emu["haut"]).asave("skin-test-haut", overwrite=True)
    s3 = emu["s3"]
    c = s3.credentials
    creds = AwsCredentials(
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
        aws_client_parameters={"endpoint_url": s3.url},
    )
    await S3Bucket(bucket_name=c["bucket"], credentials=creds).asave("skin-test-s3", overwrite=True)
    return {"haut_block": "skin-test-haut", "s3_bucket_block": "skin-test-s3"}


async def run(**params):
    """Run the flow; returns (summary, everything it logged or published as text, artifacts by key, final
    state). A Failed run's summary is the one its ``IncompleteRun`` carries."""
    with Collect() as collected:
        state = await skin_analysis(**params, return_state=True)
    try:
        summary = await state.aresult()
    except IncompleteRun as exc:
        summary = exc.summary
    run_id = state.state_details.flow_run_id
    await APILogHandler.aflush()
    async with get_client() as client:
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert {a.key for a in artifacts} >= {
        "skin-analysis-progress",
        "skin-analysis-summary",
        "skin-analysis-outcomes",
        "skin-analysis-failures",
    }
    published = [m.message for m in logs] + collected.messages
    published += [str(a.data) + (a.description or "") for a in artifacts]  # table data: a JSON string
    return summary, "\n".join(published), {a.key: a for a in artifacts}, state


def assert_private(text: str, *extra: str) -> None:
    lowered = text.lower()
    for word in [*SECRET_NAMES, BIRTH_DATE, META_WORD, *extra]:
        assert word.lower() not in lowered, f"{word!r} leaked into logs or artifacts"


def counts(svc) -> dict:
    got = svc.received()
    return {"accepted": got["accepted"], "duplicates": got["duplicates"], "state": got["state"]}


async def uploaded_bytes(svc, image_id: str) -> bytes:
    """The bytes the emulator stored for an image (through the image's signed original URL)."""
    async with haut_block(svc).get_client() as client:
        record = await client.get_image(image_id)
    url = record.urls.get("original")
    assert url, "the photo is no longer stored"
    return httpx.get(url, timeout=10).content


def face_scores(tidy: pd.DataFrame, analysis: int, algorithm_of) -> dict[str, float]:
    rows = tidy[(tidy["analysis"] == analysis) & (tidy["area"] == "face")]
    out = {}
    for family in FSM2_FAMILIES:
        algorithm, metric = algorithm_of(family)
        match = rows[(rows["algorithm"] == algorithm) & (rows["metric"] == metric)]
        assert len(match) == 1, (family, len(match))
        out[family] = float(match["value"].iloc[0])
    return out


# --- tests ----------------------------------------------------------------------------------------------------
async def test_v1_folder_rejects_bad_images_and_rerun_sends_nothing(emu, blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default journal (.pipeline-state/...) goes here
    svc = emu["haut"]
    src = tmp_path / "selfies"
    files = {
        "zelda-quixote.jpg": write(src / "zelda-quixote.jpg", face(1)),
        "yorick-umber/front.jpg": write(src / "yorick-umber" / "front.jpg", face(2)),
        "yorick-umber/left.jpg": write(src / "yorick-umber" / "left.jpg", face(3)),
        "rotated.png": write(src / "rotated.png", face(4, 400, 300, "PNG", orientation=6)),
        "tiny.jpg": write(src / "tiny.jpg", face(5, 64)),
        "fake.jpg": write(src / "fake.jpg", b"Xanthe Vellacott's shopping list, not a photo"),
    }
    (src / "notes.txt").write_text("not an image")
    report = str(tmp_path / "out" / "run1.csv")
    params = {**blocks, "source": str(src), "outputs": {"report": report}, **FAST}
    params.update(s3_bucket_block="", privacy={"include_file_names": True})

    summary, published, artifacts, state = await run(**params)
    assert state.is_failed() and state.message == f"6 images: 4 done, 2 rejected; report {report}"
    assert (summary.images, summary.done, summary.rejected, summary.failed) == (6, 4, 2, 0)
    assert summary.ignored_files == 1 and summary.resumed == 0
    assert summary.journal.startswith(".pipeline-state/skin-analysis/") and Path(summary.journal).exists()
    wide = pd.read_csv(summary.report)
    tidy = pd.read_csv(summary.metrics_report)
    by_name = {r["image"]: r for r in wide.to_dict("records")}  # relative to the folder, as asked
    assert (
        by_name["tiny.jpg"]["status"] == "rejected"
        and "64×64 px (at least 256×256)" in by_name["tiny.jpg"]["reason"]
    )
    assert (
        by_name["fake.jpg"]["status"] == "rejected"
        and "not a recognised image format" in by_name["fake.jpg"]["reason"]
    )
    rotated = by_name["rotated.png"]
    assert (rotated["width"], rotated["height"]) == (300, 400) and "EXIF orientation 6" in rotated[
        "transform"
    ]
    assert by_name["yorick-umber/front.jpg"]["subject_key"] == by_name["yorick-umber/left.jpg"]["subject_key"]
    assert by_name["yorick-umber/left.jpg"]["side"] == "left"

    # values equal metric_scores() of the bytes Haut received, in the tidy and the wide table
    for name, row in by_name.items():
        if row["status"] != "done":
            continue
        sent = files[name] if pd.isna(row["transform"]) else await uploaded_bytes(svc, row["image_id"])
        assert hashlib.sha256(sent).hexdigest() == row["uploaded_sha256"]
        expected = metric_scores(sent)
        assert face_scores(tidy, row["analysis"], lambda f: (f, f"{f}_score")) == expected
        assert {f: row[f"{f}.{f}_score"] for f in FSM2_FAMILIES} == expected
    with Image.open(io.BytesIO(await uploaded_bytes(svc, rotated["image_id"]))) as img:
        assert img.size == (300, 400)  # turned upright before upload
    assert {"area", "metric", "value", "tag"} <= set(tidy.columns) and set(tidy["area"]) > {"face", "nose"}

    first = counts(svc)
    assert first["accepted"]["create_subject"] == 3  # zelda, yorick, rotated (not tiny/fake: nothing usable)
    assert first["accepted"]["signed_upload_url"] == 4 and first["accepted"]["upload"] == 4
    assert first["duplicates"] == {}
    table = json.loads(artifacts["skin-analysis-summary"].data)  # table artifacts hold their rows as JSON
    summary_rows = {(r["algorithm"], r["metric"]): r for r in table}
    pores = summary_rows[("pores", "pores_score")]
    assert pores["analyses"] == 4 and pores["min"] <= pores["mean"] <= pores["max"]
    outcomes = json.loads(artifacts["skin-analysis-outcomes"].data)
    assert {"status": "rejected", "error": "image: 64×64 px (at least 256×256)", "count": 1} in outcomes
    assert_private(published, "selfies/", "tiny.jpg", "shopping list")

    # re-run: everything from the journal, nothing sent, same values
    params["outputs"] = {"report": str(tmp_path / "out" / "run2.csv")}
    again, published, _, _ = await run(**params)
    assert (again.done, again.rejected, again.resumed) == (4, 2, 4)
    second = counts(svc)
    for op in ("create_subject", "signed_upload_url", "upload", "compute", "create_dataset"):
        assert second["accepted"].get(op) == first["accepted"].get(op), op
    assert second["duplicates"] == {} and second["state"]["subjects"] == 3
    assert pd.read_csv(again.metrics_report).equals(tidy)
    assert pd.read_csv(again.report)["resumed"].sum() == 4
    assert_private(published, "selfies/")


async def test_v3_manifest_sides_fields_and_gdpr_delete(emu, blocks, tmp_path):
    svc = emu["haut"]
    folder = tmp_path / "study"
    images = {f"img{i}.jpg": write(folder / "photos" / f"img{i}.jpg", face(10 + i)) for i in range(6)}
    manifest = pd.DataFrame(
        [
            [
                "Xanthe Vellacott",
                "photos/img0.jpg",
                "front",
                BIRTH_DATE,
                "female",
                json.dumps({"cohort": META_WORD}),
            ],
            ["Xanthe Vellacott", "photos/img1.jpg", "left", "", "", ""],
            ["Xanthe Vellacott", "photos/img2.jpg", "right", "", "", ""],
            ["Wendell Ostrowski", "photos/img3.jpg", "front", "1990-01-02", "male", ""],
            ["Wendell Ostrowski", "photos/img4.jpg", "right", "", "", ""],
            ["Wendell Ostrowski", "photos/img5.jpg", "top", "", "", ""],
            ["", "photos/img5.jpg", "front", "", "", ""],
            ["Quentin Marlowe", "photos/missing.jpg", "front", "2001-02-03", "", ""],
        ],
        columns=["subject", "image", "side", "birth_date", "biological_sex", "meta"],
    )
    manifest.to_csv(folder / "manifest.csv", index=False)
    params = {
        **blocks,
        "source": str(folder / "manifest.csv"),
        "analysis": {"api_version": "v3"},
        "privacy": {"delete_photos": True, "include_subject_names": True},
        "outputs": {
            "report": str(tmp_path / "out" / "v3.parquet"),
            "journal": str(tmp_path / "journal.jsonl"),
        },
        **FAST,
    }
    params.pop("s3_bucket_block")
    summary, published, artifacts, state = await run(**params)
    assert state.is_failed() and "8 images: 5 done, 3 rejected" in state.message
    assert (summary.images, summary.analyses, summary.done, summary.rejected) == (8, 3, 5, 3)
    assert summary.photos_deleted_subjects == 2
    wide = pd.read_parquet(summary.report)
    tidy = pd.read_parquet(summary.metrics_report)
    assert list(wide["status"]) == ["done"] * 5 + ["rejected"] * 3
    assert "side 'top' is not front, left or right" in wide["reason"][5]
    assert "subject is empty" in wide["reason"][6] and wide["reason"][7] == "file not found"
    assert list(wide["side"][:5]) == ["front", "left", "right", "front", "right"]
    assert wide["batch_id"][0] == wide["batch_id"][1] == wide["batch_id"][2] != wide["batch_id"][3]
    assert list(wide["subject_name"][:5]) == ["Xanthe Vellacott"] * 3 + ["Wendell Ostrowski"] * 2  # asked for
    assert "image" not in wide.columns and "image" not in tidy.columns  # file names: not asked for
    assert set(tidy["sides"]) == {"front+left+right", "front+right"}
    for analysis, front in ((1, "img0.jpg"), (2, "img3.jpg")):  # v3 parameters come from the front image
        scores = face_scores(tidy, analysis, lambda f: (V3_KEYS[f], "score"))
        assert scores == metric_scores(images[front])
    assert not tidy["value_text"].fillna("").str.startswith("http").any()

    async with haut_block(svc).get_client() as client:
        (subject,) = [
            s for s in await client.list_subjects(summary.dataset_id) if s.name == "Xanthe Vellacott"
        ]
        assert subject.birth_date == BIRTH_DATE and subject.meta == {"cohort": META_WORD}
        assert subject.biological_sex and subject.biological_sex["tech_name"] == "female"
        for image_id in wide["image_id"][:5]:
            record = await client.get_image(image_id)
            assert record.urls.get("original") is None  # photo gone, record and results kept
        assert (await client.get_results_v3(wide["batch_id"][0])).all_algorithms_calculated
    got = counts(svc)
    assert got["accepted"]["delete_subject_photos"] == 2 and got["state"]["stored_objects"] == 0
    assert got["accepted"]["v3_upload"] == 2 and got["accepted"]["upload"] == 5
    assert got["accepted"]["create_subject"] == 2  # not for Quentin: no usable image, so no name sent
    assert_private(published)  # names are in the report (asked for), never in logs or artifacts

    again, published, _, _ = await run(**params)  # photos already deleted: nothing to send, nothing to delete
    assert (again.done, again.resumed, again.photos_deleted_subjects) == (5, 2, 0)
    assert counts(svc)["accepted"] == got["accepted"]
    assert_private(published)


async def test_delete_photos_task_deletes_the_subjects_photos_and_journals_it(emu, blocks, tmp_path):
    svc = emu["haut"]
    for i, name in enumerate(SECRET_NAMES[:2]):
        write(tmp_path / "selfies" / f"{name}.jpg", face(20 + i))
    journal_path = str(tmp_path / "journal.jsonl")
    outputs = {"report": str(tmp_path / "out" / "run.csv"), "journal": journal_path}
    summary, _, _, _ = await run(**blocks, source=str(tmp_path / "selfies"), outputs=outputs, **FAST)
    assert (summary.done, summary.photos_deleted_subjects) == (2, 0)  # delete_photos not asked: photos kept
    wide = pd.read_csv(summary.report)
    subject_ids = list(wide["subject_id"])
    assert counts(svc)["state"]["stored_objects"] == 2

    writer = GroupCommit(Journal(journal_path))
    errors = await delete_skin_photos.fn(haut_block(svc), subject_ids, writer)
    assert errors == dict.fromkeys(subject_ids)
    got = counts(svc)
    assert got["state"]["stored_objects"] == 0 and got["accepted"]["delete_subject_photos"] == 2
    async with haut_block(svc).get_client() as client:
        for image_id in wide["image_id"]:
            assert (await client.get_image(image_id)).urls.get("original") is None  # record kept, photo gone
    records = list(Journal(journal_path).records())
    assert [r["subject_id"] for r in records if r["t"] == "photos_deleted"] == subject_ids
    state = JournalState(records)
    assert not any(state.photos_pending(sid) for sid in subject_ids)  # what keeps a re-run from deleting

    again = await delete_skin_photos.fn(haut_block(svc), subject_ids, writer)  # nothing left: no error
    assert again == dict.fromkeys(subject_ids) and counts(svc)["state"]["stored_objects"] == 0


async def test_s3_prefix_in_s3_reports_and_journal_out(emu, blocks, tmp_path):
    s3 = emu["s3"]
    c = s3.credentials
    client = boto3.client(
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )
    bucket = c["bucket"]
    sent = {}
    for n, key in enumerate(
        ["selfies/zelda-quixote_front.jpg", "selfies/zelda-quixote_left.jpg", "selfies/yorick-umber.png"]
    ):
        sent[key] = face(20 + n, fmt="PNG" if key.endswith(".png") else "JPEG")
        client.put_object(Bucket=bucket, Key=key, Body=sent[key])
    client.put_object(Bucket=bucket, Key="selfies/_SUCCESS", Body=b"")
    params = {
        **blocks,
        "source": f"s3://{bucket}/selfies/",
        "outputs": {
            "report": f"s3://{bucket}/reports/skin.parquet",
            "journal": f"s3://{bucket}/journals/skin/",
        },
        "privacy": {"include_file_names": True},
        **FAST,
    }
    summary, published, _, state = await run(**params)
    assert state.is_completed()  # _SUCCESS is no image: left out by design
    assert (summary.images, summary.done, summary.ignored_files) == (3, 3, 1)
    wide = pd.read_parquet(
        io.BytesIO(client.get_object(Bucket=bucket, Key="reports/skin.parquet")["Body"].read())
    )
    tidy = pd.read_parquet(
        io.BytesIO(client.get_object(Bucket=bucket, Key="reports/skin-metrics.parquet")["Body"].read())
    )
    assert list(wide["image"]) == sorted(k.removeprefix("selfies/") for k in sent)  # relative, listing order
    assert list(wide["side"]) == ["front", "front", "left"]
    for row in wide.to_dict("records"):
        assert face_scores(tidy, row["analysis"], lambda f: (f, f"{f}_score")) == metric_scores(
            sent["selfies/" + row["image"]]
        )
    journal_keys = client.list_objects_v2(Bucket=bucket, Prefix="journals/skin/")["KeyCount"]
    assert journal_keys >= 2
    assert_private(published)

    again, _, _, _ = await run(**params)
    assert again.resumed == 3 and counts(emu["haut"])["accepted"]["upload"] == 3


async def test_results_timeout_then_rerun_collects_without_uploading(emu, blocks, tmp_path):
    svc = emu["haut"]
    src = tmp_path / "in"
    for i in range(3):
        write(src / f"p{i}.jpg", face(30 + i))
    outputs = {"report": str(tmp_path / "r1.csv"), "journal": str(tmp_path / "journal.jsonl")}
    # processing takes 0.22 s here: nothing is ready in time
    polling = {**FAST["polling"], "results_timeout": 0.001}
    params = {**blocks, "source": str(src), "outputs": outputs, "polling": polling, "s3_bucket_block": ""}
    summary, _, artifacts, state = await run(**params)
    assert (summary.done, summary.failed, summary.pending) == (0, 3, 3)
    assert state.is_failed()  # not delivered yet: the run says so, and how to get the rest
    assert "3 image(s) computed but without results yet: a re-run collects them" in state.message
    assert "may still arrive" in pd.read_csv(summary.report)["reason"][0]
    failures = artifacts["skin-analysis-failures"].data
    assert "p0" not in failures and str(src) not in failures  # item numbers and subject keys only
    first = counts(svc)["accepted"]
    params.update(polling=FAST["polling"], outputs={**outputs, "report": str(tmp_path / "r2.csv")})
    again, _, _, state = await run(**params)
    assert state.is_completed() and (again.done, again.failed, again.resumed) == (3, 0, 0)
    after = counts(svc)["accepted"]
    assert after["upload"] == first["upload"] == 3 and after["compute"] == first["compute"] == 3


async def test_300_images_with_a_login_block_log_in_once(emu, blocks, tmp_path):
    """The vendor warns that logging in per request gets an account blocked (its emulator throttles logins):
    the run's batches, subjects, dataset and GDPR deletes all go through the account's one session."""
    svc = emu["haut"]
    c = svc.credentials
    login = HautCredentials(
        base_url=svc.url,
        company_id=c["company_id"],
        username=c["username"],
        password=SecretStr(c["password"]),
    )
    await login.asave("skin-test-login", overwrite=True)
    selfie = face(7, 256)
    for i in range(300):  # one subject each: 300 analyses, 300 subjects
        write(tmp_path / "in" / f"p{i:03d}" / "front.jpg", selfie)
    params = {
        **blocks,
        **FAST,
        "haut_block": "skin-test-login",
        "source": str(tmp_path / "in"),
        "upload": {"batch_size": 50, "parallel_batches": 4, "concurrency": 8},
        "privacy": {"delete_photos": True},
        "outputs": {"report": str(tmp_path / "r.csv"), "journal": str(tmp_path / "j.jsonl")},
    }
    summary, *_ = await run(**params)
    assert (summary.done, summary.photos_deleted_subjects) == (300, 300)
    got = counts(svc)["accepted"]
    assert got["login"] == 1 and "refresh" not in got
    assert got["compute"] == 300 and got["create_subject"] == 300 and got["delete_subject_photos"] == 300
    # A second run in the process (resumed from the journal; it looks the dataset up) reuses the session.
    again, *_ = await run(**{**params, "outputs": {**params["outputs"], "report": str(tmp_path / "r2.csv")}})
    got = counts(svc)["accepted"]
    assert again.resumed == 300 and got["login"] == 1
    assert got["compute"] == 300 and got["create_subject"] == 300 and got["delete_subject_photos"] == 300


async def test_a_run_where_nothing_can_be_analysed_fails_naming_the_error(emu, blocks, tmp_path):
    svc = emu["haut"]
    src = tmp_path / "in"
    for i in range(2):
        write(src / f"p{i}.jpg", face(50 + i))
    report = str(tmp_path / "r.csv")
    params = {**blocks, "source": str(src), "outputs": {"report": report}, **FAST, "s3_bucket_block": ""}
    svc.faults(error_rate=1.0, error_status=500, path_pattern="compute")  # 500s are not retried
    state = await skin_analysis(**params, return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert message.startswith("no image could be analysed; 2 with: haut compute_v1: HTTP 500"), message
    assert message.endswith(f"2 images: 2 failed; report {report}"), message
    assert pd.read_csv(report)["status"].tolist() == ["failed", "failed"]  # report written first
    with pytest.raises(IncompleteRun) as caught:
        await state.aresult()
    assert caught.value.summary.failed == 2
    svc.control("DELETE", "faults")


# --- real photographs (scikit-image's bundled samples) under person-like names -------------------------------
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PEOPLE = ["Jane", "Doe", "Marco", "Rossi", "Li Wei", "John Smith", "Tiny Tim"]


def photo(name: str) -> bytes:
    return (SKIMAGE_DATA / name).read_bytes()


def people_folder(root: Path) -> dict[str, bytes]:
    """Five real photographs named as users name them: after the person, a side suffix or a per-person folder."""
    files = {
        "Jane Doe_front.png": photo("astronaut.png"),
        "Jane Doe_left.png": photo("chelsea.png"),
        "Marco Rossi.png": photo("coffee.png"),
        "Li Wei/front.jpg": photo("rocket.jpg"),
        "Li Wei/right.png": photo("motorcycle_left.png"),
    }
    for name, data in files.items():
        write(root / name, data)
    return files


def assert_no_file_names(text: str, root: Path) -> None:
    for word in [*PEOPLE, str(root), ".png", ".jpg"]:
        assert word not in text, f"{word!r} is in a report that did not ask for file names"


async def test_real_photos_reports_name_no_file_unless_asked(emu, blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default journal (.pipeline-state/...) goes here
    src = tmp_path / "study"
    files = people_folder(src)
    report = tmp_path / "out" / "default.csv"
    params = {**blocks, "source": str(src), "outputs": {"report": str(report)}, **FAST, "s3_bucket_block": ""}
    summary, published, _, state = await run(**params)
    assert state.is_completed(), state.message
    assert (summary.images, summary.done, summary.subjects) == (5, 5, 3)
    for path in (summary.report, summary.metrics_report):
        assert_no_file_names(Path(path).read_text(), src)
    wide = pd.read_csv(summary.report)
    assert "image" not in wide.columns and "subject_name" not in wide.columns
    assert set(wide["sha256"]) == {hashlib.sha256(d).hexdigest() for d in files.values()}  # to join back
    assert wide["subject_key"].nunique() == 3
    assert_private(published, *PEOPLE, str(src))

    params["outputs"] = {"report": str(tmp_path / "out" / "named.parquet")}
    params["privacy"] = {"include_file_names": True}
    named, published, _, state = await run(**params)
    assert state.is_completed() and named.resumed == 5  # the same journal: nothing sent again
    wide = pd.read_parquet(named.report)
    tidy = pd.read_parquet(named.metrics_report)
    assert sorted(wide["image"]) == sorted(files)  # relative to the source folder, never the full path
    assert set(tidy["image"]) == set(files) and "subject_name" not in wide.columns
    assert not wide["image"].str.contains(str(tmp_path), regex=False).any()
    assert_private(published, *PEOPLE, str(src))  # names asked for the reports only


async def test_a_non_image_and_a_tiny_image_are_rejected_and_the_run_fails(emu, blocks, tmp_path):
    src = tmp_path / "study"
    write(src / "Jane Doe.png", photo("astronaut.png"))
    write(src / "John Smith.jpg", (SKIMAGE_DATA / "README.txt").read_bytes())  # text under an image name
    with Image.open(SKIMAGE_DATA / "chelsea.png") as img:
        buf = io.BytesIO()
        img.resize((120, 80)).save(buf, "PNG")
    write(src / "Tiny Tim.png", buf.getvalue())
    write(src / "Marco Rossi.gif", photo("no_time_for_that_tiny.gif"))  # a real GIF: neither JPEG nor PNG
    report = str(tmp_path / "r.csv")
    params = {**blocks, "source": str(src), "outputs": {"report": report}, **FAST, "s3_bucket_block": ""}
    summary, published, artifacts, state = await run(**params)
    assert state.is_failed()
    assert state.message == f"4 images: 1 done, 3 rejected; report {report}"
    assert (summary.done, summary.rejected, summary.failed) == (1, 3, 0)
    wide = pd.read_csv(report)
    assert list(wide["status"]) == ["done", "rejected", "rejected", "rejected"]  # listing order
    assert "not a recognised image format" in wide["reason"][1]  # John Smith.jpg
    assert "format GIF (one of JPEG, PNG)" in wide["reason"][2]  # Marco Rossi.gif
    assert "120×80 px (at least 256×256)" in wide["reason"][3]
    assert_no_file_names(Path(report).read_text(), src)
    assert_private(published, *PEOPLE, str(src))
    assert emu["haut"].received()["accepted"]["create_subject"] == 1  # only the usable photo's subject


@pytest.mark.parametrize(
    "kind", ["empty folder", "folder of non-images", "empty prefix", "header-only manifest"]
)
async def test_an_empty_source_fails_and_creates_no_dataset(emu, blocks, tmp_path, kind):
    if kind == "empty folder":
        (tmp_path / "in").mkdir()
        source, expected = str(tmp_path / "in"), "the source folder holds no image"
    elif kind == "folder of non-images":
        write(tmp_path / "in" / "notes.txt", b"not a photo")
        source = str(tmp_path / "in")
        expected = "the source folder holds no image (1 other file(s) left out)"
    elif kind == "empty prefix":
        source, expected = (
            f"s3://{emu['s3'].credentials['bucket']}/nobody/",
            "the source prefix holds no image",
        )
    else:
        (tmp_path / "manifest.csv").write_text("subject,image\n")
        source, expected = str(tmp_path / "manifest.csv"), "the source manifest lists no image"
    report = str(tmp_path / "r.csv")
    summary, _, _, state = await run(**blocks, source=source, outputs={"report": report}, **FAST)
    assert state.is_failed() and state.message.startswith(expected), state.message
    assert state.message.endswith(f"no images; report {report}")
    assert summary.images == 0 and summary.dataset_id == ""
    received = emu["haut"].received()
    assert "create_dataset" not in received["accepted"] and received["state"]["datasets"] == 0
    assert pd.read_csv(report).empty  # the (empty) report is still written


async def test_an_unreadable_manifest_fails_with_the_problem(emu, blocks, tmp_path):
    report = str(tmp_path / "r.csv")
    params = {**blocks, "outputs": {"report": report}, **FAST, "s3_bucket_block": ""}
    _, _, _, state = await run(source=str(tmp_path / "missing.csv"), **params)
    assert state.is_failed()
    assert state.message == f"the source cannot be read: source: no such manifest. no images; report {report}"
    (tmp_path / "bad.csv").write_text("who,what\nJane Doe,x\n")
    _, _, _, state = await run(source=str(tmp_path / "bad.csv"), **params)
    assert state.is_failed() and "a 'subject' column and an 'image' column" in state.message
    assert "create_dataset" not in emu["haut"].received()["accepted"]


KILL_SCRIPT = """
import asyncio, json, sys
from flows.skin_analysis import skin_analysis
asyncio.run(skin_analysis(**json.loads(sys.argv[1])))
"""


def test_kill_9_mid_run_then_resume(tmp_path, tmp_path_factory, prefect_harness):
    """kill -9 the flow in a subprocess while batches are between upload and results, re-run: no image
    lost, no bytes uploaded twice, no subject twice; orphaned records and repeated computes within the bound."""
    batch_size, parallel = 3, 2
    bound = batch_size * parallel
    with start_service("haut", tmp_path_factory, config={"processing_seconds": 150}) as slow:  # 1.5 s here
        svc = slow["haut"]
        haut_block(svc).save("skin-test-slow", overwrite=True)
        svc.faults(latency=30, path_pattern="compute")  # 0.3 s per compute: kills land inside the window
        src = tmp_path / "in"
        files = [write(src / f"subject-{i}.jpg", face(40 + i)) for i in range(6)]
        journal = tmp_path / "journal.jsonl"
        params = {
            "source": str(src),
            "haut_block": "skin-test-slow",
            "upload": {"batch_size": batch_size, "parallel_batches": parallel, "concurrency": 2},
            "outputs": {"journal": str(journal), "report": str(tmp_path / "killed.csv")},
            **FAST,
        }
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(params)], cwd=REPO, env=env)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                text = journal.read_text() if journal.exists() else ""
                if text.count('"t":"computed"') >= 2:
                    break
                assert proc.poll() is None, "the flow ended before it could be killed"
                time.sleep(0.02)
            else:
                pytest.fail("the journal never showed a computed analysis")
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()  # only if a check above failed first
            proc.wait(timeout=30)
        killed_at = journal.read_text()
        assert killed_at.count('"t":"done"') < len(files), "the kill came too late to test anything"
        svc.control("DELETE", "faults")  # no more latency

        params["outputs"]["report"] = str(tmp_path / "resumed.csv")
        summary = asyncio.run(skin_analysis(**params))
        assert (summary.done, summary.failed, summary.rejected) == (len(files), 0, 0)  # no image lost
        got = svc.received()
        accepted, dup = got["accepted"], got["duplicates"]
        uploads = [s["sha256"] for s in got["recent_accepted"] if s["op"] == "upload"]
        assert sorted(uploads) == sorted(hashlib.sha256(f).hexdigest() for f in files)  # each bytes once
        assert accepted["create_subject"] == len(files) and dup.get("create_subject", 0) == 0
        assert accepted["signed_upload_url"] <= len(files) + bound  # orphaned records: at most in flight
        assert dup.get("compute", 0) <= bound and got["state"]["images"] <= len(files) + bound
        report = pd.read_csv(summary.report)
        for row, data in zip(report.to_dict("records"), files, strict=True):
            assert row["pores.pores_score"] == metric_scores(data)["pores"]
