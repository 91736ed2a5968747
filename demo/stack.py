"""``make up`` / ``make down``: a local Prefect server, the emulators, demo blocks, every deployment and a worker.

    python -m demo.stack up      # start whatever part is not running (all of them the first time)
    python -m demo.stack status  # each part: process id, alive or dead, where to reach it
    python -m demo.stack down    # stop exactly what `up` started, by the process ids it recorded

State lives in ``.run/``: the Prefect home (SQLite database by default), logs, and ``processes.json``. Set
``PREFECT_SERVER_DATABASE_CONNECTION_URL`` (e.g. ``postgresql+asyncpg://postgres@127.0.0.1:5432/prefect``) to
run the server on PostgreSQL instead. ``EMULATOR_TIME_SCALE`` (default 0.1) makes the emulators' documented
waits shorter, so the UI shows results quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil

RUN_DIR = Path(".run").resolve()
PROCESSES = RUN_DIR / "processes.json"
LOGS = RUN_DIR / "logs"
PREFECT_PORT = int(os.environ.get("PREFECT_PORT", "4200"))
API_URL = f"http://127.0.0.1:{PREFECT_PORT}/api"
TIME_SCALE = float(os.environ.get("EMULATOR_TIME_SCALE", "0.1"))
WORK_POOL = "local-process"
EMULATOR_PORTS = (8701, 8702, 8703, 8704, 8705)
SETUP = "setup"  # the processes.json entry saying which server and emulators the setup step was done for


@dataclass(frozen=True)
class Part:
    """One long-running process of the stack, in start order."""

    name: str
    where: str
    needs_setup: bool  # a new process of it has lost what the setup step saved (blocks, inputs, deployments)
    after_setup: bool = False  # started once the setup step is done (the worker needs its work pool)


PARTS = (
    Part("emulators", f"http://127.0.0.1:{EMULATOR_PORTS[0]} .. :{EMULATOR_PORTS[-1]}", needs_setup=True),
    Part("prefect-server", f"http://127.0.0.1:{PREFECT_PORT} (API {API_URL})", needs_setup=True),
    Part("worker", f"work pool {WORK_POOL!r}", needs_setup=False, after_setup=True),
)


@dataclass(frozen=True)
class UpPlan:
    start: tuple[str, ...]  # the parts to (re)start, in start order
    setup: bool  # register block types, save demo blocks and inputs, deploy every flow


def plan_up(alive: Mapping[str, bool], setup_current: bool) -> UpPlan:
    """What ``up`` must do: start every part that is not alive, and redo the setup when a part that holds its
    results is new (the emulators keep the sample inputs in memory; a new server may have a new database) or
    when the last setup did not finish."""
    start = tuple(part.name for part in PARTS if not alive.get(part.name, False))
    restarted_state = any(part.needs_setup for part in PARTS if part.name in start)
    return UpPlan(start, setup=restarted_state or not setup_current)


ProcessState = Literal["alive", "zombie", "gone"]


def process_state(
    entry: Mapping[str, Any] | None, process: Callable[[int], Any] = psutil.Process
) -> ProcessState:
    """``alive`` only when the recorded process still runs: same pid AND same start time (a reused pid is not
    ours) and not a zombie (it has exited; its parent has just not collected it yet)."""
    if not entry:
        return "gone"
    try:
        proc = process(entry["pid"])
        if abs(proc.create_time() - entry["started"]) >= 0.01:
            return "gone"
        return "zombie" if proc.status() == psutil.STATUS_ZOMBIE else "alive"
    except psutil.ZombieProcess:  # some platforms refuse even create_time() for a zombie
        return "zombie"
    except psutil.NoSuchProcess:
        return "gone"


def _alive(entry: Mapping[str, Any] | None) -> bool:
    return process_state(entry) == "alive"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_HOME": str(RUN_DIR / "prefect"),
        "PREFECT_API_URL": API_URL,
        # prefect.toml says the same, but the process worker starts each flow run in a temporary directory,
        # where prefect.toml is not found: the environment carries it there.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }


def _recorded() -> dict[str, dict]:
    return json.loads(PROCESSES.read_text()) if PROCESSES.exists() else {}


def _write(procs: dict[str, dict]) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    PROCESSES.write_text(json.dumps(procs, indent=2))


def _record(name: str, pid: int) -> None:
    procs = _recorded()
    procs[name] = {"pid": pid, "started": psutil.Process(pid).create_time()}
    _write(procs)


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
    procs = _recorded()
    plan = plan_up({part.name: _alive(procs.get(part.name)) for part in PARTS}, _setup_current(procs))
    if not plan.start and not plan.setup:
        print("Already up: every part is running.")
        status()
        return
    if len(plan.start) < len(PARTS):
        print(f"Restarting what is not running: {', '.join(plan.start) or 'the setup step'}.", flush=True)
    _start(p for p in PARTS if p.name in plan.start and not p.after_setup)
    _wait_http(f"{API_URL}/health", "The Prefect server")
    for port in EMULATOR_PORTS:
        _wait_http(f"http://127.0.0.1:{port}/_emulator/health", "An emulator", timeout=60)
    if plan.setup:
        _setup()
    _start(p for p in PARTS if p.name in plan.start and p.after_setup)
    print(f"\nUp. Prefect UI: http://127.0.0.1:{PREFECT_PORT}  (API {API_URL})")
    print("Trigger a flow from the UI (Deployments → Run), or from a shell:")
    print(f"  export PREFECT_API_URL={API_URL}")
    for name in _deployment_names():
        print(f"  .venv/bin/prefect deployment run '{name}'")
    print(f"Logs: {LOGS}.  `make status` shows each part; `make down` stops everything.")


def _start_emulators() -> None:
    print(f"Starting the emulators (time scale {TIME_SCALE}) ...", flush=True)
    _spawn("emulators", [sys.executable, "-m", "emulators", "--time-scale", str(TIME_SCALE)])


def _start_server() -> None:
    (RUN_DIR / "prefect").mkdir(parents=True, exist_ok=True)
    db = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    kind = "PostgreSQL" if db and "postgres" in db else "SQLite"
    print(f"Starting the Prefect server on {API_URL} ({kind}) ...", flush=True)
    port = str(PREFECT_PORT)
    _spawn(
        "prefect-server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
    )


def _start_worker() -> None:
    print(f"Starting a worker on the work pool {WORK_POOL!r} ...", flush=True)
    _spawn("worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL])


STARTERS: dict[str, Callable[[], None]] = {
    "emulators": _start_emulators,
    "prefect-server": _start_server,
    "worker": _start_worker,
}


def _start(parts: Iterable[Part]) -> None:
    procs = _recorded()
    for part in parts:
        _clear_remains(part.name, procs.get(part.name))
        STARTERS[part.name]()


def _setup() -> None:
    print("Registering block types, saving demo blocks, generating sample inputs ...", flush=True)
    _prefect("block", "register", "-m", "blocks")
    subprocess.run(
        [sys.executable, "-c", "import demo.stack as s; s._save_blocks_and_inputs()"], env=_env(), check=True
    )
    print("Creating the work pool and deploying every flow ...", flush=True)
    template = process_pool_template(Path.cwd(), RUN_DIR / "work-pool.json")
    _prefect(
        "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite", "--base-job-template", template
    )
    _prefect("--no-prompt", "deploy", "--all")
    procs = _recorded()
    procs[SETUP] = {name: procs[name]["started"] for name in ("emulators", "prefect-server")}
    _write(procs)


def process_pool_template(working_dir: Path, into: Path) -> str:
    """A process work pool's job template whose flow runs start in ``working_dir``: the deployments name no
    directory (prefect.yaml), and without one the worker runs each flow in a temporary directory it deletes
    afterwards, with the reports and journals a run keeps locally. Written to ``into``; its path."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["working_dir"]["default"] = str(working_dir.resolve())
    into.parent.mkdir(parents=True, exist_ok=True)
    into.write_text(json.dumps(template, indent=2))
    return str(into)


def _setup_current(procs: Mapping[str, Any]) -> bool:
    """The last setup finished, for the server and emulators that run now."""
    done = procs.get(SETUP, {})
    return all(
        name in procs and done.get(name) == procs[name]["started"] for name in ("emulators", "prefect-server")
    )


def _clear_remains(name: str, entry: Mapping[str, Any] | None) -> None:
    """Before restarting a part whose process is a zombie: stop what is left of its process group (e.g. the
    emulator services of a dead launcher still holding their ports). A zombie still owns its pid, so the
    group is still ours; a process that is gone is left alone (its pid may belong to someone else now)."""
    if entry and process_state(entry) == "zombie":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry["pid"], signal.SIGTERM)
            print(f"  stopped what was left of {name} (pid {entry['pid']}, a zombie)")


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
    procs = {name: entry for name, entry in _recorded().items() if name != SETUP}
    if not procs:
        print("Nothing to stop: `make up` has not recorded any process.")
        return
    # Worker first (so it starts nothing new), then the server, then the emulators.
    for name in sorted(procs, key=lambda n: {"worker": 0, "prefect-server": 1}.get(n, 2)):
        entry = procs[name]
        pid = entry["pid"]
        if not _alive(entry):
            _clear_remains(name, entry)
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


def status_lines(procs: Mapping[str, Any], state: Callable[[Any], ProcessState] = process_state) -> list[str]:
    """One line per part: name, pid, alive / dead (zombie) / not started, and where to reach it."""
    lines = []
    for part in PARTS:
        entry = procs.get(part.name)
        pid = f"pid {entry['pid']:>7}" if entry else "pid       -"
        found = state(entry) if entry else "not started"
        shown = {"alive": "alive", "zombie": "dead (zombie)", "gone": "dead"}.get(found, found)
        lines.append(f"  {part.name:15} {pid}  {shown:14} {part.where}")
    return lines


def status() -> None:
    procs = _recorded()
    if not procs:
        print("Not up: `make up` starts everything.")
        return
    print("\n".join(status_lines(procs)))
    if not _setup_current(procs):
        print("  setup (blocks, inputs, deployments) not done for the running server and emulators")
    if any(process_state(procs.get(p.name)) != "alive" for p in PARTS):
        print("`make up` restarts what is dead.")


if __name__ == "__main__":
    commands = {"up": up, "down": down, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit("usage: python -m demo.stack up|down|status")
    commands[sys.argv[1]]()
