"""Miniviz HTTP routes (docs/service-api-facts.md §1.4). Thin: read the token and body, call the backend."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from .backend import MinivizBackend, error

DATA_PATH = "/api/project/{project_id}"
IMAGE_PATH = "/api/project/{project_id}/image"
IMAGE_GET_PATH = "/api/project/{project_id}/image/{event_id}"  # DOC (one sentence); response format ASSUMED


def _token(request: Request) -> str | None:
    """Bearer header (current docs) or the legacy ``?token=`` query parameter."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.query_params.get("token")


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise error(400, "Request body is not valid JSON") from None


def _ok(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def build_router(backend: MinivizBackend) -> APIRouter:
    router = APIRouter()

    @router.post(DATA_PATH)
    async def send_data(project_id: str, request: Request) -> Response:
        return _ok(backend.send_data(project_id, _token(request), await _json(request)))

    @router.post(IMAGE_PATH)
    async def send_image(project_id: str, request: Request) -> Response:
        return _ok(backend.send_image(project_id, _token(request), await _json(request)))

    @router.get(IMAGE_GET_PATH)
    async def get_image(project_id: str, event_id: str, request: Request) -> Response:
        data, content_type = backend.get_image(project_id, _token(request), event_id)
        return Response(data, media_type=content_type)

    @router.get("/_emulator/events")
    async def events(
        project_id: str, label_key: str | None = None, offset: int = 0, limit: int = 1000
    ) -> Response:
        return _ok(backend.events(project_id, label_key, offset, limit))

    return router
