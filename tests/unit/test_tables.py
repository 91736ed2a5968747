"""tasks.tables on local files: chunked CSV / Parquet / JSON Lines, globs and directories, atomic writes."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.errors import InputError
from tasks import tables
from tasks.tables import iter_table_chunks, list_sources, load_table, table_format, write_table

ROWS = 10_005


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(ROWS),
            "label_key": [f"sensor-{i % 7}" for i in range(ROWS)],
            "temperature": [20 + (i % 100) / 10 for i in range(ROWS)],
        }
    )


def write(df: pd.DataFrame, path) -> str:
    path = str(path)
    if path.endswith((".parquet", ".pq")):
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=3_000)
    else:
        write_table(df, path)
    return path


@pytest.mark.parametrize(
    "name", ["m.csv", "m.csv.gz", "m.parquet", "m.pq", "m.jsonl", "m.ndjson", "m.jsonl.gz"]
)
def test_chunks_have_constant_size_and_round_trip(tmp_path, frame, name):
    path = write(frame, tmp_path / name)

    chunks = list(iter_table_chunks(path, chunksize=1_000))

    # Parquet row groups are 3,000 rows: chunks still come out at exactly 1,000
    assert [len(c) for c in chunks] == [1_000] * 10 + [5]
    assert all(c.attrs["source"] == path for c in chunks)
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), frame, check_dtype=False)


@pytest.mark.parametrize("name", ["m.csv", "m.parquet", "m.jsonl"])
def test_columns_are_selected_in_the_order_asked(tmp_path, frame, name):
    path = write(frame, tmp_path / name)
    first = next(iter_table_chunks(path, chunksize=10, columns=["temperature", "id"]))
    assert list(first.columns) == ["temperature", "id"]
    assert first["id"].tolist() == list(range(10))

    with pytest.raises(InputError) as err:
        next(iter_table_chunks(path, columns=["id", "humidity"]))
    assert err.value.field == "columns"
    assert err.value.problem == f"['humidity'] not in {path}"


def test_csv_is_streamed_not_loaded_whole(tmp_path):
    # A broken row at the very end: the first chunks arrive before the parser ever reaches it.
    path = tmp_path / "stream.csv"
    path.write_text("a,b\n" + "1,2\n" * 5_000 + "1,2,3,4,5\n")
    chunks = iter_table_chunks(str(path), chunksize=1_000)
    assert [len(next(chunks)) for _ in range(4)] == [1_000] * 4
    with pytest.raises(InputError, match=r"stream.csv cannot be read as CSV: .*line 5002"):
        list(chunks)


def test_glob_and_directory_sources_in_sorted_order(tmp_path, frame):
    part = frame.iloc[:100]
    (tmp_path / "sub").mkdir()
    for name in ["b.csv", "a.csv", "c.parquet", "sub/d.csv", "_SUCCESS", ".hidden.csv", "notes.txt"]:
        target = tmp_path / name
        if name.endswith((".csv", ".parquet")):
            write(part, target)
        else:
            target.write_text("x")

    assert list_sources(str(tmp_path / "*.csv")) == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert list_sources(str(tmp_path / "**" / "*.csv")) == [
        str(tmp_path / n) for n in ("a.csv", "b.csv", "sub/d.csv")
    ]
    # a directory: table files only, recursively, no markers or hidden files
    assert list_sources(str(tmp_path)) == [
        str(tmp_path / n) for n in ("a.csv", "b.csv", "c.parquet", "sub/d.csv")
    ]
    assert list_sources(str(tmp_path / "*.tsv")) == []

    chunks = list(iter_table_chunks(str(tmp_path), chunksize=60))
    assert [(os.path.basename(c.attrs["source"]), len(c)) for c in chunks] == [
        ("a.csv", 60),
        ("a.csv", 40),
        ("b.csv", 60),
        ("b.csv", 40),
        ("c.parquet", 60),
        ("c.parquet", 40),
        ("d.csv", 60),
        ("d.csv", 40),
    ]


@pytest.mark.parametrize("name", ["data.txt", "data.xlsx", "data.parquet.gz", "data"])
def test_unknown_extension_is_a_clear_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError) as err:
        list(iter_table_chunks(str(path)))
    assert err.value.field == "source"
    assert err.value.problem == f"unknown table type {name!r}"
    assert err.value.limit == "one of .csv, .csv.gz, .parquet, .pq, .jsonl, .ndjson, .jsonl.gz, .ndjson.gz"


def test_table_format():
    assert table_format("s3://b/in/Report.CSV.GZ") == ("csv", True)
    assert table_format("x.pq") == ("parquet", False)
    assert table_format("x.ndjson") == ("jsonl", False)


def test_bad_arguments_are_rejected_before_any_io(tmp_path):
    with pytest.raises(InputError) as err:
        list(iter_table_chunks(str(tmp_path / "x.csv"), chunksize=0))
    assert err.value.field == "chunksize"
    with pytest.raises(InputError) as err:
        list_sources("s3://demo-bucket/in/", storage_options={"anon": True})
    assert err.value.field == "storage_options"
    with pytest.raises(InputError) as err:
        list_sources("s3://Bad_Bucket/in/")
    assert err.value.field == "source"


@pytest.mark.parametrize("name", ["out/report.csv", "out/report.parquet", "out/report.csv.gz", "out/r.jsonl"])
def test_write_table_round_trips_and_creates_directories(tmp_path, frame, name):
    dest = str(tmp_path / name)
    assert write_table(frame, dest) == dest
    assert sorted(os.listdir(tmp_path / "out")) == [os.path.basename(name)]  # no temp file left
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o644
    back = pd.concat(iter_table_chunks(dest), ignore_index=True)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)


def test_write_table_is_atomic(tmp_path, frame, monkeypatch):
    dest = tmp_path / "report.parquet"
    write_table(frame, str(dest))
    before = dest.read_bytes()

    def write_half_then_fail(df, kind, gzipped, fh):
        fh.write(before[: len(before) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(tables, "_serialize", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_table(frame.head(3), str(dest))

    assert dest.read_bytes() == before  # the old report is intact
    assert os.listdir(tmp_path) == ["report.parquet"]  # and the half-written temp file is gone

    with pytest.raises(InputError) as err:
        write_table(frame, str(tmp_path / "report.xlsx"))
    assert err.value.field == "destination"


def test_load_table_task(tmp_path, frame):
    path = write(frame, tmp_path / "m.csv")
    df = load_table.fn(path, columns=["id"])
    assert df["id"].tolist() == list(range(ROWS))
    with pytest.raises(InputError) as err:
        load_table.fn(path, max_rows=5_000)
    assert err.value.problem == f"{path} has more than 5,000 rows"
