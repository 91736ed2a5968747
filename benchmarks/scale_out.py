"""Scenario ``scale_out``: the Micrio migration beyond one process, and how it grows with the job.

Two parts, one emulator process (Micrio + S3) and one production-shaped Prefect server (PostgreSQL + Redis):

1. Growth table: the single-process migration (no fan-out, ``run_flow`` as ``micrio_migration_10k``) at each
   size of ``BENCH_SCALE_SIZES`` (default 1,000 / 10,000 / 100,000 images): wall time divided by the
   emulator's bound (its first image added to its last ready, as it measured it), the flow process's peak
   RSS, the journal's size and its replay time (reading it back and replaying it into the run's items, timed
   in this process after the run), and status calls per image.
2. Fan-out: the same job of ``BENCH_SCALE_FAN_IMAGES`` images (default 30,000) in shards of
   ``BENCH_SCALE_SHARD_SIZE`` (default 10,000), started through the API on the ``micrio-migration``
   deployment, once with 1 process worker and once with 3 (each in a directory of its own, each running at
   most ``BENCH_SCALE_WORKER_LIMIT`` flow runs at once, default 2: a small machine, so 1 worker runs the
   parent and one shard at a time, 3 workers run every shard side by side). The emulator is reset and the
   state root is a fresh S3 prefix per run, so nothing resumes.

Fan-out figures: ``ratio`` (the scenario's headline) is the wall time with 1 worker divided by the wall time
with 3; per run, wall (parent created to parent final, as this process saw it) / the emulator's bound, task
runs of the parent and its shards, which worker ran each shard, ``overhead_s_per_shard`` ((wall - bound) /
shards) and where that time went (the runs' pickup and run times, from the server's timestamps).

Emulator (both parts): Micrio ``max_concurrent`` 1,000, each stage 0.1 s (0.4 s per image); flow options as
``micrio_migration_10k`` (batches of 100, polling 1-3 s, two Micrio connections). Goals (from the issue):
wall / bound <= 1.1 at 100k, peak RSS <= 500 MB, journal replay <= 5 s, and with 3 workers wall <= 1.1 x the
emulator's bound.

Settings (environment): ``BENCH_SCALE_SIZES`` (default ``1000,10000,100000``), ``BENCH_SCALE_FAN_IMAGES``
(30000; when it is one of the sizes, the fan-out reads that size's objects instead of uploading its own),
``BENCH_SCALE_SHARD_SIZE`` (10000), ``BENCH_SCALE_WORKER_LIMIT`` (2), ``BENCH_SCALE_TIMEOUT`` (3600 s per
run, a hang guard), ``BENCH_SCALE_LOGS`` (a folder to copy the server's and workers' logs to). Uploading is
slow (the S3 emulator took about 120-150 PUTs/s on a busy 2-core machine), so a quick run is e.g.
``BENCH_SCALE_SIZES=300,1000 BENCH_SCALE_FAN_IMAGES=1500 BENCH_SCALE_SHARD_SIZE=500``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import yaml

from demo.setup import s3_client
from emulators.launcher import RunningEmulators, running_emulators

from .flow_runner import REPO_ROOT, count_task_runs, run_flow, save_blocks
from .harness import scenario
from .micrio_migration import _tiny_jpeg

SIZES = [int(n) for n in os.environ.get("BENCH_SCALE_SIZES", "1000,10000,100000").split(",")]
FAN_IMAGES = int(os.environ.get("BENCH_SCALE_FAN_IMAGES", "30000"))
SHARD_SIZE = int(os.environ.get("BENCH_SCALE_SHARD_SIZE", "10000"))
WORKER_LIMIT = int(os.environ.get("BENCH_SCALE_WORKER_LIMIT", "2"))
WORKER_COUNTS = (1, 3)
# The fan-out job reads the growth table's objects when it has a size of its own (uploads are the slow part).
FAN_PREFIX = f"grow-{FAN_IMAGES}" if FAN_IMAGES in SIZES else "fan"
TIMEOUT = float(os.environ.get("BENCH_SCALE_TIMEOUT", "3600"))  # per flow run: a hang guard only

# 1,000 images at once, 0.4 s each: the emulator alone could finish 100k in 40 s, so its bound is set by how
# fast images reach it (the flow, and the S3 emulator it fetches them from), not by a queue of its own.
MAX_CONCURRENT = 1000
STAGE_SECONDS = 0.1
BUCKET = "demo-bucket"
UPLOAD_THREADS = 32
POOL = "scale-out"
PARENT = "micrio-migration/micrio-migration"
SHARD_DEPLOYMENT = "micrio-migration-shard"
ADDING = {"batch_size": 100}
POLLING = {"initial_seconds": 1.0, "max_seconds": 3.0}


def _emulator_config() -> dict[str, Any]:
    stages = dict.fromkeys(("downloading", "processing", "tiling", "storing"), STAGE_SECONDS)
    return {"micrio": {"max_concurrent": MAX_CONCURRENT, "stage_durations": stages}}


def _upload(emu: RunningEmulators, prefix: str, n: int) -> None:
    from botocore.config import Config

    c = emu["s3"].credentials
    s3 = boto3.client("s3", endpoint_url=emu["s3"].url, config=Config(max_pool_connections=UPLOAD_THREADS),
                      **{k: c[k] for k in ("aws_access_key_id", "aws_secret_access_key", "region_name")})  # fmt: skip
    body = _tiny_jpeg()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        keys = (f"{prefix}/img-{i:06d}.jpg" for i in range(n))
        list(pool.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=body), keys))


def _emulator_figures(emu: RunningEmulators, images: int) -> dict[str, Any]:
    """The emulator's bound and the status calls it answered, then a reset for the next run."""
    got = emu["micrio"].received()
    requests = got["requests"]
    status_calls = requests.get("POST /v2/folder/status", 0) + requests.get("POST /v2/image/status", 0)
    span = got["state"]["first_added_to_last_ready"] or {"real_seconds": float("nan")}
    emu["micrio"].reset()
    return {
        "bound_s": span["real_seconds"],
        "ready": got["state"]["by_status"]["ready"],
        "status_calls_per_image": round(status_calls / images, 4),
    }


# --- the production-shaped stack --------------------------------------------------------------------------


@dataclass
class Stack:
    api_url: str
    group: Any  # tests.reliability.prefect_stack.ProcessGroup
    tmp: Path
    client_env: dict[str, str]

    def add_workers(self, count: int) -> None:
        """Start workers until there are ``count``, each in a directory of its own (another machine)."""
        from tests.reliability.prefect_stack import child_env

        have = len(self.workers())
        for n in range(have + 1, count + 1):
            workdir = self.tmp / f"machine-{n}"
            workdir.mkdir()
            env = child_env(self.tmp / f"worker-{n}-home", self.api_url)
            self.group.start_worker(f"worker-{n}", env, POOL, WORKER_LIMIT, workdir)

    def workers(self) -> list[Any]:
        return [c for c in self.group.children if c.name.startswith("worker-")]

    def deploy(self) -> None:
        """The two Micrio migration deployments of prefect.yaml, on this stack's pool."""
        from tests.reliability.prefect_stack import prefect_cli

        project = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
        project["deployments"] = [
            {**d, "work_pool": {"name": POOL, "work_queue_name": "default"}}
            for d in project["deployments"]
            if d["name"] in ("micrio-migration", SHARD_DEPLOYMENT)
        ]
        path = self.tmp / "prefect-scale-out.yaml"
        path.write_text(yaml.safe_dump(project, sort_keys=False))
        prefect_cli("--no-prompt", "deploy", "--all", "--prefect-file", str(path), env=self.client_env)

    @contextlib.contextmanager
    def api(self) -> Iterator[None]:
        """This process talks to the stack's server (blocks, variables, run_flow's subprocess)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            yield


@contextlib.contextmanager
def production_stack(tmp: Path) -> Iterator[Stack]:
    """A Prefect server on a fresh PostgreSQL database and Redis logical database, and its work pool;
    workers are added by ``Stack.add_workers``. Everything is stopped and dropped at the end."""
    from tests.reliability.prefect_stack import production_server

    with production_server(tmp, POOL, "prefect_bench") as (api_url, group, client_env):
        try:
            yield Stack(api_url, group, tmp, client_env)
        finally:
            if os.environ.get("BENCH_SCALE_LOGS"):  # where the time went: the server's and workers' logs
                shutil.copytree(tmp / "logs", os.environ["BENCH_SCALE_LOGS"], dirs_exist_ok=True)


# --- growth table -----------------------------------------------------------------------------------------


def _replay_seconds(emu: RunningEmulators, source: str, journal: str) -> tuple[float, int]:
    """Seconds to read the run's journal back and replay it into the run's items (listed beforehand, not
    timed), and how many records it holds."""
    from flows.micrio_migration.run_journal import replay
    from flows.micrio_migration.sources import read_sources
    from tasks.journal import Journal

    items = {i.key: i for i in read_sources(source, s3_client(emu)).items}
    t0 = time.perf_counter()
    records = Journal(journal).read()
    replay(records, items)
    return time.perf_counter() - t0, len(records)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _grow(emu: RunningEmulators, blocks: dict[str, str], images: int, tmp: Path) -> dict[str, Any]:
    """One single-process migration of ``images`` images and its figures."""
    work = tmp / f"grow-{images}"
    source, journal = f"s3://{BUCKET}/grow-{images}/", work / "journal.jsonl"
    args = {
        "source": source,
        "target": {"folder_id": emu["micrio"].credentials["root_folder_id"]},
        "adding": ADDING,
        "polling": POLLING,
        "outputs": {"journal": str(journal), "report": str(work / "report.parquet")},
        **blocks,
    }
    run = run_flow("flows.micrio_migration:migrate_to_micrio", args, timeout=TIMEOUT)
    emulator = _emulator_figures(emu, images)
    replay_s, records = _replay_seconds(emu, source, str(journal))
    return {
        "images": images,
        "done": run.summary["done"],
        "wall_s": round(run.wall_s, 1),
        "bound_s": round(emulator["bound_s"], 1),
        "wall_over_bound": round(run.wall_s / emulator["bound_s"], 3),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "journal_bytes": journal.stat().st_size,
        "journal_records": records,
        "folder_index_bytes": _folder_bytes(work / "folders"),
        "replay_s": round(replay_s, 2),
        "status_calls_per_image": emulator["status_calls_per_image"],
        "task_runs": run.task_runs,
    }


# --- fan-out ----------------------------------------------------------------------------------------------


async def _run_parent(api_url: str, parameters: dict[str, Any]) -> tuple[Any, float, list[Any], int]:
    """Start the parent through the API and wait for it: its final run, wall seconds from creation to its
    final state, its shards' runs (reruns included) and the task runs of all of them."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with PrefectClient(api_url) as client:
        deployment = await client.read_deployment_by_name(PARENT)
        t0 = time.perf_counter()
        parent = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        deadline = time.monotonic() + TIMEOUT
        while not (parent.state and parent.state.is_final()) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            parent = await client.read_flow_run(parent.id)
        wall = time.perf_counter() - t0
        name = f"{parent.name}-{str(parent.id)[:8]}-shard-"  # tasks.fan_out names shards after their parent
        shards = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=name))
        )
    task_runs = 0
    for run in [parent, *shards]:
        task_runs += await count_task_runs(str(run.id))
    return parent, wall, shards, task_runs


def _shards_per_worker(shards: list[Any]) -> dict[str, int]:
    """Which worker ran each shard run (the worker labels the runs it submits)."""
    counts: dict[str, int] = {}
    for run in shards:
        name = (run.labels or {}).get("prefect.worker.name", "unknown")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _timeline(parent: Any, shards: list[Any]) -> dict[str, float]:
    """Where the fan-out's time went, from the runs' server-side timestamps: the parent's pickup (created to
    Running: a worker's poll and its process start), when its shards were created, their pickup and run
    times, and the parent's tail (last shard finished to parent finished: reading reports, one report)."""

    def seconds(a: Any, b: Any) -> float:
        return round((b - a).total_seconds(), 1) if a and b else float("nan")

    pickups = [seconds(s.created, s.start_time) for s in shards]
    runs = [seconds(s.start_time, s.end_time) for s in shards]
    return {
        "parent_pickup_s": seconds(parent.created, parent.start_time),
        "shards_created_after_s": seconds(parent.created, min(s.created for s in shards)),
        "shard_pickup_s_mean": round(sum(pickups) / len(pickups), 1),
        "shard_pickup_s_max": max(pickups),
        "shard_run_s_mean": round(sum(runs) / len(runs), 1),
        "shard_run_s_max": max(runs),
        "parent_tail_s": seconds(max(s.end_time for s in shards), parent.end_time),
    }


def _fan_out(stack: Stack, emu: RunningEmulators, s3_block: str, micrio_block: str, workers: int) -> dict:
    """The fanned-out job with ``workers`` workers, from a fresh state root."""
    from prefect.variables import Variable

    from tasks.state import STATE_VARIABLE

    stack.add_workers(workers)
    root = f"s3://{BUCKET}/state-{workers}w-{secrets.token_hex(3)}"
    with stack.api():
        Variable.set(STATE_VARIABLE, {"root": root, "s3_bucket_block": s3_block}, overwrite=True)
    parameters = {
        "source": f"s3://{BUCKET}/{FAN_PREFIX}/",
        "target": {"kind": "existing", "folder_id": emu["micrio"].credentials["root_folder_id"]},
        "micrio_block": micrio_block,
        "s3_bucket_block": s3_block,
        "adding": ADDING,
        "polling": POLLING,
        "fan_out": {"shard_size": SHARD_SIZE},
    }
    with stack.api():
        parent, wall, shards, task_runs = asyncio.run(_run_parent(stack.api_url, parameters))
    if not parent.state.is_completed():
        raise RuntimeError(
            f"fan-out with {workers} worker(s) ended {parent.state.name}: {parent.state.message}"
        )
    emulator = _emulator_figures(emu, FAN_IMAGES)
    return {
        "workers": workers,
        "wall_s": round(wall, 1),
        "bound_s": round(emulator["bound_s"], 1),
        "wall_over_bound": round(wall / emulator["bound_s"], 3),
        "ready": emulator["ready"],
        "shard_runs": len(shards),
        "shards_per_worker": _shards_per_worker(shards),
        "task_runs": task_runs,
        "overhead_s_per_shard": round((wall - emulator["bound_s"]) / max(1, len(shards)), 1),
        **_timeline(parent, shards),
        "status_calls_per_image": emulator["status_calls_per_image"],
    }


def _print_table(growth: list[dict[str, Any]], fan: list[dict[str, Any]]) -> None:
    """The growth table and the fan-out runs, as the run goes (results.json holds every figure)."""
    print(f"{'images':>8} {'wall s':>8} {'bound s':>8} {'wall/bound':>10} {'RSS MB':>8} {'journal B':>11}"
          f" {'replay s':>8} {'status/img':>10}")  # fmt: skip
    for r in growth:
        print(f"{r['images']:>8} {r['wall_s']:>8} {r['bound_s']:>8} {r['wall_over_bound']:>10} {r['peak_rss_mb']:>8}"
              f" {r['journal_bytes']:>11} {r['replay_s']:>8} {r['status_calls_per_image']:>10}")  # fmt: skip
    for r in fan:
        print(f"fan-out, {r['workers']} worker(s): wall {r['wall_s']} s, bound {r['bound_s']} s, wall/bound"
              f" {r['wall_over_bound']}, task runs {r['task_runs']}, shards per worker {r['shards_per_worker']}")  # fmt: skip


# --- the scenario -----------------------------------------------------------------------------------------


def _saved_blocks(stack: Stack, emu: RunningEmulators) -> dict[str, str]:
    with stack.api():
        return save_blocks(emu, micrio={"parallel_connections": 2})


@scenario(
    "scale_out",
    "Micrio migration: 1 vs 3 workers on a fanned-out job, and growth at 1k/10k/100k images (single process)",
)
def scale_out() -> dict[str, Any]:
    uploads = {f"grow-{n}": n for n in SIZES} | {FAN_PREFIX: FAN_IMAGES}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "emulators.json"
        config.write_text(json.dumps(_emulator_config()))
        with (
            running_emulators(only=["micrio", "s3"], config_path=str(config)) as emu,
            production_stack(tmp) as stack,
        ):
            t0 = time.perf_counter()
            for prefix, n in uploads.items():
                _upload(emu, prefix, n)
            upload_s = time.perf_counter() - t0
            print(f"uploaded {sum(uploads.values())} objects in {upload_s:.0f} s", flush=True)
            blocks = _saved_blocks(stack, emu)
            with stack.api():  # before the fan-out part sets pipelines_state: journals stay local
                growth = [_grow(emu, blocks, n, tmp) for n in SIZES]
            stack.deploy()
            s3_block, micrio_block = blocks["s3_bucket_block"], blocks["micrio_block"]
            fan = {w: _fan_out(stack, emu, s3_block, micrio_block, w) for w in WORKER_COUNTS}
    one, three = fan[WORKER_COUNTS[0]], fan[WORKER_COUNTS[-1]]
    _print_table(growth, [one, three])
    figures: dict[str, Any] = {
        "ratio": round(one["wall_s"] / three["wall_s"], 3),
        "three_workers_wall_over_bound": three["wall_over_bound"],
    }
    figures |= {f"wall_over_bound_{row['images']}": row["wall_over_bound"] for row in growth}
    return {
        **figures,
        "peak_rss_mb": max(row["peak_rss_mb"] for row in growth),
        "growth": growth,
        "fan_out": {
            "images": FAN_IMAGES,
            "shard_size": SHARD_SIZE,
            "worker_limit": WORKER_LIMIT,
            "one_worker": one,
            "three_workers": three,
        },
        "emulator": f"micrio max_concurrent={MAX_CONCURRENT}, stages {STAGE_SECONDS} s each (0.4 s per image)",
        "flow_options": f"adding {ADDING}, polling {POLLING}, micrio parallel_connections 2",
        "upload_s": round(upload_s, 1),
        "ratio_means": "wall with 1 worker / wall with 3 workers, same job and emulator config",
        "targets": "wall/bound <= 1.1 at 100k, peak RSS <= 500 MB, replay <= 5 s; 3 workers: wall <= 1.1 x bound",
    }
