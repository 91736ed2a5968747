"""Scenarios of the Miniviz backfill flow (issue 6): unlimited throughput, paced rate, plan-mode memory.

- ``backfill_unlimited_200k``: 200,000 rows, rate limit off. The flow's events/s is divided by the raw async
  limit of the same emulator, measured in the same run by the ``miniviz_capacity`` scenario's own function,
  and by the vendor-style loop (the vendor sample: one ``requests.post`` per event, no session), timed on a
  sample and extrapolated.
- ``backfill_paced``: the emulator's data interval scaled to 20 ms, 1,000 events. The achieved rate is read
  from the emulator's own arrival stamps (first to last accepted event), divided by the allowed rate; every
  429 the emulator answered is counted.
- ``backfill_memory_5m``: a 5,000,000-row CSV in plan mode (``dry_run``): the flow process's peak RSS.

Input CSVs are generated once into ``benchmarks/.work/`` (gitignored) and reused.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from .flow_runner import bench_environment, run_flow, save_blocks
from .harness import percentile, scenario
from .miniviz_capacity import miniviz_capacity

WORK = Path(__file__).with_name(".work")
FLOW = "flows.miniviz_backfill:miniviz_backfill"
UNLIMITED_ROWS = int(os.environ.get("BENCH_BACKFILL_ROWS", "200000"))
UNLIMITED_CONCURRENCY = int(os.environ.get("BENCH_BACKFILL_CONCURRENCY", "16"))
VENDOR_SAMPLE = int(os.environ.get("BENCH_BACKFILL_VENDOR_SAMPLE", "1000"))
# The same comparison against a service 50 ms away (emulator latency), on a smaller input: on loopback a
# sequential loop already runs at ~1 ms per event, so concurrency has no network wait to hide.
LATENCY_S = 0.05
LATENCY_ROWS = int(os.environ.get("BENCH_BACKFILL_LATENCY_ROWS", "10000"))
LATENCY_VENDOR_SAMPLE = 100
LATENCY_CONCURRENCY = 64  # what a remote service needs: 16 in flight cover only 16 x 50 ms
PACED_EVENTS = int(os.environ.get("BENCH_BACKFILL_PACED_EVENTS", "1000"))
PACED_INTERVAL_S = 0.02
MEMORY_ROWS = int(os.environ.get("BENCH_BACKFILL_MEMORY_ROWS", "5000000"))
T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
LABELS = 50


def history_csv(rows: int) -> Path:
    """A CSV of ``rows`` sensor readings (epoch ms, 50 labels, 3 metrics), written once and reused."""
    path = WORK / f"backfill-history-{rows}.csv"
    if path.exists():
        return path
    WORK.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    step = 500_000
    with open(partial, "w", newline="") as fh:
        for start in range(0, rows, step):
            i = np.arange(start, min(rows, start + step))
            pd.DataFrame(
                {
                    "timestamp": T0_MS + i * 60_000 // LABELS,
                    "label_key": pd.Categorical.from_codes(
                        i % LABELS, [f"sensor_{k:02d}" for k in range(LABELS)]
                    ),
                    "temperature": np.round(20 + 5 * np.sin(i / 1000), 2),
                    "humidity": 40 + i % 30,
                    "status": np.where(i % 97 == 0, "check", "ok"),
                }
            ).to_csv(fh, index=False, header=start == 0)
    partial.rename(path)  # only a complete file is ever reused
    return path


def _flow_args(
    tmp: Path,
    source: Path,
    blocks: dict[str, str],
    *,
    concurrency: int | None = None,
    label_column: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The flow's parameters (grouped as the flow takes them)."""
    args: dict[str, Any] = {
        "source": str(source),
        "dry_run": dry_run,
        "outputs": {"journal": str(tmp / "journal.jsonl"), "report": str(tmp / "report.csv")},
        **blocks,
    }
    if concurrency is not None:
        args["pacing"] = {"concurrency": concurrency}
    if label_column is not None:
        args["events"] = {"label_column": label_column}
    return args


def _arrivals(svc: Any) -> list[float]:
    """When the emulator accepted each data event (its own clock), in order."""
    project = svc.credentials["projects"][0]["project_id"]
    got = svc.control("GET", "events", params={"project_id": project, "limit": 10_000_000})
    return sorted(e["received_at"] for e in got["events"])


def _vendor_style_events_per_s(svc: Any, n: int) -> float:
    """The vendor sample's loop: one ``requests.post`` per event (no session), waiting for each answer."""
    project = svc.credentials["projects"][0]
    url = f"{svc.url}/api/project/{project['project_id']}?token={project['token']}"
    t0 = time.perf_counter()
    for i in range(n):
        body = {
            "timestamp": T0_MS + i,
            "label_key": f"sensor_{i % LABELS:02d}",
            "payload": {"temperature": 21.5, "humidity": 55, "status": "ok"},
        }
        response = requests.post(url, json=body, timeout=30)
        response.raise_for_status()
    return n / (time.perf_counter() - t0)


@scenario(
    "backfill_unlimited_200k",
    "200,000 rows CSV -> Miniviz, rate limit off, vs the raw async limit and the vendor-style loop",
)
def backfill_unlimited_200k() -> dict[str, Any]:
    source = history_csv(UNLIMITED_ROWS)
    capacity = miniviz_capacity()  # the raw async limit, measured now, on this machine's current load
    config = {"miniviz": {"data_interval": {"free": 0, "pro": 0}}}
    with bench_environment(["miniviz"], config) as (emu, tmp):
        svc = emu["miniviz"]
        blocks = save_blocks(emu, miniviz={"data_interval_seconds": 0})
        args = _flow_args(tmp, source, blocks, concurrency=UNLIMITED_CONCURRENCY, label_column="label_key")
        run = run_flow(FLOW, args)
        received = svc.received()
        arrivals = _arrivals(svc)
        svc.reset()
        vendor = _vendor_style_events_per_s(svc, VENDOR_SAMPLE)
        svc.faults(latency=LATENCY_S)
        far_tmp = tmp / "latency"
        far_tmp.mkdir()
        far_args = _flow_args(far_tmp, history_csv(LATENCY_ROWS), blocks, concurrency=LATENCY_CONCURRENCY)
        far = run_flow(FLOW, {**args, **far_args})
        far_vendor = _vendor_style_events_per_s(svc, LATENCY_VENDOR_SAMPLE)
        svc.faults()
    far_rate = far.summary["events_sent"] / far.wall_s
    summary = run.summary
    sent = summary["events_sent"]
    flow_rate = sent / run.wall_s
    send_rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
    limit = capacity["capacity_rps"]
    return {
        "rows": UNLIMITED_ROWS,
        "events_sent": sent,
        "events_failed": summary["events_failed"],
        "accepted_by_emulator": received["accepted"].get("data", 0),
        "duplicates": received["duplicates"].get("data", 0),
        "non_2xx": received["rejected_by_status"],
        "wall_s": round(run.wall_s, 1),
        "events_per_s": round(flow_rate, 1),
        "send_phase_events_per_s": round(send_rate, 1),
        "raw_async_limit_rps": limit,
        "raw_async_limit_shape": capacity["capacity_shape"],
        "ratio": round(flow_rate / limit, 3),
        "send_phase_ratio": round(send_rate / limit, 3),
        "vendor_style_events_per_s": round(vendor, 1),
        "vendor_style_sample": VENDOR_SAMPLE,
        "speedup": round(flow_rate / vendor, 2),
        "at_50ms_latency": {
            "rows": LATENCY_ROWS,
            "concurrency": LATENCY_CONCURRENCY,
            "events_per_s": round(far_rate, 1),
            "vendor_style_events_per_s": round(far_vendor, 1),
            "vendor_style_sample": LATENCY_VENDOR_SAMPLE,
            "speedup": round(far_rate / far_vendor, 1),
        },
        "concurrency": UNLIMITED_CONCURRENCY,
        "task_runs": run.task_runs,
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        **run.cpu_figures(),
        "targets": "ratio >= 0.7 of the raw async limit, speedup >= 20x over the vendor-style loop",
    }


@scenario("backfill_paced", "1,000 events at one per 20 ms: achieved rate / allowed rate, 429s")
def backfill_paced() -> dict[str, Any]:
    source = history_csv(PACED_EVENTS)
    # the Pro interval scaled to 20 ms; the emulator measures it between arrivals, as the real service does
    config = {"miniviz": {"data_interval": {"free": 4 * PACED_INTERVAL_S, "pro": PACED_INTERVAL_S}}}
    with bench_environment(["miniviz"], config) as (emu, tmp):
        svc = emu["miniviz"]
        blocks = save_blocks(emu, miniviz={"data_interval_seconds": PACED_INTERVAL_S})
        run = run_flow(FLOW, _flow_args(tmp, source, blocks, label_column="label_key"))
        received = svc.received()
        arrivals = _arrivals(svc)
    gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(gaps) else 0.0
    allowed = 1 / PACED_INTERVAL_S
    summary = run.summary
    return {
        "events": PACED_EVENTS,
        "events_sent": summary["events_sent"],
        "accepted_by_emulator": received["accepted"].get("data", 0),
        "http_429": received["rejected_by_status"].get("429", 0),
        "non_2xx": received["rejected_by_status"],
        "interval_ms": PACED_INTERVAL_S * 1000,
        "achieved_events_per_s": round(achieved, 2),
        "allowed_events_per_s": allowed,
        "ratio": round(achieved / allowed, 4),
        # the typical cycle, insensitive to stalls of a busy machine (a diagnostic, not the target's measure)
        "ratio_of_median_gap": round(PACED_INTERVAL_S / statistics.median(gaps), 4) if gaps else None,
        "gap_ms_min": round(gaps[0] * 1000, 3) if gaps else None,
        "gap_ms_p50": round(statistics.median(gaps) * 1000, 3) if gaps else None,
        "gap_ms_p90": round(percentile(gaps, 0.9) * 1000, 3) if gaps else None,
        "gap_ms_p99": round(percentile(gaps, 0.99) * 1000, 3) if gaps else None,
        "gap_ms_max": round(gaps[-1] * 1000, 3) if gaps else None,
        "send_timing": summary.get("send_timing"),
        "task_runs": run.task_runs,
        "wall_s": round(run.wall_s, 1),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        **run.cpu_figures(),
        "targets": "ratio >= 0.95 of the allowed rate, zero 429s",
    }


@scenario("backfill_memory_5m", "5,000,000-row CSV in plan mode (dry run): the flow's peak RSS")
def backfill_memory_5m() -> dict[str, Any]:
    source = history_csv(MEMORY_ROWS)
    with bench_environment(["miniviz"], {}) as (emu, tmp):
        blocks = save_blocks(emu)
        run = run_flow(FLOW, _flow_args(tmp, source, blocks, label_column="label_key", dry_run=True))
        requests_seen = emu["miniviz"].received()["requests"]
    summary = run.summary
    return {
        "rows": summary["rows"],
        "events_planned": summary["events_to_send"],
        "rows_rejected": summary["rows_rejected"],
        "requests_to_miniviz": sum(requests_seen.values()),
        "csv_mb": round(source.stat().st_size / 2**20, 1),
        "wall_s": round(run.wall_s, 1),
        "rows_per_s": round(summary["rows"] / run.wall_s),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        **run.cpu_figures(),
        "targets": "peak RSS <= 400 MB",
    }
