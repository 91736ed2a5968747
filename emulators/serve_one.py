"""Run one emulated service in this process: ``python -m emulators.serve_one --service miniviz --port 8701``.

``python -m emulators`` starts one of these per service, so the services use both cores and a busy one
never slows the others. Prints the service's ready line on stdout once the socket accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

from .common.clock import ScaledClock
from .common.faults import DROP_CONNECTION
from .registry import HOST, load_config, ready_line, service_config, service_module


class _QuietDrops(logging.Filter):
    """uvicorn logs an error when an app returns a value; for injected drops that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return DROP_CONNECTION not in record.getMessage()


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise SystemExit(
            f"cannot listen on {host}:{port} ({exc.strerror}); is another emulator running? "
            "Stop it, or choose ports with --ports name=PORT (0 picks a free one)."
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _serve_asgi(name: str, sock: socket.socket, host: str, time_scale: float, config: dict) -> None:
    import uvicorn

    port = sock.getsockname()[1]
    url = f"http://{host}:{port}"
    _backend, asgi = service_module(name).build(config, ScaledClock(time_scale), url)
    server = uvicorn.Server(
        uvicorn.Config(
            asgi,
            http="httptools",
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            backlog=2048,
            timeout_keep_alive=30,
        )
    )
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.01)
    print(ready_line(name, url, config), flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.serve_one")
    parser.add_argument("--service", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    config = service_config(args.service, load_config(args.config))
    sock = bind(args.host, args.port)
    if args.service == "s3":
        from .s3 import serve_s3

        serve_s3(sock, args.host, config)
        return
    import uvloop

    try:
        uvloop.run(_serve_asgi(args.service, sock, args.host, args.time_scale, config))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
