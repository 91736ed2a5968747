"""Worker processes that fit images into a byte limit, shared by every batch of one flow run.

Why processes: Pillow's JPEG encoder holds the GIL, so fitting in threads runs one image at a time *and*
stalls the event loop that drives the HTTP calls. A few worker processes (one per core by default) fit in
parallel while the flow's own process keeps downloading and uploading.

Each worker is ``python -m flows.snapshot_harvest.fit_pool_worker``: it imports ``tasks.image_fit`` (Pillow,
no Prefect, no asyncio; ~0.08 s of CPU) and nothing of the caller (the package's ``__init__`` loads the flow
only when asked for it). (``multiprocessing`` would re-import the caller's ``__main__`` in every worker: seconds for a Prefect
engine, and a crash for a script without a ``__main__`` guard.) Requests and answers
are length-prefixed pickles on the worker's stdin/stdout, read with asyncio (no extra threads).

Use one pool per run, from the run's event loop: ``await pool.start()`` before the images arrive (workers
warm up while the cameras are asked for snapshots), ``await pool.fit(...)`` from any task of the run,
``await pool.close()`` at the end (workers also exit on their own when the flow's process ends). A worker
that dies (e.g. killed for memory) is replaced, a few times; after that, or if none can start, images are
fitted in threads of the flow's process: slower, but no image is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from clients.errors import InputError
from flows.snapshot_harvest.fit_pool_worker import HEADER, fit_timed
from tasks.image_fit import FittedImage

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # where `flows` and `tasks` are importable from
MAX_RESTARTS = 3  # dead workers replaced per pool; after that, images are fitted in threads
WORKER_ARGS = (
    "-m",
    "flows.snapshot_harvest.fit_pool_worker",
)  # what a worker runs, after the Python executable


@dataclass(frozen=True)
class FitResult:
    """A fitted image, or why it cannot be fitted (``error``), with timings.

    ``seconds``: the fit itself (in its worker, or its thread); ``waited``: the rest of the time the call
    took (waiting for the worker to finish the images before it, and moving the bytes).
    """

    fitted: FittedImage | None
    error: InputError | None
    seconds: float
    waited: float


class WorkerDied(RuntimeError):
    """The worker process ended while it had this image."""


class _Worker:
    """One worker process. Requests are written as they come (the worker reads them in order) and answers
    are matched to them in order by a reader task, so a worker never idles waiting for the event loop."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: deque[asyncio.Future[tuple]] = deque()
        self.peak_kb = 0
        self.cpu_seconds = 0.0
        self.reader = asyncio.ensure_future(self._read_answers())

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.done()

    async def call(self, request: tuple) -> tuple:
        assert self.proc.stdin is not None
        if self.reader.done():  # the process already ended: nothing would ever answer
            raise WorkerDied(f"image fitting process ended (exit code {self.proc.returncode})")
        answer: asyncio.Future[tuple] = asyncio.get_running_loop().create_future()
        self.pending.append(answer)
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(len(payload).to_bytes(HEADER, "big") + payload)
            await self.proc.stdin.drain()
        except (OSError, RuntimeError):  # broken pipe: the process is ending, its reader fails `answer`
            await asyncio.wait([self.reader], timeout=5)
            if not answer.done():
                answer.set_exception(WorkerDied("image fitting process stopped reading"))
        return await answer

    async def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                size = int.from_bytes(await self.proc.stdout.readexactly(HEADER), "big")
                answer = pickle.loads(await self.proc.stdout.readexactly(size))
                self.cpu_seconds, self.peak_kb = answer[2], answer[3]
                future = self.pending.popleft()
                if not future.done():
                    future.set_result(answer)
        except Exception as exc:  # the process ended (end of its output), or its answers are unreadable
            if not isinstance(exc, asyncio.IncompleteReadError):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()  # out of step with its answers: it cannot be trusted any more
            code = await self.proc.wait()
            while self.pending:
                future = self.pending.popleft()
                if not future.done():
                    future.set_exception(WorkerDied(f"image fitting process ended (exit code {code})"))


class FitPool:
    """``workers`` processes running ``fit_to_byte_limit``; see the module docstring."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.problem: str | None = None  # the last worker failure, if any (for the run's log)
        self._all: list[_Worker] = []
        self._started = False
        self._restarts = 0

    async def start(self) -> None:
        """Start the workers (they import Pillow in the background while the caller goes on)."""
        if self._started:
            return
        self._started = True
        for _ in range(self.workers):
            await self._spawn()

    async def fit(self, data: bytes, max_bytes: int, *, quality_hint: int | None = None) -> FitResult:
        """Fit ``data`` into ``max_bytes`` (see ``fit_to_byte_limit``) in the least busy worker.

        Never raises ``InputError``: an image that cannot be fitted comes back with ``error`` set. Raises
        ``WorkerDied`` if workers died twice on this image (it may be what kills them).
        """
        await self.start()
        t0 = time.perf_counter()
        for attempt in range(2):
            worker = await self._worker()
            if worker is None:
                break
            try:
                outcome, seconds, *_ = await worker.call((data, max_bytes, quality_hint))
            except WorkerDied as exc:
                self.problem = str(exc)
                if attempt == 1:
                    raise
                continue
            return _result(outcome, seconds, time.perf_counter() - t0 - seconds)
        started = time.perf_counter()
        outcome, seconds = await asyncio.to_thread(fit_timed, data, max_bytes, quality_hint)
        return _result(outcome, seconds, started - t0)

    def workers_peak_rss_mb(self) -> float:
        """Sum of the workers' peak resident memory, in MB: what the pool adds to the run's footprint."""
        return sum(w.peak_kb for w in self._all) / 1024

    def workers_cpu_seconds(self) -> float:
        """CPU seconds the workers have used (as of their latest answers)."""
        return sum(w.cpu_seconds for w in self._all)

    async def close(self) -> None:
        """Stop the workers: they exit when their input ends (killed if they have not within 5 s)."""
        for worker in self._all:
            with contextlib.suppress(Exception):
                assert worker.proc.stdin is not None
                worker.proc.stdin.close()
        for worker in self._all:
            try:
                await asyncio.wait_for(worker.proc.wait(), timeout=5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await worker.proc.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.reader

    async def _worker(self) -> _Worker | None:
        """The live worker with the fewest images queued; dead ones are replaced (``MAX_RESTARTS`` per
        pool). None when no worker is left: the caller fits in a thread."""
        dead = sum(1 for w in self._all if not w.alive)
        while dead > self._restarts and self._restarts < MAX_RESTARTS:
            self._restarts += 1
            await self._spawn()
        live = [w for w in self._all if w.alive]
        if not live:
            if self.problem and "threads" not in self.problem:
                self.problem += "; fitting in threads from now on"
            return None
        return min(live, key=lambda w: len(w.pending))

    async def _spawn(self) -> None:
        path = os.pathsep.join(filter(None, [_PROJECT_ROOT, os.environ.get("PYTHONPATH")]))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *WORKER_ARGS,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": path},
            )  # fmt: skip
        except OSError as exc:
            self.problem = f"could not start an image fitting process: {exc}"
            return
        self._all.append(_Worker(proc))


def _result(outcome: FittedImage | Exception, seconds: float, waited: float) -> FitResult:
    if isinstance(outcome, InputError):
        return FitResult(None, outcome, round(seconds, 4), round(max(0.0, waited), 4))
    if isinstance(outcome, Exception):
        raise outcome
    return FitResult(outcome, None, round(seconds, 4), round(max(0.0, waited), 4))
