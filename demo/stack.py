"""``make up`` / ``make down``: a local Prefect server, the emulators, demo blocks, every deployment and a worker.

    python -m demo.stack up      # start everything (idempotent: says so if it is already up)
    python -m demo.stack down    # stop exactly what `up` started, by the process ids it recorded
    python -m demo.stack status

State lives in ``.run/``: the Prefect home (SQLite database by default), logs, and ``processes.json``. Set
``PREFECT_SERVER_DATABASE_CONNECTION_URL`` (e.g. ``postgresql+asyncpg://postgres@127.0.0.1:5432/prefect``) to
run the server on PostgreSQL instead. ``EMULATOR_TIME_SCALE`` (default 0.1) makes the emulators' documented
waits shorter, so the UI shows results quickly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

RUN_DIR = Path(".run").resolve()
PROCESSES = RUN_DIR / "processes.json"
LOGS = RUN_DIR / "logs"
PREFECT_PORT = int(os.environ.get("PREFECT_PORT", "4200"))
API_URL = f"http://127.0.0.1:{PREFECT_PORT}/api"
TIME_SCALE = float(os.environ.get("EMULATOR_TIME_SCALE", "0.1"))
WORK_POOL = "local-process"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_HOME": str(RUN_DIR / "prefect"),
        "PREFECT_API_URL": API_URL,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }


def _alive(entry: dict) -> bool:
    """The recorded process is still running: same pid AND same start time (a reused pid is not ours)."""
    try:
        return abs(psutil.Process(entry["pid"]).create_time() - entry["started"]) < 0.01
    except psutil.NoSuchProcess:
        return False


def _recorded() -> dict[str, dict]:
    return json.loads(PROCESSES.read_text()) if PROCESSES.exists() else {}


def _record(name: str, pid: int) -> None:
    procs = _recorded()
    procs[name] = {"pid": pid, "started": psutil.Process(pid).create_time()}
    PROCESSES.write_text(json.dumps(procs, indent=2))


def _spawn(name: str, cmd: list[str]) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    _record(name, proc.pid)
    return proc


def _prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "prefect", *args], env=_env(), capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SystemExit(f"`prefect {' '.join(args)}` failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out


def _wait_http(url: str, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f} s; see {LOGS}")


def up() -> None:
    running = {n: e for n, e in _recorded().items() if _alive(e)}
    if running:
        print(f"Already up ({', '.join(running)}); `make down` first to restart.")
        status()
        return
    PROCESSES.unlink(missing_ok=True)
    (RUN_DIR / "prefect").mkdir(parents=True, exist_ok=True)
    print(f"Starting the emulators (time scale {TIME_SCALE}) ...", flush=True)
    emulators = _spawn("emulators", [sys.executable, "-m", "emulators", "--time-scale", str(TIME_SCALE)])
    db = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    print(
        f"Starting the Prefect server on {API_URL} ({'PostgreSQL' if db and 'postgres' in db else 'SQLite'}) ...",
        flush=True,
    )
    _spawn(
        "prefect-server",
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(PREFECT_PORT),
        ],
    )
    _wait_http(f"{API_URL}/health", "The Prefect server")
    for port in (8701, 8702, 8703, 8704):
        _wait_http(f"http://127.0.0.1:{port}/_emulator/health", "An emulator", timeout=60)
    if emulators.poll() is not None:
        raise SystemExit(f"the emulators stopped; see {LOGS / 'emulators.log'}")
    _wait_http("http://127.0.0.1:8705/_emulator/health", "The S3 emulator", timeout=60)

    print("Registering block types, saving demo blocks, generating sample inputs ...", flush=True)
    _prefect("block", "register", "-m", "blocks")
    subprocess.run(
        [sys.executable, "-c", "import demo.stack as s; s._save_blocks_and_inputs()"], env=_env(), check=True
    )
    print("Creating the work pool and deploying every flow ...", flush=True)
    _prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    _prefect("--no-prompt", "deploy", "--all")
    _spawn("worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL])
    print(f"\nUp. Prefect UI: http://127.0.0.1:{PREFECT_PORT}  (API {API_URL})")
    print("Trigger a flow from the UI (Deployments → Run), or from a shell:")
    print(f"  export PREFECT_API_URL={API_URL}")
    for name in _deployment_names():
        print(f"  .venv/bin/prefect deployment run '{name}'")
    print(f"Logs: {LOGS}.  Stop everything with `make down`.")


def _deployment_names() -> list[str]:
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    names = []
    for d in yaml.safe_load(Path("prefect.yaml").read_text())["deployments"]:
        flow = load_flow_from_entrypoint(d["entrypoint"])
        names.append(f"{flow.name}/{d['name']}")
    return names


def _save_blocks_and_inputs() -> None:
    """Runs with PREFECT_API_URL pointing at the new server."""
    from emulators.launcher import RunningEmulators, RunningService
    from emulators.registry import DEFAULT_PORTS, service_config, service_module

    from .setup import put_history_sample, put_micrio_samples, put_selfie_samples, save_demo_blocks

    services = {
        name: RunningService(
            name, f"http://127.0.0.1:{port}", service_module(name).credentials(service_config(name, {}))
        )
        for name, port in DEFAULT_PORTS.items()
    }
    emu = RunningEmulators(None, services)  # type: ignore[arg-type]
    asyncio.run(save_demo_blocks(emu, TIME_SCALE))
    put_micrio_samples(emu)
    put_selfie_samples(emu)
    put_history_sample(emu)


def down() -> None:
    procs = _recorded()
    if not procs:
        print("Nothing to stop: `make up` has not recorded any process.")
        return
    # Worker first (so it starts nothing new), then the server, then the emulators.
    for name in sorted(procs, key=lambda n: {"worker": 0, "prefect-server": 1}.get(n, 2)):
        entry = procs[name]
        pid = entry["pid"]
        if not _alive(entry):
            print(f"  {name} (pid {pid}) was not running")
            continue
        os.killpg(pid, signal.SIGTERM)  # its own session: children (flow runs, emulator processes) too
        deadline = time.monotonic() + 15
        while _alive(entry) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(entry):
            os.killpg(pid, signal.SIGKILL)
        print(f"  stopped {name} (pid {pid})")
    PROCESSES.unlink(missing_ok=True)


def status() -> None:
    procs = _recorded()
    if not procs:
        print("Not up.")
    for name, entry in procs.items():
        print(f"  {name:15} pid {entry['pid']:7}  {'running' if _alive(entry) else 'stopped'}")


if __name__ == "__main__":
    commands = {"up": up, "down": down, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit("usage: python -m demo.stack up|down|status")
    commands[sys.argv[1]]()
