"""Where the flows keep their state, and how whole files of it are written: one place for every flow.

``StateRoot`` is where journals, pacing state, dead letters and default reports live: ``.pipeline-state/`` and
``reports/`` under the worker's directory by default (nothing to set up), or the root named by the Prefect
variable ``pipelines_state`` (e.g. ``s3://bucket/pipeline-state``, so a run resumed on any worker finds its
journal). Once that variable is set, parameters naming local paths outside the allowed local root are
refused: whoever can start a deployment cannot make a worker read or write arbitrary files. Its
``location`` names a flow's state file after what identifies a job (its input and target), so running the
same job again finds the same journal. ``Location`` is a local path or an ``s3://bucket/key`` object that is
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clients.errors import InputError

STATE_ROOT = ".pipeline-state"
REPORTS_DIR = "reports"
STATE_VARIABLE = "pipelines_state"


class StateSettings(BaseModel):
    """The value of the Prefect variable ``pipelines_state`` (a JSON object)."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(
        description="Local folder or s3://bucket/prefix for journals, pacing state and reports."
    )
    s3_bucket_block: str = Field(
        "", description="S3 Bucket block for runs that name none (theirs must reach the root)."
    )
    local_root: str = Field("", description="The one local folder parameters may name (sources, outputs).")


def state_root_field() -> Any:
    """The ``state_root`` parameter every flow's outputs section has: this run's own root."""
    return Field(
        "",
        description="Where this run keeps its journal, state and default report: a local folder or "
        "s3://bucket/prefix. Empty: the root of the pipelines_state Prefect variable, else .pipeline-state/.",
    )


@dataclass(frozen=True)
class StateRoot:
    """Where this run keeps its state, and which local paths its parameters may name (see the module)."""

    root: str = STATE_ROOT
    s3_bucket_block: str = ""
    local_root: str = ""
    configured: bool = False  # False: the zero-setup default, every local path allowed

    @classmethod
    async def current(cls, override: str = "") -> StateRoot:
        """The root the ``pipelines_state`` variable names (``override``: this run's own root instead)."""
        from prefect.variables import Variable  # here: worker processes of the fit pool never need Prefect

        value = await Variable.aget(STATE_VARIABLE, default=None)
        if value is None and not override:
            return cls()
        try:
            settings = StateSettings.model_validate(value if value is not None else {"root": override})
        except ValidationError as exc:
            problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InputError(STATE_VARIABLE, f"the Prefect variable is not valid ({problem})") from None
        root = cls(
            (override or settings.root).rstrip("/"),
            settings.s3_bucket_block,
            os.path.abspath(settings.local_root) if settings.local_root else "",
            configured=value is not None,
        )
        if override:
            root.check_local([override], "state_root")
        return root

    def location(self, flow: str, identity: Any, suffix: str = ".jsonl", prefix: str = "") -> str:
        """``<root>/<flow>/<prefix><digest><suffix>``, the digest taken over ``identity`` (JSON)."""
        text = identity if isinstance(identity, str) else json.dumps(identity, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        return f"{self.root}/{flow}/{prefix}{digest}{suffix}"

    def report(self, flow: str, suffix: str = ".csv") -> str:
        """A new report's default location: ``reports/<flow>-<UTC time>.csv``, under the root once it is set."""
        folder = f"{self.root}/{REPORTS_DIR}" if self.configured else REPORTS_DIR
        return f"{folder}/{flow}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}{suffix}"

    def check_local(self, paths: Iterable[str | None], parameter: str) -> None:
        """Refuse local paths outside the allowed roots (the local root, and the state root when it is local).
        URLs and ``s3://`` locations pass; with the default root, everything does."""
        if not self.configured:
            return
        allowed = [r for r in (self.local_root, "" if self.root.startswith("s3://") else self.root) if r]
        for path in paths:
            if not path or "://" in path:
                continue
            full = os.path.realpath(path)
            if not any(
                full == r or full.startswith(r.rstrip("/") + "/") for r in map(os.path.realpath, allowed)
            ):
                where = " or ".join(allowed) if allowed else "no local folder (only s3:// and URLs)"
                raise InputError(
                    parameter, f"{path} is outside the folders runs may use", f"allowed: {where}"
                )


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
        if self.is_s3:  # in memory already: one PUT, no spooling
            self._s3.put_object(Bucket=self._bucket, Key=self._key, Body=data, ContentType=content_type)
            return
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
