"""Scenario ``snapshot_harvest_500``: 500 online VizioSense cameras -> originals in S3 + fitted copies in Miniviz.

Emulators on a 0.1 time scale: VizioSense's documented 20 s wait is 2 s; Miniviz keeps its 60 s image
interval per label (6 s here; every camera has its own label, so none waits) but its data interval is OFF
(0), so the data events are not paced by Miniviz's 15 s project limit.

The flow's wall time is divided by a lower bound measured in the same run: one availability wait plus the
time a raw async httpx client (no project code) takes to download the same number of raw + annotated
images at the flow's concurrency, from freshly requested snapshots that are already served. Also
measured: the vendor-style loop (request, wait until served, download raw and annotated, next) on a
20-camera sample, extrapolated per camera; bytes fitted per second (the report's per-camera fit timings,
and an isolated single-thread fit of a sample of the stored originals); the flow process's peak RSS; task
runs; and per-stage medians from the report, to see where the time goes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
import pandas as pd

from demo.setup import s3_client
from tasks.images import fit_to_byte_limit

from .flow_runner import bench_environment, run_flow, save_blocks
from .harness import scenario
from .load import run_load

CAMERAS = int(os.environ.get("BENCH_HARVEST_CAMERAS", "500"))
BASELINE_SAMPLE = int(os.environ.get("BENCH_HARVEST_BASELINE", "20"))
FIT_SAMPLE = 20
TIME_SCALE = 0.1
READY_AFTER_S = 20 * TIME_SCALE  # documented 20 s, scaled
POLL_INTERVAL_S = 0.2
CONCURRENCY = 16  # the flow's default: VizioSense requests and downloads in flight
MINIVIZ_IMAGE_INTERVAL_S = 60 * TIME_SCALE
STAGES = ("request", "until_ready", "download", "store", "fit", "push", "total")
CONFIG = {
    "viziosense": {
        "fleet": {
            "count": CAMERAS,
            "groups": ["parking", "yard", "entrance"],
            "offline_every": 0,
            "seed": "bench",
        },
        "devices": [],  # no explicit lobby camera: exactly CAMERAS devices, all online
    },
    "miniviz": {"data_interval": {"free": 0, "pro": 0}, "image_interval": 60},
}


async def _device_uuids(emu: Any) -> list[str]:
    from blocks import VizioSenseCredentials

    v = emu["viziosense"]
    async with VizioSenseCredentials(api_key=v.credentials["api_key"], base_url=v.url).get_client() as client:
        return [d.uuid for d in await client.list_all_devices(sort="name")]


def _raw_transfer(emu: Any, uuids: list[str]) -> dict[str, Any]:
    """Request a snapshot from every camera, wait until they are served, then time downloading them all
    (raw + annotated) with one httpx.AsyncClient and CONCURRENCY requests in flight (``load.run_load``)."""
    v = emu["viziosense"]
    headers = {"Authorization": f"Bearer {v.credentials['api_key']}"}

    async def request_all() -> list[str]:
        limit = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=v.url, headers=headers, timeout=30) as client:

            async def one(uuid: str) -> list[str]:
                async with limit:
                    response = await client.post(f"/api/v1/devices/{uuid}/image")
                    response.raise_for_status()
                    return response.json()["data"]

            return [url for links in await asyncio.gather(*map(one, uuids)) for url in links]

    t0 = time.perf_counter()
    urls = asyncio.run(request_all())
    requested_s = time.perf_counter() - t0
    time.sleep(READY_AFTER_S + 0.5)  # every link served before the clock starts
    load = run_load(lambda i: ("GET", urls[i], {}), len(urls), clients=1, in_flight=CONCURRENCY)
    if load["statuses"] != {"200": len(urls)} or load["transport_errors"]:
        raise RuntimeError(f"raw download baseline did not get every image: {load['statuses']}")
    return {"requests_s": requested_s, "transfer_s": load["wall_s"], "images": len(urls)}


def _vendor_style(emu: Any, uuids: list[str]) -> float:
    """Request one snapshot, wait the documented time, fetch raw and annotated (polling a 404), next: s/camera."""
    v = emu["viziosense"]
    headers = {"Authorization": f"Bearer {v.credentials['api_key']}"}
    t0 = time.perf_counter()
    with httpx.Client(base_url=v.url, headers=headers, timeout=30) as client:
        for uuid in uuids:
            response = client.post(f"/api/v1/devices/{uuid}/image")
            response.raise_for_status()
            time.sleep(READY_AFTER_S)
            for url in response.json()["data"]:
                while (image := client.get(url)).status_code == 404:
                    time.sleep(POLL_INTERVAL_S)
                image.raise_for_status()
    return (time.perf_counter() - t0) / len(uuids)


def _isolated_fit_rate(emu: Any, report: pd.DataFrame) -> float:
    """Bytes/s of ``fit_to_byte_limit`` alone, one thread, on a sample of the annotated originals the flow stored."""
    s3, bucket = s3_client(emu), emu["s3"].credentials["bucket"]
    keys = report["s3_annotated_key"].dropna().head(FIT_SAMPLE)
    images = [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
    t0 = time.perf_counter()
    for data in images:
        fit_to_byte_limit(data, 204_800)
    return sum(map(len, images)) / (time.perf_counter() - t0)


@scenario("snapshot_harvest_500", "500 cameras VizioSense -> S3 + Miniviz, vs one wait + raw download time")
def snapshot_harvest_500() -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    with bench_environment(["viziosense", "miniviz", "s3"], CONFIG, TIME_SCALE) as (emu, tmp):
        blocks = save_blocks(
            emu,
            TIME_SCALE,
            miniviz={"data_interval_seconds": 0.0, "image_interval_seconds": MINIVIZ_IMAGE_INTERVAL_S},
        )
        args = {
            **blocks,
            "ready_after_seconds": READY_AFTER_S,
            "poll_interval_seconds": POLL_INTERVAL_S,
            "image_timeout_seconds": 60.0,
            "concurrency": CONCURRENCY,
            "state": f"{tmp}/pacing.json",
            "report": f"{tmp}/report.csv",
        }
        run = run_flow("flows.snapshot_harvest:harvest_snapshots", args)
        served = emu["viziosense"].received()["state"]
        miniviz = emu["miniviz"].received()
        report = pd.read_csv(args["report"])
        fit_isolated = _isolated_fit_rate(emu, report)
        emu["viziosense"].reset()
        uuids = asyncio.run(_device_uuids(emu))
        raw = _raw_transfer(emu, uuids)
        vendor_per_camera = _vendor_style(emu, uuids[:BASELINE_SAMPLE])
    summary, wall = run.summary, run.wall_s
    bound = READY_AFTER_S + raw["transfer_s"]
    fitted = report.dropna(subset=["bytes_before_fit", "seconds_fit"])
    bytes_before_fit = int(fitted["bytes_before_fit"].sum())
    medians = {f"p50_seconds_{s}": round(float(report[f"seconds_{s}"].median()), 3) for s in STAGES}
    return {
        "cameras": CAMERAS,
        "done": summary["done"],
        "failed": summary["failed"] + summary["partial"],
        "originals_stored": summary["originals_stored"],
        "images_pushed": summary["images_pushed"],
        "data_events_sent": summary["data_events_sent"],
        "wall_s": round(wall, 1),
        "availability_wait_s": READY_AFTER_S,
        "raw_transfer_s": round(raw["transfer_s"], 2),
        "raw_transfer_images": raw["images"],
        "raw_request_all_s": round(raw["requests_s"], 2),
        "lower_bound_s": round(bound, 2),
        "ratio": round(wall / bound, 2),
        "vendor_style_s_per_camera": round(vendor_per_camera, 3),
        "vendor_style_sample": BASELINE_SAMPLE,
        "speedup": round(vendor_per_camera * CAMERAS / wall, 1),
        "fit_bytes_per_s": round(fit_isolated),
        "fit_bytes_per_s_in_flow": round(bytes_before_fit / wall),
        "fit_bytes_per_s_report": round(bytes_before_fit / fitted["seconds_fit"].sum()),
        "bytes_before_fit": bytes_before_fit,
        "bytes_after_fit": int(fitted["bytes_after_fit"].sum()),
        **medians,
        "not_ready_fetches": served["not_ready_fetches"],
        "miniviz_accepted": miniviz["accepted"],
        "miniviz_rejected": miniviz["rejected"],
        "task_runs": run.task_runs,
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        **run.cpu_figures(),
        "load_average_1m_at_start": round(load_at_start, 2),
        "concurrency": CONCURRENCY,
        "settings": (
            f"time scale {TIME_SCALE}: VizioSense wait {READY_AFTER_S:g} s, Miniviz image interval "
            f"{MINIVIZ_IMAGE_INTERVAL_S:g} s per label, Miniviz DATA INTERVAL 0 (off) for the bench; raw "
            f"transfer = one httpx.AsyncClient, {CONCURRENCY} in flight. fit_bytes_per_s: fit_to_byte_limit "
            f"alone, one thread, on {FIT_SAMPLE} stored originals; _in_flow: bytes before fitting / flow wall; "
            "_report: bytes / sum of the report's seconds_fit, which include waiting for a fit slot"
        ),
        "targets": "ratio <= 1.5, speedup >= 50, peak RSS <= 500 MB",
    }
