"""The emulated services, their default ports, and how to build each one."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

HOST = "127.0.0.1"
DEFAULT_PORTS: dict[str, int] = {
    "miniviz": 8701,
    "viziosense": 8702,
    "micrio": 8703,
    "haut": 8704,
    "s3": 8705,
}
SERVICES = tuple(DEFAULT_PORTS)


def service_module(name: str) -> ModuleType:
    """``emulators.<name>``: exposes ``DEFAULT_CONFIG``, ``credentials(config)`` and ``build(config, clock, base_url)``."""
    if name not in DEFAULT_PORTS:
        raise ValueError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
    return importlib.import_module(f"emulators.{name}")


def load_config(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read a JSON accounts file: ``{"miniviz": {...}, "micrio": {...}}``; missing services keep defaults."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object of service name -> settings object")
    unknown = set(data) - set(DEFAULT_PORTS)
    if unknown:
        raise ValueError(f"{path}: unknown service(s) {sorted(unknown)}; known: {', '.join(SERVICES)}")
    return data


def service_config(name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Defaults of ``name`` with the top-level keys from the config file replaced."""
    return {**service_module(name).DEFAULT_CONFIG, **overrides.get(name, {})}


def ready_line(name: str, url: str, config: dict[str, Any]) -> str:
    """The one JSON line printed per service when it is ready (and by ``--print-config``)."""
    creds = service_module(name).credentials(config)
    return json.dumps({"service": name, "url": url, "credentials": creds})
