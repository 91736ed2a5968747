"""The snapshot harvest's parameters: one pydantic model per group (a section of the UI's run form), the
checks made before anything is asked of a camera, and the run's summary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from blocks.miniviz import MinivizCredentials
from clients.errors import InputError
from clients.miniviz import MAX_IMAGE_BYTES
from flows.snapshot_harvest.keys import DEFAULT_KEY_LAYOUT, check_key_layout, snapshot_key
from flows.snapshot_harvest.labels import check_label_prefix
from flows.snapshot_harvest.rows import name_matcher
from tasks.state import StateRoot, state_root_field
from tasks.storage import check_key

FLOW_NAME = "snapshot-harvest"


class CameraFilter(BaseModel):
    """Which cameras to harvest. Every filter left empty: every camera the account sees."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    groups: list[str] = Field(default_factory=list)
    """VizioSense groups to harvest (one device listing per group). Empty: every group."""
    name_pattern: str = ""
    """Keep cameras whose name matches, case-insensitive: a glob on the whole name (*parking*, Paris ? Cam
    0[1-3]) or a regex searched anywhere in it. Empty: every name."""
    name_pattern_syntax: Literal["glob", "regex"] = "glob"
    """glob: shell wildcards on the whole name. regex: Python re.search."""
    device_uuids: list[str] = Field(default_factory=list)
    """Only these cameras (still subject to the group and name filters). A uuid not found is reported as
    rejected, a repeated one as skipped. Empty: no uuid filter."""
    online_only: bool = True
    """Ask only cameras listed online; offline ones are reported as skipped (by design). Off: ask cameras
    listed offline too (their status may be stale; a refusal is then a failure)."""


class S3Layout(BaseModel):
    """Where the originals go in the S3 Bucket block's bucket (after the block's folder, if any)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    prefix: str = "snapshots"
    """First part of every key, the {prefix} of key_layout."""
    key_layout: str = DEFAULT_KEY_LAYOUT
    """S3 key of each original. Placeholders: {prefix}, {device_uuid}, {label_key}, {YYYY}, {MM}, {DD}, {hh},
    {mm}, {ss} (request time, UTC), {timestamp} (UTC, like 20250131T120000.123Z), {kind} (raw or
    annotated). It must contain the camera, {timestamp} and {kind}."""


class MinivizPush(BaseModel):
    """What goes to Miniviz (when a Miniviz block is given): a fitted image and a data event per camera."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    push_kind: Literal["annotated", "raw"] = "annotated"
    """Which image is pushed (the other one if it could not be downloaded)."""
    max_image_bytes: int = Field(MAX_IMAGE_BYTES, ge=1024, le=MAX_IMAGE_BYTES)
    """Byte limit the pushed copy is fitted into, 1,024 to 204,800 (Miniviz's limit, the default)."""
    label_source: Literal["name", "client_identifier", "none"] = "name"
    """What the readable part of each label key comes from. A short hash of the uuid always follows, so keys
    are unique and stable; with name, renaming a camera starts a new label."""
    label_prefix: str = ""
    """Put in front of every label key (e.g. vzs/); Miniviz label characters only, at most 32."""
    data_events: bool = True
    """Send one data event per camera (online, ok, bytes, seconds until ready)."""
    data_event_budget_seconds: float = Field(60.0, ge=0, le=3600)
    """Seconds the run may spend sending data events, 0 to 3600. Miniviz takes one per project every 15 s
    (Pro) or 60 s (Free): the stalest cameras go first, the rest are deferred (by design) and go first next
    run. With the project's limit off they all go out at once."""


class Timing(BaseModel):
    """How long to wait for the cameras' images."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    ready_after_seconds: float = Field(20.0, ge=0, le=600)
    """Seconds to wait after a request before fetching, 0 to 600 (documented: at least 20)."""
    poll_interval_seconds: float = Field(2.0, gt=0, le=60)
    """Seconds between fetches of an image not served yet, up to 60; grows 1.5x up to 5x."""
    image_timeout_seconds: float = Field(300.0, gt=0, le=1500)
    """Seconds after its ready time to give up on an image, up to 1500. The wait plus this must stay under the
    links' 30 min (1800 s) validity."""


class Performance(BaseModel):
    """Concurrency; the defaults suit a fleet of a few thousand cameras."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    concurrency: int = Field(16, ge=1, le=256)
    """VizioSense requests and downloads in flight, 1 to 256 (also bounds images in memory)."""
    fit_workers: int = Field(0, ge=0, le=64)
    """Processes re-encoding images for Miniviz, up to 64. 0: one per CPU."""
    batch_size: int = Field(100, ge=1, le=1000)
    """Cameras per task run, 1 to 1000; batches overlap, so this sets the observability grain, not the speed."""
    max_cameras_in_flight: int = Field(2000, ge=1, le=100000)
    """Cameras requested but not finished at once, 1 to 100,000 (links expire 30 min after the request, so
    huge fleets are taken in waves)."""
    s3_workers: int = Field(8, ge=1, le=64)
    """Uploads of originals to S3 in flight (connections), 1 to 64; also the threads for boto3 when it is
    needed (an upload the fast path could not make)."""


class Outputs(BaseModel):
    """Where the report and the pacing state are written."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    report: str = ""
    """Report file (.csv or .parquet; local path or s3://bucket/key). Empty:
    reports/snapshot-harvest-{UTC time}.csv (under the state root, if set)."""
    state: str = ""
    """Miniviz pacing state: a local JSON file or s3://bucket/key.json (through the S3 Bucket block's
    credentials). Runs that share a Miniviz project must share it. Empty: miniviz-{project}.json under the
    state root's snapshot-harvest/ folder."""
    link_expiry_seconds: int = Field(86400, ge=60, le=604800)
    """Seconds the presigned links to the originals (links artifact) stay valid, 60 to 604,800 (7 days)."""
    state_root: str = state_root_field()


class HarvestSummary(BaseModel):
    """What a run did: cameras by outcome, each delivery's counts, and where the report and state are.

    Originals are counted as objects (two per camera asked); images and data events per camera.
    """

    cameras: int
    done: int
    deferred: int
    skipped: int
    rejected: int
    failed: int
    originals_stored: int
    originals_failed: int
    images_pushed: int
    images_deferred: int
    images_failed: int
    data_events_sent: int
    data_events_deferred: int
    data_events_failed: int
    report: str
    state: str | None


def default_state_location(root: StateRoot, credentials: MinivizCredentials) -> str:
    """One pacing state per Miniviz project (limits are per project + label), named after the project."""
    identity = f"{credentials.base_url}|{credentials.project_id}"
    return root.location("snapshot-harvest", identity, suffix=".json", prefix="miniviz-")


def check_parameters(
    cameras: CameraFilter, s3_layout: S3Layout, miniviz_push: MinivizPush, timing: Timing
) -> None:
    """Raise InputError naming the parameter, before anything is asked of a camera."""
    check_key_layout(s3_layout.key_layout)
    check_label_prefix(miniviz_push.label_prefix)
    name_matcher(cameras.name_pattern, cameras.name_pattern_syntax)
    check_key(snapshot_key(s3_layout.key_layout, prefix=s3_layout.prefix, device_uuid="u", label_key="l",
                           requested_at=datetime.now(UTC), kind="raw"), field="key_layout")  # fmt: skip
    if timing.ready_after_seconds + timing.image_timeout_seconds >= 1800:
        raise InputError(
            "image_timeout_seconds", "ready_after + timeout must end inside the 30 min link validity"
        )
