"""``make bench`` / ``python -m benchmarks [SCENARIO ...]``: run scenarios, write results.json, print a table."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from . import __path__ as package_path
from .harness import SCENARIOS, write_results

# Every module of the package that is not plumbing registers its scenarios on import.
PLUMBING = {"__main__", "harness", "load", "flow_runner"}
for module in pkgutil.iter_modules(package_path):
    if module.name not in PLUMBING:
        importlib.import_module(f"{__package__}.{module.name}")

HEADLINE_KEYS = (
    "capacity_rps",
    "server_one_core_capacity_rps",
    "p50_ms",
    "p99_ms",
    "ratio",
    "speedup",
    "peak_rss_mb",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("scenarios", nargs="*", help=f"default: all ({', '.join(SCENARIOS)})")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:28} {s.description}")
        return 0
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; see --list")
    results, failed = {}, []
    for name in names:
        print(f"running {name} ...", flush=True)
        try:
            results[name] = SCENARIOS[name].run()
        except Exception:
            traceback.print_exc()
            failed.append(name)
    path = write_results(results)
    print(f"\nresults written to {path}\n")
    print(f"{'scenario':28} figures")
    for name, figures in results.items():
        shown = ", ".join(f"{k}={figures[k]}" for k in HEADLINE_KEYS if k in figures)
        print(f"{name:28} {shown}")
        for label, shape in figures.get("shapes", {}).items():
            print(
                f"{'':28}   {label:40} {shape['rps']:>8} req/s  p50 {shape['p50_ms']} ms  p99 {shape['p99_ms']} ms"
                f"  server {shape.get('server_cpu_ms_per_request', '-')} ms CPU/req"
            )
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
