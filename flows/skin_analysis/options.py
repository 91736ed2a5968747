"""The skin-analysis flow's parameters (each group a section of the Prefect UI's run form) and its summary."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clients.haut import FS3_TECH_NAME, FSM2_TECH_NAME, MIN_IMAGE_SIDE
from tasks.state import state_root_field


class AnalysisOptions(BaseModel):
    """Which Haut dataset, API and applications."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    dataset_name: str = Field("skin-analysis", min_length=1, max_length=512)
    """Haut dataset to use, found by name or created (one per study, not per run); 1 to 512 characters."""
    api_version: Literal["v1", "v3"] = Field("v1", title="API version")
    """v1: Face Skin Metrics 2.0, one analysis and result per image. v3: Face Skin Analysis 3.0 (beta), one
    batch per subject and visit with up to three sides."""
    applications: list[str] = Field(default_factory=list)
    """Haut applications to attach to the dataset. Empty: face_skin_metrics_2.0 for v1, face_skin_metrics_3.0
    for v3."""

    def application_names(self) -> list[str]:
        """The applications to attach: the given ones, or the API version's skin metrics application."""
        return self.applications or [FSM2_TECH_NAME if self.api_version == "v1" else FS3_TECH_NAME]


class UploadOptions(BaseModel):
    """How images are prepared and sent."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_side: int = Field(0, ge=0, le=20000, title="Longest side (px)")
    """Shrink images whose longer side exceeds this many pixels before upload, 256 to 20000. 0: send them at
    their size (Haut sets no maximum; bigger is slower)."""
    batch_size: int = Field(20, ge=1, le=500)
    """Analyses per task run (read, sent and polled together), 1 to 500."""
    concurrency: int = Field(8, ge=1, le=64)
    """Requests in flight at once within one batch (uploads, computes, polls), 1 to 64."""
    parallel_batches: int = Field(4, ge=1, le=16)
    """Batches running at the same time, 1 to 16."""

    @field_validator("max_side")
    @classmethod
    def _max_side_is_off_or_big_enough(cls, value: int) -> int:
        if 0 < value < MIN_IMAGE_SIDE:
            raise ValueError(f"0 (keep the size) or at least {MIN_IMAGE_SIDE}, as Haut needs")
        return value


class PollingOptions(BaseModel):
    """When results are asked for; 0 takes the Haut block's setting."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    initial_delay: float = Field(0, ge=0, le=3600, title="First poll after (s)")
    """Seconds from sending an analysis to its first results poll, 0 to 3600; waits grow 1.5 times after each
    poll. 0: the Haut block's setting (2 s unless changed)."""
    max_delay: float = Field(0, ge=0, le=3600, title="Longest wait between polls (s)")
    """Longest wait between results polls, in seconds, 0 to 3600. 0: the block's (15 s)."""
    results_timeout: float = Field(0, ge=0, le=86400, title="Results timeout (s)")
    """Seconds to wait for an analysis's results once it is sent, 0 to 86400; later results are collected by a
    re-run. 0: the block's (300 s)."""


class PrivacyOptions(BaseModel):
    """Personal data in the reports, and photos kept in Haut. Logs and artifacts never carry names or paths."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    include_file_names: bool = False
    """Add an image column to the reports: the file name relative to the source folder or prefix, or as
    written in the manifest. Off: images are known by item number and content hash only (file names are
    often people's names)."""
    include_subject_names: bool = False
    """Add a subject_name column to the reports. Off: subjects are known by a pseudonymous key."""
    delete_photos: bool = False
    """GDPR: delete each subject's photo files in Haut once all its analyses in this run have results (image
    records and results stay)."""


class OutputOptions(BaseModel):
    """Where the reports and the journal go (local paths or s3:// URIs)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    report: str = ""
    """Per-image report, .csv or .parquet. Empty: reports/skin-analysis-{UTC time}.csv (under the state root,
    if set)."""
    metrics_report: str = ""
    """Tidy metrics table. Empty: the report's name with -metrics added."""
    journal: str = ""
    """Where to keep the journal (a file, or an s3:// prefix). Empty: a file in the state root's
    skin-analysis/ folder named after the source, dataset, API version and company, so re-running the same
    input resumes."""
    state_root: str = state_root_field()


class SkinAnalysisSummary(BaseModel):
    """What a run did: image and analysis counts, and where the reports and the journal are."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    api_version: str
    dataset_id: str
    """Empty when nothing was sent (no usable image): no dataset is created."""
    images: int
    """Input images (every one is in the report)."""
    analyses: int
    """v1: one per usable image; v3: one per subject batch of sides."""
    subjects: int
    done: int
    """Images whose analysis has results (this run or an earlier one)."""
    rejected: int
    """Images refused before sending (unusable input), with the reason."""
    failed: int
    """Images whose analysis failed or has no results yet."""
    pending: int
    """Of the failed: computed, results not in yet; a re-run collects them."""
    resumed: int
    """Analyses finished by an earlier run (nothing sent this time)."""
    ignored_files: int
    """Files in the folder or prefix that are not images by extension."""
    photos_deleted_subjects: int
    problems: list[str] = Field(default_factory=list)
    """Why the run is Failed beyond the counts."""
    report: str
    metrics_report: str
    journal: str
