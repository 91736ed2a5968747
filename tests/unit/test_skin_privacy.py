"""Skin-analysis reports carry no file name or subject name unless asked; reasons never quote a path; an
unreadable or empty source is one clear problem. Pure functions only (the flow runs in the integration tests)."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError

from clients.errors import InputError
from flows.skin_analysis.inputs import group_units, images_from_files, images_from_manifest, skin_inputs
from flows.skin_analysis.options import UploadOptions
from flows.skin_analysis.outputs import outcome_problems
from flows.skin_analysis.tables import report_tables, subject_key
from tasks.haut_batch import ImageOutcome, UnitOutcome
from tasks.haut_images import read_error
from tasks.storage import parse_s3_uri

FILES = [
    ("/home/me/study/Jane Doe_front.png", "Jane Doe_front.png"),
    ("/home/me/study/Bo/left.jpg", "Bo/left.jpg"),
]


def _tables(file_names: bool = False, subject_names: bool = False):
    images = images_from_files(FILES)
    units = group_units(images, "v1")
    rows = [("pores", "face", "pores_score", 60.0, None, None)]
    outcomes = {
        u.unit: UnitOutcome(
            unit=u.unit,
            status="done",
            subject_id=f"s{u.unit}",
            images=[ImageOutcome(item=u.images[0].item, status="done", image_id=f"i{u.unit}")],
            rows=rows,
        )
        for u in units
    }
    return report_tables(images, units, outcomes, "study", "v1", file_names, subject_names)


def test_reports_hold_pseudonymous_keys_only_by_default():
    rows, wide, tidy = _tables()
    for table in (wide, tidy):
        text = table.to_csv(index=False)
        assert "image" not in table.columns and "subject_name" not in table.columns
        for word in ("Jane", "Doe", "/home/me", "Bo/", ".png", ".jpg"):
            assert word not in text, word
    assert list(wide["subject_key"]) == [subject_key("study", "Jane Doe"), subject_key("study", "Bo")]


def test_reports_hold_relative_file_names_and_subject_names_when_asked():
    _, wide, tidy = _tables(file_names=True)
    assert list(wide["image"]) == ["Jane Doe_front.png", "Bo/left.jpg"]  # relative to the folder
    assert set(tidy["image"]) == {"Bo/left.jpg", "Jane Doe_front.png"} and "subject_name" not in wide
    _, wide, tidy = _tables(subject_names=True)
    assert "image" not in wide.columns and list(wide["subject_name"]) == ["Jane Doe", "Bo"]
    assert set(tidy["subject_name"]) == {"Bo", "Jane Doe"}


def test_a_rejected_subject_name_is_not_repeated_in_the_reason():
    name = "Jane Doe " + "x" * 600 + ".jpg"
    (image,) = images_from_files([(f"/in/{name}", name)])
    assert image.rejected == "is 609 characters long (at most 512)" and image.name == name


def test_manifest_names_are_as_written_and_reasons_quote_no_path():
    df = pd.DataFrame({"subject": ["Jane Doe", "Ann"], "image": ["photos/Jane Doe.jpg", "/home/ann.jpg"]})
    images = images_from_manifest(df, "s3://bucket/study/manifest.csv").images
    assert [i.name for i in images] == ["photos/Jane Doe.jpg", "/home/ann.jpg"]
    assert images[1].rejected == "manifest row 2: a manifest read from S3 names a local path"


def test_read_error_says_the_path_instead_of_quoting_it():
    source = "s3://bucket/Jane Doe/../x.jpg"
    with pytest.raises(InputError) as caught:
        parse_s3_uri(source, field="image")
    status, reason = read_error(caught.value, source)
    assert status == "rejected" and "Jane" not in reason
    assert reason == "image: the path has a '.' or '..' segment (no path traversal)"
    assert read_error(FileNotFoundError(2, "gone", "/home/Jane Doe.jpg"), "/home/Jane Doe.jpg") == (
        "rejected",
        "file not found",
    )


def test_unreadable_or_empty_manifests_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such manifest"):
        skin_inputs(str(tmp_path / "missing.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="the manifest is empty"):
        skin_inputs(str(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("subject,image\n")
    assert skin_inputs(str(tmp_path / "header.csv")).images == []


def test_max_side_is_off_or_at_least_the_smallest_image_haut_takes():
    assert UploadOptions().max_side == 0 and UploadOptions(max_side=1024).max_side == 1024
    with pytest.raises(ValidationError, match="at least 256"):
        UploadOptions(max_side=100)


def test_outcome_problems_name_pending_results_and_a_systemic_error():
    failed = {"status": "failed", "reason": "haut compute_v1: HTTP 500"}
    assert outcome_problems([failed, failed], pending=0, done=0) == [
        "no image could be analysed; 2 with: haut compute_v1: HTTP 500"
    ]
    assert outcome_problems([failed], pending=1, done=0) == [
        "1 image(s) computed but without results yet: a re-run collects them"
    ]
    assert outcome_problems([failed, {"status": "done"}], pending=0, done=1) == []
