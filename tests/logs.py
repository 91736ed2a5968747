"""Collecting what a flow run logs, for tests that assert on its messages."""

from __future__ import annotations

import logging


class Collect(logging.Handler):
    """Every log record emitted in this process while attached (root and the prefect loggers)."""

    LOGGERS = ("", "prefect")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> Collect:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)
