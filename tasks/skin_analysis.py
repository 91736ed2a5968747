"""Tasks and pure helpers of the skin-analysis flow (``flows/skin_analysis.py``) on top of ``tasks/haut.py``.

What lives here:

- **Inputs** (pure): subject and side from a folder layout, manifest rows, grouping images into analyses
  (v1: one image per analysis; v3: up to one front/left/right image of a subject per batch).
- **Images** (pure, CPU): validate, apply EXIF orientation, optionally downscale (``prepare_image``).
- **Results** (pure): ``flatten_v1`` / ``flatten_v3`` turn Haut results into metric rows
  ``(algorithm, area, metric, value, value_text, tag)``; ``tidy_table``, ``wide_table`` and ``metric_summary``
  build the report tables.
- **Journal** (``JournalState``, ``JournalWriter``): what earlier runs did, per analysis key.
- **Tasks**: ``collect_skin_inputs`` (one per run); per batch ``submit_skin_batch`` (read, validate,
  upload, compute; subjects through a ``SubjectResolver`` that wraps ``ensure_haut_subjects``) and
  ``collect_skin_results`` (poll); ``delete_skin_photos`` (GDPR, per batch of finished subjects);
  ``write_skin_reports``.

Why not ``tasks.haut.analyse_haut_batch``: resuming after a crash needs a journal record between "signed URL
issued" and "bytes sent" (so an uploaded photo is never lost track of), a way to resume *polling* analyses an
earlier run computed, image names derived from the analysis key, and polling split from sending so a batch
does not hold its upload slot while Haut processes. The same client calls and the same outcome rules (every
algorithm failed → failed; timeout → failed, results may still arrive).

Privacy: nothing here logs. Subject names travel only inside task inputs/outputs (never persisted by
Prefect: these tasks do not persist results) and end up in a report only when the flow asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import os
import posixpath
import re
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pandas as pd
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.haut import HautCredentials
from clients.errors import ApiError, InputError, NotFoundError, OutcomeUnknownError
from clients.haut import MAX_IMAGE_BYTES, MIN_IMAGE_SIDE, HautClient, check_image, check_text
from clients.haut_models import SIDE_IDS, AlgorithmResult, Side, SubjectSpec, V3Results
from tasks.haut import ensure_haut_subjects
from tasks.images import (
    apply_exif_orientation,
    downscale_to_max_side,
    open_image_safely,
    validate_image,
)
from tasks.journal import Journal
from tasks.storage import BucketRef, get_bytes, list_keys, parse_s3_uri
from tasks.tables import write_table

FS3_TECH_NAME = "face_skin_metrics_3.0"  # ASSUMED (by analogy with the documented face_skin_metrics_2.0)
SIDES: tuple[Side, ...] = ("front", "left", "right")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".gif", ".tif", ".tiff", ".bmp")
MAX_READ_BYTES = 256 * 1024 * 1024  # never read more than this into memory (Haut takes ≤ 30 MiB anyway)
JPEG_QUALITY = 95  # re-encoding after an EXIF rotation or a downscale
FACE = "face"  # area name of whole-face figures (v1 "face" area; v3 top-level parameter values)
# Bands of 0–100 "bad_good_line" scores (apis.md §4.9, DOC), used when a result carries no tag.
_BANDS = ((90, "Excellent"), (80, "Great"), (70, "Good"), (50, "Average"), (30, "Poor"))
_STARTS_WITH = re.compile(r" \(starts with [0-9a-f]*\)")  # the first bytes of a non-image (could be text)
_V3_SKIP = {"masks", "predicted_images", "images", "urls"}  # nested signed URLs: never in a report

Credentials = HautCredentials | str
# The batch tasks also take an open ``HautClient``: the tasks of one flow run share it on the flow's event loop
# (building a client costs ~35 ms of blocking SSL setup, and one pool keeps connections warm).
ClientOrCredentials = HautClient | HautCredentials | str


@contextlib.asynccontextmanager
async def haut_client(credentials: ClientOrCredentials) -> AsyncIterator[HautClient]:
    """The client given (left open), or a new one from a block or block name (closed after)."""
    if isinstance(credentials, HautClient):
        yield credentials
        return
    creds = await HautCredentials.resolve(credentials)
    async with creds.get_client() as client:
        yield client


# --- models -----------------------------------------------------------------------------------------------------
class ImageInput(BaseModel):
    """One input image. ``item`` numbers inputs from 1 in listing (or manifest) order."""

    item: int
    source: str  # local path or s3:// URI (as the user gave it)
    subject: str | None  # the subject's name; None when it could not be determined (rejected)
    side: Side = "front"
    group: str = ""  # images of one subject and group form one v3 batch
    rejected: str | None = None  # reason, when the input itself is unusable


class SkinUnit(BaseModel):
    """One analysis: a v1 image, or a v3 batch of up to three sides of one subject (id known once created)."""

    unit: int
    subject: str
    subject_id: str | None = None
    images: list[ImageInput]


class SkinInputs(BaseModel):
    """What a source holds: the images, the subjects' fields (from a manifest) and files left out."""

    images: list[ImageInput]
    subjects: dict[str, SubjectSpec] = Field(default_factory=dict)
    ignored_files: int = 0


class MetricRow(NamedTuple):
    """One figure of a result: ``value`` for numbers, ``value_text`` for categories (e.g. a skin tone)."""

    algorithm: str
    area: str
    metric: str
    value: float | None
    value_text: str | None
    tag: str | None


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
    rows: list[MetricRow] = Field(default_factory=list)

    def settle(self, status: str, error: str | None = None, **changes: Any) -> UnitOutcome:
        """A copy with a final ``status``; images not rejected on their own share it (and the error)."""
        images = [
            i if i.status == "rejected" else i.model_copy(update={"status": status, "reason": error})
            for i in self.images
        ]
        return self.model_copy(update={"status": status, "error": error, "images": images, **changes})


# --- keys -------------------------------------------------------------------------------------------------------
def subject_key(dataset: str, subject: str) -> str:
    """A pseudonymous key for a subject in logs, artifacts and reports: sha256(dataset, name), 16 hex digits.

    Pseudonymous, not anonymous: anyone who knows a name and the dataset can recompute it.
    """
    return hashlib.sha256(f"{dataset}\0{subject}".encode()).hexdigest()[:16]


def analysis_key(
    api_version: str, dataset_id: str, subject: str, side_hashes: Mapping[str, str], prep: str
) -> str:
    """Identity of one analysis across runs: API, dataset, subject, each side's content hash, preparation."""
    payload = json.dumps([api_version, dataset_id, subject, sorted(side_hashes.items()), prep])
    return hashlib.sha256(payload.encode()).hexdigest()


def prep_signature(max_side: int | None) -> str:
    return f"exif-upright;max_side={max_side or 0}"


# --- inputs (pure) ----------------------------------------------------------------------------------------------
def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def infer_subject_side(relative: str) -> tuple[str, Side, str]:
    """``(subject, side, group)`` from a path relative to the input folder.

    - ``alice.jpg`` → subject ``alice``, front; ``alice_left.jpg`` / ``alice-right.png`` → that side.
    - ``alice/front.jpg``, ``alice/left.jpg`` → subject ``alice`` (the first folder), one group;
      ``alice/2024-05_left.jpg`` → group ``2024-05`` (a v3 batch per group).
    A last name token ``front``/``left``/``right`` (separated by ``-``, ``_``, ``.`` or a space) names the side.
    """
    parts = [p for p in relative.replace("\\", "/").split("/") if p]
    stem = posixpath.splitext(parts[-1])[0]
    tokens = [t for t in re.split(r"[-_. ]+", stem) if t]
    side: Side = "front"
    base = stem
    if tokens and tokens[-1].lower() in SIDES:
        side = tokens[-1].lower()  # type: ignore[assignment]
        base = stem[: stem.lower().rfind(tokens[-1].lower())].rstrip("-_. ")
    if len(parts) > 1:
        return parts[0], side, "/".join([*parts[1:-1], base])
    return base or stem, side, ""


def images_from_files(sources: Sequence[tuple[str, str]]) -> list[ImageInput]:
    """Images of a folder or S3 prefix: ``(source, relative path)`` pairs in order."""
    images = []
    for n, (source, relative) in enumerate(sources, 1):
        subject, side, group = infer_subject_side(relative)
        images.append(ImageInput(item=n, source=source, subject=subject, side=side, group=group))
    return images


_ALIASES = {
    "subject": ("subject", "subject_name", "name"),
    "image": ("image", "image_path", "path", "file"),
    "side": ("side",),
    "group": ("visit", "session", "group", "batch"),
    "birth_date": ("birth_date", "birthdate", "date_of_birth"),
    "biological_sex": ("biological_sex", "sex"),
    "meta": ("meta", "metadata"),
}


def _column(columns: Iterable[str], field: str) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[a] for a in _ALIASES.get(field, (field,)) if a in lower), None)


def resolve_manifest_path(manifest: str, path: str) -> str:
    """A manifest's image path: absolute paths and ``s3://`` URIs as given, others next to the manifest."""
    if path.startswith("s3://") or os.path.isabs(path):
        return path
    if manifest.startswith("s3://"):
        bucket, key = manifest[5:].split("/", 1) if "/" in manifest[5:] else (manifest[5:], "")
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(key), path))
        return f"s3://{bucket}/{joined.lstrip('/')}"
    return os.path.normpath(os.path.join(os.path.dirname(manifest), path))


def _meta(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def images_from_manifest(df: pd.DataFrame, manifest: str) -> SkinInputs:
    """Images and subject fields from a manifest table (all values read as text).

    Long form: ``subject``, ``image`` and optional ``side`` (front/left/right, default front) and ``visit``
    (images of a subject with the same visit form one v3 batch). Wide form: ``subject`` and ``front``,
    ``left``, ``right`` columns (a row is one batch). Optional subject fields: ``birth_date``,
    ``biological_sex``, ``meta`` (JSON, else kept as text). Rows with a problem are rejected with the reason.
    """
    columns = [str(c) for c in df.columns]
    subject_col = _column(columns, "subject")
    image_col = _column(columns, "image")
    side_cols = {s: c for s in SIDES if (c := _column(columns, s))}
    if subject_col is None or (image_col is None and not side_cols):
        raise InputError(
            "source",
            f"the manifest has columns {columns}",
            "a 'subject' column and an 'image' column (or 'front'/'left'/'right' columns)",
        )
    side_col, group_col = _column(columns, "side"), _column(columns, "group")
    field_cols = {f: _column(columns, f) for f in ("birth_date", "biological_sex", "meta")}
    images: list[ImageInput] = []
    subjects: dict[str, SubjectSpec] = {}
    item = 0
    for row_no, row in enumerate(df.to_dict("records"), 1):

        def text(col: str | None, _row: dict = row) -> str:
            value = _row.get(col) if col else None
            return (
                ""
                if value is None or (isinstance(value, float) and math.isnan(value))
                else str(value).strip()
            )

        subject = text(subject_col)
        group = text(group_col) or (f"row-{row_no}" if image_col is None else "")
        if image_col is not None:
            entries = [(text(image_col), text(side_col).lower() or "front")]
        else:
            entries = [(text(c), s) for s, c in side_cols.items() if text(c)]
            if not entries:
                entries = [("", "front")]
        reason = None
        if not subject:
            reason = f"manifest row {row_no}: the subject is empty"
        else:
            try:
                check_text(subject, "subject")
            except InputError as exc:
                reason = f"manifest row {row_no}: {exc.problem} ({exc.limit})" if exc.limit else str(exc)
        if reason is None:
            spec = subjects.setdefault(subject, SubjectSpec(name=subject))
            for field, col in field_cols.items():
                value = text(col)
                if value and getattr(spec, field) is None:
                    setattr(spec, field, _meta(value) if field == "meta" else value)
        for path, side in entries:
            item += 1
            problem = reason
            if problem is None and not path:
                problem = f"manifest row {row_no}: no image path"
            if problem is None and side not in SIDES:
                problem = f"manifest row {row_no}: side {side!r} is not front, left or right"
            images.append(
                ImageInput(
                    item=item,
                    source=resolve_manifest_path(manifest, path) if path else "",
                    subject=subject or None,
                    side=side if side in SIDES else "front",  # type: ignore[arg-type]
                    group=group,
                    rejected=problem,
                )
            )
    return SkinInputs(images=images, subjects=subjects)


def group_units(images: Sequence[ImageInput], api_version: str) -> list[SkinUnit]:
    """Analyses to run, numbered from 1: v1 one per image; v3 one per (subject, group) with distinct sides
    (a side that repeats within a group starts another batch). Images rejected as input are left out."""
    units: list[SkinUnit] = []
    open_units: dict[tuple[str, str], list[SkinUnit]] = {}
    for image in images:
        if image.rejected or image.subject is None:
            continue
        if api_version == "v1":
            units.append(SkinUnit(unit=0, subject=image.subject, images=[image]))
            continue
        candidates = open_units.setdefault((image.subject, image.group), [])
        target = next((u for u in candidates if all(i.side != image.side for i in u.images)), None)
        if target is None:
            target = SkinUnit(unit=0, subject=image.subject, images=[])
            candidates.append(target)
            units.append(target)
        target.images.append(image)
    for n, unit in enumerate(units, 1):
        unit.unit = n
        unit.images.sort(key=lambda i: SIDES.index(i.side))
    return units


def list_folder(root: str) -> tuple[list[tuple[str, str]], int]:
    """``(path, relative path)`` of the image files under a local folder (sorted), and how many were left out
    (other extensions; hidden files and folders are skipped silently)."""
    base = Path(root)
    found, ignored = [], 0
    for path in sorted(base.rglob("*")):
        relative = path.relative_to(base).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in relative.split("/")):
            continue
        if is_image_name(path.name):
            found.append((str(path), relative))
        else:
            ignored += 1
    return found, ignored


def list_s3_prefix(s3_client: Any, uri: str) -> tuple[list[tuple[str, str]], int]:
    """Same as ``list_folder`` for ``s3://bucket/prefix/``."""
    bucket, prefix = parse_s3_uri(uri, field="source", require_key=False)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    found, ignored = [], 0
    for key in list_keys(BucketRef(s3_client, bucket), prefix):
        relative = key[len(prefix) :]
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if is_image_name(key):
            found.append((f"s3://{bucket}/{key}", relative))
        else:
            ignored += 1
    return found, ignored


def read_manifest(source: str, s3_client: Any) -> pd.DataFrame:
    """A CSV manifest with every value as text (subject names like ``007`` must stay names)."""
    if source.startswith("s3://"):
        bucket, key = parse_s3_uri(source, field="source")
        data = get_bytes(BucketRef(s3_client, bucket), key)
    else:
        data = Path(source).read_bytes()
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True)


def is_manifest(source: str) -> bool:
    return source.lower().endswith(".csv")


@task(name="skin-collect-inputs", cache_policy=NO_CACHE)
def collect_skin_inputs(source: str, s3_client: Any = None) -> SkinInputs:
    """The images of a folder, an ``s3://`` prefix or a CSV manifest (see ``images_from_manifest``).

    Example:
        ```python
        inputs = collect_skin_inputs("selfies/")
        ```
    """
    if is_manifest(source):
        return images_from_manifest(read_manifest(source, s3_client), source)
    if source.startswith("s3://"):
        found, ignored = list_s3_prefix(s3_client, source)
    else:
        if not os.path.isdir(source):
            raise InputError("source", f"{source!r} is not a folder, an s3:// prefix or a .csv manifest")
        found, ignored = list_folder(source)
    return SkinInputs(images=images_from_files(found), ignored_files=ignored)


# --- images (pure, CPU) -----------------------------------------------------------------------------------------
class Prepared(NamedTuple):
    data: bytes
    format: str
    width: int
    height: int
    sha256: str  # of the input
    uploaded_sha256: str
    transform: str | None


def _encode(img: Image.Image, fmt: str, icc: bytes | None) -> bytes:
    buf = io.BytesIO()
    params: dict[str, Any] = {"icc_profile": icc} if icc and img.mode in ("RGB", "RGBA") else {}
    if fmt == "JPEG":
        if img.mode not in ("RGB", "L", "CMYK"):
            img = img.convert("RGB")
        img.save(buf, "JPEG", quality=JPEG_QUALITY, **params)
    else:
        img.save(buf, "PNG", **params)
    return buf.getvalue()


def prepare_image(data: bytes, max_side: int | None = None) -> Prepared:
    """Validate an image for Haut and make it upright (and at most ``max_side`` px) — ``InputError`` if unusable.

    Checks by content: a decodable JPEG or PNG, at least 256×256 px as displayed; at most 30 MiB as sent.
    An EXIF orientation is applied to the pixels (the tag removed); ``max_side`` shrinks larger images.
    Untouched images are sent byte for byte.
    """
    info = validate_image(
        data,
        min_width=MIN_IMAGE_SIDE,
        min_height=MIN_IMAGE_SIDE,
        max_bytes=None if max_side else MAX_IMAGE_BYTES,
        allowed_formats=("JPEG", "PNG"),
        decode=True,
    )
    out, steps = data, []
    if max_side and max(info.width, info.height) > max_side:
        fitted = downscale_to_max_side(data, max_side, quality=JPEG_QUALITY, format=info.format)
        out = fitted.data
        if info.orientation != 1:
            steps.append(f"EXIF orientation {info.orientation} applied")
        steps.append(f"downscaled {info.width}x{info.height} to {fitted.width}x{fitted.height}")
    elif info.orientation != 1:
        decoded = open_image_safely(data)
        icc = decoded.info.get("icc_profile")
        out = _encode(apply_exif_orientation(decoded), info.format, icc)
        steps.append(f"EXIF orientation {info.orientation} applied")
    final = check_image(out)  # the documented limits, on what is actually sent
    sha_in = hashlib.sha256(data).hexdigest()
    sha_out = sha_in if out is data else hashlib.sha256(out).hexdigest()
    width, height = (final.width, final.height) if final.width else (info.width, info.height)
    return Prepared(out, final.format, width, height, sha_in, sha_out, "; ".join(steps) or None)


# --- results (pure) ---------------------------------------------------------------------------------------------
def band(score: float) -> str:
    """Documented band of a 0–100 ``bad_good_line`` score: (90,100] Excellent … [0,30] Bad."""
    return next((tag for lower, tag in _BANDS if score > lower), "Bad")


def _value(value: Any) -> tuple[float | None, str | None] | None:
    """``(value, value_text)``; None for values that are not reportable figures (None, containers, URLs)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return None, str(value).lower()
    if isinstance(value, int | float):
        return (float(value), None) if math.isfinite(value) else None
    text = str(value)
    if text.startswith(("http://", "https://")):
        return None
    return None, text


def flatten_v1(results: Sequence[AlgorithmResult]) -> list[MetricRow]:
    """Rows of v1 per-image results: every successful algorithm's area main metric and sub-metrics.

    ``algorithm`` is the family (``selfie_v2.pores`` → ``pores``); ``metric`` the metric's tech name; ``tag``
    the result's own tag, else the documented band of a 0–100 ``bad_good_line`` score. Results without
    ``area_results`` (e.g. recommendations) and failed algorithms add no rows.
    """
    rows: list[MetricRow] = []
    for result in results:
        if not result.is_ok:
            continue
        family = (result.algorithm_family_tech_name or result.application_name or "unknown").split(".")[-1]
        for area in result.area_results:
            metrics = ([area.main_metric] if area.main_metric else []) + list(area.sub_metrics)
            for metric in metrics:
                parsed = _value(metric.value)
                if parsed is None:
                    continue
                tag = (metric.widget_meta or {}).get("tag")
                if tag is None and metric.widget_type == "bad_good_line" and parsed[0] is not None:
                    tag = band(parsed[0])
                name = metric.tech_name or metric.name or "value"
                rows.append(MetricRow(family, area.area_name, name, *parsed, str(tag) if tag else None))
    return rows


def flatten_v3(parameters: Mapping[str, Any]) -> list[MetricRow]:
    """Rows of v3 batch ``parameters``: each parameter's scalar fields (area ``face``) and its ``areas``.

    ``{"pores": {"score": 64, "tag": "Average", "amount": 120, "areas": {"nose": {"score": 51}}}}`` gives
    ``(pores, face, score, 64, -, Average)``, ``(pores, face, amount, 120, -, -)``, ``(pores, nose, score, 51,
    -, -)``. Masks, images and anything URL-like are left out (signed URLs never reach a report).
    """
    rows: list[MetricRow] = []
    for name, entry in parameters.items():
        if name in _V3_SKIP:
            continue
        if not isinstance(entry, dict):
            parsed = _value(entry)
            if parsed is not None:
                rows.append(MetricRow(name, FACE, "value", *parsed, None))
            continue
        tag = entry.get("tag")
        for field, value in entry.items():
            if field == "tag" or field in _V3_SKIP:
                continue
            if field == "areas" and isinstance(value, dict):
                for area, figures in value.items():
                    figures = figures if isinstance(figures, dict) else {"score": figures}
                    for metric, figure in figures.items():
                        parsed = _value(figure)
                        if parsed is not None and metric != "tag":
                            area_tag = figures.get("tag") if metric == "score" else None
                            rows.append(MetricRow(name, area, metric, *parsed, area_tag))
                continue
            parsed = _value(value)
            if parsed is not None:
                row_tag = str(tag) if tag is not None and field == "score" else None
                rows.append(MetricRow(name, FACE, field, *parsed, row_tag))
    return rows


def v1_failure(results: Sequence[AlgorithmResult]) -> tuple[str | None, str | None]:
    """``(error, warnings)``: an error when every algorithm failed; warnings naming the ones that did."""
    failed = [r for r in results if not r.is_ok]
    if not failed:
        return None, None
    problems = sorted(
        {f"{(r.algorithm_family_tech_name or '?').split('.')[-1]}: {r.problem}" for r in failed}
    )
    if len(failed) == len(results):
        return "analysis failed: " + ", ".join(
            sorted({r.problem or "algorithm failed" for r in failed})
        ), None
    return None, "algorithms failed: " + "; ".join(problems)


def v3_failure(results: V3Results) -> str | None:
    if results.parameters:
        return None
    problems = (results.model_extra or {}).get("problems")
    if isinstance(problems, dict):
        text = "; ".join(f"{side}: {', '.join(map(str, p))}" for side, p in problems.items())
    else:
        text = str(problems or "no parameters in the results")
    return f"analysis failed: {text}"


# --- report tables (pure) ---------------------------------------------------------------------------------------
TIDY_COLUMNS = [
    "analysis", "image", "sides", "subject_key", "api_version", "subject_id", "batch_id", "image_id",
    "algorithm", "area", "metric", "value", "value_text", "tag",
]  # fmt: skip
WIDE_BASE_COLUMNS = [
    "item", "image", "side", "subject_key", "status", "reason", "resumed", "analysis", "api_version",
    "subject_id", "batch_id", "image_id", "width", "height", "sha256", "uploaded_sha256", "transform", "warnings",
]  # fmt: skip


def tidy_table(
    entries: Sequence[Mapping[str, Any]], rows_of: Mapping[int, Sequence[MetricRow]]
) -> pd.DataFrame:
    """One row per (analysis, algorithm, area, metric). ``entries``: one dict per done analysis with the
    columns before ``algorithm`` (and ``subject_name`` when names are wanted); ``rows_of``: its metric rows."""
    out = []
    for entry in entries:
        for row in rows_of.get(entry["analysis"], ()):
            out.append({**entry, **MetricRow(*row)._asdict()})
    extra = [c for c in (entries[0] if entries else {}) if c not in TIDY_COLUMNS]
    columns = TIDY_COLUMNS[:4] + extra + TIDY_COLUMNS[4:]
    df = pd.DataFrame(out, columns=columns)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    return df


def wide_columns(rows: Sequence[MetricRow]) -> dict[str, Any]:
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
    base = [c for c in WIDE_BASE_COLUMNS]
    if any("subject_name" in r for r in records):
        base.insert(base.index("subject_key") + 1, "subject_name")
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


# --- journal ----------------------------------------------------------------------------------------------------
class JournalState:
    """What a journal says about each analysis key and subject.

    Records (one JSON object each, appended in this order for a key):
    ``uploading`` (image records created: subject, batch and image ids; written before any byte is sent),
    ``computed`` (compute accepted), then ``done`` (metric rows) or ``failed`` (Haut's analysis failed: final).
    ``photos_deleted`` marks a subject whose photos were deleted (GDPR) after its last upload.
    A plain class on purpose: Prefect does not walk it when it is passed to a task.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]] = ()) -> None:
        self.units: dict[str, dict[str, Any]] = {}
        self._photos: dict[str, bool] = {}
        for record in records:
            self.apply(record)

    def apply(self, record: Mapping[str, Any]) -> None:
        kind, key = record.get("t"), record.get("k")
        if kind == "uploading":
            self.units[key] = {
                "phase": "uploading",
                "subject_id": record["subject_id"],
                "batch_id": record["batch_id"],
                "image_ids": dict(record["image_ids"]),
                "sha": dict(record.get("sha") or {}),
            }
            self._photos[record["subject_id"]] = True
        elif kind in ("computed", "done", "failed") and key in self.units:
            unit = self.units[key]
            unit["phase"] = kind
            if kind == "done":
                unit["rows"] = [MetricRow(*r) for r in record.get("rows") or []]
                unit["warnings"] = record.get("warnings")
            elif kind == "failed":
                unit["error"] = record.get("error")
        elif kind == "photos_deleted":
            self._photos[record["subject_id"]] = False

    def unit(self, key: str) -> dict[str, Any] | None:
        return self.units.get(key)

    def photos_pending(self, subject_id: str) -> bool:
        """Photos of this subject were uploaded (by any run of this journal) and not deleted since."""
        return self._photos.get(subject_id, False)


class JournalWriter:
    """Appends to a ``Journal`` from the concurrent tasks of one flow run, with group commit.

    ``await append(...)`` returns once its records are durable. Appends that arrive while a write is in
    progress are written together by the next one (one fsync, or one S3 object, for many records), so
    durability per record costs little under load. The write runs off the event loop.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._lock = threading.Lock()
        self._queue: list[tuple[Sequence[dict[str, Any]], asyncio.Future[None]]] = []
        self._writing = False

    @property
    def location(self) -> str:
        return self.journal.location

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self.journal.append(*records)

    async def append(self, *records: dict[str, Any]) -> None:
        if not records:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((records, done))
        if not self._writing:
            self._writing = True
            try:
                while self._queue:
                    group, self._queue = self._queue, []
                    try:
                        await asyncio.to_thread(self._append, [r for recs, _ in group for r in recs])
                    except Exception as exc:
                        for _, fut in group:
                            if not fut.done():
                                fut.set_exception(exc)
                    else:
                        for _, fut in group:
                            if not fut.done():
                                fut.set_result(None)
            finally:
                self._writing = False
        await done


# --- the batch tasks --------------------------------------------------------------------------------------------
class _Work:
    """One analysis while ``submit_skin_batch`` runs."""

    def __init__(self, unit: SkinUnit) -> None:
        self.unit = unit
        self.images: dict[int, ImageOutcome] = {
            i.item: ImageOutcome(item=i.item, status="failed") for i in unit.images
        }
        self.ready: dict[str, Prepared] = {}  # side -> prepared bytes
        self.side_item: dict[str, int] = {}
        self.key: str | None = None
        self.batch_id: str | None = None
        self.image_ids: dict[str, str] = {}
        self.targets: dict[str, Any] = {}
        self.outcome: UnitOutcome | None = None
        self.uploaded = False
        self.read_failures: list[str] = []  # transient (not the image's fault): the whole analysis waits

    def finish(self, status: str, error: str | None = None, **extra: Any) -> None:
        item_side = {n: s for s, n in self.side_item.items()}
        for image in self.images.values():
            if image.status != "rejected":
                image.status = status  # type: ignore[assignment]
                image.reason = error if status in ("failed", "rejected") else None
                image.image_id = self.image_ids.get(item_side.get(image.item, ""))
        self.outcome = UnitOutcome(
            unit=self.unit.unit,
            status=status,  # type: ignore[arg-type]
            key=self.key,
            error=error,
            subject_id=self.unit.subject_id,
            batch_id=self.batch_id,
            image_ids=dict(self.image_ids),
            uploaded=self.uploaded,
            images=sorted(self.images.values(), key=lambda i: i.item),
            **extra,
        )


async def _read_source(source: str, s3_client: Any) -> bytes:
    if source.startswith("s3://"):
        if s3_client is None:
            raise InputError("source", "s3:// images need an S3 client (s3_bucket_block)")
        bucket, key = parse_s3_uri(source, field="image")
        return await asyncio.to_thread(get_bytes, BucketRef(s3_client, bucket), key)

    def read() -> bytes:
        size = os.path.getsize(source)
        if size > MAX_READ_BYTES:
            raise InputError("image", f"{size:,} bytes", f"at most {MAX_READ_BYTES:,} bytes read")
        return Path(source).read_bytes()

    return await asyncio.to_thread(read)


def _read_error(exc: Exception) -> tuple[str, str]:
    """``(status, reason)`` for an image that could not be read or prepared; never names the path (it may hold
    a subject's name) nor quotes the content."""
    if isinstance(exc, InputError):
        return "rejected", _STARTS_WITH.sub("", str(exc))
    if isinstance(exc, FileNotFoundError | NotFoundError):
        return "rejected", "file not found"
    if isinstance(exc, IsADirectoryError):
        return "rejected", "not a file"
    if isinstance(exc, PermissionError):
        return "rejected", "permission denied reading the file"
    return "failed", f"could not read the image ({type(exc).__name__})"


def _file_name(key: str, side: str, fmt: str) -> str:
    """Image name in Haut: derived from the analysis key (no personal data), e.g. ``3f2a…-front.jpg``."""
    return f"{key[:20]}-{side}.{'png' if fmt == 'PNG' else 'jpg'}"


def _is_gone(exc: ApiError) -> bool:
    """The service refused a resumed compute for good (e.g. the images were never uploaded)."""
    return not exc.retryable and exc.status in (400, 404, 409, 410, 422)


async def _results_now(
    client: Any, api_version: str, dataset_id: str, outcome: UnitOutcome
) -> list[AlgorithmResult] | V3Results | None:
    """An analysis's results if they are complete, else None."""
    if api_version == "v1":
        image_id = next(iter(outcome.image_ids.values()))
        found = await client.get_results_v1(dataset_id, outcome.subject_id, outcome.batch_id, image_id)
        return found or None
    v3 = await client.get_results_v3(outcome.batch_id)
    return v3 if v3.all_algorithms_calculated else None


def _conclude(outcome: UnitOutcome, results: list[AlgorithmResult] | V3Results) -> tuple[UnitOutcome, dict]:
    """The final outcome from complete results, and its journal record."""
    if isinstance(results, V3Results):
        error, warnings, rows = v3_failure(results), None, flatten_v3(results.parameters)
    else:
        (error, warnings), rows = v1_failure(results), flatten_v1(results)
    if error:
        return outcome.settle("failed", error), {"t": "failed", "k": outcome.key, "error": error}
    record = {"t": "done", "k": outcome.key, "rows": rows, "warnings": warnings}  # tuples dump as lists
    return outcome.settle("done", None, rows=rows, warnings=warnings), record


@task(name="skin-submit-batch", cache_policy=NO_CACHE)
async def submit_skin_batch(
    credentials: ClientOrCredentials,
    dataset_id: str,
    units: list[SkinUnit],
    journal: JournalWriter,
    state: JournalState,
    subjects: SubjectResolver,
    api_version: Literal["v1", "v3"] = "v1",
    max_side: int | None = None,
    concurrency: int = 8,
    s3_client: Any = None,
) -> list[UnitOutcome]:
    """Read, validate and send a batch of analyses; resumable through ``journal``. Results: ``collect_skin_results``.

    Per analysis: read and prepare every image (rejected with the reason if unusable); its key (API, dataset,
    subject, content hashes, preparation) is looked up in ``state``:

    - ``done`` / ``failed`` in an earlier run: returned from the journal (``resumed``), nothing is sent;
    - ``computed``: returned as ``submitted`` (its results are collected again);
    - ``uploading`` (a run stopped between creating the image records and the compute): one results check;
      if none, compute again; if Haut refuses that (the bytes never arrived), a fresh upload;
    - unknown: the subject from ``subjects`` (created on first need), signed URL(s) → journal ``uploading`` →
      PUT → compute → journal ``computed`` → ``submitted``.

    At most ``concurrency`` reads or requests at once. One outcome per unit, in order; image bytes are
    released once sent.

    Example:
        ```python
        sent = await submit_skin_batch("haut-demo", dataset.id, units, writer, state, resolver)
        outcomes = await collect_skin_results("haut-demo", dataset.id, sent, writer)
        ```
    """
    limit = asyncio.Semaphore(max(1, concurrency))
    work = [_Work(u) for u in units]
    prep = prep_signature(max_side)

    async def prepare(w: _Work, image: ImageInput) -> None:
        async with limit:
            try:
                data = await _read_source(image.source, s3_client)
                w.ready[image.side] = await asyncio.to_thread(prepare_image, data, max_side)
                w.side_item[image.side] = image.item
            except Exception as exc:  # one unusable image never stops the batch
                status, reason = _read_error(exc)
                if status == "rejected":
                    w.images[image.item] = ImageOutcome(item=image.item, status="rejected", reason=reason)
                else:
                    w.read_failures.append(reason)

    await asyncio.gather(*(prepare(w, i) for w in work for i in w.unit.images))
    for w in work:
        for side, p in w.ready.items():
            w.images[w.side_item[side]] = ImageOutcome(
                item=w.side_item[side],
                status="failed",
                width=p.width,
                height=p.height,
                sha256=p.sha256,
                uploaded_sha256=p.uploaded_sha256,
                transform=p.transform,
            )
        if w.read_failures:  # send nothing now: a re-run sends the analysis with all its sides
            w.finish("failed", "; ".join(sorted(set(w.read_failures))))
            continue
        if not w.ready:
            w.finish("rejected", "; ".join(sorted({i.reason or "" for i in w.images.values()})))
            continue
        side_hashes = {s: p.sha256 for s, p in w.ready.items()}
        w.key = analysis_key(api_version, dataset_id, w.unit.subject, side_hashes, prep)

    # Identical analyses in one batch (same subject, same bytes) are sent once.
    first_of: dict[str, _Work] = {}
    duplicates: list[tuple[_Work, _Work]] = []
    for w in work:
        if w.outcome is None and w.key is not None:
            if w.key in first_of:
                duplicates.append((w, first_of[w.key]))
            else:
                first_of[w.key] = w

    fresh: list[_Work] = []
    resume_uploading: list[_Work] = []
    for w in first_of.values():
        known = state.unit(w.key)  # type: ignore[arg-type]
        if known is None:
            fresh.append(w)
            continue
        w.batch_id, w.image_ids = known["batch_id"], dict(known["image_ids"])
        w.unit.subject_id = known["subject_id"]
        if known["phase"] == "done":
            w.finish("done", resumed=True, rows=known["rows"], warnings=known.get("warnings"))
        elif known["phase"] == "failed":
            w.finish("failed", known.get("error"), resumed=True)
        elif known["phase"] == "computed":
            w.finish("submitted")
        else:
            resume_uploading.append(w)

    async with haut_client(credentials) as client:

        async def compute(w: _Work) -> None:
            if api_version == "v1":
                await client.compute_v1(w.batch_id)  # type: ignore[arg-type]
            else:
                await client.compute_v3(w.batch_id)  # type: ignore[arg-type]

        # 1. analyses an earlier run left between "image records created" and "compute accepted"
        async def resume(w: _Work) -> None:
            async with limit:
                try:
                    w.finish("submitted")
                    results = await _results_now(client, api_version, dataset_id, w.outcome)  # type: ignore[arg-type]
                    if results is not None:
                        w.outcome, record = _conclude(w.outcome, results)  # type: ignore[arg-type]
                        await journal.append(record)
                        return
                    w.outcome = None
                    await compute(w)
                except ApiError as exc:
                    if _is_gone(exc):
                        w.outcome, w.batch_id, w.image_ids = None, None, {}
                        fresh.append(w)  # the bytes never arrived: start over
                    else:
                        w.finish("failed", str(exc))
                    return
            await journal.append({"t": "computed", "k": w.key})
            w.finish("submitted")

        await asyncio.gather(*(resume(w) for w in resume_uploading))
        if fresh:
            ids = await subjects.ids(w.unit.subject for w in fresh if w.unit.subject_id is None)
            for w in fresh:
                found = w.unit.subject_id or ids[w.unit.subject]
                if isinstance(found, Exception):
                    w.finish("failed", f"subject could not be created or found: {found}")
                else:
                    w.unit.subject_id = found
        fresh = [w for w in fresh if w.outcome is None]

        # 2. new analyses: image records first (journalled before any byte is sent) ...
        async def create_records(w: _Work) -> None:
            names = {s: _file_name(w.key, s, p.format) for s, p in w.ready.items()}  # type: ignore[arg-type]
            async with limit:
                try:
                    if api_version == "v1":
                        (side,) = names
                        record = await client.request_upload_v1(
                            w.unit.subject_id, side_id=SIDE_IDS[side], name=names[side]
                        )
                        w.batch_id, w.image_ids = record.image_batch_id, {side: record.id}
                        w.targets = {side: record.upload_url}
                    else:
                        upload = await client.request_upload_v3(w.unit.subject_id, **names)
                        w.targets = upload.targets()
                        missing = sorted(set(names) - set(w.targets))
                        if missing:
                            raise ApiError(
                                client.service, "request_upload_v3", f"no upload target for {missing}"
                            )
                        w.batch_id = upload.image_batch_id
                        w.image_ids = {s: t.id or "" for s, t in w.targets.items()}
                except (ApiError, InputError) as exc:
                    w.finish("failed" if isinstance(exc, ApiError) else "rejected", str(exc))

        await asyncio.gather(*(create_records(w) for w in fresh))
        created = [w for w in fresh if w.outcome is None]
        await journal.append(
            *(
                {
                    "t": "uploading",
                    "k": w.key,
                    "subject_id": w.unit.subject_id,
                    "batch_id": w.batch_id,
                    "image_ids": w.image_ids,
                    "sha": {s: p.uploaded_sha256 for s, p in w.ready.items()},
                }
                for w in created
            )
        )

        # ... then the bytes and the compute
        async def put(w: _Work, side: str) -> None:
            async with limit:
                await client.upload(w.targets[side], w.ready[side].data, check=False)
            w.uploaded = True  # from now on Haut holds photo bytes of this subject

        async def submit(w: _Work) -> None:
            try:
                await asyncio.gather(*(put(w, s) for s in w.ready))
                async with limit:
                    await compute(w)
            except OutcomeUnknownError as exc:  # the compute may have been accepted: a re-run checks first
                w.finish("failed", f"{exc}; re-run to check and collect its results")
                return
            except ApiError as exc:
                w.finish("failed", str(exc))
                return
            finally:
                w.ready = {s: p._replace(data=b"") for s, p in w.ready.items()}  # free the bytes
            await journal.append({"t": "computed", "k": w.key})
            w.finish("submitted")

        await asyncio.gather(*(submit(w) for w in created))

    for w, original in duplicates:
        assert original.outcome is not None
        w.key, w.batch_id, w.image_ids = original.key, original.batch_id, original.image_ids
        w.unit.subject_id = original.unit.subject_id
        w.finish(original.outcome.status, original.outcome.error, resumed=original.outcome.resumed)
        w.outcome = w.outcome.model_copy(  # type: ignore[union-attr]
            update={
                "rows": original.outcome.rows,
                "warnings": f"same subject and image as analysis {original.unit.unit}",
            }
        )
    assert all(w.outcome is not None for w in work), (
        "every analysis ends as done, failed, rejected or submitted"
    )
    return [w.outcome for w in work]  # type: ignore[misc]


@task(name="skin-collect-results", cache_policy=NO_CACHE)
async def collect_skin_results(
    credentials: ClientOrCredentials,
    dataset_id: str,
    outcomes: list[UnitOutcome],
    journal: JournalWriter,
    api_version: Literal["v1", "v3"] = "v1",
    concurrency: int = 8,
    initial_delay: float | None = None,
    max_delay: float | None = None,
    timeout: float | None = None,
) -> list[UnitOutcome]:
    """Poll the results of the ``submitted`` analyses with backoff until done or ``timeout``; others pass through.

    Every round checks all waiting analyses (at most ``concurrency`` requests at once), then journals the ones
    that finished (``done`` with their metric rows, or ``failed`` when Haut's analysis failed). Poll settings
    default to the block's. Results not in by the timeout: ``failed`` with ``pending=True`` (the journal still
    says ``computed``, so a re-run collects them without sending anything).

    Example:
        ```python
        outcomes = await collect_skin_results("haut-demo", dataset.id, submitted, writer, timeout=600)
        ```
    """
    waiting = {n: o for n, o in enumerate(outcomes) if o.status == "submitted"}
    final = list(outcomes)
    if not waiting:
        return final
    limit = asyncio.Semaphore(max(1, concurrency))
    async with haut_client(credentials) as client:
        poll = client.poll_settings(initial_delay=initial_delay, max_delay=max_delay, timeout=timeout)
        delays = poll.delays()
        started = client.clock.monotonic()
        while waiting:
            remaining = poll.timeout - (client.clock.monotonic() - started)
            if remaining <= 0:
                note = f"results not ready after {poll.timeout:g} s; they may still arrive (re-run to collect them)"
                for n, outcome in waiting.items():
                    final[n] = outcome.settle("failed", note, pending=True)
                break
            await client.clock.sleep(min(next(delays), remaining))
            records: list[dict[str, Any]] = []

            async def check(n: int, outcome: UnitOutcome, records: list[dict[str, Any]] = records) -> None:
                async with limit:
                    try:
                        results = await _results_now(client, api_version, dataset_id, outcome)
                    except ApiError as exc:
                        if not exc.retryable:  # a transient failure is simply polled again next round
                            final[n] = outcome.settle("failed", str(exc))
                        return
                if results is not None:
                    final[n], record = _conclude(outcome, results)
                    records.append(record)

            await asyncio.gather(*(check(n, o) for n, o in waiting.items()))
            await journal.append(*records)
            waiting = {n: o for n, o in waiting.items() if final[n].status == "submitted"}
    return final


# --- subjects and GDPR ------------------------------------------------------------------------------------------
async def ensure_subject_ids(
    credentials: Credentials, dataset_id: str, specs: Sequence[SubjectSpec], concurrency: int = 8
) -> dict[str, str | Exception]:
    """``{name: subject id or the error}``: reuses subjects by name, creates the missing ones (never twice).

    One ``ensure_haut_subjects`` call for all; if the service refuses it for a reason that may concern one
    subject only (e.g. a malformed birth date), each subject is ensured on its own so only bad ones fail.
    Transient and credential errors are raised.
    """
    if not specs:
        return {}
    try:
        subjects = await ensure_haut_subjects.fn(
            credentials, dataset_id, list(specs), concurrency=concurrency
        )
        return {spec.name: s.id for spec, s in zip(specs, subjects, strict=True)}
    except ApiError as exc:
        if exc.retryable or exc.status in (401, 403):
            raise
    except InputError:
        pass
    out: dict[str, str | Exception] = {}
    for spec in specs:
        try:
            (subject,) = await ensure_haut_subjects.fn(credentials, dataset_id, [spec], concurrency=1)
            out[spec.name] = subject.id
        except (ApiError, InputError) as exc:
            out[spec.name] = exc
    return out


class SubjectResolver:
    """Subject ids by name for the batches of one run, created on first need (only for subjects with at least
    one usable image, so no name is sent to Haut for nothing). One lock: two batches never create the same
    subject. A plain class on purpose: Prefect does not walk it when it is passed to a task.
    """

    def __init__(
        self,
        credentials: Credentials,
        dataset_id: str,
        specs: Mapping[str, SubjectSpec],
        concurrency: int = 8,
    ) -> None:
        self.credentials, self.dataset_id, self.concurrency = credentials, dataset_id, concurrency
        self.specs = dict(specs)
        self.known: dict[str, str | Exception] = {}
        self._transient: dict[str, Exception] = {}
        self._wanted: dict[str, None] = {}
        self._lock = asyncio.Lock()

    async def ids(self, names: Iterable[str]) -> dict[str, str | Exception]:
        """``{name: id or the error}``. Names asked for while a call is in progress join the next call."""
        wanted = list(dict.fromkeys(names))
        self._wanted.update(dict.fromkeys(n for n in wanted if n not in self.known))
        async with self._lock:
            missing = [n for n in self._wanted if n not in self.known]
            self._wanted.clear()
            if missing:
                specs = [self.specs.get(n) or SubjectSpec(name=n) for n in missing]
                try:
                    found = await ensure_subject_ids(
                        self.credentials, self.dataset_id, specs, self.concurrency
                    )
                    self.known.update(found)
                except ApiError as exc:  # transient or credentials: these fail now, a later batch tries again
                    self._transient.update(dict.fromkeys(missing, exc))
        return {n: self.known.get(n) or self._transient[n] for n in wanted}


@task(name="skin-delete-photos", cache_policy=NO_CACHE)
async def delete_skin_photos(
    credentials: ClientOrCredentials, subject_ids: list[str], journal: JournalWriter, concurrency: int = 8
) -> dict[str, str | None]:
    """GDPR: delete the photo files of these subjects (records and results stay); ``{id: error or None}``.

    Each success is journalled (``photos_deleted``) so a re-run does not delete again.

    Example:
        ```python
        errors = await delete_skin_photos("haut-demo", [subject_id], writer)
        ```
    """
    limit = asyncio.Semaphore(max(1, concurrency))
    out: dict[str, str | None] = {}
    async with haut_client(credentials) as client:

        async def delete(sid: str) -> None:
            async with limit:
                try:
                    await client.delete_subject_photos(sid)
                    out[sid] = None
                except ApiError as exc:
                    out[sid] = str(exc)

        await asyncio.gather(*(delete(s) for s in dict.fromkeys(subject_ids)))
    await journal.append(*({"t": "photos_deleted", "subject_id": s} for s, e in out.items() if e is None))
    return out


@task(name="skin-write-reports", cache_policy=NO_CACHE)
def write_skin_reports(
    wide: pd.DataFrame, tidy: pd.DataFrame, report: str, metrics_report: str, s3_client: Any = None
) -> tuple[str, str]:
    """Write the per-image (wide) and per-metric (tidy) tables; CSV or Parquet by extension, local or s3://.

    Example:
        ```python
        write_skin_reports(wide, tidy, "reports/run.csv", "reports/run-metrics.csv")
        ```
    """
    return write_table(wide, report, s3_client), write_table(tidy, metrics_report, s3_client)
