"""Shared emulator machinery: clock, fault injection, received log, app factory."""

from .app import EmulatorBackend, create_emulator_app, route_key
from .clock import Clock, ManualClock, ScaledClock, retry_after_header
from .errors import ServiceError
from .faults import FaultConfig
from .received import ReceivedLog

__all__ = [
    "Clock",
    "EmulatorBackend",
    "FaultConfig",
    "ManualClock",
    "ReceivedLog",
    "ScaledClock",
    "ServiceError",
    "create_emulator_app",
    "retry_after_header",
    "route_key",
]
