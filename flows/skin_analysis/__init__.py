"""The skin-analysis flow (``flow.py``: ``skin_analysis``) and what only it uses. The Haut work itself is the
public task library's: ``tasks.haut`` (``ensure_haut_dataset``, ``analyse_haut_batch``, whose engine is
``tasks.haut_batch``: images checked and prepared by ``tasks.haut_images``, results as metric rows by
``tasks.haut_results``).

- ``options``: the flow's parameter groups and its summary.
- ``inputs``: which images, of which subject and side (folder, ``s3://`` prefix or CSV manifest), grouped
  into analyses (v1: one per image; v3: up to front/left/right of one subject per batch).
- ``run``: the run's batches through the account's Haut session, and photo deletion as subjects finish.
- ``tables``: the wide and tidy reports and their summary; ``outputs``: locations, the summary, the reports
  and artifacts of a run.
- ``shards``: a big study fanned out over the work pool (subjects created once, shards by subject).
"""

from .flow import skin_analysis

__all__ = ["skin_analysis"]
