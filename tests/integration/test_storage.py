"""tasks.storage and S3 table reading/writing against the S3 emulator (moto server), over real HTTP."""

from __future__ import annotations

import asyncio

import boto3
import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from prefect_aws.client_parameters import AwsClientParameters
from prefect_aws.credentials import AwsCredentials
from prefect_aws.s3 import S3Bucket

from clients.errors import InputError, NotFoundError
from emulators.launcher import running_emulators
from tasks.s3_async import AsyncS3Writer
from tasks.storage import (
    MAX_S3_THREADS,
    BucketRef,
    bucket_ref,
    check_key,
    download_objects,
    exists,
    get_bytes,
    list_keys,
    list_objects,
    list_s3_keys,
    parse_s3_uri,
    presign_urls,
    presigned_get_url,
    put_bytes,
    read_object_head,
    read_object_heads,
    s3_client_for,
    s3_client_from_block,
    upload_objects,
)
from tasks.tables import iter_table_chunks, list_sources, write_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    with running_emulators(only=["s3"]) as emu:
        yield emu["s3"]


@pytest.fixture(autouse=True)
def _reset(s3):
    s3.reset()  # empty store, demo bucket recreated


@pytest.fixture(scope="module")
def credentials(s3) -> AwsCredentials:
    c = s3.credentials
    return AwsCredentials(
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
        aws_client_parameters={"endpoint_url": s3.url},
    )


@pytest.fixture(scope="module")
def bucket_name(s3) -> str:
    return s3.credentials["bucket"]


@pytest.fixture(scope="module")
def bucket(credentials, bucket_name) -> S3Bucket:
    return S3Bucket(bucket_name=bucket_name, credentials=credentials, bucket_folder="harvest")


@pytest.fixture(scope="module")
def raw_client(s3):
    """A plain boto3 client, separate from the one prefect-aws caches."""
    c = s3.credentials
    return boto3.client(
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    n = 2_500
    return pd.DataFrame(
        {"id": range(n), "value": [i * 0.5 for i in range(n)], "tag": [f"t{i % 3}" for i in range(n)]}
    )


# --- URIs and keys (no I/O) ----------------------------------------------------------------------------


def test_parse_s3_uri():
    assert parse_s3_uri("s3://demo-bucket/a/b.csv") == ("demo-bucket", "a/b.csv")
    assert parse_s3_uri("s3://demo-bucket", require_key=False) == ("demo-bucket", "")
    assert parse_s3_uri("s3://demo-bucket/in/", require_key=False) == ("demo-bucket", "in/")
    cases = {
        "https://demo-bucket/a": "'https://demo-bucket/a' is not an S3 URI",
        "s3://demo-bucket": "empty",
        "s3://Demo_Bucket/a": "bad bucket name 'Demo_Bucket'",
        "s3://demo-bucket/a/../b": "'a/../b' has a '.' or '..' segment",
        "s3://demo-bucket//etc/passwd": "'/etc/passwd' starts with '/'",
    }
    for uri, problem in cases.items():
        with pytest.raises(InputError) as err:
            parse_s3_uri(uri)
        assert (err.value.field, err.value.problem) == ("uri", problem)


def test_path_traversal_keys_are_rejected():
    for key in ["../secrets", "a/../../b", "./a", "/abs/key", "a\x00b"]:
        with pytest.raises(InputError):
            check_key(key)
    with pytest.raises(InputError) as err:
        check_key("k" * 1025)
    assert str(err.value) == "key: 1,025 bytes (at most 1,024 bytes)"
    assert check_key("cam-1/2024-11-09/0001.jpg") == "cam-1/2024-11-09/0001.jpg"


# --- objects through an S3Bucket block -----------------------------------------------------------------


def test_client_from_block_points_at_the_emulator(bucket, s3):
    assert s3_client_from_block(bucket).meta.endpoint_url == s3.url


def test_client_from_block_has_a_connection_per_thread(credentials, bucket_name):
    """boto3's default pool (10) made more threads discard their connections ("Connection pool is full");
    the block's own client settings still apply."""
    client = s3_client_from_block(S3Bucket(bucket_name=bucket_name, credentials=credentials))
    assert client.meta.config.max_pool_connections == MAX_S3_THREADS
    tuned = credentials.model_copy(
        update={"aws_client_parameters": AwsClientParameters(endpoint_url=credentials.aws_client_parameters.endpoint_url,
                                                             config={"read_timeout": 7})}
    )  # fmt: skip
    client = s3_client_from_block(S3Bucket(bucket_name=bucket_name, credentials=tuned))
    assert (client.meta.config.read_timeout, client.meta.config.max_pool_connections) == (7, MAX_S3_THREADS)


async def test_async_writer_stores_like_put_bytes(bucket, raw_client, bucket_name):
    """Signed by botocore and sent by aiohttp: key under the folder, bytes, content type, metadata."""
    ref = bucket_ref(bucket)
    assert ref.credentials is not None  # what the fast path signs with
    fallbacks: list[object] = []

    async def in_thread(call):
        fallbacks.append(call)
        return call()

    writer = AsyncS3Writer(ref, connections=2, run_in_thread=in_thread)
    try:
        keys = await asyncio.gather(
            *(writer.put(f"cam 1/{i}.jpg", b"x" * (1000 + i), metadata={"device-name": "Lobby"},
                         content_type="image/jpeg") for i in range(3))
        )  # fmt: skip
    finally:
        await writer.aclose()
    assert keys == ["harvest/cam 1/0.jpg", "harvest/cam 1/1.jpg", "harvest/cam 1/2.jpg"]
    got = raw_client.get_object(Bucket=bucket_name, Key="harvest/cam 1/2.jpg")
    assert (got["Body"].read(), got["ContentType"], got["Metadata"]) == (
        b"x" * 1002,
        "image/jpeg",
        {"device-name": "Lobby"},
    )
    assert fallbacks == [] and writer.fast_path_problem is None
    with pytest.raises(InputError):  # checked before anything is sent, as put_bytes does
        await writer.put("../up", b"x", metadata={"name": "Café"}, content_type="image/jpeg")


async def test_s3_client_for_needs_a_block_for_s3_locations(bucket, s3):
    assert (await s3_client_for(bucket, ["s3://demo-bucket/in/"])).meta.endpoint_url == s3.url
    assert await s3_client_for("", ["data/in.csv", None, ""]) is None  # local only: no client, no error
    with pytest.raises(InputError) as err:  # never boto3's default credentials
        await s3_client_for(
            "", ["data/in.csv", "s3://demo-bucket/reports/run.csv"], parameter="s3_bucket_block"
        )
    assert err.value.field == "s3_bucket_block"
    assert "s3://demo-bucket/reports/run.csv" in str(err.value)


def test_put_get_exists_round_trip(bucket, raw_client, bucket_name):
    full_key = put_bytes(bucket, "cam-1/0001.jpg", b"\xff\xd8\xffjpeg", metadata={"camera": "cam-1"})

    assert full_key == "harvest/cam-1/0001.jpg"  # the block's folder prefixes the key
    assert get_bytes(bucket, "cam-1/0001.jpg") == b"\xff\xd8\xffjpeg"
    assert exists(bucket, "cam-1/0001.jpg") and not exists(bucket, "cam-1/0002.jpg")
    head = raw_client.head_object(Bucket=bucket_name, Key=full_key)
    assert (head["ContentType"], head["Metadata"]) == ("image/jpeg", {"camera": "cam-1"})

    put_bytes(bucket, "notes/x", b"{}", content_type="application/json")
    assert (
        raw_client.head_object(Bucket=bucket_name, Key="harvest/notes/x")["ContentType"] == "application/json"
    )


def test_missing_object_is_not_found(bucket, bucket_name):
    with pytest.raises(NotFoundError) as err:
        get_bytes(bucket, "cam-9/missing.jpg")
    assert err.value.status == 404
    assert str(err.value) == f"s3 get_object: no object s3://{bucket_name}/harvest/cam-9/missing.jpg"


def test_bad_keys_and_metadata_never_reach_s3(bucket, s3):
    before = s3.received()["requests"]
    for key in ["../outside.jpg", "/abs.jpg", "a/./b.jpg"]:
        with pytest.raises(InputError) as err:
            put_bytes(bucket, key, b"x")
        assert err.value.field == "key"
    with pytest.raises(InputError) as err:
        put_bytes(bucket, "ok.jpg", b"x", metadata={"place": "Zürich"})
    assert err.value.field == "metadata"
    assert s3.received()["requests"] == before


def test_list_keys_reads_every_page_and_stays_in_the_folder(bucket, raw_client, bucket_name):
    objects = {f"cam-1/{i:05d}.jpg": b"x" for i in range(1_003)}  # more than one 1,000-key page
    result = upload_objects.fn(bucket, objects)
    assert not result.failed and len(result.done) == 1_003
    assert result.done["cam-1/00000.jpg"] == "harvest/cam-1/00000.jpg"
    raw_client.put_object(Bucket=bucket_name, Key="harvest-old/cam-1/x.jpg", Body=b"x")  # sibling prefix
    raw_client.put_object(Bucket=bucket_name, Key="harvest/cam-2/", Body=b"")  # console folder marker
    raw_client.put_object(Bucket=bucket_name, Key="harvest/cam-2/a.jpg", Body=b"x")

    keys = list_keys(bucket, "cam-1/")
    assert keys == sorted(objects) and len(keys) == 1_003
    assert list_s3_keys.fn(bucket) == sorted([*objects, "cam-2/a.jpg"])
    assert get_bytes(bucket, keys[-1]) == b"x"  # listed keys go straight back in


def test_listing_carries_etag_and_size(bucket, raw_client, bucket_name):
    put_bytes(bucket, "etag/a.jpg", b"AAAA")
    raw_client.put_object(Bucket=bucket_name, Key="harvest/etag/", Body=b"")  # folder marker
    listed = list_objects(bucket, "etag/")
    assert [(o.key, o.size) for o in listed] == [("etag/a.jpg", 4)]
    assert listed[0].etag == raw_client.head_object(Bucket=bucket_name, Key="harvest/etag/a.jpg")[
        "ETag"
    ].strip('"')
    assert [o.key for o in list_objects(bucket, "etag/", folder_markers=True)] == ["etag/", "etag/a.jpg"]


def test_a_key_range_is_listed_from_its_first_key_and_stops_at_its_end(raw_client, bucket_name):
    """What a shard lists: only [first_key, stop_key), starting there and reading no page past the end."""
    keys = [f"range/img-{i:04d}.jpg" for i in range(2_500)]  # three pages of 1,000
    keys += ["range/img-0999.jpa", "range/img-1000.jp"]  # sort just below img-1000.jpg: not in the range
    for key in keys:
        raw_client.put_object(Bucket=bucket_name, Key=f"harvest/{key}", Body=b"x")
    calls = []
    raw_client.meta.events.register(
        "before-parameter-build.s3.ListObjectsV2", lambda params, **_: calls.append(params)
    )
    try:
        ref = BucketRef(raw_client, bucket_name, "harvest")
        listed = list_objects(ref, "range/", first_key="range/img-1000.jpg", stop_key="range/img-1500.jpg")
        ranged_calls = len(calls)
        everything = list_objects(ref, "range/")
    finally:
        raw_client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2")
    assert [o.key for o in listed] == [f"range/img-{i:04d}.jpg" for i in range(1000, 1500)]
    assert calls[0]["StartAfter"] == "harvest/range/img-1000.jp"
    assert ranged_calls == 1 and len(calls) - ranged_calls == 3  # one page from the start; the whole: three
    assert len(everything) == len(keys)


def test_object_heads_are_read_with_ranged_gets(bucket, raw_client, bucket_name):
    big = b"\xff\xd8\xff\xe0" + bytes(100_000)
    upload_objects.fn(bucket, {"h/big.jpg": big, "h/empty.jpg": b""})
    head = read_object_head(bucket, "h/big.jpg", 16)
    assert (head.head, head.size) == (big[:16], len(big)) and head.etag
    assert read_object_head(bucket, "h/empty.jpg").head == b""  # S3 refuses any range of an empty object
    result = read_object_heads(bucket, ["h/big.jpg", "h/missing.jpg"], 8)
    assert result.done["h/big.jpg"].head == big[:8]
    assert result.failed["h/missing.jpg"].startswith("NotFoundError")


def test_batch_download_reports_each_key(bucket):
    upload_objects.fn(bucket, {"a.jpg": b"A", "b.jpg": b"B"})
    result = download_objects.fn(bucket, ["a.jpg", "missing.jpg", "b.jpg"])
    assert result.done == {"a.jpg": b"A", "b.jpg": b"B"}
    assert list(result.failed) == ["missing.jpg"]
    assert result.failed["missing.jpg"].startswith("NotFoundError: s3 get_object: no object")


def test_presigned_url_downloads_without_credentials(bucket, s3):
    put_bytes(bucket, "share/report.csv", b"a,b\n1,2\n")
    url = presigned_get_url(bucket, "share/report.csv", expires_in=300)
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"a,b\n1,2\n"
    assert s3.credentials["aws_secret_access_key"] not in url

    urls = presign_urls.fn(bucket, ["share/report.csv"], expires_in=60)
    assert httpx.get(urls["share/report.csv"]).content == b"a,b\n1,2\n"
    with pytest.raises(InputError) as err:
        presigned_get_url(bucket, "share/report.csv", expires_in=8 * 24 * 3600)
    assert str(err.value) == "expires_in: 691200 s (1 to 604,800 s)"


def test_bucket_ref_on_a_plain_client(raw_client, bucket_name):
    ref = BucketRef(raw_client, bucket_name)
    put_bytes(ref, "plain/k.bin", b"\x00\x01")
    assert get_bytes(ref, "plain/k.bin") == b"\x00\x01"
    assert list_keys(ref, "plain/") == ["plain/k.bin"]


# --- tables on S3 --------------------------------------------------------------------------------------


def test_tables_round_trip_through_s3_in_chunks(credentials, bucket, bucket_name, frame):
    base = f"s3://{bucket_name}/tables"
    for name in ["a.csv", "b.csv.gz", "c.parquet", "d.jsonl"]:
        assert write_table(frame, f"{base}/{name}", s3_client=bucket) == f"{base}/{name}"
    put_bytes(BucketRef(credentials.get_s3_client(), bucket_name), "tables/_SUCCESS", b"")

    sources = list_sources(f"{base}/", s3_client=credentials)
    assert sources == [f"{base}/a.csv", f"{base}/b.csv.gz", f"{base}/c.parquet", f"{base}/d.jsonl"]

    chunks = list(iter_table_chunks(f"{base}/", chunksize=1_000, s3_client=credentials))
    assert [len(c) for c in chunks] == [1_000, 1_000, 500] * 4
    for src in sources:
        whole = pd.concat([c for c in chunks if c.attrs["source"] == src], ignore_index=True)
        pd.testing.assert_frame_equal(whole, frame, check_dtype=False)


def test_s3_globs_and_single_keys(raw_client, bucket_name, frame):
    base = f"s3://{bucket_name}/in"
    for name in ["2024/01/a.csv", "2024/02/b.csv", "2024/02/c.parquet", "other.csv"]:
        write_table(frame.head(10), f"{base}/{name}", s3_client=raw_client)

    assert list_sources(f"{base}/2024/*/*.csv", s3_client=raw_client) == [
        f"{base}/2024/01/a.csv",
        f"{base}/2024/02/b.csv",
    ]
    assert list_sources(f"{base}/*.csv", s3_client=raw_client) == [
        f"{base}/other.csv"
    ]  # * stays in a segment
    assert list_sources(f"{base}/**/*.parquet", s3_client=raw_client) == [f"{base}/2024/02/c.parquet"]
    assert list_sources(f"{base}/none/", s3_client=raw_client) == []
    assert list_sources(f"{base}/other.csv") == [f"{base}/other.csv"]  # no listing, no client needed

    for missing in ["missing.csv", "missing.parquet"]:
        with pytest.raises(NotFoundError) as err:
            next(iter_table_chunks(f"{base}/{missing}", s3_client=raw_client))
        assert str(err.value).endswith(f"no object s3://{bucket_name}/in/{missing}")


def test_storage_options_build_the_client(s3, bucket_name, frame, raw_client):
    write_table(frame.head(5), f"s3://{bucket_name}/opts/t.csv", s3_client=raw_client)
    c = s3.credentials
    options = {
        "key": c["aws_access_key_id"],
        "secret": c["aws_secret_access_key"],
        "region_name": c["region_name"],
        "client_kwargs": {"endpoint_url": s3.url},
    }
    chunks = list(iter_table_chunks(f"s3://{bucket_name}/opts/", storage_options=options))
    assert [c["id"].tolist() for c in chunks] == [[0, 1, 2, 3, 4]]


def test_parquet_is_read_with_ranged_gets_not_whole(s3, raw_client, bucket_name):
    n = 200_000
    table = pa.table(
        {"id": pa.array(range(n), pa.int64()), "payload": pa.array([float(i) for i in range(n)])}
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=50_000, compression="none")
    body = sink.getvalue().to_pybytes()
    raw_client.put_object(Bucket=bucket_name, Key="big/t.parquet", Body=body)

    ranges: list[str] = []
    client = boto3.client(  # own client: the hook must not leak into other tests
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id=s3.credentials["aws_access_key_id"],
        aws_secret_access_key=s3.credentials["aws_secret_access_key"],
        region_name=s3.credentials["region_name"],
    )
    client.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: ranges.append(params["Range"])
    )

    chunks = list(
        iter_table_chunks(
            f"s3://{bucket_name}/big/t.parquet", chunksize=50_000, columns=["id"], s3_client=client
        )
    )

    assert [len(c) for c in chunks] == [50_000] * 4
    assert pd.concat(chunks)["id"].tolist() == list(range(n))
    assert ranges and all(r.startswith("bytes=") for r in ranges)
    fetched = sum(int(r.split("-")[1]) - int(r.removeprefix("bytes=").split("-")[0]) + 1 for r in ranges)
    meta = pq.ParquetFile(pa.BufferReader(body)).metadata
    id_bytes = sum(meta.row_group(i).column(0).total_compressed_size for i in range(meta.num_row_groups))
    # only the "id" column chunks, one row group at a time, plus pyarrow's 64 KB footer read
    assert id_bytes <= fetched <= id_bytes + 65_536 < 0.6 * len(body)
    assert len(ranges) == 1 + meta.num_row_groups


def test_parquet_overwritten_during_read_fails_loudly(raw_client, bucket_name):
    n = 1_600_000  # 16 row groups of ~800 KB: big enough that the reader goes back to S3 after the first
    sink = pa.BufferOutputStream()
    pq.write_table(
        pa.table({"id": pa.array(range(n), pa.int64())}), sink, row_group_size=100_000, compression="none"
    )
    raw_client.put_object(Bucket=bucket_name, Key="live/t.parquet", Body=sink.getvalue().to_pybytes())

    chunks = iter_table_chunks(f"s3://{bucket_name}/live/t.parquet", chunksize=100_000, s3_client=raw_client)
    assert len(next(chunks)) == 100_000
    raw_client.put_object(Bucket=bucket_name, Key="live/t.parquet", Body=b"replaced")
    with pytest.raises(ClientError) as err:
        list(chunks)
    assert err.value.response["Error"]["Code"] == "PreconditionFailed"
