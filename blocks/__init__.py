"""Prefect blocks: credentials and settings of each service. ``prefect block register -m blocks``."""

from .haut import HautCredentials
from .micrio import MicrioCredentials
from .miniviz import MinivizCredentials
from .viziosense import VizioSenseCredentials

__all__ = ["HautCredentials", "MicrioCredentials", "MinivizCredentials", "VizioSenseCredentials"]
