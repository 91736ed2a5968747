"""S3 through moto's server, with the demo buckets created at start and a small /_emulator/ API.

moto keeps its state in memory; ``POST /_emulator/reset`` empties it and recreates the buckets.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from typing import Any

DEFAULT_CONFIG: dict[str, Any] = {
    "access_key_id": "demo-access-key",
    "secret_access_key": "demo-secret-key",
    "region": "us-east-1",
    "buckets": ["demo-bucket"],
}


def credentials(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "aws_access_key_id": config["access_key_id"],
        "aws_secret_access_key": config["secret_access_key"],
        "region_name": config["region"],
        "bucket": config["buckets"][0],
        "buckets": list(config["buckets"]),
    }


def _create_buckets(url: str, config: dict[str, Any]) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=config["access_key_id"],
        aws_secret_access_key=config["secret_access_key"],
        region_name=config["region"],
    )
    for bucket in config["buckets"]:
        s3.create_bucket(Bucket=bucket)


class _ControlWrapper:
    """WSGI layer in front of moto: counts requests and serves /_emulator/{health,received,reset}."""

    def __init__(self, app: Any, url: str, config: dict[str, Any]) -> None:
        self.app, self.url, self.config = app, url, config
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/_emulator/"):
            with self.lock:
                self.requests[environ.get("REQUEST_METHOD", "?")] += 1
            return self.app(environ, start_response)
        if path == "/_emulator/reset" and environ["REQUEST_METHOD"] == "POST":
            from moto.moto_api._internal.models import moto_api_backend

            moto_api_backend.reset()
            _create_buckets(self.url, self.config)
            with self.lock:
                self.requests.clear()
            body: dict[str, Any] = {"service": "s3", "reset": True}
        elif path == "/_emulator/received":
            with self.lock:
                body = {"service": "s3", "requests": dict(self.requests)}
        elif path == "/_emulator/health":
            body = {"service": "s3", "ok": True}
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [json.dumps({"error": f"unknown emulator path {path}"}).encode()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]


def serve_s3(sock: socket.socket, host: str, config: dict[str, Any]) -> None:
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from .registry import ready_line
    from .s3_listing import install as install_paged_listing

    install_paged_listing()  # list pages in time independent of the bucket's size, as S3's
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines on stderr
    port = sock.getsockname()[1]
    url = f"http://{host}:{port}"
    app = _ControlWrapper(DomainDispatcherApplication(create_backend_app), url, config)
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler, fd=sock.fileno())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _create_buckets(url, config)
    print(ready_line("s3", url, config), flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
