"""S3 helpers on a prefect-aws ``S3Bucket`` block or a plain boto3 client.

Every function takes the bucket first: an ``S3Bucket`` block (its ``bucket_folder`` prefixes every key) or a
``BucketRef`` (a boto3 client, a bucket name and an optional prefix). Keys are checked before anything is
sent: no ``..`` or ``.`` segments, no leading ``/``, no control characters, at most 1,024 bytes.

    credentials = AwsCredentials(
        aws_access_key_id="...", aws_secret_access_key="...", region_name="us-east-1",
        aws_client_parameters={"endpoint_url": "http://127.0.0.1:9000"},  # omit for real AWS
    )
    bucket = S3Bucket(bucket_name="demo-bucket", credentials=credentials, bucket_folder="snapshots")
    put_bytes(bucket, "cam-1/0001.jpg", data)          # -> s3://demo-bucket/snapshots/cam-1/0001.jpg
    list_keys(bucket, "cam-1/")                        # -> ["cam-1/0001.jpg"]  (relative to the folder)

boto3 is synchronous: from async flows, call these through ``asyncio.to_thread`` or ``.submit()`` the tasks.
boto3 clients are thread-safe, so the batch tasks share one client across a small thread pool.
"""

from __future__ import annotations

import contextlib
import functools
import mimetypes
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from botocore.config import Config
from botocore.exceptions import ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.base import load_block
from clients.errors import InputError, NotFoundError
from clients.redaction import redact

if TYPE_CHECKING:
    from prefect_aws.credentials import AwsCredentials, MinIOCredentials
    from prefect_aws.s3 import S3Bucket

MAX_KEY_BYTES = 1024  # S3 object key limit (UTF-8)
MAX_METADATA_BYTES = 2048  # S3 user-defined metadata limit (keys + values)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs live at most 7 days
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
# The most threads any of our S3 thread pools runs at once (the harvest's s3_workers go up to 64): the
# clients made from blocks keep that many connections, where boto3's default of 10 makes more threads
# discard theirs ("Connection pool is full") and connect again. Connections are only opened when needed.
MAX_S3_THREADS = 64

T = TypeVar("T")


@dataclass(frozen=True)
class BucketRef:
    """A bucket reached through a plain boto3 S3 client; ``prefix`` plays the role of ``bucket_folder``.

    ``credentials``: the botocore credentials of the client's session, when known (``bucket_ref`` of an
    S3Bucket block): ``tasks.s3_async`` signs its own requests with them.
    """

    client: Any = field(repr=False)
    bucket: str
    prefix: str = ""
    credentials: Any = field(default=None, repr=False, compare=False)


Bucket: TypeAlias = "S3Bucket | BucketRef"


def _aws_blocks() -> tuple[type[S3Bucket], type[AwsCredentials], type[MinIOCredentials]]:
    """prefect-aws's block classes, imported when a block is first met: the package (its ECS worker,
    aiobotocore, docker) adds about 14 MB to a process, which flows without S3 should not carry."""
    from prefect_aws.credentials import AwsCredentials, MinIOCredentials
    from prefect_aws.s3 import S3Bucket

    return S3Bucket, AwsCredentials, MinIOCredentials


@dataclass
class BatchResult(Generic[T]):
    """Outcome of a batch task: ``done`` maps each key to its result, ``failed`` each key to its error."""

    done: dict[str, T] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


# --- clients, URIs and keys ---------------------------------------------------------------------------


def s3_client_from_block(bucket_block: S3Bucket) -> Any:
    """The boto3 S3 client of an ``S3Bucket`` block: as ``credentials.get_s3_client()`` makes it (the block's
    region and client parameters), with a connection pool for ``MAX_S3_THREADS`` threads; one per
    credentials block and process."""
    return _client_and_credentials(bucket_block.credentials)[0]


@functools.lru_cache(maxsize=8)  # credentials blocks hash by value: prefect-aws caches its clients alike
def _client_and_credentials(credentials: AwsCredentials | MinIOCredentials) -> tuple[Any, Any]:
    session = credentials.get_boto3_session()
    params = credentials.aws_client_parameters.get_params_override()
    if credentials.region_name is not None:
        params["region_name"] = credentials.region_name
    pool = Config(max_pool_connections=MAX_S3_THREADS)
    params["config"] = pool.merge(params["config"]) if params.get("config") else pool  # the block's win
    return session.client("s3", **params), session.get_credentials()


async def s3_client_for(
    bucket_block: str | S3Bucket | None,
    locations: Iterable[str | None] = (),
    *,
    parameter: str = "s3_bucket_block",
) -> Any | None:
    """The boto3 S3 client of a flow's S3 Bucket block (a saved name or the block); None without one.

    ``locations`` are the sources, journals and reports the run will touch. An s3:// one without a block raises
    ``InputError`` naming ``parameter`` and the location: boto3's default credentials would reach another
    account, or none, without a word.
    """
    if bucket_block:
        return (await load_bucket(bucket_block)).client
    if s3_location := next((x for x in locations if x and x.startswith("s3://")), None):
        raise InputError(
            parameter,
            f"empty, but {s3_location} is an s3:// location",
            "name the S3 Bucket block that reaches it",
        )
    return None


async def load_bucket(bucket_block: str | S3Bucket) -> BucketRef:
    """The bucket of an ``S3Bucket`` block, given as a saved name or as the block."""
    if isinstance(bucket_block, str):
        bucket_block = await load_block(_aws_blocks()[0], bucket_block)
    return bucket_ref(bucket_block)


def resolve_s3_client(source: Any) -> Any:
    """A boto3 S3 client from a client, an ``S3Bucket`` block or an ``AwsCredentials``/``MinIOCredentials`` block."""
    if isinstance(source, BucketRef):
        return source.client
    if hasattr(source, "get_object") and hasattr(source, "list_objects_v2"):
        return source
    s3_bucket, aws_credentials, minio_credentials = _aws_blocks()
    if isinstance(source, s3_bucket):
        return s3_client_from_block(source)
    if isinstance(source, aws_credentials | minio_credentials):
        return source.get_s3_client()
    raise TypeError(
        f"expected a boto3 S3 client, an S3Bucket or AWS credentials block, got {type(source).__name__}"
    )


def bucket_ref(bucket: Bucket) -> BucketRef:
    """Normalise an ``S3Bucket`` block or a ``BucketRef`` to a ``BucketRef``."""
    if isinstance(bucket, BucketRef):
        return bucket
    if isinstance(bucket, _aws_blocks()[0]):
        folder = check_key((bucket.bucket_folder or "").strip("/"), field="bucket_folder", allow_empty=True)
        client, credentials = _client_and_credentials(bucket.credentials)
        return BucketRef(client, bucket.bucket_name, folder, credentials)
    raise TypeError(f"expected an S3Bucket block or a BucketRef, got {type(bucket).__name__}")


def check_key(key: str, *, field: str = "key", allow_empty: bool = False) -> str:
    """Return ``key`` if it is a safe S3 key, else raise ``InputError``.

    Rejects leading ``/``, ``..`` and ``.`` segments (path traversal once keys are mirrored to disk),
    control characters and keys over 1,024 UTF-8 bytes. ``allow_empty`` is for prefixes.
    """
    if not isinstance(key, str):
        raise InputError(field, f"must be a string, got {type(key).__name__}")
    if not key:
        if allow_empty:
            return key
        raise InputError(field, "empty")
    if key.startswith("/"):
        raise InputError(field, f"{key!r} starts with '/'", "keys are relative to the bucket")
    if any(part in ("..", ".") for part in key.split("/")):
        raise InputError(field, f"{key!r} has a '.' or '..' segment", "no path traversal")
    if _CONTROL_RE.search(key):
        raise InputError(field, f"{key!r} contains control characters")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InputError(field, f"{len(key.encode()):,} bytes", f"at most {MAX_KEY_BYTES:,} bytes")
    return key


def parse_s3_uri(uri: str, *, field: str = "uri", require_key: bool = True) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; raise ``InputError`` naming ``field`` if malformed.

    The key goes through ``check_key``; ``require_key=False`` accepts ``s3://bucket`` and ``s3://bucket/prefix/``.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InputError(field, f"{uri!r} is not an S3 URI", "s3://bucket/key")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InputError(field, f"bad bucket name {bucket!r}", "3-63 lowercase letters, digits, '.', '-'")
    check_key(key, field=field, allow_empty=not require_key)
    return bucket, key


def object_key(ref: BucketRef, key: str, *, allow_empty: bool = False) -> str:
    """``key`` (checked with ``check_key``) under the bucket folder: the key S3 stores."""
    check_key(key, allow_empty=allow_empty)
    prefix = ref.prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def _is_not_found(err: ClientError) -> bool:
    return str(err.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES


@contextlib.contextmanager
def not_found_as_error(operation: str, bucket: str, key: str) -> Iterator[None]:
    """Turn S3's 404 answers (NoSuchKey, NoSuchBucket, a bare 404 on HEAD) into ``NotFoundError``."""
    try:
        yield
    except ClientError as err:
        if _is_not_found(err):
            raise NotFoundError("s3", operation, f"no object s3://{bucket}/{key}", status=404) from None
        raise


# --- single-object operations ---------------------------------------------------------------------------


def put_bytes(
    bucket: Bucket,
    key: str,
    data: bytes,
    *,
    metadata: Mapping[str, str] | None = None,
    content_type: str | None = None,
) -> str:
    """Store ``data`` at ``key`` and return the full key written (folder prefix included).

    ``content_type`` defaults to a guess from the key's extension. ``metadata`` becomes S3 user metadata:
    ASCII strings only, at most 2 KB in total (S3 sends it as HTTP headers).
    """
    ref = bucket_ref(bucket)
    full_key = object_key(ref, key)
    extra: dict[str, Any] = {
        "ContentType": content_type or mimetypes.guess_type(key)[0] or "application/octet-stream"
    }
    if metadata:
        extra["Metadata"] = check_metadata(metadata)
    ref.client.put_object(Bucket=ref.bucket, Key=full_key, Body=bytes(data), **extra)
    return full_key


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` as S3 user metadata, or ``InputError``: ASCII strings only, at most 2 KB in all."""
    size = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InputError("metadata", f"{name!r}: keys and values must be strings")
        if not (name + value).isascii() or _CONTROL_RE.search(name + value):
            raise InputError("metadata", f"{name!r}: non-ASCII or control characters", "ASCII only")
        size += len(name) + len(value)
    if size > MAX_METADATA_BYTES:
        raise InputError("metadata", f"{size:,} bytes", f"at most {MAX_METADATA_BYTES:,} bytes")
    return dict(metadata)


def get_bytes(bucket: Bucket, key: str) -> bytes:
    """The whole object at ``key``; ``NotFoundError`` (status 404) if it does not exist."""
    ref = bucket_ref(bucket)
    full_key = object_key(ref, key)
    try:
        return ref.client.get_object(Bucket=ref.bucket, Key=full_key)["Body"].read()
    except ClientError as err:
        if _is_not_found(err):
            raise NotFoundError(
                "s3", "get_object", f"no object s3://{ref.bucket}/{full_key}", status=404
            ) from None
        raise


def exists(bucket: Bucket, key: str) -> bool:
    """Whether an object exists at ``key`` (one HEAD request)."""
    ref = bucket_ref(bucket)
    try:
        ref.client.head_object(Bucket=ref.bucket, Key=object_key(ref, key))
    except ClientError as err:
        if _is_not_found(err):
            return False
        raise
    return True


@dataclass(frozen=True)
class ObjectInfo:
    """An object as listed or read: its key, ETag (quotes stripped) and size in bytes; ``head`` holds the
    first bytes when it was read with ``read_object_heads``."""

    key: str
    etag: str
    size: int
    head: bytes = field(default=b"", repr=False)


def list_objects(
    bucket: Bucket, prefix: str = "", *, folder_markers: bool = False, first_key: str = "", stop_key: str = ""
) -> list[ObjectInfo]:
    """Every object under ``prefix`` (all pages), sorted by key, keys relative to the bucket folder.

    The listing carries each object's ETag and size at no extra cost. Folder markers (keys ending in ``/``)
    are left out unless ``folder_markers``. With ``first_key`` / ``stop_key`` (keys relative to the bucket
    folder), only the keys in ``[first_key, stop_key)`` are listed: S3 lists in key order, so the listing
    starts there (``StartAfter``) and stops at ``stop_key`` instead of reading every page.
    """
    ref = bucket_ref(bucket)
    full_prefix = object_key(ref, prefix, allow_empty=True)  # "folder/" + prefix
    folder = ref.prefix.strip("/")
    strip = len(folder) + 1 if folder else 0
    start = {}
    if (
        first_key
    ):  # StartAfter is exclusive: start after a key just below first_key (itself minus a character)
        start["StartAfter"] = f"{folder}/{first_key}"[:-1] if folder else first_key[:-1]
    found: list[ObjectInfo] = []
    pages = ref.client.get_paginator("list_objects_v2").paginate(
        Bucket=ref.bucket, Prefix=full_prefix, **start
    )
    for page in pages:
        found.extend(
            ObjectInfo(obj["Key"][strip:], obj.get("ETag", "").strip('"'), int(obj.get("Size", 0)))
            for obj in page.get("Contents", ())
            if folder_markers or not obj["Key"].endswith("/")
        )
        if stop_key and found and found[-1].key >= stop_key:
            break
    found = [o for o in found if o.key >= first_key and (not stop_key or o.key < stop_key)]
    return sorted(found, key=lambda o: o.key)


def list_keys(bucket: Bucket, prefix: str = "") -> list[str]:
    """Every key under ``prefix`` (all pages), sorted, relative to the bucket folder.

    Folder markers (keys ending in ``/``) are left out. The returned keys can be passed straight back to
    ``get_bytes``.
    """
    return [o.key for o in list_objects(bucket, prefix)]


def read_object_head(bucket: Bucket, key: str, nbytes: int = 32) -> ObjectInfo:
    """The first ``nbytes`` of an object with one ranged GET (enough to tell its format by content), with its
    ETag and full size; ``NotFoundError`` (status 404) if it does not exist. An empty object has ``head`` b""."""
    ref = bucket_ref(bucket)
    full_key = object_key(ref, key)
    try:
        with not_found_as_error("get_object", ref.bucket, full_key):
            got = ref.client.get_object(Bucket=ref.bucket, Key=full_key, Range=f"bytes=0-{nbytes - 1}")
    except ClientError as err:  # S3 answers 416 to any range of an empty object
        if str(err.response.get("Error", {}).get("Code")) != "InvalidRange":
            raise
        meta = ref.client.head_object(Bucket=ref.bucket, Key=full_key)
        return ObjectInfo(key, meta.get("ETag", "").strip('"'), int(meta.get("ContentLength", 0)))
    total = got.get("ContentRange", "").rpartition("/")[2]
    size = int(total) if total.isdigit() else int(got.get("ContentLength", 0))
    return ObjectInfo(key, got.get("ETag", "").strip('"'), size, got["Body"].read())


def read_object_heads(
    bucket: Bucket, keys: Sequence[str], nbytes: int = 32, *, max_workers: int = 16
) -> BatchResult[ObjectInfo]:
    """``read_object_head`` for many keys at once, on a thread pool sharing one client (synchronous: call it
    through ``asyncio.to_thread`` from async code). Missing keys land in ``failed`` with a NotFoundError message.
    """
    ref = bucket_ref(bucket)
    return _run_batch(lambda key: read_object_head(ref, key, nbytes), keys, max_workers)


def presigned_get_url(bucket: Bucket, key: str, expires_in: int = 3600) -> str:
    """A URL that downloads ``key`` without credentials for ``expires_in`` seconds (1 s to 7 days).

    Computed locally (no request). The URL grants access: treat it like a secret, keep it out of logs,
    reports and flow parameters.
    """
    if not 1 <= int(expires_in) <= MAX_PRESIGN_SECONDS:
        raise InputError("expires_in", f"{expires_in} s", f"1 to {MAX_PRESIGN_SECONDS:,} s")
    ref = bucket_ref(bucket)
    return ref.client.generate_presigned_url(
        "get_object", Params={"Bucket": ref.bucket, "Key": object_key(ref, key)}, ExpiresIn=int(expires_in)
    )


# --- batch tasks ---------------------------------------------------------------------------------------


def _run_batch(fn: Callable[[str], T], keys: Iterable[str], max_workers: int) -> BatchResult[T]:
    keys = list(dict.fromkeys(keys))  # drop duplicates, keep order
    result: BatchResult[T] = BatchResult()
    if not keys:
        return result

    def attempt(key: str) -> tuple[str, T | None, str | None]:
        try:
            return key, fn(key), None
        except Exception as exc:  # one bad object must not hide the others' outcome
            # always the class name first: callers tell a missing object by it (``NotFoundError: ...``)
            return key, None, f"{type(exc).__name__}: {redact(exc)}"

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(keys)))) as pool:
        for key, value, error in pool.map(attempt, keys):
            if error is None:
                result.done[key] = value
            else:
                result.failed[key] = error
    return result


@task(name="upload-to-s3", cache_policy=NO_CACHE)
def upload_objects(
    bucket: Bucket,
    objects: Mapping[str, bytes],
    *,
    content_type: str | None = None,
    metadata: Mapping[str, str] | None = None,
    max_workers: int = 8,
) -> BatchResult[str]:
    """Upload a batch of objects (key -> bytes) in parallel; ``done`` maps each key to the full key written.

    Puts are idempotent, so retrying the whole task (``.with_options(retries=2)``) is safe.

    Example:
        result = upload_objects(bucket, {"cam-1/0001.jpg": jpeg, "cam-1/0002.jpg": jpeg2})
        assert not result.failed
    """
    ref = bucket_ref(bucket)  # one client for the whole batch
    return _run_batch(
        lambda key: put_bytes(ref, key, objects[key], metadata=metadata, content_type=content_type),
        objects,
        max_workers,
    )


@task(name="download-from-s3", cache_policy=NO_CACHE)
def download_objects(bucket: Bucket, keys: Sequence[str], *, max_workers: int = 8) -> BatchResult[bytes]:
    """Download a batch of objects in parallel; missing keys land in ``failed`` with a NotFoundError message.

    Example:
        result = download_objects(bucket, list_s3_keys(bucket, "cam-1/"))
        for key, data in result.done.items(): ...
    """
    ref = bucket_ref(bucket)
    return _run_batch(lambda key: get_bytes(ref, key), keys, max_workers)


@task(name="list-s3-keys", cache_policy=NO_CACHE)
def list_s3_keys(bucket: Bucket, prefix: str = "") -> list[str]:
    """Every key under ``prefix``, sorted, relative to the bucket folder (see ``list_keys``).

    Example:
        keys = list_s3_keys(bucket, "harvest/2024-11-09/")
    """
    return list_keys(bucket, prefix)


@task(name="presign-s3-urls", cache_policy=NO_CACHE)
def presign_urls(bucket: Bucket, keys: Sequence[str], expires_in: int = 3600) -> dict[str, str]:
    """Presigned GET URLs for a batch of keys (computed locally). The URLs grant access: never log them.

    Example:
        urls = presign_urls(bucket, ["cam-1/0001.jpg"], expires_in=900)
    """
    ref = bucket_ref(bucket)
    return {key: presigned_get_url(ref, key, expires_in) for key in keys}
