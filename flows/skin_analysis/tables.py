"""The reports of a skin-analysis run (pure, apart from writing them).

- **wide**: one row per input image: status, reason, ids, size and hashes, then its whole-face metrics as
  ``algorithm.metric`` (and ``algorithm.metric.tag``) columns;
- **tidy**: one row per (analysis, algorithm, area, metric): value, value_text, tag;
- ``metric_summary``: mean, min and max of each whole-face metric (the summary artifact).

A run's rows are built batch by batch as batches finish (``ReportBuilder``, in threads), so that once the last
results are in only putting them in order and writing them is left (``write_reports``, off the event loop).

Reports name images by item number and content hash, and subjects by a pseudonymous ``subject_key``; the file
name relative to the source (``file_names``) and the subject's name (``subject_names``) only when asked.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.haut_batch import ImageOutcome, UnitOutcome
from tasks.haut_results import FACE, MetricRow, Row
from tasks.state import Location
from tasks.storage import resolve_s3_client
from tasks.tables import write_table

from .inputs import ImageInput, SkinUnit


def subject_key(dataset: str, subject: str) -> str:
    """A pseudonymous key for a subject in logs, artifacts and reports: sha256(dataset, name), 16 hex digits.

    Pseudonymous, not anonymous: anyone who knows a name and the dataset can recompute it.
    """
    return hashlib.sha256(f"{dataset}\0{subject}".encode()).hexdigest()[:16]


TIDY_COLUMNS = [
    "analysis", "image", "sides", "subject_key", "subject_name", "api_version", "subject_id", "batch_id",
    "image_id", "algorithm", "area", "metric", "value", "value_text", "tag",
]  # fmt: skip
WIDE_BASE_COLUMNS = [
    "item", "image", "side", "subject_key", "subject_name", "status", "reason", "resumed", "analysis",
    "api_version", "subject_id", "batch_id", "image_id", "width", "height", "sha256", "uploaded_sha256",
    "transform", "warnings",
]  # fmt: skip
PERSONAL_COLUMNS = ("image", "subject_name")  # only in reports that asked for them
T = TypeVar("T")
CSV_LINE_END = "\r\n"  # as tasks.tables.write_table writes CSV


def _present(columns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """``columns`` without the personal ones no record carries."""
    return [c for c in columns if c not in PERSONAL_COLUMNS or any(c in r for r in records)]


def tidy_table(
    entries: Sequence[Mapping[str, Any]], rows_of: Mapping[int, Sequence[Row | MetricRow]]
) -> pd.DataFrame:
    """One row per (analysis, algorithm, area, metric). ``entries``: one dict per done analysis with the
    columns before ``algorithm`` (``image`` and ``subject_name`` when asked for); ``rows_of``: its metric rows."""
    columns = _present(TIDY_COLUMNS, entries[:1])
    data: dict[str, list[Any]] = {c: [] for c in columns}
    described = [c for c in columns if c not in MetricRow._fields]
    for entry in entries:  # built column by column: one dict per row cost more than writing the file
        rows = rows_of.get(entry["analysis"], ())
        if not rows:
            continue
        for column in described:
            data[column].extend([entry.get(column)] * len(rows))
        for field, values in zip(MetricRow._fields, zip(*rows, strict=True), strict=True):
            data[field].extend(values)
    df = pd.DataFrame(data if data["analysis"] else [], columns=columns)  # empty: object columns
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    return df


def wide_columns(rows: Sequence[Row | MetricRow]) -> dict[str, Any]:
    """Whole-face figures of one analysis as ``{"algorithm.metric": value, "algorithm.metric.tag": tag}``."""
    out: dict[str, Any] = {}
    for row in map(lambda r: MetricRow(*r), rows):
        if row.area != FACE:
            continue
        column = f"{row.algorithm}.{row.metric}"
        out[column] = row.value if row.value is not None else row.value_text
        if row.tag is not None:
            out[f"{column}.tag"] = row.tag
    return out


def wide_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per input image: the base columns, then metric columns in first-seen order."""
    base = _present(WIDE_BASE_COLUMNS, records)
    metric_cols: dict[str, None] = {}
    for r in records:
        for column in r:
            if column not in base:
                metric_cols.setdefault(column, None)
    df = pd.DataFrame(list(records), columns=base + list(metric_cols))
    for column in ("item", "analysis", "width", "height"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    for column in metric_cols:
        if not column.endswith(".tag"):
            numeric = pd.to_numeric(df[column], errors="coerce")
            if numeric.notna().sum() == df[column].notna().sum():
                df[column] = numeric.astype("float64")
    return df


def metric_summary(tidy: pd.DataFrame) -> list[dict[str, Any]]:
    """Per whole-face numeric metric: analyses, mean, min, max (rounded to 3 decimals)."""
    face = tidy[(tidy["area"] == FACE) & tidy["value"].notna()]
    if face.empty:
        return []
    grouped = face.groupby(["algorithm", "metric"], sort=True)["value"].agg(["count", "mean", "min", "max"])
    return [
        {
            "algorithm": algorithm,
            "metric": metric,
            "analyses": int(stats["count"]),
            "mean": round(float(stats["mean"]), 3),
            "min": round(float(stats["min"]), 3),
            "max": round(float(stats["max"]), 3),
        }
        for (algorithm, metric), stats in grouped.iterrows()
    ]


def wide_row(
    image: ImageInput,
    unit: SkinUnit | None,
    outcome: UnitOutcome | None,
    dataset_name: str,
    api_version: str,
    file_names: bool = False,
    subject_names: bool = False,
) -> dict[str, Any]:
    """The wide report's row of one input image."""
    row: dict[str, Any] = {
        "item": image.item,
        "side": image.side,
        "subject_key": subject_key(dataset_name, image.subject) if image.subject else None,
        "api_version": api_version,
        "resumed": False,
    }
    if file_names:
        row["image"] = image.name or None
    if subject_names:
        row["subject_name"] = image.subject
    if image.rejected:
        return {**row, "status": "rejected", "reason": image.rejected}
    if unit is None or outcome is None:  # cannot happen: every unit ends with an outcome
        return {**row, "status": "failed", "reason": "not analysed"}
    mine = next((i for i in outcome.images if i.item == image.item), None) or ImageOutcome(
        item=image.item, status=outcome.status, reason=outcome.error
    )
    row.update(mine.model_dump(exclude={"item"}))  # status, reason, size, hashes, transform, image id
    row.update(resumed=outcome.resumed, analysis=unit.unit, warnings=outcome.warnings)
    row.update(subject_id=outcome.subject_id, batch_id=outcome.batch_id)
    if mine.status == "done":
        row.update(wide_columns(outcome.rows))
    return row


def tidy_entry(
    unit: SkinUnit,
    outcome: UnitOutcome,
    dataset_name: str,
    api_version: str,
    file_names: bool = False,
    subject_names: bool = False,
) -> dict[str, Any]:
    """The columns a done analysis gives each of its rows in the tidy report (before ``algorithm``)."""
    done = [i for i in outcome.images if i.status == "done"]
    names = {i.item: i.name for i in unit.images}
    sides = {i.item: i.side for i in unit.images}
    entry: dict[str, Any] = {
        "analysis": unit.unit,
        "sides": "+".join(sides[i.item] for i in done),
        "subject_key": subject_key(dataset_name, unit.subject),
        "api_version": api_version,
        "subject_id": outcome.subject_id,
        "batch_id": outcome.batch_id,
        "image_id": "+".join(i.image_id or "" for i in done),
    }
    if file_names:  # v3: the first done side's (front if done)
        entry["image"] = names[done[0].item] if done else unit.images[0].name
    if subject_names:
        entry["subject_name"] = unit.subject
    return entry


class ReportBuilder:
    """A run's report rows, built batch by batch as batches finish (``add``), so that only putting them in
    order and writing them is left once the last results are in. Blocking: call it from a thread.

    With ``tidy_csv`` (the metrics report is a plain CSV file) each batch's tidy rows are also rendered as
    CSV text when the batch finishes: rendering is most of the cost of writing that report.
    """

    def __init__(
        self,
        dataset_name: str,
        api_version: str,
        file_names: bool = False,
        subject_names: bool = False,
        tidy_csv: bool = False,
    ) -> None:
        self.dataset_name, self.api_version, self.tidy_csv = dataset_name, api_version, tidy_csv
        self.personal = {"file_names": file_names, "subject_names": subject_names}
        # One worker thread for all of it: builders in parallel threads only fight over the GIL, and each
        # thread's allocations keep memory of their own (peak RSS ~15 MB lower measured with one thread).
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skin-report")
        self._wide: dict[int, dict[str, Any]] = {}  # item -> its row
        self._tidy: list[pd.DataFrame] = []  # a chunk per batch, its rows in analysis order
        # (first analysis, last analysis, its CSV rows) per chunk, with tidy_csv
        self._tidy_text: list[tuple[int, int, str]] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the builder's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    def add(self, units: Sequence[SkinUnit], outcomes: Mapping[int, UnitOutcome]) -> None:
        """The rows of these analyses (each with its outcome)."""
        entries, rows_of = [], {}
        for unit in sorted(units, key=lambda u: u.unit):
            outcome = outcomes[unit.unit]
            for image in unit.images:
                self._wide[image.item] = wide_row(
                    image, unit, outcome, self.dataset_name, self.api_version, **self.personal
                )
            if outcome.status == "done":
                entries.append(
                    tidy_entry(unit, outcome, self.dataset_name, self.api_version, **self.personal)
                )
                rows_of[unit.unit] = outcome.rows
        if not entries:
            return
        chunk = tidy_table(entries, rows_of)
        self._tidy.append(chunk)
        if self.tidy_csv and len(chunk):
            text = chunk.to_csv(index=False, header=False, lineterminator=CSV_LINE_END)
            self._tidy_text.append((entries[0]["analysis"], entries[-1]["analysis"], text))

    def tables(self, images: Sequence[ImageInput]) -> tuple[list[dict[str, Any]], pd.DataFrame, pd.DataFrame]:
        """``(wide rows, wide table, tidy table)``: a row per input image, analyses in order."""
        wide_rows = [
            self._wide.get(image.item)
            or wide_row(image, None, None, self.dataset_name, self.api_version, **self.personal)
            for image in images
        ]
        chunks = [c for c in self._tidy if len(c)] or self._tidy[:1]  # empty ones have object columns
        if not chunks:
            return wide_rows, wide_table(wide_rows), tidy_table([], {})
        tidy = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
        # Batches finish in any order; a stable sort keeps each analysis's rows as they came.
        tidy = tidy.sort_values("analysis", kind="stable", ignore_index=True)
        return wide_rows, wide_table(wide_rows), tidy

    def tidy_csv_text(self, tidy: pd.DataFrame) -> str:
        """``tidy`` (from ``tables``) as CSV, as ``tasks.tables.write_table`` writes it: the batches' rendered
        rows in order when their analyses do not interleave (batches are cut from one sorted list: the usual
        case), else rendered whole."""
        parts = sorted(self._tidy_text)
        in_order = all(a[1] < b[0] for a, b in zip(parts, parts[1:], strict=False))
        if not self.tidy_csv or not in_order or len(parts) != sum(1 for c in self._tidy if len(c)):
            return tidy.to_csv(index=False, lineterminator=CSV_LINE_END)
        return tidy.iloc[:0].to_csv(index=False, lineterminator=CSV_LINE_END) + "".join(t for *_, t in parts)


def report_tables(
    images: Sequence[ImageInput],
    units: Sequence[SkinUnit],
    outcomes: Mapping[int, UnitOutcome],
    dataset_name: str,
    api_version: str,
    file_names: bool = False,
    subject_names: bool = False,
) -> tuple[list[dict[str, Any]], pd.DataFrame, pd.DataFrame]:
    """``(wide rows, wide table, tidy table)`` of a run: every input image, every done analysis's metrics;
    file names and subject names only when asked (``file_names``, ``subject_names``)."""
    builder = ReportBuilder(dataset_name, api_version, file_names, subject_names)
    builder.add(units, outcomes)
    return builder.tables(images)


@task(name="skin-write-reports", cache_policy=NO_CACHE)
async def write_skin_reports(
    wide: pd.DataFrame, tidy: pd.DataFrame, report: str, metrics_report: str, s3_client: Any = None
) -> tuple[str, str]:
    """Write the per-image (wide) and per-metric (tidy) tables; CSV or Parquet by extension, local or s3://.

    Both are written at once, in threads. Async: a sync task in an async flow builds its own Prefect client.

    Example:
        ```python
        await write_skin_reports(wide, tidy, "reports/run.csv", "reports/run-metrics.csv")
        ```
    """
    written = await asyncio.gather(
        asyncio.to_thread(write_table, wide, report, s3_client),
        asyncio.to_thread(write_table, tidy, metrics_report, s3_client),
    )
    return written[0], written[1]


def write_reports(
    builder: ReportBuilder, wide: pd.DataFrame, tidy: pd.DataFrame, report: str, metrics_report: str, s3: Any
) -> None:
    """Blocking: the metrics (tidy) report of ``builder.tables`` (from the batches' rendered rows when it is a
    plain CSV file), then the per-image (wide) one; each written whole, local or s3://."""
    if builder.tidy_csv:
        client = resolve_s3_client(s3) if metrics_report.startswith("s3://") else None
        text = builder.tidy_csv_text(tidy)
        Location(metrics_report, client, field="destination").write_bytes(text.encode(), "text/csv")
    else:
        write_table(tidy, metrics_report, s3)
    write_table(wide, report, s3)
