"""Run a flow in a child process that can be ``kill -9``-ed at a chosen moment, and the S3/blocks plumbing the
reliability tests share.

Children come from a multiprocessing *forkserver* that has already imported Prefect and the flows (≈4 s per
fresh interpreter on this machine), so a kill-and-resume test can afford many runs: a fork costs a few ms.
The forkserver is single-threaded when it forks (importing Prefect starts no thread), so forking is safe.

Each child runs ``asyncio.run(flow(**params))`` against the Prefect API of the test session, writes its
stdout/stderr to ``<workdir>/run-<n>.log`` and the summary to ``<workdir>/run-<n>.json``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

FLOWS = {
    "micrio": "flows.micrio_migration:migrate_to_micrio",
    "backfill": "flows.miniviz_backfill:miniviz_backfill",
    "skin": "flows.skin_analysis:skin_analysis",
    "harvest": "flows.snapshot_harvest:harvest_snapshots",
}
_PRELOAD = [
    "prefect",
    "prefect.settings",
    "pandas",
    "pyarrow.parquet",
    "PIL.Image",
    *(target.split(":")[0] for target in FLOWS.values()),
    __name__,
]
_context: Any = None


def _forkserver() -> Any:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _context = ctx
    return _context


def warm_up() -> None:
    """Start the forkserver (it imports Prefect and the flows once, a few seconds) before timing anything."""
    proc = _forkserver().Process(target=time.sleep, args=(0,), daemon=True)
    proc.start()
    proc.join(120)


def _child(
    target: str, params: dict[str, Any], api_url: str, log_path: str, result_path: str, env: dict[str, str]
) -> None:
    """Child process body: run the flow, write its summary as JSON with the final state (``run_state``,
    ``run_message``). Other exceptions exit with code 1. ``env``: the test's settings, e.g. its shared pacing
    files (the forkserver's environment is the one it started with); ``PWD`` is the directory to run in."""
    os.environ.update(env)
    if "PWD" in env:
        os.chdir(env["PWD"])
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    module, name = target.split(":")
    flow = getattr(importlib.import_module(module), name)
    from tasks.run_state import IncompleteRun

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            summary, state, message = asyncio.run(flow(**params)), "COMPLETED", ""
        except IncompleteRun as exc:  # a truthful Failed run still wrote its report: keep its summary
            summary, state, message = exc.summary, "FAILED", str(exc)
    result = {**summary.model_dump(mode="json"), "run_state": state, "run_message": message}
    Path(result_path).write_text(json.dumps(result))


class FlowProcess:
    """One flow run in a forked child. ``kill()`` is ``kill -9``; ``summary()`` reads what a finished run returned."""

    def __init__(
        self, flow: str, params: dict[str, Any], workdir: Path, number: int, env: dict[str, str] | None = None
    ) -> None:
        """``env``: settings of this run's process (default: the test's shared pacing directory)."""
        from prefect.settings import PREFECT_API_URL

        if env is None:
            pacing = os.environ.get("PIPELINES_PACING_DIR")
            env = {"PIPELINES_PACING_DIR": pacing} if pacing is not None else {}

        self.log_path = workdir / f"run-{number}.log"
        self.result_path = workdir / f"run-{number}.json"
        self.proc = _forkserver().Process(
            target=_child,
            args=(
                FLOWS[flow],
                params,
                PREFECT_API_URL.value(),
                str(self.log_path),
                str(self.result_path),
                env,
            ),
            daemon=True,
        )
        self.proc.start()
        self.started = time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        """``kill -9`` (nothing if it already ended); waits until it is gone."""
        if self.proc.exitcode is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.join(30)

    def wait(self, timeout: float) -> int | None:
        """Exit code (negative: killed by that signal); None if still running after ``timeout`` (a hang guard)."""
        self.proc.join(timeout)
        return self.proc.exitcode

    def stop_if_running(self) -> None:
        if self.proc.is_alive():
            self.kill()

    def summary(self) -> dict[str, Any]:
        if not self.result_path.exists():
            raise AssertionError(f"the flow run wrote no summary; log tail:\n{self.log_tail()}")
        return json.loads(self.result_path.read_text())

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"


def run_flow(flow: str, params: dict[str, Any], workdir: Path, number: int, timeout: float = 240) -> dict:
    """Run a flow to the end in a child; its summary. ``timeout`` only guards against a hang."""
    run = FlowProcess(flow, params, workdir, number)
    try:
        code = run.wait(timeout)
        assert code is not None, f"the flow run hung for {timeout} s; log tail:\n{run.log_tail()}"
        assert code == 0, f"the flow run exited with {code}; log tail:\n{run.log_tail()}"
        return run.summary()
    finally:
        run.stop_if_running()


def wait_until(condition: Callable[[], bool], run: FlowProcess, timeout: float, every: float = 0.005) -> bool:
    """Poll ``condition`` while ``run`` is alive: True once it holds, False if the run ended first.

    A run still alive after ``timeout`` seconds is a hang: AssertionError.
    """
    deadline = time.monotonic() + timeout
    while run.running:
        if condition():
            return True
        if time.monotonic() > deadline:
            raise AssertionError(f"no progress within {timeout} s; log tail:\n{run.log_tail()}")
        time.sleep(every)
    return condition()


def journal_lines(path: Path) -> int:
    """Complete records in a local journal (a torn last line does not count)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# --- S3 and blocks --------------------------------------------------------------------------------------


def s3_client(service: Any) -> Any:
    c = service.credentials
    return boto3.client(
        "s3",
        endpoint_url=service.url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )


def save_s3_block(service: Any, name: str) -> str:
    from prefect_aws import AwsCredentials, S3Bucket

    c = service.credentials
    creds = AwsCredentials(
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
        aws_client_parameters={"endpoint_url": service.url},
    )
    S3Bucket(bucket_name=c["bucket"], credentials=creds).save(name, overwrite=True)
    return name
