"""A big skin analysis fanned out over three workers, one shard killed with SIGKILL mid-run.

On the fan-out stack (``fan_out_stack``: PostgreSQL, Redis, three workers in three directories, the state root
in S3), the parent run creates the dataset and every subject once, then splits 36 subjects (72 crops of
scikit-image's photographs, front and left) by pseudonymous key into three shards, child flow runs of
``skin-analysis-shard``; one shard's flow-run process is killed once uploads are flowing. Its worker marks it
Crashed, the parent starts it again, it resumes from the job's journal in S3, and the parent writes one
report of the whole job: every image done, no subject created twice, repeated work within the flow's bound
for a kill (the analyses of the batches submitting: ``batch_size * parallel_batches``). Without PostgreSQL
or Redis the test skips (fails under ``.ci/run``).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import skimage
from PIL import Image
from pydantic import SecretStr

from blocks import HautCredentials
from demo.setup import s3_client
from emulators.haut.results import metric_scores
from emulators.launcher import running_emulators
from tests.reliability.fan_out_stack import kill_a_running_shard

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # the first test also starts the stack

SUBJECTS, SHARD_SIZE, BATCH, PARALLEL = 36, 12, 4, 2
BOUND = BATCH * PARALLEL  # analyses a kill may leave half-sent in the shard it hits
BUCKET = "demo-bucket"
PARENT, SHARD = "skin-analysis/skin-analysis", "skin-analysis-shard"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "ihc.png"]


def crop(name: str, offset: int) -> bytes:
    """A real photograph, cropped ``offset`` pixels in (distinct bytes for every image), as JPEG."""
    image = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    buf = io.BytesIO()
    image.crop((offset, offset, offset + 280, offset + 280)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def emu():
    with running_emulators(only=["haut", "s3"], time_scale=0.05) as e:  # results 1 s after compute
        yield e


@pytest.fixture(scope="module")
def files(emu) -> dict[str, bytes]:
    """Two photos (front, left) of each subject in the S3 emulator."""
    s3, files = s3_client(emu), {}
    for i in range(SUBJECTS):
        for side, n in (("front", 2 * i), ("left", 2 * i + 1)):
            files[f"study/participant-{i:02d}_{side}.jpg"] = crop(PHOTOS[n % len(PHOTOS)], n % 20)
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return files


@pytest.fixture(scope="module")
def stack(fan_out_stack, emu):
    h = emu["haut"]
    haut = HautCredentials(
        base_url=h.url,
        company_id=h.credentials["company_id"],
        private_token=SecretStr(h.credentials["private_token"]),
    )
    fan_out_stack.save({"fan-haut": haut}, emu["s3"], BUCKET, "fan-skin-s3")
    return fan_out_stack


async def test_a_skin_analysis_fanned_out_over_three_workers_survives_a_killed_shard(stack, emu, files):
    haut = emu["haut"]
    haut.reset()
    parameters = {
        "source": f"s3://{BUCKET}/study/",
        "haut_block": "fan-haut",
        "s3_bucket_block": "fan-skin-s3",
        "analysis": {"dataset_name": "fan-study", "api_version": "v1"},
        "upload": {"batch_size": BATCH, "parallel_batches": PARALLEL, "concurrency": 4},
        "polling": {"initial_delay": 0.1, "max_delay": 0.5, "results_timeout": 120},
        "fan_out": {"shard_size": SHARD_SIZE, "max_reruns": 2},
    }
    flowing = lambda: haut.received()["accepted"].get("upload", 0) >= 2 * BATCH  # noqa: E731
    await stack.run_killing_one_shard(
        PARENT, SHARD, parameters, lambda c: kill_a_running_shard(c, SHARD, flowing)
    )

    got = haut.received()
    accepted, duplicates = got["accepted"], got["duplicates"]
    assert accepted["create_subject"] == SUBJECTS and duplicates.get("create_subject", 0) == 0
    assert accepted.get("create_dataset", 0) == 1
    assert len(files) <= accepted["upload"] <= len(files) + BOUND and duplicates.get("compute", 0) <= BOUND

    s3 = s3_client(emu)
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="pipeline-state/reports/skin-analysis-")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    reports = [k for k in keys if k.endswith(".csv") and not k.endswith("-metrics.csv")]
    assert len(reports) == 1, keys  # one report of the whole job (the shards' are parquet in their folder)
    read = lambda key: pd.read_csv(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))  # noqa: E731
    wide, tidy = read(reports[0]), read(reports[0].removesuffix(".csv") + "-metrics.csv")
    assert list(wide["item"]) == list(range(1, len(files) + 1)) and set(wide["status"]) == {"done"}
    for score, key in zip(wide["pores.pores_score"], sorted(files), strict=True):  # items in listing order
        assert score == metric_scores(files[key])["pores"]  # the metrics of the photo's own bytes
    assert wide["subject_key"].nunique() == SUBJECTS and wide["analysis"].nunique() == len(files)
    assert set(tidy["analysis"]) == set(wide["analysis"])  # every analysis's metrics, once per row
    assert not tidy.duplicated(["analysis", "algorithm", "area", "metric"]).any()
    assert "participant" not in wide.to_csv() + tidy.to_csv()  # names stay out without privacy options
