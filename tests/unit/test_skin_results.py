"""Pure parts of the skin-analysis flow: result flattening, report tables, inputs, journal replay, image prep.

Results are built with the emulator's own generators, so the rows are checked against ``metric_scores``.
"""

from __future__ import annotations

import hashlib
import io
import math
import re

import pandas as pd
import pytest
from PIL import Image

from clients.errors import InputError
from clients.haut_models import AlgorithmResult, V3Results
from emulators.haut import catalog
from emulators.haut.results import (
    SKIN_TONES,
    V1_AREAS,
    V3_AREAS,
    V3_KEYS,
    analyse_image,
    band,
    metric_scores,
    v1_results,
    v3_parameters,
)
from flows.skin_analysis.inputs import (
    ImageInput,
    group_units,
    images_from_files,
    images_from_manifest,
    infer_subject_side,
    resolve_manifest_path,
)
from flows.skin_analysis.outputs import metrics_name
from flows.skin_analysis.tables import metric_summary, subject_key, tidy_table, wide_columns, wide_table
from tasks.haut_batch import JournalState, analysis_key, prep_signature
from tasks.haut_images import prepare_image
from tasks.haut_results import FACE, MetricRow, flatten_v1, flatten_v3, v1_failure, v3_failure


def jpeg(width: int = 320, height: int = 300, color: tuple = (200, 150, 120), orientation: int = 1) -> bytes:
    img = Image.new("RGB", (width, height), color)
    img.paste((30, 30, 30), (0, 0, width // 4, height // 8))  # a dark corner: shows which way is up
    buf = io.BytesIO()
    extra = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    img.save(buf, "JPEG", quality=90, **extra)
    return buf.getvalue()


def v1(data: bytes, apps: tuple[str, ...] = (catalog.FSM2,)) -> list[AlgorithmResult]:
    out = []
    for tech in apps:
        raw = v1_results(
            analyse_image(data), "img-1", catalog.APPLICATIONS[tech], "run-1", "2025-01-01 00:00:00", "selfie"
        )
        out += [AlgorithmResult.model_validate(r) for r in raw]
    return out


# --- flattening v1 --------------------------------------------------------------------------------------------
def test_flatten_v1_face_scores_equal_metric_scores_with_tags():
    data = jpeg()
    rows = flatten_v1(v1(data))
    face = {(r.algorithm, r.metric): r for r in rows if r.area == FACE}
    for family, score in metric_scores(data).items():
        row = face[(family, f"{family}_score")]
        assert row.value == score and row.value_text is None and row.tag == band(score)
    assert {r.area for r in rows} == set(V1_AREAS)
    pores_number = face[("pores", "pores_number")]
    assert pores_number.value is not None and pores_number.tag is None
    tone = face[("skintone", "skintone_class")]
    assert tone.value is None and tone.value_text in SKIN_TONES
    assert isinstance(face[("skintone", "ita")].value, float)
    assert v1_failure(v1(data)) == (None, None)


def test_flatten_v1_failed_algorithms_and_missing_tags():
    tiny = jpeg(64, 64)
    results = v1(tiny)
    assert flatten_v1(results) == []
    error, warnings = v1_failure(results)
    assert error == "analysis failed: image_resolution_too_low" and warnings is None

    good = v1(jpeg())
    good[0] = good[0].model_copy(update={"is_ok": False, "result": {"error": {"code": "internal"}}})
    for area in good[1].result["area_results"]:
        area["main_metric"]["widget_meta"] = {}  # no tag: derived from the documented bands
    error, warnings = v1_failure(good)
    assert error is None and warnings == "algorithms failed: hydration: internal"
    rows = flatten_v1(good)
    assert not any(r.algorithm == "hydration" for r in rows)
    translucency = [r for r in rows if r.algorithm == "translucency" and r.metric == "translucency_score"]
    assert all(r.tag == band(r.value) for r in translucency) and translucency


def test_flatten_v1_skips_results_without_areas():
    data = jpeg()
    results = v1(data, (catalog.FSM2, catalog.RECOMMENDATION_ENGINE))
    assert any(r.algorithm_family_tech_name.startswith("recommendation") for r in results)
    assert flatten_v1(results) == flatten_v1(v1(data))


def test_flatten_v1_leaves_out_entries_without_the_documented_shape():
    area = {
        "area_name": "face",
        "main_metric": {"value": 71, "widget_type": "bad_good_line", "tech_name": "s"},
    }
    result = AlgorithmResult.model_validate(
        {
            "algorithm_family_tech_name": "selfie_v2.pores",
            "result": {
                "area_results": [
                    area,
                    "not an area",
                    {"main_metric": {"value": 5}},  # no area name
                    {
                        "area_name": "nose",
                        "main_metric": [1, 2],
                        "sub_metrics": ["x", {"value": 2, "name": "n"}],
                    },
                    {"area_name": "chin", "sub_metrics": {"value": 3}},  # sub_metrics not a list
                ]
            },
        }
    )
    assert flatten_v1([result]) == [
        MetricRow("pores", "face", "s", 71.0, None, "Good"),
        MetricRow("pores", "nose", "n", 2.0, None, None),
    ]


# --- flattening v3 --------------------------------------------------------------------------------------------
def test_flatten_v3_scores_areas_categories_and_no_urls():
    data = jpeg()
    sha = hashlib.sha256(data).hexdigest()
    params = v3_parameters(sha)
    params["pores"]["masks"] = {"front": {"original": "https://storage.example/signed?X-Goog-Signature=abc"}}
    params["anonymised"] = "https://storage.example/x.jpg"
    rows = flatten_v3(params)
    face = {(r.algorithm, r.metric): r for r in rows if r.area == FACE}
    for family, score in metric_scores(data).items():
        row = face[(V3_KEYS[family], "score")]
        assert row.value == score and row.tag == band(score)
    assert face[("pores", "amount")].tag is None and face[("pores", "density")].value is not None
    assert face[("skintone", "class")].value_text in SKIN_TONES and face[("age", "age")].value >= 18
    assert {r.area for r in rows if r.algorithm == "pores"} == {FACE, *V3_AREAS}
    assert not any("http" in str(v) for r in rows for v in r)
    assert not any(r.algorithm == "anonymised" for r in rows)


def test_v3_failure_names_the_problem_per_side():
    failed = V3Results.model_validate(
        {"all_algorithms_calculated": True, "parameters": {}, "problems": {"front": ["image_not_decodable"]}}
    )
    assert v3_failure(failed) == "analysis failed: front: image_not_decodable"
    assert v3_failure(V3Results(parameters={"pores": {"score": 1}})) is None


# --- tables ---------------------------------------------------------------------------------------------------
ROWS_A = [
    MetricRow("pores", FACE, "pores_score", 60.0, None, "Average"),
    MetricRow("pores", "nose", "pores_score", 40.0, None, "Poor"),
    MetricRow("skintone", FACE, "skintone_class", None, "Tan", None),
]
ROWS_B = [MetricRow("pores", FACE, "pores_score", 80.0, None, "Good")]


def test_wide_columns_take_whole_face_figures_only():
    assert wide_columns(ROWS_A) == {
        "pores.pores_score": 60.0,
        "pores.pores_score.tag": "Average",
        "skintone.skintone_class": "Tan",
    }


def test_wide_table_types_and_optional_names():
    records = [
        {"item": 1, "status": "done", "width": 512, "height": 512, **wide_columns(ROWS_A)},
        {"item": 2, "status": "rejected", "reason": "image: 64×64 px"},
        {"item": 3, "status": "done", "width": 300, "height": 400, **wide_columns(ROWS_B)},
    ]
    df = wide_table(records)
    assert list(df.columns[:3]) == ["item", "side", "subject_key"]  # no file name unless asked for
    assert str(df["width"].dtype) == "Int64" and pd.isna(df["width"][1])
    assert df["pores.pores_score"].dtype == "float64" and df["pores.pores_score"].tolist()[::2] == [
        60.0,
        80.0,
    ]
    assert df["skintone.skintone_class"].tolist()[0] == "Tan"
    assert "subject_name" not in df.columns
    named = wide_table([{**records[0], "subject_name": "A", "image": "a.jpg"}])
    assert list(named.columns[:5]) == ["item", "image", "side", "subject_key", "subject_name"]
    buf = io.BytesIO()
    df.to_parquet(buf)  # every column has one type


def test_tidy_table_and_metric_summary():
    entries = [{"analysis": 1, "image": "a.jpg", "subject_key": "k1"}, {"analysis": 2, "image": "b.jpg"}]
    tidy = tidy_table(entries, {1: ROWS_A, 2: [list(r) for r in ROWS_B]})  # journal rows come back as lists
    assert len(tidy) == 4 and tidy["value"].dtype == "float64"
    assert list(tidy.columns[-6:]) == ["algorithm", "area", "metric", "value", "value_text", "tag"]
    assert list(tidy.columns[:2]) == ["analysis", "image"] and "subject_name" not in tidy.columns
    assert "image" not in tidy_table([{"analysis": 1}], {1: ROWS_A}).columns  # not asked for: no column
    assert metric_summary(tidy) == [
        {"algorithm": "pores", "metric": "pores_score", "analyses": 2, "mean": 70.0, "min": 60.0, "max": 80.0}
    ]
    empty = tidy_table([], {})
    assert empty.empty and metric_summary(empty) == []


# --- inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("alice.jpg", ("alice", "front", "")),
        ("alice_left.jpg", ("alice", "left", "")),
        ("alice-RIGHT.png", ("alice", "right", "")),
        ("front.jpg", ("front", "front", "")),
        ("bob/front.jpg", ("bob", "front", "")),
        ("bob/left.jpg", ("bob", "left", "")),
        ("bob/2024-05_right.jpg", ("bob", "right", "2024-05")),
        ("bob/visit 2/IMG_1.jpg", ("bob", "front", "visit 2/IMG_1")),
    ],
)
def test_infer_subject_side(relative, expected):
    assert infer_subject_side(relative) == expected


def test_manifest_long_form_with_fields_and_rejections():
    df = pd.DataFrame(
        {
            "Subject": ["Ann", "Ann", "Ann", "Bo", "", "Bo", "x" * 600],
            "image": ["a1.jpg", "a2.jpg", "s3://b/k/a3.jpg", "b1.jpg", "c.jpg", "", "d.jpg"],
            "side": ["front", "LEFT", "right", "", "front", "front", "front"],
            "birth_date": ["1990-01-01", "", "1999-09-09", "", "", "", ""],
            "meta": ['{"cohort": 2}', "", "", "plain text", "", "", ""],
        },
        dtype=str,
    )
    inputs = images_from_manifest(df, "/data/study/manifest.csv")
    images = inputs.images
    assert [i.item for i in images] == list(range(1, 8))
    assert [i.side for i in images[:4]] == ["front", "left", "right", "front"]
    assert images[0].source == "/data/study/a1.jpg" and images[2].source == "s3://b/k/a3.jpg"
    assert [i.rejected is None for i in images] == [True] * 4 + [False] * 3
    assert "subject is empty" in images[4].rejected and "no image path" in images[5].rejected
    assert "512" in images[6].rejected and "x" * 20 not in images[6].rejected
    ann = inputs.subjects["Ann"]
    assert (ann.birth_date, ann.meta) == ("1990-01-01", {"cohort": 2})  # first value wins
    assert inputs.subjects["Bo"].meta == "plain text"


def test_manifest_wide_form_and_bad_columns():
    df = pd.DataFrame({"name": ["Ann", "Bo"], "front": ["f.jpg", "g.jpg"], "left": ["l.jpg", ""]}, dtype=str)
    images = images_from_manifest(df, "s3://bucket/in/m.csv").images
    assert [(i.subject, i.side, i.source) for i in images] == [
        ("Ann", "front", "s3://bucket/in/f.jpg"),
        ("Ann", "left", "s3://bucket/in/l.jpg"),
        ("Bo", "front", "s3://bucket/in/g.jpg"),
    ]
    assert images[0].group == images[1].group != images[2].group  # one batch per row
    with pytest.raises(InputError, match="'subject' column"):
        images_from_manifest(pd.DataFrame({"who": ["a"], "image": ["x"]}), "m.csv")


def test_side_is_checked_in_manifests():
    df = pd.DataFrame({"subject": ["Ann"], "image": ["a.jpg"], "side": ["top"]}, dtype=str)
    (image,) = images_from_manifest(df, "m.csv").images
    assert image.rejected == "manifest row 1: side 'top' is not front, left or right"


def test_resolve_manifest_path():
    assert resolve_manifest_path("s3://b/in/m.csv", "../img/a.jpg") == "s3://b/img/a.jpg"
    assert resolve_manifest_path("s3://b/m.csv", "a.jpg") == "s3://b/a.jpg"
    assert resolve_manifest_path("/x/m.csv", "/abs/a.jpg") == "/abs/a.jpg"
    assert resolve_manifest_path("rel/m.csv", "a.jpg") == "rel/a.jpg"


def test_group_units_v1_and_v3():
    images = images_from_files(
        [
            (f"/in/{p}", p)
            for p in ("ann/front.jpg", "ann/left.jpg", "ann/2_front.jpg", "bo.jpg", "bo_left.jpg")
        ]
    )
    images.append(ImageInput(item=6, source="", subject=None, rejected="no subject"))
    v1_units = group_units(images, "v1")
    assert [len(u.images) for u in v1_units] == [1] * 5 and [u.unit for u in v1_units] == [1, 2, 3, 4, 5]
    v3_units = group_units(images, "v3")
    assert [(u.subject, [i.side for i in u.images]) for u in v3_units] == [
        ("ann", ["front", "left"]),
        ("ann", ["front"]),
        ("bo", ["front", "left"]),
    ]
    repeated = images_from_files([("/a", "ann_front.jpg"), ("/b", "ann-front.png"), ("/c", "ann_left.jpg")])
    assert [[i.item for i in u.images] for u in group_units(repeated, "v3")] == [[1, 3], [2]]


# --- keys and journal -------------------------------------------------------------------------------------------
def test_keys():
    base = analysis_key("v1", "ds", "ann", {"front": "aa"}, prep_signature(None))
    assert base == analysis_key("v1", "ds", "ann", {"front": "aa"}, prep_signature(None))
    for other in (
        analysis_key("v3", "ds", "ann", {"front": "aa"}, prep_signature(None)),
        analysis_key("v1", "ds", "bob", {"front": "aa"}, prep_signature(None)),
        analysis_key("v1", "ds", "ann", {"front": "ab"}, prep_signature(None)),
        analysis_key("v1", "ds", "ann", {"front": "aa"}, prep_signature(1024)),
    ):
        assert other != base
    assert subject_key("ds", "Ann") == subject_key("ds", "Ann") != subject_key("ds2", "Ann")
    assert len(subject_key("ds", "Ann")) == 16 and "ann" not in subject_key("ds", "Ann").lower()


def test_journal_state_replays_phases_and_photos():
    records = [
        {"t": "uploading", "k": "k1", "subject_id": "s1", "batch_id": "b1", "image_ids": {"front": "i1"}},
        {"t": "uploading", "k": "k2", "subject_id": "s2", "batch_id": "b2", "image_ids": {"front": "i2"}},
        {"t": "computed", "k": "k1"},
        {"t": "done", "k": "k1", "rows": [list(ROWS_B[0])], "warnings": None},
        {"t": "computed", "k": "k2"},
        {"t": "photos_deleted", "subject_id": "s1"},
        {"t": "done", "k": "unknown-key", "rows": []},
    ]
    state = JournalState(records)
    assert state.unit("k1")["phase"] == "done" and state.unit("k1")["rows"] == ROWS_B
    assert state.unit("k2")["phase"] == "computed" and state.unit("k2")["batch_id"] == "b2"
    assert state.unit("unknown-key") is None
    assert not state.photos_pending("s1") and state.photos_pending("s2") and not state.photos_pending("s3")


def test_metrics_report_name():
    assert metrics_name("reports/run.csv") == "reports/run-metrics.csv"
    assert metrics_name("s3://b/r/run.parquet") == "s3://b/r/run-metrics.parquet"
    assert metrics_name("out/run") == "out/run-metrics.csv"


# --- image preparation ------------------------------------------------------------------------------------------
def test_prepare_untouched_image_is_sent_byte_for_byte():
    data = jpeg()
    prepared = prepare_image(data)
    assert prepared.data is data and prepared.transform is None
    assert prepared.sha256 == prepared.uploaded_sha256 == hashlib.sha256(data).hexdigest()
    assert (prepared.width, prepared.height, prepared.format) == (320, 300, "JPEG")


def test_prepare_applies_exif_orientation_and_downscale():
    rotated = prepare_image(jpeg(400, 300, orientation=6))
    assert (rotated.width, rotated.height) == (300, 400) and "EXIF orientation 6" in rotated.transform
    with Image.open(io.BytesIO(rotated.data)) as img:
        assert img.size == (300, 400) and img.getexif().get(0x0112) in (None, 1)
    assert rotated.uploaded_sha256 != rotated.sha256

    big = prepare_image(jpeg(2000, 1000), max_side=800)
    assert (big.width, big.height) == (800, 400) and big.transform == "downscaled 2000x1000 to 800x400"
    assert prepare_image(jpeg(700, 300), max_side=800).transform is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (jpeg(255, 400), "255×400 px (at least 256×256)"),
        (b"not an image at all", "not a recognised image format"),
        (b"GIF89a" + b"\0" * 40, "format GIF (one of JPEG, PNG)"),
        (jpeg()[:200], "unreadable JPEG"),
        (jpeg(600, 600)[:3000], "truncated or corrupt JPEG"),
    ],
)
def test_prepare_rejects_unusable_images(data, message):
    with pytest.raises(InputError, match=re.escape(message)):
        prepare_image(data)


def test_prepare_png_keeps_png():
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (1, 2, 3)).save(buf, "PNG")
    prepared = prepare_image(buf.getvalue())
    assert prepared.format == "PNG" and not math.isnan(prepared.width)


def test_report_builder_gives_the_tables_of_the_whole_run_whatever_order_batches_finish_in():
    from flows.skin_analysis.tables import ReportBuilder, report_tables
    from tasks.haut_batch import ImageOutcome, UnitOutcome

    images = images_from_files([(f"/in/s{n}/front.jpg", f"s{n}/front.jpg") for n in range(1, 6)])
    images[2].rejected, images[2].subject = "the subject is empty", None  # refused as input: never analysed
    units = group_units(images, "v1")
    status = {u.unit: "failed" if u.unit == 2 else "done" for u in units}
    outcomes = {
        u.unit: UnitOutcome(
            unit=u.unit,
            status=status[u.unit],
            subject_id=f"s{u.unit}",
            images=[ImageOutcome(item=u.images[0].item, status=status[u.unit], image_id=f"i{u.unit}")],
            rows=[] if u.unit == 2 else [*ROWS_A, *ROWS_B],
        )
        for u in units
    }
    whole = report_tables(images, units, outcomes, "study", "v1", file_names=True)
    as_written = whole[2].to_csv(index=False, lineterminator="\r\n")  # as tasks.tables.write_table does
    # The last batch finishes first; then batches whose analyses interleave (rendered whole at the end).
    for batches in ((units[2:], units[:1], units[1:2]), ([units[0], units[3]], units[1:3])):
        builder = ReportBuilder("study", "v1", file_names=True, tidy_csv=True)
        for batch in batches:
            builder.add(batch, outcomes)
        rows, wide, tidy = builder.tables(images)
        assert rows == whole[0] and [r["status"] for r in rows] == [
            "done",
            "failed",
            "rejected",
            "done",
            "done",
        ]
        pd.testing.assert_frame_equal(wide, whole[1])
        pd.testing.assert_frame_equal(tidy, whole[2])
        assert builder.tidy_csv_text(tidy) == as_written
    assert list(tidy["analysis"].drop_duplicates()) == [1, 3, 4]
    assert as_written.count("s4/front.jpg") == len(ROWS_A) + len(ROWS_B) and "s2/" not in as_written
