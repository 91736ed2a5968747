"""The snapshot harvest's report rows: one ``CameraResult`` per camera, how the cameras are chosen, how errors
are written into the rows.

Plain code (no network, no Prefect) used by the snapshot harvest.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from clients.errors import ApiError, InputError
from clients.redaction import error_text
from clients.viziosense import Device
from flows.snapshot_harvest.labels import LabelSource, assign_label_keys

PatternSyntax = Literal["glob", "regex"]


def name_matcher(pattern: str | None, syntax: PatternSyntax = "glob") -> Callable[[str], bool]:
    """A case-insensitive test on device names.

    ``glob``: shell-style wildcards matched against the WHOLE name (``*parking*``, ``Paris ? Cam 0[1-3]``).
    ``regex``: Python ``re.search`` (anywhere in the name; anchor with ``^``/``$``).
    """
    if not pattern:
        return lambda name: True
    if syntax == "glob":
        folded = pattern.casefold()
        return lambda name: fnmatch.fnmatchcase(name.casefold(), folded)
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise InputError("name_pattern", f"{pattern!r} is not a valid regular expression ({exc})") from None
    return lambda name: compiled.search(name) is not None


class CameraResult(BaseModel):
    """One camera of a harvest: the report row, filled in as it goes through the stages.

    ``outcome`` (the vocabulary of ``tasks.run_state``), set by ``settle_outcome`` once every delivery is over:
    ``done`` (both originals stored, the Miniviz image and data event sent or not asked), ``deferred`` (stored,
    but a Miniviz push waits for its pacing slot: the reason says which and when), ``skipped`` (not asked: listed
    offline, or a uuid the input repeats), ``rejected`` (not a device this account sees, or excluded by the name
    filter although listed by uuid: input to fix), ``failed`` (any delivery failed: an original not stored, the
    image or data event not accepted by Miniviz). ``pending`` only while the run works on it.
    Per delivery: ``originals`` is ``stored``, ``failed`` or ``skipped``; ``image_push`` / ``data_event`` are
    ``sent``, ``deferred`` (pacing: reason says when), ``failed``, ``rejected`` (Miniviz refused the input or
    it cannot be fitted), ``skipped`` or ``off``.
    """

    index: int
    device_uuid: str
    device_name: str | None = None
    label_key: str | None = None
    client_identifier: str | None = None
    city: str | None = None
    country: str | None = None
    online: bool | None = None
    outcome: str = "pending"
    reason: str | None = None
    originals: str = "skipped"
    s3_bucket: str | None = None
    s3_raw_key: str | None = None
    s3_annotated_key: str | None = None
    image_push: str = "off"
    image_push_reason: str | None = None
    miniviz_image_id: str | None = None
    data_event: str = "off"
    data_event_reason: str | None = None
    miniviz_data_id: str | None = None
    bytes_raw: int | None = None
    bytes_annotated: int | None = None
    bytes_before_fit: int | None = None
    bytes_after_fit: int | None = None
    fit_format: str | None = None
    fit_quality: int | None = None
    fit_width: int | None = None
    fit_height: int | None = None
    requested_at: datetime | None = None
    seconds_until_ready: float | None = None
    seconds_request: float | None = None
    seconds_download: float | None = None
    seconds_store: float | None = None
    seconds_fit: float | None = None
    seconds_fit_wait: float | None = None
    seconds_push: float | None = None
    seconds_total: float | None = None
    polls: int | None = None

    def add_reason(self, text: str) -> None:
        """Add ``text`` to the reason once (a row read back from a shard's report is settled again)."""
        if text not in (self.reason or ""):
            self.reason = "; ".join(filter(None, [self.reason, text]))


REPORT_COLUMNS = list(CameraResult.model_fields)


def select_cameras(
    devices: Sequence[Device],
    *,
    name_pattern: str | None = None,
    pattern_syntax: PatternSyntax = "glob",
    device_uuids: Sequence[str] | None = None,
    online_only: bool = True,
    label_source: LabelSource = "name",
    label_prefix: str = "",
) -> list[CameraResult]:
    """One row per camera to report, in listing order (explicit uuids that were not found come last).

    Rows to harvest have outcome ``pending``; cameras listed offline are ``skipped`` when ``online_only``, and
    so are repeats of a uuid already listed (asked once); explicit uuids that are not in ``devices`` (unknown,
    not visible to this account, or outside the group filter) are ``rejected`` with the reason. Label keys are assigned over every listed
    device, so a camera's key does not depend on which filters were used.
    """
    match = name_matcher(name_pattern, pattern_syntax)
    labels = assign_label_keys(devices, label_source, label_prefix)
    wanted: dict[str, int] | None = None
    rows: list[CameraResult] = []
    extra: list[CameraResult] = []
    if device_uuids is not None:
        wanted = {}
        for position, uuid in enumerate(device_uuids):
            uuid = str(uuid).strip()
            if uuid in wanted:
                extra.append(
                    CameraResult(index=0, device_uuid=uuid, outcome="skipped",
                                 reason=f"duplicate: device_uuids[{position}] repeats device_uuids[{wanted[uuid]}]")
                )  # fmt: skip
            else:
                wanted[uuid] = position
    seen: set[str] = set()
    for device in devices:
        if device.uuid in seen or (wanted is not None and device.uuid not in wanted):
            continue
        if not match(device.name or ""):
            if wanted is not None:  # asked for by uuid, but the name filter excludes it: say so
                extra.append(_row(device, labels, "rejected", f"name does not match {name_pattern!r}"))
                seen.add(device.uuid)
            continue
        seen.add(device.uuid)
        if online_only and not device.online:
            checked = f" (status last checked {device.refreshed})" if device.refreshed else ""
            rows.append(_row(device, labels, "skipped", f"offline{checked}: not asked for a snapshot"))
        else:
            rows.append(_row(device, labels, "pending", None))
    if wanted is not None:
        for uuid in wanted:
            if uuid not in seen:
                extra.append(
                    CameraResult(index=0, device_uuid=uuid, outcome="rejected",
                                 reason="unknown device: not among the devices this account sees (with the group filter)")
                )  # fmt: skip
    out = rows + extra
    for i, row in enumerate(out):
        row.index = i
    return out


def _row(device: Device, labels: dict[str, str], outcome: str, reason: str | None) -> CameraResult:
    return CameraResult(
        index=0,
        device_uuid=device.uuid,
        device_name=device.name,
        label_key=labels[device.uuid],
        client_identifier=device.client_identifier,
        city=device.geo_city,
        country=device.geo_country,
        online=device.online,
        outcome=outcome,
        reason=reason,
    )


NOT_DELIVERED = ("failed", "rejected")  # values of image_push / data_event that make the camera failed


def settle_outcome(cam: CameraResult) -> CameraResult:
    """The camera's final ``outcome`` from its deliveries, and a reason naming each one not made.

    Any delivery not made (an original not stored, a Miniviz image or data event failed or refused) makes
    it ``failed``; otherwise a push waiting for its pacing slot makes it ``deferred``; ``skipped`` and
    ``rejected`` rows (not asked) stay so unless a delivery made for them failed (an offline camera's data
    event).
    """
    if cam.outcome == "rejected":
        return cam
    pushes = (("Miniviz image", cam.image_push, cam.image_push_reason),
              ("Miniviz data event", cam.data_event, cam.data_event_reason))  # fmt: skip
    failed = [f"{what} {value}: {why}" for what, value, why in pushes if value in NOT_DELIVERED]
    deferred = [f"{what} deferred: {why}" for what, value, why in pushes if value == "deferred"]
    if failed or cam.originals == "failed":
        cam.outcome = "failed"
        if cam.originals == "failed" and not cam.reason:
            cam.add_reason("originals not stored in S3")
        for text in failed:
            cam.add_reason(text)
    elif cam.outcome != "skipped":
        cam.outcome = "deferred" if deferred else "done"
        for text in deferred:
            cam.add_reason(text)
    return cam


def step_error(step: str, exc: BaseException) -> str:
    """``error_text`` naming the step, unless the message already does (client errors name the operation)."""
    return error_text(exc) if isinstance(exc, ApiError) else f"{step}: {error_text(exc)}"
