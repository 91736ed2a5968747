"""Haut.ai HTTP routes (docs/service-api-facts.md §4). Thin: read token, query and body, call the backend, shape the response.

Paths are DRF style with trailing slashes. DOC/INF paths first; every ASSUMED path or name is a constant here
so that changing it is a one-line edit (clients keep their own copy of the same constants).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response

from ..common import route_key
from . import catalog
from .backend import HautBackend, User
from .drf import client_error
from .gcs import GCS_PREFIX, GcsError

V1 = "/api/v1"
COMPANY = V1 + "/companies/{company_id}"
DATASET = COMPANY + "/datasets/{dataset_id}"

# --- DOC (or INF where noted) --------------------------------------------------------------------------------
LOGIN_PATH = V1 + "/auth/login/"
LEGACY_LOGIN_PATH = V1 + "/login/"  # INF: older guides and clients
REFRESH_PATH = V1 + "/auth/refresh/"  # DOC path; body {"refresh_token"} ASSUMED
PRIVATE_TOKENS_PATH = V1 + "/auth/private_tokens/"
PRIVATE_TOKEN_PATH = V1 + "/auth/private_tokens/{token_id}/"
IMAGE_TYPES_PATH = V1 + "/dicts/image_types/"
ALGORITHMS_PATH = V1 + "/dicts/algorithms/"  # no auth (DOC FAQ)
DATASETS_PATH = COMPANY + "/datasets/"
DATASET_PATH = DATASET + "/"  # INF
APPLICATIONS_PATH = COMPANY + "/applications/"
ATTACH_PATH = COMPANY + "/applications/{tech_name}/attach-to-dataset/"
WEBHOOKS_PATH = DATASET + "/webhooks/"
SUBJECTS_PATH = DATASET + "/subjects/"
SUBJECT_PATH = DATASET + "/subjects/{subject_id}/"  # PATCH DOC; GET and DELETE ASSUMED
SIGNED_UPLOAD_URL_PATH = COMPANY + "/subjects/{subject_id}/signed_upload_url/"
COMPUTE_V1_PATH = COMPANY + "/batches/{batch_id}/compute/"
RESULTS_V1_PATH = DATASET + "/subjects/{subject_id}/batches/{batch_id}/images/{image_id}/results/"
AUX_IMAGES_PATH = COMPANY + "/images/{image_id}/aux_images/"
V3_UPLOAD_PATH = "/api/v3/companies/{company_id}/subjects/{subject_id}/upload/"
V3_COMPUTE_PATH = "/api/v3/companies/{company_id}/batches/{batch_id}/compute/"
V3_RESULTS_PATH = "/api/v3/companies/{company_id}/batches/{batch_id}/results/"

# --- ASSUMED ------------------------------------------------------------------------------------------------
SIDES_PATH = V1 + "/dicts/sides/"
LIGHTS_PATH = V1 + "/dicts/lights/"
ATTACH_DEPENDENCIES_PARAM = "attach_dependencies"  # ?attach_dependencies=true
SUBJECTS_BULK_DELETE_PATH = DATASET + "/subjects/bulk_delete/"  # body {"ids": [...]} -> 204
# Subject detail and GDPR actions answer both with and without the dataset segment (the docs' "..." is ambiguous).
SUBJECT_COMPANY_PATH = COMPANY + "/subjects/{subject_id}/"
DELETE_PHOTOS_PATHS = (
    COMPANY + "/subjects/{subject_id}/delete_photos/",
    DATASET + "/subjects/{subject_id}/delete_photos/",
)
CLEAR_METADATA_PATHS = (
    COMPANY + "/subjects/{subject_id}/clear_metadata/",
    DATASET + "/subjects/{subject_id}/clear_metadata/",
)
SUBJECT_IMAGES_PATH = COMPANY + "/subjects/{subject_id}/images/"
IMAGE_PATH = COMPANY + "/images/{image_id}/"
# The emulator's stand-in for storage.googleapis.com (signed upload and result URLs point here).
GCS_OBJECT_PATH = GCS_PREFIX + "/{bucket}/{key:path}"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _no_content() -> Response:
    return Response(status_code=204)


async def _body(request: Request) -> Any:
    """JSON or form body as DRF parses it; an empty body is ``{}``."""
    raw = await request.body()
    if not raw.strip():
        return {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise client_error(400, "parse_error", f"JSON parse error - {exc}") from None


def _query(request: Request) -> dict[str, str]:
    return dict(request.query_params)


async def _read_capped(request: Request, limit: int) -> tuple[bytes, int]:
    """The body if it is at most ``limit`` bytes (else ``b""``) and its full length; never holds more."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total <= limit:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
    return (b"".join(chunks) if total <= limit else b""), total


def build_router(backend: HautBackend) -> APIRouter:
    router = APIRouter()

    def user(request: Request) -> User:
        return backend.authenticate(
            request.headers.get("authorization"), request.headers.get("authentication")
        )

    # --- auth -------------------------------------------------------------------------------------------------
    async def login(request: Request) -> Response:
        return _json(backend.login(await _body(request)))

    router.add_api_route(LOGIN_PATH, login, methods=["POST"])
    router.add_api_route(LEGACY_LOGIN_PATH, login, methods=["POST"])

    @router.post(REFRESH_PATH)
    async def refresh(request: Request) -> Response:
        return _json(backend.refresh(await _body(request)))

    @router.post(PRIVATE_TOKENS_PATH)
    async def create_private_token(request: Request) -> Response:
        return _json(backend.create_private_token(user(request), await _body(request)), 201)

    @router.get(PRIVATE_TOKENS_PATH)
    async def list_private_tokens(request: Request) -> Response:
        return _json(backend.list_private_tokens(user(request), _query(request), str(request.url)))

    @router.delete(PRIVATE_TOKEN_PATH)
    async def revoke_private_token(token_id: str, request: Request) -> Response:
        backend.revoke_private_token(user(request), token_id)
        return _no_content()

    # --- dictionaries -----------------------------------------------------------------------------------------
    @router.get(IMAGE_TYPES_PATH)
    async def image_types(request: Request) -> Response:
        user(request)
        return _json(backend.image_types())

    @router.get(SIDES_PATH)
    async def sides(request: Request) -> Response:
        user(request)
        return _json(list(catalog.SIDES.values()))

    @router.get(LIGHTS_PATH)
    async def lights(request: Request) -> Response:
        user(request)
        return _json(list(catalog.LIGHTS.values()))

    @router.get(ALGORITHMS_PATH)
    async def algorithms() -> Response:
        return _json(catalog.algorithms_dict())

    # --- datasets & applications ------------------------------------------------------------------------------
    @router.post(DATASETS_PATH)
    async def create_dataset(company_id: str, request: Request) -> Response:
        return _json(backend.create_dataset(user(request), company_id, await _body(request)), 201)

    @router.get(DATASETS_PATH)
    async def list_datasets(company_id: str, request: Request) -> Response:
        return _json(backend.list_datasets(user(request), company_id, _query(request), str(request.url)))

    @router.get(DATASET_PATH)
    async def get_dataset(company_id: str, dataset_id: str, request: Request) -> Response:
        return _json(backend.get_dataset(user(request), company_id, dataset_id))

    @router.get(APPLICATIONS_PATH)
    async def list_applications(company_id: str, request: Request) -> Response:
        return _json(backend.list_applications(user(request), company_id, _query(request), str(request.url)))

    @router.post(ATTACH_PATH)
    async def attach(company_id: str, tech_name: str, request: Request) -> Response:
        flag = request.query_params.get(ATTACH_DEPENDENCIES_PARAM, "").lower() in ("true", "1", "yes")
        who = user(request)
        return _json(backend.attach_application(who, company_id, tech_name, await _body(request), flag))

    @router.post(WEBHOOKS_PATH)
    async def set_webhook(company_id: str, dataset_id: str, request: Request) -> Response:
        return _json(backend.set_webhook(user(request), company_id, dataset_id, await _body(request)), 201)

    # --- subjects ---------------------------------------------------------------------------------------------
    @router.post(SUBJECTS_BULK_DELETE_PATH)
    async def bulk_delete(company_id: str, dataset_id: str, request: Request) -> Response:
        backend.bulk_delete_subjects(user(request), company_id, dataset_id, await _body(request))
        return _no_content()

    @router.post(SUBJECTS_PATH)
    async def create_subject(company_id: str, dataset_id: str, request: Request) -> Response:
        return _json(backend.create_subject(user(request), company_id, dataset_id, await _body(request)), 201)

    @router.get(SUBJECTS_PATH)
    async def list_subjects(company_id: str, dataset_id: str, request: Request) -> Response:
        return _json(
            backend.list_subjects(user(request), company_id, dataset_id, _query(request), str(request.url))
        )

    @router.get(SUBJECT_PATH)
    async def get_subject(company_id: str, dataset_id: str, subject_id: str, request: Request) -> Response:
        return _json(backend.get_subject(user(request), company_id, dataset_id, subject_id))

    @router.get(SUBJECT_COMPANY_PATH)
    async def get_subject_in_company(company_id: str, subject_id: str, request: Request) -> Response:
        return _json(backend.get_subject(user(request), company_id, None, subject_id))

    @router.patch(SUBJECT_PATH)
    async def update_subject(company_id: str, dataset_id: str, subject_id: str, request: Request) -> Response:
        body = await _body(request)
        return _json(backend.update_subject(user(request), company_id, dataset_id, subject_id, body))

    @router.delete(SUBJECT_PATH)
    async def delete_subject(company_id: str, dataset_id: str, subject_id: str, request: Request) -> Response:
        backend.delete_subject(user(request), company_id, dataset_id, subject_id)
        return _no_content()

    async def delete_photos(
        company_id: str, subject_id: str, request: Request, dataset_id: str | None = None
    ) -> Response:
        backend.delete_subject_photos(user(request), company_id, subject_id, dataset_id)
        return _no_content()

    async def clear_metadata(
        company_id: str, subject_id: str, request: Request, dataset_id: str | None = None
    ) -> Response:
        return _json(backend.clear_subject_metadata(user(request), company_id, subject_id, dataset_id))

    for path in DELETE_PHOTOS_PATHS:
        router.add_api_route(path, delete_photos, methods=["POST"])
    for path in CLEAR_METADATA_PATHS:
        router.add_api_route(path, clear_metadata, methods=["POST"])

    # --- images v1 --------------------------------------------------------------------------------------------
    @router.post(SIGNED_UPLOAD_URL_PATH)
    async def signed_upload_url(company_id: str, subject_id: str, request: Request) -> Response:
        return _json(
            backend.signed_upload_url(user(request), company_id, subject_id, await _body(request)), 201
        )

    @router.post(COMPUTE_V1_PATH)
    async def compute_v1(company_id: str, batch_id: str, request: Request) -> Response:
        backend.compute(user(request), company_id, batch_id, await _body(request))
        return _no_content()

    @router.get(RESULTS_V1_PATH)
    async def results_v1(
        company_id: str, dataset_id: str, subject_id: str, batch_id: str, image_id: str, request: Request
    ) -> Response:
        return _json(
            backend.image_results(
                user(request), company_id, dataset_id, subject_id, batch_id, image_id, _query(request)
            )
        )

    @router.get(SUBJECT_IMAGES_PATH)
    async def subject_images(company_id: str, subject_id: str, request: Request) -> Response:
        return _json(
            backend.list_subject_images(
                user(request), company_id, subject_id, _query(request), str(request.url)
            )
        )

    @router.get(IMAGE_PATH)
    async def get_image(company_id: str, image_id: str, request: Request) -> Response:
        return _json(backend.get_image(user(request), company_id, image_id))

    @router.delete(IMAGE_PATH)
    async def delete_image(company_id: str, image_id: str, request: Request) -> Response:
        backend.delete_image(user(request), company_id, image_id)
        return _no_content()

    @router.get(AUX_IMAGES_PATH)
    async def aux_images(company_id: str, image_id: str, request: Request) -> Response:
        return _json(
            backend.list_aux_images(user(request), company_id, image_id, _query(request), str(request.url))
        )

    # --- images v3 --------------------------------------------------------------------------------------------
    @router.post(V3_UPLOAD_PATH)
    async def v3_upload(company_id: str, subject_id: str, request: Request) -> Response:
        return _json(backend.v3_upload(user(request), company_id, subject_id, await _body(request)))

    @router.post(V3_COMPUTE_PATH)
    async def v3_compute(company_id: str, batch_id: str, request: Request) -> Response:
        backend.compute(user(request), company_id, batch_id, await _body(request), v3=True)
        return _no_content()

    @router.get(V3_RESULTS_PATH)
    async def v3_results(company_id: str, batch_id: str, request: Request) -> Response:
        return _json(backend.v3_results(user(request), company_id, batch_id))

    # --- fake GCS ---------------------------------------------------------------------------------------------
    def gcs_error(request: Request, exc: GcsError) -> Response:
        backend.received.rejected(route_key(request), exc.status, f"{exc.code}: {exc.details or exc.message}")
        return Response(exc.xml(), status_code=exc.status, media_type="application/xml; charset=UTF-8")

    @router.put(GCS_OBJECT_PATH)
    async def gcs_put(bucket: str, key: str, request: Request) -> Response:
        try:
            low, high = backend.check_upload(
                bucket,
                key,
                request.query_params,
                request.headers.get("content-type"),
                request.headers.get("x-goog-content-length-range"),
            )
            data, total = await _read_capped(request, high)
            if total > high:
                raise GcsError(
                    400,
                    "EntityTooLarge",
                    "Your proposed upload exceeds the maximum allowed object size.",
                    f"Body is {total} bytes; X-Goog-Content-Length-Range allows {low}..{high}.",
                )
            if total < low:
                raise GcsError(
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                    f"Body is {total} bytes; X-Goog-Content-Length-Range allows {low}..{high}.",
                )
            headers = await backend.put_object(key, data)
        except GcsError as exc:
            return gcs_error(request, exc)
        return Response(b"", status_code=200, headers=headers)

    @router.get(GCS_OBJECT_PATH)
    async def gcs_get(bucket: str, key: str, request: Request) -> Response:
        try:
            data, content_type = backend.get_object(bucket, key, request.query_params)
        except GcsError as exc:
            return gcs_error(request, exc)
        return Response(data, media_type=content_type)

    return router
