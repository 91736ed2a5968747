"""The fixed dictionaries of the Haut.ai platform: image types, sides, lights, applications, algorithms.

Known ids (DOC, docs/service-api-facts.md §4.10): side 1 front, 2 right, 3 left; light 1 regular. Everything else here (other
ids, names, the application catalogue) is ASSUMED but shaped like the documented responses.
"""

from __future__ import annotations

from typing import Any

SIDES: dict[int, dict[str, Any]] = {
    1: {"id": 1, "name": "Front", "tech_name": "front"},
    2: {"id": 2, "name": "Right", "tech_name": "right"},
    3: {"id": 3, "name": "Left", "tech_name": "left"},
}
SIDE_IDS_BY_TECH = {s["tech_name"]: i for i, s in SIDES.items()}
LIGHTS: dict[int, dict[str, Any]] = {
    1: {"id": 1, "name": "Regular", "tech_name": "regular"},
}

# Image type 1 is the selfie used by the face applications; type 2 exists so "wrong image type" is testable.
IMAGE_TYPES: dict[int, dict[str, Any]] = {
    1: {
        "id": 1,
        "name": "Selfie",
        "tech_name": "selfie",
        "sides": [SIDES[1], SIDES[2], SIDES[3]],
        "lights": [LIGHTS[1]],
        "default_side_id": 1,
    },
    2: {
        "id": 2,
        "name": "Dermatoscope",
        "tech_name": "dermatoscope",
        "sides": [SIDES[1]],
        "lights": [LIGHTS[1]],
        "default_side_id": 1,
    },
}
DEFAULT_IMAGE_TYPE_ID = 1


def image_type_body(type_id: int) -> dict[str, Any]:
    t = IMAGE_TYPES[type_id]
    return {k: t[k] for k in ("id", "name", "tech_name", "sides", "lights")}


BIOLOGICAL_SEXES: dict[str, dict[str, Any]] = {
    "1": {"id": "1", "name": "Male", "tech_name": "male"},
    "2": {"id": "2", "name": "Female", "tech_name": "female"},
    "3": {"id": "3", "name": "Other", "tech_name": "other"},
}


def biological_sex(value: Any) -> dict[str, Any] | None:
    """Accept the dict id ("2") or its tech name ("female"); None when unknown."""
    text = str(value).strip().lower()
    return BIOLOGICAL_SEXES.get(text) or next(
        (s for s in BIOLOGICAL_SEXES.values() if s["tech_name"] == text), None
    )


# FSM 2.0 algorithm families (DOC: hydration; INF: the others, from third-party code) and their display names.
FSM2_FAMILIES: dict[str, str] = {
    "hydration": "Hydration",
    "translucency": "Translucency",
    "pores": "Pores",
    "redness": "Redness",
    "eye_bags": "Eye Bags",
    "uniformness": "Uniformness",
    "lines": "Lines",
    "pigmentation": "Pigmentation",
    "acne": "Acne",
    "sagging": "Sagging",
}
FSM2_EXTRA_FAMILIES = {"skintone": "Skin Tone", "quality": "Quality"}

FSM2 = "face_skin_metrics_2.0"  # DOC tech name
FS3 = "face_skin_metrics_3.0"  # ASSUMED tech name (by analogy with 2.0); v3 results use the key face_skin_metrics_3
RECOMMENDATION_ENGINE = "recommendation_engine"  # ASSUMED tech name; depends on FSM 2.0 (DOC)


def _algorithms(app_id: int, prefix: str, families: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "id": app_id * 100 + n,
            "name": f"{name}",
            "tech_name": f"{prefix}.{tech}",
            "html_description": f"<p>{name} estimation.</p>",
        }
        for n, (tech, name) in enumerate(families.items(), start=1)
    ]


APPLICATIONS: dict[str, dict[str, Any]] = {
    FSM2: {
        "id": 1,
        "name": "Face Skin Metrics 2.0",
        "tech_name": FSM2,
        "image_type_id": 1,
        "dependencies": [],
        "description": "Skin metrics of a frontal selfie: hydration, pores, redness, lines, pigmentation and more.",
        "algorithms_versions": _algorithms(1, "selfie_v2", {**FSM2_FAMILIES, **FSM2_EXTRA_FAMILIES}),
    },
    FS3: {
        "id": 2,
        "name": "Face Skin Analysis 3.0",
        "tech_name": FS3,
        "image_type_id": 1,
        "dependencies": [],
        "description": "Face Skin Analysis 3.0 (beta): v3 upload, compute and batch results.",
        "algorithms_versions": _algorithms(
            2,
            "face_skin_metrics_3",
            {
                "lines": "Lines",
                "pores": "Pores",
                "redness": "Redness",
                "pigmentation": "Pigmentation",
                "breakouts": "Breakouts",
                "sagging": "Sagging",
                "dark_circles": "Dark Circles",
                "uniformness": "Uniformness",
                "hydration": "Hydration",
                "translucency": "Translucency",
                "skintone": "Skin Tone",
                "skin_type": "Skin Type",
                "age": "Age",
                "eyes_age": "Eyes Age",
            },
        ),
    },
    RECOMMENDATION_ENGINE: {
        "id": 3,
        "name": "Recommendation Engine",
        "tech_name": RECOMMENDATION_ENGINE,
        "image_type_id": 1,
        "dependencies": [FSM2],
        "description": "Product recommendations from the Face Skin Metrics 2.0 results.",
        "algorithms_versions": _algorithms(3, "recommendation_engine", {"products": "Products"}),
    },
}
APPLICATIONS_BY_ID = {a["id"]: a for a in APPLICATIONS.values()}


def application_body(app: dict[str, Any], created: str) -> dict[str, Any]:
    """The documented application object (docs/service-api-facts.md §4.5)."""
    return {
        "id": app["id"],
        "name": app["name"],
        "tech_name": app["tech_name"],
        "author_id": None,
        "creation_time": created,
        "image_type": image_type_body(app["image_type_id"]),
        "algorithms_versions": app["algorithms_versions"],
        "description": app["description"],
        "preview": None,
        "promote_image_url": None,
        "is_enabled": True,
        "algorithms_flags": {},
        "dependencies": list(app["dependencies"]),
    }


def algorithms_dict() -> list[dict[str, Any]]:
    """``GET /api/v1/dicts/algorithms/``: every algorithm version with its family."""
    out = []
    for app in APPLICATIONS.values():
        for algo in app["algorithms_versions"]:
            family = algo["tech_name"]
            out.append(
                {
                    "id": algo["id"],
                    "name": algo["name"],
                    "tech_name": f"{family}.v1",
                    "version": "1",
                    "algorithm_family": {"name": algo["name"], "tech_name": family},
                    "application_tech_name": app["tech_name"],
                    "image_type": IMAGE_TYPES[app["image_type_id"]]["tech_name"],
                }
            )
    return out
