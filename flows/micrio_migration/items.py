"""One source of a migration and what became of it: the state the journal, the adding and the report share."""

from __future__ import annotations

from dataclasses import dataclass, field

from clients.micrio import TRANSIENT_ERRORS, ImageStatus


@dataclass(slots=True)  # a 100k-image run holds 100k of them
class Item:
    """One source. ``key`` identifies it in the journal (the manifest URL or the S3 object), ``url`` is sent,
    ``source`` is the source as given (echoed in the report), ``identity`` keys the per-folder index."""

    row: int
    key: str
    name: str | None
    url: str | None = field(default=None, repr=False)
    source: str | None = None
    identity: str | None = None
    checked: bool = True  # False until an S3 object's first bytes were looked at
    attempts: int = 0
    micrio_id: str | None = None
    status: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: str | None = None
    rejected: str | None = None
    skipped: str | None = None
    unreadable: str | None = None  # the content check could not read it (not the user's fault): failed

    def set_aside(self) -> bool:
        return self.rejected is not None or self.skipped is not None or self.unreadable is not None

    def needs_add(self, max_attempts: int) -> bool:
        """Never added, or failed transiently, with attempts left."""
        retryable = self.micrio_id is None or (self.status == "error" and self.error in TRANSIENT_ERRORS)
        return not self.set_aside() and retryable and self.attempts < max_attempts

    def in_flight(self) -> bool:
        return self.micrio_id is not None and self.status not in ("ready", "error") and not self.set_aside()

    def finished(self, max_attempts: int) -> bool:
        return not self.in_flight() and not self.needs_add(max_attempts)

    def failed_final(self, max_attempts: int) -> bool:
        """Left failed for good by a run: Micrio's final error, or out of attempts."""
        return not self.set_aside() and self.status != "ready" and self.finished(max_attempts)

    def reset(self) -> None:
        """Forget an earlier failure, so the image is checked and added again (retry_failed)."""
        self.attempts, self.micrio_id, self.status, self.error = 0, None, None, None
        self.width = self.height = self.thumbnail = None
        self.identity = None if self.key.startswith("s3://") else self.identity
        self.checked = not self.key.startswith("s3://")

    def apply(self, status: ImageStatus) -> None:
        """Take Micrio's status of the image (its size and thumbnail once ready)."""
        self.status, self.error = status.status, status.error
        self.width, self.height, self.thumbnail = status.width, status.height, status.thumbnail
