"""Deterministic stand-ins for Haut.ai's algorithms.

Every figure is a pure function of the image bytes (through their SHA-256), so a test or a benchmark can
recompute what the emulator must have returned for a given file (:func:`metric_scores`) and prove results
arrived intact and were matched to the right image. Scores are 0–100 ``bad_good_line`` values with the
documented bands (docs/service-api-facts.md §4.9); higher is better.
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from dataclasses import dataclass
from typing import Any

from .catalog import FSM2_FAMILIES

MIN_SIDE = 256  # DOC: minimum resolution 256 x 256
PROBLEM_TOO_SMALL = "image_resolution_too_low"
PROBLEM_UNDECODABLE = "image_not_decodable"

# Sub-regions reported for each metric (v1 names DOC/INF; v3 names INF).
V1_AREAS = ("face", "forehead", "nose", "left_cheek", "right_cheek")
V3_AREAS = ("forehead", "nose", "perioral", "left_cheek", "right_cheek", "left_eye", "right_eye")
# FSM 2.0 family -> FSA 3.0 parameter key (same score, so v1 and v3 agree for one image).
V3_KEYS = {
    family: {"acne": "breakouts", "eye_bags": "dark_circles"}.get(family, family) for family in FSM2_FAMILIES
}
SKIN_TONES = ("Very light", "Light", "Intermediate", "Tan", "Brown", "Dark")  # DOC categories
SKIN_TYPES = ("Dry", "Normal", "Combination", "Oily")
# Families with counted lesions: sub-metrics "<family>_number" (numeric) and "<family>_density" (per mille).
COUNTED = ("pores", "lines", "acne", "pigmentation", "redness")
_RESULT_NS = uuid.UUID("8f0c1f9e-6a43-4c55-9a50-3f1d3c0f7d21")


def band(score: float) -> str:
    """Documented band of a 0–100 score: (90,100] Excellent … [0,30] Bad."""
    for lower, tag in ((90, "Excellent"), (80, "Great"), (70, "Good"), (50, "Average"), (30, "Poor")):
        if score > lower:
            return tag
    return "Bad"


# --- image checks (Pillow; run off the event loop) ------------------------------------------------------------
@dataclass(frozen=True)
class ImageAnalysis:
    """What the emulator learns from an uploaded file once; results are derived from it later."""

    sha256: str
    size: int
    md5_b64: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    problem: str | None = None  # None = usable; else a problem code reported in results
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def analyse_image(data: bytes) -> ImageAnalysis:
    """Hash ``data`` and check it is a decodable image of at least 256 x 256 px (CPU work: use a thread)."""
    from PIL import Image, UnidentifiedImageError

    base = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "md5_b64": base64.b64encode(hashlib.md5(data).digest()).decode(),
    }
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height, fmt = img.width, img.height, img.format
            img.draft(
                "RGB", (MIN_SIDE, MIN_SIDE)
            )  # JPEG: decode at reduced scale; enough to prove it decodes
            img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return ImageAnalysis(
            **base,
            problem=PROBLEM_UNDECODABLE,
            detail=f"The file is not a decodable image ({type(exc).__name__}).",
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        return ImageAnalysis(
            **base,
            width=width,
            height=height,
            format=fmt,
            problem=PROBLEM_TOO_SMALL,
            detail=f"Image resolution {width}x{height} is below the minimum {MIN_SIDE}x{MIN_SIDE}.",
        )
    return ImageAnalysis(**base, width=width, height=height, format=fmt)


# --- deterministic figures ------------------------------------------------------------------------------------
def _draw(sha256_hex: str, *labels: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{sha256_hex}|{'|'.join(labels)}".encode()).digest()[:8], "big")


def score(sha256_hex: str, family: str, area: str = "face") -> int:
    """0–100 score of one metric family in one area; spread over 30–98 like real selfies."""
    return 30 + _draw(sha256_hex, family, area) % 69


def metric_scores_from_digest(sha256_hex: str) -> dict[str, int]:
    return {family: score(sha256_hex, family) for family in FSM2_FAMILIES}


def metric_scores(data: bytes) -> dict[str, int]:
    """Face-level score per FSM 2.0 family for an image's bytes: what v1 ``area_name == "face"`` main metrics
    and v3 ``parameters[V3_KEYS[family]]["score"]`` must contain."""
    return metric_scores_from_digest(hashlib.sha256(data).hexdigest())


def skintone(sha256_hex: str) -> tuple[str, float]:
    """(category, ITA angle in degrees); the category follows the usual ITA thresholds."""
    ita = round(-40 + (_draw(sha256_hex, "ita") % 10000) / 10000 * 100, 1)  # -40 .. 60
    thresholds = ((55, 0), (41, 1), (28, 2), (10, 3), (-30, 4))
    index = next((i for limit, i in thresholds if ita > limit), 5)
    return SKIN_TONES[index], ita


def age(sha256_hex: str, what: str = "age") -> int:
    return 18 + _draw(sha256_hex, what) % 53


def quality_score(sha256_hex: str) -> int:
    return 60 + _draw(sha256_hex, "quality") % 41


def _count(sha256_hex: str, family: str, area: str) -> tuple[int, float]:
    n = _draw(sha256_hex, family, area, "number") % 400
    return n, round(n / 4.0 + (_draw(sha256_hex, family, area, "density") % 100) / 100, 2)


# --- v1 per-image results ---------------------------------------------------------------------------------------
def _metric(
    value: Any, name: str, tech_name: str, widget_type: str, meta: dict[str, Any] | None = None
) -> dict:
    return {
        "value": value,
        "widget_type": widget_type,
        "name": name,
        "tech_name": tech_name,
        "widget_meta": meta or {},
    }


def _score_metric(value: int, name: str, tech_name: str) -> dict[str, Any]:
    return _metric(value, name, tech_name, "bad_good_line", {"min": 0, "max": 100, "tag": band(value)})


def _area(area: str, main: dict[str, Any], subs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "area_name": area,
        "main_metric": main,
        "sub_metrics": subs,
        "masks_restored": [],
        "masks_original": [],
    }


def _family_result(sha: str, family: str, name: str) -> dict[str, Any]:
    areas = []
    for area in V1_AREAS:
        subs = []
        if family in COUNTED:
            number, density = _count(sha, family, area)
            subs = [
                _metric(number, f"{name} number", f"{family}_number", "numeric"),
                _metric(density, f"{name} density", f"{family}_density", "density", {"unit": "per_mille"}),
            ]
        areas.append(_area(area, _score_metric(score(sha, family, area), name, f"{family}_score"), subs))
    return {"area_results": areas}


def v1_results(
    analysis: ImageAnalysis, image_id: str, app: dict[str, Any], run_id: str, created: str, image_type: str
) -> list[dict[str, Any]]:
    """Algorithm results of one application for one image (docs/service-api-facts.md §4.9); ``is_ok: false`` for a bad image."""
    algorithms = app["algorithms_versions"]
    out = []
    for algo in algorithms:
        family_tech = algo["tech_name"]
        family = family_tech.split(".", 1)[1]
        if not analysis.ok:
            result: dict[str, Any] = {
                "error": {"code": analysis.problem, "detail": analysis.detail},
                "problems": [analysis.problem],
            }
        elif family in FSM2_FAMILIES:
            result = _family_result(analysis.sha256, family, algo["name"])
        elif family == "skintone":
            tone, ita = skintone(analysis.sha256)
            result = {
                "area_results": [
                    _area(
                        "face",
                        _metric(tone, "Skin tone", "skintone_class", "category"),
                        [_metric(ita, "ITA", "ita", "numeric")],
                    )
                ]
            }
        elif family == "quality":
            q = quality_score(analysis.sha256)
            result = {"area_results": [_area("face", _score_metric(q, "Quality", "quality_score"), [])]}
        else:  # recommendation engine: the three weakest FSM 2.0 metrics
            weakest = sorted(metric_scores_from_digest(analysis.sha256).items(), key=lambda kv: kv[1])[:3]
            result = {
                "recommendations": [
                    {"priority": i + 1, "concern": fam, "score": val} for i, (fam, val) in enumerate(weakest)
                ]
            }
        out.append(
            {
                "id": str(uuid.uuid5(_RESULT_NS, f"{image_id}:{run_id}:{family_tech}")),
                "is_ok": analysis.ok,
                "image_id": image_id,
                "algorithm_version_id": algo["id"],
                "creation_time": created,
                "application_id": app["id"],
                "application_name": app["name"],
                "application_description": app["description"],
                "application_run_id": run_id,
                "image_type": image_type,
                "algorithm_family_tech_name": family_tech,
                "result": result,
            }
        )
    return out


# --- v3 batch parameters ------------------------------------------------------------------------------------------
def v3_parameters(sha256_hex: str) -> dict[str, Any]:
    """FSA 3.0 ``parameters`` for the batch's front image (shape INF from third-party clients, docs/service-api-facts.md §4.9)."""
    params: dict[str, Any] = {}
    for family, key in V3_KEYS.items():
        value = score(sha256_hex, family)
        entry: dict[str, Any] = {
            "score": value,
            "tag": band(value),
            "areas": {a: {"score": score(sha256_hex, family, a)} for a in V3_AREAS},
        }
        if family in COUNTED:
            number, density = _count(sha256_hex, family, "face")
            entry.update({"amount": number, "density": density})
        params[key] = entry
    tone, ita = skintone(sha256_hex)
    params["skintone"] = {"class": tone, "ita": ita}
    params["skin_type"] = {"type": SKIN_TYPES[_draw(sha256_hex, "skin_type") % len(SKIN_TYPES)]}
    params["age"] = {"age": age(sha256_hex)}
    params["eyes_age"] = {"age": age(sha256_hex, "eyes_age")}
    return params
