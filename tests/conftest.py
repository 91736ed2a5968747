"""Shared pytest fixtures.

Integration tests talk real HTTP to emulators started with ``python -m emulators`` on free loopback ports.
Each test module that needs a service starts it through ``emulator_service`` (module scope), so a module
can choose its own time scale and account config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from emulators.launcher import running_emulators

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# 0.01: a documented 20 s wait takes 0.2 s; a 15 s rate-limit interval 0.15 s.
TEST_TIME_SCALE = 0.01


def start_service(
    name: str,
    tmp_path_factory: pytest.TempPathFactory,
    time_scale: float = TEST_TIME_SCALE,
    config: dict | None = None,
):
    """Context manager yielding a RunningService for ``name`` (optionally with a config override)."""
    config_path = None
    if config:
        config_path = tmp_path_factory.mktemp(f"{name}-config") / "emulators.json"
        Path(config_path).write_text(json.dumps({name: config}))
    return running_emulators(
        only=[name], time_scale=time_scale, config_path=str(config_path) if config_path else None
    )


@pytest.fixture(autouse=True)
def _own_pacing_dir(tmp_path_factory, monkeypatch):
    """Each test paces Miniviz with its own shared pacing files (clients/shared_pacing.py), as a fresh machine:
    an emulator reset between tests forgets what was sent, and so must the pacing."""
    monkeypatch.setenv("PIPELINES_PACING_DIR", str(tmp_path_factory.mktemp("pacing")))


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (≈10 s to start): only for tests that need it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
