"""The parts every emulator app shares: backend base class, error handling and the /_emulator/ API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .clock import Clock
from .errors import ServiceError
from .faults import FaultConfig, FaultInjector, FaultMiddleware
from .received import ReceivedLog

# error_body(status, message, errors=None) -> the service's own error JSON.
ErrorBody = Callable[..., Any]


class EmulatorBackend:
    """State of one emulated service, separate from its HTTP routes (moto's models.py)."""

    service: str = ""

    def __init__(self, config: dict[str, Any], clock: Clock, base_url: str) -> None:
        self.config = config
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self.received = ReceivedLog()
        self.reset()

    def reset(self) -> None:
        """Back to the state the configuration describes.

        Called once by ``__init__`` and by ``POST /_emulator/reset``: subclasses call ``super().reset()``
        and then build their state from ``self.config``.
        """
        self.received.reset()

    def inspect(self) -> dict[str, Any]:
        """Service-specific figures added to ``GET /_emulator/received``."""
        return {}


def route_key(request_or_scope: Request | dict) -> str:
    scope = request_or_scope.scope if isinstance(request_or_scope, Request) else request_or_scope
    route = scope.get("route")
    return f"{scope['method']} {getattr(route, 'path', scope['path'])}"


class _CountingApp:
    """Counts each API request by route template (after routing, so path ids collapse)."""

    def __init__(self, app: FastAPI, received: ReceivedLog) -> None:
        self.app = app
        self.received = received

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            return await self.app(scope, receive, send)
        try:
            return await self.app(scope, receive, send)
        finally:
            self.received.request(route_key(scope))


def create_emulator_app(
    backend: EmulatorBackend,
    router: APIRouter,
    error_body: ErrorBody,
    validation_status: int = 400,
    title: str | None = None,
) -> tuple[FastAPI, Any]:
    """Build the FastAPI app for ``backend`` and wrap it in fault injection.

    Returns ``(fastapi_app, asgi_app)``: serve ``asgi_app``; ``fastapi_app`` is for in-process tests.
    Malformed requests get ``validation_status`` with the service's own error shape, never FastAPI's 422.
    """
    app = FastAPI(
        title=title or f"{backend.service} emulator",
        docs_url="/_emulator/docs",
        openapi_url="/_emulator/openapi.json",
        redoc_url=None,
    )
    app.state.backend = backend
    injector = FaultInjector(backend.clock)
    app.state.faults = injector

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        backend.received.rejected(route_key(request), exc.status, exc.reason)
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"attr": ".".join(str(p) for p in err.get("loc", ())[1:]) or None, "detail": err.get("msg", "")}
            for err in exc.errors()
        ]
        message = "; ".join(f"{e['attr']}: {e['detail']}" if e["attr"] else e["detail"] for e in errors)
        backend.received.rejected(route_key(request), validation_status, message)
        return JSONResponse(error_body(validation_status, message, errors), status_code=validation_status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        backend.received.rejected(route_key(request), exc.status_code, str(exc.detail))
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    app.include_router(router)
    app.include_router(_control_router(backend, injector))
    asgi = FaultMiddleware(
        _CountingApp(app, backend.received), injector, backend.received, backend.clock, error_body
    )
    return app, asgi


def _control_router(backend: EmulatorBackend, injector: FaultInjector) -> APIRouter:
    control = APIRouter(prefix="/_emulator", tags=["emulator control"])

    @control.get("/health")
    async def health() -> dict[str, Any]:
        return {"service": backend.service, "ok": True}

    @control.get("/received")
    async def received() -> dict[str, Any]:
        return {"service": backend.service, **backend.received.snapshot(), "state": backend.inspect()}

    @control.get("/faults")
    async def get_faults() -> dict[str, Any]:
        return injector.state()

    @control.post("/faults")
    async def set_faults(config: FaultConfig) -> dict[str, Any]:
        injector.configure(config)
        return injector.state()

    @control.delete("/faults")
    async def clear_faults() -> dict[str, Any]:
        injector.configure(FaultConfig())
        return injector.state()

    @control.post("/reset")
    async def reset() -> dict[str, Any]:
        backend.reset()
        injector.configure(FaultConfig())
        return {"service": backend.service, "reset": True}

    @control.get("/clock")
    async def clock() -> dict[str, Any]:
        return {"now": backend.clock.now(), "time_scale": backend.clock.time_scale}

    return control
