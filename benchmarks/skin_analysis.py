"""Scenario ``skin_analysis_300``: 300 selfies (one sub-folder per subject, in a local folder) through Haut.ai v1.

Haut emulator at time scale 1 with its processing delay cut to 1 s (``processing_seconds=1``,
``queue_seconds=0``). The flow's wall time is divided by a lower bound measured in the same run: that delay
plus the time the raw ``clients.haut.HautClient`` (no Prefect, no files, no journal) takes to send the same
number of images (signed URL + PUT + compute), with 8 images in flight (one batch's ``concurrency``) and with
32 (4 parallel batches x 8, all the flow allows), on the client's default transport and on the one the flow
uses (``clients.spread``, one-connection pools): the fastest counts. Subjects are created before that clock
starts (the flow creates them too: that time is reported, not in the bound). Also measured: the vendor-style
loop (upload, compute, poll until results, next) on a 20-image sample, extrapolated per image; the flow
process's peak RSS; task runs; results requests per image.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from clients.haut import HautClient
from clients.spread import spread_for
from clients.transport import HttpSettings
from demo.setup import sample_selfie

from .flow_runner import bench_environment, run_flow, save_blocks
from .harness import scenario

IMAGES = int(os.environ.get("BENCH_SKIN_IMAGES", "300"))
BASELINE_SAMPLE = int(os.environ.get("BENCH_SKIN_BASELINE", "20"))
PROCESSING_S = 1.0
BATCH_SIZE = 50
PARALLEL_BATCHES = 4
CONCURRENCY = 8  # requests in flight per batch
BASELINE_POLL_S = 0.25
DATASET = "bench-skin"


def _selfie_folder(root: Path, n: int) -> list[bytes]:
    """``root/subject-NNN/front.jpg`` for n distinct selfies; returns their bytes in order."""
    images = [sample_selfie(i) for i in range(n)]
    for i, data in enumerate(images):
        folder = root / f"subject-{i:03d}"
        folder.mkdir(parents=True)
        (folder / "front.jpg").write_bytes(data)
    return images


def _client(emu: Any, spread: bool = False, in_flight: int = 1) -> HautClient:
    """The raw client: default settings, or (``spread``) the flow's transport for ``in_flight`` requests."""
    c = emu["haut"].credentials
    settings = HttpSettings(transport=spread_for(in_flight)) if spread else None
    return HautClient(c["company_id"], emu["haut"].url, private_token=c["private_token"], settings=settings)


async def _subjects(client: HautClient, dataset_id: str, prefix: str, n: int) -> list[str]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> str:
        async with limit:
            return (await client.create_subject(dataset_id, f"{prefix}-{i:03d}")).id

    return await asyncio.gather(*(one(i) for i in range(n)))


async def _raw_upload(
    emu: Any, dataset_id: str, images: list[bytes], in_flight: int, spread: bool = False
) -> dict[str, float]:
    """Seconds to create a subject per image, then (timed apart) signed URL + PUT + compute of every image,
    ``in_flight`` images at once."""
    async with _client(emu, spread, in_flight) as client:
        t0 = time.perf_counter()
        prefix = f"raw{in_flight}{'s' if spread else ''}"
        subjects = await _subjects(client, dataset_id, prefix, len(images))
        subjects_s = time.perf_counter() - t0
        limit = asyncio.Semaphore(in_flight)

        async def one(subject_id: str, data: bytes) -> None:
            async with limit:
                record = await client.request_upload_v1(subject_id, side_id=1, name="front.jpg")
                await client.upload(record.upload_url, data, check=False)
                await client.compute_v1(record.image_batch_id)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(s, d) for s, d in zip(subjects, images, strict=True)))
        return {"subjects_s": subjects_s, "upload_s": time.perf_counter() - t0}


async def _vendor_style(emu: Any, dataset_id: str, images: list[bytes]) -> float:
    """Upload and compute one image, poll its results every BASELINE_POLL_S until they are in, next: s/image."""
    async with _client(emu) as client:
        subjects = await _subjects(client, dataset_id, "vendor", len(images))
        t0 = time.perf_counter()
        for subject_id, data in zip(subjects, images, strict=True):
            a = await client.analyse_image_v1(subject_id, dataset_id, data)
            while not await client.get_results_v1(dataset_id, subject_id, a.batch_id, a.image_id):
                await asyncio.sleep(BASELINE_POLL_S)
        return (time.perf_counter() - t0) / len(images)


async def _dataset_id(emu: Any) -> str:
    async with _client(emu) as client:
        dataset = await client.find_dataset(DATASET)
        assert dataset is not None, "the flow creates the dataset"
        return dataset.id


@scenario("skin_analysis_300", "300 selfies through Haut.ai v1, vs processing delay + raw upload time")
def skin_analysis_300() -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    config = {"haut": {"processing_seconds": PROCESSING_S, "queue_seconds": 0}}
    with bench_environment(["haut"], config) as (emu, tmp):
        images = _selfie_folder(tmp / "selfies", IMAGES)
        blocks = save_blocks(emu)
        args = {
            "source": str(tmp / "selfies"),
            "haut_block": blocks["haut_block"],
            "analysis": {"dataset_name": DATASET},
            "upload": {
                "batch_size": BATCH_SIZE,
                "parallel_batches": PARALLEL_BATCHES,
                "concurrency": CONCURRENCY,
            },
            "polling": {"initial_delay": PROCESSING_S, "max_delay": 2.0},
            "outputs": {"report": f"{tmp}/report.csv", "journal": f"{tmp}/journal.jsonl"},
        }
        run = run_flow("flows.skin_analysis:skin_analysis", args)
        haut = emu["haut"].received()
        dataset_id = asyncio.run(_dataset_id(emu))
        # The flow may have CONCURRENCY requests in flight per batch and PARALLEL_BATCHES batches at once.
        most = CONCURRENCY * PARALLEL_BATCHES
        raw = {
            f"{n}_in_flight{'_spread' if spread else ''}": asyncio.run(
                _raw_upload(emu, dataset_id, images, n, spread)
            )
            for n, spread in ((CONCURRENCY, False), (most, False), (most, True))
        }
        vendor_per_image = asyncio.run(_vendor_style(emu, dataset_id, images[:BASELINE_SAMPLE]))
    summary, wall = run.summary, run.wall_s
    upload_s = min(r["upload_s"] for r in raw.values())
    results_requests = sum(n for route, n in haut["requests"].items() if route.endswith("/results/"))
    bound = PROCESSING_S + upload_s
    return {
        "images": IMAGES,
        "source": "local folder, one sub-folder per subject (demo.setup.sample_selfie, 768x768 JPEG)",
        "done": summary["done"],
        "failed": summary["failed"],
        "rejected": summary["rejected"],
        "wall_s": round(wall, 1),
        "processing_delay_s": PROCESSING_S,
        **{f"raw_upload_s_{shape}": round(r["upload_s"], 2) for shape, r in raw.items()},
        # the flow creates subjects too; not in the bound
        "raw_create_subjects_s": round(min(r["subjects_s"] for r in raw.values()), 2),
        "lower_bound_s": round(bound, 2),
        "ratio": round(wall / bound, 2),
        "vendor_style_s_per_image": round(vendor_per_image, 3),
        "vendor_style_sample": BASELINE_SAMPLE,
        "speedup": round(vendor_per_image * IMAGES / wall, 1),
        "computes": haut["state"]["computes"],
        "results_requests_per_image": round(results_requests / IMAGES, 2),
        "task_runs": run.task_runs,
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        **run.cpu_figures(),
        "load_average_1m_at_start": round(load_at_start, 2),
        "settings": (
            f"batch_size {BATCH_SIZE}, parallel_batches {PARALLEL_BATCHES}, concurrency {CONCURRENCY}, "
            f"poll_initial_delay {PROCESSING_S:g} s, poll_max_delay 2 s; lower bound = processing delay + the "
            "fastest raw HautClient upload (signed URL + PUT + compute; default transport at 8 and 32 in flight, "
            "the flow's spread transport at 32)"
        ),
        "targets": "ratio <= 1.5, speedup >= 20",
    }
