"""Fixtures of the reliability suite shared by several modules."""

from tests.reliability.fan_out_stack import fan_out_stack  # noqa: F401 - a session fixture, used by name
