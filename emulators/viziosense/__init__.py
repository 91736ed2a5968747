"""VizioSense emulator: login/refresh tokens and API keys, role-filtered cameras, 20 s snapshots, webhooks."""

from __future__ import annotations

from typing import Any

from ..common import Clock, create_emulator_app
from .backend import VizioSenseBackend, device_uuid
from .routes import build_router

DEFAULT_CONFIG: dict[str, Any] = {
    # "admin" in role sees every device; other users see the devices of their groups plus those listed
    # in "devices" (uuids or client identifiers).
    "users": [
        {
            "email": "admin@viziosense.example",
            "password": "vzs-admin-demo",
            "name": "Demo Admin",
            "role": ["admin"],
        },
        {
            "email": "operator@viziosense.example",
            "password": "vzs-operator-demo",
            "name": "Parking Operator",
            "role": ["user"],
            "groups": ["parking"],
            "devices": ["LOBBY-0001"],
        },
    ],
    # Long-lived API keys (the vendor's M2M credential) -> the user they act as.
    "api_keys": {
        "vzs-demo-admin-api-key": "admin@viziosense.example",
        "vzs-demo-operator-api-key": "operator@viziosense.example",
    },
    # Generated demo fleet: deterministic names, places and uuids (same "seed" -> same fleet on every start);
    # device i (1-based) is offline when i is a multiple of offline_every (0 = all online).
    "fleet": {"count": 12, "groups": ["parking", "yard", "entrance"], "offline_every": 5, "seed": "demo"},
    # Explicit devices (listed before the fleet); "uuid" is optional.
    "devices": [
        {
            "name": "HQ Lobby Camera",
            "group": "lobby",
            "client_identifier": "LOBBY-0001",
            "geo_city": "Montreal",
            "geo_country": "Canada",
            "is_online": 1,
        },
    ],
    "access_token_ttl": 3600,  # virtual seconds; returned as expires_in
    "refresh_token_ttl": 2_592_000,
    "image_ready_after": 20,  # DOC: wait at least 20 s before the image is available
    "image_link_ttl": 1800,  # DOC: links valid 30 min (counted from the request)
    "per_page_default": 15,
    "per_page_max": 100,
    # Snapshot JPEGs: size, quality (85 -> ~270 KB at 1280x720), scene variants, render threads.
    "image": {"width": 1280, "height": 720, "quality": 85, "variants": 4, "render_workers": 2},
}


def error_body(status: int, message: str, errors: list | None = None) -> dict[str, Any]:
    """Documented ``{"httpError", "message"}`` shape; validation problems as ``{"error": [...]}``."""
    if status == 422:
        if errors:
            return {
                "error": [f"{e['attr']}: {e['detail']}" if e.get("attr") else e["detail"] for e in errors]
            }
        return {"error": [message]}
    documented = {405: "Unsupported method", 500: "Server error"}
    return {"httpError": status, "message": documented.get(status, message)}


def credentials(config: dict[str, Any]) -> dict[str, Any]:
    """Admin login and API key, every user and key, and one online device uuid to try."""
    users = [
        {"email": u["email"], "password": u["password"], "role": u.get("role", ["user"])}
        for u in config["users"]
    ]
    keys = config.get("api_keys", {})
    admin = next((u for u in users if "admin" in u["role"]), users[0])
    admin_key = next((k for k, email in keys.items() if email.lower() == admin["email"].lower()), None)
    out: dict[str, Any] = {
        "email": admin["email"],
        "password": admin["password"],
        "api_key": admin_key,
        "users": users,
        "api_keys": [{"key": k, "user": email} for k, email in keys.items()],
    }
    fleet = config.get("fleet", {})
    if int(fleet.get("count", 0)) > 0:
        out["sample_device_uuid"] = device_uuid(str(fleet.get("seed", "demo")), "0")
    return out


def build(config: dict[str, Any], clock: Clock, base_url: str):
    backend = VizioSenseBackend(config, clock, base_url)
    _app, asgi = create_emulator_app(
        backend, build_router(backend), error_body, validation_status=422, title="VizioSense emulator"
    )
    return backend, asgi
