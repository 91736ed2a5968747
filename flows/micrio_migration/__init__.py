"""Bulk migration of images into Micrio, with status polling, that resumes safely after any crash.

Micrio's own CLI keeps no journal and aborts a whole run on one bad image. This flow:

1. reads the sources: a manifest (CSV, Parquet or JSON lines with ``source_url`` and optional ``name``; local
   or ``s3://``), or an S3 prefix (an ``s3://`` URI that names no table file, with or without the trailing
   slash: ``s3://bucket/photos`` is read as ``s3://bucket/photos/``). The log says which it was read as;
2. checks every S3 source by content before sending it: the first bytes (one ranged GET each, in threads,
   batch by batch ahead of the adding) must be an original Micrio accepts (``tasks.micrio.MICRIO_FORMATS``).
   http(s) manifest URLs are not fetched here: Micrio fetches them, and one that is missing or not an image
   ends failed with Micrio's final error (``originalNotFound``, ``invalidImage``);
3. adds them with ``images/add`` in batches, writing every batch to a durable journal *before* the call
   (intent) and its Micrio ids right after (added), so the next batch never goes out before the last one is
   on disk;
4. polls: one ``folder/status`` call per round for the global view, ``image/status`` only for images that
   left processing (≤ 100 ids a call); transient errors (``uploadError``, ``statusUpdateError``, ``unknown``)
   are added again up to ``max_attempts``; ``originalNotFound`` and ``invalidImage`` are final;
5. writes a report with one row per source, and artifacts: progress, a summary table, the failures; then
   ends Completed only when every source is done or skipped by design, otherwise Failed with the counts.

Outcomes. ``skipped`` (by design, the run can still complete): a manifest row repeating an earlier one, a
folder marker, an object of a prefix that is not an image and is not named like one (a sidecar ``.xmp``,
``notes.txt``), an object already in the target folder (below). ``rejected`` (input to fix, the run fails):
an empty or malformed URL, an S3 key that cannot be presigned safely, a missing S3 object ("no such object"),
content that is not an image although the name or the manifest says it is, an image format Micrio does not
accept (GIF, HEIC, AVIF). ``failed``: Micrio's errors, and what the run could not finish.

Duplicates across runs: each target folder has an index next to the journal (``<journal folder>/folders/
<folder id>.jsonl``, or ``.../folders/<folder id>/`` for an ``s3://`` journal) of the objects added to it by
any run, keyed by object identity: ``s3://bucket/key#ETag`` for S3 objects (the same bytes at the same key:
an object overwritten with new content is a new image) and the normalised URL for http(s) sources (scheme
and host lower-cased, default port and fragment dropped, presigning parameters removed). An object already
in the folder, added by another run (say a prefix run, then a manifest naming the same objects), is skipped
with the Micrio id it has; one whose image ended in error there may be added again.

Re-running with the same source and target resumes from the journal ("resumed from <journal>: N already
added"): nothing already added is added again, images in flight are polled to the end. ``retry_failed=True``
also adds again the images an earlier run left failed (after the source was fixed). After a ``kill -9`` at
any moment, at most the one batch whose ``images/add`` was in flight can be added twice (its outcome is
unknown, so it is sent again).

Layout: ``flow.py`` the flow function (orchestration); ``parameters.py`` its parameters and summary;
``sources.py`` reading and checking the sources; ``run_journal.py`` the journal and its replay;
``folder_index.py`` the per-folder index; ``batches.py`` adding and polling, one task run a batch through the
public tasks of ``tasks.micrio``; ``report.py`` the report, artifacts and summary.
"""

from flows.micrio_migration.flow import migrate_to_micrio

__all__ = ["migrate_to_micrio"]
