"""The snapshot harvest's report: problems of the run, the summary, the report file and the artifacts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from flows.snapshot_harvest.parameters import FLOW_NAME, CameraFilter, HarvestSummary, Outputs
from flows.snapshot_harvest.rows import NOT_DELIVERED, REPORT_COLUMNS, CameraResult, settle_outcome
from tasks.reports import Progress, failures_markdown, markdown_cell, publish_markdown, publish_table
from tasks.run_state import OUTCOMES
from tasks.storage import BucketRef, presigned_get_url
from tasks.tables import write_table

MAX_TABLE_ROWS = 1000  # per-camera table artifact; the report file always has every row
MAX_LINK_ROWS = 500  # cameras listed in the links artifact
TABLE_COLUMNS = ["device_name", "device_uuid", "label_key", "outcome", "reason", "originals", "s3_raw_key", "s3_annotated_key",
                 "image_push", "image_push_reason", "miniviz_image_id", "data_event", "miniviz_data_id",
                 "bytes_before_fit", "bytes_after_fit", "seconds_until_ready", "seconds_total"]  # fmt: skip


class Stages:
    """Wall and CPU seconds from the start of the run to the end of each stage, for the run's last log line."""

    def __init__(self) -> None:
        self.started, self.cpu_started = time.monotonic(), time.process_time()
        self.reached: dict[str, tuple[float, float]] = {}

    def done(self, name: str) -> None:
        wall, cpu = time.monotonic() - self.started, time.process_time() - self.cpu_started
        self.reached[name] = (round(wall, 2), round(cpu, 2))

    def __str__(self) -> str:
        return ", ".join(f"{k} {wall:g}/{cpu:g}" for k, (wall, cpu) in self.reached.items())


async def write_outputs(
    rows: list[CameraResult],
    problems: list[str],
    *,
    outputs: Outputs,
    bucket: BucketRef,
    state: str | None,
    progress: Progress,
    stages: Stages,
    logger: logging.Logger | logging.LoggerAdapter,
) -> HarvestSummary:
    """Settle each camera's outcome, write the report, publish the artifacts and log the run's figures.

    Adds to ``problems`` the run's own (nothing stored at all)."""
    rows.sort(key=lambda r: r.index)
    for row in rows:
        settle_outcome(row)
    problems += _nothing_stored_problem(rows)
    report_location = outputs.report or f"reports/{FLOW_NAME}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    table = pd.DataFrame([r.model_dump(mode="json") for r in rows], columns=REPORT_COLUMNS)
    await asyncio.to_thread(
        write_table, table, report_location, bucket.client if report_location.startswith("s3://") else None
    )
    stages.done("report written")
    summary = _summarise(rows, report_location, state)
    await _publish(rows, summary, bucket, outputs.link_expiry_seconds, time.monotonic() - stages.started)
    harvested, asked = summary.done + summary.deferred, summary.done + summary.deferred + summary.failed
    await progress.update(100, f"{harvested} of {asked} cameras harvested")
    stages.done("artifacts published")
    logger.info(
        "snapshot harvest: %d done, %d deferred, %d failed, %d skipped, %d rejected; originals %d stored, "
        "%d failed; Miniviz images %d pushed, %d deferred, %d failed; data events %d sent, %d deferred, %d "
        "failed; report %s; stages ended at (wall s / this process's CPU s) %s",
        summary.done, summary.deferred, summary.failed, summary.skipped, summary.rejected,
        summary.originals_stored, summary.originals_failed, summary.images_pushed, summary.images_deferred,
        summary.images_failed, summary.data_events_sent, summary.data_events_deferred, summary.data_events_failed,
        report_location, stages,
    )  # fmt: skip
    return summary


def selection_problems(rows: list[CameraResult], cameras: CameraFilter, listed: int) -> list[str]:
    """``no camera matched ...`` when the filters leave no device of the account (asked or offline)."""
    if any(r.outcome in ("pending", "skipped") and r.label_key for r in rows):
        return []
    filters = {"groups": cameras.groups, "name_pattern": cameras.name_pattern,
               "device_uuids": cameras.device_uuids}  # fmt: skip
    used = ", ".join(f"{k}={_shown(v)}" for k, v in filters.items() if v)
    if not used:
        return ["the VizioSense account lists no camera"]
    return [f"no camera matched {used} ({listed} device(s) listed for this account)"]


def _shown(value: str | list[str], most: int = 3) -> str:
    if isinstance(value, list) and len(value) > most:
        return f"{value[:most]!r}"[:-1] + f", ... ({len(value)} in all)]"
    return repr(value)


def _nothing_stored_problem(rows: list[CameraResult]) -> list[str]:
    """When every camera asked failed to store anything: the first error, so the run's message says why."""
    asked = [r for r in rows if r.originals != "skipped"]
    if not asked or any(r.s3_raw_key or r.s3_annotated_key for r in asked):
        return []
    return [f"no original stored: every one of the {len(asked)} camera(s) asked failed; first error: "
            f"{asked[0].reason}"]  # fmt: skip


def _summarise(rows: list[CameraResult], report: str, state: str | None) -> HarvestSummary:
    outcome = Counter(r.outcome for r in rows)
    push = Counter(r.image_push for r in rows)
    data = Counter(r.data_event for r in rows)
    stored = sum(bool(r.s3_raw_key) + bool(r.s3_annotated_key) for r in rows)
    asked = sum(r.originals != "skipped" for r in rows)
    return HarvestSummary(
        cameras=len(rows),
        **{k: outcome[k] for k in OUTCOMES},
        originals_stored=stored,
        originals_failed=2 * asked - stored,
        images_pushed=push["sent"],
        images_deferred=push["deferred"],
        images_failed=sum(push[k] for k in NOT_DELIVERED),
        data_events_sent=data["sent"],
        data_events_deferred=data["deferred"],
        data_events_failed=sum(data[k] for k in NOT_DELIVERED),
        report=report,
        state=state,
    )


async def _publish(
    rows: list[CameraResult], summary: HarvestSummary, bucket: BucketRef, expiry: int, seconds: float
) -> None:
    fitted = [r for r in rows if r.bytes_after_fit is not None]
    figures: list[tuple[str, Any]] = [
        *((f"cameras {k}", getattr(summary, k)) for k in OUTCOMES),
        ("S3 originals stored", summary.originals_stored),
        ("S3 originals failed", summary.originals_failed),
        ("Miniviz images pushed", summary.images_pushed),
        ("Miniviz images deferred (pacing)", summary.images_deferred),
        ("Miniviz images failed", summary.images_failed),
        ("Miniviz data events sent", summary.data_events_sent),
        ("Miniviz data events deferred (pacing)", summary.data_events_deferred),
        ("Miniviz data events failed", summary.data_events_failed),
        ("bytes before fitting", sum(r.bytes_before_fit or 0 for r in fitted)),
        ("bytes after fitting", sum(r.bytes_after_fit or 0 for r in fitted)),
        ("run seconds", round(seconds, 1)),
    ]
    await publish_table(f"{FLOW_NAME}-summary", [{"what": k, "value": v} for k, v in figures],
                        f"Snapshot harvest: {summary.cameras} cameras; report {summary.report}")  # fmt: skip
    table = [{c: _table_value(getattr(r, c)) for c in TABLE_COLUMNS} for r in rows[:MAX_TABLE_ROWS]]
    more = (
        f" (first {MAX_TABLE_ROWS} of {len(rows)}; every row is in the report)"
        if len(rows) > MAX_TABLE_ROWS
        else ""
    )
    await publish_table(f"{FLOW_NAME}-cameras", table, f"One row per camera{more}")
    problems = [{**r.model_dump(), "problem": r.reason} for r in rows if r.outcome in NOT_DELIVERED]
    await publish_markdown(
        f"{FLOW_NAME}-failures",
        failures_markdown("Snapshot harvest: cameras failed or rejected", problems,
                          ["device_name", "device_uuid", "outcome", "problem", "originals", "image_push",
                           "data_event"]),
        "Cameras with a delivery that failed (S3 original, Miniviz image or data event), or rejected",
    )  # fmt: skip
    markdown = await asyncio.to_thread(_links_markdown, rows, bucket, expiry)
    await publish_markdown(f"{FLOW_NAME}-links", markdown, "Presigned links to the stored originals")


def _links_markdown(rows: list[CameraResult], bucket: BucketRef, expiry: int) -> str:
    """Markdown table of presigned GET links to each stored original.

    Presigned URLs are credentials (anyone holding one can download the object until it expires): they go in
    this artifact only, never in logs, the report, errors or flow parameters.
    """
    stored = [r for r in rows if r.s3_raw_key or r.s3_annotated_key]
    whole = BucketRef(bucket.client, bucket.bucket)  # the report keys already carry the bucket folder
    lines = [
        "# Snapshot harvest: stored originals",
        "",
        f"{len(stored)} camera(s) in `s3://{bucket.bucket}`. Links expire {expiry // 3600} h {expiry % 3600 // 60} min "
        "after this run; anyone with a link can download the image until then, so share them with care.",
        "",
        "| Camera | City | Raw | Annotated | Miniviz image |",
        "|---|---|---|---|---|",
    ]
    for r in stored[:MAX_LINK_ROWS]:
        links = [
            f"[{kind}]({presigned_get_url(whole, key, expiry)})" if key else "-"
            for kind, key in (("raw", r.s3_raw_key), ("annotated", r.s3_annotated_key))
        ]
        name = markdown_cell(r.device_name or r.device_uuid)
        city = markdown_cell(", ".join(filter(None, [r.city, r.country])))
        lines.append(f"| {name} | {city} | {links[0]} | {links[1]} | {r.image_push} |")
    if len(stored) > MAX_LINK_ROWS:
        lines += ["", f"... and {len(stored) - MAX_LINK_ROWS} more cameras: their keys are in the report."]
    if not stored:
        lines.append("| (none stored) | | | | |")
    return "\n".join(lines) + "\n"


def _table_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value
