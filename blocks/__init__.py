"""Prefect blocks: credentials and settings of each service. ``prefect block register -m blocks``."""

from .miniviz import MinivizCredentials

__all__ = ["MinivizCredentials"]
