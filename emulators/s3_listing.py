"""Paged S3 listings whose cost does not grow with the bucket, as S3's do not.

moto answers every ``ListObjectsV2`` page by copying, filtering and sorting the whole bucket, then scanning
for the continuation token: a page of a 100,000-key prefix in a 141,000-key bucket took 0.23 s, so listing
that prefix (100 pages) took ~25 s where S3 takes a few. Benchmarks of big jobs then measured moto. This
keeps each (prefix, delimiter) listing of a bucket, sorted, until the bucket changes (every write to moto's
key store bumps a counter), so the next page is a binary search and a slice. Answers are moto's own: a
cache miss, or anything unusual (an unknown continuation token, a table bucket), goes through moto's code.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

# The key store's methods that change which keys (or versions) a bucket holds.
_MUTATORS = ("__setitem__", "__delitem__", "setlist", "pop", "popitem", "clear", "update", "setdefault")


def install() -> None:
    """Patch moto's S3 backend in this process (idempotent)."""
    from moto.s3.models import S3Backend
    from moto.s3.utils import _VersionedKeyStore

    if getattr(S3Backend, "_paged_listing", False):
        return
    for name in _MUTATORS:
        setattr(_VersionedKeyStore, name, _bumping(getattr(_VersionedKeyStore, name)))
    moto_list_v2 = S3Backend.list_objects_v2

    def list_objects_v2(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        args = (bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        if not isinstance(bucket.keys, _VersionedKeyStore) or (continuation_token and after is None):
            return moto_list_v2(self, *args)
        entries = _sorted_listing(self, bucket, prefix, delimiter)
        # moto: the entries whose name is > the token
        start = bisect_right(entries, after, key=self._get_name) if after else 0
        # one entry more than a page tells moto's truncation whether another page follows
        return self._truncate_result(entries[start : start + max_keys + 1], max_keys)

    S3Backend.list_objects_v2 = list_objects_v2
    S3Backend.moto_list_objects_v2 = moto_list_v2  # moto's own, for comparison
    S3Backend._paged_listing = True


def _bumping(method: Any) -> Any:
    def changed(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:  # after the change: a listing built meanwhile was stored under the old generation
            self.__dict__["_generation"] = self.__dict__.get("_generation", 0) + 1

    changed.__name__ = getattr(method, "__name__", "changed")
    return changed


def _sorted_listing(backend: Any, bucket: Any, prefix: str | None, delimiter: str | None) -> list:
    """Every key and common prefix under ``prefix``, sorted by name, as moto builds them."""
    store = bucket.keys
    generation = store.__dict__.get("_generation", 0)  # read first: a write while building misses next time
    cache = store.__dict__.setdefault("_listings", {})
    hit = cache.get((prefix, delimiter))
    if hit is not None and hit[0] == generation:
        return hit[1]
    keys, folders, _, _ = backend.list_objects(bucket, prefix, delimiter, marker=None, max_keys=None)
    entries = sorted([*keys, *folders], key=backend._get_name)
    cache[(prefix, delimiter)] = (generation, entries)
    return entries
