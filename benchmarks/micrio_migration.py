"""Scenario ``micrio_migration_10k``: 10,000 images from the S3 emulator into the Micrio emulator.

The Micrio emulator processes ``MAX_CONCURRENT`` images at once, ``SECONDS_PER_IMAGE`` each, so the last image
can be ready no sooner than about 2 minutes after the first was added: that moment, as the emulator
measured it, is the lower bound the flow's wall time is divided by. Also measured: status calls per image,
task runs, the flow process's peak RSS, and the vendor-style loop (add one image, poll it until ready,
next) on a 200-image sample, extrapolated per image.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx

from emulators.launcher import running_emulators

from .harness import scenario

IMAGES = int(os.environ.get("BENCH_MICRIO_IMAGES", "10000"))
BASELINE_SAMPLE = int(os.environ.get("BENCH_MICRIO_BASELINE", "200"))
MAX_CONCURRENT = 100
SECONDS_PER_IMAGE = 1.2  # 10,000 / 100 * 1.2 s = 120 s lower bound
BASELINE_POLL_SECONDS = 0.25
FLOW_SCRIPT = """
import asyncio, json, resource, sys, time
from flows.micrio_migration import migrate_to_micrio
t0 = time.perf_counter()
summary = asyncio.run(migrate_to_micrio(**json.loads(sys.argv[1])))
wall = time.perf_counter() - t0
print("RESULT " + json.dumps({"summary": summary.model_dump(), "wall_s": wall,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.linear_gradient("L").resize((320, 240)).convert("RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _s3_client(emu: Any):
    c = emu["s3"].credentials
    return boto3.client(
        "s3",
        endpoint_url=emu["s3"].url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )


def _upload(emu: Any, prefix: str, n: int) -> None:
    s3, body = _s3_client(emu), _tiny_jpeg()
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(Bucket="demo-bucket", Key=f"{prefix}/img-{i:05d}.jpg", Body=body),
                range(n),
            )
        )


def _save_blocks(emu: Any) -> dict[str, str]:
    from prefect_aws import AwsCredentials, S3Bucket
    from pydantic import SecretStr

    from blocks import MicrioCredentials

    m = emu["micrio"].credentials
    MicrioCredentials(
        organisation_id=m["organisation_id"],
        api_key=SecretStr(m["api_key"]),
        base_url=emu["micrio"].url,
        parallel_connections=2,
    ).save("bench-micrio", overwrite=True)
    c = emu["s3"].credentials
    creds = AwsCredentials(
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
        aws_client_parameters={"endpoint_url": emu["s3"].url},
    )
    S3Bucket(bucket_name=c["bucket"], credentials=creds).save("bench-s3", overwrite=True)
    return {"micrio_block": "bench-micrio", "s3_bucket_block": "bench-s3"}


async def _count_task_runs(flow_run_id: str | None) -> int | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    if not flow_run_id:
        return None
    count = 0
    async with get_client() as client:
        while True:
            page = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=count
            )
            count += len(page)
            if len(page) < 200:
                return count


async def _latest_flow_run_id() -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        return str(runs[0].id) if runs else None


def _vendor_style(emu: Any, n: int) -> float:
    """Add one image, poll its status until ready, next: seconds per image."""
    s3, m = _s3_client(emu), emu["micrio"].credentials
    auth = {"organisationId": m["organisation_id"], "apiKey": m["api_key"]}
    t0 = time.perf_counter()
    with httpx.Client(base_url=emu["micrio"].url, timeout=30) as client:
        for i in range(n):
            url = s3.generate_presigned_url(
                "get_object", Params={"Bucket": "demo-bucket", "Key": f"baseline/img-{i:05d}.jpg"}
            )
            added = client.post(
                "/v2/images/add",
                json={**auth, "folderId": m["root_folder_id"], "images": [{"sourceUrl": url}]},
            )
            image_id = added.json()["result"]["images"][0]["id"]
            while True:
                status = client.post("/v2/image/status", json={**auth, "imageIds": [image_id]}).json()
                if status["result"]["images"][0]["status"] in ("ready", "error"):
                    break
                time.sleep(BASELINE_POLL_SECONDS)
    return (time.perf_counter() - t0) / n


@scenario("micrio_migration_10k", "10,000 images S3 -> Micrio with polling, vs the emulator's lower bound")
def micrio_migration_10k() -> dict[str, Any]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    stage = SECONDS_PER_IMAGE / 4
    config = {
        "micrio": {
            "max_concurrent": MAX_CONCURRENT,
            "stage_durations": {"downloading": stage, "processing": stage, "tiling": stage, "storing": stage},
        }
    }
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        config_path = Path(tmp) / "emulators.json"
        config_path.write_text(json.dumps(config))
        with running_emulators(only=["micrio", "s3"], config_path=str(config_path)) as emu:
            _upload(emu, "bench", IMAGES)
            _upload(emu, "baseline", BASELINE_SAMPLE)
            blocks = _save_blocks(emu)
            args = {
                "source": "s3://demo-bucket/bench/",
                "folder_id": emu["micrio"].credentials["root_folder_id"],
                "batch_size": 100,
                "journal": f"{tmp}/journal.jsonl",
                "report": f"{tmp}/report.parquet",
                "poll_initial_seconds": 1.0,
                "poll_max_seconds": 3.0,
                **blocks,
            }
            env = {
                **os.environ,
                "PREFECT_API_URL": PREFECT_API_URL.value(),
                "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING",
            }
            proc = subprocess.run(
                [sys.executable, "-c", FLOW_SCRIPT, json.dumps(args)],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"flow failed: {proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.split("RESULT ", 1)[1])
            state = emu["micrio"].received()
            bound = state["state"]["first_added_to_last_ready"]["real_seconds"]
            requests = state["requests"]
            status_calls = requests.get("POST /v2/folder/status", 0) + requests.get(
                "POST /v2/image/status", 0
            )
            task_runs = asyncio.run(_count_task_runs(asyncio.run(_latest_flow_run_id())))
            emu["micrio"].reset()
            baseline_per_image = _vendor_style(emu, BASELINE_SAMPLE)
    summary = result["summary"]
    wall = result["wall_s"]
    return {
        "images": IMAGES,
        "done": summary["done"],
        "failed": summary["failed"],
        "wall_s": round(wall, 1),
        "emulator_lower_bound_s": round(bound, 1),
        "ratio": round(wall / bound, 3),
        "status_calls": status_calls,
        "status_calls_per_image": round(status_calls / IMAGES, 4),
        "task_runs": task_runs,
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "vendor_style_s_per_image": round(baseline_per_image, 3),
        "vendor_style_sample": BASELINE_SAMPLE,
        "speedup": round(baseline_per_image * IMAGES / wall, 1),
        "targets": "ratio <= 1.15, <= 0.1 status calls per image, peak RSS <= 400 MB, task runs <= 300",
    }
