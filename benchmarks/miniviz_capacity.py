"""Scenario ``miniviz_capacity``: how many data events/s the Miniviz emulator takes (rate limit off).

Later flow benchmarks divide their throughput by these figures, so the emulator is never mistaken for
the bottleneck. Several load shapes are measured because one httpx client is itself a limit.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulators.launcher import running_emulators

from .harness import peak_rss_mb, scenario
from .load import run_load

TOTAL = 4000
SHAPES = [  # (label, clients per process, in flight per process, processes)
    ("1 client, 1 in flight", 1, 1, 1),
    ("1 client, 4 in flight", 1, 4, 1),
    ("1 client, 32 in flight", 1, 32, 1),
    ("8 clients, 32 in flight", 8, 32, 1),
    ("2 processes x 4 clients, 16 in flight", 4, 16, 2),
]


@dataclass
class DataEvent:
    """Picklable request factory: one distinct, valid data event per index."""

    url: str
    token: str

    def __call__(self, i: int) -> tuple[str, str, dict[str, Any]]:
        body = {
            "timestamp": 1_731_129_600_000 + i,
            "label_key": f"bench_{i % 50}",
            "payload": {"temperature": 20 + i % 10, "humidity": 50, "status": "ok"},
        }
        return "POST", self.url, {"json": body, "headers": {"Authorization": f"Bearer {self.token}"}}


@scenario("miniviz_capacity", "Miniviz emulator data endpoint, rate limit off, raw async httpx load")
def miniviz_capacity() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "emulators.json"
        config.write_text(json.dumps({"miniviz": {"data_interval": {"free": 0, "pro": 0}}}))
        with running_emulators(only=["miniviz"], config_path=str(config)) as emu:
            svc = emu["miniviz"]
            project = svc.credentials["projects"][0]
            make = DataEvent(f"{svc.url}/api/project/{project['project_id']}", project["token"])
            run_load(make, 300, 1, 4)  # warm-up
            emulator_pid = _service_pid(emu.proc.pid)
            shapes = {}
            for label, clients, in_flight, procs in SHAPES:
                cpu_before = _cpu_seconds(emulator_pid)
                shapes[label] = run_load(make, TOTAL, clients, in_flight, procs)
                # Server CPU per request: what one core of emulator could take if the client were free.
                cpu = _cpu_seconds(emulator_pid) - cpu_before
                shapes[label]["server_cpu_ms_per_request"] = round(cpu / TOTAL * 1000, 3)
            emulator_rss = round(peak_rss_mb(emulator_pid), 1) if emulator_pid else None
            received = svc.received()
    best_label, best = max(shapes.items(), key=lambda kv: kv[1]["rps"])
    non_200 = {
        label: s["statuses"]
        for label, s in shapes.items()
        if set(s["statuses"]) != {"200"} or s["transport_errors"]
    }
    cpu_ms = min(s["server_cpu_ms_per_request"] for s in shapes.values())
    return {
        "capacity_rps": best["rps"],
        "server_cpu_ms_per_request": cpu_ms,
        "server_one_core_capacity_rps": round(1000 / cpu_ms) if cpu_ms else None,
        "capacity_shape": best_label,
        "p50_ms": best["p50_ms"],
        "p99_ms": best["p99_ms"],
        "client_limit_rps_1_client_4_in_flight": shapes["1 client, 4 in flight"]["rps"],
        "accepted_by_emulator": received["accepted"].get("data", 0),
        "non_200": non_200,
        "emulator_peak_rss_mb": emulator_rss,
        "shapes": shapes,
        "target": ">= 1500 requests/s",
    }


def _cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _service_pid(supervisor_pid: int) -> int | None:
    import psutil

    children = psutil.Process(supervisor_pid).children()
    return children[0].pid if children else None
