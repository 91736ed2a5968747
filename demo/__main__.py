"""``make demo``: the whole project on the embedded default, against the local emulators.

1. starts every emulator; 2. drives each through its vendor's documented example; 3. saves blocks that
point at the emulators and runs the flows on generated inputs, printing where each report and artifact is.
Prefect runs in ephemeral mode with its state in ``.demo/prefect`` (your own profile is not touched).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

DEMO_DIR = Path(".demo").resolve()
(DEMO_DIR / "prefect").mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PREFECT_HOME", str(DEMO_DIR / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "WARNING")

from emulators.launcher import running_emulators  # noqa: E402

from . import demo_flows, vendor_examples  # noqa: E402

TIME_SCALE = 0.05  # a documented 20 s camera wait takes 1 s


def main() -> int:
    started = time.perf_counter()
    print(
        f"Starting the emulators (time scale {TIME_SCALE}: one emulated second lasts {TIME_SCALE} s) ...",
        flush=True,
    )
    failures = 0
    with running_emulators(time_scale=TIME_SCALE) as emu:
        for name, svc in emu.items():
            print(f"  {name:11} {svc.url}")
        print("\n== The vendors' own examples ==\n")
        for name, example in vendor_examples.EXAMPLES.items():
            failures += _section(name, lambda example=example: example(emu))
        print("== The flows (Prefect ephemeral mode, state in .demo/prefect) ==\n")
        # The emulators start empty each time, so journals of an earlier demo would describe images they
        # never saw: start the flows' state afresh too.
        shutil.rmtree(DEMO_DIR / "state", ignore_errors=True)
        for name, run in demo_flows.FLOWS.items():
            failures += _section(name, lambda run=run: asyncio.run(run(emu, DEMO_DIR, TIME_SCALE)))
    print(
        f"Demo finished in {time.perf_counter() - started:.1f} s"
        + (f" with {failures} failure(s)." if failures else ": everything worked.")
    )
    print(
        f"Reports and journals are under {DEMO_DIR}; the artifacts are in Prefect (run `make up` for the UI)."
    )
    return 1 if failures else 0


def _section(title: str, produce) -> int:
    print(f"{title}:", flush=True)
    try:
        for line in produce():
            print(f"  {line}", flush=True)
    except Exception as exc:  # a demo reports every part, it does not stop at the first problem
        print(f"  FAILED: {type(exc).__name__}: {exc}")
        return 1
    finally:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
