"""The S3 emulator's paged listing (emulators/s3_listing.py) answers exactly as moto does, page after page,
while keys come and go between pages."""

from __future__ import annotations

import secrets

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import S3Backend, s3_backends

from emulators import s3_listing


@pytest.fixture
def bucket():
    s3_listing.install()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    name = f"listing-{secrets.token_hex(4)}"
    backend.create_bucket(name, "us-east-1")
    for i in range(2300):
        backend.put_object(name, f"a/{i:05d}.jpg", b"x")
    for i in range(30):
        backend.put_object(name, f"a/sub{i % 3}/{i:03d}.jpg", b"x")
        backend.put_object(name, f"b/{i:03d}.jpg", b"x")
    yield backend, name
    backend.reset()


def pages(backend, name, lister, prefix, delimiter=None, start_after=None, max_keys=1000, between=None):
    """Every page of a listing as (names, truncated), calling ``between(page_number)`` after each page."""
    bucket, token, out = backend.get_bucket(name), None, []
    while True:
        keys, truncated, token = lister(backend, bucket, prefix, delimiter, token, start_after, max_keys)
        out.append(([k if isinstance(k, str) else k.name for k in keys], truncated))
        if between:
            between(len(out))
        if not truncated:
            return out


@pytest.mark.parametrize(
    ("prefix", "delimiter", "start_after", "max_keys"),
    [("a/", None, None, 1000), ("a/", "/", None, 500), ("", "/", None, 1), ("a/", None, "a/01000.jpg", 700),
     ("b/", None, None, 1000), ("a/", None, None, 0), ("none/", None, None, 1000)],
)  # fmt: skip
def test_pages_are_moto_s_own(bucket, prefix, delimiter, start_after, max_keys):
    backend, name = bucket
    args = (prefix, delimiter, start_after, max_keys)
    ours = pages(backend, name, S3Backend.list_objects_v2, *args)
    assert ours == pages(backend, name, S3Backend.moto_list_objects_v2, *args)
    assert ours[0][0] or prefix == "none/" or max_keys == 0  # not trivially empty


def test_keys_written_or_deleted_between_pages_show_on_the_next_page(bucket):
    backend, name = bucket

    def change(page: int) -> None:
        if page == 1:  # page 2 loses a key and gains one; a cache of page 1's listing would not know
            backend.delete_object(name, "a/01500.jpg")
            backend.put_object(name, "a/01500a.jpg", b"y")

    names = [
        n for page, _ in pages(backend, name, S3Backend.list_objects_v2, "a/", between=change) for n in page
    ]
    assert "a/01500.jpg" not in names and "a/01500a.jpg" in names and len(names) == 2330
    assert names == sorted(names)
