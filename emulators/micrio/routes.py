"""Micrio Server API v2 HTTP routes (docs/service-api-facts.md §3.3). Thin: parse the JSON body, call the backend, wrap the result."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from .backend import MicrioBackend, error, render_thumbnail

# DOC paths (all POST with a JSON body; note the singular "image" in image/status).
IMAGES_ADD_PATH = "/v2/images/add"
IMAGE_STATUS_PATH = "/v2/image/status"
FOLDER_STATUS_PATH = "/v2/folder/status"
FOLDER_CREATE_PATH = "/v2/folder/create"
# ASSUMED: where the emulator serves the thumbnail URLs it returns (the real thumbnail host is not documented).
THUMBNAIL_PATH = "/thumbs/{image_id}.jpg"
# Emulator-only: processing tunables (stage durations, fail rules, ...) changed at run time until reset.
CONFIG_PATH = "/_emulator/config"


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise error(400, "Request body is not valid JSON") from None


def _result(result: dict[str, Any]) -> Response:
    """DOC success envelope: ``{"result": {...}}``."""
    return Response(orjson.dumps({"result": result}), media_type="application/json")


def build_router(backend: MicrioBackend) -> APIRouter:
    router = APIRouter()

    @router.post(IMAGES_ADD_PATH)
    async def images_add(request: Request) -> Response:
        return _result(backend.add_images(await _json(request)))

    @router.post(IMAGE_STATUS_PATH)
    async def image_status(request: Request) -> Response:
        return _result(backend.image_status(await _json(request)))

    @router.post(FOLDER_STATUS_PATH)
    async def folder_status(request: Request) -> Response:
        return _result(backend.folder_status(await _json(request)))

    @router.post(FOLDER_CREATE_PATH)
    async def folder_create(request: Request) -> Response:
        return _result(backend.create_folder(await _json(request)))

    @router.get(THUMBNAIL_PATH)
    async def thumbnail(image_id: str) -> Response:
        found = backend.thumbnail(image_id)
        if found is None:
            raise error(404, f"Thumbnail for {image_id!r} not found")
        width, height, key = found
        data = await asyncio.to_thread(
            render_thumbnail, width, height, key, int(backend.config["thumbnail_size"])
        )
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

    @router.get(CONFIG_PATH)
    async def get_config() -> dict[str, Any]:
        return backend.runtime_config()

    @router.post(CONFIG_PATH)
    async def set_config(request: Request) -> Response:
        changes = await _json(request)
        if not isinstance(changes, dict):
            raise error(400, "expected a JSON object of settings")
        try:
            return Response(orjson.dumps(backend.update_config(changes)), media_type="application/json")
        except ValueError as exc:
            raise error(400, f"invalid emulator config: {exc}") from None

    return router
