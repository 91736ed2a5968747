"""Secret hygiene of the whole system: a real Prefect server, the deployments of ``prefect.yaml`` and a worker
running all four flows with distinctive secrets and DEBUG logging everywhere (Prefect, the root logger, httpx,
httpcore, botocore; the extra loggers shipped to the server too). Then every place a secret could end up is
searched: what the server, the worker and the flow-run processes printed, the server's stored logs,
artifacts, flow and task runs (parameters, state messages), deployments, events, its database file, the
reports, dead letters, journals and persisted results on disk, and every object in S3. No secret may
appear, raw or encoded (URL-encoded, base64, Basic-auth pairs), nor any token the services issued.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from prefect_aws import S3Bucket
from pydantic import SecretStr

from blocks import HautCredentials, MicrioCredentials, MinivizCredentials, VizioSenseCredentials
from demo.setup import (
    emulator_aws_credentials,
    put_history_sample,
    put_micrio_samples,
    put_selfie_samples,
    s3_client,
)
from emulators.launcher import RunningEmulators, running_emulators
from emulators.registry import service_module
from tests.reliability.prefect_stack import (
    ProcessGroup,
    child_env,
    prefect_cli,
    process_group,
    run_deployments,
)

pytestmark = pytest.mark.integration

TIME_SCALE = 0.02
POOL = "local-process"  # the pool prefect.yaml's deployments use
VIZIO_EMAIL = "ops@viziosense.example"
HAUT_USER = "demo@haut-emulator.local"
# Distinctive values, with characters that URL encoding changes (as real AWS secret keys have).
SECRETS = {
    "miniviz token": "mvz-SYSSECRET-tok-4f9a7c21e0b3",
    "viziosense password": "vzs-SYSSECRET-pw/7d1e+b3=x",
    "micrio api key": "5d7e9f1a-3b2c-4d6e-8f0a-1b2c3d4e5f6a",
    "haut password": "haut-SYSSECRET-pw+92/e4",
    "aws secret key": "S3SYSSECRET/aws+Key9Zq7XyWv2Lm8Nn4Pp6Rr0Tt",
}
# Tokens the services issue: Haut's access/refresh tokens; any bearer value that is not masked.
ISSUED_TOKENS = [
    re.compile(r"haut-(?:at|rt|pt)-[A-Za-z0-9_-]{16,}"),
    re.compile(r"Bearer\s+(?!\*)[A-Za-z0-9._~+/=-]{16,}"),
]


def encodings(value: str) -> set[str]:
    """The forms a secret takes on the wire or in a file: as is, URL-encoded, JSON-escaped, base64."""
    raw = value.encode()
    b64 = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return (
        {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
        | b64
        | {b.rstrip("=") for b in b64}
    )


FORBIDDEN: dict[str, set[str]] = {name: encodings(value) for name, value in SECRETS.items()}
FORBIDDEN["viziosense basic auth"] = encodings(f"{VIZIO_EMAIL}:{SECRETS['viziosense password']}")
FORBIDDEN["haut basic auth"] = encodings(f"{HAUT_USER}:{SECRETS['haut password']}")


def leaks(text: str) -> list[str]:
    """What of the secrets (by name and form) or of the issued tokens ``text`` contains."""
    found = [f"{name}: {form!r}" for name, forms in FORBIDDEN.items() for form in forms if form in text]
    found += [f"issued token: {m.group(0)[:14]}..." for p in ISSUED_TOKENS for m in p.finditer(text)]
    return found


def emulator_config() -> dict:
    haut = service_module("haut").DEFAULT_CONFIG
    micrio = service_module("micrio").DEFAULT_CONFIG["organisations"][0]
    return {
        "miniviz": {
            "projects": [{"project_id": "sys-pro", "token": SECRETS["miniviz token"], "plan": "pro"}]
        },
        "viziosense": {
            "users": [
                {
                    "email": VIZIO_EMAIL,
                    "password": SECRETS["viziosense password"],
                    "name": "Ops",
                    "role": ["admin"],
                }
            ],
            "api_keys": {},
        },
        "micrio": {"organisations": [{**micrio, "api_key": SECRETS["micrio api key"]}]},
        "haut": {"users": [{**haut["users"][0], "password": SECRETS["haut password"]}]},
        "s3": {"access_key_id": "AKIASYSTEMTEST0001", "secret_access_key": SECRETS["aws secret key"]},
    }


async def save_blocks(emu: RunningEmulators) -> None:
    """The block names prefect.yaml's deployments default to, holding the distinctive secrets. VizioSense and
    Haut log in with a password, so their issued tokens are in play too."""
    c = emu["s3"].credentials
    aws = emulator_aws_credentials(emu["s3"])
    await S3Bucket(bucket_name=c["bucket"], credentials=aws).asave("s3-demo", overwrite=True)
    m = emu["micrio"].credentials
    await MicrioCredentials(
        organisation_id=m["organisation_id"], api_key=SecretStr(m["api_key"]), base_url=emu["micrio"].url
    ).asave("micrio-demo", overwrite=True)
    await MinivizCredentials(
        project_id="sys-pro",
        token=SecretStr(SECRETS["miniviz token"]),
        base_url=emu["miniviz"].url,
        data_interval_seconds=15 * TIME_SCALE,
        image_interval_seconds=60 * TIME_SCALE,
    ).asave("miniviz-demo", overwrite=True)
    await VizioSenseCredentials(
        email=VIZIO_EMAIL, password=SecretStr(SECRETS["viziosense password"]), base_url=emu["viziosense"].url
    ).asave("viziosense-demo", overwrite=True)
    await HautCredentials(
        company_id=emu["haut"].credentials["company_id"],
        username=HAUT_USER,
        password=SecretStr(SECRETS["haut password"]),
        base_url=emu["haut"].url,
    ).asave("haut-demo", overwrite=True)


def flow_runs_to_make(work: Path) -> list[tuple[str, dict]]:
    """Every deployment once; journals on S3 for two flows, everything else under ``work``."""
    return [
        (
            "micrio-migration/micrio-migration",
            {
                "polling": {"initial_seconds": 0.1, "max_seconds": 0.5},
                "outputs": {
                    "journal": "s3://demo-bucket/system/journals/micrio/",
                    "report": str(work / "micrio.csv"),
                },
            },
        ),
        (
            "snapshot-harvest/snapshot-harvest-every-15m",
            {
                "timing": {"ready_after_seconds": 20 * TIME_SCALE, "poll_interval_seconds": 0.1},
                "miniviz_push": {"data_event_budget_seconds": 60 * TIME_SCALE},
                "outputs": {"state": str(work / "harvest-state.json"), "report": str(work / "harvest.csv")},
            },
        ),
        (
            "skin-analysis/skin-analysis",
            {
                "polling": {"initial_delay": 22 * TIME_SCALE, "max_delay": 0.2},
                "outputs": {
                    "report": str(work / "skin.csv"),
                    "metrics_report": str(work / "skin-metrics.csv"),
                    "journal": "s3://demo-bucket/system/journals/skin/",
                },
            },
        ),
        (
            "miniviz-backfill/miniviz-backfill",
            {
                "dry_run": False,
                "outputs": {
                    "journal": str(work / "backfill.jsonl"),
                    "report": str(work / "backfill.csv"),
                    "dead_letter": str(work / "backfill-rejected.csv"),
                },
            },
        ),
    ]


@dataclass
class System:
    emu: RunningEmulators
    group: ProcessGroup
    api_url: str
    server_home: Path
    worker_home: Path
    work: Path
    flow_runs: list


# Flow processes (through the worker's environment): every logger at DEBUG, the client-side ones shipped to
# the server too. The server: its own loggers at DEBUG (the root logger would only add SQL driver noise).
DEBUG_FLOWS = {
    "PREFECT_LOGGING_LEVEL": "DEBUG",
    "PREFECT_LOGGING_ROOT_LEVEL": "DEBUG",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "httpx,httpcore,clients,botocore",
}
DEBUG_SERVER = {"PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT_SERVER_LOGGING_LEVEL": "DEBUG"}


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> System:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("system-secrets")
    config = tmp / "emulators.json"
    config.write_text(json.dumps(emulator_config()))
    work, server_home, worker_home = tmp / "work", tmp / "server-home", tmp / "worker-home"
    work.mkdir()
    with ExitStack() as stack:
        group = stack.enter_context(process_group(tmp / "logs"))
        (api_url,) = group.start_servers(["server"], child_env(server_home, **DEBUG_SERVER), wait=False)
        emu = stack.enter_context(running_emulators(time_scale=TIME_SCALE, config_path=str(config)))
        group.wait_servers()
        client_env = child_env(tmp / "client-home", api_url)
        prefect_cli("work-pool", "create", POOL, "--type", "process", "--overwrite", env=client_env)
        # Results persisted (to the worker's local storage): they are searched too.
        worker_env = child_env(worker_home, api_url, PREFECT_RESULTS_PERSIST_BY_DEFAULT="true", **DEBUG_FLOWS)
        group.start_worker("worker", worker_env, POOL)
        with ThreadPoolExecutor(1) as pool:  # deploying takes a while: inputs and blocks meanwhile
            deployed = pool.submit(prefect_cli, "--no-prompt", "deploy", "--all", env=client_env)
            with temporary_settings({PREFECT_API_URL: api_url}):
                asyncio.run(save_blocks(emu))
            put_micrio_samples(emu, count=3)
            put_selfie_samples(emu, subjects=2)
            put_history_sample(emu, hours=1)
            deployed.result()
        flow_runs = asyncio.run(run_deployments(api_url, flow_runs_to_make(work)))
        yield System(emu, group, api_url, server_home, worker_home, work, flow_runs)


def read_everything(api_url: str) -> dict[str, list[dict]]:
    """Every stored log, artifact, flow run, task run, deployment and event, as the API returns them."""
    found: dict[str, list[dict]] = {}
    with httpx.Client(base_url=api_url, timeout=60) as http:
        for kind in ("logs", "artifacts", "flow_runs", "task_runs", "deployments"):
            rows: list[dict] = []
            while page := http.post(f"/{kind}/filter", json={"limit": 200, "offset": len(rows)}).json():
                rows += page
            found[kind] = rows
        events = http.post("/events/filter", json={"limit": 50}).json()
        found["events"] = events["events"]
        while events.get("next_page"):
            events = http.get(events["next_page"]).json()
            found["events"] += events["events"]
    return found


def files_under(*roots: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file()}


def s3_objects(emu: RunningEmulators) -> dict[str, bytes]:
    s3, bucket = s3_client(emu), emu["s3"].credentials["bucket"]
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_every_flow_ran_with_debug_logging(system: System):
    """The search below means something only if the runs happened and logged at DEBUG, httpx included."""
    # Completed, or Failed by the final-state rule (the inputs hold deliberately rejected items): the message
    # then gives the counts and the report; a crash or an exception would not.
    assert all(
        fr.state.is_completed() or (fr.state.is_failed() and "rejected; report" in fr.state.message)
        for fr in system.flow_runs
    ), [(fr.name, fr.state.type.value, fr.state.message) for fr in system.flow_runs]
    assert len(system.flow_runs) == 4
    stored = read_everything(system.api_url)
    logs = stored["logs"]
    assert any(log["level"] == 10 for log in logs), "no DEBUG record reached the server"
    assert any(log["name"].startswith("httpx") for log in logs), "httpx records were not shipped"
    assert any(log["name"].startswith("botocore") for log in logs), "botocore records were not shipped"
    assert len({a["key"] for a in stored["artifacts"] if a["key"]}) >= 8
    assert files_under(system.worker_home / "storage"), "no result was persisted"
    objects = s3_objects(system.emu)
    assert any(k.startswith("system/journals/micrio/") for k in objects)
    assert any(k.startswith("system/journals/skin/") for k in objects)
    output = system.group.outputs()
    assert "DEBUG" in output["worker"] and "HTTP Request" in output["worker"]


def test_no_secret_anywhere(system: System):
    stored = read_everything(system.api_url)
    places: dict[str, str] = {f"output of {name}": text for name, text in system.group.outputs().items()}
    places |= {f"server {kind}": json.dumps(rows) for kind, rows in stored.items()}
    # Block documents are stored encrypted; everything else in the database is searched as bytes.
    files = files_under(system.server_home, system.worker_home, system.work)
    places |= {f"file {path}": data.decode("latin-1") for path, data in files.items()}
    places |= {f"s3 {key}": data.decode("latin-1") for key, data in s3_objects(system.emu).items()}
    assert any(name.endswith("prefect.db") for name in places), sorted(places)[:20]

    found = {place: hits for place, text in places.items() if (hits := leaks(text))}
    assert found == {}, json.dumps(found, indent=1)[:6000]
