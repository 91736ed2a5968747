"""Scenario ``snapshot_harvest_500``: 500 online VizioSense cameras -> originals in S3 + fitted copies in Miniviz.

Emulators on a 0.1 time scale: VizioSense's documented 20 s wait is 2 s; Miniviz keeps its 60 s image
interval per label (6 s here; every camera has its own label, so none waits) but its data interval is OFF
(0), so the data events are not paced by Miniviz's 15 s project limit.

The flow's wall time is divided by a lower bound measured in the same run: one availability wait plus the
time raw async httpx (no project code) takes to download the same number of raw + annotated images at the
flow's concurrency, from freshly requested snapshots that are already served. The transfer is timed with
one client (16 in flight) and with the flow's spread (one client per 4 in flight, which httpx handles much
better); the bound takes the faster. Also measured: the vendor-style loop (request, wait until served,
download raw and annotated, next) on a 20-camera sample, extrapolated per camera; bytes fitted per second
(isolated single-process fits of stored originals, the report's per-camera fit timings, and per flow wall
second); peak RSS of the flow process alone and of the flow plus its fit worker processes (sampled); CPU
seconds of the flow, its fit workers, each emulator and the Prefect server; task runs; and per-stage
medians from the report, to see where the time goes. Per camera: ``cpu_ms_flow_per_camera`` (the flow process
with its fit workers), the same without the workers, ``fit_cpu_ms_per_frame`` (the workers' CPU, their start
included, per image fitted) and ``fit_cpu_ms_per_frame_isolated`` (``fit_to_byte_limit`` alone, chained hints).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from typing import Any

import httpx
import pandas as pd
import psutil

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
SPREAD_CLIENTS = math.ceil(CONCURRENCY / 4)  # the flow's spread: one httpx client per 4 requests in flight
MINIVIZ_IMAGE_INTERVAL_S = 60 * TIME_SCALE
STAGES = ("request", "until_ready", "download", "store", "fit", "fit_wait", "push", "total")
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
    walls = {}
    for clients in (1, SPREAD_CLIENTS):
        load = run_load(lambda i: ("GET", urls[i], {}), len(urls), clients=clients, in_flight=CONCURRENCY)
        if load["statuses"] != {"200": len(urls)} or load["transport_errors"]:
            raise RuntimeError(f"raw download baseline did not get every image: {load['statuses']}")
        walls[clients] = load["wall_s"]
    return {
        "requests_s": requested_s,
        "transfer_s": min(walls.values()),
        "by_clients": walls,
        "images": len(urls),
    }


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


def _isolated_fit_rate(emu: Any, report: pd.DataFrame) -> dict[str, float]:
    """Bytes per CPU second of ``fit_to_byte_limit`` alone, in this process, on a sample of the annotated
    originals the flow stored: each search started from the previous image's quality, as the flow does, and
    (``_no_hint``) each from scratch."""
    s3, bucket = s3_client(emu), emu["s3"].credentials["bucket"]
    keys = report["s3_annotated_key"].dropna().head(FIT_SAMPLE)
    images = [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
    fit_to_byte_limit(images[0], 204_800)  # warm-up: first-use costs are not per image
    rates: dict[str, float] = {}
    for name, chained in (("fit_bytes_per_cpu_s", True), ("fit_bytes_per_cpu_s_no_hint", False)):
        hint, t0 = None, time.process_time()
        for data in images:
            hint = fit_to_byte_limit(data, 204_800, quality_hint=hint if chained else None).quality
        seconds = time.process_time() - t0
        rates[name] = round(sum(map(len, images)) / seconds)
        if chained:  # as the flow fits: each search starts from the previous frame's quality
            rates["fit_cpu_ms_per_frame_isolated"] = round(1000 * seconds / len(images), 1)
    return rates


class _FlowProcessSampler(threading.Thread):
    """Samples the flow subprocess and its fit workers (``python -m flows.snapshot_harvest.fit_pool_worker``) every 0.5 s: the peak
    of their summed RSS, and each one's latest CPU seconds (the workers exit with the flow, so what they did
    after the last sample is missed: little, they idle once the images are fitted)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_rss = 0
        self.cpu: dict[int, tuple[str, float]] = {}
        self._roles: dict[int, str | None] = {}

    def _role(self, proc: psutil.Process) -> str | None:
        if proc.pid not in self._roles:  # read each command line once: sampling must stay cheap
            cmd = " ".join(proc.cmdline())
            self._roles[proc.pid] = (
                "fit_workers" if ".fit_pool" in cmd else "flow" if "flow_runner" in cmd else None
            )
        return self._roles[proc.pid]

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(0.5):
            total = 0
            for proc in me.children(recursive=True):
                try:
                    if (role := self._role(proc)) is None:
                        continue
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = (role, times.user + times.system)
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, total)

    def cpu_of(self, role: str) -> float:
        return sum(seconds for r, seconds in self.cpu.values() if r == role)


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
            "timing": {
                "ready_after_seconds": READY_AFTER_S,
                "poll_interval_seconds": POLL_INTERVAL_S,
                "image_timeout_seconds": 60.0,
            },
            "performance": {"concurrency": CONCURRENCY},
            "outputs": {"state": f"{tmp}/pacing.json", "report": f"{tmp}/report.csv"},
        }
        sampler = _FlowProcessSampler()
        sampler.start()
        try:
            run = run_flow("flows.snapshot_harvest:harvest_snapshots", args)
        finally:
            sampler.stop.set()
            sampler.join()
        served = emu["viziosense"].received()["state"]
        miniviz = emu["miniviz"].received()
        report = pd.read_csv(args["outputs"]["report"])
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
    worker_cpu = sampler.cpu_of("fit_workers")
    return {
        "cameras": CAMERAS,
        "done": summary["done"],
        "failed": summary["failed"],
        "originals_stored": summary["originals_stored"],
        "images_pushed": summary["images_pushed"],
        "data_events_sent": summary["data_events_sent"],
        "wall_s": round(wall, 1),
        "availability_wait_s": READY_AFTER_S,
        "raw_transfer_s": round(raw["transfer_s"], 2),
        "raw_transfer_s_by_clients": raw["by_clients"],
        "raw_transfer_images": raw["images"],
        "raw_request_all_s": round(raw["requests_s"], 2),
        "lower_bound_s": round(bound, 2),
        "ratio": round(wall / bound, 2),
        "vendor_style_s_per_camera": round(vendor_per_camera, 3),
        "vendor_style_sample": BASELINE_SAMPLE,
        "speedup": round(vendor_per_camera * CAMERAS / wall, 1),
        **fit_isolated,
        "fit_bytes_per_s_in_flow": round(bytes_before_fit / wall),
        "fit_bytes_per_s_report": round(bytes_before_fit / fitted["seconds_fit"].sum()),
        "fit_bytes_per_worker_cpu_s": round(bytes_before_fit / worker_cpu) if worker_cpu else None,
        "fit_quality_p50": float(fitted["fit_quality"].median()),
        "bytes_before_fit": bytes_before_fit,
        "bytes_after_fit": int(fitted["bytes_after_fit"].sum()),
        **medians,
        "not_ready_fetches": served["not_ready_fetches"],
        "miniviz_accepted": miniviz["accepted"],
        "miniviz_rejected": miniviz["rejected"],
        "task_runs": run.task_runs,
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "peak_rss_mb_with_fit_workers": round(sampler.peak_rss / 2**20, 1),
        **run.cpu_figures(),
        "cpu_s_fit_workers": round(worker_cpu, 1),
        # the per-camera figures: the flow process with its fit workers, and the fit alone per frame
        "cpu_ms_flow_per_camera": round(1000 * run.cpu_s["flow"] / CAMERAS, 1),
        "cpu_ms_flow_per_camera_without_fit": round(1000 * (run.cpu_s["flow"] - worker_cpu) / CAMERAS, 1),
        "fit_cpu_ms_per_frame": round(1000 * worker_cpu / len(fitted), 1) if len(fitted) else None,
        "load_average_1m_at_start": round(load_at_start, 2),
        "concurrency": CONCURRENCY,
        "settings": (
            f"time scale {TIME_SCALE}: VizioSense wait {READY_AFTER_S:g} s, Miniviz image interval "
            f"{MINIVIZ_IMAGE_INTERVAL_S:g} s per label, Miniviz DATA INTERVAL 0 (off) for the bench; raw "
            f"transfer = raw httpx, {CONCURRENCY} in flight, the faster of 1 and {SPREAD_CLIENTS} clients. "
            f"fit_bytes_per_cpu_s: fit_to_byte_limit alone on {FIT_SAMPLE} stored originals; _in_flow: bytes "
            "before fitting / flow wall; _report: bytes / sum of the report's seconds_fit (the fit alone, in "
            "its worker); _worker_cpu_s: bytes / the fit workers' CPU seconds. cpu_s_flow includes the fit "
            "workers (cpu_s_fit_workers of it), so cpu_floor_s counts them"
        ),
        "targets": "ratio <= 1.5, speedup >= 50, peak RSS <= 500 MB",
    }
