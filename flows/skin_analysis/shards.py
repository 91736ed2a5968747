"""A big skin analysis fanned out: subject ranges, each a child flow run on the work pool, one report.

The parent reads the source once, finds or creates the dataset and **creates every subject once**
(``tasks.haut.ensure_haut_subjects``), then splits the analyses by the subjects' pseudonymous keys
(``tasks.fan_out.split_keys``): a subject's analyses all fall in one shard, so its photos are deleted (with
``delete_photos``) only once all of them have results, and no name or path appears in a shard's parameters.
Each shard is a run of the ``skin-analysis-shard`` deployment with the parent's parameters plus its key range;
it reads the source again and keeps its subjects' images (numbered as in the whole source), finds the
subjects the parent created (it creates none) and writes through the job's one journal (several writers are
safe), so a shard that crashed resumes there, and a later run of the job, fanned out or not, does too.

The parent writes one wide and one metrics report of the whole job and one set of artifacts, from the
shards' reports; images of a shard that never finished are reported failed, and images without a usable
subject (rejected as input) by the parent itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import get_run_logger

from blocks.haut import HautCredentials
from tasks.fan_out import FanOut, ShardRange, ShardRun, fan_out_job, key_ranges, shard_problems
from tasks.haut import ensure_haut_subjects
from tasks.state import StateRoot
from tasks.tables import iter_table_chunks, write_table

from .inputs import ImageInput, SkinInputs, SkinUnit
from .options import SkinAnalysisSummary
from .outputs import Locations, metrics_name, outcome_problems, publish_run
from .tables import subject_key, tidy_table, wide_row, wide_table

if TYPE_CHECKING:
    from .run import SkinRun

FLOW = "skin-analysis"


def take_shard(
    inputs: SkinInputs, units: list[SkinUnit], dataset_name: str, shard: ShardRange
) -> list[SkinUnit]:
    """Keep the shard's subjects: their images in ``inputs`` and their analyses (numbered as in the job)."""

    def mine(subject: str | None) -> bool:
        return bool(subject) and shard.holds_key(subject_key(dataset_name, subject or ""))

    inputs.images = [i for i in inputs.images if mine(i.subject)]
    return [u for u in units if mine(u.subject)]


async def analyse_in_shards(
    run: SkinRun,
    credentials: HautCredentials,
    dataset_id: str,
    inputs: SkinInputs,
    problems: list[str],
    fan_out: FanOut,
    root: StateRoot,
    where: Locations,
) -> SkinAnalysisSummary:
    """Create the subjects, run the shards with this run's parameters, wait for them, and write the job's
    reports and artifacts."""
    logger, dataset_name = get_run_logger(), run.report.dataset_name
    names = list(dict.fromkeys(u.subject for u in run.units))
    await ensure_haut_subjects(credentials, dataset_id, [inputs.subjects.get(n) or n for n in names])
    ranges = key_ranges([subject_key(dataset_name, n) for n in names], fan_out.shard_size)
    what = f"{len(run.units)} analyses of {len(names)} subjects (created)"
    runs = await fan_out_job(FLOW, ranges, fan_out, root, run.s3, logger, what, {"journal": where.journal})
    wide, tidy = await run.report.run(_gather, run, inputs, runs)
    wide_rows = wide.astype(object).where(wide.notna(), None).to_dict("records")
    done, failed, rejected = (int((wide["status"] == s).sum()) for s in ("done", "failed", "rejected"))
    pending = sum(r.summary.get("pending", 0) for r in runs)
    summary = SkinAnalysisSummary(
        api_version=run.api_version, dataset_id=dataset_id, images=len(inputs.images), analyses=len(run.units),
        subjects=len(names), done=done, rejected=rejected, failed=failed, pending=pending,
        resumed=sum(r.summary.get("resumed", 0) for r in runs), ignored_files=inputs.ignored_files,
        photos_deleted_subjects=sum(r.summary.get("photos_deleted_subjects", 0) for r in runs),
        problems=[*problems, *shard_problems(runs), *outcome_problems(wide_rows, pending, done)],
        report=where.report, metrics_report=where.metrics_report, journal=where.journal,
    )  # fmt: skip
    await asyncio.gather(
        run.report.run(_write, wide, tidy, where, run.s3), publish_run(wide_rows, tidy, summary)
    )
    run.report.thread.shutdown(wait=False)
    return summary


def _gather(run: SkinRun, inputs: SkinInputs, runs: list[ShardRun]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The job's wide table (a row per input image: from its shard's report, or made here) and its tidy table
    (the shards' metrics). Blocking."""
    dataset_name, api_version, personal = run.report.dataset_name, run.api_version, run.report.personal
    rows: dict[int, dict[str, Any]] = {}
    tidy: list[pd.DataFrame] = []
    for shard_run in runs:
        if shard_run.finished:
            rows.update((r["item"], r) for r in shard_run.rows())
            tidy += iter_table_chunks(metrics_name(shard_run.shard.report), s3_client=run.s3)
            continue
        reason = f"{shard_run.why_unfinished()}; re-run to resume it"
        for image in _images_of(inputs, dataset_name, shard_run.shard.range):
            row = wide_row(image, None, None, dataset_name, api_version, **personal)
            rows[image.item] = {**row, "status": "failed", "reason": reason}
    made = (
        rows.get(i.item) or wide_row(i, None, None, dataset_name, api_version, **personal)
        for i in inputs.images
    )
    metrics = pd.concat(tidy, ignore_index=True) if tidy else tidy_table([], {})
    return wide_table(list(made)), metrics.sort_values("analysis", kind="stable", ignore_index=True)


def _images_of(inputs: SkinInputs, dataset_name: str, shard: ShardRange) -> list[ImageInput]:
    part = SkinInputs(images=list(inputs.images))
    take_shard(part, [], dataset_name, shard)
    return part.images


def _write(wide: pd.DataFrame, tidy: pd.DataFrame, where: Locations, s3: Any) -> None:
    write_table(tidy, where.metrics_report, s3)
    write_table(wide, where.report, s3)
