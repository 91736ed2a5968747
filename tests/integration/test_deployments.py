"""prefect.yaml deploys against a real server: every deployment, with its parameters, schedule and limits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

pytestmark = pytest.mark.integration


def prefect_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], capture_output=True, text=True, env=env, timeout=300
    )


async def test_deploy_all(prefect_harness):
    pool = prefect_cli("work-pool", "create", "local-process", "--type", "process", "--overwrite")
    assert pool.returncode == 0, pool.stderr
    out = prefect_cli("--no-prompt", "deploy", "--all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open("prefect.yaml") as fh:
        declared = {d["name"]: d for d in yaml.safe_load(fh)["deployments"]}
    async with get_client() as client:
        deployments = {d.name: d for d in await client.read_deployments()}
    assert set(declared) <= set(deployments)
    for name, spec in declared.items():
        deployment = deployments[name]
        assert deployment.work_pool_name == "local-process"
        assert deployment.parameters == spec.get("parameters", {})
        # the UI renders a form from this schema: every parameter is described
        props = deployment.parameter_openapi_schema["properties"]
        assert props and all(p.get("description") for p in props.values()), name
