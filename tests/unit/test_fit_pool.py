"""flows.snapshot_harvest.fit_pool: images fitted in worker processes, errors reported per image, dead workers replaced."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from clients.errors import InputError
from flows.snapshot_harvest import fit_pool as fit_pool_module
from flows.snapshot_harvest.fit_pool import FitPool, WorkerDied
from tasks.image_fit import fit_to_byte_limit

LIMIT = 60_000


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A noisy 640x480 JPEG of ~100 KB: it must be re-encoded to fit LIMIT."""
    rng = np.random.default_rng(7)
    pixels = np.clip(128 + rng.normal(0, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    assert len(buf.getvalue()) > LIMIT
    return buf.getvalue()


async def test_fits_in_worker_processes_like_in_process(photo):
    pool = FitPool(2)
    try:
        results = await asyncio.gather(*(pool.fit(photo, LIMIT) for _ in range(4)))
        in_process = fit_to_byte_limit(photo, LIMIT)
        for result in results:
            assert result.error is None
            assert result.fitted.data == in_process.data and result.fitted.quality == in_process.quality
            assert result.seconds > 0 and result.waited >= 0
        assert len({w.proc.pid for w in pool._all}) == 2  # two processes did the work
        assert pool.workers_cpu_seconds() > 0 and pool.workers_peak_rss_mb() > 10
    finally:
        await pool.close()
    assert all(w.proc.returncode == 0 for w in pool._all)  # they exit at the end of their input


async def test_an_image_that_cannot_be_fitted_comes_back_with_the_reason(photo):
    pool = FitPool(1)
    try:
        bad = await pool.fit(b"not an image", LIMIT)
        good = await pool.fit(photo, LIMIT)  # the same worker carries on
    finally:
        await pool.close()
    assert bad.fitted is None and isinstance(bad.error, InputError)
    assert str(bad.error).startswith("image: not a recognised image format")
    assert good.error is None and len(good.fitted.data) <= LIMIT


async def test_a_killed_worker_is_replaced(photo):
    pool = FitPool(1)
    try:
        await pool.fit(photo, LIMIT)
        first = pool._all[0].proc
        first.kill()
        await first.wait()
        result = await pool.fit(photo, LIMIT)
    finally:
        await pool.close()
    assert result.error is None
    assert len(pool._all) == 2 and pool._all[1].proc.pid != first.pid


async def test_an_image_its_workers_die_on_twice_is_an_error(photo, monkeypatch):
    # workers that die on their first request, as a worker killed for memory by one huge image would
    monkeypatch.setattr(
        fit_pool_module, "WORKER_ARGS", ("-c", "import sys; sys.stdin.buffer.read(8); sys.exit(3)")
    )
    pool = FitPool(1)
    try:
        with pytest.raises(WorkerDied, match="exit code 3"):
            await pool.fit(photo, LIMIT)
    finally:
        await pool.close()
    assert "exit code 3" in pool.problem


async def test_fits_in_threads_when_no_worker_can_start(photo, monkeypatch):
    monkeypatch.setattr(fit_pool_module.sys, "executable", "/nonexistent/python")
    pool = FitPool(2)
    try:
        result = await pool.fit(photo, LIMIT)
    finally:
        await pool.close()
    assert result.error is None and len(result.fitted.data) <= LIMIT
    assert pool.problem.startswith("could not start an image fitting process")
