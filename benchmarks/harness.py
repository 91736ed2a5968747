"""Benchmark scenarios: registry, result file and the measurements they share."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

RESULTS_PATH = Path(__file__).with_name("results.json")


@dataclass
class Scenario:
    name: str
    description: str
    run: Callable[[], dict[str, Any]]


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, description: str
) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], dict[str, Any]]]:
    """Register a scenario: a function returning its figures (a flat-ish dict of numbers and notes)."""

    def register(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        SCENARIOS[name] = Scenario(name, description, fn)
        return fn

    return register


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident set size of a process (VmHWM), in MB."""
    proc = psutil.Process(pid)
    try:
        with open(f"/proc/{proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return proc.memory_info().rss / 2**20


def machine() -> dict[str, Any]:
    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def write_results(results: dict[str, dict[str, Any]]) -> Path:
    """Merge this run's scenarios into results.json (other scenarios keep their last figures)."""
    existing: dict[str, Any] = {}
    if RESULTS_PATH.exists():
        existing = json.loads(RESULTS_PATH.read_text())
    scenarios = existing.get("scenarios", {})
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for name, figures in results.items():
        scenarios[name] = {"measured_at": stamp, **figures}
    RESULTS_PATH.write_text(json.dumps({"machine": machine(), "scenarios": scenarios}, indent=2) + "\n")
    return RESULTS_PATH


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
