"""Local emulators of Miniviz, VizioSense, Micrio Server API v2, Haut.ai and S3 (moto).

Never imported by ``clients/``, ``blocks/``, ``tasks/`` or ``flows/``: tests, the demo and benchmarks start
them with ``python -m emulators`` (see ``emulators.launcher``).
"""
