"""One stack for every end-to-end test: a Prefect server WITH its UI (the session's test harness serves none),
the emulators with the demo blocks and sample inputs, every deployment of prefect.yaml, and one worker started
in a temporary directory, not in the checkout: the deployments import the installed package, so a worker on
any machine with the project installed runs them. Runs keep local state in the pool's working_dir.

Package scope: the deployment tests and the browser tests of the run forms share it, so the suite starts one
server and one worker. The server, the CLI and the worker are children with a clean environment
(``tests.reliability.prefect_stack``); this process talks to the server through ``PREFECT_API_URL``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from demo.setup import put_history_sample, put_micrio_samples, put_selfie_samples, save_demo_blocks
from demo.stack import process_pool_template
from emulators.launcher import RunningEmulators, running_emulators
from tests.reliability.prefect_stack import (
    ROOT,
    Child,
    ProcessGroup,
    _die_with_parent,
    child_env,
    free_port,
    prefect_cli,
    process_group,
    wait_healthy,
)

TIME_SCALE = 0.02
WORK_POOL = "local-process"


@dataclass(frozen=True)
class UiServer:
    url: str  # the UI, e.g. http://127.0.0.1:4321
    api_url: str
    home: Path

    def env(self) -> dict[str, str]:
        """Environment of a child talking to this server (the worker, the CLI)."""
        return child_env(self.home, self.api_url)


@pytest.fixture(scope="package")
def e2e_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="package")
def prefect_ui_server(e2e_logs) -> Iterator[UiServer]:
    """``prefect server start`` with its UI on a free port, its own home; this process's client points at it."""
    port = free_port()
    server = UiServer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api", e2e_logs / "prefect-home")
    with process_group(e2e_logs) as group:
        child = group.start(
            "prefect-server",
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            # The UI calls the API at PREFECT_API_URL (default port 4200 otherwise).
            child_env(server.home, server.api_url, PREFECT_SERVER_UI_ENABLED="true"),
        )
        wait_healthy(server.api_url, child)
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server


@pytest.fixture(scope="package")
def worker_dir(tmp_path_factory) -> Path:
    """Where the worker is started, outside the checkout, and the pool's working_dir: runs keep their local state
    (reports/, .pipeline-state/) here."""
    where = tmp_path_factory.mktemp("worker-dir").resolve()
    assert not where.is_relative_to(ROOT)
    return where


def start_worker_in(group: ProcessGroup, where: Path, env: dict[str, str]) -> Child:
    """``prefect worker start`` on the pool, polling every second, with ``where`` as its working directory (and
    $PWD, as a shell sets it)."""
    log = group.logs / "worker.log"
    args = ["-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--name", "worker", "--type", "process"]
    fast = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=where,
            env={**env, **fast, "PWD": str(where)},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it also stops the flow runs it started
            preexec_fn=_die_with_parent,
        )
    group.children.append(child := Child("worker", proc, log))  # the group stops it
    return child


@pytest.fixture(scope="package")
def stack(prefect_ui_server, e2e_logs, worker_dir) -> Iterator[tuple[RunningEmulators, Path]]:
    """Emulators, demo blocks and inputs, the work pool, every deployment, and a worker polling every second,
    started in ``worker_dir``. Yields the emulators and the worker's log (flow run output lands there)."""
    env = prefect_ui_server.env()
    with running_emulators(time_scale=TIME_SCALE) as emu, process_group(e2e_logs / "worker") as group:
        asyncio.run(save_demo_blocks(emu, TIME_SCALE))
        put_micrio_samples(emu, count=6)
        put_selfie_samples(emu, subjects=3)
        put_history_sample(emu, hours=1)
        # as `make up` does: runs start in the pool's working_dir (the worker's directory here)
        template = process_pool_template(worker_dir, e2e_logs / "work-pool.json")
        prefect_cli(
            "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite", "--base-job-template", template,
            env=env,
        )  # fmt: skip
        prefect_cli("--no-prompt", "deploy", "--all", env=env)
        worker = start_worker_in(group, worker_dir, env)
        yield emu, worker.log
