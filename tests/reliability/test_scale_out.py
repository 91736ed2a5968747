"""Scale-out on Prefect's own engines, in the topology of docs/production.md, with results identical to one
process doing all the work.

The reference: the migration and the backfill run once each, in this process with the default task runner,
over every partition. Then:

(a) The production topology, as far as one machine allows: PostgreSQL (a new database on 127.0.0.1:5432),
    Redis for messaging, the event cache, causal ordering, concurrency leases, the services' task queue
    and worker cleanup deliveries; two API replicas (``--no-services``) and one ``prefect server services
    start``; two process workers, each talking to its own replica; journals, reports and flow results on
    S3. Both flows split into disjoint partitions, one deployment run per partition, shared by the two
    workers: same items, same outcomes, same emulator-received counts, no duplicate.
(b) ``DaskTaskRunner`` on a ``LocalCluster`` of worker processes: the same two flows, same results.

Without PostgreSQL or Redis on this machine (a) skips and says which is missing; CI (``.ci/run``) sets
``PIPELINES_REQUIRE_PRODUCTION_SERVICES=1``, under which their absence fails it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from prefect_aws import S3Bucket
from pydantic import SecretStr

from blocks import MicrioCredentials, MinivizCredentials
from demo.setup import emulator_aws_credentials, put_micrio_samples, s3_client
from emulators.launcher import RunningEmulators, running_emulators
from tasks.run_state import IncompleteRun
from tests.reliability.prefect_stack import (
    ROOT,
    ProcessGroup,
    child_env,
    postgres_database,
    prefect_cli,
    process_group,
    production_services,
    production_settings,
    redis_database,
    require_services,
    run_deployments,
)

pytestmark = pytest.mark.integration

TIME_SCALE = 0.02
PARTS = 2
POOL = "scale-out"
BUCKET = "demo-bucket"
MIGRATION = "micrio-migration/micrio-migration"
BACKFILL = "miniviz-backfill/miniviz-backfill"
RESULTS_PREFIX = "prefect-results"
REPORT_KEYS = ["source", "status", "outcome", "error", "width", "height"]


# --- inputs -----------------------------------------------------------------------------------------------


def put_micrio_partitions(emu: RunningEmulators, parts: int) -> None:
    """Per partition (an S3 prefix): 4 photos and a 'jpg' that is a text file (rejected by content)."""
    for k in range(parts):
        put_micrio_samples(emu, prefix=f"scale/part-{k}/", count=4)


def put_history_partitions(emu: RunningEmulators, parts: int) -> None:
    """One CSV per partition, disjoint labels (two sites each), one row that cannot be sent in each."""
    times = pd.date_range("2026-03-01", periods=24, freq="5min", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    for k in range(parts):
        rows = [
            {
                "timestamp": t,
                "label_key": f"site {k}-{side}",
                "temperature": 18 + k + i / 10,
                "door": i % 5 == 0,
            }
            for side in ("a", "b")
            for i, t in enumerate(times)
        ]
        rows.append({"timestamp": "yesterday", "label_key": f"site {k}-a", "temperature": 1, "door": False})
        key = f"scale-history/part-{k}.csv"
        s3_client(emu).put_object(
            Bucket=BUCKET, Key=key, Body=pd.DataFrame(rows).to_csv(index=False).encode()
        )


def migration_params(source: str, tag: str) -> dict[str, Any]:
    return {
        "source": source,
        "target": {"parent_id": "dmRoot", "name": tag},
        "polling": {"initial_seconds": 0.1, "max_seconds": 0.5},
        "outputs": {
            "journal": f"s3://{BUCKET}/scale-out/journals/micrio-{tag}/",
            "report": f"s3://{BUCKET}/scale-out/reports/micrio-{tag}.csv",
        },
    }


def backfill_params(source: str, tag: str) -> dict[str, Any]:
    return {
        "source": source,
        "dry_run": False,
        "events": {"resample": ""},
        "pacing": {"data_interval_seconds": 0},
        "outputs": {
            "journal": f"s3://{BUCKET}/scale-out/journals/backfill-{tag}/",
            "report": f"s3://{BUCKET}/scale-out/reports/backfill-{tag}.csv",
            "dead_letter": f"s3://{BUCKET}/scale-out/reports/backfill-{tag}-dead-letter.csv",
        },
    }


# --- what a run left behind -------------------------------------------------------------------------------


def read_csv(emu: RunningEmulators, uri: str) -> pd.DataFrame:
    key = uri.removeprefix(f"s3://{BUCKET}/")
    return pd.read_csv(io.BytesIO(s3_client(emu).get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def migration_outcomes(emu: RunningEmulators, reports: list[str]) -> list[tuple]:
    """One row per source, without what differs between two migrations of the same images (ids, urls)."""
    frame = pd.concat([read_csv(emu, r) for r in reports], ignore_index=True)
    frame = frame[REPORT_KEYS].astype(str)
    return sorted(map(tuple, frame.to_numpy().tolist()))


def miniviz_events(emu: RunningEmulators) -> list[tuple]:
    project = emu["miniviz"].credentials["projects"][0]["project_id"]
    got = emu["miniviz"].control("GET", "events", params={"project_id": project, "limit": 100_000})
    return sorted(
        (e["label_key"], e["timestamp"], json.dumps(e["payload"], sort_keys=True)) for e in got["events"]
    )


@dataclass
class Observed:
    migration: list[tuple]
    micrio_received: dict[str, Any]
    events: list[tuple]
    miniviz_received: dict[str, Any]
    dead_letters: int


def observe(emu: RunningEmulators, tags: list[str]) -> Observed:
    micrio, miniviz = emu["micrio"].received(), emu["miniviz"].received()
    dead = sum(len(read_csv(emu, backfill_params("", t)["outputs"]["dead_letter"])) for t in tags)
    return Observed(
        migration=migration_outcomes(emu, [migration_params("", t)["outputs"]["report"] for t in tags]),
        # one folder per partition: only the images are compared
        micrio_received={"images": micrio["accepted"]["image"], "duplicates": micrio["duplicates"]},
        events=miniviz_events(emu),
        miniviz_received={"accepted": miniviz["accepted"], "duplicates": miniviz["duplicates"]},
        dead_letters=dead,
    )


# --- the topology -----------------------------------------------------------------------------------------


@dataclass
class Topology:
    emu: RunningEmulators
    group: ProcessGroup
    api_urls: list[str]


def deployment_file(tmp: Path) -> Path:
    """prefect.yaml's migration and backfill on the scale-out pool, with a deployment concurrency limit of 2
    instead of 1 (partitions go to separate Micrio folders, and Miniviz has no rate limit here)."""
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    keep = []
    for deployment in project["deployments"]:
        if deployment["name"] in ("micrio-migration", "miniviz-backfill"):
            deployment["work_pool"] = {"name": POOL, "work_queue_name": "default"}
            deployment["concurrency_limit"] = {"limit": 2, "collision_strategy": "ENQUEUE"}
            keep.append(deployment)
    project["deployments"] = keep
    path = tmp / "prefect-scale-out.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


async def save_blocks(emu: RunningEmulators, prefix: str) -> None:
    """Micrio, Miniviz and S3 blocks named ``<prefix>-micrio`` ...; plus ``<prefix>-results`` (S3 folder for
    flow results)."""
    aws = emulator_aws_credentials(emu["s3"])
    await S3Bucket(bucket_name=BUCKET, credentials=aws).asave(f"{prefix}-s3", overwrite=True)
    await S3Bucket(bucket_name=BUCKET, bucket_folder=RESULTS_PREFIX, credentials=aws).asave(
        f"{prefix}-results", overwrite=True
    )
    m = emu["micrio"].credentials
    await MicrioCredentials(
        organisation_id=m["organisation_id"], api_key=SecretStr(m["api_key"]), base_url=emu["micrio"].url
    ).asave(f"{prefix}-micrio", overwrite=True)
    p = emu["miniviz"].credentials["projects"][0]
    await MinivizCredentials(
        project_id=p["project_id"], token=SecretStr(p["token"]), plan=p["plan"], base_url=emu["miniviz"].url
    ).asave(f"{prefix}-miniviz", overwrite=True)


def blocks_of(prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """Block-name parameters of the migration and of the backfill."""
    s3 = f"{prefix}-s3"
    return (
        {"micrio_block": f"{prefix}-micrio", "s3_bucket_block": s3},
        {"miniviz_block": f"{prefix}-miniviz", "s3_bucket_block": s3},
    )


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("scale-emulators") / "emulators.json"
    config.write_text(json.dumps({"miniviz": {"data_interval": {"free": 0, "pro": 0}}}))
    with running_emulators(
        only=["micrio", "miniviz", "s3"], time_scale=TIME_SCALE, config_path=str(config)
    ) as e:
        put_micrio_partitions(e, PARTS)
        put_history_partitions(e, PARTS)
        yield e


async def run_in_process(emu: RunningEmulators, tag: str, task_runner: Any = None) -> Observed:
    """Both flows in this process, one run each over every partition; what they left behind."""
    from flows.micrio_migration import migrate_to_micrio
    from flows.miniviz_backfill import miniviz_backfill

    for name in ("micrio", "miniviz"):
        emu[name].reset()
    migration, backfill = migrate_to_micrio, miniviz_backfill
    if task_runner is not None:
        migration = migration.with_options(task_runner=task_runner)
        backfill = backfill.with_options(task_runner=task_runner)
    micrio_blocks, miniviz_blocks = blocks_of("scale")
    # Failed, as it must: each partition holds a text file named .jpg
    with contextlib.suppress(IncompleteRun):
        await migration(**migration_params(f"s3://{BUCKET}/scale/", tag), **micrio_blocks)
    # Failed, as it must: each partition holds a row whose timestamp is "yesterday"
    with contextlib.suppress(IncompleteRun):
        await backfill(**backfill_params(f"s3://{BUCKET}/scale-history/", tag), **miniviz_blocks)
    return observe(emu, [tag])


@pytest.fixture(scope="module")
def reference(emu, prefect_harness) -> Observed:
    """The single-process run every scale-out must match: the default task runner, one flow run per flow."""
    asyncio.run(save_blocks(emu, "scale"))
    observed = asyncio.run(run_in_process(emu, "single"))
    assert len(observed.migration) == PARTS * 5
    assert Counter(r[2] for r in observed.migration) == {"done": PARTS * 4, "rejected": PARTS}
    assert observed.micrio_received["duplicates"] == {} and observed.miniviz_received["duplicates"] == {}
    assert len(observed.events) == PARTS * 48 and observed.dead_letters == PARTS
    return observed


@pytest.fixture(scope="module")
def topology(request, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    require_services(production_services())  # skips with the reason, or fails where CI requires them
    tmp = tmp_path_factory.mktemp("scale-out")
    with ExitStack() as stack:
        database = stack.enter_context(postgres_database())
        redis_db = stack.enter_context(redis_database())
        group = stack.enter_context(process_group(tmp / "logs"))
        server_env = child_env(
            tmp / "server-home",
            **production_settings(database, redis_db),
            PREFECT_SERVER_DATABASE_MIGRATE_ON_START="false",  # once, below, not per replica
        )
        migrate = group.start("migrate", ["prefect", "server", "database", "upgrade", "-y"], server_env)
        emu = request.getfixturevalue("emu")  # the emulators start meanwhile
        assert migrate.proc.wait(timeout=300) == 0, migrate.output()[-3000:]
        group.start("services", ["prefect", "server", "services", "start"], server_env)
        api_urls = group.start_servers(["api-1", "api-2"], server_env, services=False)
        client_env = child_env(tmp / "client-home", api_urls[0])
        prefect_cli("work-pool", "create", POOL, "--type", "process", "--overwrite", env=client_env)
        for n, api_url in enumerate(api_urls, 1):  # one per replica, as behind a load balancer
            worker_env = child_env(
                tmp / f"worker-{n}-home",
                api_url,
                # flow results (the run summaries) on S3, readable from any machine
                PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
                PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK="s3-bucket/scale-results",
            )
            group.start_worker(f"worker-{n}", worker_env, POOL, limit=2)
        with ThreadPoolExecutor(1) as pool:
            deploy = ["--no-prompt", "deploy", "--all", "--prefect-file", str(deployment_file(tmp))]
            deployed = pool.submit(prefect_cli, *deploy, env=client_env)
            with temporary_settings({PREFECT_API_URL: api_urls[0]}):
                asyncio.run(save_blocks(emu, "scale"))
            deployed.result()
        yield Topology(emu, group, api_urls)


# --- (a) ----------------------------------------------------------------------------------------------------


def workers_of(group: ProcessGroup, flow_runs: list[Any]) -> dict[str, str]:
    """Which worker ran each flow run, from the workers' own logs. Both workers may claim a run in the same
    instant; the server lets one through and tells the other to abort, which it logs."""
    ids = {str(fr.id) for fr in flow_runs}
    owner: dict[str, str] = {}
    for name, text in group.outputs().items():
        if name.startswith("worker-"):
            claimed = set(re.findall(r"Worker '[^']+' submitting flow run '([0-9a-f-]{36})'", text))
            aborted = set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text))
            for run_id in (claimed - aborted) & ids:
                assert run_id not in owner, f"flow run {run_id} ran on two workers"
                owner[run_id] = name
    return owner


async def test_partitions_over_two_workers_match_one_process(topology: Topology, reference: Observed):
    emu = topology.emu
    for name in ("micrio", "miniviz"):
        emu[name].reset()
    micrio_blocks, miniviz_blocks = blocks_of("scale")
    runs = [
        (MIGRATION, {**migration_params(f"s3://{BUCKET}/scale/part-{k}/", f"part-{k}"), **micrio_blocks})
        for k in range(PARTS)
    ]
    runs += [
        (
            BACKFILL,
            {**backfill_params(f"s3://{BUCKET}/scale-history/part-{k}.csv", f"part-{k}"), **miniviz_blocks},
        )
        for k in range(PARTS)
    ]
    flow_runs = await run_deployments(topology.api_urls[0], runs)
    # Each partition holds a deliberately bad item (a text '.jpg', a 'yesterday' timestamp): every run ends
    # Failed by the final-state rule, with those items rejected and nothing failed.
    assert all(
        fr.state.is_failed() and "rejected" in fr.state.message and " failed" not in fr.state.message
        for fr in flow_runs
    ), (
        [fr.state for fr in flow_runs],
        {n: t[-3000:] for n, t in topology.group.outputs().items()},
    )
    scaled = observe(emu, [f"part-{k}" for k in range(PARTS)])

    owners = workers_of(topology.group, flow_runs)
    assert len(owners) == len(flow_runs) and set(owners.values()) == {"worker-1", "worker-2"}, owners
    assert scaled == reference
    await check_server_side(topology, flow_runs)


async def check_server_side(topology: Topology, flow_runs: list[Any]) -> None:
    """What works only when the topology does: task runs reach the database through Redis and the separate
    services process; both replicas see every run; flow results are on S3 and load from there."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids = [fr.id for fr in flow_runs]
    only_these = FlowRunFilter(id=FlowRunFilterId(any_=ids))
    for api_url in topology.api_urls:
        async with PrefectClient(api_url) as client:
            assert len(await client.read_flow_runs(flow_run_filter=only_these)) == len(ids)
    async with PrefectClient(topology.api_urls[1]) as client:
        recorded: list[Any] = []
        for _ in range(60):  # the recorder flushes every few seconds
            recorded = await client.read_task_runs(flow_run_filter=only_these, limit=200)
            if {tr.flow_run_id for tr in recorded} == set(ids):
                break
            await asyncio.sleep(0.5)
        assert {tr.flow_run_id for tr in recorded} == set(ids), "task runs never reached the database"
    stored = s3_client(topology.emu).list_objects_v2(Bucket=BUCKET, Prefix=f"{RESULTS_PREFIX}/")
    assert stored.get("KeyCount", 0) >= len(ids)
    result = await load_result(topology.api_urls[1], flow_runs[0])
    assert isinstance(result, IncompleteRun), (
        result
    )  # a Failed run's result: the rule's exception, summary inside
    assert (result.summary.total, result.summary.done, result.summary.rejected) == (5, 4, 1)


async def load_result(api_url: str, flow_run: Any) -> Any:
    """A flow run's result, read back from S3. A deployment run loads its entrypoint file
    (``flows/micrio_migration/flow.py``) as a top-level module ``flow``, which defines no class: the pickled
    ones (the summary, ``IncompleteRun``) are in the package's other modules, importable from the root."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        return await flow_run.state.aresult(raise_on_failure=False)


# --- (b) ----------------------------------------------------------------------------------------------------


def _transitions(dask_scheduler: Any) -> int:
    return dask_scheduler.transition_counter


@pytest.fixture(scope="module")
def dask_run(emu, reference) -> tuple[Observed, int]:
    """Both flows with ``DaskTaskRunner`` on a LocalCluster of two worker processes; what they left behind,
    and how many task state transitions the Dask scheduler saw meanwhile (0: no task went to Dask).

    The cluster is started here and passed by address (rather than ``cluster_class=``, which starts one
    lazily on the first submitted task) so that the scheduler can be asked afterwards."""
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        before = client.run_on_scheduler(_transitions)
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        observed = asyncio.run(run_in_process(emu, "dask", runner))
        return observed, client.run_on_scheduler(_transitions) - before


def test_dask_task_runner_matches_default_runner(dask_run, reference: Observed):
    assert dask_run[0] == reference


def test_dask_gets_no_task_from_the_flows_as_documented(dask_run):
    """docs/production.md: the flows await their tasks on the flow's event loop; only ``.submit()``/``.map()``
    reach a task runner, so a Dask cluster sees no task and the unit of scale-out is the flow run (test (a)).
    If a flow starts submitting tasks, this fails: update the document (and the duplicate bounds)."""
    assert dask_run[1] == 0


# --- the document -----------------------------------------------------------------------------------------


def known_setting_names() -> set[str]:
    """Every environment variable Prefect 3.8.8 and prefect-redis read as a setting (names and aliases), plus
    the ``PREFECT_LOGGING_<path>`` overrides of Prefect's default logging configuration."""
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH, load_logging_config, to_envvar
    from prefect.settings import Settings
    from prefect.utilities.collections import dict_to_flatdict
    from prefect_redis.cleanup_queue import RedisWorkerCleanupQueueSettings
    from prefect_redis.client import RedisMessagingSettings
    from prefect_redis.messaging import RedisMessagingConsumerSettings, RedisMessagingPublisherSettings
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    names: set[str] = set()

    def walk(model: type[BaseSettings]) -> None:
        for field_name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
                walk(field.annotation)
                continue
            names.add(f"{model.model_config.get('env_prefix', '')}{field_name}".upper())
            alias = field.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            names.update(c.upper() for c in choices if isinstance(c, str))

    for model in (
        Settings,
        RedisMessagingSettings,
        RedisMessagingPublisherSettings,
        RedisMessagingConsumerSettings,
        RedisWorkerCleanupQueueSettings,
    ):
        walk(model)
    logging_config = dict_to_flatdict(load_logging_config(DEFAULT_LOGGING_SETTINGS_PATH))
    names.update(to_envvar("PREFECT_LOGGING_" + "_".join(key)).upper() for key in logging_config)
    return names


def test_production_doc_names_only_real_settings():
    text = (ROOT / "docs" / "production.md").read_text()
    named = set(re.findall(r"\bPREFECT_[A-Z0-9_]*[A-Z0-9]\b", text))
    # "PREFECT_REDIS_MESSAGING_*" and "`_PORT`"-style shorthands name a family, not one setting
    named.discard("PREFECT_REDIS_MESSAGING")
    known = known_setting_names()
    assert len(named) > 20 and "PREFECT_MESSAGING_BROKER" in named
    assert sorted(named - known) == []
    assert set(production_settings("postgresql+asyncpg://x/y", 1)) <= named, "the test and the doc disagree"
