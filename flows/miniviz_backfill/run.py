"""What one backfill run works with, set up before the plan pass: where it sends, what it reads, its journal
and outputs, and the counts the passes fill in."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from blocks.miniviz import MinivizCredentials
from clients.errors import InputError
from tasks.fan_out import ShardRange
from tasks.journal import Journal
from tasks.state import StateRoot
from tasks.storage import s3_client_for
from tasks.tables import list_sources

from .checkpoint import SentIndex
from .dead_letters import DeadLetterWriter
from .labels import LabelMapper
from .options import OutputOptions, PacingOptions
from .plan import ScanProgress, Tally
from .sending import sending_target
from .spec import BackfillSpec

FLOW_NAME = "miniviz-backfill"


@dataclass
class BackfillRun:
    """One run's inputs, target and outputs, and what its plan and send passes found."""

    source: str
    spec: BackfillSpec
    pacing: PacingOptions
    creds: MinivizCredentials  # as sending uses them: the run's interval and enough connections
    root: StateRoot
    interval: float
    in_flight: int  # events sent at once: 1 when paced, ``pacing.concurrency`` otherwise
    s3_client: Any
    files: list[str]
    shard: ShardRange  # a shard of a fanned-out run: which files it takes (none: every file)
    journal: Journal
    sent: SentIndex
    report: str
    dead_letters: DeadLetterWriter
    labels: LabelMapper = field(default_factory=LabelMapper)
    progress: ScanProgress = field(default_factory=ScanProgress)
    tally: Tally = field(default_factory=Tally)
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first ones, for the failures artifact
    send_figures: dict[str, float] = field(default_factory=dict)
    stopped: str = ""  # why sending stopped early, for the report's unfinished rows

    @property
    def to_send(self) -> int:
        return self.tally.total("events") - self.tally.total("already_sent")

    def describe(self, dry_run: bool) -> str:
        how = (
            "dry run"
            if dry_run
            else f"interval {self.interval:g} s"
            if self.interval
            else f"{self.in_flight} in flight"
        )
        part = f" ({self.shard.label()})" if self.shard.is_shard else ""
        return (
            f"Backfill of {len(self.files)} file(s){part} from {self.source} into Miniviz project "
            f"{self.creds.project_id} ({self.creds.plan} plan): {how}; journal {self.journal.location}"
        )


async def open_run(
    source: str,
    spec: BackfillSpec,
    creds: MinivizCredentials,
    pacing: PacingOptions,
    outputs: OutputOptions,
    s3_bucket_block: str,
    shard: ShardRange,
) -> BackfillRun:
    """Resolve S3, open the journal (refusing one written for other transform parameters), list the files
    (a shard's: those of its key range)."""
    creds, interval, in_flight = sending_target(creds, pacing)
    root = await StateRoot.current(outputs.state_root)
    root.check_local([source], "source")
    root.check_local([outputs.journal, outputs.report, outputs.dead_letter], "outputs")
    report = outputs.report or root.report(FLOW_NAME)
    s3_client = await s3_client_for(
        s3_bucket_block or root.s3_bucket_block,
        [source, outputs.journal, report, outputs.dead_letter, root.root],
    )
    default_journal = _default_journal(root, source, creds, spec, pacing.chunk_rows)
    journal = Journal(outputs.journal or default_journal, s3_client)
    sent = await asyncio.to_thread(SentIndex.load, journal)
    if sent.specs and spec.fingerprint() not in sent.specs:
        raise InputError(
            "journal",
            f"{journal.location} was written for other transform parameters",
            "use the same parameters to resume, or another journal",
        )
    files = take_shard(await asyncio.to_thread(list_sources, source, s3_client), shard)
    if not files:
        where = f" in {shard.label()} ({shard.first_key!r} to {shard.stop_key!r})" if shard.is_shard else ""
        raise InputError(
            "source",
            f"{source!r} matches no file{where}",
            "a CSV/Parquet file, glob, directory or s3:// prefix",
        )
    dead_letters = DeadLetterWriter(outputs.dead_letter or _beside(report, "-dead-letter.csv"), s3_client)
    return BackfillRun(
        source, spec, pacing, creds, root, interval, in_flight, s3_client, files, shard, journal, sent, report,
        dead_letters,
    )  # fmt: skip


def take_shard(files: list[str], shard: ShardRange) -> list[str]:
    """The files whose path (or s3:// key) falls in the shard's key range; every file when not a shard. A
    file is never split: a big one is all in one shard."""
    return [f for f in files if shard.holds_key(f)] if shard.is_shard else files


def _default_journal(
    root: StateRoot, source: str, creds: MinivizCredentials, spec: BackfillSpec, chunk_rows: int
) -> str:
    """Named after the input, target project and transform, so re-running the same job resumes."""
    data = {
        "source": source,
        "project_id": creds.project_id,
        "base_url": creds.base_url,
        "spec": spec.fingerprint(),
        # resampled buckets are emitted per chunk, so the event order depends on the chunk size
        "chunk_rows": chunk_rows if spec.resample_ms else None,
    }
    return root.location("miniviz-backfill", data)


def _beside(location: str, suffix: str) -> str:
    base, _, ext = location.rpartition(".")
    return f"{base}{suffix}" if base and "/" not in ext else f"{location}{suffix}"
