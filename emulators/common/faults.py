"""Fault injection for every emulator: latency, 5xx, 429 bursts, dropped connections, outages.

Configured at run time with ``POST /_emulator/faults``. Every duration is in *virtual* seconds, so faults
scale with the emulator's clock like everything else it does.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from .clock import Clock, retry_after_header
from .received import ReceivedLog

# Returned to uvicorn instead of None: it then closes the TCP connection without writing a byte,
# which a client sees as "Server disconnected without sending a response".
DROP_CONNECTION = "drop-connection"


class Outage(BaseModel):
    start_in: float = Field(0.0, ge=0, description="Virtual seconds from now until the outage starts.")
    start_after_requests: int | None = Field(
        None,
        ge=0,
        description="Instead of start_in: start once this many matching requests have arrived, so the outage "
        "lands mid-run however fast or slow the machine is.",
    )
    duration: float = Field(..., gt=0, description="Virtual seconds the outage lasts.")
    status: int = Field(503, ge=500, le=599, description="Status returned during the outage.")


class FaultConfig(BaseModel):
    """What goes wrong, for requests whose path matches ``path_pattern`` (all API paths by default)."""

    latency: float = Field(0.0, ge=0, description="Virtual seconds added before handling a request.")
    latency_rate: float = Field(1.0, ge=0, le=1, description="Fraction of requests that get the latency.")
    error_rate: float = Field(0.0, ge=0, le=1, description="Fraction of requests answered with error_status.")
    error_status: int = Field(503, ge=500, le=599)
    burst_429: int = Field(0, ge=0, description="The next N requests get 429 with Retry-After.")
    burst_429_every: int = Field(
        0, ge=0, description="Repeat the burst: after every N matching requests, the next burst_429 get 429."
    )
    retry_after: float = Field(1.0, ge=0, description="Virtual seconds announced in Retry-After.")
    drop_rate: float = Field(0.0, ge=0, le=1, description="Fraction of requests whose connection is dropped.")
    drop_after_processing: bool = Field(
        False, description="Drop after the request took effect (the response is lost), not before."
    )
    outage: Outage | None = None
    path_pattern: str | None = Field(None, description="Regex on the request path; default: every API path.")
    seed: int | None = Field(None, description="Seed for reproducible fault sequences.")


@dataclass
class Decision:
    latency: float = 0.0
    status: int | None = None  # answer with this status instead of handling the request
    retry_after: float | None = None
    kind: str = ""
    drop: str | None = None  # "before" | "after"


class FaultInjector:
    """Holds the active configuration and decides, per request, which fault applies."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.configure(FaultConfig())

    def configure(self, config: FaultConfig) -> FaultConfig:
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)
            self._burst_left = config.burst_429
            self._pattern = re.compile(config.path_pattern) if config.path_pattern else None
            self._matched = 0  # requests the faults applied to since this configuration
            self._outage_window: tuple[float, float] | None = None
            if config.outage and config.outage.start_after_requests is None:
                start = self._clock.now() + config.outage.start_in
                self._outage_window = (start, start + config.outage.duration)
        return config

    def state(self) -> dict[str, Any]:
        with self._lock:
            out = self.config.model_dump()
            out["burst_429_left"] = self._burst_left
            out["matched_requests"] = self._matched
            if self._outage_window:
                out["outage_window"] = list(self._outage_window)
            return out

    def decide(self, path: str) -> Decision:
        with self._lock:
            cfg = self.config
            if self._pattern is not None and not self._pattern.search(path):
                return Decision()
            d = Decision()
            self._matched += 1
            if cfg.burst_429_every and self._matched % cfg.burst_429_every == 0:
                self._burst_left = cfg.burst_429
            outage = cfg.outage
            if outage and self._outage_window is None and self._matched > (outage.start_after_requests or 0):
                start = self._clock.now()
                self._outage_window = (start, start + outage.duration)
            if cfg.latency and self._rng.random() < cfg.latency_rate:
                d.latency = cfg.latency
            if self._outage_window:
                start, end = self._outage_window
                now = self._clock.now()
                if start <= now < end:
                    d.status, d.retry_after, d.kind = cfg.outage.status, end - now, "outage"
                    return d
            if self._burst_left > 0:
                self._burst_left -= 1
                d.status, d.retry_after, d.kind = 429, cfg.retry_after, "429"
                return d
            if cfg.error_rate and self._rng.random() < cfg.error_rate:
                d.status, d.kind = cfg.error_status, f"{cfg.error_status}"
                return d
            if cfg.drop_rate and self._rng.random() < cfg.drop_rate:
                d.drop, d.kind = ("after" if cfg.drop_after_processing else "before"), "drop"
            return d


ErrorBody = Callable[[int, str], Any]


class FaultMiddleware:
    """Outermost ASGI layer: counts requests and applies the injector's decision."""

    def __init__(
        self,
        app: Any,
        injector: FaultInjector,
        received: ReceivedLog,
        clock: Clock,
        error_body: ErrorBody,
    ) -> None:
        self.app = app
        self.injector = injector
        self.received = received
        self.clock = clock
        self.error_body = error_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            return await self.app(scope, receive, send)
        decision = self.injector.decide(scope["path"])
        if decision.latency:
            self.received.fault("latency")
            await self.clock.sleep(decision.latency)
        if decision.status is not None:
            self.received.fault(decision.kind)
            await self._send_error(send, decision)
            return None
        if decision.drop == "before":
            self.received.fault("drop_before")
            return DROP_CONNECTION
        if decision.drop == "after":
            self.received.fault("drop_after")

            async def swallow(message: dict) -> None:
                return None

            await self.app(scope, receive, swallow)
            return DROP_CONNECTION
        return await self.app(scope, receive, send)

    async def _send_error(self, send: Callable, decision: Decision) -> None:
        message = "Too Many Requests" if decision.status == 429 else "Service Unavailable (injected fault)"
        body = json.dumps(self.error_body(decision.status, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if decision.retry_after is not None:
            headers.append((b"retry-after", retry_after_header(self.clock, decision.retry_after).encode()))
        await send({"type": "http.response.start", "status": decision.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
