"""Miniviz historical backfill, the tasks behind ``flows/miniviz_backfill.py``.

- ``spec``: what to read and how (``BackfillSpec``), rejection reasons.
- ``timestamps``, ``labels``, ``values``: the column rules (UNIX ms, label keys, payload values and sizes).
- ``transform``: one file's chunks -> numbered events and rejections (deterministic: the basis of resuming).
- ``checkpoint``: what the journal says was sent; file ids and fingerprints.
- ``dead_letters``: the CSV of rejected rows and failed events.
- ``plan``: the plan pass (counts, dead letters) and the pending batches for sending.
- ``send``: the paced sender that journals every acknowledgement.
"""

from .checkpoint import IntervalSet, SentIndex, file_fingerprint, file_id, ranges
from .dead_letters import DEAD_LETTER_COLUMNS, DeadLetterWriter
from .labels import LabelMapper, map_label_key
from .plan import (
    ScanProgress,
    Tally,
    estimate_seconds,
    format_duration,
    iter_pending_batches,
    scan_backfill,
    scan_source,
)
from .send import BackfillSender, BatchOutcome, FatalSendError, send_backfill_batch
from .spec import (
    REASONS,
    SKIPPED_REASONS,
    BackfillSpec,
    EpochUnit,
    Oversize,
    ResampleHow,
    datetime_to_ms,
    resample_milliseconds,
)
from .timestamps import format_ms, to_unix_ms
from .transform import ChunkResult, Event, FileTransform, Rejection, iter_file_results, transform_frame
from .values import clean_metric, split_payload

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "REASONS",
    "SKIPPED_REASONS",
    "BackfillSender",
    "BackfillSpec",
    "BatchOutcome",
    "ChunkResult",
    "DeadLetterWriter",
    "EpochUnit",
    "Event",
    "FatalSendError",
    "FileTransform",
    "IntervalSet",
    "LabelMapper",
    "Oversize",
    "Rejection",
    "ResampleHow",
    "ScanProgress",
    "SentIndex",
    "Tally",
    "clean_metric",
    "datetime_to_ms",
    "estimate_seconds",
    "file_fingerprint",
    "file_id",
    "format_duration",
    "format_ms",
    "iter_file_results",
    "iter_pending_batches",
    "map_label_key",
    "ranges",
    "resample_milliseconds",
    "scan_backfill",
    "scan_source",
    "send_backfill_batch",
    "split_payload",
    "to_unix_ms",
    "transform_frame",
]
