"""What became of each image and analysis of a skin-analysis run (shared by the batch tasks and the reports)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.skin.results import Row


class ImageOutcome(BaseModel):
    item: int
    status: Literal["done", "rejected", "failed", "submitted"]
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None  # of the file as read
    uploaded_sha256: str | None = None  # of the bytes sent (differs after an EXIF rotation or a downscale)
    transform: str | None = None
    image_id: str | None = None


class UnitOutcome(BaseModel):
    """What became of one analysis.

    ``submitted`` (only between ``submit_skin_batch`` and ``collect_skin_results``): computed, results to
    collect. ``pending`` on a failed one: computed, results not in before the timeout (a re-run collects them).
    """

    unit: int
    status: Literal["done", "rejected", "failed", "submitted"]
    key: str | None = None
    error: str | None = None
    warnings: str | None = None
    resumed: bool = False  # finished by an earlier run: nothing was sent this time
    pending: bool = False
    uploaded: bool = False  # this run sent image bytes to Haut
    subject_id: str | None = None
    batch_id: str | None = None
    image_ids: dict[str, str] = Field(default_factory=dict)  # side -> Haut image id
    images: list[ImageOutcome] = Field(default_factory=list)
    rows: list[Row] = Field(default_factory=list)  # MetricRow fields, as plain tuples

    def settle(self, status: str, error: str | None = None, **changes: Any) -> UnitOutcome:
        """A copy with a final ``status``; images not rejected on their own share it (and the error)."""
        images = [
            i if i.status == "rejected" else i.model_copy(update={"status": status, "reason": error})
            for i in self.images
        ]
        return self.model_copy(update={"status": status, "error": error, "images": images, **changes})
