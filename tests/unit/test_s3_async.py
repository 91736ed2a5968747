"""tasks.s3_async: PUTs signed by botocore and sent by aiohttp, against a local server answering as S3 would,
and the fall back to boto3 (its retries and error messages) when the fast path is not accepted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import zlib
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from botocore.credentials import Credentials

from clients.errors import InputError
from tasks.s3_async import AsyncS3Writer
from tasks.storage import BucketRef


class FakeBoto3:
    """The boto3 client the writer falls back to: records put_object calls (or raises ``error``)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.meta = SimpleNamespace(region_name="eu-west-3")
        self.puts: list[dict[str, Any]] = []
        self.error: Exception | None = None

    def generate_presigned_url(self, operation: str, Params: dict[str, str], ExpiresIn: int) -> str:  # noqa: N803
        return f"{self.endpoint}/{Params['Bucket']}/{Params['Key']}?X-Amz-Signature=abc"

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        self.puts.append(kwargs)
        return {}


CREDENTIALS = Credentials("AKIDEXAMPLE", "secret")


@contextlib.asynccontextmanager
async def s3_server() -> AsyncIterator[Any]:
    """A local server taking PUTs: answers ``status`` (with an S3 error body unless 200), keeps the requests.
    Started by each test, on its own event loop."""
    state = SimpleNamespace(status=200, requests=[])

    async def put(request: web.Request) -> web.Response:
        state.requests.append((request.raw_path, dict(request.headers), await request.read()))
        if state.status == 200:
            return web.Response(status=200)
        body = "<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>"
        return web.Response(status=state.status, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_put("/{tail:.*}", put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001
    try:
        yield state
    finally:
        await runner.cleanup()


def writer_for(
    s3_like: Any, *, credentials: Any = CREDENTIALS
) -> tuple[AsyncS3Writer, FakeBoto3, list[Callable[[], Any]]]:
    client = FakeBoto3(s3_like.url)
    ref = BucketRef(client, "demo-bucket", "snapshots", credentials)
    fallbacks: list[Callable[[], Any]] = []

    async def in_thread(call: Callable[[], Any]) -> Any:
        fallbacks.append(call)
        return await asyncio.to_thread(call)

    return AsyncS3Writer(ref, connections=2, run_in_thread=in_thread), client, fallbacks


async def test_put_is_signed_like_boto3s():
    async with s3_server() as s3_like:
        writer, client, fallbacks = writer_for(s3_like)
        try:
            key = await writer.put("cam 1/a+b=c,é~raw.jpg", b"jpeg-bytes", metadata={"device-name": "Lobby"},
                                   content_type="image/jpeg")  # fmt: skip
        finally:
            await writer.aclose()
        assert key == "snapshots/cam 1/a+b=c,é~raw.jpg"
        [(path, headers, body)] = s3_like.requests
        # the path as signed (botocore's S3 canonical path is the URL's, as sent)
        assert (path, body) == ("/demo-bucket/snapshots/cam%201/a%2Bb%3Dc%2C%C3%A9~raw.jpg", b"jpeg-bytes")
        assert headers["Content-Type"] == "image/jpeg" and headers["x-amz-meta-device-name"] == "Lobby"
        assert (
            headers["x-amz-checksum-crc32"]
            == base64.b64encode(zlib.crc32(b"jpeg-bytes").to_bytes(4, "big")).decode()
        )
        auth = headers["Authorization"]
        assert (
            auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            and "/eu-west-3/s3/aws4_request" in auth
        )
        assert "x-amz-meta-device-name" in auth  # every x-amz-* header is signed
        assert headers["X-Amz-Content-SHA256"] != "UNSIGNED-PAYLOAD"  # plain http: the body is signed too
        assert fallbacks == [] and client.puts == []


async def test_refused_put_goes_to_boto3_and_turns_the_fast_path_off():
    async with s3_server() as s3_like:
        s3_like.status = 403
        writer, client, fallbacks = writer_for(s3_like)
        try:
            first = await writer.put("a.jpg", b"1", content_type="image/jpeg")
            second = await writer.put("b.jpg", b"2", content_type="image/jpeg")
        finally:
            await writer.aclose()
        assert (first, second) == ("snapshots/a.jpg", "snapshots/b.jpg")
        assert [p["Key"] for p in client.puts] == ["snapshots/a.jpg", "snapshots/b.jpg"]
        assert len(s3_like.requests) == 1  # the second went straight to boto3
        assert "HTTP 403" in writer.fast_path_problem and "SignatureDoesNotMatch" in writer.fast_path_problem


async def test_server_error_goes_to_boto3_once_and_keeps_the_fast_path():
    async with s3_server() as s3_like:
        s3_like.status = 503
        writer, client, fallbacks = writer_for(s3_like)
        try:
            await writer.put("a.jpg", b"1", content_type="image/jpeg")
            s3_like.status = 200
            await writer.put("b.jpg", b"2", content_type="image/jpeg")
        finally:
            await writer.aclose()
        assert [p["Key"] for p in client.puts] == ["snapshots/a.jpg"]
        assert len(s3_like.requests) == 2 and writer.fast_path_problem is None


async def test_boto3_error_is_the_one_raised():
    async with s3_server() as s3_like:
        s3_like.status = 403
        writer, client, _ = writer_for(s3_like)
        client.error = RuntimeError("An error occurred (AccessDenied) when calling the PutObject operation")
        try:
            with pytest.raises(RuntimeError, match="AccessDenied"):
                await writer.put("a.jpg", b"1", content_type="image/jpeg")
        finally:
            await writer.aclose()
        assert writer.fast_path_problem is None  # both refused: not the fast path's fault


async def test_without_credentials_every_put_is_boto3s():
    async with s3_server() as s3_like:
        writer, client, fallbacks = writer_for(s3_like, credentials=None)
        try:
            assert await writer.put("a.jpg", b"1", content_type="image/jpeg") == "snapshots/a.jpg"
            with pytest.raises(InputError):  # keys and metadata checked as put_bytes does, before sending
                await writer.put("a.jpg", b"1", metadata={"name": "Café"}, content_type="image/jpeg")
        finally:
            await writer.aclose()
        assert s3_like.requests == [] and len(client.puts) == 1 and len(fallbacks) == 1
