"""Tasks and helpers of the skin-analysis flow (``flows/skin_analysis.py``), on top of ``clients.haut``.

- ``inputs``: which images, of which subject and side (folder, ``s3://`` prefix or CSV manifest), grouped
  into analyses (v1: one per image; v3: up to front/left/right of one subject per batch).
- ``images``: validate, turn upright, optionally shrink (CPU; run in threads).
- ``journal``: analysis keys and what earlier runs did with them (resuming).
- ``subjects``: subjects found by name or created once; GDPR photo deletion.
- ``analyses``: the batch task: send (signed URL → PUT → compute) and collect results.
- ``results``: Haut results as metric rows; ``tables``: the wide and tidy reports and their summary.
"""
