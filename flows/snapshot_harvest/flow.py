"""Scheduled camera snapshot harvest: VizioSense cameras -> originals in S3 + a fitted copy and a data event in Miniviz.

1. **Select** cameras: every page of the device list (per group when ``groups`` is given), then the name
   pattern (glob by default, or a regex) and explicit uuids. Online cameras only by default: offline ones are
   ``skipped`` (by design), and so is a uuid listed twice (asked once); explicit uuids that are not found, or
   that the name filter excludes, are ``rejected`` (input to fix). Filters that match no camera at all are a
   problem of the run (it ends Failed, "no camera matched ..."); an account whose cameras are all offline is
   not (Completed, every camera skipped).
2. **Harvest** in batches (one run of the public task ``harvest_viziosense_snapshots`` per ``batch_size``
   cameras, batches overlapping, on the process's VizioSense session; ``cameras.py``): request a snapshot
   from every camera (``concurrency`` VizioSense calls in flight), sleep until the documented ready time
   (20 s), download the raw and the annotated image (a 404 is polled again with backoff, up to
   ``image_timeout_seconds``, far inside the links' 30 min), store both **originals in S3** under ``key_layout``
   with ASCII metadata (device uuid, name, city, country, label, request time; non-ASCII text as RFC 2047
   ``=?UTF-8?B?...?=`` words), then **fit** a copy into Miniviz's 204,800 bytes (Pillow, in ``fit_workers``
   worker processes started once per run: highest JPEG quality that fits, PNG when smaller, downscaled only
   if needed) and **push** it with the camera's ``label_key``. Each service's calls go through the process's
   session of its account (``creds.session()``: one client, its pacers and one-connection pools).
3. **Pacing, never a 429 loop.** Miniviz takes one image per label per 60 s. The Miniviz session paces
   every sender of the process, and a small pacing state (``outputs.state``: local JSON file by default, or
   ``s3://``) remembers when each label last got an image, so a harvest started right after another *defers*
   every image push with the reason instead of collecting 429s (a 429 is never retried: a deferral too). Data events are paced per project (Pro: one per 15 s): they go out
   stalest camera first for ``data_event_budget_seconds``; the rest are deferred and go first next run.
4. **Report**: one row per camera as CSV/Parquet and a table artifact: its ``outcome`` and ``reason``, then one
   column per delivery (``originals`` stored/failed/skipped with the S3 keys, ``image_push`` and ``data_event``
   sent/deferred/failed/rejected/skipped/off with their reasons and Miniviz ids), bytes before/after fitting,
   timings; a markdown artifact of presigned links to the originals; a markdown list of the failures.
5. **Final state** (``tasks.run_state.finish``, after the report and artifacts): a camera is ``done`` when
   every delivery was made, ``deferred`` when one waits for its Miniviz pacing slot, ``failed`` when any
   delivery failed (an original not stored, an image or data event Miniviz did not accept): a camera stored
   in S3 but refused by Miniviz is failed, not done. The run is Completed when every camera is done, deferred
   or skipped, else Failed with the counts and the report's location. A Miniviz 401/403 on the first image
   push (or data event) is detected once: the rest of that kind are not sent, fail with the same reason, and
   the originals still go to S3.

A harvest takes *new* snapshots each time, so there is nothing to resume after a crash: a re-run harvests
again, and the pacing state (marked before each send) keeps it from pushing too soon.

6. **Fan-out** (``fan_out.shard_size``; ``shards.py``): more cameras to harvest than that, and the run splits
   them by device uuid range into shards, runs of the ``snapshot-harvest-shard`` deployment on the work pool,
   all at once, and waits; a shard whose run crashed starts again and skips the cameras its journal says it
   stored (a kill stores again at most the cameras in delivery then: ``2 * max(concurrency, fit_workers)``).
   The parent writes one report and one set of artifacts from the shards' reports and ends with the final
   state of the whole fleet. Pacing across shards: a camera's label is in one shard only, so image pacing
   (per label) never meets another shard; data events (per project) and any label go through the Miniviz
   session's shared pacing (``clients.shared_pacing``: a machine's lock files, or Redis with
   ``$PIPELINES_PACING_URL`` across machines, which a pool of several machines needs), so shards never cause
   a 429 with their own sends (and one that comes anyway is a deferral). Each shard spends its own
   ``data_event_budget_seconds``, stalest cameras of its range first. The pacing state file is written by the
   parent only: each shard reads it to seed its pacers and keeps its marks in its own file next to its report
   (a re-run of the shard reads them back), and the parent merges those marks into the project's state when
   the shards are over, so no shard's marks are lost to another's write. Shards need a state root every
   worker reaches (``s3://`` or a shared folder).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from blocks.base import load_block
from blocks.miniviz import MinivizCredentials
from blocks.viziosense import VizioSenseCredentials
from clients.viziosense import Device
from flows.snapshot_harvest.cameras import (
    HarvestSettings,
    harvest_cameras,
    open_run,
    send_data_events,
)
from flows.snapshot_harvest.parameters import (
    FLOW_NAME,
    CameraFilter,
    HarvestSummary,
    MinivizPush,
    Outputs,
    Performance,
    S3Layout,
    Timing,
    check_parameters,
    default_state_location,
)
from flows.snapshot_harvest.report import Stages, selection_problems, write_outputs
from flows.snapshot_harvest.rows import CameraResult, select_cameras
from flows.snapshot_harvest.shards import harvest_in_shards, open_shard, pacing_state, shard_done
from tasks.fan_out import FanOut
from tasks.reports import Progress
from tasks.run_state import OUTCOMES, finish
from tasks.state import StateRoot
from tasks.storage import load_bucket
from tasks.viziosense import list_viziosense_devices


@flow(name=FLOW_NAME, log_prints=False)
async def harvest_snapshots(
    viziosense_block: str = "viziosense-demo",
    s3_bucket_block: str = "s3-demo",
    miniviz_block: str = "miniviz-demo",
    cameras: CameraFilter = CameraFilter(),  # noqa: B008 (pydantic models: Prefect renders them as sections)
    s3_layout: S3Layout = S3Layout(),  # noqa: B008
    miniviz_push: MinivizPush = MinivizPush(),  # noqa: B008
    timing: Timing = Timing(),  # noqa: B008
    performance: Performance = Performance(),  # noqa: B008
    outputs: Outputs = Outputs(),  # noqa: B008
    fan_out: FanOut = FanOut(),  # noqa: B008
) -> HarvestSummary:
    """Harvest a fresh snapshot from VizioSense cameras into S3 and Miniviz.

    From Python, the groups take dicts: harvest_snapshots(miniviz_block="", cameras={"groups": ["parking"]}).
    The run ends Completed when every camera was done, skipped (offline) or deferred (Miniviz pacing), and
    Failed, after writing the report and artifacts, when any camera failed or was rejected, no camera
    matched the filter, or Miniviz refused the credentials.

    Args:
        viziosense_block: Name of the saved VizioSense Credentials block (an API key is best for schedules).
        s3_bucket_block: Name of the saved S3 Bucket block the originals go to (its folder, if any, is put in
            front of every key; its credentials may carry an endpoint URL).
        miniviz_block: Name of the saved Miniviz Credentials block. Empty: S3 only, nothing sent to Miniviz.
        cameras: Which cameras: groups, name pattern, uuids, online only.
        s3_layout: Key prefix and layout of the originals in S3.
        miniviz_push: Image and data event options for Miniviz.
        timing: Waits for the cameras' images.
        performance: Concurrency and batch sizes.
        outputs: Report, pacing state and link expiry.
        fan_out: Shards on the work pool for big fleets, by camera uuid range (shard size 0: all in this run).
    """
    logger, stages, shard = get_run_logger(), Stages(), fan_out.shard
    check_parameters(cameras, s3_layout, miniviz_push, timing)  # before anything is asked of a camera
    viziosense = await load_block(VizioSenseCredentials, viziosense_block)
    bucket = await load_bucket(s3_bucket_block)
    root = await StateRoot.current(outputs.state_root)
    root.check_local([outputs.report, outputs.state], "outputs")
    outputs = outputs.model_copy(update={"report": outputs.report or root.report(FLOW_NAME)})
    miniviz = await load_block(MinivizCredentials, miniviz_block) if miniviz_block else None
    location = (outputs.state or default_state_location(root, miniviz)) if miniviz else None
    progress = Progress(f"{FLOW_NAME}-progress", "Cameras harvested")
    await progress.update(0, "listing cameras")

    rows, listed = await _select(viziosense, cameras, miniviz_push)
    problems = selection_problems(rows, cameras, listed)
    rows, journal = await open_shard(rows, shard, outputs.report, bucket, logger)  # a shard: its uuid range
    pending = [r for r in rows if r.outcome == "pending"]
    stages.done("listed")
    if fan_out.shard_size and len(pending) > fan_out.shard_size:  # a big fleet: shards on the work pool
        summary = await harvest_in_shards(rows, problems, fan_out=fan_out, root=root, outputs=outputs,
                                          bucket=bucket, state=location, progress=progress, stages=stages)  # fmt: skip
        return _finish(summary, problems, logger)
    state = await pacing_state(location, shard, outputs.report, bucket, logger) if location else None
    settings = HarvestSettings.of(s3_layout, miniviz_push, timing, performance)
    async with open_run(viziosense=viziosense, miniviz=miniviz, bucket=bucket, state=state, settings=settings,
                        progress=progress, cameras=rows, journal=journal) as run:  # fmt: skip
        await progress.update(5, f"0 of {len(pending)} cameras harvested")
        await harvest_cameras(run, pending)
        stages.done("harvested")
        if run.miniviz is not None and miniviz_push.data_events and any(r.label_key for r in rows):
            await progress.update(92, "sending Miniviz data events")
            await send_data_events(run, rows, miniviz_push.data_event_budget_seconds)
            stages.done("data events")
    problems += [f"Miniviz refused this run's {gate.what}: {gate.error}" for gate in
                 (run.image_gate, run.data_gate) if gate.error]  # fmt: skip

    summary = await write_outputs(rows, problems, outputs=outputs, bucket=bucket, progress=progress,
                                  state=state.location if state else None, stages=stages, logger=logger)  # fmt: skip
    if shard.is_shard:  # what the parent reads back
        await shard_done(summary, problems, outputs.report, bucket)
    return _finish(summary, problems, logger)


def _finish(summary: HarvestSummary, problems: list[str], logger: Any) -> Any:
    """The summary when every camera was done, deferred or skipped, else a Failed state with the counts."""
    counts = {k: getattr(summary, k) for k in OUTCOMES}
    return finish(summary, what="cameras", counts=counts, report=summary.report, problems=problems,
                  logger=logger)  # fmt: skip


async def _select(
    viziosense: VizioSenseCredentials, cameras: CameraFilter, push: MinivizPush
) -> tuple[list[CameraResult], int]:
    """One row per camera to report (``pending`` ones to harvest), and how many devices were listed."""
    devices: dict[str, Device] = {}
    for group in cameras.groups or [None]:
        for device in await list_viziosense_devices(viziosense, sort="name", group=group):
            devices.setdefault(device.uuid, device)
    rows = select_cameras(list(devices.values()), name_pattern=cameras.name_pattern,
                          pattern_syntax=cameras.name_pattern_syntax, device_uuids=cameras.device_uuids or None,
                          online_only=cameras.online_only, label_source=push.label_source,
                          label_prefix=push.label_prefix)  # fmt: skip
    get_run_logger().info(
        "%d device(s) listed; %d camera(s) to harvest, %d skipped, %d rejected", len(devices),
        sum(r.outcome == "pending" for r in rows), sum(r.outcome == "skipped" for r in rows),
        sum(r.outcome == "rejected" for r in rows),
    )  # fmt: skip
    return rows, len(devices)
