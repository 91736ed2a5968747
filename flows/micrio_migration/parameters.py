"""The migration's parameters (grouped for the run form) and the summary a run returns.

Kept apart from the flow function: a deployment run loads ``flow.py`` as a top-level module, while these
classes must keep one importable name (``flows.micrio_migration.parameters``) for pickled results.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.state import state_root_field


class ExistingFolder(BaseModel):
    """Add the images to a folder that exists."""

    model_config = ConfigDict(title="Existing folder", extra="forbid", use_attribute_docstrings=True)

    kind: Literal["existing"] = "existing"
    folder_id: str = Field(min_length=6, max_length=6)
    """Id of the Micrio folder, 6 characters (e.g. dmRoot)."""


class NewFolder(BaseModel):
    """Create a folder, album or space once, and add the images to it (a re-run reuses it)."""

    model_config = ConfigDict(title="New folder", extra="forbid", use_attribute_docstrings=True)

    kind: Literal["new"] = "new"
    parent_id: str = Field(min_length=6, max_length=6)
    """Id of the folder to create it in, 6 characters."""
    name: str = Field("", max_length=500)
    """Name of the new folder. Empty: its type."""
    type: Literal["folder", "album", "space"] = "folder"
    """What to create: a folder, an album, or a space (360 tour container)."""


class AddingOptions(BaseModel):
    """How images are sent to Micrio."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    batch_size: int = Field(100, ge=1, le=1000)
    """Images per images/add call, 1 to 1000. At most one batch can be added twice after a crash."""
    max_attempts: int = Field(3, ge=1, le=10)
    """Adds per image when Micrio reports a transient error (uploadError, statusUpdateError, unknown), 1 to
    10."""
    presign_hours: float = Field(168, gt=0, le=168)
    """Validity of the presigned URLs Micrio downloads S3 objects with, in hours, up to 168 (7 days)."""


class PollingOptions(BaseModel):
    """How the tiling is followed."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    initial_seconds: float = Field(2.0, gt=0, le=600)
    """First wait between status rounds in seconds, up to 600; it grows while nothing changes."""
    max_seconds: float = Field(15.0, gt=0, le=3600)
    """Longest wait between status rounds in seconds, up to 3600."""
    timeout_minutes: float = Field(24 * 60, gt=0, le=7 * 24 * 60)
    """Stop after this many minutes, up to 10080 (7 days); images still processing are reported failed (in
    flight) and a re-run picks them up."""


class OutputOptions(BaseModel):
    """Where the report and the journal go (local paths or s3:// URIs)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    report: str = ""
    """Report, .csv or .parquet. Empty: reports/micrio-migration-{UTC time}.csv (under the state root, if set)."""
    journal: str = ""
    """Journal: a file, or an s3:// prefix. Empty: a file in the state root's micrio-migration/ folder named after
    the source and target, so re-running the same input resumes. The per-folder index of added objects (no
    duplicates across sources) lives in the folders/ folder beside it."""
    state_root: str = state_root_field()


class MigrationSummary(BaseModel):
    """What a run did: item counts by outcome, and where the report and journal are."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    folder_id: str | None
    read_as: str
    """How the source was read: a manifest, or an S3 prefix."""
    total: int
    done: int
    skipped: int
    """Skipped by design: duplicate rows, non-image files, already in the folder."""
    failed: int
    """Failed, the in_flight ones excluded."""
    rejected: int
    in_flight: int
    """Still processing when the run stopped; a re-run polls them."""
    added_this_run: int
    already_added: int
    """Images an earlier run of this journal had added."""
    resumed: str
    """'resumed from <journal>: N already added', or empty for a first run."""
    problems: list[str] = Field(default_factory=list)
    """Why the run is Failed beyond the counts."""
    report: str | None
    journal: str
