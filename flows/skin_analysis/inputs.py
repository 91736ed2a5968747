"""Inputs of the skin-analysis flow: which images, of which subject and side, grouped into analyses.

A local folder or ``s3://`` prefix (the subject is the first sub-folder, or the file name; a trailing
``_front``/``_left``/``_right`` names the side) or a CSV manifest (``images_from_manifest``). Pure apart from
listing and reading files; nothing here logs (paths and names are personal data).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from clients.errors import InputError, NotFoundError
from clients.haut import check_text
from clients.haut_models import Side, SubjectSpec
from tasks.haut_batch import AnalysisImage, AnalysisUnit
from tasks.storage import BucketRef, get_bytes, list_keys, parse_s3_uri

SIDES: tuple[Side, ...] = ("front", "left", "right")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".gif", ".tif", ".tiff", ".bmp")


class ImageInput(AnalysisImage):
    """One input image. ``item`` numbers inputs from 1 in listing (or manifest) order; ``source`` is never
    written to a report, a log or an artifact."""

    name: str = ""  # relative to the folder or prefix, or as written in the manifest: reports, when asked
    subject: str | None  # the subject's name; None when it could not be determined (rejected)
    group: str = ""  # images of one subject and group form one v3 batch
    rejected: str | None = None  # reason, when the input itself is unusable


class SkinUnit(AnalysisUnit):
    """One analysis of the run, of its input images."""

    images: list[ImageInput]


class SkinInputs(BaseModel):
    """What a source holds: the images, the subjects' fields (from a manifest) and files left out."""

    images: list[ImageInput]
    subjects: dict[str, SubjectSpec] = Field(default_factory=dict)
    ignored_files: int = 0


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
        problem = subject_problem(subject)
        images.append(
            ImageInput(
                item=n,
                source=source,
                name=relative,
                subject=subject if problem is None else None,
                side=side,
                group=group,
                rejected=problem,  # without the file name: it is often the subject's name
            )
        )
    return images


def subject_problem(subject: str) -> str | None:
    """Why a subject name cannot be sent to Haut, or None (checked before anything is created)."""
    if not subject.strip():
        return "the subject is empty"
    try:
        check_text(subject, "subject")
    except InputError as exc:
        return f"{exc.problem} ({exc.limit})" if exc.limit else str(exc)
    return None


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


def _is_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(("~", "file:")) or bool(re.match(r"^[A-Za-z]:[\\/]", path))


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
        problem = subject_problem(subject)
        reason = f"manifest row {row_no}: {problem}" if problem else None
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
            if (
                problem is None
                and manifest.startswith("s3://")
                and not path.startswith("s3://")
                and _is_local(path)
            ):
                # a manifest from S3 must not make the worker upload its own files
                problem = f"manifest row {row_no}: a manifest read from S3 names a local path"
            images.append(
                ImageInput(
                    item=item,
                    source=resolve_manifest_path(manifest, path) if path else "",
                    name=path,
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
    try:
        if source.startswith("s3://"):
            bucket, key = parse_s3_uri(source, field="source")
            data = get_bytes(BucketRef(s3_client, bucket), key)
        else:
            data = Path(source).read_bytes()
    except (FileNotFoundError, NotFoundError):
        raise InputError("source", "no such manifest") from None
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError("source", "the manifest is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(
            "source", f"the manifest is not a readable CSV file ({type(exc).__name__})"
        ) from None


def is_manifest(source: str) -> bool:
    return source.lower().endswith(".csv")


@task(name="skin-collect-inputs", cache_policy=NO_CACHE)
async def collect_skin_inputs(source: str, s3_client: Any = None) -> SkinInputs:
    """The images of a folder, an ``s3://`` prefix or a CSV manifest (see ``images_from_manifest``).

    Async (listing runs in a thread): a sync task in an async flow builds its own Prefect API client.

    Example:
        ```python
        inputs = await collect_skin_inputs("selfies/")
        ```
    """
    return await asyncio.to_thread(skin_inputs, source, s3_client)


def skin_inputs(source: str, s3_client: Any = None) -> SkinInputs:
    """What ``collect_skin_inputs`` returns, without Prefect."""
    if is_manifest(source):
        return images_from_manifest(read_manifest(source, s3_client), source)
    if source.startswith("s3://"):
        found, ignored = list_s3_prefix(s3_client, source)
    else:
        if not os.path.isdir(source):
            raise InputError("source", f"{source!r} is not a folder, an s3:// prefix or a .csv manifest")
        found, ignored = list_folder(source)
    return SkinInputs(images=images_from_files(found), ignored_files=ignored)
