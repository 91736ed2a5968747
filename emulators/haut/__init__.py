"""Haut.ai SaaS API emulator: login and private tokens, datasets and applications, subjects, the v1 and v3
image flows through a fake GCS signed-URL endpoint, and deterministic skin metrics on a scaled clock."""

from __future__ import annotations

from typing import Any

from ..common import Clock, create_emulator_app
from .backend import HautBackend
from .drf import error_body
from .routes import build_router

DEMO_COMPANY_ID = "6f1e9a52-3c1d-4b7e-9a0f-2d5c8e4b7a10"

DEFAULT_CONFIG: dict[str, Any] = {
    "companies": [{"id": DEMO_COMPANY_ID, "name": "Demo Company"}],
    # Login uses the e-mail as "username". The second user has MFA on, so API login answers 400 (DOC).
    "users": [
        {
            "id": 1,
            "email": "demo@haut-emulator.local",
            "password": "demo-password",
            "full_name": "Demo User",
            "company_ids": [DEMO_COMPANY_ID],
        },
        {
            "id": 2,
            "email": "mfa@haut-emulator.local",
            "password": "demo-password",
            "full_name": "MFA User",
            "company_ids": [DEMO_COMPANY_ID],
            "mfa_enabled": True,
        },
    ],
    # A long-lived private token (what backends should use, DOC); expiration honoured on the virtual clock.
    "private_tokens": [
        {
            "id": 1,
            "user_id": 1,
            "name": "demo backend token",
            "token": "haut-demo-private-token",
            "expiration_time": "2099-12-31T23:59:59Z",
        },
    ],
    "access_token_seconds": 3600,  # login token lifetime (DOC: 60 min)
    "refresh_token_seconds": 30 * 86_400,  # ASSUMED
    # Login is backed by Firebase, which blocks callers that log in per request (DOC warning): attempts per
    # username per 60 virtual seconds before 429 + Retry-After. 0 = no limit.
    "login_rate_limit_per_minute": 30,
    "queue_seconds": 2,  # virtual seconds an image waits in "queued" after compute
    "processing_seconds": 20,  # then in "processing" before done/failed (INF: tens of seconds)
    "upload_url_seconds": 3600,  # signed upload URL lifetime (undocumented; ASSUMED)
    "result_url_seconds": 3600,  # signed result/original URLs (DOC: 1 h)
    "max_stored_bytes": 256 * 1024 * 1024,  # uploaded bytes kept in memory; oldest evicted beyond this
    "page_size": 20,  # default page_size of list endpoints (ASSUMED)
    "max_page_size": 100,
    "signing_secret": "haut-emulator-gcs-signing-secret",
}


def credentials(config: dict[str, Any]) -> dict[str, Any]:
    """What a client needs: the private token, the company, and the demo login."""
    token = config["private_tokens"][0] if config["private_tokens"] else None
    user = next((u for u in config["users"] if token and u["id"] == token["user_id"]), config["users"][0])
    return {
        "private_token": token["token"] if token else None,
        "company_id": user["company_ids"][0],
        "username": user["email"],
        "password": user["password"],
    }


def build(config: dict[str, Any], clock: Clock, base_url: str) -> tuple[HautBackend, Any]:
    backend = HautBackend(config, clock, base_url)
    _app, asgi = create_emulator_app(
        backend, build_router(backend), error_body, validation_status=400, title="Haut.ai SaaS API emulator"
    )
    return backend, asgi
