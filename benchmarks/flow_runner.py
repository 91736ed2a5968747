"""What the flow scenarios share: emulators + a temporary Prefect server, blocks, and the flow run itself.

The flow runs in a SUBPROCESS against the temporary server, so its wall time and peak RSS are its own (not
the benchmark's, which holds baselines, emulator handles and the server harness). Task runs are counted
afterwards through the Prefect API. CPU seconds spent during the run are recorded per process (the flow,
each emulator, the Prefect server) and for the whole machine, whose other work shows as the remainder: on a
2-core machine that is often where the time went.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulators.launcher import RunningEmulators, running_emulators

REPO_ROOT = Path(__file__).resolve().parents[1]

# Block parameter of the flows, per emulated service.
BLOCK_PARAMETERS = {
    "micrio": "micrio_block",
    "miniviz": "miniviz_block",
    "viziosense": "viziosense_block",
    "haut": "haut_block",
    "s3": "s3_bucket_block",
}

FLOW_SCRIPT = """
import asyncio, importlib, json, resource, sys, time
from benchmarks.flow_runner import machine_busy_seconds
from benchmarks.harness import peak_rss_mb

module, name = sys.argv[1].split(":")
flow = getattr(importlib.import_module(module), name)

def cpu():  # the flow's process and the children it has reaped (e.g. the harvest's fit workers)
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usages)

async def main():
    t0, cpu0, machine0 = time.perf_counter(), cpu(), machine_busy_seconds()
    state = await flow(**json.loads(sys.argv[2]), return_state=True)
    wall, cpu_s, machine_s = time.perf_counter() - t0, cpu() - cpu0, machine_busy_seconds() - machine0
    summary = await state.aresult()  # raises if the flow run failed
    return {"summary": summary.model_dump(mode="json"), "wall_s": wall, "peak_rss_mb": peak_rss_mb(),
            "flow_run_id": str(state.state_details.flow_run_id), "cpu": {"flow": cpu_s, "machine": machine_s}}

print("RESULT " + json.dumps(asyncio.run(main())))
"""


@dataclass
class FlowRun:
    summary: dict[str, Any]
    wall_s: float
    peak_rss_mb: float
    flow_run_id: str
    task_runs: int
    # CPU seconds while the flow ran: the flow process (with the worker processes it started), the machine (all cores), each emulator, the Prefect
    # server, this process ("bench"), and "other": the machine's remainder (other work on the machine).
    cpu_s: dict[str, float]

    def cpu_figures(self) -> dict[str, float]:
        """``cpu_s_<process>`` figures for a scenario's result, and ``cpu_floor_s``: the CPU seconds of the
        flow, the emulators and the server spread over every core (the wall time this work needs at best)."""
        import psutil

        ours = sum(v for k, v in self.cpu_s.items() if k not in ("machine", "other"))
        figures = {f"cpu_s_{name}": round(seconds, 1) for name, seconds in self.cpu_s.items()}
        return {**figures, "cpu_floor_s": round(ours / (psutil.cpu_count() or 1), 1)}


@contextlib.contextmanager
def bench_environment(
    only: list[str], config: dict[str, Any], time_scale: float = 1.0
) -> Iterator[tuple[RunningEmulators, Path]]:
    """A temporary Prefect server, the emulators ``only`` started with ``config``, and a scratch folder."""
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        config_path = Path(tmp) / "emulators.json"
        config_path.write_text(json.dumps(config))
        with running_emulators(only=only, config_path=str(config_path), time_scale=time_scale) as emu:
            yield emu, Path(tmp)


def save_blocks(
    emu: RunningEmulators, time_scale: float = 1.0, **overrides: dict[str, Any]
) -> dict[str, str]:
    """The demo blocks of every running emulator (``demo.setup``), with ``overrides`` per service
    (e.g. ``micrio={"parallel_connections": 2}``); returns flow parameters, e.g. ``{"s3_bucket_block": ...}``."""
    from demo.setup import save_demo_blocks

    async def save() -> dict[str, str]:
        saved = await save_demo_blocks(emu, time_scale)
        for service, changes in overrides.items():
            block = await _block_type(service).aload(saved[service])
            for field, value in changes.items():
                setattr(block, field, value)
            await block.asave(saved[service], overwrite=True)
        return {BLOCK_PARAMETERS[service]: name for service, name in saved.items()}

    return asyncio.run(save())


def _block_type(service: str) -> Any:
    from prefect_aws import S3Bucket

    from blocks import HautCredentials, MicrioCredentials, MinivizCredentials, VizioSenseCredentials

    types = {
        "micrio": MicrioCredentials,
        "miniviz": MinivizCredentials,
        "viziosense": VizioSenseCredentials,
        "haut": HautCredentials,
        "s3": S3Bucket,
    }
    return types[service]


def run_flow_script(script: str, target: str, args: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script`` (which prints ``RESULT <json>``) for flow ``module:flow`` with ``args`` in a subprocess
    against the current (temporary) Prefect API; returns that JSON."""
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, target, json.dumps(args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if os.environ.get("BENCH_FLOW_LOG"):  # where the time went: the flow's own log, appended to this file
        with open(os.environ["BENCH_FLOW_LOG"], "a") as fh:
            fh.write(proc.stderr)
    if proc.returncode != 0 or "RESULT " not in proc.stdout:
        raise RuntimeError(f"flow {target} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def run_flow(target: str, args: dict[str, Any], timeout: float = 1800) -> FlowRun:
    """Run ``module:flow`` with ``args`` in a subprocess (``run_flow_script``): its figures and CPU use."""
    before = _cpu_by_process()
    result = run_flow_script(FLOW_SCRIPT, target, args, timeout)
    after = _cpu_by_process()
    # Emulators and server are counted over the subprocess's life: they idle while it starts up.
    cpu = {**result.pop("cpu"), **{k: after[k] - before.get(k, 0.0) for k in after}}
    cpu["other"] = cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine")
    return FlowRun(**result, task_runs=asyncio.run(count_task_runs(result["flow_run_id"])), cpu_s=cpu)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy so far (all cores, idle and I/O wait excluded)."""
    import psutil

    t = psutil.cpu_times()._asdict()
    not_busy = ("idle", "iowait", "guest", "guest_nice")  # guest time is already counted in user and nice
    return sum(v for k, v in t.items() if k not in not_busy)


def _cpu_by_process() -> dict[str, float]:
    """CPU seconds used so far by this process and by its descendants that are emulators (by service name)
    or the temporary Prefect server."""
    import psutil

    me = psutil.Process()
    out = {"bench": me.cpu_times().user + me.cpu_times().system}
    for proc in me.children(recursive=True):
        try:
            cmd, times = proc.cmdline(), proc.cpu_times()
        except psutil.Error:
            continue
        if "--service" in cmd:
            name = cmd[cmd.index("--service") + 1]
        elif "prefect.server.api.server:create_app" in cmd:
            name = "prefect_server"
        else:
            continue
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


async def count_task_runs(flow_run_id: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    count = 0
    async with get_client() as client:
        while True:
            page = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=count
            )
            count += len(page)
            if len(page) < 200:
                return count
