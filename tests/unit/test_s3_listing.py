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


ODD_KEYS = ["a/plain.jpg", "a/x&y <z>.jpg", "a/\"q'.png", "a/é ü/ß.jpg", "a/sub/1.jpg", "a/sub/2.jpg", "b"]


@pytest.mark.parametrize("url_encoded", [True, False])
def test_pages_are_written_byte_for_byte_as_moto_writes_them(url_encoded, monkeypatch):
    import boto3
    from botocore.handlers import set_list_objects_encoding_type_url
    from moto import mock_aws
    from moto.s3.responses import S3Response

    s3_listing.install()
    written = []
    emulator_serialized = S3Response.serialized

    def both(self, action_result):  # what the emulator sends, and what moto would have
        ours = emulator_serialized(self, action_result)
        if self.data.get("Action") == "ListObjectsV2":  # copies: moto adds to the headers of the one it sends
            assert s3_listing.render_listing(action_result.result) is not None  # written by the emulator
            moto_s = S3Response.moto_serialized(self, action_result)
            written.append(((ours[0], dict(ours[1]), ours[2]), (moto_s[0], dict(moto_s[1]), moto_s[2])))
        return ours

    monkeypatch.setattr(S3Response, "serialized", both)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        if not url_encoded:  # boto3 asks for url-encoded keys unless told otherwise
            s3.meta.events.unregister(
                "before-parameter-build.s3.ListObjectsV2", set_list_objects_encoding_type_url
            )
        s3.create_bucket(Bucket="listing-bytes")
        for key in ODD_KEYS:
            s3.put_object(Bucket="listing-bytes", Key=key, Body=b"body")
        for kwargs in [{"Prefix": "a/"}, {"Prefix": "a/", "Delimiter": "/"}, {"MaxKeys": 2}, {"MaxKeys": 0},
                       {"StartAfter": "a/p"}, {"Prefix": "none/"}, {"Prefix": "a/", "MaxKeys": 3, "Delimiter": "/"}]:  # fmt: skip
            page = s3.list_objects_v2(Bucket="listing-bytes", **kwargs)
            while page.get("NextContinuationToken"):
                page = s3.list_objects_v2(
                    Bucket="listing-bytes", ContinuationToken=page["NextContinuationToken"], **kwargs
                )
    assert len(written) >= 10
    for (status, headers, body), moto_s in written:
        assert (status, body) == (moto_s[0], moto_s[2])
        assert {**headers, "date": ""} == {**moto_s[1], "date": ""}  # the clock may tick between the two
    assert any(("&amp;" if not url_encoded else "%26") in body for _, _, body in (w[0] for w in written))
