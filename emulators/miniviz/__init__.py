"""Miniviz emulator: data and image events, Free/Pro plans, per-project and per-label rate limits."""

from __future__ import annotations

from typing import Any

from ..common import Clock, create_emulator_app
from .backend import MinivizBackend
from .routes import build_router

DEFAULT_CONFIG: dict[str, Any] = {
    "projects": [
        {"project_id": "demo-pro", "token": "mvz-demo-pro-token", "plan": "pro"},
        {"project_id": "demo-free", "token": "mvz-demo-free-token", "plan": "free"},
    ],
    # Minimum seconds between accepted data events per project, by plan (DOC); 0 turns the limit off.
    # A project entry may set its own "data_interval".
    "data_interval": {"free": 60, "pro": 15},
    "image_interval": 60,  # seconds per (project, label_key) (DOC); 0 = off
    "max_image_bytes": 204_800,
    # "decoded": limit applies to the image bytes (newest docs); "base64": to the encoded text (older docs).
    "image_size_mode": "decoded",
    "image_retention_days": 365,
    "max_stored_events": 2_000_000,  # data events kept for /_emulator/events
}


def error_body(status: int, message: str, errors: list | None = None) -> dict[str, Any]:
    return {"detail": message}


def credentials(config: dict[str, Any]) -> dict[str, Any]:
    projects = [
        {"project_id": p["project_id"], "token": p["token"], "plan": p.get("plan", "free")}
        for p in config["projects"]
    ]
    return {"project_id": projects[0]["project_id"], "token": projects[0]["token"], "projects": projects}


def build(config: dict[str, Any], clock: Clock, base_url: str):
    backend = MinivizBackend(config, clock, base_url)
    _app, asgi = create_emulator_app(backend, build_router(backend), error_body, validation_status=400)
    return backend, asgi
