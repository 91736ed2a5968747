"""Start ``python -m emulators`` as a child process and read back where each service listens.

Used by the tests, ``make demo`` and the benchmarks::

    with running_emulators(time_scale=0.01) as emu:
        emu["miniviz"].url, emu["miniviz"].credentials
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class RunningService:
    service: str
    url: str
    credentials: dict[str, Any] = field(repr=False)

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call this service's ``/_emulator/<path>`` API and return the JSON answer."""
        response = httpx.request(method, f"{self.url}/_emulator/{path.lstrip('/')}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def received(self) -> dict[str, Any]:
        return self.control("GET", "received")

    def reset(self) -> None:
        self.control("POST", "reset")

    def faults(self, **config: Any) -> dict[str, Any]:
        return self.control("POST", "faults", json=config)


class RunningEmulators(dict[str, RunningService]):
    def __init__(self, proc: subprocess.Popen, services: dict[str, RunningService]) -> None:
        super().__init__(services)
        self.proc = proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_emulators(
    only: list[str] | None = None,
    time_scale: float = 1.0,
    ports: str = "0",
    config_path: str | None = None,
    timeout: float = 90,
) -> RunningEmulators:
    """Start the emulators (free ports by default) and wait for every ready line."""
    from .registry import SERVICES

    names = list(only or SERVICES)
    cmd = [
        sys.executable,
        "-m",
        "emulators",
        "--ports",
        ports,
        "--time-scale",
        repr(time_scale),
        "--only",
        ",".join(names),
    ]
    if config_path:
        cmd += ["--config", config_path]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    services: dict[str, RunningService] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(services) < len(names):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"emulators exited with code {proc.wait()} before all were ready: "
                    f"ready={sorted(services)}"
                )
            info = json.loads(line)
            services[info["service"]] = RunningService(info["service"], info["url"], info["credentials"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"emulators not ready within {timeout}s")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return RunningEmulators(proc, services)


@contextlib.contextmanager
def running_emulators(**kwargs: Any) -> Iterator[RunningEmulators]:
    emu = start_emulators(**kwargs)
    try:
        yield emu
    finally:
        emu.stop()
