"""``make bench``: one scenario per flow, against the emulators; ``python -m benchmarks``."""

import os

# prefect.toml (analytics off) is read only from the working directory; `python -m benchmarks` may run elsewhere,
# and every Prefect process it starts inherits this.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
