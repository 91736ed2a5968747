"""VizioSense HTTP routes (docs/service-api-facts.md §2.3). Thin: authenticate, read the body, call the backend.

Every path is ASSUMED (the vendor publishes none): change a constant here to move an endpoint.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from .backend import VizioSenseBackend, validation_error

PREFIX = "/api/v1"  # DOC
LOGIN_PATH = f"{PREFIX}/auth/login"
REFRESH_PATH = f"{PREFIX}/auth/refresh"
DEVICES_PATH = f"{PREFIX}/devices"
DEVICE_PATH = f"{PREFIX}/devices/{{device_uuid}}"
DEVICE_REFRESH_PATH = f"{PREFIX}/devices/{{device_uuid}}/refresh"
DEVICE_IMAGE_PATH = f"{PREFIX}/devices/{{device_uuid}}/image"
WEBHOOKS_PATH = f"{PREFIX}/devices/{{device_uuid}}/webhooks"
WEBHOOK_PATH = f"{PREFIX}/devices/{{device_uuid}}/webhooks/{{webhook_id}}"
# Where the image links point (pre-signed: no Authorization needed). The doc only shows the name suffixes.
IMAGE_LINK_PATH = f"{PREFIX}/images/{{image_name}}"


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise validation_error(["The request body must be valid JSON."]) from None


def _ok(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def build_router(backend: VizioSenseBackend) -> APIRouter:
    router = APIRouter()

    def user(request: Request):
        return backend.authenticate(request.headers.get("authorization"))

    @router.post(LOGIN_PATH)
    async def login(request: Request) -> Response:
        return _ok(backend.login(await _json(request)))

    @router.post(REFRESH_PATH)
    async def refresh_token(request: Request) -> Response:
        return _ok(backend.refresh_token(await _json(request)))

    @router.get(DEVICES_PATH)
    async def list_devices(request: Request) -> Response:
        return _ok(backend.list_devices(user(request), request.query_params))

    @router.get(DEVICE_PATH)
    async def get_device(device_uuid: str, request: Request) -> Response:
        return _ok(backend.get_device(user(request), device_uuid))

    @router.api_route(DEVICE_PATH, methods=["PATCH", "PUT"])
    async def update_device(device_uuid: str, request: Request) -> Response:
        caller = user(request)
        return _ok(backend.update_device(caller, device_uuid, await _json(request)))

    @router.post(DEVICE_REFRESH_PATH)
    async def refresh_device(device_uuid: str, request: Request) -> Response:
        return _ok(backend.refresh_device(user(request), device_uuid))

    @router.post(DEVICE_IMAGE_PATH)
    async def request_image(device_uuid: str, request: Request) -> Response:
        names = backend.request_image(user(request), device_uuid)
        return _ok({"data": [backend.base_url + IMAGE_LINK_PATH.format(image_name=n) for n in names]})

    @router.get(IMAGE_LINK_PATH)
    async def fetch_image(image_name: str) -> Response:
        data = await backend.fetch_image(image_name)
        return Response(
            data,
            media_type="image/jpeg",
            headers={"Content-Disposition": f'inline; filename="{image_name}.jpg"'},
        )

    @router.get(WEBHOOKS_PATH)
    async def list_webhooks(device_uuid: str, request: Request) -> Response:
        return _ok(backend.list_webhooks(user(request), device_uuid))

    @router.post(WEBHOOKS_PATH)
    async def add_webhook(device_uuid: str, request: Request) -> Response:
        caller = user(request)
        return _ok(backend.add_webhook(caller, device_uuid, await _json(request)), status=201)

    @router.put(WEBHOOK_PATH)
    async def update_webhook(device_uuid: str, webhook_id: str, request: Request) -> Response:
        caller = user(request)
        return _ok(backend.update_webhook(caller, device_uuid, webhook_id, await _json(request)))

    return router
