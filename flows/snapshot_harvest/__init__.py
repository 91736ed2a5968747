"""Scheduled camera snapshot harvest (VizioSense -> S3 + Miniviz): the flow in ``flow.py``, its private code
beside it (``cameras``: the per-camera pipeline and data events; ``rows``, ``labels``, ``keys``, ``pacing``,
``fit_pool``, ``parameters``, ``report``, ``shards``: the fan-out of a big fleet over the work pool).

``from flows.snapshot_harvest import harvest_snapshots`` loads the flow on first use only: the fit worker
processes run ``python -m flows.snapshot_harvest.fit_pool_worker``, which must not import Prefect.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["HarvestSummary", "harvest_snapshots"]
_FROM = {
    "harvest_snapshots": "flows.snapshot_harvest.flow",
    "HarvestSummary": "flows.snapshot_harvest.parameters",
}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_FROM[name]), name)
