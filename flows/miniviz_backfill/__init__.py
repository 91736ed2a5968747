"""Miniviz historical backfill: the flow (``flow.py``) and what only it uses.

- ``options``: the flow's grouped parameters; ``spec``: what to read and how (``BackfillSpec``), rejection reasons.
- ``timestamps``, ``labels``, ``values``: the column rules (UNIX ms, label keys, payload values and sizes).
- ``transform``: one file's chunks -> numbered events and rejections (deterministic: the basis of resuming).
- ``checkpoint``: what the journal says was sent; file ids and fingerprints.
- ``dead_letters``: the CSV of rejected rows and failed events.
- ``plan``: the plan pass (counts, dead letters) and the pending batches for sending.
- ``run``: what one run works with; ``sending``: the send pass, through ``tasks.miniviz.send_miniviz_data_batch``;
  ``report``: the plan, progress, report file, artifacts and summary.
"""

from .checkpoint import IntervalSet, SentIndex, file_fingerprint, file_id
from .dead_letters import DEAD_LETTER_COLUMNS, DeadLetterWriter
from .flow import miniviz_backfill
from .labels import LabelMapper, map_label_key
from .report import BackfillSummary
from .spec import BackfillSpec, datetime_to_ms, resample_milliseconds
from .timestamps import format_ms, to_unix_ms
from .transform import Event, iter_file_results, transform_frame
from .values import split_payload

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "BackfillSpec",
    "BackfillSummary",
    "DeadLetterWriter",
    "Event",
    "IntervalSet",
    "LabelMapper",
    "SentIndex",
    "datetime_to_ms",
    "file_fingerprint",
    "file_id",
    "format_ms",
    "iter_file_results",
    "map_label_key",
    "miniviz_backfill",
    "resample_milliseconds",
    "split_payload",
    "to_unix_ms",
    "transform_frame",
]
