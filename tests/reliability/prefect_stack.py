"""Real Prefect servers and workers as child processes, for the tests about the system around the flows:
secret hygiene across every process, and scale-out (PostgreSQL, Redis messaging, API replicas, several
workers) as ``docs/production.md`` describes it.

Every child gets a clean environment: no ``PREFECT_*`` variable of the test session leaks in, each has its
own ``PREFECT_HOME``, and its stdout and stderr go to a log file the tests read back. ``ProcessGroup`` stops
what it started (its own process groups, by id), workers first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_prctl() -> Any:
    with contextlib.suppress(Exception):
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    return None


_PRCTL = _load_prctl()  # resolved here: the child must not import or look anything up between fork and exec


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the test process dies without cleaning up (Linux
    PR_SET_PDEATHSIG; tied to the thread that started the child, so children are started from the main
    thread)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def child_env(home: Path, api_url: str | None = None, **settings: str) -> dict[str, str]:
    """The environment of a Prefect child: nothing ``PREFECT_*`` inherited, its own home, our settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(settings)
    return env


def prefect_cli(*args: str, env: dict[str, str], timeout: float = 300) -> str:
    """Run ``prefect <args>`` from the repository root (where ``prefect.yaml`` is); its output, or a failure."""
    out = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise AssertionError(
            f"`prefect {' '.join(args)}` failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out.stdout + out.stderr


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


class ProcessGroup:
    """Children started with ``start_*``; ``stop()`` ends them (and their own children) in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[Child] = []
        self._starting: list[tuple[str, Child]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> Child:
        log = self.logs / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=cwd,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopping it also stops the flow runs it started
                preexec_fn=_die_with_parent,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def start_servers(
        self, names: list[str], env: dict[str, str], *, services: bool = True, wait: bool = True
    ) -> list[str]:
        """``prefect server start`` per name (started together, free ports); their API URLs. ``wait=False``:
        return at once, ``wait_servers()`` later. ``services=False``: API replicas only (``--no-services``),
        for a separate ``prefect server services start``."""
        urls = []
        for name in names:
            port = free_port()
            args = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
            child = self.start(name, args + ([] if services else ["--no-services"]), env)
            urls.append(f"http://127.0.0.1:{port}/api")
            self._starting.append((urls[-1], child))
        if wait:
            self.wait_servers()
        return urls

    def wait_servers(self) -> None:
        """Until every server started so far answers ``/api/health``."""
        while self._starting:
            wait_healthy(*self._starting.pop(0))

    def start_worker(
        self, name: str, env: dict[str, str], pool: str, limit: int | None = None, cwd: Path = ROOT
    ) -> Child:
        """A process worker, started in ``cwd`` (another directory than the checkout: a worker machine)."""
        args = ["prefect", "worker", "start", "--pool", pool, "--name", name, "--type", "process"]
        if limit:
            args += ["--limit", str(limit)]
        fast = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
        return self.start(name, args, {**env, **fast}, cwd)

    def stop(self) -> None:
        for child in reversed(self.children):
            if not child.alive():
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(timeout=10)
        self.children.clear()

    def outputs(self) -> dict[str, str]:
        return {c.name: c.output() for c in self.children}


def wait_healthy(api_url: str, child: Child, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise AssertionError(f"{child.name} exited early:\n{child.output()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"{child.name} not healthy within {timeout:.0f} s:\n{child.output()[-4000:]}")


@contextlib.contextmanager
def process_group(logs: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(logs)
    try:
        yield group
    finally:
        group.stop()


# --- PostgreSQL and Redis ---------------------------------------------------------------------------------

# CI sets it (.ci/run): there a missing PostgreSQL or Redis fails the scale-out test instead of skipping it.
REQUIRE_SERVICES_ENV = "PIPELINES_REQUIRE_PRODUCTION_SERVICES"


def production_services() -> dict[str, tuple[str, int]]:
    """What the scale-out test needs, by name: address."""
    pg = urlsplit(PG_ADMIN_DSN)
    return {"PostgreSQL": (pg.hostname or "127.0.0.1", pg.port or 5432), "Redis": (REDIS_HOST, REDIS_PORT)}


def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    """Something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_services(services: dict[str, tuple[str, int]], required: bool | None = None) -> None:
    """Skip the calling test (with the reason) when a service does not answer; fail it instead when
    ``required`` (default: the ``PIPELINES_REQUIRE_PRODUCTION_SERVICES=1`` environment variable), so CI
    cannot pass by skipping."""
    import pytest

    missing = [
        f"{name} on {host}:{port}" for name, (host, port) in services.items() if not port_open(host, port)
    ]
    if not missing:
        return
    reason = f"needs {' and '.join(missing)} (docs/production.md); nothing answers there"
    if required is None:
        required = os.environ.get(REQUIRE_SERVICES_ENV) == "1"
    if required:
        pytest.fail(f"{reason}, and {REQUIRE_SERVICES_ENV}=1 requires them", pytrace=False)
    pytest.skip(reason)


def _run_async(coro: Any) -> Any:
    """Run a coroutine to the end from sync code, even when the caller's thread already has a loop."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_database(prefix: str = "prefect_test") -> Iterator[str]:
    """A new, uniquely named database; yields its SQLAlchemy URL for Prefect and drops it at the end."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    _run_async(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        host = PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]
        yield f"postgresql+asyncpg://{host}/{name}"
    finally:
        _run_async(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def redis_database() -> Iterator[int]:
    """An empty Redis logical database for one server's streams and keys (Prefect's keys have no namespace,
    so two test servers on one database would consume each other's events). Emptied at the end."""
    import redis

    admin = redis.Redis(REDIS_HOST, REDIS_PORT, db=0)
    token = secrets.token_hex(8)
    for db in secrets.SystemRandom().sample(range(1, 16), 15):
        claim = f"prefect-tests:claimed-db:{db}"
        if not admin.set(claim, token, nx=True, ex=1800):
            continue
        if redis.Redis(REDIS_HOST, REDIS_PORT, db=db).dbsize() == 0:
            break
        admin.delete(claim)  # someone else's data is there: leave it alone
    else:
        raise RuntimeError("no free Redis database (1-15) to run a Prefect server on")
    try:
        yield db
    finally:
        redis.Redis(REDIS_HOST, REDIS_PORT, db=db).flushdb()
        if admin.get(claim) == token.encode():
            admin.delete(claim)


def production_settings(database_url: str, redis_db: int) -> dict[str, str]:
    """The server settings of docs/production.md: PostgreSQL, and Redis for messaging, the event cache,
    causal ordering, concurrency leases, the background services' task queue (docket) and worker cleanup
    deliveries."""
    return {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": REDIS_HOST,
        "PREFECT_REDIS_MESSAGING_PORT": str(REDIS_PORT),
        "PREFECT_REDIS_MESSAGING_DB": str(redis_db),
        "PREFECT_SERVER_DOCKET_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
        "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": "prefect_redis.cleanup_queue",
    }


# --- flow runs through the API ----------------------------------------------------------------------------


async def run_deployments(
    api_url: str, runs: list[tuple[str, dict[str, Any]]], timeout: float = 240
) -> list[Any]:
    """Create one flow run per (``flow/deployment``, parameters) at once, wait for all; the final flow runs."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        created = []
        for name, parameters in runs:
            deployment = await client.read_deployment_by_name(name)
            created.append(await client.create_flow_run_from_deployment(deployment.id, parameters=parameters))
        deadline = time.monotonic() + timeout
        pending = {fr.id for fr in created}
        final: dict[Any, Any] = {}
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            for run_id in list(pending):
                flow_run = await client.read_flow_run(run_id)
                if flow_run.state and flow_run.state.is_final():
                    final[run_id] = flow_run
                    pending.discard(run_id)
        for run_id in pending:
            final[run_id] = await client.read_flow_run(run_id)
        return [final[fr.id] for fr in created]


@contextlib.contextmanager
def production_server(
    tmp: Path, pool: str, database_prefix: str = "prefect_test"
) -> Iterator[tuple[str, ProcessGroup, dict[str, str]]]:
    """One Prefect server on a new PostgreSQL database and an empty Redis logical database, and a process work
    pool: ``(api_url, the process group to start workers in, a client's environment)``. Stopped and dropped
    at the end."""
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(postgres_database(database_prefix))
        redis_db = stack.enter_context(redis_database())
        group = stack.enter_context(process_group(tmp / "logs"))
        server_env = child_env(tmp / "server-home", **production_settings(database, redis_db))
        (api_url,) = group.start_servers(["api"], server_env)
        client_env = child_env(tmp / "client-home", api_url)
        prefect_cli("work-pool", "create", pool, "--type", "process", "--overwrite", env=client_env)
        yield api_url, group, client_env
