"""``make demo``: start every emulator and drive each through its vendor's documented example.

Prints one readable block per service. Later issues make this run the four flows.
"""

from __future__ import annotations

import sys
import time

from emulators.launcher import running_emulators

from . import vendor_examples

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
        print()
        for name, example in vendor_examples.EXAMPLES.items():
            print(f"{name}:", flush=True)
            try:
                for line in example(emu):
                    print(f"  {line}", flush=True)
            except Exception as exc:  # a demo should report every service, not stop at the first problem
                failures += 1
                print(f"  FAILED: {type(exc).__name__}: {exc}")
            print()
    print(
        f"Demo finished in {time.perf_counter() - started:.1f} s"
        + (
            f" with {failures} failure(s)"
            if failures
            else ": every service answered as its vendor documents."
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
