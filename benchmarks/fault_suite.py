"""Scenario ``fault_suite``: each flow fault-free, then against emulators with the issue's mixed faults.

Emulators on a 0.1 time scale, so the faults scale with them: 5 % 503s, bursts of three 429s with
Retry-After 5 s (0.5 s here) every 40 requests, 2 s latency spikes (0.2 s) on 10 % of requests, 2 % of
connections dropped before they are handled, and a 30 s outage (3 s) starting mid-run (after a number of
requests). Inputs, fault placement and the accounting are the fault suite's own (``tests/reliability/
faultkit.py``), so the figures here are judged exactly like ``tests/reliability/test_faults.py`` judges them.

Per flow: items, done / rejected / failed, lost (items not accounted for), duplicates (the emulators'
counts of side effects received twice), the client retries (counted from the clients' "retrying in" lines
in the flow process) and the injected faults, and the time overhead: wall time with faults / fault-free.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from tests.reliability.faultkit import CASES, EMULATOR_CONFIG, SERVICES, clear, inject, save_blocks

from .flow_runner import bench_environment, run_flow_script
from .harness import scenario

TIME_SCALE = 0.1
REPEATS = int(os.environ.get("BENCH_FAULT_REPEATS", "3"))  # runs per flow and profile; the median counts

# The flow in a subprocess, like flow_runner.run_flow, but counting the client retries it logs.
FLOW_SCRIPT = """
import asyncio, importlib, json, sys, time
from tests.reliability.faultkit import RetryCounter

async def main():
    module, name = sys.argv[1].split(":")
    flow = getattr(importlib.import_module(module), name)
    with RetryCounter() as counter:
        t0 = time.perf_counter()
        state = await flow(**json.loads(sys.argv[2]), return_state=True)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "state": state.type.value, "message": state.message,
            "retries": dict(counter.retries)}

if __name__ == "__main__":
    print("RESULT " + json.dumps(asyncio.run(main())))
"""


def _one_run(emu: Any, case: Any, tmp: Path, blocks: dict[str, str], label: str, faults: bool) -> dict:
    clear(emu)
    workdir = tmp / f"{case.name}-{label}"
    workdir.mkdir()
    run = case.prepare(emu, workdir, blocks, TIME_SCALE)
    if faults:
        inject(emu, case.faults())
    result = run_flow_script(FLOW_SCRIPT, case.target, run.args, timeout=900)
    acc = case.account(emu, run)
    return {**result, "accounting": acc}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _flow_figures(emu: Any, case: Any, tmp: Path, blocks: dict[str, str]) -> dict[str, Any]:
    clean = [_one_run(emu, case, tmp, blocks, f"clean{i}", faults=False) for i in range(REPEATS)]
    faulty = [_one_run(emu, case, tmp, blocks, f"faults{i}", faults=True) for i in range(REPEATS)]
    last = faulty[-1]
    acc = last["accounting"]
    clean_wall = _median([r["wall_s"] for r in clean])
    fault_wall = _median([r["wall_s"] for r in faulty])
    return {
        "items": acc.items,
        "done": acc.done,
        "rejected": acc.rejected,
        "failed": acc.failed,
        "lost": max(r["accounting"].lost for r in faulty),  # the worst of the repeats
        "duplicates": max(r["accounting"].duplicate_count for r in faulty),
        "duplicate_bound": acc.duplicate_bound,
        "retries": sum(last["retries"].values()),
        "retries_by_service": last["retries"],
        "faults_injected": acc.faults_injected,
        "requests": acc.requests,
        "requests_fault_free": clean[-1]["accounting"].requests,
        "state": last["state"],
        "state_fault_free": clean[-1]["state"],
        "wall_s_fault_free": round(clean_wall, 2),
        "wall_s_faults": round(fault_wall, 2),
        "overhead_ratio": round(fault_wall / clean_wall, 2),
        "failures": acc.failures[:5],
        "problems": acc.problems[:5],
        "fault_free_lost": max(r["accounting"].lost for r in clean),
    }


@scenario("fault_suite", "each flow fault-free vs with 503s, 429 bursts, latency, drops, an outage")
def fault_suite() -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    with bench_environment(SERVICES, EMULATOR_CONFIG, TIME_SCALE) as (emu, tmp):
        blocks = asyncio.run(save_blocks(emu, TIME_SCALE))
        flows = {name: _flow_figures(emu, case, tmp, blocks) for name, case in CASES.items()}
    return {
        "flows": flows,
        "items": sum(f["items"] for f in flows.values()),
        "lost": sum(f["lost"] + f["fault_free_lost"] for f in flows.values()),
        "duplicates": sum(f["duplicates"] for f in flows.values()),
        "retries": sum(f["retries"] for f in flows.values()),
        "ratio": max(f["overhead_ratio"] for f in flows.values()),
        "load_average_1m_at_start": round(load_at_start, 2),
        "settings": (
            f"time scale {TIME_SCALE}; faults per emulator: 5 % 503, 3 x 429 (Retry-After 5 s) every 40 "
            "requests, 2 s latency on 10 %, 2 % dropped before handling, 30 s outage after N requests "
            "(tests/reliability/faultkit.py: mixed_faults); ratio = the slowest flow's wall time with faults / "
            f"fault-free; {REPEATS} run(s) per flow and profile (median)"
        ),
        "targets": "lost = 0, duplicates = 0 (no answer is lost after processing in this profile)",
    }
