"""S3 PUTs from async code without boto3's per-call CPU: signed by botocore, sent by aiohttp.

Why: a boto3 ``put_object`` costs the caller ~3 ms of CPU (its event hooks, header classes, user agent, and
urllib3/http.client), most of it Python, and from async code it also needs a thread. Here the request is
signed with botocore's own ``S3SigV4Auth`` (the signer boto3 uses for ``put_object``, with the same CRC32
checksum header and the same payload signing rule: the body is hashed only over plain http), and sent with
aiohttp on the event loop: about a third of the CPU.

What stays boto3's: the credentials (the S3Bucket block's session, refreshed by botocore when they expire),
the region and the endpoint (the bucket's base URL is taken once from the client's own endpoint resolution,
so virtual-hosted or path style, custom endpoints and regions are as boto3 would send them). Anything the
fast path does not get a 2xx for goes to boto3's ``put_object`` (in a thread): its retries, redirects and
error messages are the ones reported. A refusal that boto3 then gets through (the fast path is not accepted
by this endpoint) turns the fast path off for the rest of the run, with the reason in ``fast_path_problem``.
"""

from __future__ import annotations

import base64
import functools
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from yarl import URL

from tasks.storage import BucketRef, check_metadata, object_key, put_bytes

_PROBE_KEY = "probe-key"  # only used to learn the bucket's base URL: nothing is sent
_CHECKSUM_HEADER = "x-amz-checksum-crc32"
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
# botocore's defaults: 60 s to connect, 60 s between reads; the total bounds a stalled body write
_TIMEOUT = aiohttp.ClientTimeout(total=180, connect=60, sock_read=60)


class S3PutRefused(RuntimeError):
    """The fast path's PUT did not get a 2xx answer (the caller then tries boto3)."""

    def __init__(self, status: int, body: bytes) -> None:
        # S3's error code only: its messages can echo the request (canonical request, string to sign)
        code = _ERROR_CODE.search(body)
        super().__init__(f"HTTP {status} {code.group(1).decode('ascii', 'replace') if code else ''}".strip())
        self.status = status


class AsyncS3Writer:
    """PUTs into one bucket (a ``BucketRef``) from one event loop, ``connections`` at a time.

    ``run_in_thread`` runs boto3's fallback calls (e.g. the run's S3 thread pool). Without credentials on
    the ``BucketRef`` (a plain boto3 client), every put goes to boto3. Nothing is read from ``ref`` before
    the first put. Close with ``aclose()``.
    """

    def __init__(
        self,
        ref: BucketRef,
        *,
        connections: int,
        run_in_thread: Callable[..., Any],
    ) -> None:
        self.ref = ref
        self.fast_path_problem: str | None = None  # why the fast path was turned off, for the run's log
        self._run_in_thread = run_in_thread
        self._connections = max(1, connections)
        self._session: aiohttp.ClientSession | None = None
        self._base_url: str | None = None
        self._region = "us-east-1"

    async def put(
        self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None, content_type: str
    ) -> str:
        """Store ``data`` at ``key`` (checked as ``put_bytes`` does) and return the full key written."""
        written = object_key(self.ref, key)
        headers = {"Content-Type": content_type}
        if metadata:
            headers.update({f"x-amz-meta-{name}": value for name, value in check_metadata(metadata).items()})
        if self.ref.credentials is not None and self.fast_path_problem is None:
            try:
                await self._send(written, data, headers)
                return written
            except Exception as exc:  # (not a cancellation: that is a BaseException)
                refused = (
                    isinstance(exc, S3PutRefused) and 400 <= exc.status < 500 and exc.status not in (408, 429)
                )
                boto3_key = await self._boto3_put(key, data, metadata, content_type)
                if refused and self.fast_path_problem is None:  # boto3 got through, the fast path did not
                    self.fast_path_problem = (
                        f"S3 uploads went back to boto3 for the rest of the run: the signed aiohttp PUT was "
                        f"refused ({exc}) where boto3's was accepted"
                    )
                return boto3_key
        return await self._boto3_put(key, data, metadata, content_type)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _boto3_put(
        self, key: str, data: bytes, metadata: Mapping[str, str] | None, content_type: str
    ) -> str:
        call = functools.partial(put_bytes, self.ref, key, data, metadata=metadata, content_type=content_type)
        return await self._run_in_thread(call)

    async def _send(self, written: str, data: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=self._connections)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=_TIMEOUT, auto_decompress=False
            )
        request = self._signed(written, data, headers)
        # encoded=True: the path goes out exactly as signed (quoted by us, never re-quoted by yarl)
        async with self._session.put(
            URL(request.url, encoded=True), data=data, headers=dict(request.headers.items())
        ) as response:
            body = await response.read()
            if not 200 <= response.status < 300:
                raise S3PutRefused(response.status, body)

    def _signed(self, written: str, data: bytes, headers: dict[str, str]) -> AWSRequest:
        """The PUT as botocore's ``put_object`` signs it: SigV4 headers, a CRC32 checksum header (which lets
        S3SigV4Auth leave the body unhashed over https), the body hashed into the signature over http."""
        if self._base_url is None:  # the client's own endpoint resolution, once (no request is made)
            probe = self.ref.client.generate_presigned_url(
                "put_object", Params={"Bucket": self.ref.bucket, "Key": _PROBE_KEY}, ExpiresIn=60
            )
            self._base_url = probe.split("?", 1)[0][: -len(_PROBE_KEY)]
            self._region = self.ref.client.meta.region_name or self._region
        checksum = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")
        request = AWSRequest(
            "PUT",
            self._base_url + quote(written, safe="/~"),
            headers={**headers, _CHECKSUM_HEADER: checksum},
            data=data,
        )
        request.context["checksum"] = {"request_algorithm": {"in": "header", "name": _CHECKSUM_HEADER}}
        request.context["has_streaming_input"] = True
        assert self.ref.credentials is not None
        credentials = self.ref.credentials.get_frozen_credentials()  # refreshed by botocore when due
        S3SigV4Auth(credentials, "s3", self._region).add_auth(request)
        return request
