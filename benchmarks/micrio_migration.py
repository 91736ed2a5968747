"""Scenario ``micrio_migration_10k``: 10,000 images from the S3 emulator into the Micrio emulator.

The Micrio emulator processes ``MAX_CONCURRENT`` images at once, ``SECONDS_PER_IMAGE`` each, so the last image
can be ready no sooner than about 2 minutes after the first was added: that moment, as the emulator
measured it, is the lower bound the flow's wall time is divided by. Also measured: status calls per image,
task runs, the flow process's peak RSS, and the vendor-style loop (add one image, poll it until ready,
next) on a 200-image sample, extrapolated per image.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from demo.setup import s3_client

from .flow_runner import bench_environment, run_flow, save_blocks
from .harness import scenario

IMAGES = int(os.environ.get("BENCH_MICRIO_IMAGES", "10000"))
BASELINE_SAMPLE = int(os.environ.get("BENCH_MICRIO_BASELINE", "200"))
MAX_CONCURRENT = 100
SECONDS_PER_IMAGE = 1.2  # 10,000 / 100 * 1.2 s = 120 s lower bound
BASELINE_POLL_SECONDS = 0.25


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.linear_gradient("L").resize((320, 240)).convert("RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _upload(emu: Any, prefix: str, n: int) -> None:
    s3, body = s3_client(emu), _tiny_jpeg()
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(Bucket="demo-bucket", Key=f"{prefix}/img-{i:05d}.jpg", Body=body),
                range(n),
            )
        )


def _vendor_style(emu: Any, n: int) -> float:
    """Add one image, poll its status until ready, next: seconds per image."""
    s3, m = s3_client(emu), emu["micrio"].credentials
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
    stage = SECONDS_PER_IMAGE / 4
    config = {
        "micrio": {
            "max_concurrent": MAX_CONCURRENT,
            "stage_durations": {"downloading": stage, "processing": stage, "tiling": stage, "storing": stage},
        }
    }
    with bench_environment(["micrio", "s3"], config) as (emu, tmp):
        _upload(emu, "bench", IMAGES)
        _upload(emu, "baseline", BASELINE_SAMPLE)
        blocks = save_blocks(emu, micrio={"parallel_connections": 2})
        args = {
            "source": "s3://demo-bucket/bench/",
            "target": {"folder_id": emu["micrio"].credentials["root_folder_id"]},
            "adding": {"batch_size": 100},
            "polling": {"initial_seconds": 1.0, "max_seconds": 3.0},
            "outputs": {"journal": f"{tmp}/journal.jsonl", "report": f"{tmp}/report.parquet"},
            **blocks,
        }
        run = run_flow("flows.micrio_migration:migrate_to_micrio", args)
        state = emu["micrio"].received()
        bound = state["state"]["first_added_to_last_ready"]["real_seconds"]
        requests = state["requests"]
        status_calls = requests.get("POST /v2/folder/status", 0) + requests.get("POST /v2/image/status", 0)
        emu["micrio"].reset()
        baseline_per_image = _vendor_style(emu, BASELINE_SAMPLE)
    summary = run.summary
    wall = run.wall_s
    return {
        "images": IMAGES,
        "done": summary["done"],
        "failed": summary["failed"],
        "wall_s": round(wall, 1),
        "emulator_lower_bound_s": round(bound, 1),
        "ratio": round(wall / bound, 3),
        "status_calls": status_calls,
        "status_calls_per_image": round(status_calls / IMAGES, 4),
        "task_runs": run.task_runs,
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "vendor_style_s_per_image": round(baseline_per_image, 3),
        "vendor_style_sample": BASELINE_SAMPLE,
        "speedup": round(baseline_per_image * IMAGES / wall, 1),
        "targets": "ratio <= 1.15, <= 0.1 status calls per image, peak RSS <= 400 MB, task runs <= 300",
    }
