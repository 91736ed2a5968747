"""``python -m emulators``: start the local stand-ins of Miniviz, VizioSense, Micrio, Haut.ai and S3.

Each service runs in its own process on 127.0.0.1. When a service is ready, one JSON line is printed:
``{"service": ..., "url": ..., "credentials": {...}}``. Ctrl+C (or SIGTERM) stops them all.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import subprocess
import sys
import time

from .registry import DEFAULT_PORTS, HOST, SERVICES, load_config, ready_line, service_config

READY_TIMEOUT_S = 60


def parse_ports(text: str | None) -> dict[str, int]:
    """``miniviz=9701,micrio=0`` (0 = any free port), or a single ``0`` for every service."""
    ports = dict(DEFAULT_PORTS)
    if not text:
        return ports
    if text.strip() == "0":
        return dict.fromkeys(ports, 0)
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in ports or not value.strip().isdigit():
            raise SystemExit(f"--ports: expected NAME=PORT with NAME in {', '.join(SERVICES)}; got {item!r}")
        ports[name] = int(value)
    return ports


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(SERVICES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise SystemExit(f"--only: unknown service(s) {unknown}; choose from {', '.join(SERVICES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emulators", description=__doc__.splitlines()[0])
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(SERVICES)}")
    p.add_argument("--ports", help="NAME=PORT,... (0 = any free port; a single 0 = all free ports)")
    p.add_argument("--host", default=HOST, help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="real seconds per emulated second: 0.01 makes a documented 20 s wait take 0.2 s",
    )
    p.add_argument("--config", help="JSON file of accounts/settings per service (see README)")
    p.add_argument("--print-config", action="store_true", help="print the ready lines and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.time_scale <= 0:
        raise SystemExit("--time-scale must be > 0")
    names = parse_only(args.only)
    ports = parse_ports(args.ports)
    overrides = load_config(args.config)
    if args.print_config:
        for name in names:
            print(ready_line(name, f"http://{args.host}:{ports[name]}", service_config(name, overrides)))
        return 0

    children: dict[str, subprocess.Popen] = {}

    def stop_all(*_: object) -> None:
        for proc in children.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(0)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        for name in names:
            cmd = [
                sys.executable,
                "-m",
                "emulators.serve_one",
                "--service",
                name,
                "--port",
                str(ports[name]),
                "--host",
                args.host,
                "--time-scale",
                repr(args.time_scale),
            ]
            if args.config:
                cmd += ["--config", args.config]
            children[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        _relay_ready_lines(children)
        # Keep running until a child exits (a crash) or we are told to stop.
        while all(proc.poll() is None for proc in children.values()):
            time.sleep(0.2)
        dead = [n for n, p in children.items() if p.poll() is not None]
        print(f"emulator(s) stopped unexpectedly: {', '.join(dead)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


def _relay_ready_lines(children: dict[str, subprocess.Popen]) -> None:
    """Print each child's ready line as it arrives; fail if one dies or stays silent too long."""
    sel = selectors.DefaultSelector()
    for name, proc in children.items():
        sel.register(proc.stdout, selectors.EVENT_READ, name)
    pending = set(children)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"emulator(s) not ready after {READY_TIMEOUT_S}s: {', '.join(sorted(pending))}")
        for key, _ in sel.select(timeout=0.5):
            name = key.data
            line = key.fileobj.readline()
            if not line:
                sel.unregister(key.fileobj)
                raise SystemExit(f"emulator {name!r} exited before it was ready (see its error above)")
            print(line.rstrip("\n"), flush=True)
            pending.discard(name)
            sel.unregister(key.fileobj)
    # Later output of children (there should be none) goes nowhere; close our ends to avoid blocking them.
    for proc in children.values():
        proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
