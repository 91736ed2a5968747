"""The fit pool's worker process: ``python -m flows.snapshot_harvest.fit_pool_worker`` (see ``fit_pool``).

Kept apart from ``fit_pool`` so a worker imports only Pillow and ``tasks.image_fit``: no asyncio, no
Prefect (about half the start-up CPU of importing ``fit_pool``, paid by every worker of every run).
Requests and answers are length-prefixed pickles on stdin/stdout.
"""

from __future__ import annotations

import os
import pickle
import resource
import sys
import time

from clients.errors import InputError
from clients.redaction import error_text
from tasks.image_fit import FittedImage, fit_to_byte_limit

HEADER = 8  # bytes of the big-endian length before each pickle


def fit_timed(data: bytes, max_bytes: int, quality_hint: int | None) -> tuple[FittedImage | Exception, float]:
    """The fit and its seconds; any error is returned (picklable), so one bad image never ends a worker."""
    t0 = time.perf_counter()
    try:
        outcome: FittedImage | Exception = fit_to_byte_limit(data, max_bytes, quality_hint=quality_hint)
    except InputError as exc:
        outcome = exc
    except Exception as exc:  # a Pillow bug or MemoryError on one image: report it, keep serving
        outcome = RuntimeError(f"fitting failed: {error_text(exc)}")
    return outcome, time.perf_counter() - t0


def serve() -> None:
    """The worker's loop: read a request, fit, answer, until the input ends."""
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else written to stdout (a stray print, a C library) goes to stderr instead
    sys.stdout = sys.stderr
    while header := requests.read(HEADER):
        data, max_bytes, quality_hint = pickle.loads(requests.read(int.from_bytes(header, "big")))
        outcome, seconds = fit_timed(data, max_bytes, quality_hint)
        usage = resource.getrusage(resource.RUSAGE_SELF)  # ru_maxrss: KB on Linux
        answer = (outcome, seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
        payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(len(payload).to_bytes(HEADER, "big") + payload)
        answers.flush()


if __name__ == "__main__":
    serve()
