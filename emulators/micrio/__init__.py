"""Micrio Server API v2 emulator: body auth, folders, and images that are really fetched and "tiled" on the clock."""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..common import Clock, create_emulator_app
from .backend import MicrioBackend
from .routes import THUMBNAIL_PATH, build_router

DEMO_ORGANISATION_ID = "6d1c2b1e-3f4a-4b5c-9d6e-7f8a9b0c1d2e"
DEMO_API_KEY = "0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"
DEMO_ROOT_FOLDER_ID = "dmRoot"

DEFAULT_CONFIG: dict[str, Any] = {
    # Each organisation: uuid id + uuid API key (DOC) and its folders (6-char ids); the first folder is the root.
    "organisations": [
        {
            "organisation_id": DEMO_ORGANISATION_ID,
            "api_key": DEMO_API_KEY,
            "folders": [{"id": DEMO_ROOT_FOLDER_ID, "name": "Demo collection", "type": "folder"}],
        }
    ],
    # Virtual seconds per stage (DOC: medium images take < 10 s in total). Downloading lasts at least this
    # long, or as long as the real fetch of sourceUrl takes.
    "stage_durations": {"downloading": 0.5, "processing": 1.0, "tiling": 2.5, "storing": 0.5},
    "tiling_per_megapixel": 0.0,  # extra tiling seconds per megapixel (DOC: huge images take 5-10 min)
    "max_concurrent": 8,  # images processed at once; the rest wait in "queued"
    "max_images_per_add": 1000,  # ASSUMED per-call cap (not documented) → 400 above it
    "max_status_ids": 100,  # DOC: image/status takes at most 100 ids
    # Injected transient failures: [{"match": regex on sourceUrl or name, "error": "uploadError" |
    # "statusUpdateError" | "unknown", "times": N (first N attempts per sourceUrl fail; null = always),
    # "stage": optional stage where it fails}]
    "fail_rules": [],
    "transient_error_rate": 0.0,  # random share of attempts that fail with one of transient_errors
    "transient_errors": ["uploadError", "statusUpdateError", "unknown"],
    "seed": None,  # makes ids and random failures reproducible
    "fetch_timeout_seconds": 30.0,  # real seconds for fetching a sourceUrl
    "thumbnail_size": 256,  # longest side of the served thumbnails, px
}


def error_body(status: int, message: str, errors: list | None = None) -> dict[str, Any]:
    """ASSUMED error envelope (the dashboard API the CLI uses returns ``{"error": ...}``)."""
    return {"error": message}


def credentials(config: dict[str, Any]) -> dict[str, Any]:
    orgs = [
        {
            "organisation_id": o["organisation_id"],
            "api_key": o["api_key"],
            "root_folder_id": o["folders"][0]["id"] if o.get("folders") else None,
        }
        for o in config["organisations"]
    ]
    return {**orgs[0], "organisations": orgs}


def build(config: dict[str, Any], clock: Clock, base_url: str):
    # Micrio takes originals up to gigapixels; this process is the emulator, so lift Pillow's bomb guard here.
    Image.MAX_IMAGE_PIXELS = None
    backend = MicrioBackend(config, clock, base_url, thumbnail_path=THUMBNAIL_PATH)
    _app, asgi = create_emulator_app(backend, build_router(backend), error_body, validation_status=400)
    return backend, asgi
