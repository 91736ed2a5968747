"""Raw async httpx load, without any project code: the baseline every flow is compared with.

httpx slows down as concurrency per client grows (docs/performance.md), so the load is spread over a
few clients per process and, optionally, over several processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import httpx

RequestFactory = Callable[[int], tuple[str, str, dict[str, Any]]]  # i -> (method, url, httpx kwargs)


async def _run_load(
    make_request: RequestFactory, indices: range, clients: int, in_flight: int
) -> dict[str, Any]:
    limits = httpx.Limits(
        max_connections=max(1, in_flight // clients) + 1, max_keepalive_connections=in_flight
    )
    pool = [httpx.AsyncClient(timeout=30, limits=limits) for _ in range(clients)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    queue = iter(indices)

    async def worker(k: int) -> None:
        nonlocal errors
        client = pool[k % clients]
        for i in queue:
            method, url, kwargs = make_request(i)
            t0 = time.perf_counter()
            try:
                r = await client.request(method, url, **kwargs)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    wall = time.perf_counter() - t0
    for c in pool:
        await c.aclose()
    return {"latencies": latencies, "statuses": statuses, "errors": errors, "wall": wall, "start": t0}


def _process_entry(args: tuple) -> dict[str, Any]:
    make_request, indices, clients, in_flight = args
    return asyncio.run(_run_load(make_request, indices, clients, in_flight))


def run_load(
    make_request: RequestFactory, total: int, clients: int, in_flight: int, processes: int = 1
) -> dict[str, Any]:
    """Send ``total`` requests; returns requests/s, latency percentiles (ms) and status counts."""
    from .harness import percentile

    if processes == 1:
        parts = [asyncio.run(_run_load(make_request, range(total), clients, in_flight))]
    else:
        chunks = [range(p, total, processes) for p in range(processes)]
        with mp.get_context("fork").Pool(processes) as pool:
            parts = pool.map(_process_entry, [(make_request, c, clients, in_flight) for c in chunks])
    # perf_counter is system-wide monotonic on Linux, so windows from forked processes line up.
    wall = max(p["start"] + p["wall"] for p in parts) - min(p["start"] for p in parts)
    lat = sorted(x for p in parts for x in p["latencies"])
    statuses: dict[str, int] = {}
    for p in parts:
        for code, n in p["statuses"].items():
            statuses[str(code)] = statuses.get(str(code), 0) + n
    return {
        "requests": total,
        "wall_s": round(wall, 3),
        "rps": round(total / wall, 1),
        "p50_ms": round(percentile(lat, 0.50) * 1000, 2),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
        "statuses": statuses,
        "transport_errors": sum(p["errors"] for p in parts),
        "clients_per_process": clients,
        "in_flight_per_process": in_flight,
        "processes": processes,
    }
