"""Where the flows keep their state, and how whole files of it are written: one place for every flow.

``default_state`` names a flow's state file after what identifies a job (its input and target), so running
the same job again finds the same journal. ``Location`` is a local path or an ``s3://bucket/key`` object that is
read whole and replaced atomically: a reader sees the old content or the new, never half of it. Journals
(append-only) are in ``tasks.journal``; pacing state, reports and dead letters are ``Location`` writes. All of
it is blocking I/O (fsync, S3 requests): async callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import ClientError

from clients.errors import InputError

STATE_ROOT = ".pipeline-state"


def default_state(flow: str, identity: Any, suffix: str = ".jsonl", prefix: str = "") -> str:
    """``.pipeline-state/<flow>/<prefix><digest><suffix>``, the digest taken over ``identity`` (JSON)."""
    text = identity if isinstance(identity, str) else json.dumps(identity, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{STATE_ROOT}/{flow}/{prefix}{digest}{suffix}"


class Location:
    """A file written whole: a local path (temp file in the same folder, fsynced, renamed over it) or an
    ``s3://bucket/key`` object (one PUT: it appears whole or not at all). ``field`` names the parameter the
    location came from, for the error when it is unusable."""

    def __init__(self, uri: str, s3_client: Any = None, *, field: str = "location") -> None:
        self.uri = uri
        self._s3 = s3_client
        if self.is_s3:
            bucket, _, key = uri[5:].partition("/")
            if not bucket or not key or key.endswith("/"):
                raise InputError(field, f"{uri!r} is not s3://bucket/key")
            if s3_client is None:
                raise InputError(field, f"{uri}: an s3:// location needs an S3 bucket block")
            self._bucket, self._key = bucket, key

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def read_bytes(self) -> bytes | None:
        """The content, or None when there is nothing there yet."""
        if self.is_s3:
            try:
                return self._s3.get_object(Bucket=self._bucket, Key=self._key)["Body"].read()
            except ClientError as err:
                if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                    return None
                raise
        try:
            return Path(self.uri).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, data: bytes, content_type: str = "application/octet-stream") -> None:
        with self.writer(content_type) as fh:
            fh.write(data)

    @contextlib.contextmanager
    def writer(self, content_type: str = "application/octet-stream") -> Iterator[IO[bytes]]:
        """A binary file to write the new content to; it replaces the old one only if the block ends
        without an error (an S3 object is spooled through a local temp file and uploaded at the end)."""
        if self.is_s3:
            with tempfile.TemporaryFile() as tmp:
                yield tmp
                tmp.seek(0)
                self._s3.upload_fileobj(tmp, self._bucket, self._key, ExtraArgs={"ContentType": content_type})
            return
        path = Path(self.uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; state and reports are meant to be shared
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
